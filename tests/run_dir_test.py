"""Tests of run_dir: what export, predict and evaluate read from a run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tempfile
from unittest import mock

import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir


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

  def test_example_manifest_names_images_train_did_not_use(self):
    # train prints `predict ... <this>`: it must exist, and not be train.csv.
    run = os.path.join(self.get_temp_dir(), "ex_run")
    demo_dir = os.path.join(self.get_temp_dir(), "ex_demo")
    os.makedirs(run)
    os.makedirs(demo_dir)
    self.assertIsNone(run_dir.example_manifest(run))
    paths = {n: os.path.join(demo_dir, n + ".csv")
             for n in ("train", "val", "heldout")}
    for path in paths.values():
      open(path, "w").close()
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"demo_dir": demo_dir, "manifest": None}}, f)
    self.assertEqual(run_dir.example_manifest(run), paths["heldout"])
    os.remove(paths["heldout"])
    self.assertEqual(run_dir.example_manifest(run), paths["val"])
    # A user's run: its validation manifest, never the training one.
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"manifest": paths["train"],
                          "val_manifest": None}}, f)
    self.assertIsNone(run_dir.example_manifest(run))

  def test_next_commands_run_as_printed_whatever_the_path(self):
    root = os.path.join(self.get_temp_dir(), "it's a run")
    run, demo = os.path.join(root, "my run"), os.path.join(root, "demo set")
    os.makedirs(run)
    os.makedirs(demo)
    heldout, val = (os.path.join(demo, n) for n in ("heldout.csv", "val.csv"))
    open(heldout, "w").close()
    open(val, "w").close()
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"demo_dir": demo, "manifest": None}}, f)
    argv = [shlex.split(c) for c in run_dir.next_commands(run)]
    self.assertEqual(argv, [
        ["python", "-m", "mlc_keras.evaluate", f"--model_dir={run}"],
        ["python", "-m", "mlc_keras.export", f"--model_dir={run}"],
        ["python", "-m", "mlc_keras.predict", f"--model={run}", heldout]])
    # No validation data to default to (the demo's val.csv gone; a
    # TFRecord or TFDS run alike): the line asks for a manifest.
    os.remove(val)
    self.assertEqual(run_dir.next_commands(run)[0],
                     f"python -m mlc_keras.evaluate --model_dir={shlex.quote(run)}"
                     " --manifest=<held-out manifest>")
    # A --val_fraction run: evaluate defaults to the rows it held out.
    train = os.path.join(root, "train.csv")
    open(train, "w").close()
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"manifest": train, "val_fraction": 0.1}}, f)
    self.assertEqual(shlex.split(run_dir.next_commands(run)[0])[3:],
                     [f"--model_dir={run}"])
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"demo_dir": demo, "manifest": None}}, f)
    os.remove(heldout)  # nothing held out to name: a placeholder
    self.assertEndsWith(run_dir.next_commands(run)[2], " <images>")

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
    self.assertIn("model_file=model.keras", why)

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


def _config(**train):
  """The tiny config's dict (as config.json holds it) with train fields set."""
  cfg = config_lib.tiny()
  return dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, demo_dir="/data/demo"),
      train=dataclasses.replace(cfg.train, **train)).to_dict()


class ClaimTest(tf.test.TestCase):
  """One run per folder: finished runs are kept, resumes keep their meaning."""

  def _run(self, config, *files):
    folder = os.path.join(self.get_temp_dir(),
                          f"run{len(os.listdir(self.get_temp_dir()))}")
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith("/"):
        os.makedirs(path)
        open(os.path.join(path, "state"), "w").close()
      else:
        with open(path, "wb") as f:
          f.write(b"model bytes")
    return folder

  def _snapshot(self, folder):
    out = {}
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        with open(path, "rb") as f:
          out[name] = (os.stat(path).st_mtime_ns, f.read())
    return out

  def test_finished_run_is_not_claimed(self):
    folder = self._run(_config(), "model.keras", "results.json")
    before = self._snapshot(folder)
    with self.assertRaisesRegex(run_dir.RunFinished,
                                "holds a finished run; nothing was trained. "
                                "Its model: .*model.keras.*overwrite") as e:
      run_dir.claim(folder, _config())
    self.assertTrue(e.exception.same_flags)
    with self.assertRaisesRegex(run_dir.RunFinished,
                                "other settings .epochs was 1, now 3") as e:
      run_dir.claim(folder, _config(epochs=3))
    self.assertFalse(e.exception.same_flags)
    self.assertEqual(self._snapshot(folder), before)
    # A distributed run's checkpoints stay after it ends: still finished.
    os.makedirs(os.path.join(folder, "checkpoints"))
    open(os.path.join(folder, "checkpoints", "checkpoint"), "w").close()
    with self.assertRaises(run_dir.RunFinished):
      run_dir.claim(folder, _config())

  def test_resume_with_other_meaning_is_refused_before_anything_changes(self):
    folder = self._run(_config(steps_per_epoch=2), "backup/")
    before = self._snapshot(folder)
    with self.assertRaisesRegex(
        run_dir.RunDirError,
        r"interrupted run \(backup\).*:\n  batch_size: 8 in the "
        r"interrupted run, 4 now\n  steps_per_epoch: 2 in the interrupted "
        r"run, 3 now\nResume with"):
      run_dir.claim(folder, _config(steps_per_epoch=3, batch_size=4))
    with self.assertRaisesRegex(run_dir.RunDirError,
                                "optimizer: adamw in the interrupted run, "
                                "sgd now"):
      run_dir.claim(folder, _config(steps_per_epoch=2, optimizer="sgd"))
    self.assertEqual(self._snapshot(folder), before)
    # Fewer epochs than the backup has trained cannot be resumed.
    with open(os.path.join(folder, "backup", "training_metadata.json"),
              "w") as f:
      json.dump({"epoch": 2}, f)
    with self.assertRaisesRegex(run_dir.RunDirError, "epochs: 2 already "
                                "trained in the interrupted run, 1 now"):
      run_dir.claim(folder, _config(steps_per_epoch=2, epochs=1))
    # Epochs, the learning rate (the NaN way out) and logging may change.
    self.assertEqual(run_dir.claim(folder, _config(
        steps_per_epoch=2, epochs=5, learning_rate=1e-5, top_k=1,
        backup_every_steps=7)), "resume")

  def test_a_field_an_older_config_lacks_counts_as_its_default(self):
    old = _config()
    del old["model"]["head_pooling"]  # written before the field existed
    folder = self._run(old, "backup/")
    attention = _config()
    attention["model"]["head_pooling"] = "attention"
    with self.assertRaisesRegex(run_dir.RunDirError, "head_pooling: avg in "
                                "the interrupted run, attention now"):
      run_dir.claim(folder, attention)
    self.assertEqual(run_dir.claim(folder, _config()), "resume")
    # A finished run compares the same way.
    finished = self._run(old, "model.keras")
    with self.assertRaisesRegex(run_dir.RunFinished,
                                "head_pooling was avg, now attention") as e:
      run_dir.claim(finished, attention)
    self.assertFalse(e.exception.same_flags)
    with self.assertRaises(run_dir.RunFinished) as e:
      run_dir.claim(finished, _config())
    self.assertTrue(e.exception.same_flags)

  def test_distributed_checkpoints_are_a_resume_state(self):
    folder = self._run(_config(), "checkpoints/")
    with self.assertRaisesRegex(run_dir.RunDirError, "seed: 0 in the "
                                "interrupted run, 1 now"):
      run_dir.claim(folder, _config(seed=1))
    self.assertEqual(run_dir.claim(folder, _config()), "resume")

  def test_new_and_overwrite(self):
    empty = os.path.join(self.get_temp_dir(), "empty")
    self.assertEqual(run_dir.claim(empty, _config()), "new")
    # Killed before its first backup: nothing to keep, config.json rewritten.
    self.assertEqual(run_dir.claim(self._run(_config(seed=5)), _config()),
                     "new")
    folder = self._run(_config(), "model.keras", "best.keras", "history.csv",
                       "backup/", "tensorboard/", "export/")
    # A worker trusts the chief, which deletes.
    self.assertEqual(run_dir.claim(folder, _config(), True, chief=False),
                     "overwrite")
    self.assertIn("model.keras", os.listdir(folder))
    with self.assertLogs("mlc_keras", "WARNING") as logs:
      self.assertEqual(run_dir.claim(folder, _config(), overwrite=True),
                       "overwrite")
    self.assertEqual(os.listdir(folder), ["export"])
    self.assertIn("deleted the previous run's model.keras, best.keras, "
                  "config.json, history.csv, tensorboard, backup", logs.output[0])

  def test_folder_of_someone_elses_files_is_refused_even_with_overwrite(self):
    folder = os.path.join(self.get_temp_dir(), "theirs")
    os.makedirs(folder)
    for name, text in (("config.json", '{"lr": 0.1}'), ("labels.json", "[]"),
                       ("history.csv", "epoch,loss\n0,1.0\n")):
      with open(os.path.join(folder, name), "w") as f:
        f.write(text)
    before = self._snapshot(folder)
    for overwrite in (False, True):
      with self.assertRaisesRegex(
          run_dir.RunDirError,
          r"^\S*theirs is not empty and holds no mlc_keras run \(no "
          r"config.json of one\): config.json, history.csv, labels.json; "
          r"nothing was written. Train into a new or empty model_dir "
          r"\(overwrite only replaces an mlc_keras run\).$"):
        run_dir.claim(folder, _config(), overwrite=overwrite)
      self.assertEqual(self._snapshot(folder), before)
    # What a run writes before its config.json is its own: claimed.
    early = os.path.join(self.get_temp_dir(), "early")
    os.makedirs(early)
    for name in ("run.lock", "image_check.csv", "quarantine.csv",
                 "train.log"):
      open(os.path.join(early, name), "w").close()
    self.assertEqual(run_dir.claim(early, _config()), "new")
    # A worker does not judge the folder: the chief does.
    self.assertEqual(run_dir.claim(folder, _config(), chief=False), "new")

  def test_a_file_or_read_only_folder_is_named_before_anything(self):
    path = os.path.join(self.get_temp_dir(), "a_file")
    open(path, "w").close()
    with self.assertRaisesRegex(run_dir.RunDirError,
                                r"a_file is a file, not a folder; give a "
                                r"folder as model_dir$"):
      run_dir.check_writable(path)
    folder = os.path.join(self.get_temp_dir(), "new_run")
    run_dir.check_writable(folder)  # created, and left empty
    self.assertEqual(os.listdir(folder), [])
    # Tests run as root, where chmod does not stop a write.
    denied = PermissionError(13, "Permission denied")
    with mock.patch.object(tempfile, "mkstemp", side_effect=denied):
      with self.assertRaisesRegex(run_dir.RunDirError,
                                  r"new_run: cannot write there \(Permission "
                                  r"denied\); give a folder you can write"):
        run_dir.check_writable(folder)

  def test_a_resume_must_keep_its_classes(self):
    shape = heads_lib.HeadSpec("shape", ("circle", "square"))
    saved = heads_lib.LabelSchema((
        shape, heads_lib.HeadSpec("colour", ("blue", "red"))))
    folder = self._run(_config(), "backup/")
    saved.save(os.path.join(folder, "labels.json"))
    before = self._snapshot(folder)
    run_dir.check_resumed_schema(folder, saved)  # the same meaning: resumes
    # Settings of a head are not its meaning.
    run_dir.check_resumed_schema(folder, saved.with_loss_weights({"shape": 2}))
    # red renamed aqua (column 0, blue, would silently train as aqua), and a
    # class added (the columns after it shift).
    for old, new in ((("blue", "red"), ("aqua", "blue")),
                     (("blue", "red"), ("blue", "green", "red"))):
      now = heads_lib.LabelSchema((shape, heads_lib.HeadSpec("colour", new)))
      with self.assertRaisesRegex(
          run_dir.RunDirError,
          r"holds an interrupted run \(backup\) whose backup was trained on "
          r"other classes than the data has now:\n  head 'colour': classes "
          f"{', '.join(old)} in the interrupted run, {', '.join(new)} now\n"
          r"Restore the data"):
        run_dir.check_resumed_schema(folder, now)
    with self.assertRaisesRegex(run_dir.RunDirError,
                                "heads: shape, colour in the interrupted run, "
                                "colour, shape now"):
      run_dir.check_resumed_schema(folder, heads_lib.LabelSchema(
          tuple(reversed(saved.heads))))
    self.assertEqual(self._snapshot(folder), before)
    # No backup: nothing to keep, the new schema is written as it is.
    fresh = self._run(_config())
    saved.save(os.path.join(fresh, "labels.json"))
    run_dir.check_resumed_schema(fresh, heads_lib.LabelSchema(
        tuple(reversed(saved.heads))))

  def test_relative_paths_of_an_older_config_mean_the_same_files(self):
    cwd = os.getcwd()
    self.addCleanup(os.chdir, cwd)
    os.chdir(self.get_temp_dir())
    old = _config()
    old["data"]["manifest"] = "data/train.csv"
    new = _config()
    new["data"]["manifest"] = os.path.abspath("data/train.csv")
    self.assertEqual(run_dir.config_differences(old, new), [])
    old["model"]["weights"], new["model"]["weights"] = (
        "w.h5", os.path.abspath("w.h5"))
    self.assertEqual(run_dir.config_differences(old, new), [])
    old["model"]["weights"] = new["model"]["weights"] = "imagenet"
    new["data"]["manifest"] = "/elsewhere/train.csv"
    self.assertEqual(run_dir.config_differences(old, new), [(
        "`manifest`", os.path.abspath("data/train.csv"),
        "/elsewhere/train.csv")])


if __name__ == "__main__":
  tf.test.main()
