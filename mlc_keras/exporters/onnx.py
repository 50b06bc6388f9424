"""ONNX files from the SavedModel's tensor signature (tf2onnx), checked to load
and run in ONNX Runtime."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import tensorflow as tf

from mlc_keras import artefacts
from mlc_keras import predictors
from mlc_keras.artefacts import ExportError
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


def function_to_onnx(fn, input_signature: Sequence[tf.TensorSpec],
                     output_path: str, opset: int = ONNX_OPSET) -> str:
  """Converts a tf.function with tf2onnx and fails loudly on any op ONNX
  cannot express.

  tf2onnx 1.17 only logs "Unsupported ops" and writes a model that cannot
  load, so the result is checked four ways: tf2onnx's own error log, every
  node (sub-graphs included) against the ONNX op schemas, onnx.checker, and
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
    model_proto, _ = tf2onnx.convert.from_function(
        fn, input_signature=list(input_signature), opset=opset)
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
  predictor = predictors.OnnxPredictor(output_path)
  if sorted(predictor.output_names) != expected:
    raise ExportError(
        f"{output_path}: ONNX outputs {predictor.output_names} are not the "
        f"model outputs {expected}")
  return output_path


def to_onnx_with_labels(saved_model_dir: str, folder: str, model_name: str,
                        opset: int = ONNX_OPSET, isolate: bool = True) -> str:
  """to_onnx into ``folder``/<model_name>.onnx with labels.json beside."""
  os.makedirs(folder, exist_ok=True)
  artefacts.copy_labels(saved_model_dir, folder)
  path = os.path.join(folder, f"{model_name}.onnx")
  if isolate:
    isolated.run(to_onnx, saved_model_dir, path, opset)
  else:
    to_onnx(saved_model_dir, path, opset)
  with open(os.path.join(folder, artefacts.LABELS_FILE), encoding="utf-8") as f:
    metadata.embed_onnx(path, f.read())
  return path


