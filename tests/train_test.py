"""End-to-end tests of the training CLI (real subprocess, tiny settings)."""

import csv
import json
import os
import subprocess
import sys

import tensorflow as tf

from mlc_keras import config as config_lib
from tests import testutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, *args, timeout=900):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MLC_QUIET="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


class TrainCliTest(tf.test.TestCase):

  def test_demo_run_writes_artefacts_and_table(self):
    tmp = self.get_temp_dir()
    model_dir = os.path.join(tmp, "run")
    proc = run_cli("mlc_keras.train", "--preset=tiny", f"--model_dir={model_dir}",
                   f"--demo_dir={os.path.join(tmp, 'demo')}", "--epochs=2")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    for name in ("model.keras", "best.keras", "labels.json", "config.json",
                 "results.json", "history.csv"):
      self.assertTrue(os.path.exists(os.path.join(model_dir, name)), name)
    # The backup is removed once a run finishes.
    self.assertFalse(os.path.exists(os.path.join(model_dir, "backup")))
    with open(os.path.join(model_dir, "results.json")) as f:
      results = json.load(f)
    self.assertEqual([r["head"] for r in results["heads"]],
                     ["shape", "colour", "size", "fill"])
    tiny = config_lib.tiny()
    for row in results["heads"]:
      self.assertEqual(row["labelled"], tiny.data.demo_val_size)
      self.assertBetween(row["accuracy"], 0.0, 1.0)
    self.assertIn("Per-head results", proc.stdout)
    with open(os.path.join(model_dir, "history.csv")) as f:
      self.assertLen(list(csv.DictReader(f)), 2)
    with open(os.path.join(model_dir, "config.json")) as f:
      self.assertEqual(json.load(f)["data"]["image_size"], 32)

  def test_bad_input_fails_before_training_and_names_the_row(self):
    tmp = self.get_temp_dir()
    rows = testutil.simple_rows(8)
    manifest = testutil.write_manifest(tmp, rows)
    os.remove(os.path.join(tmp, rows[4]["image"]))
    proc = run_cli("mlc_keras.train", f"--manifest={manifest}",
                   f"--model_dir={os.path.join(tmp, 'run')}", "--image_size=32",
                   "--batch_size=2", timeout=300)
    self.assertEqual(proc.returncode, 2)
    self.assertRegex(proc.stderr, r"train.csv:6: .*img/004.jpg")
    self.assertFalse(os.path.exists(os.path.join(tmp, "run", "model.keras")))

  def test_bad_flag_value(self):
    proc = run_cli("mlc_keras.train", "--loss_weights=shape", timeout=300)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("--loss_weights: expected head=number, got 'shape'", proc.stderr)


if __name__ == "__main__":
  tf.test.main()
