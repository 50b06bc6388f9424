"""Loading a saved .keras model, with the package's own layers known."""

from __future__ import annotations

import keras

from mlc_keras.modeling import layers


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
