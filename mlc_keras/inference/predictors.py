"""Every artefact as one callable: uint8 [N, S, S, 3] -> {output: float32 [N, k]}.

Used by the parity check, the predict CLI and the latency benchmark;
load_predictor opens any artefact (or a run folder) by its path. The Keras
model's predictor is here; each export format's predictors are in its own
module (exporters/formats.py lists them) and reachable here by class name
too (predictors.TFLitePredictor).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras.exporters import artefacts
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir
from mlc_keras.exporters.artefacts import ExportError

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
  from mlc_keras.exporters import formats  # pylint: disable=g-import-not-at-top
  for fmt in formats.registered():
    predictor = fmt.open(path, bytes_signature)
    if predictor is not None:
      return predictor
  if os.path.isdir(path):
    if any(os.path.exists(os.path.join(path, f))
           for f in (run_dir.MODEL_FILE, run_dir.CALIBRATED_FILE)):
      # The model export would pick (calibrated.keras when current).
      chosen, why = run_dir.choose_model_file(path)
      predictor = KerasPredictor(chosen)
      if os.path.exists(os.path.join(path, run_dir.CALIBRATED_FILE)):
        predictor.chosen_because = why  # a choice was made: predict says it
      return predictor
    kinds = ["a model folder (model.keras)"] + [
        f.folder_kind for f in formats.registered() if f.folder_kind]
    raise ExportError(f"{path}: neither {', '.join(kinds[:-1])} nor "
                      f"{kinds[-1]}" if len(kinds) > 1 else
                      f"{path}: not {kinds[0]}")
  if path.lower().endswith(".keras"):
    return KerasPredictor(path)
  files = [".keras"] + [f.suffix for f in formats.registered() if f.suffix]
  folders = [f.folder_kind for f in formats.registered() if f.folder_kind]
  raise ExportError(
      f"{path}: unknown model format; expected {', '.join(files)}"
      + (f" or {' or '.join(folders)}" if folders else ""))


def __getattr__(name: str):
  # The export formats' predictor classes, by name (predictors.OnnxPredictor).
  if not name.startswith("_"):
    from mlc_keras.exporters import formats  # pylint: disable=g-import-not-at-top
    for fmt in formats.registered():
      for cls in fmt.predictor_types:
        if cls.__name__ == name:
          return cls
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
