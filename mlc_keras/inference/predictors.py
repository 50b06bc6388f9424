"""Every artefact as one callable: uint8 [N, S, S, 3] -> {output: float32 [N, k]}.

Used by the parity check, the predict CLI and the latency benchmark;
load_predictor opens any artefact (or a run folder) by its path.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.exporters import metadata
from mlc_keras.exporters import saved_model

# Predictor.class_table before its first look-up (None means "no table").
_NOT_LOOKED_UP = object()


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
    self._table = _NOT_LOOKED_UP

  @property
  def schema(self) -> heads_lib.LabelSchema:
    # Read on first use: converters check a fresh artefact before its
    # labels.json is copied beside it.
    if self._schema is None:
      try:
        self._schema = heads_lib.LabelSchema.load(
            artefacts.find_labels(self.path))
      except ExportError:
        # A .tflite or .onnx file copied alone carries its own labels.json.
        text = self._embedded_labels()
        if text is None:
          raise
        self._schema = heads_lib.LabelSchema.from_dict(
            json.loads(text), source=f"{self.path} (embedded labels.json)")
    return self._schema

  def _embedded_labels(self) -> Optional[str]:
    """The labels.json text stored inside the artefact, or None."""
    return None

  @property
  def class_table(self):
    """The compose.ClassTable naming the columns of the artefact's "class"
    output (classes.csv beside it), or None: no such output or no table.
    Raises compose.ClassTableError if the table does not fit labels.json."""
    if self._table is _NOT_LOOKED_UP:
      has_class = artefacts.CLASS_OUTPUT in self.output_names
      self._table = self._find_table() if has_class else None
    return self._table

  def _find_table(self):
    path = artefacts.find_class_table(self.path)
    if path is None:
      return None
    from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
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
      from mlc_keras.modeling import saving  # pylint: disable=g-import-not-at-top
      model = saving.load_model(path)
    self.model = model
    self.image_size = run_dir.image_size_of(model)
    self.output_names = list(run_dir.symbolic_outputs(model))

  def _find_table(self):
    # The model's own ComposeClasses layer knows its classes.
    from mlc_keras.modeling import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
    return outputs_lib.table_of(self.model) or super()._find_table()

  def _embedded_labels(self):
    from mlc_keras.modeling import saving  # pylint: disable=g-import-not-at-top
    return saving.read_schema_text(self.path)

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
    if artefacts.TENSOR_SIGNATURE not in self.loaded.signatures:
      raise ExportError(f"{path}: SavedModel has no {artefacts.TENSOR_SIGNATURE!r} "
                        "signature; was it written by mlc_keras.export?")
    self._fn = self.loaded.signatures[artefacts.TENSOR_SIGNATURE]
    spec = self._fn.structured_input_signature[1][artefacts.IMAGE_INPUT]
    self.image_size = int(spec.shape[1])
    self.output_names = sorted(self._fn.structured_outputs)

  def _run(self, images):
    out = self._fn(**{artefacts.IMAGE_INPUT: tf.constant(images)})
    return {k: v.numpy() for k, v in out.items()}


class SavedModelBytesPredictor(SavedModelPredictor):
  """The SavedModel's bytes signature: images are PNG-encoded (lossless) and
  decoded in-graph, so the pixels match the tensor signature's exactly."""

  kind = "saved_model_bytes"

  def __init__(self, path: str, loaded=None):
    super().__init__(path, loaded)
    self._bytes_fn = self.loaded.signatures[artefacts.SERVING_SIGNATURE]

  def _run(self, images):
    return self.predict_encoded([saved_model.encode_png(i) for i in images])

  def predict_encoded(self, encoded: Sequence[bytes], with_labels: bool = False
                      ) -> dict[str, np.ndarray]:
    """Calls serving_default on encoded images, as TF Serving would.
    Returns the probability outputs, plus the label outputs if asked."""
    out = self._bytes_fn(**{artefacts.BYTES_INPUT: tf.constant(list(encoded),
                                                     dtype=tf.string)})
    return {k: v.numpy() for k, v in out.items()
            if with_labels or k in self.output_names}


class SavedModelExamplePredictor(SavedModelPredictor):
  """The SavedModel's tf.Example signature: each image PNG-encoded into a
  tf.Example under image/encoded, parsed and decoded in-graph."""

  kind = "saved_model_examples"

  def __init__(self, path: str, loaded=None):
    super().__init__(path, loaded)
    self._examples_fn = self.loaded.signatures[artefacts.EXAMPLE_SIGNATURE]

  def _run(self, images):
    examples = [saved_model.example_of(saved_model.encode_png(i))
                for i in images]
    out = self._examples_fn(**{artefacts.EXAMPLES_INPUT: tf.constant(
        examples, dtype=tf.string)})
    return {k: v.numpy() for k, v in out.items() if k in self.output_names}


class TFLitePredictor(Predictor):
  """A .tflite file through LiteRT's signature runner (outputs by name)."""

  kind = "tflite"

  def __init__(self, path: str, num_threads: Optional[int] = None):
    super().__init__(path)
    try:
      from ai_edge_litert import interpreter as litert
    except ImportError:
      raise artefacts.missing_dependency("ai-edge-litert") from None
    self.interpreter = litert.Interpreter(
        model_path=path, num_threads=num_threads or os.cpu_count())
    signatures = self.interpreter.get_signature_list()
    if len(signatures) != 1:
      raise ExportError(
          f"{path}: expected one signature, found {sorted(signatures)}")
    key, io = next(iter(signatures.items()))
    self._runner = self.interpreter.get_signature_runner(key)
    details = self._runner.get_input_details()
    if list(details) != [artefacts.IMAGE_INPUT]:
      raise ExportError(f"{path}: signature inputs {list(details)}, "
                        f"expected [{artefacts.IMAGE_INPUT!r}]")
    shape = details[artefacts.IMAGE_INPUT]["shape_signature"]
    self.image_size = int(shape[1])
    self.output_names = sorted(io["outputs"])

  def _embedded_labels(self):
    return metadata.read_tflite(self.path)

  def _run(self, images):
    out = self._runner(**{artefacts.IMAGE_INPUT: images})
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
    return metadata.read_onnx(self.session)

  def _run(self, images):
    values = self.session.run(self.output_names, {artefacts.IMAGE_INPUT: images})
    return dict(zip(self.output_names, values))


def load_predictor(path: str, bytes_signature: bool = False) -> Predictor:
  """Opens any artefact as a Predictor.

  path: a .keras file, a model folder (the .keras file export would pick:
    calibrated.keras when current, else model.keras), a SavedModel
    folder, a TF Serving model folder (the highest version is used), a
    .tflite file or a .onnx file.
  bytes_signature: for a SavedModel, go through serving_default (encoded
    bytes) instead of the tensor signature.

  Raises ExportError when labels.json is missing or (a .keras model) does
  not have as many classes per head as the model has columns.
  """
  if not os.path.exists(path):
    raise ExportError(f"{path}: no such model file or folder")
  predictor = _open(path, bytes_signature)
  predictor.schema  # fail now, naming the artefact, if labels.json is missing
  if isinstance(predictor, KerasPredictor):
    # A labels.json rewritten after the model was saved would name the
    # wrong classes; a .keras file's widths are known without a call.
    run_dir.check_outputs_match_schema(
        {n: tuple(t.shape) for n, t in
         run_dir.symbolic_outputs(predictor.model).items()},
        predictor.schema, predictor.path)
  return predictor


def _open(path: str, bytes_signature: bool) -> Predictor:
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "saved_model.pb")):
      return (SavedModelBytesPredictor(path) if bytes_signature
              else SavedModelPredictor(path))
    if any(os.path.exists(os.path.join(path, f))
           for f in (run_dir.MODEL_FILE, run_dir.CALIBRATED_FILE)):
      # The model export would pick (calibrated.keras when current).
      chosen, why = run_dir.choose_model_file(path)
      predictor = KerasPredictor(chosen)
      if os.path.exists(os.path.join(path, run_dir.CALIBRATED_FILE)):
        predictor.chosen_because = why  # a choice was made: predict says it
      return predictor
    version = artefacts.latest_version(path)
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


