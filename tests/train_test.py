"""End-to-end tests of the training CLI (real subprocess, tiny settings)."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from mlc_keras.core import config as config_lib
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
                     ["shape", "colour", "size", "fill", "marks"])
    # The tag head's thresholds, fitted on validation, one per tag.
    self.assertEqual(list(results["tag_thresholds"]["marks"]),
                     ["bar", "corner", "edge"])
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


class PresetCliTest(tf.test.TestCase):
  """--preset's recipes reach the run config, and a flag the user gives
  wins over the preset even when it equals the flag's default."""

  def config(self, *args):
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from absl import flags; "
         "from mlc_keras import train; flags.FLAGS(sys.argv); "
         "print(train.config_from_flags().to_json())", "--manifest=t.csv",
         *args], cwd=REPO, capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=REPO)).stdout
    return config_lib.Config.from_dict(json.loads(out))

  def test_recipes_and_overrides(self):
    fine = self.config("--preset=finetune_imagenet")
    self.assertEqual(fine, dataclasses.replace(
        config_lib.finetune_imagenet(), data=dataclasses.replace(
            config_lib.finetune_imagenet().data, manifest="t.csv")))
    self.assertEqual((fine.model.weights, fine.train.freeze_epochs,
                      fine.train.finetune_lr_scale, fine.data.image_size,
                      fine.model.dropout), ("imagenet", 2, 0.1, 224, 0.1))
    mine = self.config("--preset=finetune_imagenet", "--weights=none",
                       "--freeze_epochs=0", "--dropout=0", "--epochs=3",
                       "--backbone=EfficientNetV2B0", "--crop_scale=0.5,1")
    self.assertEqual((mine.model.weights, mine.train.freeze_epochs,
                      mine.model.dropout, mine.train.epochs,
                      mine.model.backbone, mine.data.crop_scale),
                     (None, 0, 0.0, 3, "EfficientNetV2B0", (0.5, 1.0)))
    self.assertEqual(mine.train.finetune_lr_scale, 0.1)  # still the preset's
    scratch = self.config("--preset=scratch_small")
    self.assertEqual((scratch.model.weights, scratch.train.weight_decay,
                      scratch.data.augment, scratch.model.dropout,
                      scratch.train.label_smoothing),
                     (None, 5e-4, ("flip", "resized_crop", "colour"), 0.2,
                      (("*", 0.1),)))
    self.assertEqual(self.config("--preset=scratch_small",
                                 "--label_smoothing=category=0.2",
                                 "--ema_decay=0.99").train.label_smoothing,
                     (("category", 0.2),))
    self.assertEqual(self.config("--preset=scratch_small",
                                 "--label_smoothing=").train.label_smoothing,
                     ())
    # Without --preset a manifest run is the default config, as before.
    self.assertEqual(self.config().model, config_lib.ModelConfig())
    self.assertEqual(self.config().train, config_lib.TrainConfig())


class OwnershipCliTest(tf.test.TestCase):
  """Re-runs of a run folder as a user would type them. The finished run is
  laid out as train leaves it, with the config.json train writes for these
  flags (from train's own flag parsing), not trained: a tiny training took
  over three minutes on the loaded CI machine, and nothing here reads the
  model's contents."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="train_ownership_")
    cls.model_dir = os.path.join(cls.root, "run")
    cls.args = ("--preset=tiny", f"--model_dir={cls.model_dir}",
                f"--demo_dir={os.path.join(cls.root, 'demo')}",
                "--steps_per_epoch=1")
    config = subprocess.run(
        [sys.executable, "-c", "import sys; from absl import flags; "
         "from mlc_keras import train; from mlc_keras.runs import preflight; "
         "flags.FLAGS(sys.argv); "
         "print(preflight.absolute_paths(train.config_from_flags()).to_json())",
         *cls.args], cwd=REPO, capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=REPO)).stdout
    os.makedirs(cls.model_dir)
    for name, text in (("config.json", config), ("model.keras", "PK model"),
                       ("results.json", "{}"), ("history.csv", "epoch\n0\n")):
      with open(os.path.join(cls.model_dir, name), "w") as f:
        f.write(text)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _files(self, folder):
    out = {}
    for name in ("model.keras", "config.json", "history.csv", "results.json"):
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[name] = (os.stat(path).st_mtime_ns, f.read())
    return out

  def test_rerun_of_a_finished_run_leaves_it_alone(self):
    before = self._files(self.model_dir)
    again = run_cli("mlc_keras.train", *self.args, timeout=300)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn(f"{self.model_dir} holds a finished run; nothing was "
                  f"trained. Its model: {self.model_dir}/model.keras",
                  again.stderr)
    self.assertIn("--overwrite", again.stderr)
    self.assertNotIn("Per-head results", again.stdout)
    # Other flags: an error, and still nothing touched.
    other = run_cli("mlc_keras.train", *self.args, "--epochs=3", timeout=300)
    self.assertEqual(other.returncode, 2, other.stderr[-3000:])
    self.assertIn("trained with other settings (--epochs was 1, now 3)",
                  other.stderr)
    self.assertEqual(self._files(self.model_dir), before)
    self.assertFalse(os.path.exists(os.path.join(self.model_dir, "run.lock")))

  def test_resume_with_other_steps_per_epoch_is_refused(self):
    # The state of a run killed after its first backup.
    killed = os.path.join(self.root, "killed")
    os.makedirs(os.path.join(killed, "backup"))
    shutil.copy(os.path.join(self.model_dir, "config.json"), killed)
    open(os.path.join(killed, "backup", "latest.state.npz"), "w").close()
    with open(os.path.join(killed, "config.json"), "rb") as f:
      config = f.read()
    args = [a.replace(self.model_dir, killed) for a in self.args]
    proc = run_cli("mlc_keras.train", *args[:-1], "--steps_per_epoch=3",
                   timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertIn("--steps_per_epoch: 1 in the interrupted run, 3 now",
                  proc.stderr)
    self.assertNotIn("Traceback", proc.stderr)
    with open(os.path.join(killed, "config.json"), "rb") as f:
      self.assertEqual(f.read(), config)

  def test_a_live_run_owns_its_folder(self):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mlc_keras.runs import lock; "
         "lock.RunLock(sys.argv[1]).acquire(); print(1, "
         "flush=True); time.sleep(120)", os.path.join(self.root, "busy")],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO))
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), "1")
    proc = run_cli("mlc_keras.train", "--preset=tiny",
                   f"--model_dir={os.path.join(self.root, 'busy')}",
                   timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertIn(f"is in use by another training run (pid {holder.pid} on "
                  "host", proc.stderr)


if __name__ == "__main__":
  tf.test.main()
