"""An ordinal head end to end: a heads file declaring it beside a softmax
head, a few training steps (small_cnn at 32 px), the export to SavedModel,
TFLite and ONNX through the parity gates, and the predict JSON of each."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from mlc_keras import api
from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import publish as export_lib
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from tests import export_fixture

SIZE = 32
LEVELS = ("low", "mid", "high")  # declared order; sorted it would differ
HEADS = {"heads": [
    {"name": "colour", "classes": ["red", "green", "blue"]},
    {"name": "level", "kind": "ordinal", "classes": list(LEVELS)}]}


def _images(n: int, seed: int):
  """colour: the boosted channel; level: the base brightness (3 steps)."""
  rs = np.random.RandomState(seed)
  colour = rs.randint(0, 3, n)
  level = rs.randint(0, 3, n)
  base = (40.0 + 60.0 * level)[:, None, None, None] * np.ones(
      (n, SIZE, SIZE, 3))
  base[np.arange(n), :, :, colour] += 60
  images = np.clip(base + rs.normal(0, 10, base.shape), 0, 255)
  return images.astype(np.uint8), colour, level


class OrdinalEndToEndTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="ordinal_e2e_")
    images, colour, level = _images(48, seed=0)
    paths = export_fixture.write_images(os.path.join(cls.root, "images"),
                                        images)
    cls.manifest = os.path.join(cls.root, "train.csv")
    with open(cls.manifest, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["image", "colour", "level"])
      for i, path in enumerate(paths):
        # Every fourth level cell blank: masked, as any missing label.
        writer.writerow([path, ("red", "green", "blue")[colour[i]],
                         "" if i % 4 == 3 else LEVELS[level[i]]])
    cls.heads_file = os.path.join(cls.root, "heads.json")
    with open(cls.heads_file, "w") as f:
      json.dump(HEADS, f)
    cls.model_dir = os.path.join(cls.root, "run")
    cls.trained = api.fit(
        cls.model_dir, api.make_config(
            "tiny", manifest=cls.manifest, heads_file=cls.heads_file,
            image_size=SIZE, val_fraction=0.25, augment=(), epochs=1,
            steps_per_epoch=4),
        model=lambda schema, size: model_lib.small_cnn(schema, size),
        verbose=0)
    parity, _, _ = _images(16, seed=1)
    cls.parity_paths = export_fixture.write_images(
        os.path.join(cls.root, "parity"), parity)
    cls.base = os.path.join(cls.root, "export")
    cls.result = export_lib.export(
        cls.model_dir, output=cls.base, version=1,
        formats="saved_model,tflite,onnx", quantizations="fp32",
        parity_images=os.path.join(cls.root, "parity"), isolate=False,
        log=lambda _: None)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _artefacts(self) -> dict[str, str]:
    saved = [os.path.dirname(p) for p in glob.glob(
        os.path.join(self.base, "**", "saved_model.pb"), recursive=True)]
    tflite = glob.glob(os.path.join(self.base, "**", "*.tflite"),
                       recursive=True)
    onnx = glob.glob(os.path.join(self.base, "**", "*.onnx"), recursive=True)
    self.assertLen(saved, 1)
    self.assertLen(tflite, 1)
    self.assertLen(onnx, 1)
    return {"saved_model": saved[0], "tflite": tflite[0], "onnx": onnx[0]}

  def test_trained_run_keeps_the_kind_and_order(self):
    schema = heads_lib.LabelSchema.load(self.model_dir)
    self.assertEqual(schema.head("level").kind, heads_lib.ORDINAL)
    self.assertEqual(schema.head("level").classes, LEVELS)
    model = saving.load_model(os.path.join(self.model_dir, "model.keras"))
    self.assertEqual(type(model.get_layer("level")).__name__,
                     "CumulativeLogits")
    # Its error in ranks is logged every epoch, on both sides.
    with open(os.path.join(self.model_dir, "history.csv")) as f:
      columns = next(csv.reader(f))
    self.assertIn("level_mae", columns)
    self.assertIn("val_level_mae", columns)
    results = json.dumps(self.trained.results)
    self.assertIn('"mae"', results)

  def test_every_artefact_passes_the_parity_gate(self):
    reports = glob.glob(os.path.join(self.base, "parity", "**", "*.json"),
                        recursive=True)
    self.assertLen(reports, 1)
    with open(reports[0]) as f:
      parity = json.load(f)
    text = json.dumps(parity)
    for name in ("saved_model", "tflite_fp32", "onnx"):
      self.assertIn(name, text)
    self.assertNotIn('"passed": false', text)

  def test_predict_json_names_the_ordinal_class_for_every_artefact(self):
    reference = None
    for name, path in {"keras": self.model_dir, **self._artefacts()}.items():
      with self.subTest(name):
        lines = api.predict_files(api.load_predictor(path), self.parity_paths)
        self.assertLen(lines, len(self.parity_paths))
        for line in lines:
          self.assertIn(line["level"]["class"], LEVELS)
          self.assertEqual(list(line["level"]["scores"]), list(LEVELS))
          self.assertAlmostEqual(sum(line["level"]["scores"].values()), 1.0,
                                 places=4)
        scores = np.array([[l["level"]["scores"][c] for c in LEVELS]
                           for l in lines])
        if reference is None:
          reference = scores
        else:
          self.assertAllClose(scores, reference, atol=1e-4, rtol=0)

  def test_bytes_signature_gives_the_class(self):
    loaded = tf.saved_model.load(self._artefacts()["saved_model"])
    encoded = []
    for path in self.parity_paths[:4]:
      with open(path, "rb") as f:
        encoded.append(f.read())
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant(encoded))
    classes = [c.decode() for c in out["level_class"].numpy()]
    self.assertTrue(set(classes) <= set(LEVELS), classes)
    self.assertAllClose(out["level_score"], np.max(out["level"], axis=1))


if __name__ == "__main__":
  tf.test.main()
