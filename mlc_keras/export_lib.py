"""Export a trained model for TF Serving (SavedModel), LiteRT (TFLite) and
ONNX Runtime, and prove each artefact computes what the Keras model computes.

Layout written by export() under a base folder:

  <base>/<model_name>/<version>/                 SavedModel (TF Serving base path:
                                                 <base>/<model_name>)
      assets/labels.json
      assets/classes.csv                         with a class table only
      assets.extra/tf_serving_warmup_requests
  <base>/litert/<model_name>/<version>/<model_name>_<quantization>.tflite
  <base>/litert/<model_name>/<version>/labels.json (+ classes.csv)
  <base>/onnx/<model_name>/<version>/<model_name>.onnx
  <base>/onnx/<model_name>/<version>/labels.json (+ classes.csv)
  <base>/parity/<model_name>/<version>.json      the parity report

Everything is written into <base>/.staging/ first and moved into place only
when every check has passed, so TF Serving (which polls <base>/<model_name>)
never sees a half-written or failing version.

Every artefact takes the same input: uint8 RGB pixels [N, S, S, 3], the
model's own preprocessing inside. The SavedModel also has a bytes signature
(the default one) that decodes JPEG/PNG in-graph with imageio.decode_and_resize,
the function training uses, so served pixels are training pixels.

With a class table (compose.py), every artefact gets one more output,
"class": the table's class probabilities, computed in the graph from the
heads; classes.csv beside each artefact names its columns.

Artefacts are all read through one Predictor abstraction (load_predictor):
a callable uint8 batch -> {output name: float32 [N, k]}, used by the parity
check, the predict CLI and the latency benchmark.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from mlc_keras import config as config_lib
from mlc_keras import heads as heads_lib
from mlc_keras.data import imageio
from mlc_keras.data import sources

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("fp32", "fp16", "dynamic", "int8")

SERVING_SIGNATURE = "serving_default"  # bytes in, probabilities + labels out
TENSOR_SIGNATURE = "serve_image"  # uint8 pixels in, probabilities out
BYTES_INPUT = "image_bytes"
IMAGE_INPUT = "image"
CLASS_SUFFIX = "_class"
SCORE_SUFFIX = "_score"

# Per-image cap on encoded bytes in the serving signature. 20 MB holds any
# sane phone photo; beyond that a request is more likely abuse than an image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Per-image cap on width x height, read from the header before decoding (a
# few hundred KB can declare a decode of gigabytes): the limit training
# applies to its files.
MAX_IMAGE_PIXELS = sources.MAX_IMAGE_PIXELS

ONNX_OPSET = 17
LABELS_FILE = "labels.json"
# The class table beside an artefact with a composed "class" output.
CLASSES_FILE = "classes.csv"
CLASS_OUTPUT = "class"  # compose.CLASS_OUTPUT, without importing keras here
UNKNOWN_CLASS = "unknown"  # compose.UNKNOWN
DEFAULT_THRESHOLD = 0.5
MODEL_FILE = "model.keras"
# Written by `evaluate --calibrate`; preferred by export when it is current.
CALIBRATED_FILE = "calibrated.keras"
WARMUP_FILE = "tf_serving_warmup_requests"
INSTALL_HINT = "pip install -e .[export]"

# Ops that call back into Python: TF Serving (C++) cannot run them.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

# At 100 images a 99% agreement gate turns on a single image; 400 (the demo's
# validation set) measures agreement to about +-0.5%.
MAX_PARITY_IMAGES = 400
# A reference top-1 margin below this is a near-tie: the parity report counts
# the disagreements that are near-ties (they say "the model is unsure", not
# "the artefact is broken"), but the limits do not excuse them.
NEAR_TIE = 0.05
MAX_CALIBRATION_IMAGES = 300
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# Names of the per-runtime trees under the base folder; a model may not use them.
_RESERVED_MODEL_NAMES = frozenset({"litert", "onnx", "parity"})
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(Exception):
  """An export that cannot be done or whose result is wrong."""


class ParityError(ExportError):
  """An artefact whose outputs differ from the Keras model beyond tolerance."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
  """What an artefact must meet against the Keras model, per output.

  max_abs_diff bounds |p_artefact - p_keras| over all images and classes;
  min_top1_agreement is the share of images whose argmax must match.
  """

  max_abs_diff: Optional[float] = None
  min_top1_agreement: Optional[float] = None


# fp32 artefacts run the same float graph; 1e-4 leaves room for a different
# kernel summation order (observed: <= 1e-6).
FP32_TOLERANCE = Tolerance(max_abs_diff=1e-4)
# fp16 stores weights rounded to 11 significant bits (relative error <= 2^-11
# ~ 5e-4) but computes in float32 on CPU. A logit error of e moves a softmax
# probability by at most e/4, so a logit off by a few 1e-3 (weights error
# summed over ~50 layers) stays well under 1e-2; observed: 1e-4 to 1e-3.
FP16_TOLERANCE = Tolerance(max_abs_diff=1e-2)
# Dynamic range: int8 weights plus int8 activations quantised on the fly per
# batch, so errors are int8-sized rather than fp16-sized. 0.05 means top-1
# can only flip where Keras' two best classes are within 0.1 of each other;
# observed: 1e-3 to 1e-2.
DYNAMIC_TOLERANCE = Tolerance(max_abs_diff=5e-2)
# Full int8 has a 1/256 output grid and calibrated activation ranges: judge
# it by decisions, as the issue asks, not by probabilities.
INT8_TOLERANCE = Tolerance(min_top1_agreement=0.99)

TOLERANCES = {
    "fp32": FP32_TOLERANCE,
    "fp16": FP16_TOLERANCE,
    "dynamic": DYNAMIC_TOLERANCE,
    "int8": INT8_TOLERANCE,
}


def _missing_dependency(package: str) -> ExportError:
  return ExportError(
      f"{package} is not installed; it is needed for this export format. "
      f"Install the export extras: {INSTALL_HINT}")


# --- choices ------------------------------------------------------------------


def parse_choices(text: str | Sequence[str], allowed: Sequence[str],
                  what: str) -> tuple[str, ...]:
  """'a,b' (or a list) -> ('a', 'b'), each checked against ``allowed``.

  Raises ExportError naming the unknown value and the valid ones.
  """
  items = text.split(",") if isinstance(text, str) else list(text)
  items = [i.strip() for i in items if i.strip()]
  if not items:
    raise ExportError(f"no {what} given; choose from: {', '.join(allowed)}")
  for item in items:
    if item not in allowed:
      raise ExportError(
          f"unknown {what} {item!r}; choose from: {', '.join(allowed)}")
  return tuple(dict.fromkeys(items))


# --- the trained model ----------------------------------------------------------


def model_outputs(model, images) -> dict[str, tf.Tensor]:
  """Calls ``model`` in inference mode and returns its outputs keyed by name,
  whatever structure the model returns (dict, list or a single tensor)."""
  out = model(images, training=False)
  if isinstance(out, Mapping):
    return dict(out)
  if isinstance(out, (list, tuple)):
    return dict(zip(model.output_names, out))
  return {model.output_names[0]: out}


def image_size_of(model) -> int:
  """The side S of a Keras model's [N, S, S, 3] input."""
  shape = model.input_shape
  if isinstance(shape, list):
    shape = shape[0]
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise ExportError(
        f"model input shape {shape} is not [N, S, S, 3]; only square RGB "
        "models are exported")
  return int(shape[1])


def check_outputs_match_schema(output_shapes: Mapping[str, Sequence[int]],
                               schema: heads_lib.LabelSchema,
                               origin: str) -> None:
  """Every head of the schema must be an output with one column per class.

  Outputs that are not heads (e.g. a composed "class" output) are allowed.
  """
  for h in schema.heads:
    if h.name not in output_shapes:
      raise ExportError(
          f"{origin}: labels.json has head {h.name!r} but the model has no "
          f"such output (outputs: {', '.join(sorted(output_shapes))})")
    width = output_shapes[h.name][-1]
    if width is not None and width != h.num_classes:
      raise ExportError(
          f"{origin}: head {h.name!r} has {h.num_classes} classes in "
          f"labels.json but the model outputs {width} columns")


def choose_model_file(model_dir: str, model_file: Optional[str] = None
                      ) -> tuple[str, str]:
  """Which .keras file of a model folder to export: (path, why).

  model_file: a file name inside ``model_dir``. None picks calibrated.keras
  (written by ``evaluate --calibrate``) when it exists and is not older than
  model.keras, else model.keras: a calibrated model is what the run's owner
  asked for, but one older than model.keras belongs to weights that have
  since been retrained, so exporting it would publish the old model.
  ``model_dir`` may also be a .keras file, which is then used as it is.
  """
  if os.path.isfile(model_dir) and model_dir.endswith(".keras"):
    if model_file:
      raise ExportError(
          f"{model_dir} is a .keras file; --model_file only picks a file "
          "inside a model folder")
    return model_dir, "the .keras file given"
  if not os.path.isdir(model_dir):
    raise ExportError(f"{model_dir}: no such model folder or .keras file")
  if model_file:
    if os.path.basename(model_file) != model_file:
      raise ExportError(
          f"model file {model_file!r} must be a file name inside {model_dir} "
          "(to export a .keras file elsewhere, pass it as --model_dir)")
    path = os.path.join(model_dir, model_file)
    if not os.path.isfile(path):
      present = sorted(f for f in os.listdir(model_dir) if f.endswith(".keras"))
      raise ExportError(
          f"{model_dir}: no {model_file} in this model folder (.keras files "
          f"there: {', '.join(present) or 'none'})")
    return path, f"--model_file={model_file}"
  plain = os.path.join(model_dir, MODEL_FILE)
  calibrated = os.path.join(model_dir, CALIBRATED_FILE)
  if os.path.isfile(calibrated):
    if not os.path.isfile(plain):
      return calibrated, f"{CALIBRATED_FILE} (no {MODEL_FILE} in the folder)"
    if os.path.getmtime(calibrated) >= os.path.getmtime(plain):
      return calibrated, (
          f"{CALIBRATED_FILE} (temperature-scaled by evaluate --calibrate; "
          f"--model_file={MODEL_FILE} exports the uncalibrated model)")
    return plain, (
        f"{MODEL_FILE}; warning: {CALIBRATED_FILE} is older than "
        f"{MODEL_FILE} (the model was retrained after evaluate --calibrate), "
        "so it is not used: re-run evaluate --calibrate, or pass "
        f"--model_file={CALIBRATED_FILE} to export it anyway")
  if not os.path.isfile(plain):
    raise ExportError(f"{model_dir}: no {MODEL_FILE} in this model folder")
  return plain, MODEL_FILE


def load_schema(model_path: str) -> heads_lib.LabelSchema:
  """The labels.json beside a .keras file."""
  folder = os.path.dirname(os.path.abspath(model_path))
  labels = os.path.join(folder, LABELS_FILE)
  if not os.path.exists(labels):
    raise ExportError(
        f"{folder}: no {LABELS_FILE} beside the model; the class names of "
        "each head come from it (train writes it into the model folder)")
  return heads_lib.LabelSchema.load(labels)


def load_trained(model_dir: str, model_file: Optional[str] = None):
  """Loads the model of ``model_dir`` (see choose_model_file; or a .keras
  file) and the labels.json beside it. Returns (keras model, LabelSchema)."""
  model_path, _ = choose_model_file(model_dir, model_file)
  schema = load_schema(model_path)
  return _load_checked(model_path, schema), schema


def _load_checked(model_path: str, schema: heads_lib.LabelSchema):
  from mlc_keras.modeling import saving  # keras import kept at the edge
  model = saving.load_model(model_path)
  shapes = {n: tuple(t.shape) for n, t in _symbolic_outputs(model).items()}
  check_outputs_match_schema(shapes, schema, model_path)
  return model


def _symbolic_outputs(model) -> dict:
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.named_outputs(model)


# --- SavedModel -----------------------------------------------------------------


class ServingModule(tf.Module):
  """The object saved as the SavedModel: two tf.functions over one model.

  The Keras model is captured by the functions rather than attached, so only
  its variables (tracked below) and the functions are serialised; Keras layer
  objects never reach the SavedModel.
  """

  def __init__(self, model, schema: heads_lib.LabelSchema,
               max_image_bytes: int = MAX_IMAGE_BYTES,
               labels_path: Optional[str] = None,
               table=None, threshold: float = DEFAULT_THRESHOLD,
               classes_path: Optional[str] = None,
               max_image_pixels: int = MAX_IMAGE_PIXELS):
    super().__init__(name="mlc_serving")
    size = image_size_of(model)
    outputs = _symbolic_outputs(model)
    output_names = list(outputs)
    if table is not None:
      _check_class_output(outputs, table)
    # Outputs that get a "<name>_class" / "<name>_score" pair in the bytes
    # signature: the heads, and the composed classes when a table names them.
    class_names = {h.name: list(h.classes) for h in schema.heads}
    if table is not None:
      class_names[CLASS_OUTPUT] = list(table.classes)
    derived = {n + s for n in output_names if n in class_names
               for s in (CLASS_SUFFIX, SCORE_SUFFIX)}
    clash = sorted(derived & set(output_names))
    if clash:
      raise ExportError(
          f"model output(s) {clash} collide with the label outputs the bytes "
          "signature adds; rename them")
    if max_image_bytes <= 0:
      raise ExportError(f"max_image_bytes must be > 0, got {max_image_bytes}")
    if max_image_pixels <= 0:
      raise ExportError(f"max_image_pixels must be > 0, got {max_image_pixels}")
    check_threshold(threshold)
    self.image_size = size
    self.max_image_bytes = int(max_image_bytes)
    self.max_image_pixels = int(max_image_pixels)
    self.threshold = float(threshold)

    def probabilities(image):
      return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v
              for k, v in model_outputs(model, image).items()}

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.uint8, name=IMAGE_INPUT)])
    def serve_image(image):
      return probabilities(image)

    def decode_checked(encoded):
      # The header is checked before DecodeImage runs: the decoder allocates
      # width x height x 3 bytes from the header alone (a 631-byte JPEG
      # claiming 12000x12000 decodes to 432 MB here). Bytes whose size cannot
      # be read are refused too, rather than decoded unchecked: decode_image
      # also accepts JPEG XL, whose header is not parsed here.
      extent = imageio.decoded_extent(encoded)  # width, height, frames
      readable = tf.debugging.Assert(
          tf.reduce_all(extent >= 0),
          [f"{BYTES_INPUT}: not a JPEG, PNG, GIF, BMP or WebP image, or its "
           "header is cut short"])
      with tf.control_dependencies([readable]):
        pixels = tf.reduce_prod(tf.cast(extent, tf.float64))
      # float64: a PNG may claim 2^32 x 2^32, which overflows int64.
      small_enough = tf.debugging.Assert(
          pixels <= self.max_image_pixels,
          [f"{BYTES_INPUT}: an image is too large: it decodes to more than "
           f"the cap of {self.max_image_pixels} pixels (max_image_pixels; "
           "a GIF decodes every frame at the size of its largest); width, "
           "height, frames:", extent])
      with tf.control_dependencies([small_enough]):
        return imageio.decode_and_resize(tf.identity(encoded), size)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(image_bytes):
      too_big = tf.debugging.assert_less_equal(
          tf.strings.length(image_bytes), self.max_image_bytes,
          message=(f"{BYTES_INPUT}: an image is larger than "
                   f"{self.max_image_bytes} bytes"))
      with tf.control_dependencies([too_big]):
        image_bytes = tf.identity(image_bytes)
      images = tf.map_fn(
          decode_checked, image_bytes,
          fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
      outputs = probabilities(images)
      result = {}
      for name, probs in outputs.items():
        result[name] = probs
        if name in class_names:
          best = tf.gather(tf.constant(class_names[name]),
                           tf.argmax(probs, axis=-1))
          score = tf.reduce_max(probs, axis=-1)
          if name == CLASS_OUTPUT:
            # As compose.predict_classes: a weak best class is "unknown".
            best = tf.where(score >= self.threshold, best,
                            tf.constant(UNKNOWN_CLASS))
          result[name + CLASS_SUFFIX] = best
          result[name + SCORE_SUFFIX] = score
      return result

    self.serve_image = serve_image
    self.serve_bytes = serve_bytes
    # Tracked so tf.saved_model.save writes them; the functions capture them.
    self.model_variables = list(serve_image.get_concrete_function().variables)
    if labels_path is not None:
      self.labels = tf.saved_model.Asset(labels_path)
    if classes_path is not None:
      self.classes = tf.saved_model.Asset(classes_path)

  def signatures(self) -> dict:
    """The signatures to save: {key: concrete function}."""
    return {
        SERVING_SIGNATURE: self.serve_bytes.get_concrete_function(),
        TENSOR_SIGNATURE: self.serve_image.get_concrete_function(),
    }


def build_serving_module(model, schema: heads_lib.LabelSchema,
                         max_image_bytes: int = MAX_IMAGE_BYTES,
                         labels_path: Optional[str] = None,
                         table=None, threshold: float = DEFAULT_THRESHOLD,
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


def check_threshold(threshold: float) -> float:
  """Raises ExportError unless 0 <= threshold <= 1."""
  if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
    raise ExportError(
        f"threshold must be a probability in [0, 1], got {threshold!r}")
  return float(threshold)


def _check_class_output(outputs: Mapping[str, Any], table) -> None:
  if CLASS_OUTPUT not in outputs:
    raise ExportError(
        f"the model has no {CLASS_OUTPUT!r} output for the class table "
        f"{table.source} (outputs: {', '.join(sorted(outputs))})")
  width = tuple(outputs[CLASS_OUTPUT].shape)[-1]
  if width is not None and width != len(table):
    raise ExportError(
        f"the model's {CLASS_OUTPUT!r} output has {width} columns but the "
        f"class table {table.source} has {len(table)} classes")


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
    raise _missing_dependency("tensorflow-serving-api") from None
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = SERVING_SIGNATURE
  request.inputs[BYTES_INPUT].CopyFrom(
      tf.make_tensor_proto(list(encoded_images), dtype=tf.string))
  log = prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))
  folder = os.path.join(export_dir, "assets.extra")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, WARMUP_FILE)
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(log.SerializeToString())
  return path


def to_saved_model(model, schema: heads_lib.LabelSchema, export_dir: str,
                   max_image_bytes: int = MAX_IMAGE_BYTES,
                   warmup_images: Optional[np.ndarray] = None,
                   model_name: str = "mlc", table=None,
                   threshold: float = DEFAULT_THRESHOLD,
                   max_image_pixels: int = MAX_IMAGE_PIXELS) -> str:
  """Writes the SavedModel (both signatures, labels asset, warmup requests)
  into ``export_dir``, which must not exist yet. With ``table`` (the
  compose.ClassTable of the model's "class" output) classes.csv is an asset
  too."""
  if os.path.exists(export_dir):
    raise ExportError(f"{export_dir}: already exists; not overwriting it")
  with tempfile.TemporaryDirectory() as tmp:
    labels = os.path.join(tmp, LABELS_FILE)
    schema.save(labels)
    classes = None
    if table is not None:
      from mlc_keras import compose  # pylint: disable=g-import-not-at-top
      classes = os.path.join(tmp, CLASSES_FILE)
      compose.save(table, schema, classes)
    module = build_serving_module(model, schema, max_image_bytes, labels,
                                  table, threshold, classes, max_image_pixels)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
  size = module.image_size
  if warmup_images is None or not len(warmup_images):
    warmup_images = np.full((1, size, size, 3), 128, np.uint8)
  write_warmup_requests(export_dir, [encode_png(i) for i in warmup_images[:1]],
                        model_name)
  return export_dir


def read_warmup_requests(export_dir: str) -> list:
  """The PredictionLog records of a SavedModel's warmup file."""
  from tensorflow_serving.apis import prediction_log_pb2
  path = os.path.join(export_dir, "assets.extra", WARMUP_FILE)
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


# --- TFLite ---------------------------------------------------------------------


def to_tflite(saved_model_dir: str, output_path: str, quantization: str = "fp32",
              calibration_images: Optional[np.ndarray] = None) -> str:
  """Converts the SavedModel's tensor signature to a TFLite file with
  built-in ops only (never Flex) and checks it loads in LiteRT with one
  signature whose outputs are the signature's output names.

  quantization: fp32 | fp16 (fp16 weights) | dynamic (int8 weights, dynamic
  activations) | int8 (weights and activations int8, calibrated on
  ``calibration_images``, uint8 [N, S, S, 3]; float32 probabilities out).
  """
  parse_choices(quantization, QUANTIZATIONS, "quantization")
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[TENSOR_SIGNATURE])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantization != "fp32":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "fp16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == "int8":
    if calibration_images is None or not len(calibration_images):
      raise ExportError(
          "int8 needs calibration images (a representative manifest or folder)")
    images = np.asarray(calibration_images, np.uint8)

    def representative():
      for i in range(len(images)):
        yield {IMAGE_INPUT: images[i:i + 1]}

    converter.representative_dataset = representative
    # Builtins only, int8 kernels: conversion fails rather than silently
    # leaving float ops in a model called "int8".
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  try:
    flatbuffer = converter.convert()
  except Exception as e:  # the converter raises many types; name the variant
    raise ExportError(
        f"TFLite {quantization} conversion of {saved_model_dir} failed: {e}"
    ) from e
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, "wb") as f:
    f.write(flatbuffer)
  expected = _signature_output_names(saved_model_dir)
  predictor = TFLitePredictor(output_path)
  if set(predictor.output_names) != set(expected):
    raise ExportError(
        f"{output_path}: TFLite signature outputs {predictor.output_names} "
        f"are not the model outputs {expected}")
  return output_path


def _signature_output_names(saved_model_dir: str) -> list[str]:
  # Read from the proto: loading the whole SavedModel again is seconds.
  from tensorflow.core.protobuf import saved_model_pb2
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return sorted(proto.meta_graphs[0].signature_def[TENSOR_SIGNATURE].outputs)


def _run_isolated(fn: Callable, *args):
  # fn(*args) in a fresh spawned process. The TFLite converter and tf2onnx
  # each keep a model's worth of memory after every conversion; a process per
  # conversion returns it to the system.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=1,
                                              mp_context=ctx) as pool:
    try:
      return pool.submit(fn, *args).result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise ExportError(
          f"the converter process died ({fn.__name__}); out of memory?") from e


def tflite_path(folder: str, model_name: str, quantization: str) -> str:
  """Where to_tflite_variants writes a variant."""
  return os.path.join(folder, f"{model_name}_{quantization}.tflite")


def to_tflite_variants(saved_model_dir: str, folder: str, model_name: str,
                       quantizations: Sequence[str] = QUANTIZATIONS,
                       calibration_images: Optional[np.ndarray] = None,
                       isolate: bool = True,
                       log: Callable[[str], None] = print) -> dict[str, str]:
  """Converts every requested variant into ``folder`` (labels.json beside).
  Returns {quantization: path}."""
  quantizations = parse_choices(quantizations, QUANTIZATIONS, "quantization")
  if "int8" in quantizations and (calibration_images is None
                                  or not len(calibration_images)):
    raise ExportError(
        "int8 needs calibration images: pass --representative=<manifest.csv "
        "or image folder>, or leave int8 out of --quantization")
  os.makedirs(folder, exist_ok=True)
  _copy_labels(saved_model_dir, folder)
  paths = {}
  for q in quantizations:
    path = tflite_path(folder, model_name, q)
    log(f"converting TFLite {q} -> {path}")
    cal = calibration_images if q == "int8" else None
    if isolate:
      _run_isolated(to_tflite, saved_model_dir, path, q, cal)
    else:
      to_tflite(saved_model_dir, path, q, cal)
    paths[q] = path
  return paths


def _copy_labels(saved_model_dir: str, folder: str) -> None:
  # labels.json always; classes.csv when the SavedModel has a "class" output.
  for name in (LABELS_FILE, CLASSES_FILE):
    src = os.path.join(saved_model_dir, "assets", name)
    if name == LABELS_FILE or os.path.isfile(src):
      shutil.copyfile(src, os.path.join(folder, name))


# --- ONNX -----------------------------------------------------------------------


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
    raise _missing_dependency(e.name or "tf2onnx/onnx/onnxruntime") from None
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
  fn = getattr(loaded, TENSOR_SIGNATURE, None)
  if fn is None:
    raise ExportError(
        f"{saved_model_dir}: no {TENSOR_SIGNATURE!r} function to convert; "
        "was it written by export_lib?")
  signature = loaded.signatures[TENSOR_SIGNATURE]
  spec = signature.structured_input_signature[1][IMAGE_INPUT]
  expected = sorted(signature.structured_outputs)
  function_to_onnx(fn, [tf.TensorSpec(spec.shape, spec.dtype, name=IMAGE_INPUT)],
                   output_path, opset)
  predictor = OnnxPredictor(output_path)
  if sorted(predictor.output_names) != expected:
    raise ExportError(
        f"{output_path}: ONNX outputs {predictor.output_names} are not the "
        f"model outputs {expected}")
  return output_path


def to_onnx_with_labels(saved_model_dir: str, folder: str, model_name: str,
                        opset: int = ONNX_OPSET, isolate: bool = True) -> str:
  """to_onnx into ``folder``/<model_name>.onnx with labels.json beside."""
  os.makedirs(folder, exist_ok=True)
  _copy_labels(saved_model_dir, folder)
  path = os.path.join(folder, f"{model_name}.onnx")
  if isolate:
    _run_isolated(to_onnx, saved_model_dir, path, opset)
  else:
    to_onnx(saved_model_dir, path, opset)
  return path


# --- predictors -----------------------------------------------------------------


class Predictor:
  """One artefact as a callable: uint8 [N, S, S, 3] -> {output: float32 [N, k]}.

  Subclasses set kind, path, image_size, output_names and implement _run.
  ``schema`` is the labels.json found beside the artefact.
  """

  kind = "?"

  def __init__(self, path: str):
    self.path = path
    self.image_size = 0
    self.output_names: list[str] = []
    self._schema = None
    self._table = False  # not looked up yet

  @property
  def schema(self) -> heads_lib.LabelSchema:
    # Read on first use: converters check a fresh artefact before its
    # labels.json is copied beside it.
    if self._schema is None:
      self._schema = heads_lib.LabelSchema.load(find_labels(self.path))
    return self._schema

  @property
  def class_table(self):
    """The compose.ClassTable naming the columns of the artefact's "class"
    output (classes.csv beside it), or None: no such output or no table.
    Raises compose.ClassTableError if the table does not fit labels.json."""
    if self._table is False:
      self._table = self._find_table() if CLASS_OUTPUT in self.output_names \
          else None
    return self._table

  def _find_table(self):
    path = find_class_table(self.path)
    if path is None:
      return None
    from mlc_keras import compose  # pylint: disable=g-import-not-at-top
    return compose.load(path, self.schema)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
        self.image_size, self.image_size, 3):
      raise ValueError(
          f"{self.kind} predictor wants uint8 [N, {self.image_size}, "
          f"{self.image_size}, 3], got {images.dtype} {list(images.shape)}")
    return self._run(images)

  def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def predict(self, images: np.ndarray, batch_size: int = 32
              ) -> dict[str, np.ndarray]:
    """Like calling it, in batches of ``batch_size``."""
    parts = [self(images[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    if not parts:
      return {n: np.zeros((0,), np.float32) for n in self.output_names}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def __repr__(self):
    return f"<{type(self).__name__} {self.path}>"


class KerasPredictor(Predictor):
  """A .keras model (or an already loaded one, with its file's path)."""

  kind = "keras"

  def __init__(self, path: str, model=None):
    super().__init__(path)
    if model is None:
      from mlc_keras.modeling import saving
      model = saving.load_model(path)
    self.model = model
    self.image_size = image_size_of(model)
    self.output_names = list(_symbolic_outputs(model))

  def _find_table(self):
    # The model's own ComposeClasses layer knows its classes.
    from mlc_keras.modeling import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
    return outputs_lib.table_of(self.model) or super()._find_table()

  def _run(self, images):
    out = self.model.predict_on_batch(images)
    if not isinstance(out, Mapping):
      out = dict(zip(self.output_names,
                     out if isinstance(out, (list, tuple)) else [out]))
    return {k: np.asarray(v) for k, v in out.items()}


class SavedModelPredictor(Predictor):
  """The SavedModel's tensor signature (what the converters start from)."""

  kind = "saved_model"

  def __init__(self, path: str, loaded=None):
    super().__init__(path)
    # Loading is seconds: the two SavedModel predictors can share one.
    self.loaded = loaded if loaded is not None else tf.saved_model.load(path)
    if TENSOR_SIGNATURE not in self.loaded.signatures:
      raise ExportError(f"{path}: SavedModel has no {TENSOR_SIGNATURE!r} "
                        "signature; was it written by export_lib?")
    self._fn = self.loaded.signatures[TENSOR_SIGNATURE]
    spec = self._fn.structured_input_signature[1][IMAGE_INPUT]
    self.image_size = int(spec.shape[1])
    self.output_names = sorted(self._fn.structured_outputs)

  def _run(self, images):
    out = self._fn(**{IMAGE_INPUT: tf.constant(images)})
    return {k: v.numpy() for k, v in out.items()}


class SavedModelBytesPredictor(SavedModelPredictor):
  """The SavedModel's bytes signature: images are PNG-encoded (lossless) and
  decoded in-graph, so the pixels match the tensor signature's exactly."""

  kind = "saved_model_bytes"

  def __init__(self, path: str, loaded=None):
    super().__init__(path, loaded)
    self._bytes_fn = self.loaded.signatures[SERVING_SIGNATURE]

  def _run(self, images):
    return self.predict_encoded([encode_png(i) for i in images])

  def predict_encoded(self, encoded: Sequence[bytes], with_labels: bool = False
                      ) -> dict[str, np.ndarray]:
    """Calls serving_default on encoded images, as TF Serving would.
    Returns the probability outputs, plus the label outputs if asked."""
    out = self._bytes_fn(**{BYTES_INPUT: tf.constant(list(encoded),
                                                     dtype=tf.string)})
    return {k: v.numpy() for k, v in out.items()
            if with_labels or k in self.output_names}


class TFLitePredictor(Predictor):
  """A .tflite file through LiteRT's signature runner (outputs by name)."""

  kind = "tflite"

  def __init__(self, path: str, num_threads: Optional[int] = None):
    super().__init__(path)
    try:
      from ai_edge_litert import interpreter as litert
    except ImportError:
      raise _missing_dependency("ai-edge-litert") from None
    self.interpreter = litert.Interpreter(
        model_path=path, num_threads=num_threads or os.cpu_count())
    signatures = self.interpreter.get_signature_list()
    if len(signatures) != 1:
      raise ExportError(
          f"{path}: expected one signature, found {sorted(signatures)}")
    key, io = next(iter(signatures.items()))
    self._runner = self.interpreter.get_signature_runner(key)
    details = self._runner.get_input_details()
    if list(details) != [IMAGE_INPUT]:
      raise ExportError(f"{path}: signature inputs {list(details)}, "
                        f"expected [{IMAGE_INPUT!r}]")
    shape = details[IMAGE_INPUT]["shape_signature"]
    self.image_size = int(shape[1])
    self.output_names = sorted(io["outputs"])

  def _run(self, images):
    out = self._runner(**{IMAGE_INPUT: images})
    # The runner hands back views of interpreter buffers: copy them.
    return {k: np.array(v) for k, v in out.items()}


class OnnxPredictor(Predictor):
  """A .onnx file through ONNX Runtime (CPU)."""

  kind = "onnx"

  def __init__(self, path: str):
    super().__init__(path)
    try:
      import onnxruntime
    except ImportError:
      raise _missing_dependency("onnxruntime") from None
    self.session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"])
    inputs = self.session.get_inputs()
    if [i.name for i in inputs] != [IMAGE_INPUT]:
      raise ExportError(f"{path}: ONNX inputs {[i.name for i in inputs]}, "
                        f"expected [{IMAGE_INPUT!r}]")
    self.image_size = int(inputs[0].shape[1])
    self.output_names = [o.name for o in self.session.get_outputs()]

  def _run(self, images):
    values = self.session.run(self.output_names, {IMAGE_INPUT: images})
    return dict(zip(self.output_names, values))


def find_labels(path: str) -> str:
  """labels.json for an artefact: beside a file; in a SavedModel's assets/,
  in the folder itself or beside it. Raises ExportError naming where it looked."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    candidates = [os.path.join(path, "assets", LABELS_FILE),
                  os.path.join(path, LABELS_FILE),
                  os.path.join(os.path.dirname(path), LABELS_FILE)]
  else:
    candidates = [os.path.join(os.path.dirname(path), LABELS_FILE)]
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise ExportError(
      f"{path}: no {LABELS_FILE} found (looked in: {', '.join(candidates)})")


def find_class_table(path: str) -> Optional[str]:
  """classes.csv for an artefact, where find_labels looks for labels.json;
  None if there is none."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    candidates = [os.path.join(path, "assets", CLASSES_FILE),
                  os.path.join(path, CLASSES_FILE)]
  else:
    candidates = [os.path.join(os.path.dirname(path), CLASSES_FILE)]
  return next((c for c in candidates if os.path.isfile(c)), None)


def latest_version(base: str) -> Optional[str]:
  """The highest integer-named SavedModel folder under ``base`` (as TF Serving
  picks it), or None."""
  versions = [int(n) for n in os.listdir(base) if n.isdigit()
              and os.path.exists(os.path.join(base, n, "saved_model.pb"))]
  return os.path.join(base, str(max(versions))) if versions else None


def load_predictor(path: str, bytes_signature: bool = False) -> Predictor:
  """Opens any artefact as a Predictor.

  path: a .keras file, a model folder (the .keras file export would pick:
    calibrated.keras when current, else model.keras), a SavedModel
    folder, a TF Serving model folder (the highest version is used), a
    .tflite file or a .onnx file.
  bytes_signature: for a SavedModel, go through serving_default (encoded
    bytes) instead of the tensor signature.
  """
  if not os.path.exists(path):
    raise ExportError(f"{path}: no such model file or folder")
  predictor = _open(path, bytes_signature)
  predictor.schema  # fail now, naming the artefact, if labels.json is missing
  return predictor


def _open(path: str, bytes_signature: bool) -> Predictor:
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "saved_model.pb")):
      return (SavedModelBytesPredictor(path) if bytes_signature
              else SavedModelPredictor(path))
    if any(os.path.exists(os.path.join(path, f))
           for f in (MODEL_FILE, CALIBRATED_FILE)):
      # The model export would pick (calibrated.keras when current).
      chosen, why = choose_model_file(path)
      predictor = KerasPredictor(chosen)
      if os.path.exists(os.path.join(path, CALIBRATED_FILE)):
        predictor.chosen_because = why  # a choice was made: predict says it
      return predictor
    version = latest_version(path)
    if version:
      return _open(version, bytes_signature)
    raise ExportError(
        f"{path}: neither a SavedModel (saved_model.pb), a model folder "
        "(model.keras) nor a TF Serving model folder (integer versions)")
  lower = path.lower()
  if lower.endswith(".keras"):
    return KerasPredictor(path)
  if lower.endswith(".tflite"):
    return TFLitePredictor(path)
  if lower.endswith(".onnx"):
    return OnnxPredictor(path)
  raise ExportError(
      f"{path}: unknown model format; expected .keras, .tflite, .onnx or a "
      "SavedModel folder")


# --- parity ---------------------------------------------------------------------


def parity(candidate: Predictor | Callable[[np.ndarray], Mapping[str, np.ndarray]],
           reference: Predictor | Mapping[str, np.ndarray],
           images: np.ndarray,
           tolerance: Optional[Tolerance] = None,
           name: Optional[str] = None,
           batch_size: int = 32) -> dict:
  """Compares an artefact with the reference (the Keras model, or its outputs
  already computed on ``images``) on the same uint8 images.

  Returns a JSON-able report: per output, max absolute probability
  difference and top-1 agreement; with a tolerance, whether it passed and
  why not.
  """
  images = np.asarray(images, np.uint8)
  if isinstance(reference, Mapping):
    ref = dict(reference)
  else:
    ref = reference.predict(images, batch_size)

  if isinstance(candidate, Predictor):
    got = candidate.predict(images, batch_size)
  else:
    got = dict(candidate(images))
  per_output, failures = {}, []
  for key in sorted(ref):
    r = np.asarray(ref[key])
    if key not in got:
      failures.append(f"{key}: missing from the artefact's outputs")
      continue
    g = np.asarray(got[key])
    if g.shape != r.shape:
      failures.append(f"{key}: shape {list(g.shape)} != {list(r.shape)}")
      continue
    if not np.issubdtype(r.dtype, np.floating):
      same = float(np.mean(g == r)) if r.size else 1.0
      per_output[key] = {"max_abs_diff": None, "top1_agreement": same}
      continue
    diff = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
    agree, near_ties, disagree = 1.0, 0, 0
    if r.ndim >= 2 and len(r) and r.shape[-1] >= 2:
      differs = np.argmax(g, -1) != np.argmax(r, -1)
      top2 = np.sort(r, axis=-1)[..., -2:]
      disagree = int(differs.sum())
      near_ties = int((differs & (top2[..., 1] - top2[..., 0] < NEAR_TIE)).sum())
      agree = 1.0 - float(differs.mean())
    per_output[key] = {"max_abs_diff": diff, "top1_agreement": agree,
                       "disagreements": disagree,
                       "near_tie_disagreements": near_ties}
    if tolerance is not None:
      if (tolerance.max_abs_diff is not None
          and not diff <= tolerance.max_abs_diff):
        failures.append(f"{key}: max |diff| {diff:.3g} > "
                        f"{tolerance.max_abs_diff:g}")
      if (tolerance.min_top1_agreement is not None
          and agree < tolerance.min_top1_agreement):
        failures.append(
            f"{key}: top-1 agreement {agree:.1%} < "
            f"{tolerance.min_top1_agreement:.0%} ({near_ties} of {disagree} "
            f"disagreements are near-ties: the reference's top two within "
            f"{NEAR_TIE})")
  return {
      "artefact": name or getattr(candidate, "kind", "candidate"),
      "path": getattr(candidate, "path", None),
      "images": int(len(images)),
      "tolerance": dataclasses.asdict(tolerance) if tolerance else None,
      "outputs": per_output,
      "passed": not failures,
      "failures": failures,
  }


def format_parity_table(reports: Sequence[dict]) -> str:
  """The parity reports as a fixed-width text table, one row per output."""
  rows = [("artefact", "output", "max|diff|", "top-1 agree", "limit", "ok")]
  for rep in reports:
    tol = rep.get("tolerance") or {}
    limit = []
    if tol.get("max_abs_diff") is not None:
      limit.append(f"diff<={tol['max_abs_diff']:g}")
    if tol.get("min_top1_agreement") is not None:
      limit.append(f"agree>={tol['min_top1_agreement']:.0%}")
    for key, v in rep["outputs"].items():
      diff = "-" if v["max_abs_diff"] is None else f"{v['max_abs_diff']:.2e}"
      rows.append((rep["artefact"], key, diff, f"{v['top1_agreement']:.1%}",
                   " ".join(limit) or "-",
                   "NO" if any(f.startswith(key + ":") for f in rep["failures"])
                   else "yes"))
    for f in rep["failures"]:
      if not any(f.startswith(k + ":") for k in rep["outputs"]):
        rows.append((rep["artefact"], f, "", "", "", "NO"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)


# --- images for calibration and parity --------------------------------------------


def list_images(source: str, image_column: str = "image") -> list[str]:
  """Image paths from a folder (recursive), a manifest CSV (its image column,
  relative paths against the CSV's folder) or a single image file."""
  if os.path.isdir(source):
    found = []
    for root, dirs, files in os.walk(source):
      dirs.sort()
      found += [os.path.join(root, f) for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
      raise ExportError(f"{source}: no {'/'.join(IMAGE_EXTENSIONS)} images in "
                        "this folder")
    return found
  if not os.path.isfile(source):
    raise ExportError(f"{source}: no such image, folder or manifest")
  if source.lower().endswith(".csv"):
    root = os.path.dirname(os.path.abspath(source))
    with open(source, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      # Column names are stripped, as training reads them.
      header = [c.strip() for c in next(reader, [])]
      if image_column not in header:
        raise ExportError(f"{source}: no {image_column!r} column (columns: "
                          f"{header}); give --image_column")
      i = header.index(image_column)
      paths = [row[i].strip() for row in reader
               if len(row) > i and row[i].strip()]
    if not paths:
      raise ExportError(f"{source}: the manifest lists no images")
    return [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
  return [source]


def read_image(path: str, image_size: int) -> np.ndarray:
  """One file -> uint8 [S, S, 3] through imageio.decode_and_resize (the
  training path). Raises ExportError naming the file if it is unreadable."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ExportError(f"{path}: cannot read image ({e.strerror})") from None
  try:
    return imageio.decode_and_resize(tf.constant(data), image_size).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    raise ExportError(f"{path}: not a decodable image "
                      f"({imageio.op_reason(e)})") from None


def load_images(paths: Sequence[str], image_size: int) -> np.ndarray:
  """Decodes and resizes each path; uint8 [N, S, S, 3]."""
  if not paths:
    return np.zeros((0, image_size, image_size, 3), np.uint8)
  return np.stack([read_image(p, image_size) for p in paths])


def default_image_sources(model_dir: str) -> tuple[Optional[str], Optional[str]]:
  """(calibration, parity) manifests of real images for a trained model
  folder, used when neither --representative nor --parity_images is given.

  Calibration prefers the training manifest (what int8 ranges should cover),
  parity the set the run was evaluated on (results.json), else the
  validation manifest; each falls back to the other. Read from results.json
  and config.json; (None, None) if none exists on this machine.
  """
  train, held_out = [], []
  results = os.path.join(model_dir, "results.json")
  if os.path.isfile(results):
    with open(results, encoding="utf-8") as f:
      evaluated = json.load(f).get("evaluated_on")
    if isinstance(evaluated, str) and evaluated.endswith(".csv"):
      held_out.append(evaluated)
  data = config_lib.run_data(model_dir)
  if data is not None:
    held_out.append(data.get("val_manifest"))
    train.append(data.get("manifest"))
    if data.get("demo_dir") and not any(
        data.get(k) for k in ("manifest", "tfrecord", "tfds")):
      train.append(os.path.join(data["demo_dir"], "train.csv"))
      held_out.append(os.path.join(data["demo_dir"], "val.csv"))
  train = [c for c in train if c and os.path.isfile(c)]
  held_out = [c for c in held_out if c and os.path.isfile(c)]
  calibration = (train + held_out or [None])[0]
  parity_source = (held_out + train or [None])[0]
  return calibration, parity_source


def _sample(paths: Sequence[str], limit: int, seed: int) -> list[str]:
  # Seeded sample, not the first N: a sorted folder may be one class first.
  order = np.random.default_rng(seed).permutation(len(paths))
  return [paths[i] for i in sorted(order[:limit])]


# --- the whole export -------------------------------------------------------------


@dataclasses.dataclass
class ExportResult:
  saved_model: Optional[str] = None
  tflite: dict = dataclasses.field(default_factory=dict)
  onnx: Optional[str] = None
  parity_path: Optional[str] = None
  parity: list = dataclasses.field(default_factory=list)
  # check_saved_model's report: ops, signatures, the standalone test call.
  saved_model_check: dict = dataclasses.field(default_factory=dict)


def _paths(base: str, model_name: str, version: int) -> dict[str, str]:
  v = str(version)
  return {
      "saved_model": os.path.join(base, model_name, v),
      "tflite": os.path.join(base, "litert", model_name, v),
      "onnx": os.path.join(base, "onnx", model_name, v),
      "parity": os.path.join(base, "parity", model_name, v + ".json"),
  }


def export(model_dir: str,
           output: Optional[str] = None,
           formats: Sequence[str] | str = FORMATS,
           version: int = 1,
           model_name: Optional[str] = None,
           quantizations: Sequence[str] | str = QUANTIZATIONS,
           representative: Optional[str] = None,
           parity_images: Optional[str] = None,
           max_image_bytes: int = MAX_IMAGE_BYTES,
           overwrite: bool = False,
           isolate: bool = True,
           log: Callable[[str], None] = print,
           model_file: Optional[str] = None,
           class_table: Optional[str] = None,
           threshold: float = DEFAULT_THRESHOLD,
           max_image_pixels: int = MAX_IMAGE_PIXELS,
           image_column: Optional[str] = None) -> ExportResult:
  """Exports a trained model folder to every requested format, checks each
  artefact against the Keras model and publishes them only if all pass.

  Args:
    model_dir: folder with model.keras and labels.json (written by train),
      or a .keras file with labels.json beside it.
    output: base folder; default <model_dir>/export.
    formats: subset of FORMATS (the SavedModel is always built: the
      converters start from its tensor signature; it is only published when
      "saved_model" is asked for).
    version: positive integer version (TF Serving's folder name).
    model_name: default the model folder's name, else "mlc".
    quantizations: TFLite variants, subset of QUANTIZATIONS.
    representative: manifest CSV, image folder or image for int8 calibration.
    parity_images: manifest CSV, image folder or image for the parity check.
      With only one of the two given, it serves both; with neither, the
      run's own training and evaluation images (default_image_sources).
    max_image_bytes: per-image cap of the bytes signature on encoded bytes.
    image_column: image path column of manifest CSVs given as image sources;
      default the run's (config.json), else "image".
    overwrite: replace an existing version instead of refusing.
    isolate: convert TFLite/ONNX each in a fresh process (frees the memory
      the converters keep).
    log: progress sink.
    model_file: which .keras file of model_dir to export (a file name);
      default calibrated.keras when it is current, else model.keras (see
      choose_model_file).
    class_table: class table CSV (compose.py): every artefact gets a
      "class" output over its classes and classes.csv beside it. Without
      it, a model that already has a "class" output keeps it, and its
      table is written beside the artefacts.
    threshold: the SavedModel bytes signature's class_class is "unknown"
      when the best class probability is below it.
    max_image_pixels: per-image cap of the bytes signature on width x
      height, read from the image header before decoding.

  Returns:
    ExportResult with the published paths and the parity reports.

  Raises:
    compose.ClassTableError: a class table that does not fit labels.json;
    ExportError: bad arguments, a failed conversion or check;
    ParityError: an artefact outside its tolerance (nothing is published;
      the report stays in the staging folder named in the message).
  """
  formats = parse_choices(formats, FORMATS, "format")
  quantizations = (parse_choices(quantizations, QUANTIZATIONS, "quantization")
                   if "tflite" in formats else ())
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ExportError(f"version must be a positive integer, got {version!r}")
  threshold = check_threshold(threshold)
  for name, cap in (("max_image_bytes", max_image_bytes),
                    ("max_image_pixels", max_image_pixels)):
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
      raise ExportError(f"{name} must be a positive integer, got {cap!r}")
  model_dir = model_dir.rstrip("/") or model_dir
  # A .keras file is accepted too; its folder stands for the run.
  folder = model_dir if not os.path.isfile(model_dir) else (
      os.path.dirname(os.path.abspath(model_dir)))
  if model_name is None:
    model_name = os.path.basename(os.path.abspath(folder)) or "mlc"
    if not _MODEL_NAME.match(model_name) or model_name in _RESERVED_MODEL_NAMES:
      model_name = "mlc"
  if not _MODEL_NAME.match(model_name) or model_name in _RESERVED_MODEL_NAMES:
    raise ExportError(
        f"model name {model_name!r} must be letters, digits, '_', '-', '.' "
        f"and not one of {sorted(_RESERVED_MODEL_NAMES)}")
  base = output or os.path.join(folder, "export")
  final = _paths(base, model_name, version)
  wanted = [final["saved_model"] if "saved_model" in formats else None,
            final["tflite"] if "tflite" in formats else None,
            final["onnx"] if "onnx" in formats else None]
  existing = [p for p in wanted if p and os.path.exists(p)]
  if existing and not overwrite:
    raise ExportError(
        f"version {version} of {model_name!r} already exists ({existing[0]}); "
        "pick another --version or pass --overwrite")

  model_path, why = choose_model_file(model_dir, model_file)
  log(f"exporting {model_path}: {why}")
  schema = load_schema(model_path)
  from mlc_keras import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
  # Before loading the model: a bad table fails in a second, not after it.
  table = compose.load(class_table, schema) if class_table else None
  model = _load_checked(model_path, schema)
  if table is not None:
    model = outputs_lib.with_class_output(model, table)
  else:
    table = outputs_lib.table_of(model)
    if table is not None:
      log(f"the model has a {CLASS_OUTPUT!r} output ({len(table)} classes); "
          f"it is exported with its table as {CLASSES_FILE}")
  size = image_size_of(model)
  image_column = image_column or config_lib.run_image_column(folder)

  # Images: calibration and parity come from the user or the run's own data.
  default_cal = default_par = None
  if representative is None and parity_images is None:
    default_cal, default_par = default_image_sources(folder)
    if default_par:
      log(f"no --representative/--parity_images: calibrating on "
          f"{default_cal}, checking parity on {default_par}")
  cal_source = representative or parity_images or default_cal
  par_source = parity_images or representative or default_par
  calibration = None
  if "int8" in quantizations:
    if cal_source is None:
      raise ExportError(
          "int8 needs calibration images and none were found: pass "
          "--representative=<manifest.csv or image folder>, or leave int8 "
          "out of --quantization")
    calibration = load_images(
        _sample(list_images(cal_source, image_column), MAX_CALIBRATION_IMAGES,
                seed=1), size)
  if par_source is not None:
    par_images = load_images(
        _sample(list_images(par_source, image_column), MAX_PARITY_IMAGES,
                seed=0), size)
  else:
    # Only float variants reach here: their parity is numerical, so seeded
    # noise still exercises every weight.
    log("warning: no images found for the parity check; using 32 seeded "
        "random images (pass --parity_images to check on real ones)")
    par_images = np.random.default_rng(0).integers(
        0, 256, (32, size, size, 3), dtype=np.uint8)

  staging = os.path.join(base, ".staging", f"{model_name}-{version}")
  shutil.rmtree(staging, ignore_errors=True)
  staged = _paths(staging, model_name, version)
  result = ExportResult()

  log(f"writing SavedModel -> {staged['saved_model']}")
  to_saved_model(model, schema, staged["saved_model"], max_image_bytes,
                 warmup_images=par_images[:1], model_name=model_name,
                 table=table, threshold=threshold,
                 max_image_pixels=max_image_pixels)
  check = result.saved_model_check = check_saved_model(staged["saved_model"])
  log(f"SavedModel loads in plain TensorFlow; {sum(check['ops'].values())} "
      f"nodes, {len(check['ops'])} op types, no Python or custom ops")
  if "tflite" in formats:
    result.tflite = to_tflite_variants(
        staged["saved_model"], staged["tflite"], model_name, quantizations,
        calibration, isolate=isolate, log=log)
  if "onnx" in formats:
    log(f"converting ONNX -> {staged['onnx']}")
    result.onnx = to_onnx_with_labels(staged["saved_model"], staged["onnx"],
                                      model_name, isolate=isolate)

  log(f"parity check on {len(par_images)} images")
  reference = KerasPredictor(model_path, model=model).predict(par_images)
  tensor_sig = SavedModelPredictor(staged["saved_model"])
  candidates = [("saved_model", tensor_sig, FP32_TOLERANCE),
                ("saved_model_bytes",
                 SavedModelBytesPredictor(staged["saved_model"],
                                          tensor_sig.loaded),
                 FP32_TOLERANCE)]
  candidates += [(f"tflite_{q}", TFLitePredictor(p), TOLERANCES[q])
                 for q, p in result.tflite.items()]
  if result.onnx:
    candidates.append(("onnx", OnnxPredictor(result.onnx), FP32_TOLERANCE))
  reports = [parity(pred, reference, par_images, tol, name)
             for name, pred, tol in candidates]
  for rep in reports:  # staged paths are about to move
    rep["path"] = os.path.relpath(rep["path"], staging)
  log(format_parity_table(reports))
  payload = {"model_dir": os.path.abspath(model_dir), "model_name": model_name,
             "model_file": os.path.abspath(model_path),
             "class_table": (None if table is None else
                             os.path.abspath(class_table) if class_table
                             else "carried by the model"),
             "threshold": threshold if table is not None else None,
             "version": version, "image_size": size,
             "max_image_bytes": max_image_bytes,
             "max_image_pixels": max_image_pixels,
             "parity_images": par_source or "seeded random",
             "calibration_images": cal_source if calibration is not None else None,
             "reports": reports}
  os.makedirs(os.path.dirname(staged["parity"]), exist_ok=True)
  with open(staged["parity"], "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
  failed = [r for r in reports if not r["passed"]]
  if failed:
    hint = ""
    if all(r["artefact"].startswith("tflite_") and r["artefact"] != "tflite_fp32"
           for r in failed):
      hint = (" To publish the others, leave the failing variant(s) out of "
              "--quantization (int8 needs a well-trained model and real "
              "--representative images).")
    raise ParityError(
        "parity check failed for "
        + ", ".join(f"{r['artefact']} ({'; '.join(r['failures'])})"
                    for r in failed)
        + f". Nothing was published; artefacts and report are in {staging}."
        + hint)

  # Publish: each artefact folder moves into place in one rename.
  published = {"parity": True, "saved_model": "saved_model" in formats,
               "tflite": "tflite" in formats, "onnx": "onnx" in formats}
  for key, src in staged.items():
    if not published[key]:
      continue
    dst = final[key]
    if os.path.exists(dst):
      shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
  shutil.rmtree(staging, ignore_errors=True)
  try:
    os.rmdir(os.path.join(base, ".staging"))
  except OSError:
    pass  # another export is staging

  result.saved_model = final["saved_model"] if published["saved_model"] else None
  result.tflite = {q: tflite_path(final["tflite"], model_name, q)
                   for q in result.tflite}
  if result.onnx:
    result.onnx = os.path.join(final["onnx"], os.path.basename(result.onnx))
  result.parity_path = final["parity"]
  result.parity = reports
  log(f"exported {model_name!r} version {version} under {base}")
  return result


# --- predictions as JSON ---------------------------------------------------------


def compose_outputs(outputs: Mapping[str, np.ndarray], table
                    ) -> dict[str, np.ndarray]:
  """``outputs`` with its "class" output (re)computed from the heads through
  ``table`` (a compose.ClassTable): what a model exported with that table
  would return."""
  from mlc_keras import compose  # pylint: disable=g-import-not-at-top
  heads = {k: v for k, v in outputs.items() if k != CLASS_OUTPUT}
  probs = compose.compose_probs(heads, table).astype(np.float32)
  return {**outputs, CLASS_OUTPUT: np.atleast_2d(probs)}


def describe(outputs: Mapping[str, np.ndarray], index: int,
             schema: heads_lib.LabelSchema, table=None,
             threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
  """One image's outputs as the predict CLI prints them: a head becomes
  {"class", "score", "scores": {class: p}}; so does the "class" output when
  ``table`` (a compose.ClassTable) names its columns, its "class" being
  "unknown" when the best probability is below ``threshold``; any other
  output its raw values."""
  result = {}
  for name in _ordered(outputs, schema):
    row = np.asarray(outputs[name][index])
    if name in schema.names:
      classes = schema.head(name).classes
      best = int(np.argmax(row))
      result[name] = {"class": classes[best], "score": float(row[best]),
                      "scores": {c: float(p) for c, p in zip(classes, row)}}
    elif name == CLASS_OUTPUT and table is not None:
      if row.shape != (len(table),):
        raise ExportError(
            f"the {CLASS_OUTPUT!r} output has {row.shape[-1]} columns but the "
            f"class table {table.source} has {len(table)} classes")
      best = int(np.argmax(row))
      score = float(row[best])
      result[name] = {
          "class": table.classes[best] if score >= threshold else UNKNOWN_CLASS,
          "score": score,
          "scores": {c: float(p) for c, p in zip(table.classes, row)}}
    else:
      result[name] = row.tolist() if row.dtype.kind != "S" else row.astype(str).tolist()
  return result


def _ordered(outputs: Mapping[str, np.ndarray],
             schema: heads_lib.LabelSchema) -> list[str]:
  heads = [n for n in schema.names if n in outputs]
  return heads + sorted(n for n in outputs if n not in schema.names)

