"""train_lib: an image that fails after the check (deleted or corrupted
during training) stops the run naming its manifest line, or under
--quarantine is set aside and training resumes without it."""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import preflight
from mlc_keras.runs import folder as run_dir
from mlc_keras.training import run as train_lib
from mlc_keras.data import headers
from mlc_keras.data import imagecheck
from mlc_keras.data import manifest
from mlc_keras.modeling import model as model_lib
from mlc_keras.training import setup
from tests import testutil


class FailureDuringTrainingTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.rows = testutil.simple_rows(12)
    path = testutil.write_manifest(self.dir, self.rows, size=32)
    cfg = config_lib.tiny()
    # Every training image is read in the first epoch (no steps limit), so
    # the one broken after the check is met whatever the order.
    self.cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, manifest=path, image_size=32,
                                      val_fraction=0.0, augment=()),
        train=dataclasses.replace(cfg.train, batch_size=4,
                                  steps_per_epoch=None))
    self.model_dir = os.path.join(self.dir, "run")

  def _train_breaking(self, row: int, damage, cfg=None):
    """Trains with row ``row``'s file damaged right after the check."""
    target = os.path.join(self.dir, self.rows[row]["image"])
    real = setup.prepare_run

    def prepare_then_damage(*args, **kwargs):
      run = real(*args, **kwargs)
      if os.path.exists(target):  # once: a resumed attempt finds it broken
        damage(target)
      return run
    # The shared three-conv net: seconds, where a keras.applications
    # backbone costs minutes on a loaded machine.
    small = lambda schema, size, *a, **k: model_lib.small_cnn(schema, size)
    with mock.patch.object(setup, "prepare_run", prepare_then_damage), \
        mock.patch.object(model_lib, "build_model", small), \
        mock.patch.object(model_lib, "set_backbone_trainable",
                          lambda *a, **k: None):
      return train_lib.train_and_evaluate(cfg or self.cfg, self.model_dir,
                                          verbose=0)

  def test_file_deleted_mid_training_is_named_with_its_line(self):
    # Row 5 is manifest line 7 (the header is line 1).
    with self.assertRaisesRegex(
        manifest.DataError,
        r"training stopped at an image that failed after the check:\n  "
        r"\S*train\.csv:7: \S*img/005\.png: file not found \(during "
        r"training\)\n"):
      self._train_breaking(5, os.remove)
    self.assertFalse(os.path.exists(os.path.join(self.model_dir,
                                                 "model.keras")))

  def test_quarantine_sets_a_corrupted_file_aside_and_finishes(self):
    def corrupt(path):
      # Same size, so only the mtime tells the check's cache it changed.
      with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff" * 20)
    cfg = dataclasses.replace(
        self.cfg, data=dataclasses.replace(self.cfg.data, quarantine=True))
    broken = [False]

    def corrupt_once(path):
      if not broken[0]:
        broken[0] = True
        corrupt(path)
    results = self._train_breaking(5, corrupt_once, cfg)
    self.assertEqual(results["train_size"], 11)
    with open(os.path.join(self.model_dir, "quarantine.csv")) as f:
      table = list(csv.DictReader(f))
    self.assertEqual([int(r["line"]) for r in table], [7])
    self.assertStartsWith(table[0]["reason"], "cannot decode: ")
    self.assertTrue(os.path.exists(os.path.join(self.model_dir,
                                                "model.keras")))
    entry = imagecheck.load_cache(os.path.join(
        self.model_dir, imagecheck.CACHE_FILE))[table[0]["path"]]
    self.assertEqual(entry.level, "decode")


class QuarantineTerminatesTest(tf.test.TestCase):
  """A row set aside is never named again, and a row failing again after
  being set aside ends the run instead of restarting it forever."""

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.rows = testutil.simple_rows(6)
    path = testutil.write_manifest(self.dir, self.rows, size=32)
    cfg = config_lib.tiny()
    self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, manifest=path, image_size=32, val_fraction=0.0,
        quarantine=True))
    self.model_dir = os.path.join(self.dir, "run")
    os.makedirs(self.model_dir)

  def test_the_row_named_is_the_failing_one_not_one_set_aside(self):
    # Row 1 (line 3) is missing: quarantined by the check before training.
    os.remove(os.path.join(self.dir, self.rows[1]["image"]))
    # Row 3 (line 5) passes the header check but fails to decode.
    broken = os.path.join(self.dir, self.rows[3]["image"])
    with open(broken, "r+b") as f:
      f.seek(40)
      f.write(b"\xff" * 20)
    error = tf.errors.InvalidArgumentError(None, None, "Invalid PNG data")
    problem = setup.failed_image(self.cfg, self.model_dir, error)
    self.assertEqual((problem.line, problem.path), (5, broken))
    self.assertStartsWith(problem.reason, "cannot decode: ")

  def test_a_row_failing_again_after_set_aside_stops_the_run(self):
    problem = manifest.Problem("m.csv", 3, "a.webp", "cannot decode: x")
    error = tf.errors.InvalidArgumentError(None, None, "cannot decode")
    calls = []

    def train(*args):
      calls.append(args)
      raise error
    with mock.patch.object(train_lib, "_train", train), \
        mock.patch.object(setup, "failed_image", lambda *a: problem):
      with self.assertRaisesRegex(
          manifest.DataError,
          r"^training failed again at a row already set aside "
          r"\(--quarantine\):\n  m\.csv:3: a\.webp: cannot decode: x\n"):
        train_lib._train_setting_aside(self.cfg, self.model_dir, 0)
    self.assertLen(calls, 2)  # the first try and one restart, no more

  def test_missing_file_and_animated_webp_are_both_set_aside_before_training(
      self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    os.remove(os.path.join(self.dir, self.rows[1]["image"]))
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8))
              for v in (0, 240)]
    anim = os.path.join(self.dir, self.rows[4]["image"])
    os.remove(anim)
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:])
    bundle = setup.load_data(self.cfg.data, seed=0)
    self.assertEqual(
        [(q.line, q.reason) for q in bundle.quarantined],
        [(3, "file not found"), (6, headers.ANIMATED_WEBP)])
    self.assertEqual(bundle.train_size, 4)


class RunFolderTest(tf.test.TestCase):
  """What train refuses before it writes: another schema on a resume, a
  folder that is not a run's."""

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    path = testutil.write_manifest(self.dir, testutil.simple_rows(6))
    cfg = config_lib.tiny()
    self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, manifest=path, image_size=32, val_fraction=0.0))
    self.model_dir = os.path.join(self.dir, "run")
    os.makedirs(os.path.join(self.model_dir, "backup"))

  def _files(self):
    out = {}
    for name in sorted(os.listdir(self.model_dir)):
      path = os.path.join(self.model_dir, name)
      if os.path.isfile(path):
        with open(path, "rb") as f:
          out[name] = f.read()
    return out

  def test_resume_on_renamed_classes_is_refused_before_labels_are_written(
      self):
    # The interrupted run knew colour as aqua, blue; the data now says blue,
    # red (the manifest renamed a class).
    old = heads_lib.LabelSchema((testutil.SCHEMA.head("shape"),
                                 heads_lib.HeadSpec("colour",
                                                    ("aqua", "blue"))))
    old.save(os.path.join(self.model_dir, "labels.json"))
    with open(os.path.join(self.model_dir, "config.json"), "w") as f:
      f.write(self.cfg.to_json())
    before = self._files()
    with self.assertRaisesRegex(
        run_dir.RunDirError, r"head 'colour': classes aqua, blue in the "
        r"interrupted run, blue, red now\n"):
      setup.prepare_run(self.cfg, self.model_dir)
    after = self._files()
    after.pop(imagecheck.CACHE_FILE)  # the check's own cache
    self.assertEqual(after, before)

  def test_read_only_folder_is_one_line_and_a_finished_run_stays_finished(
      self):
    os.rmdir(os.path.join(self.model_dir, "backup"))
    denied = PermissionError(13, "Permission denied")
    # Tests run as root, where chmod does not stop a write.
    with mock.patch.object(tempfile, "mkstemp", side_effect=denied):
      with self.assertRaisesRegex(run_dir.RunDirError,
                                  r"run: cannot write there \(Permission "
                                  r"denied\)"):
        train_lib.train_and_evaluate(self.cfg, self.model_dir, verbose=0)
      with open(os.path.join(self.model_dir, "config.json"), "w") as f:
        f.write(preflight.absolute_paths(self.cfg).to_json())
      with open(os.path.join(self.model_dir, "model.keras"), "w") as f:
        f.write("a finished run's model")
      with self.assertRaises(run_dir.RunFinished) as e:
        train_lib.train_and_evaluate(self.cfg, self.model_dir, verbose=0)
      self.assertTrue(e.exception.same_flags)
    self.assertEqual(sorted(os.listdir(self.model_dir)),
                     ["config.json", "model.keras"])

  def test_train_into_a_folder_of_other_files_writes_nothing(self):
    os.rmdir(os.path.join(self.model_dir, "backup"))
    for name in ("config.json", "labels.json", "history.csv"):
      with open(os.path.join(self.model_dir, name), "w") as f:
        f.write("mine")
    before = self._files()
    with self.assertRaisesRegex(run_dir.RunDirError,
                                "holds no mlc_keras run .*: config.json, "
                                "history.csv, labels.json; nothing was "
                                "written"):
      train_lib.train_and_evaluate(self.cfg, self.model_dir, verbose=0)
    self.assertEqual(self._files(), before)
    self.assertEqual(sorted(os.listdir(self.model_dir)),
                     ["config.json", "history.csv", "labels.json"])


if __name__ == "__main__":
  tf.test.main()
