"""Loading a saved .keras model, with the package's own layers known, and
saving one for inference (without optimizer state).

A .keras file is a zip archive; the label schema (labels.json: heads, class
order, kinds, tag thresholds) is stored in it as one more member,
SCHEMA_MEMBER, so a .keras file copied alone still names its classes.
Keras reads only the members it wrote, so plain ``keras.models.load_model``
still loads the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from typing import Optional

import keras

from mlc_keras.core.kinds import registry as kinds
from mlc_keras.modeling import layers
from mlc_keras.modeling import model as model_lib


def load_model(path: str) -> keras.Model:
  """Loads a .keras model with safe_mode on (no arbitrary code on load)."""
  if path.endswith((".h5", ".hdf5")):
    raise ValueError(
        f"{path}: legacy HDF5 models are not loaded (they bypass Keras' safe "
        "mode); re-save the model as .keras")
  # By registered name, so a caller that never imported the layers module
  # still loads a model carrying them.
  custom = {"mlc_keras>ComposeClasses": layers.ComposeClasses,
            "mlc_keras>Temperature": layers.Temperature,
            **kinds.keras_objects()}
  return keras.models.load_model(path, safe_mode=True, compile=False,
                                 custom_objects=custom)


SCHEMA_MEMBER = "mlc_keras/labels.json"


def embed_schema(path: str, schema_text: str) -> None:
  """Stores ``schema_text`` (labels.json's content) in the .keras file at
  ``path`` as SCHEMA_MEMBER, replacing an earlier copy."""
  with zipfile.ZipFile(path) as z:
    present = SCHEMA_MEMBER in z.namelist()
  if not present:
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
      z.writestr(SCHEMA_MEMBER, schema_text)
    return
  # A zip member cannot be replaced in place: copy the others over.
  fd, tmp = tempfile.mkstemp(suffix=".keras", dir=os.path.dirname(
      os.path.abspath(path)))
  os.close(fd)
  try:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
      for info in src.infolist():
        if info.filename != SCHEMA_MEMBER:
          with src.open(info) as f_in, dst.open(info, "w") as f_out:
            shutil.copyfileobj(f_in, f_out, 1 << 20)
      dst.writestr(SCHEMA_MEMBER, schema_text,
                   compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def embed_schema_file(path: str, labels_json: str) -> None:
  """embed_schema with the text of the labels.json file ``labels_json``."""
  with open(labels_json, encoding="utf-8") as f:
    embed_schema(path, f.read())


def embed_run_schema(model_dir: str,
                     names: tuple[str, ...] = ("model.keras", "best.keras")
                     ) -> None:
  """Stores the run folder's labels.json (with its fitted tag thresholds)
  in each of its .keras files named ``names`` that exists."""
  labels = os.path.join(model_dir, "labels.json")
  for name in names:
    path = os.path.join(model_dir, name)
    if os.path.exists(path) and os.path.exists(labels):
      embed_schema_file(path, labels)


def read_schema_text(path: str) -> Optional[str]:
  """The labels.json text stored in the .keras file ``path``, or None (a file
  saved before schemas were stored, or by plain Keras)."""
  try:
    with zipfile.ZipFile(path) as z:
      if SCHEMA_MEMBER not in z.namelist():
        return None
      return z.read(SCHEMA_MEMBER).decode("utf-8")
  except (OSError, zipfile.BadZipFile):
    return None


def inference_copy(model: keras.Model) -> keras.Model:
  """The same layers and weights (shared, not copied) as an uncompiled model:
  saved, it holds the architecture and weights but no optimizer state. A
  resumed run reads its optimizer from the backup folder
  (training/backup.py), never from a .keras file, so a model kept for
  selection or deployment does not need it (ResNet50V2 with AdamW: 283 MB
  with it, about 94 MB without)."""
  return keras.Model(model.inputs, model_lib.named_outputs(model),
                     name=model.name)


def save_for_inference(model: keras.Model, path: str) -> None:
  """model.save without the optimizer state (see inference_copy)."""
  inference_copy(model).save(path)


class InferenceCheckpoint(keras.callbacks.ModelCheckpoint):
  """ModelCheckpoint whose file holds no optimizer state: it is handed an
  inference_copy of the model it watches. Which epoch it keeps is
  ModelCheckpoint's rule (``monitor``, ``save_best_only``)."""

  def set_model(self, model):
    super().set_model(inference_copy(model))
