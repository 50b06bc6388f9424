"""The SavedModel for TF Serving: a serving module with two signatures (bytes
and uint8 pixels), its assets and warmup records, and a check that plain
TensorFlow can load and run it.

The bytes signature (the default one) decodes JPEG/PNG in-graph with
imageio.decode_and_resize, the function training uses, so served pixels are
training pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir
from mlc_keras.data import imageio
from mlc_keras.exporters.artefacts import ExportError

# Per-image cap on encoded bytes in the serving signature. 20 MB holds any
# sane phone photo; beyond that a request is more likely abuse than an image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Per-image cap on width x height, read from the header before decoding (a
# few hundred KB can declare a decode of gigabytes): the limit training
# applies to its files.
MAX_IMAGE_PIXELS = config_lib.DataConfig.max_image_pixels

# Ops that call back into Python: TF Serving (C++) cannot run them.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


class ServingModule(tf.Module):
  """The object saved as the SavedModel: two tf.functions over one model.

  The Keras model is captured by the functions rather than attached, so only
  its variables (tracked below) and the functions are serialised; Keras layer
  objects never reach the SavedModel.
  """

  def __init__(self, model, schema: heads_lib.LabelSchema,
               max_image_bytes: int = MAX_IMAGE_BYTES,
               labels_path: Optional[str] = None,
               table=None, threshold: float = artefacts.DEFAULT_THRESHOLD,
               classes_path: Optional[str] = None,
               max_image_pixels: int = MAX_IMAGE_PIXELS):
    super().__init__(name="mlc_serving")
    size = run_dir.image_size_of(model)
    labelled = _label_outputs(run_dir.symbolic_outputs(model), schema, table)
    self.image_size = size
    self.max_image_bytes = _positive("max_image_bytes", max_image_bytes)
    self.max_image_pixels = _positive("max_image_pixels", max_image_pixels)
    self.threshold = artefacts.check_threshold(threshold)

    def probabilities(image):
      return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v
              for k, v in run_dir.model_outputs(model, image).items()}

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.uint8,
                      name=artefacts.IMAGE_INPUT)])
    def serve_image(image):
      return probabilities(image)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=artefacts.BYTES_INPUT)])
    def serve_bytes(image_bytes):
      images = self._decode_batch(image_bytes)
      return _with_labels(probabilities(images), labelled, self.threshold)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def example_probabilities(examples):
      # Other features (labels, paths) are ignored: a TFRecord shard written
      # for training can be scored as it is.
      parsed = tf.io.parse_example(examples, {
          artefacts.IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
      return probabilities(self._decode_batch(parsed[artefacts.IMAGE_FEATURE]))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=artefacts.EXAMPLES_INPUT)])
    def serve_examples(examples):
      return _with_labels(example_probabilities(examples), labelled,
                          self.threshold)

    # Each calls the one traced example_probabilities: the model is traced
    # once for all of them.
    self.classify = {
        h.name: _classify_function(example_probabilities, h.name,
                                   list(h.classes))
        for h in schema.heads}

    self.serve_image = serve_image
    self.serve_bytes = serve_bytes
    self.serve_examples = serve_examples
    # Tracked so tf.saved_model.save writes them; the functions capture them.
    self.model_variables = list(serve_image.get_concrete_function().variables)
    self._add_assets(labels_path, classes_path)

  def _add_assets(self, labels_path: Optional[str],
                  classes_path: Optional[str]) -> None:
    if labels_path is not None:
      self.labels = tf.saved_model.Asset(labels_path)
    if classes_path is not None:
      self.classes = tf.saved_model.Asset(classes_path)

  def _decode_batch(self, image_bytes):
    too_big = tf.debugging.assert_less_equal(
        tf.strings.length(image_bytes), self.max_image_bytes,
        message=(f"{artefacts.BYTES_INPUT}: an image is larger than "
                 f"{self.max_image_bytes} bytes"))
    with tf.control_dependencies([too_big]):
      image_bytes = tf.identity(image_bytes)
    size = self.image_size
    return tf.map_fn(
        self._decode_checked, image_bytes,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))

  def _decode_checked(self, encoded):
    # The header is checked before DecodeImage runs: the decoder allocates
    # width x height x 3 bytes from the header alone (a 631-byte JPEG
    # claiming 12000x12000 decodes to 432 MB here). Bytes whose size cannot
    # be read are refused too, rather than decoded unchecked: decode_image
    # also accepts JPEG XL, whose header is not parsed here.
    extent = imageio.decoded_extent(encoded)  # width, height, frames
    readable = tf.debugging.Assert(
        tf.reduce_all(extent >= 0),
        [f"{artefacts.BYTES_INPUT}: not a JPEG, PNG, GIF, BMP or WebP image, "
         "or its header is cut short"])
    with tf.control_dependencies([readable]):
      pixels = tf.reduce_prod(tf.cast(extent, tf.float64))
    # float64: a PNG may claim 2^32 x 2^32, which overflows int64.
    small_enough = tf.debugging.Assert(
        pixels <= self.max_image_pixels,
        [f"{artefacts.BYTES_INPUT}: an image is too large: it decodes to more "
         f"than the cap of {self.max_image_pixels} pixels (max_image_pixels; "
         "a GIF decodes every frame at the size of its largest); width, "
         "height, frames:", extent])
    with tf.control_dependencies([small_enough]):
      return imageio.decode_and_resize(tf.identity(encoded), self.image_size)

  def signatures(self) -> dict:
    """The signatures to save: {key: concrete function}."""
    return {
        artefacts.SERVING_SIGNATURE: self.serve_bytes.get_concrete_function(),
        artefacts.TENSOR_SIGNATURE: self.serve_image.get_concrete_function(),
        artefacts.EXAMPLE_SIGNATURE:
            self.serve_examples.get_concrete_function(),
        **{artefacts.CLASSIFY_PREFIX + h: fn.get_concrete_function()
           for h, fn in self.classify.items()},
    }


def _positive(name: str, cap) -> int:
  if cap <= 0:
    raise ExportError(f"{name} must be > 0, got {cap}")
  return int(cap)


def _classify_function(example_probabilities, head: str, classes: list[str]):
  """The Classify API signature of one head (softmax or tags: a tag's score
  is its sigmoid)."""
  names = tf.constant(classes)

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=artefacts.CLASSIFY_INPUT)])
  def classify(inputs):
    scores = example_probabilities(inputs)[head]
    return {artefacts.CLASSIFY_CLASSES: tf.tile(names[None],
                                                [tf.shape(scores)[0], 1]),
            artefacts.CLASSIFY_SCORES: scores}
  return classify


def mark_classify_signatures(export_dir: str) -> list[str]:
  """Gives the "classify_*" signatures TF Serving's classify method name.

  tf.saved_model.save writes every signature with the predict method name
  and has no argument to change it (tensorflow/tensorflow#38081), while TF
  Serving's Classify API refuses a signature whose method name is not
  "tensorflow/serving/classify". So the names are set in saved_model.pb after
  saving, and fingerprint.pb (a checksum of saved_model.pb) is written again
  the way tf.saved_model.save writes it. Returns the keys marked."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.python.saved_model import fingerprinting_utils  # pylint: disable=g-import-not-at-top
  path = os.path.join(export_dir, "saved_model.pb")
  proto = saved_model_pb2.SavedModel()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  marked = []
  for graph in proto.meta_graphs:
    for key, sig in graph.signature_def.items():
      if key.startswith(artefacts.CLASSIFY_PREFIX):
        sig.method_name = artefacts.CLASSIFY_METHOD
        marked.append(key)
  with open(path, "wb") as f:
    f.write(proto.SerializeToString())
  if os.path.exists(os.path.join(export_dir, "fingerprint.pb")):
    fingerprinting_utils.write_fingerprint(export_dir)
  return sorted(marked)


def _label_outputs(outputs: Mapping, schema: heads_lib.LabelSchema,
                   table) -> dict[str, Any]:
  # Outputs that get label outputs in the bytes signature: each head (what
  # its kind adds: a softmax head's "<name>_class" / "<name>_score", a tag
  # head's "<name>_tags"), and the composed classes when a table names them
  # ({name: HeadSpec, or the table's class names for "class"}).
  if table is not None:
    _check_class_output(outputs, table)
  labelled = {h.name: h for h in schema.heads if h.name in outputs}
  derived = {n + s for n, h in labelled.items()
             for s in h.kind_impl.serving_suffixes}
  if table is not None:
    labelled[artefacts.CLASS_OUTPUT] = list(table.classes)
    derived |= {artefacts.CLASS_OUTPUT + s
                for s in (artefacts.CLASS_SUFFIX, artefacts.SCORE_SUFFIX)}
  clash = sorted(derived & set(outputs))
  if clash:
    raise ExportError(
        f"model output(s) {clash} collide with the label outputs the bytes "
        "signature adds; rename them")
  return labelled


def _with_labels(outputs: Mapping, labelled: Mapping[str, Any],
                 threshold: float) -> dict:
  result = {}
  for name, probs in outputs.items():
    result[name] = probs
    if name not in labelled:
      continue
    if name == artefacts.CLASS_OUTPUT:
      classes = labelled[name]
      best = tf.gather(tf.constant(classes), tf.argmax(probs, axis=-1))
      score = tf.reduce_max(probs, axis=-1)
      # compose.predict_classes' rule, in the graph: a best class scoring
      # below the threshold is "unknown"; exactly at it, it is kept.
      best = tf.where(score >= threshold, best,
                      tf.constant(artefacts.UNKNOWN_CLASS))
      result[name + artefacts.CLASS_SUFFIX] = best
      result[name + artefacts.SCORE_SUFFIX] = score
      continue
    head = labelled[name]
    for suffix, tensor in head.kind_impl.serving_outputs(head, probs).items():
      result[name + suffix] = tensor
  return result


def build_serving_module(model, schema: heads_lib.LabelSchema,
                         max_image_bytes: int = MAX_IMAGE_BYTES,
                         labels_path: Optional[str] = None,
                         table=None, threshold: float = artefacts.DEFAULT_THRESHOLD,
                         classes_path: Optional[str] = None,
                         max_image_pixels: int = MAX_IMAGE_PIXELS
                         ) -> ServingModule:
  """The tf.Module behind the SavedModel (usable in memory, e.g. in tests).

  table: the compose.ClassTable of the model's "class" output, if it has
  one; the bytes signature then also returns class_class (the best class, or
  "unknown" below ``threshold``) and class_score.
  max_image_bytes / max_image_pixels: per-image caps of the bytes signature
  on the encoded size and on width x height (read from the header, before
  decoding); an image over either fails the request with InvalidArgument.
  """
  return ServingModule(model, schema, max_image_bytes, labels_path, table,
                       threshold, classes_path, max_image_pixels)


def _check_class_output(outputs: Mapping[str, Any], table) -> None:
  if artefacts.CLASS_OUTPUT not in outputs:
    raise ExportError(
        f"the model has no {artefacts.CLASS_OUTPUT!r} output for the class table "
        f"{table.source} (outputs: {', '.join(sorted(outputs))})")
  width = tuple(outputs[artefacts.CLASS_OUTPUT].shape)[-1]
  if width is not None and width != len(table):
    raise ExportError(
        f"the model's {artefacts.CLASS_OUTPUT!r} output has {width} columns but the "
        f"class table {table.source} has {len(table)} classes")


def example_of(encoded: bytes) -> bytes:
  """A serialized tf.Example holding ``encoded`` under image/encoded, as the
  TFRecord writer stores an image (the tf.Example signature's input)."""
  return tf.train.Example(features=tf.train.Features(feature={
      artefacts.IMAGE_FEATURE: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[encoded]))})).SerializeToString()


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [S, S, 3] -> PNG bytes (lossless, so decoding gives the same pixels)."""
  return tf.io.encode_png(tf.convert_to_tensor(image, tf.uint8)).numpy()


def write_warmup_requests(export_dir: str, encoded_images: Sequence[bytes],
                          model_name: str) -> str:
  """Writes assets.extra/tf_serving_warmup_requests: one PredictRequest on the
  bytes signature, so TF Serving traces the graph before taking traffic."""
  try:
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2
  except ImportError:
    raise artefacts.missing_dependency("tensorflow-serving-api") from None
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = artefacts.SERVING_SIGNATURE
  request.inputs[artefacts.BYTES_INPUT].CopyFrom(
      tf.make_tensor_proto(list(encoded_images), dtype=tf.string))
  log = prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))
  folder = os.path.join(export_dir, "assets.extra")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, artefacts.WARMUP_FILE)
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(log.SerializeToString())
  return path


def to_saved_model(model, schema: heads_lib.LabelSchema, export_dir: str,
                   max_image_bytes: int = MAX_IMAGE_BYTES,
                   warmup_images: Optional[np.ndarray] = None,
                   model_name: str = "mlc", table=None,
                   threshold: float = artefacts.DEFAULT_THRESHOLD,
                   max_image_pixels: int = MAX_IMAGE_PIXELS) -> str:
  """Writes the SavedModel (both signatures, labels asset, warmup requests)
  into ``export_dir``, which must not exist yet. With ``table`` (the
  compose.ClassTable of the model's "class" output) classes.csv is an asset
  too."""
  if os.path.exists(export_dir):
    raise ExportError(f"{export_dir}: already exists; not overwriting it")
  with tempfile.TemporaryDirectory() as tmp:
    labels = os.path.join(tmp, artefacts.LABELS_FILE)
    schema.save(labels)
    classes = None
    if table is not None:
      from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
      classes = os.path.join(tmp, artefacts.CLASSES_FILE)
      compose.save(table, schema, classes)
    module = build_serving_module(model, schema, max_image_bytes, labels,
                                  table, threshold, classes, max_image_pixels)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
  mark_classify_signatures(export_dir)
  size = module.image_size
  if warmup_images is None or not len(warmup_images):
    warmup_images = np.full((1, size, size, 3), 128, np.uint8)
  write_warmup_requests(export_dir, [encode_png(i) for i in warmup_images[:1]],
                        model_name)
  return export_dir


def read_warmup_requests(export_dir: str) -> list:
  """The PredictionLog records of a SavedModel's warmup file."""
  from tensorflow_serving.apis import prediction_log_pb2
  path = os.path.join(export_dir, "assets.extra", artefacts.WARMUP_FILE)
  logs = []
  for record in tf.data.TFRecordDataset(path):
    logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
  return logs


# Runs with plain TensorFlow in a fresh interpreter: proves the SavedModel
# loads and serves without mlc_keras (TF Serving has no Python at all) and
# lists every op of the graph and of every function in its library.
_STANDALONE_CHECK = r"""
import json, os, sys
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

path = sys.argv[1]
proto = saved_model_pb2.SavedModel()
with open(os.path.join(path, "saved_model.pb"), "rb") as f:
  proto.ParseFromString(f.read())
ops = {}
for graph in proto.meta_graphs:
  nodes = list(graph.graph_def.node)
  for fn in graph.graph_def.library.function:
    nodes.extend(fn.node_def)
  for node in nodes:
    ops[node.op] = ops.get(node.op, 0) + 1
unregistered = sorted(op for op in ops if op_def_registry.get(op) is None)

loaded = tf.saved_model.load(path)
def describe(spec):
  return [spec.dtype.name,
          spec.shape.as_list() if spec.shape.rank is not None else None]
signatures = {}
for key, fn in loaded.signatures.items():
  specs = fn.structured_input_signature[1]
  signatures[key] = {
      "inputs": {k: describe(v) for k, v in specs.items()},
      "outputs": {k: describe(v) for k, v in fn.structured_outputs.items()}}
ran = None
serving = signatures.get("serving_default", {})
if "image_bytes" in serving.get("inputs", {}):
  png = tf.io.encode_png(tf.fill([8, 8, 3], tf.constant(128, tf.uint8)))
  out = loaded.signatures["serving_default"](image_bytes=tf.stack([png, png]))
  ran = {k: v.shape.as_list() for k, v in out.items()}
print("MLC_CHECK_JSON:" + json.dumps({
    "ops": ops, "unregistered": unregistered, "signatures": signatures,
    "ran": ran,
    "mlc_keras_imported": any(m.split(".")[0] == "mlc_keras" for m in sys.modules),
}))
"""


def forbidden_ops(ops: Iterable[str],
                  unregistered: Iterable[str] = ()) -> list[str]:
  """Problems with a SavedModel's op list: ops that call Python, and ops that
  plain TensorFlow does not know (custom ops). Empty list means fine."""
  problems = [f"{op} (calls back into Python)" for op in sorted(set(ops))
              if op in PYTHON_OPS]
  problems += [f"{op} (not a standard TensorFlow op)"
               for op in sorted(set(unregistered)) if op not in PYTHON_OPS]
  return problems


def check_saved_model(export_dir: str, timeout: float = 600) -> dict:
  """Loads ``export_dir`` in a separate Python process that imports only
  TensorFlow, runs its bytes signature once and lists all its ops.

  Returns the child's report (ops with counts, signatures, the outputs of the
  test call). Raises ExportError when loading fails, mlc_keras was needed, or
  any op calls Python or is not a standard TensorFlow op.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  # Neither the repo nor the caller's PYTHONPATH: the child must not be able
  # to import mlc_keras even by accident.
  env.pop("PYTHONPATH", None)
  proc = subprocess.run(
      [sys.executable, "-c", _STANDALONE_CHECK, os.path.abspath(export_dir)],
      capture_output=True, text=True, timeout=timeout, env=env,
      cwd=tempfile.gettempdir())
  lines = [l for l in proc.stdout.splitlines() if l.startswith("MLC_CHECK_JSON:")]
  if proc.returncode != 0 or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise ExportError(
        f"{export_dir}: plain TensorFlow could not load and run the "
        f"SavedModel (exit {proc.returncode}):\n{tail}")
  report = json.loads(lines[-1][len("MLC_CHECK_JSON:"):])
  if report["mlc_keras_imported"]:
    raise ExportError(f"{export_dir}: loading the SavedModel imported mlc_keras")
  problems = forbidden_ops(report["ops"], report["unregistered"])
  if problems:
    raise ExportError(
        f"{export_dir}: the SavedModel uses ops TF Serving cannot run: "
        + "; ".join(problems))
  return report


