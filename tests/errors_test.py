"""One parent for the user's mistakes (mlc_keras/core/errors.py): every such error
is an MlcError; the library names settings by their config field, the
command lines by their flag; a bug is not turned into a user's mistake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

import mlc_keras
from mlc_keras.cli import help as cli_help
from mlc_keras.core import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_error_classes() -> dict:
  """{name: class} of every error that stands for a user's mistake."""
  # pylint: disable=g-import-not-at-top
  from mlc_keras.core import heads
  from mlc_keras.exporters import artefacts
  from mlc_keras.labeling import compose
  from mlc_keras.runs import folder as run_dir
  from mlc_keras.runs import lock as run_lock
  from mlc_keras.runs import preflight
  from mlc_keras.data import combinations, folders, headers, manifest
  from mlc_keras.exporters import parity
  from mlc_keras.modeling import grow
  from mlc_keras.training import backup, selection, setup
  return {
      "FlagError": preflight.FlagError,
      "SettingError": errors.SettingError,
      "SchemaError": heads.SchemaError,
      "DataError": manifest.DataError,
      "RunDirError": run_dir.RunDirError,
      "RunFinished": run_dir.RunFinished,
      "CombinationError": combinations.CombinationError,
      "FolderError": folders.FolderError,
      "HeaderError": headers.HeaderError,
      "ClassTableError": compose.ClassTableError,
      "GrowError": grow.GrowError,
      "MonitorError": selection.MonitorError,
      "BackupError": backup.BackupError,
      "ExportError": artefacts.ExportError,
      "ParityError": parity.ParityError,
      "LockedError": run_lock.LockedError,
      "ModelError": setup.ModelError,
  }


def run_python(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MLC_QUIET="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


class MlcErrorTest(absltest.TestCase):

  def test_every_user_error_is_an_mlc_error(self):
    for name, cls in user_error_classes().items():
      with self.subTest(name):
        self.assertTrue(issubclass(cls, errors.MlcError), name)
        # Code that caught ValueError before still catches it.
        self.assertTrue(issubclass(cls, ValueError), name)

  def test_kept_bases(self):
    # pylint: disable=g-import-not-at-top
    from mlc_keras.runs import lock as run_lock
    from mlc_keras.data import manifest
    from mlc_keras.training import backup
    self.assertTrue(issubclass(run_lock.LockedError, RuntimeError))
    self.assertTrue(issubclass(backup.BackupError, manifest.DataError))

  def test_a_nan_loss_is_not_a_mistake_in_what_was_given(self):
    # Its own exit code (3) and a hint to resume: not the generic exit 2.
    from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
    self.assertFalse(issubclass(setup.NonFiniteLossError, errors.MlcError))

  def test_public_name(self):
    self.assertIs(mlc_keras.MlcError, errors.MlcError)
    self.assertIn("MlcError", mlc_keras.__all__)

  def test_settings_are_fields_in_python_and_flags_on_the_command_line(self):
    e = errors.SettingError("`jit_compile`=True: needs `weight_decay` and "
                            "`image_size`; `x y` and `Name` stay")
    self.assertEqual(str(e), "jit_compile=True: needs weight_decay and "
                     "image_size; `x y` and `Name` stay")
    self.assertEqual(e.fields, ("jit_compile", "weight_decay", "image_size"))
    self.assertEqual(
        e.render(cli_help.flag_name),
        "--xla=True: needs --preset (weight_decay) and --image_size; "
        "`x y` and `Name` stay")


class MessagesTest(absltest.TestCase):

  def _tmp(self) -> str:
    path = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  def test_python_caller_reads_the_field(self):
    from mlc_keras.runs import preflight  # pylint: disable=g-import-not-at-top
    cfg = mlc_keras.make_config("tiny", image_size=16)
    with self.assertRaises(mlc_keras.MlcError) as e:
      preflight.check(cfg)
    self.assertEqual(str(e.exception), "image_size=16: must be >= 32 and <= 4096")
    self.assertNotIn("--", str(e.exception))
    self.assertEqual(e.exception.fields, ("image_size",))

  def test_fit_raises_it_before_anything_is_written(self):
    model_dir = os.path.join(self._tmp(), "run")
    with self.assertRaisesRegex(mlc_keras.MlcError, "^image_size=16: "):
      mlc_keras.fit(model_dir, image_size=16)
    self.assertFalse(os.path.exists(os.path.join(model_dir, "config.json")))

  def test_train_cli_says_the_flag_in_one_line(self):
    model_dir = os.path.join(self._tmp(), "run")
    proc = run_python("-m", "mlc_keras.train", "--image_size=16",
                      f"--model_dir={model_dir}")
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertEqual(proc.stderr.strip().splitlines(),
                     ["error: --image_size=16: must be >= 32 and <= 4096"])
    self.assertNotIn("Traceback", proc.stderr)

  def test_a_bug_is_not_a_user_mistake(self):
    # A plain ValueError from inside the library (a programming error) keeps
    # its traceback and exit 1, instead of "error: ..." and exit 2.
    code = ("import sys\n"
            "from mlc_keras import train\n"
            "from mlc_keras.runs import preflight\n"
            "def broken(*args, **kwargs):\n"
            "  raise ValueError('a bug, not a setting')\n"
            "preflight.check = broken\n"
            "sys.argv = ['train', '--model_dir=' + sys.argv[1]]\n"
            "train.run()\n")
    model_dir = os.path.join(self._tmp(), "run")
    proc = run_python("-c", code, model_dir)
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    self.assertIn("Traceback", proc.stderr)
    self.assertIn("ValueError: a bug, not a setting", proc.stderr)
    self.assertNotIn("error: a bug", proc.stderr)


if __name__ == "__main__":
  absltest.main()
