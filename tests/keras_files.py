"""Reading a saved .keras file without Keras or TensorFlow (usable from
tests whose process runs another backend or none)."""

from __future__ import annotations

import io
import zipfile


def model_weights(path: str) -> dict:
  """Every array of a .keras file's weights, by HDF5 path."""
  import h5py  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(path) as z:
    blob = z.read("model.weights.h5")
  out = {}
  with h5py.File(io.BytesIO(blob), "r") as f:
    f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                 if isinstance(obj, h5py.Dataset) else None)
  return out
