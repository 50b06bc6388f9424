"""The export-format registry: a format defined in one place (here, a test
file) and registered is exported, gated by parity, published and opened
like the built-in ones, with no other code knowing it.

The format under test stores the Keras model's outputs on the parity
images in a .npz file and answers for those images only: enough to go
through every step of an export and of load_predictor in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.exporters import formats
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import publish as export_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import folder as run_dir
from tests.export_fixture import SCHEMA

SIZE = 32


class ProbePredictor(predictors.Predictor):
  """The outputs stored for each probe image, looked up by its pixels."""

  kind = "probe"

  def __init__(self, path: str):
    super().__init__(path)
    with np.load(path) as data:
      self._images = data["images"]
      self._outputs = {k[len("out_"):]: data[k] for k in data.files
                       if k.startswith("out_")}
    self.image_size = int(self._images.shape[1])
    self.output_names = sorted(self._outputs)

  def _run(self, images):
    rows = []
    for image in images:
      match = np.flatnonzero((self._images == image).all(axis=(1, 2, 3)))
      if not len(match):
        raise artefacts.ExportError(f"{self.path}: not a probe image")
      rows.append(match[0])
    return {k: v[rows] for k, v in self._outputs.items()}


class ProbeFormat(formats.ExportFormat):
  """<base>/probe/<model_name>/<version>/<model_name>.npz, labels.json
  beside; written in this process from the Keras model."""

  name = "probe"
  title = "Probe"
  tree = "probe"
  suffix = ".npz"
  predictor_types = (ProbePredictor,)
  error = 0.0  # added to every stored output

  def write(self, job):
    folder = job.folders[self.name]
    os.makedirs(folder)
    images = job.images.parity
    outputs = job.model.predict(images, verbose=0)
    path = os.path.join(folder, f"{job.request.model_name}.npz")
    np.savez(path, images=images,
             **{f"out_{k}": np.asarray(v) + self.error
                for k, v in outputs.items()})
    job.schema.save(folder)
    return path

  def candidates(self, value):
    return [formats.Candidate(self.name, ProbePredictor(value),
                              parity_lib.FP32_TOLERANCE)]


class WrongProbeFormat(ProbeFormat):
  error = 0.01  # 100x the fp32 tolerance


def _tiny_run(folder: str) -> str:
  """A model folder: a small Keras model with SCHEMA's heads, labels.json."""
  model_dir = os.path.join(folder, "tiny")
  os.makedirs(model_dir)
  keras.utils.set_random_seed(0)
  image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 255)(image)
  x = keras.layers.Conv2D(4, 3, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(image, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(x) for h in SCHEMA.heads})
  model.save(os.path.join(model_dir, run_dir.MODEL_FILE))
  SCHEMA.save(model_dir)
  return model_dir


class RegistryTest(tf.test.TestCase):

  def _register(self, fmt):
    formats.register(fmt)
    self.addCleanup(formats.unregister, fmt.name)
    return fmt

  def _export(self, model_dir, **options):
    lines = []
    result = export_lib.export(
        model_dir, output=os.path.join(self.get_temp_dir(), "export"),
        formats="probe", parity_images=export_lib.RANDOM_PARITY,
        isolate=False, log=lines.append, **options)
    return result, lines

  def test_built_in_formats_in_their_order(self):
    self.assertEqual(formats.names()[:3], ("saved_model", "tflite", "onnx"))
    self.assertEqual(formats.variants_of(formats.names()),
                     ("fp32", "fp16", "dynamic", "int8"))
    self.assertEqual(formats.default_variants(formats.names()),
                     ("fp32", "fp16", "dynamic"))

  def test_the_registry_and_the_clis_flags_load_no_tensorflow(self):
    # The export and predict CLIs build their --help from the registry.
    for cli in ("mlc_keras.export", "mlc_keras.predict"):
      code = ("import sys\n"
              "from mlc_keras.exporters import formats\n"
              f"import {cli}\n"
              "assert formats.names()[:3] == ('saved_model', 'tflite', "
              "'onnx')\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'keras')))\n")
      out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                           text=True, check=True).stdout
      self.assertEqual(out.strip(), "[]", cli)

  def test_a_registered_format_is_exported_checked_and_opened(self):
    self._register(ProbeFormat())
    model_dir = _tiny_run(self.get_temp_dir())
    result, lines = self._export(model_dir)
    base = os.path.join(self.get_temp_dir(), "export")
    path = os.path.join(base, "probe", "tiny", "1", "tiny.npz")
    self.assertEqual(result.probe, path)
    self.assertEqual(result.paths, {"probe": path})
    self.assertEqual(result.listing(), [("Probe", path)])
    # Only what was asked for, and what it needs (nothing): no SavedModel.
    self.assertIsNone(result.saved_model)
    self.assertEqual(result.tflite, {})
    self.assertFalse(os.path.exists(os.path.join(base, "tiny")))
    self.assertEqual([r["artefact"] for r in result.parity], ["probe"])
    self.assertTrue(result.parity[0]["passed"])
    self.assertTrue(os.path.isfile(result.parity_path))
    self.assertTrue(any(line.startswith("exported 'tiny'") for line in lines))

    predictor = predictors.load_predictor(path)
    self.assertIsInstance(predictor, ProbePredictor)
    self.assertIs(predictors.ProbePredictor, ProbePredictor)
    self.assertEqual(predictor.schema.to_dict(), SCHEMA.to_dict())
    keras_predictor = predictors.load_predictor(model_dir)
    images = np.random.default_rng(0).integers(
        0, 256, (export_lib.RANDOM_PARITY_COUNT, SIZE, SIZE, 3),
        dtype=np.uint8)
    expected = keras_predictor.predict(images)
    got = predictor.predict(images)
    for head in expected:
      self.assertAllClose(got[head], expected[head], atol=1e-6)

  def test_a_registered_format_outside_its_tolerance_publishes_nothing(self):
    self._register(WrongProbeFormat())
    model_dir = _tiny_run(self.get_temp_dir())
    with self.assertRaisesRegex(parity_lib.ParityError,
                                r"parity check failed for probe .*"
                                r"max \|diff\| 0\.01 > 0\.0001"):
      self._export(model_dir)
    base = os.path.join(self.get_temp_dir(), "export")
    self.assertFalse(os.path.exists(os.path.join(base, "probe")))
    self.assertTrue(os.path.isfile(os.path.join(
        base, ".staging", "tiny-1", "parity", "tiny", "1.json")))

  def test_the_registry_names_the_format_everywhere_else(self):
    self._register(ProbeFormat())
    with self.assertRaisesRegex(artefacts.ExportError,
                                "choose from: saved_model, tflite, onnx, "
                                "probe"):
      export_lib.resolve_request(self.get_temp_dir(), formats="nope")
    # Its folder under the export's base is no model name.
    with self.assertRaisesRegex(artefacts.ExportError, "'probe'"):
      export_lib.check_model_name("probe")
    with self.assertRaisesRegex(artefacts.ExportError,
                                r"expected \.keras, \.tflite, \.onnx, \.npz"):
      other = os.path.join(self.get_temp_dir(), "model.bin")
      open(other, "wb").close()
      predictors.load_predictor(other)

  def test_export_defaults_are_the_saved_models(self):
    # publish keeps its own copy so that it need not import the writer.
    from mlc_keras.exporters import saved_model  # pylint: disable=g-import-not-at-top
    self.assertEqual(export_lib.MAX_IMAGE_BYTES, saved_model.MAX_IMAGE_BYTES)
    self.assertEqual(export_lib.MAX_IMAGE_PIXELS, saved_model.MAX_IMAGE_PIXELS)

  def test_names_and_folders_are_not_taken_twice(self):
    self._register(ProbeFormat())
    with self.assertRaisesRegex(artefacts.ExportError, "taken"):
      formats.register(ProbeFormat())
    clash = type("Clash", (ProbeFormat,), {"name": "clash", "tree": "litert"})
    with self.assertRaisesRegex(artefacts.ExportError, "'litert' is taken"):
      formats.register(clash())
    with self.assertRaisesRegex(artefacts.ExportError, "built-in"):
      formats.unregister("onnx")


if __name__ == "__main__":
  tf.test.main()
