"""Resuming the single-host fit path: SIGKILL, NaN, determinism, corrupt backups.

How each test was checked to fail without its protection is noted on the
test (the protection was removed by hand and the test run).
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.training import backup as backup_lib
from tests import keras_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough that tracing dominates; 3 epochs so a kill can land at epoch 2
# with an older backup beside the latest.
EPOCHS, STEPS = 3, 3
# The SIGKILL test runs with weight EMA on: the averages live among the
# optimizer's variables, so the resumed runs' model.keras (the average) is
# exact only if the backup holds them and the raw weights both. And with
# factor heads: their training targets carry the co-occurrence prior, which
# the resumed process computes again from the training labels, so exact
# weights also show that the prior (and the batches carrying it) come back
# the same.
EMA = ("--ema_decay=0.9", "--factor_heads=shape,colour")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MLC_QUIET="1",
              PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _train_args(tmp, model_dir, *extra):
  return [sys.executable, "-m", "mlc_keras.train", "--preset=tiny",
          "--backbone=MobileNetV2", "--deterministic", f"--epochs={EPOCHS}",
          f"--steps_per_epoch={STEPS}", f"--demo_dir={os.path.join(tmp, 'demo')}",
          f"--model_dir={model_dir}", *extra]


def _start(tmp, model_dir, *extra):
  log = open(model_dir + ".log", "w")  # pylint: disable=consider-using-with
  return subprocess.Popen(_train_args(tmp, model_dir, *extra), cwd=REPO,
                          env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _run(tmp, model_dir, *extra, timeout=900):
  return subprocess.run(_train_args(tmp, model_dir, *extra), cwd=REPO,
                        env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _metadata(model_dir):
  try:
    with open(os.path.join(model_dir, "backup", "training_metadata.json")) as f:
      return json.load(f)
  except (OSError, ValueError):  # not written yet, or mid-rename
    return None


def _kill_when(procs, ready, timeout=900):
  """SIGKILLs each of ``procs`` ({model_dir: Popen}) once its backup
  metadata satisfies ``ready[model_dir]``; polls them all together."""
  left = dict(procs)
  deadline = time.monotonic() + timeout
  while left and time.monotonic() < deadline:
    for model_dir, proc in list(left.items()):
      meta = _metadata(model_dir)
      if meta is not None and ready[model_dir](meta):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        del left[model_dir]
      elif proc.poll() is not None:
        for p in left.values():
          p.kill()
        raise AssertionError(f"{model_dir} ended (rc {proc.returncode}) "
                             "before the kill point; see its .log")
    time.sleep(0.02)
  for p in left.values():
    p.kill()
  if left:
    raise AssertionError(f"kill point not reached: {sorted(left)}")


_model_weights = keras_files.model_weights


def _history_epochs(model_dir):
  with open(os.path.join(model_dir, "history.csv")) as f:
    return [int(r["epoch"]) for r in csv.DictReader(f)]


class ResumeCliTest(tf.test.TestCase):
  """The real CLI, killed with SIGKILL and re-run with the same command."""

  def assertSameWeights(self, expected, actual):
    self.assertEqual(sorted(expected), sorted(actual))
    for name, value in expected.items():
      # Exact: op determinism on, and the resumed run restores every
      # variable (weights, BN statistics, optimizer moments and step) and
      # sees the same batches (epoch-keyed shuffle, stateless augmentation).
      np.testing.assert_array_equal(value, actual[name], err_msg=name)

  def test_sigkill_resume_matches_uninterrupted_run(self):
    # Fails without its protections (checked on BackupCallbackTest, which
    # drives the same code on a small model; these CLI runs take minutes, so
    # the mutations were not re-run here): with the stock keras
    # BackupAndRestore the "steps" case trains the resumed epoch's first
    # batches twice (weights differ by ~1e-2 on the small model); with
    # backup_epoch reading training_metadata.json as before, the "corrupt"
    # case starts the data at epoch 2 while Keras falls back to epoch 1 (and
    # with a garbled metadata file it crashes); with train_dataset started
    # at epoch 0 instead of the backup's epoch, "epoch" sees other batches.
    tmp = self.get_temp_dir()
    ref_dir = os.path.join(tmp, "ref")
    # A kill at an epoch boundary is covered by both cases' resumes at the
    # start of an epoch (and by BackupCallbackTest); CI time is short.
    cases = {
        # name: (extra flags, kill when, file to truncate after the kill)
        "steps": (("--backup_every_steps=2",),
                  lambda m: m["epoch"] >= 1 and m.get("batches_done", 0) > 0,
                  None),
        "corrupt": ((), lambda m: m["epoch"] >= 2, backup_lib.BACKUP_STATE),
    }
    # Generate the demo set once so concurrent runs do not race writing it.
    from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
    tiny = config_lib.tiny()
    demo.generate(os.path.join(tmp, "demo"), tiny.data.demo_train_size,
                  tiny.data.demo_val_size)
    ref = _start(tmp, ref_dir, *EMA)
    # Determinism: the same command again, uninterrupted, in another process.
    again_dir = os.path.join(tmp, "again")
    again = _start(tmp, again_dir, *EMA)
    victims = {name: _start(tmp, os.path.join(tmp, name), *extra, *EMA)
               for name, (extra, _, _) in cases.items()}
    _kill_when({os.path.join(tmp, n): p for n, p in victims.items()},
               {os.path.join(tmp, n): c[1] for n, c in cases.items()})
    killed_at = {}
    for name in cases:
      model_dir = os.path.join(tmp, name)
      self.assertEqual(victims[name].returncode, -signal.SIGKILL)
      self.assertFalse(os.path.exists(os.path.join(model_dir, "model.keras")))
      killed_at[name] = _metadata(model_dir)
    self.assertGreater(killed_at["steps"]["batches_done"], 0)
    for name, (_, _, damaged) in cases.items():
      if damaged:
        path = os.path.join(tmp, name, "backup", damaged)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)

    resumed = {name: _start(tmp, os.path.join(tmp, name), *extra, *EMA)
               for name, (extra, _, _) in cases.items()}
    self.assertEqual(ref.wait(timeout=900), 0, open(ref_dir + ".log").read()[-3000:])
    with open(os.path.join(ref_dir, "config.json")) as f:
      self.assertEqual(json.load(f)["train"]["ema_decay"], 0.9)
    expected = _model_weights(os.path.join(ref_dir, "model.keras"))
    self.assertEqual(_history_epochs(ref_dir), list(range(EPOCHS)))
    # Same seed twice with --deterministic: identical weights. Not checked by
    # removing the option: on CPU the default kernels may already be
    # deterministic, so this guards against regressions (an unseeded op, a
    # shuffle not keyed by epoch) more than it proves the option is needed.
    self.assertEqual(again.wait(timeout=900), 0,
                     open(again_dir + ".log").read()[-3000:])
    self.assertSameWeights(
        expected, _model_weights(os.path.join(again_dir, "model.keras")))
    for name, proc in resumed.items():
      with self.subTest(name, killed_at=killed_at[name]):
        model_dir = os.path.join(tmp, name)
        rc = proc.wait(timeout=900)
        log = open(model_dir + ".log").read()
        self.assertEqual(rc, 0, log[-3000:])
        self.assertIn("resuming from the backup", log)
        self.assertEqual(_history_epochs(model_dir), list(range(EPOCHS)))
        self.assertFalse(os.path.exists(os.path.join(model_dir, "backup")))
        self.assertSameWeights(
            expected, _model_weights(os.path.join(model_dir, "model.keras")))
    self.assertIn("resuming from the previous one",
                  open(os.path.join(tmp, "corrupt.log")).read())

  def test_nan_exits_3_and_keeps_a_loadable_backup(self):
    # Fails without its protections (reasoned, not re-run: a CLI run takes
    # minutes here): with TerminateOnNaN(raise_error=False) the run exits 0
    # and deletes the backup; with the backup callback before TerminateOnNaN
    # in the list, the NaN step's weights are backed up before the raise
    # (the isfinite check). The first command, --learning_rate=1e12 with
    # SGD, was run and exited 0: its loss stayed finite.
    tmp = self.get_temp_dir()
    model_dir = os.path.join(tmp, "nan")
    # 1e12 with SGD stays finite (saturated softmax); AdamW steps ~lr per
    # weight, so the second step's loss overflows.
    proc = _run(tmp, model_dir, "--learning_rate=1e30",
                "--backup_every_steps=1")
    self.assertEqual(proc.returncode, 3, proc.stderr[-3000:])
    self.assertIn(f"The last backup is kept in {model_dir}/backup", proc.stderr)
    self.assertFalse(os.path.exists(os.path.join(model_dir, "model.keras")))
    backup = os.path.join(model_dir, "backup")
    meta = backup_lib.check_backup(backup)
    self.assertIn("epoch", meta)
    _, paths, arrays = backup_lib.read_state(
        os.path.join(backup, backup_lib.BACKUP_STATE))
    self.assertNotEmpty(arrays)
    # The optimizer's state is in the backup too.
    self.assertTrue(any(p.endswith("iteration") for p in paths), paths[-5:])
    for a in arrays:
      if np.issubdtype(a.dtype, np.floating):
        self.assertTrue(np.isfinite(a).all())


def _tiny_model():
  model = keras.Sequential([keras.Input((4,)),
                            keras.layers.Dense(3, name="dense"),
                            keras.layers.BatchNormalization(name="bn"),
                            keras.layers.Dense(2, name="out")])
  model.compile(keras.optimizers.Adam(0.01), "mse")
  return model


class _Interrupt(keras.callbacks.Callback):

  def __init__(self, epoch, batch):
    super().__init__()
    self.at = (epoch, batch)
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    if (self.epoch, batch) == self.at:
      raise KeyboardInterrupt


class BackupCallbackTest(tf.test.TestCase):
  """backup_lib.ResumableBackup and check_backup on a small model."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=(40, 4)).astype("float32")
    self.y = rng.normal(size=(40, 2)).astype("float32")

  def fit(self, backup_dir, epochs=4, save_freq="epoch", interrupt=None,
          history=None):
    """5 steps per epoch; the data of epoch e does not depend on where the
    run started (like train_dataset)."""
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    start = backup_lib.backup_epoch(backup_dir)
    xs = np.concatenate([np.roll(self.x, e, 0) for e in range(start, epochs)])
    ys = np.concatenate([np.roll(self.y, e, 0) for e in range(start, epochs)])
    ds = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(8)
    callbacks = []
    if interrupt:
      callbacks.append(_Interrupt(*interrupt))
    if history:
      callbacks.append(keras.callbacks.CSVLogger(history, append=True))
    callbacks.append(backup_lib.ResumableBackup(backup_dir, save_freq=save_freq,
                                               history_csv=history))
    try:
      model.fit(ds, epochs=epochs, steps_per_epoch=5, verbose=0, shuffle=False,
                callbacks=callbacks)
    except KeyboardInterrupt:
      return None
    return model.get_weights()

  def assertAllSame(self, a, b):
    self.assertLen(b, len(a))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)

  def test_mid_epoch_backup_resumes_exactly(self):
    # Checked to fail with keras.callbacks.BackupAndRestore(double_checkpoint
    # =True) in place of ResumableBackup: the resumed weights differ (Keras
    # trains batches 0-1 of epoch 2 twice) and, interrupted twice, the second
    # resume restarts from epoch 0 (the metadata says epoch 0).
    reference = self.fit(os.path.join(self.get_temp_dir(), "ref"))
    backup = os.path.join(self.get_temp_dir(), "backup")
    self.assertIsNone(self.fit(backup, save_freq=3, interrupt=(2, 3)))
    with open(os.path.join(backup, "training_metadata.json")) as f:
      meta = json.load(f)
    self.assertEqual((meta["epoch"], meta["batches_done"]), (2, 2))
    # A second interruption in the first epoch after the resume.
    self.assertIsNone(self.fit(backup, save_freq=3, interrupt=(3, 2)))
    with open(os.path.join(backup, "training_metadata.json")) as f:
      meta = json.load(f)
    # Saved at epoch 2's last batch, in the first epoch after the resume.
    self.assertEqual((meta["epoch"], meta["batches_done"]), (2, 5))
    self.assertAllSame(reference, self.fit(backup, save_freq=3))

  def _interrupted_backup(self):
    """A backup folder of a run stopped in epoch 3: latest = after epoch 3's
    start (epoch 3), previous = epoch 2."""
    backup = os.path.join(self.get_temp_dir(), "backup")
    self.assertIsNone(self.fit(backup, interrupt=(3, 0)))
    self.assertEqual(backup_lib.backup_epoch(backup), 3)
    return backup

  def test_keras_alone_does_not_survive_these_corruptions(self):
    # The behaviour check_backup guards against (Keras 3.15 on_train_begin):
    # a garbled metadata file is not an OSError, so there is no fallback.
    backup = self._interrupted_backup()
    with open(os.path.join(backup, "training_metadata.json"), "w") as f:
      f.write('{"epo')
    model = _tiny_model()
    callback = keras.callbacks.BackupAndRestore(backup, double_checkpoint=True)
    callback.set_model(model)
    with self.assertRaises(json.JSONDecodeError):
      callback.on_train_begin()
    # Metadata without weights: Keras resumes at epoch 3 with fresh weights.
    backup = self._interrupted_backup()
    os.remove(os.path.join(backup, backup_lib.BACKUP_STATE))
    model = _tiny_model()
    callback = keras.callbacks.BackupAndRestore(backup, double_checkpoint=True)
    callback.set_model(model)
    callback.on_train_begin()
    self.assertEqual(model._initial_epoch, 3)  # pylint: disable=protected-access

  def test_corrupt_latest_backup_falls_back_to_the_previous_one(self):
    # Checked to fail with backup_epoch reading training_metadata.json
    # directly (the original): it raises JSONDecodeError / returns 3 while
    # Keras falls back to epoch 2, and the resumed weights differ.
    reference = self.fit(os.path.join(self.get_temp_dir(), "ref"))
    corruptions = {
        "truncated weights": (backup_lib.BACKUP_STATE, lambda d: d[:len(d) // 2]),
        "garbled weights": (backup_lib.BACKUP_STATE, lambda d: b"\0" * len(d)),
        "garbled metadata": ("training_metadata.json", lambda d: d[:5]),
        "missing weights": (backup_lib.BACKUP_STATE, None),
        "missing metadata": ("training_metadata.json", None),
    }
    for name, (filename, damage) in corruptions.items():
      with self.subTest(name):
        backup = self._interrupted_backup()
        path = os.path.join(backup, filename)
        if damage is None:
          os.remove(path)
        else:
          with open(path, "rb") as f:
            blob = f.read()
          with open(path, "wb") as f:
            f.write(damage(blob))
        with self.assertLogs("mlc_keras", "WARNING") as logs:
          self.assertEqual(backup_lib.backup_epoch(backup), 2)
        self.assertIn(path, logs.output[0])
        self.assertAllSame(reference, self.fit(backup))
        shutil.rmtree(backup, ignore_errors=True)

  def test_history_keeps_one_row_per_epoch_after_a_fallback(self):
    # Checked to fail without history_csv (rows [0, 1, 2, 2, 3]): the
    # fallback re-runs epoch 2, already logged. Seen first on the CLI test.
    backup = os.path.join(self.get_temp_dir(), "backup")
    history = os.path.join(self.get_temp_dir(), "history.csv")
    self.assertIsNone(self.fit(backup, interrupt=(3, 0), history=history))
    with open(os.path.join(backup, backup_lib.BACKUP_STATE), "r+b") as f:
      f.truncate(100)
    self.fit(backup, history=history)
    with open(history) as f:
      self.assertEqual([int(r["epoch"]) for r in csv.DictReader(f)],
                       [0, 1, 2, 3])

  def test_torn_save_is_detected(self):
    # A kill between the two renames of a save leaves new weights beside the
    # old metadata. Checked to fail without the token comparison in
    # _check_pair (epoch 3 is returned, with epoch-4 weights).
    backup = self._interrupted_backup()
    newer = os.path.join(self.get_temp_dir(), "newer")
    self.assertIsNone(self.fit(newer, interrupt=(3, 1), save_freq=1))
    shutil.copyfile(os.path.join(newer, backup_lib.BACKUP_STATE),
                    os.path.join(backup, backup_lib.BACKUP_STATE))
    with self.assertLogs("mlc_keras", "WARNING") as logs:
      self.assertEqual(backup_lib.backup_epoch(backup), 2)
    self.assertIn("different saves", logs.output[0])

  def test_both_backups_corrupt_is_a_clear_error(self):
    # Checked to fail with check_backup returning {} when nothing is usable
    # (a silent restart from epoch 0).
    backup = self._interrupted_backup()
    for name in (backup_lib.BACKUP_STATE, backup_lib.BACKUP_STATE + ".bkp"):
      with open(os.path.join(backup, name), "r+b") as f:
        f.truncate(100)
    with self.assertRaisesRegex(
        backup_lib.BackupError,
        r"latest\.state\.npz is unreadable.*latest\.state\.npz\.bkp is "
        r"unreadable.*Delete .*backup to start the run over"):
      backup_lib.backup_epoch(backup)

  def test_backup_of_another_model_is_a_clear_error(self):
    # A re-run with a flag that changes the model (or the optimizer) must
    # not load a state whose variables do not match. Checked to fail with the
    # comparison in _load_state removed (assign raises an obscure shape
    # error, or zip() loads part of a state silently).
    backup = self._interrupted_backup()
    wider = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(5, name="dense"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(2, name="out")])
    wider.compile(keras.optimizers.Adam(0.01), "mse")
    callback = backup_lib.ResumableBackup(backup)
    callback.set_model(wider)
    with self.assertRaisesRegex(
        backup_lib.BackupError,
        r"latest\.state\.npz was written by another model or optimizer.*"
        r"Resume with the flags of the interrupted run"):
      callback.on_train_begin()
    other_optimizer = _tiny_model()
    other_optimizer.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    callback = backup_lib.ResumableBackup(backup)
    callback.set_model(other_optimizer)
    with self.assertRaisesRegex(backup_lib.BackupError,
                                # Optimizer names are numbered per process
                                # (adam_7/...) like layer names.
                                r"adam\S*/\S+ \(4, 3\) float32 in the "
                                r"backup, sgd\S*/\S+ \(3,\) float32 in the "
                                r"model"):
      callback.on_train_begin()

  def test_keras_format_backup_is_refused_not_ignored(self):
    # A backup folder in Keras' own format (written by an earlier version of
    # this package) must not read as "no backup": that would silently
    # restart from epoch 0. Checked to fail without the legacy check in
    # check_backup (the error then says only that latest.state.npz is
    # missing).
    backup = os.path.join(self.get_temp_dir(), "legacy")
    model = _tiny_model()
    callback = keras.callbacks.BackupAndRestore(backup)
    callback.set_model(model)
    callback._save_model()  # pylint: disable=protected-access
    with self.assertRaisesRegex(backup_lib.BackupError,
                                r"latest\.weights\.h5 is a backup in Keras' "
                                r"own format.*delete .*legacy"):
      backup_lib.backup_epoch(backup)

  def test_state_holds_every_model_and_optimizer_variable(self):
    backup = self._interrupted_backup()
    token, paths, arrays = backup_lib.read_state(
        os.path.join(backup, backup_lib.BACKUP_STATE))
    model = _tiny_model()
    model.optimizer.build(model.trainable_variables)
    expected = model.variables + model.optimizer.variables
    # Layer names are numbered per process (sequential_3/...): compare the
    # paths without the numbers.
    self.assertEqual([re.sub(r"\d+", "", p) for p in paths],
                     [re.sub(r"\d+", "", v.path) for v in expected])
    self.assertEqual([a.shape for a in arrays],
                     [tuple(v.shape) for v in expected])
    # The token is the one in the metadata of the same save.
    with open(os.path.join(backup, "training_metadata.json")) as f:
      self.assertEqual(token, json.load(f)["token"])
    # 3 epochs x 5 steps were done before the interrupt in epoch 3.
    self.assertEqual(int(arrays[len(model.variables)]), 15)
    self.assertTrue(paths[len(model.variables)].endswith("iteration"),
                    paths[len(model.variables)])

  def test_no_backup_starts_at_zero(self):
    self.assertEqual(backup_lib.check_backup(
        os.path.join(self.get_temp_dir(), "none")), {})


if __name__ == "__main__":
  tf.test.main()
