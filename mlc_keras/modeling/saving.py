"""Loading a saved .keras model, with the package's own layers known, and
saving one for inference (without optimizer state)."""

from __future__ import annotations

import keras

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
            "mlc_keras>Temperature": layers.Temperature}
  return keras.models.load_model(path, safe_mode=True, compile=False,
                                 custom_objects=custom)


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
