"""Tests of run_dir: what export, predict and evaluate read from a run folder."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from mlc_keras import artefacts
from mlc_keras import run_dir


class RunConfigTest(tf.test.TestCase):

  def test_default_image_sources(self):
    run = os.path.join(self.get_temp_dir(), "run")
    demo_dir = os.path.join(self.get_temp_dir(), "demo")
    os.makedirs(run)
    os.makedirs(demo_dir)
    self.assertEqual(run_dir.default_image_sources(run), (None, None))
    train, val = (os.path.join(demo_dir, n) for n in ("train.csv", "val.csv"))
    for path in (train, val):
      open(path, "w").close()
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"demo_dir": demo_dir, "manifest": None}}, f)
    self.assertEqual(run_dir.default_image_sources(run), (train, val))
    os.remove(train)  # each falls back to the other
    self.assertEqual(run_dir.default_image_sources(run), (val, val))

  def test_demo_dir_is_the_one_demo_rule(self):
    # evaluate's default manifest and export's default images both ask it.
    self.assertEqual(run_dir.demo_dir({"demo_dir": "d", "manifest": None}), "d")
    self.assertEqual(run_dir.demo_dir({}), "mlc_runs/demo_data")
    for source in ("manifest", "tfrecord", "tfds"):
      self.assertIsNone(run_dir.demo_dir({"demo_dir": "d", source: "x"}))

  def test_image_column(self):
    run = self.get_temp_dir()
    path = os.path.join(run, "config.json")
    with self.assertRaisesRegex(run_dir.RunDirError, f"{path}: no such file"):
      run_dir.run_image_column(run)
    with open(path, "w") as f:
      json.dump({"data": {"image_column": "filename"}}, f)
    self.assertEqual(run_dir.run_image_column(run), "filename")
    # Runs written before the column was recorded trained on "image".
    with open(path, "w") as f:
      json.dump({"data": {"manifest": "m.csv"}}, f)
    self.assertEqual(run_dir.run_image_column(run), "image")
    for broken in ("{not json", "[1, 2]", '{"data": 3}',
                   '{"data": {"image_column": ""}}'):
      with open(path, "w") as f:
        f.write(broken)
      with self.assertRaisesRegex(run_dir.RunDirError, path):
        run_dir.run_image_column(run)


class ChooseModelFileTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    for name in ("model.keras", "calibrated.keras"):
      open(os.path.join(self.dir, name), "w").close()

  def test_current_calibrated_model_is_preferred(self):
    os.utime(os.path.join(self.dir, "model.keras"), (1000, 1000))
    os.utime(os.path.join(self.dir, "calibrated.keras"), (2000, 2000))
    path, why = run_dir.choose_model_file(self.dir)
    self.assertEqual(path, os.path.join(self.dir, "calibrated.keras"))
    self.assertIn("--model_file=model.keras", why)

  def test_stale_calibrated_model_is_not_used(self):
    # Retrained after evaluate --calibrate: calibrated.keras holds old weights.
    os.utime(os.path.join(self.dir, "calibrated.keras"), (1000, 1000))
    os.utime(os.path.join(self.dir, "model.keras"), (2000, 2000))
    path, why = run_dir.choose_model_file(self.dir)
    self.assertEqual(path, os.path.join(self.dir, "model.keras"))
    self.assertIn("warning", why)
    self.assertIn("older", why)

  def test_explicit_choice_and_errors(self):
    path, _ = run_dir.choose_model_file(self.dir, "model.keras")
    self.assertEqual(path, os.path.join(self.dir, "model.keras"))
    with self.assertRaisesRegex(artefacts.ExportError,
                                "no other.keras.*calibrated.keras, model.keras"):
      run_dir.choose_model_file(self.dir, "other.keras")
    with self.assertRaisesRegex(artefacts.ExportError, "a file name inside"):
      run_dir.choose_model_file(self.dir, "../model.keras")
    os.remove(os.path.join(self.dir, "calibrated.keras"))
    path, _ = run_dir.choose_model_file(self.dir)
    self.assertEqual(path, os.path.join(self.dir, "model.keras"))


if __name__ == "__main__":
  tf.test.main()
