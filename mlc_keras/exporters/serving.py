"""The SavedModel export format (TF Serving): where it goes, its predictors
(the tensor, bytes and tf.Example signatures) and the parity checks that
gate it. The SavedModel itself is written and checked by saved_model.py;
the other formats convert from its tensor signature.

Layout: <base>/<model_name>/<version>/ (TF Serving's base path is
<base>/<model_name>), labels.json (and classes.csv) in its assets/.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence

import numpy as np

from mlc_keras.exporters import artefacts
from mlc_keras.exporters import formats
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.inference import predictors

NAME = "saved_model"
MODEL_FILE = "saved_model.pb"


def latest_version(base: str) -> Optional[str]:
  """The highest integer-named SavedModel folder under ``base`` (as TF Serving
  picks it), or None."""
  versions = [int(n) for n in os.listdir(base) if n.isdigit()
              and os.path.exists(os.path.join(base, n, MODEL_FILE))]
  return os.path.join(base, str(max(versions))) if versions else None


def copy_labels(saved_model_dir: str, folder: str) -> None:
  """labels.json (and classes.csv, when the SavedModel has a "class" output)
  from a SavedModel's assets/ into ``folder``, beside a file converted from
  it."""
  for name in (artefacts.LABELS_FILE, artefacts.CLASSES_FILE):
    src = os.path.join(saved_model_dir, "assets", name)
    if name == artefacts.LABELS_FILE or os.path.isfile(src):
      shutil.copyfile(src, os.path.join(folder, name))


class SavedModelPredictor(predictors.Predictor):
  """The SavedModel's tensor signature (what the converters start from)."""

  kind = "saved_model"

  def __init__(self, path: str, loaded=None):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
    from mlc_keras.exporters import saved_model  # pylint: disable=g-import-not-at-top
    return self.predict_encoded([saved_model.encode_png(i) for i in images])

  def predict_encoded(self, encoded: Sequence[bytes], with_labels: bool = False
                      ) -> dict[str, np.ndarray]:
    """Calls serving_default on encoded images, as TF Serving would.
    Returns the probability outputs, plus the label outputs if asked."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from mlc_keras.exporters import saved_model  # pylint: disable=g-import-not-at-top
    examples = [saved_model.example_of(saved_model.encode_png(i))
                for i in images]
    out = self._examples_fn(**{artefacts.EXAMPLES_INPUT: tf.constant(
        examples, dtype=tf.string)})
    return {k: v.numpy() for k, v in out.items() if k in self.output_names}


class SavedModelFormat(formats.ExportFormat):
  """Written in this process from the Keras model (serving signatures,
  labels in assets/, warm-up requests), then loaded in plain TensorFlow
  while the conversions run. Every signature is a parity candidate."""

  name = NAME
  title = "SavedModel"
  folder_kind = "a SavedModel folder (saved_model.pb, or integer versions of one)"
  predictor_types = (SavedModelPredictor, SavedModelBytesPredictor,
                     SavedModelExamplePredictor)

  def write(self, job):
    from mlc_keras.exporters import saved_model  # pylint: disable=g-import-not-at-top
    folder, request = job.folders[self.name], job.request
    job.log(f"writing SavedModel -> {folder}")
    saved_model.to_saved_model(
        job.model, job.schema, folder, request.max_image_bytes,
        warmup_images=job.images.parity[:1], model_name=request.model_name,
        table=job.table, threshold=request.threshold,
        max_image_pixels=request.max_image_pixels)
    return folder

  def check(self, job, value):
    from mlc_keras.exporters import saved_model  # pylint: disable=g-import-not-at-top
    del job
    check = saved_model.check_saved_model(value)
    return check, (f"SavedModel loads in plain TensorFlow; "
                   f"{sum(check['ops'].values())} nodes, {len(check['ops'])} "
                   "op types, no Python or custom ops")

  def card_input(self, max_image_bytes, max_image_pixels):
    return ("encoded JPEG, PNG, GIF, BMP or WebP bytes "
            f"(`{artefacts.SERVING_SIGNATURE}`, at most {max_image_bytes} "
            f"bytes and {max_image_pixels} pixels each) and tf.Examples "
            f"holding them under `{artefacts.IMAGE_FEATURE}` "
            f"(`{artefacts.EXAMPLE_SIGNATURE}`)")

  def candidates(self, value):
    tensor_sig = SavedModelPredictor(value)
    bytes_sig = SavedModelBytesPredictor(value, tensor_sig.loaded)
    examples_sig = SavedModelExamplePredictor(value, tensor_sig.loaded)
    return [formats.Candidate(p.kind, p, parity_lib.FP32_TOLERANCE)
            for p in (tensor_sig, bytes_sig, examples_sig)]

  def open(self, path, bytes_signature=False):
    if not os.path.isdir(path):
      return None
    if os.path.exists(os.path.join(path, MODEL_FILE)):
      return (SavedModelBytesPredictor(path) if bytes_signature
              else SavedModelPredictor(path))
    version = latest_version(path)
    return self.open(version, bytes_signature) if version else None


FORMAT = SavedModelFormat()
