"""The ONNX export format: a file converted from the SavedModel's tensor
signature (tf2onnx), checked to load and run in ONNX Runtime, labels.json
beside it and in its metadata_props; read through ONNX Runtime
(OnnxPredictor).

Layout: <base>/onnx/<model_name>/<version>/<model_name>.onnx and labels.json
(+ classes.csv) beside it.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from mlc_keras.exporters import artefacts
from mlc_keras.exporters import formats
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import serving
from mlc_keras.inference import predictors
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.exporters import isolated
from mlc_keras.exporters import metadata

ONNX_OPSET = 17


class _LogCollector(logging.Handler):

  def __init__(self):
    super().__init__(level=logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _unknown_onnx_ops(graph, onnx_module) -> list[str]:
  # Loop/If/Scan bodies too: tf2onnx leaves unsupported ops inside them.
  unknown = []
  for node in graph.node:
    domain = node.domain or ""
    if not onnx_module.defs.has(node.op_type, domain):
      unknown.append(f"{domain + '.' if domain else ''}{node.op_type}")
    for attr in node.attribute:
      subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
      for sub in subgraphs:
        unknown.extend(_unknown_onnx_ops(sub, onnx_module))
  return unknown


# Attributes that keep grappler from inlining a nested function call.
_NO_INLINE_ATTRS = ("_XlaMustCompile", "_noinline")


def _inlinable_graph(fn, input_signature):
  """``fn`` frozen (variables as constants) into a GraphDef grappler can
  inline whole, with its input and output tensor names and tf2onnx's
  renaming to the structured output names.

  Keras' TF backend runs a grouped convolution (ConvNeXt's depthwise
  convolution is a Conv2D with groups = channels) through a nested
  ``tf.function(jit_compile=True)``, because TF's CPU kernel has no groups.
  That call carries ``_XlaMustCompile`` and ``_noinline``, so it stays a
  StatefulPartitionedCall tf2onnx cannot convert. With the two attributes
  dropped it is inlined to a plain Conv2D whose kernel has fewer input
  channels than its input, which tf2onnx writes as an ONNX Conv with
  ``group``. Nothing else in the graph changes; graphs without such calls
  convert exactly as before.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  # The freezing tf2onnx's own from_function uses (there is no public one).
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  concrete = fn.get_concrete_function(*input_signature)
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      concrete, lower_control_flow=False, aggressive_inlining=True)
  graph_def = frozen.graph.as_graph_def(add_shapes=True)
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
    for attr in _NO_INLINE_ATTRS:
      function.attr.pop(attr, None)
  for node in nodes:
    for attr in _NO_INLINE_ATTRS:
      node.attr.pop(attr, None)
  inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
  outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
  rename = tf2onnx.convert.tensor_names_from_structed(concrete, inputs, outputs)
  return (graph_def, [t.name for t in frozen.inputs],
          [t.name for t in frozen.outputs], rename)


def _erfc(ctx, node, name, args):
  """tf2onnx handler for TF's Erfc (exact GELU: 0.5 x erfc(-x / sqrt 2),
  ConvNeXt's activation), which tf2onnx 1.17 lacks and ONNX has no op for:
  rewritten in place as 1 - Erf(x). For large arguments erfc is tiny and
  1 - erf(x) loses its relative precision, not its absolute one (< 1e-7),
  which is what GELU's product with x and the fp32 parity bound see."""
  del args
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tf2onnx import utils  # pylint: disable=g-import-not-at-top
  dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
  erf = ctx.make_node("Erf", [node.input[0]])
  one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
  node.type = "Sub"
  ctx.replace_inputs(node, [one.output[0], erf.output[0]])


BATCH_DIM = "batch"


def _name_batch_dim(graph) -> None:
  """Names the leading dimension of every graph input and output "batch".

  tf2onnx names each unknown dimension with a fresh symbol (``unk__562``),
  so a reader of the model (Netron, onnxruntime's get_inputs()) cannot tell
  the batch from any other unknown size, nor that the outputs share the
  input's. Every image in, one row per image out: the leading dimension is
  the batch wherever it is symbolic; the same symbol inside the graph
  (value_info) is renamed with it.
  """
  symbols = set()
  for value in list(graph.input) + list(graph.output):
    dims = value.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
      if dims[0].dim_param:
        symbols.add(dims[0].dim_param)
      dims[0].dim_param = BATCH_DIM
  for value in graph.value_info:
    for dim in value.type.tensor_type.shape.dim:
      if dim.dim_param in symbols:
        dim.dim_param = BATCH_DIM


def function_to_onnx(fn, input_signature: Sequence["tf.TensorSpec"],
                     output_path: str, opset: int = ONNX_OPSET) -> str:
  """Converts a tf.function with tf2onnx and fails loudly on any op ONNX
  cannot express.

  Frozen and converted through ``_inlinable_graph`` (grouped convolutions)
  with an ``Erfc`` handler (exact GELU). tf2onnx 1.17 only logs "Unsupported
  ops" and writes a model that cannot load, so the result is checked four
  ways: tf2onnx's own error log, every node (sub-graphs included) against the ONNX op schemas, onnx.checker, and
  an onnxruntime session.
  """
  try:
    import onnx
    import onnxruntime
    import tf2onnx
  except ImportError as e:
    raise artefacts.missing_dependency(e.name or "tf2onnx/onnx/onnxruntime") from None
  if opset < 17:
    raise ExportError(f"ONNX opset must be >= 17, got {opset}")
  collector = _LogCollector()
  tf2onnx_logger = logging.getLogger("tf2onnx")
  tf2onnx_logger.addHandler(collector)
  try:
    graph_def, inputs, outputs, rename = _inlinable_graph(
        fn, list(input_signature))
    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=inputs, output_names=outputs, opset=opset,
        custom_op_handlers={"Erfc": (_erfc, [])}, tensors_to_rename=rename)
  except Exception as e:
    raise ExportError(f"tf2onnx could not convert the function: {e}") from e
  finally:
    tf2onnx_logger.removeHandler(collector)
  problems = [m for m in collector.messages
              if "unsupported" in m.lower() or "is not supported" in m.lower()]
  unknown = sorted(set(_unknown_onnx_ops(model_proto.graph, onnx)))
  if unknown:
    problems.append(f"ops with no ONNX schema: {', '.join(unknown)}")
  if problems:
    raise ExportError(
        "ONNX conversion produced a model ONNX Runtime cannot run: "
        + "; ".join(problems))
  _name_batch_dim(model_proto.graph)
  try:
    onnx.checker.check_model(model_proto, full_check=True)
  except Exception as e:
    raise ExportError(f"onnx.checker rejected the converted model: {e}") from e
  try:
    onnxruntime.InferenceSession(model_proto.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
  except Exception as e:
    raise ExportError(f"onnxruntime cannot load the converted model: {e}") from e
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  onnx.save(model_proto, output_path)
  return output_path


def to_onnx(saved_model_dir: str, output_path: str,
            opset: int = ONNX_OPSET) -> str:
  """Converts the SavedModel's tensor signature to ONNX; input "image"
  (uint8 [N, S, S, 3]), one output per model output, named after it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(saved_model_dir)
  fn = getattr(loaded, artefacts.TENSOR_SIGNATURE, None)
  if fn is None:
    raise ExportError(
        f"{saved_model_dir}: no {artefacts.TENSOR_SIGNATURE!r} function to convert; "
        "was it written by mlc_keras.export?")
  signature = loaded.signatures[artefacts.TENSOR_SIGNATURE]
  spec = signature.structured_input_signature[1][artefacts.IMAGE_INPUT]
  expected = sorted(signature.structured_outputs)
  function_to_onnx(fn, [tf.TensorSpec(spec.shape, spec.dtype, name=artefacts.IMAGE_INPUT)],
                   output_path, opset)
  predictor = OnnxPredictor(output_path)
  if sorted(predictor.output_names) != expected:
    raise ExportError(
        f"{output_path}: ONNX outputs {predictor.output_names} are not the "
        f"model outputs {expected}")
  return output_path


def to_labelled_onnx(saved_model_dir: str, output_path: str,
                     opset: int = ONNX_OPSET) -> str:
  """to_onnx, then labels.json (read from beside ``output_path``) embedded
  as the model's metadata_props."""
  to_onnx(saved_model_dir, output_path, opset)
  labels = os.path.join(os.path.dirname(output_path), artefacts.LABELS_FILE)
  with open(labels, encoding="utf-8") as f:
    embed_labels(output_path, f.read())
  return output_path


def description(labels_text: str, outputs: Sequence[str] = ()) -> str:
  """The ONNX model's doc_string: what goes in and what comes out, for a
  reader of the file (Netron, onnx.load) who has no labels.json."""
  return "\n".join(
      ["mlc_keras multi-head image classifier. Input 'image': uint8 "
       "[batch, S, S, 3] (RGB pixels, NHWC). One output per head, named "
       "after it, [batch, classes]:"]
      + metadata.head_lines(labels_text, outputs)
      + [f"Labels: metadata_props[{metadata.LABELS_KEY!r}] (labels.json)."])


def embed_labels(path: str, labels_text: str) -> None:
  """labels.json into the .onnx at ``path``: a ``metadata_props`` entry (the
  format's key/value strings), and the description() as its doc_string."""
  import onnx  # pylint: disable=g-import-not-at-top
  model = onnx.load(path)
  model.doc_string = description(
      labels_text, [o.name for o in model.graph.output])
  for prop in list(model.metadata_props):
    if prop.key == metadata.LABELS_KEY:
      model.metadata_props.remove(prop)
  entry = model.metadata_props.add()
  entry.key, entry.value = metadata.LABELS_KEY, labels_text
  onnx.save(model, path)


def read_labels(session) -> Optional[str]:
  """The embedded labels.json of an onnxruntime InferenceSession, or None."""
  return session.get_modelmeta().custom_metadata_map.get(metadata.LABELS_KEY)


def onnx_call(saved_model_dir: str, folder: str, model_name: str,
              opset: int = ONNX_OPSET) -> tuple:
  """The to_labelled_onnx call into ``folder``/<model_name>.onnx, for
  isolated.run_all; writes labels.json into ``folder``."""
  os.makedirs(folder, exist_ok=True)
  serving.copy_labels(saved_model_dir, folder)
  return (to_labelled_onnx,
          (saved_model_dir, os.path.join(folder, f"{model_name}.onnx"), opset))


def to_onnx_with_labels(saved_model_dir: str, folder: str, model_name: str,
                        opset: int = ONNX_OPSET, isolate: bool = True) -> str:
  """to_onnx into ``folder``/<model_name>.onnx with labels.json beside and
  inside."""
  call = onnx_call(saved_model_dir, folder, model_name, opset)
  return isolated.run_all([call], isolate)[0]


class OnnxPredictor(predictors.Predictor):
  """A .onnx file through ONNX Runtime (CPU)."""

  kind = "onnx"

  def __init__(self, path: str):
    super().__init__(path)
    try:
      import onnxruntime
    except ImportError:
      raise artefacts.missing_dependency("onnxruntime") from None
    self.session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"])
    inputs = self.session.get_inputs()
    if [i.name for i in inputs] != [artefacts.IMAGE_INPUT]:
      raise ExportError(f"{path}: ONNX inputs {[i.name for i in inputs]}, "
                        f"expected [{artefacts.IMAGE_INPUT!r}]")
    self.image_size = int(inputs[0].shape[1])
    self.output_names = [o.name for o in self.session.get_outputs()]

  def _embedded_labels(self):
    return read_labels(self.session)

  def _run(self, images):
    values = self.session.run(self.output_names, {artefacts.IMAGE_INPUT: images})
    return dict(zip(self.output_names, values))


class OnnxFormat(formats.ExportFormat):
  """One .onnx, converted in a worker process from the SavedModel (the
  longest conversion: started first), held to the fp32 tolerance."""

  name = "onnx"
  title = "ONNX"
  tree = "onnx"
  requires = (serving.NAME,)
  conversion_cost = 2
  suffix = ".onnx"
  predictor_types = (OnnxPredictor,)

  def card_input(self, max_image_bytes, max_image_pixels):
    del max_image_bytes, max_image_pixels
    return ""  # the uint8 pixels alone

  def conversions(self, job):
    fn, args = onnx_call(job.staged[serving.NAME], job.folders[self.name],
                         job.request.model_name)
    return [formats.Conversion(self.name, None, fn, args)]

  def candidates(self, value):
    return [formats.Candidate(self.name, OnnxPredictor(value),
                              parity_lib.FP32_TOLERANCE)]


FORMAT = OnnxFormat()
