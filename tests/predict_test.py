"""Tests of the predict CLI: the same JSON, the same classes, whatever the
artefact; clear errors for unreadable images and missing labels."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.labeling import compose
from mlc_keras.core import heads as heads_lib
from mlc_keras.inference import predictors
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving
from mlc_keras.inference import files as predict_lib
from mlc_keras.runs import folder as run_dir
from tests import export_fixture
from tests.export_fixture import make_images
from tests.export_fixture import SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PredictTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="predict_test_")
    # The model and its exports are shared with export_lib_test (built once;
    # export()'s checks and parity run are tested there). Read-only.
    plain, composed = export_fixture.plain(), export_fixture.composed()
    cls.model_dir = plain.model_dir
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
    cls.artefacts = {
        "keras_dir": cls.model_dir,
        "keras_file": plain.model_file,
        "saved_model": plain.result.saved_model,
        "serving_base": os.path.dirname(plain.result.saved_model),
        "tflite": plain.result.tflite["fp32"],
        "onnx": plain.result.onnx,
    }
    cls.table_path = composed.table_path
    cls.table = composed.table
    # Artefacts that carry the "class" output themselves, over the
    # temperature-scaled heads of the calibrated model: a composed .keras
    # (its ComposeClasses layer names the classes) and the SavedModel,
    # TFLite and ONNX files exported with the table (classes.csv beside).
    cls.calibrated_file = os.path.join(composed.model_dir,
                                       run_dir.CALIBRATED_FILE)
    cls.carrying = {
        "keras_file": composed.carrying_keras,
        "saved_model": composed.result.saved_model,
        "tflite": composed.result.tflite["fp32"],
        "onnx": composed.result.onnx,
    }

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def predict_lines(self, model, inputs, **kwargs):
    out = io.StringIO()
    n = predict_lib.run(model, inputs, out=out, batch_size=5, **kwargs)
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

  def check_class_entries(self, lines, expected_names=None):
    for line in lines:
      self.assertEqual(list(line), ["image", "colour", "tone", "class"])
      result = line["class"]
      self.assertEqual(list(result["scores"]), list(self.table.classes))
      self.assertAlmostEqual(sum(result["scores"].values()), 1.0, places=5)
      self.assertEqual(result["score"], max(result["scores"].values()))
    if expected_names is not None:
      self.assertEqual([l["class"]["class"] for l in lines], expected_names)

  def expected_classes(self, keras_file):
    """The composed class per image (compose's rule) from the heads predict
    gives for ``keras_file``: {"class", "scores"}."""
    lines = self.predict_lines(keras_file, [self.image_dir])
    heads = {h: np.array([[l[h]["scores"][c] for c in SCHEMA.head(h).classes]
                          for l in lines]) for h in SCHEMA.names}
    probs = compose.compose_probs(heads, self.table)
    names = compose.predict_classes(probs, self.table)
    return [{"class": n, "scores": dict(zip(self.table.classes, map(float, p)))}
            for n, p in zip(names, probs)]

  def test_class_table_with_every_artefact(self):
    # The images are dark/light red, green or blue: each is its own class.
    truth = [("dark_red", "light_red")[t] if c == 0 else ("green", "blue")[c - 1]
             for c, t in zip(self.labels["colour"], self.labels["tone"])]
    by_name = {f"{i:02d}.jpg" if i % 3 == 0 else f"{i:02d}.png": t
               for i, t in enumerate(truth)}
    truth = [by_name[os.path.basename(p)] for p in self.paths]
    # "flag": the plain artefacts with --class_table; "carried": the
    # calibrated exports with their own "class" output, compared with the
    # table applied to calibrated.keras's (temperature-scaled) heads.
    for kind, artefact_set, reference in (
        ("flag", self.artefacts, self.artefacts["keras_file"]),
        ("carried", self.carrying, self.calibrated_file)):
      expected = self.expected_classes(reference)
      if kind == "flag":
        self.assertEqual([e["class"] for e in expected], truth)
      # Temperatures soften the scores (some fall under the 0.5 threshold,
      # "unknown"), never the decisions.
      self.assertEqual(
          [max(e["scores"], key=e["scores"].get) for e in expected], truth)
      want = np.array([list(e["scores"].values()) for e in expected])
      for name, path in artefact_set.items():
        with self.subTest(f"{kind}: {name}"):
          lines = self.predict_lines(
              path, [self.image_dir],
              class_table=self.table_path if kind == "flag" else None)
          self.check_class_entries(lines, [e["class"] for e in expected])
          got = np.array([list(l["class"]["scores"].values()) for l in lines])
          self.assertAllClose(got, want, atol=1e-4, rtol=0)

  def test_no_class_entry_without_a_table(self):
    lines = self.predict_lines(self.artefacts["saved_model"], [self.paths[0]])
    self.assertEqual(list(lines[0]), ["image", "colour", "tone"])

  def test_flag_replaces_the_carried_table(self):
    other = os.path.join(self.get_temp_dir(), "other.csv")
    compose.save(compose.from_dict({"reddish": {"colour": "red"},
                                    "not_red": {"colour": "green"}}, SCHEMA),
                 SCHEMA, other)
    lines = self.predict_lines(self.carrying["tflite"], self.paths[:3],
                               class_table=other)
    for line in lines:
      self.assertEqual(list(line["class"]["scores"]), ["reddish", "not_red"])

  def test_threshold_gives_unknown(self):
    lines = self.predict_lines(self.carrying["saved_model"], [self.image_dir],
                               threshold=0.0)
    scores = sorted(l["class"]["score"] for l in lines)
    self.assertNotIn("unknown", [l["class"]["class"] for l in lines])
    # Halfway between two distinct scores: some above, some below.
    i = next(i for i in range(len(scores) - 1) if scores[i] < scores[i + 1])
    threshold = (scores[i] + scores[i + 1]) / 2
    lines = self.predict_lines(self.carrying["saved_model"], [self.image_dir],
                               threshold=threshold)
    names = [l["class"]["class"] for l in lines]
    self.assertIn("unknown", names)
    self.assertNotEqual(set(names), {"unknown"})
    for line in lines:
      result = line["class"]
      if result["score"] < threshold:
        self.assertEqual(result["class"], "unknown")
      else:
        self.assertEqual(result["scores"][result["class"]], result["score"])
    with self.assertRaisesRegex(artefacts.ExportError, "threshold"):
      self.predict_lines(self.artefacts["onnx"], self.paths[:1], threshold=2.0)

  def test_bad_class_tables(self):
    bad = os.path.join(self.get_temp_dir(), "bad.csv")
    with open(bad, "w") as f:
      f.write("class,colour\nviolet,violet\n")
    with self.assertRaisesRegex(compose.ClassTableError, "bad.csv:2"):
      self.predict_lines(self.artefacts["onnx"], self.paths[:1],
                         class_table=bad)
    # A classes.csv beside an artefact that does not fit its "class" output.
    folder = os.path.join(self.get_temp_dir(), "mismatch")
    os.makedirs(folder)
    copy = os.path.join(folder, "m.tflite")
    shutil.copyfile(self.carrying["tflite"], copy)
    shutil.copyfile(os.path.join(os.path.dirname(self.carrying["tflite"]),
                                 "labels.json"),
                    os.path.join(folder, "labels.json"))
    compose.save(compose.from_dict({"reddish": {"colour": "red"}}, SCHEMA),
                 SCHEMA, os.path.join(folder, "classes.csv"))
    with self.assertRaisesRegex(artefacts.ExportError,
                                "4 columns but the class table"):
      self.predict_lines(copy, self.paths[:1])

  def test_model_folder_uses_the_calibrated_model_as_export_does(self):
    folder = os.path.join(self.get_temp_dir(), "calibrated_run")
    os.makedirs(folder)
    for name in ("model.keras", "labels.json"):
      shutil.copyfile(os.path.join(self.model_dir, name),
                      os.path.join(folder, name))
    calibrated = outputs.with_temperatures(
        saving.load_model(os.path.join(folder, "model.keras")),
        {"colour": 3.0})
    calibrated.save(os.path.join(folder, "calibrated.keras"))
    scores = {}
    for name, path in (("folder", folder),
                       ("calibrated", os.path.join(folder, "calibrated.keras")),
                       ("plain", os.path.join(folder, "model.keras"))):
      lines = self.predict_lines(path, self.paths[:4])
      scores[name] = np.array([l["colour"]["score"] for l in lines])
    self.assertAllClose(scores["folder"], scores["calibrated"], atol=1e-6)
    self.assertGreater(np.abs(scores["folder"] - scores["plain"]).max(), 0.01)

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
    with self.assertRaisesRegex(artefacts.ExportError,
                                "broken.png: not a decodable image"):
      self.predict_lines(self.artefacts["saved_model"], [self.paths[0], bad])
    with self.assertRaisesRegex(artefacts.ExportError, "missing.png"):
      self.predict_lines(self.artefacts["saved_model"],
                         [os.path.join(self.root, "missing.png")])

  def test_folder_by_content_with_per_file_errors_and_counts(self):
    folder = os.path.join(self.root, "mixed")
    os.makedirs(folder)
    shutil.copyfile(self.paths[1], os.path.join(folder, "a_png.dat"))
    shutil.copyfile(self.paths[2], os.path.join(folder, "b.png"))
    with open(os.path.join(folder, "c_broken.png"), "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n cut")
    for name in ("notes.txt", "d.json"):
      with open(os.path.join(folder, name), "w") as f:
        f.write("not an image")
    out, err = io.StringIO(), io.StringIO()
    with self.assertRaisesRegex(artefacts.ExportError,
                                r"1 of 3 image\(s\) could not be predicted; "
                                r"the first: \S*c_broken.png: not a decodable"):
      predict_lib.run(self.artefacts["tflite"], [folder], out=out, err=err)
    # The good files, the .dat PNG among them, still got their line.
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    self.assertEqual([os.path.basename(l["image"]) for l in lines],
                     ["a_png.dat", "b.png"])
    expected = self.predict_lines(self.artefacts["tflite"], self.paths[1:3])
    self.assertEqual([l["colour"] for l in lines],
                     [l["colour"] for l in expected])
    self.assertRegex(err.getvalue(),
                     r"predict: error: \S*c_broken.png: not a decodable image")
    self.assertIn("predict: 2 image(s) predicted; 1 failed (not decodable: 1); "
                  "2 file(s) in folders skipped (not an image by content: 2)",
                  err.getvalue())
    proc = subprocess.run(
        [sys.executable, "-m", "mlc_keras.predict",
         f"--model={self.artefacts['tflite']}", folder], cwd=REPO,
        capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertLen(proc.stdout.splitlines(), 2)

  def test_missing_labels_and_unknown_format(self):
    lonely = os.path.join(self.root, "lonely")
    os.makedirs(lonely)
    copy = os.path.join(lonely, "model.onnx")
    shutil.copyfile(self.artefacts["onnx"], copy)
    # The file alone carries labels.json (metadata_props): it predicts.
    self.assertEqual(self.predict_lines(copy, self.paths[:1]),
                     self.predict_lines(self.artefacts["onnx"], self.paths[:1]))
    # Without them, and with no labels.json beside it: a clear error.
    import onnx  # pylint: disable=g-import-not-at-top
    bare = onnx.load(copy)
    del bare.metadata_props[:]
    onnx.save(bare, copy)
    with self.assertRaisesRegex(artefacts.ExportError, "no labels.json found"):
      self.predict_lines(copy, [self.paths[0]])
    with self.assertRaisesRegex(artefacts.ExportError, "unknown model format"):
      self.predict_lines(os.path.join(self.model_dir, "labels.json"),
                         [self.paths[0]])
    with self.assertRaisesRegex(artefacts.ExportError, "no images given"):
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

    bad = os.path.join(self.root, "bad_classes.csv")
    with open(bad, "w") as f:
      f.write("class,colour,size\nx,red,big\n")
    proc = subprocess.run(cmd[:4] + [f"--class_table={bad}", self.paths[0]],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn(f"error: {bad}:1: column 'size' is not a head", proc.stderr)
    self.assertEqual(proc.stdout, "")


def _png_claiming(width: int, height: int) -> bytes:
  """A small PNG whose header claims width x height (a decompression bomb's
  header: only the header is read before the cap refuses it)."""
  data = bytearray(tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy())
  data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
  return bytes(data)


class PredictChecksTest(tf.test.TestCase):
  """Training's header check and pixel cap, and labels.json against the
  model's widths, on a small .keras model (no export fixture)."""

  def setUp(self):
    super().setUp()
    self.root = self.get_temp_dir()
    self.model_dir = os.path.join(self.root, "run")
    os.makedirs(self.model_dir)
    model_lib.small_cnn(SCHEMA, 32).save(
        os.path.join(self.model_dir, "model.keras"))
    SCHEMA.save(self.model_dir)
    images, _ = make_images(1, seed=1)
    self.good = os.path.join(self.root, "good.png")
    with open(self.good, "wb") as f:
      f.write(tf.io.encode_png(images[0]).numpy())

  def test_pixel_bomb_is_refused_from_its_header_and_never_decoded(self):
    bomb = os.path.join(self.root, "bomb.png")
    with open(bomb, "wb") as f:
      f.write(_png_claiming(10000, 10000))
    reason = ("too many pixels to decode: 10000x10000 = 100,000,000 pixels "
              "is over the limit of 89,478,485 (max_image_pixels)")
    with mock.patch.object(predict_lib.imageio, "decode_and_resize",
                           side_effect=AssertionError("decoded")):
      with self.assertRaisesRegex(artefacts.ExportError,
                                  f"^{re.escape(bomb + ': ' + reason)}$"):
        predict_lib.read_image(bomb, 32)
    out, err = io.StringIO(), io.StringIO()
    with self.assertRaisesRegex(artefacts.ExportError,
                                r"1 of 2 image\(s\) could not be predicted"):
      predict_lib.run(self.model_dir, [self.good, bomb], out=out, err=err)
    self.assertLen(out.getvalue().splitlines(), 1)  # the good one
    self.assertIn("1 failed (over the pixel cap: 1)", err.getvalue())

  def test_labels_that_do_not_fit_the_model_are_refused(self):
    # labels.json rewritten with a class more than the model has columns.
    wider = heads_lib.LabelSchema((
        heads_lib.HeadSpec("colour", ("red", "green", "blue", "aqua")),
        SCHEMA.head("tone")))
    wider.save(self.model_dir)
    message = ("head 'colour' has 4 classes in labels.json but the model "
               "outputs 3 columns")
    with self.assertRaisesRegex(artefacts.ExportError, message):
      predict_lib.run(self.model_dir, [self.good], out=io.StringIO(),
                      err=io.StringIO())
    # Any artefact (its widths seen at its first call): not even the first
    # line is produced.
    predictor = predictors.KerasPredictor(
        os.path.join(self.model_dir, "model.keras"))
    with self.assertRaisesRegex(artefacts.ExportError, message):
      next(predict_lib.predict_files(predictor, [self.good]))


if __name__ == "__main__":
  tf.test.main()
