"""Tests of the predict CLI: the same JSON, the same classes, whatever the
artefact; clear errors for unreadable images and missing labels."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mlc_keras import export_lib
from mlc_keras import heads as heads_lib
from mlc_keras import model as model_lib
from mlc_keras import predict

SIZE = 32
SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("colour", ("red", "green", "blue")),
    heads_lib.HeadSpec("tone", ("dark", "light")),
))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(n: int, seed: int):
  """Noisy flat images: colour = the boosted channel, tone = the base level."""
  rs = np.random.RandomState(seed)
  colour, tone = rs.randint(0, 3, n), rs.randint(0, 2, n)
  base = np.where(tone == 1, 150.0, 40.0)[:, None, None, None] * np.ones(
      (n, SIZE, SIZE, 3))
  base[np.arange(n), :, :, colour] += 90
  images = np.clip(base + rs.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
  return images, {"colour": colour, "tone": tone}


def confident_model():
  """build_model with heads fitted on the frozen random backbone's features,
  so no image sits near a decision boundary (fp32 artefacts cannot flip).
  (A random MobileNetV2 at 32x32 gives the same features for every image, so
  the faster-converting backbone is no use here.)"""
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(SCHEMA, SIZE)
  images, labels = make_images(96, 0)
  features = keras.Model(model.input, model.get_layer(
      model_lib.FEATURES_LAYER).output).predict(images, verbose=0)
  inputs = keras.Input(features.shape[1:])
  heads = keras.Model(inputs, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(inputs) for h in SCHEMA.heads})
  heads.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss="sparse_categorical_crossentropy")
  heads.fit(features, labels, epochs=60, batch_size=32, verbose=0)
  for h in SCHEMA.heads:
    model.get_layer(h.name).set_weights(heads.get_layer(h.name).get_weights())
  return model


class PredictTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="predict_test_")
    cls.model_dir = os.path.join(cls.root, "shapes")
    os.makedirs(cls.model_dir)
    model = confident_model()
    model.save(os.path.join(cls.model_dir, "model.keras"))
    SCHEMA.save(cls.model_dir)
    images, cls.labels = make_images(12, seed=5)
    cls.image_dir = os.path.join(cls.root, "images")
    os.makedirs(os.path.join(cls.image_dir, "sub"))
    cls.paths = []
    for i, image in enumerate(images):
      # Mixed formats and sizes: decoding and resizing are part of predict.
      big = tf.image.resize(image[None], [48, 40], method="nearest")[0]
      if i % 3 == 0:
        name, data = f"sub/{i:02d}.jpg", tf.io.encode_jpeg(
            tf.cast(big, tf.uint8), quality=95)
      else:
        name, data = f"{i:02d}.png", tf.io.encode_png(image)
      path = os.path.join(cls.image_dir, name)
      with open(path, "wb") as f:
        f.write(data.numpy())
      cls.paths.append(path)
    cls.paths.sort()
    # The export pieces without export()'s checks and parity run (tested in
    # export_lib_test), laid out as export() lays them out.
    serving_base = os.path.join(cls.root, "export", "shapes")
    saved_model = export_lib.to_saved_model(
        model, SCHEMA, os.path.join(serving_base, "2"))
    tflite = export_lib.to_tflite_variants(
        saved_model, os.path.join(cls.root, "export", "litert"), "shapes",
        ["fp32"], isolate=False, log=lambda _: None)
    onnx = export_lib.to_onnx_with_labels(
        saved_model, os.path.join(cls.root, "export", "onnx"), "shapes",
        isolate=False)
    cls.artefacts = {
        "keras_dir": cls.model_dir,
        "keras_file": os.path.join(cls.model_dir, "model.keras"),
        "saved_model": saved_model,
        "serving_base": serving_base,
        "tflite": tflite["fp32"],
        "onnx": onnx,
    }

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def predict_lines(self, model, inputs):
    out = io.StringIO()
    n = predict.run(model, inputs, out=out, batch_size=5)
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    self.assertLen(lines, n)
    return lines

  def test_same_output_for_every_artefact(self):
    expected = None
    for name, path in self.artefacts.items():
      with self.subTest(name):
        lines = self.predict_lines(path, [self.image_dir])
        self.assertEqual([l["image"] for l in lines], self.paths)
        for line in lines:
          self.assertEqual(list(line), ["image", "colour", "tone"])
          for h in SCHEMA.heads:
            result = line[h.name]
            self.assertEqual(list(result["scores"]), list(h.classes))
            self.assertAlmostEqual(sum(result["scores"].values()), 1.0, places=5)
            self.assertEqual(result["score"], max(result["scores"].values()))
            self.assertEqual(result["scores"][result["class"]], result["score"])
        classes = [{h: l[h]["class"] for h in SCHEMA.names} for l in lines]
        scores = np.array([[l[h]["score"] for h in SCHEMA.names] for l in lines])
        if expected is None:
          expected, expected_scores = classes, scores
        self.assertEqual(classes, expected)
        self.assertAllClose(scores, expected_scores, atol=1e-4, rtol=0)

  def test_predictions_are_the_true_classes(self):
    lines = self.predict_lines(self.artefacts["onnx"], [self.image_dir])
    by_name = {os.path.basename(l["image"]): l for l in lines}
    for i in range(len(self.paths)):
      line = by_name[f"{i:02d}.jpg" if i % 3 == 0 else f"{i:02d}.png"]
      for h in SCHEMA.heads:
        self.assertEqual(line[h.name]["class"],
                         h.classes[self.labels[h.name][i]])

  def test_files_folders_and_manifests(self):
    manifest = os.path.join(self.root, "list.csv")
    with open(manifest, "w") as f:
      f.write("image,colour\n")
      f.write(os.path.relpath(self.paths[1], self.root) + ",red\n")
      f.write(self.paths[0] + ",\n")
    lines = self.predict_lines(
        self.artefacts["tflite"],
        [self.paths[2], manifest, os.path.join(self.image_dir, "sub")])
    subs = sorted(p for p in self.paths if os.sep + "sub" + os.sep in p)
    self.assertEqual([l["image"] for l in lines],
                     [self.paths[2], self.paths[1], self.paths[0], *subs])

  def test_unreadable_image_names_the_file(self):
    bad = os.path.join(self.root, "broken.png")
    with open(bad, "wb") as f:
      f.write(b"\x89PNG but not really")
    with self.assertRaisesRegex(export_lib.ExportError,
                                "broken.png: not a decodable image"):
      self.predict_lines(self.artefacts["saved_model"], [self.paths[0], bad])
    with self.assertRaisesRegex(export_lib.ExportError, "missing.png"):
      self.predict_lines(self.artefacts["saved_model"],
                         [os.path.join(self.root, "missing.png")])

  def test_missing_labels_and_unknown_format(self):
    lonely = os.path.join(self.root, "lonely")
    os.makedirs(lonely)
    copy = os.path.join(lonely, "model.onnx")
    shutil.copyfile(self.artefacts["onnx"], copy)
    with self.assertRaisesRegex(export_lib.ExportError, "no labels.json found"):
      self.predict_lines(copy, [self.paths[0]])
    with self.assertRaisesRegex(export_lib.ExportError, "unknown model format"):
      self.predict_lines(os.path.join(self.model_dir, "labels.json"),
                         [self.paths[0]])
    with self.assertRaisesRegex(export_lib.ExportError, "no images given"):
      self.predict_lines(self.artefacts["onnx"], [])

  def test_real_cli(self):
    cmd = [sys.executable, "-m", "mlc_keras.predict",
           f"--model={self.artefacts['tflite']}", self.paths[0], self.paths[1]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    expected = self.predict_lines(self.artefacts["keras_file"], self.paths[:2])
    self.assertEqual([{h: l[h]["class"] for h in SCHEMA.names} for l in lines],
                     [{h: l[h]["class"] for h in SCHEMA.names} for l in expected])

    proc = subprocess.run(cmd[:4] + [os.path.join(self.root, "nope.jpg")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 2)
    self.assertIn("nope.jpg", proc.stderr)
    self.assertEqual(proc.stdout, "")


if __name__ == "__main__":
  tf.test.main()
