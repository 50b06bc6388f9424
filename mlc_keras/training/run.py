"""train_and_evaluate(config, model_dir): the library under the train CLI.

Artefacts written to model_dir:
  model.keras        the final model (what export and predict read)
  best.keras         the best epoch by the mean balanced accuracy over heads
                     on validation data (training data without it), or by
                     --monitor (training/selection.py)
  labels.json        the schema: head names and class order
  config.json        the config of the run (absolute paths)
  results.json       per-head labelled count, accuracy, mA (+ AP/AUC) and
                     the across-head numbers on validation data
  history.csv        per-epoch losses and metrics
  tensorboard/       TensorBoard logs
  backup/            BackupAndRestore state while a run is unfinished
  run.lock           held while the run trains (run_lock.py)

Before any data is read or TensorFlow is loaded, the config is checked
(preflight.py), the folder is locked and claimed (run_dir.claim): a finished
run is not retrained and a resume with flags that change what its backup
means is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Callable, Optional

from mlc_keras.core import config as config_lib
from mlc_keras.runs import preflight
from mlc_keras.runs import folder as run_dir
from mlc_keras.runs import lock as run_lock

log = logging.getLogger("mlc_keras")

# Under --quarantine, images that fail mid-training are set aside one by one
# (each costs a restart from the last backup); past this many the data needs
# a full check first.
MAX_SET_ASIDE = 20


def train_and_evaluate(cfg: config_lib.Config, model_dir: str,
                       verbose: int = 1, overwrite: bool = False,
                       tf_config: Optional[str] = None,
                       keras_home: Optional[str] = None,
                       build_model: Optional[Callable] = None) -> dict:
  """Trains the multi-head model described by ``cfg`` and writes its
  artefacts to ``model_dir`` (see the module docstring).

  Re-running with the same model_dir resumes an interrupted run from its
  last backup; ``overwrite`` starts it over instead, deleting the previous
  run's files. Returns the results dict also written to results.json.
  ``verbose``: Keras fit's progress output (2: one line per epoch).
  ``tf_config``, ``keras_home``: the TF_CONFIG and KERAS_HOME values (for
  --strategy=multi_worker and --weights=imagenet). ``build_model(schema,
  image_size)``: makes the model instead of cfg.model (a keras.Model taking
  uint8 images, one output per head named after it); called again when a
  run restarts, so it must build a fresh model each time.

  Raises preflight.FlagError (a bad config value, named),
  run_lock.LockedError (another run owns model_dir), run_dir.RunFinished,
  run_dir.RunDirError (a resume with other settings or another schema, a
  folder holding other files than a run's, one that cannot be written), and
  training.setup.NonFiniteLossError when the loss turns NaN or Inf.

  An image that fails to read or decode during training (deleted, changed
  or corrupt since the check) raises manifest.DataError naming its
  manifest line; under cfg.data.quarantine it is set aside instead (listed
  in quarantine.csv by the next check) and training resumes from its
  last backup.
  """
  cfg = preflight.absolute_paths(cfg)
  plan = preflight.check(cfg, tf_config=tf_config, keras_home=keras_home,
                         backend=keras_backend(keras_home))
  if plan.chief:
    try:
      run_dir.check_writable(model_dir)
    except run_dir.RunDirError:
      # A finished run read-only is still finished: the same command again
      # answers so (claim writes nothing), other ones hear why not.
      if not overwrite and os.path.isdir(model_dir):
        run_dir.claim(model_dir, cfg.to_dict())
      raise
  # Only the chief writes model_dir, so only it holds the lock (run_lock.py).
  owner = run_lock.RunLock(model_dir) if plan.chief else contextlib.nullcontext()
  with owner:
    run_dir.claim(model_dir, cfg.to_dict(), overwrite, chief=plan.chief)
    return _train_setting_aside(cfg, model_dir, verbose, build_model)


def keras_backend(keras_home: Optional[str] = None) -> str:
  """The backend Keras runs on, or will once imported: found as Keras finds
  it (KERAS_BACKEND, else "backend" in keras.json under ``keras_home`` or
  ~/.keras, else tensorflow) without importing keras, which under
  TensorFlow would load it before the checks."""
  if "keras" in sys.modules:
    return sys.modules["keras"].backend.backend()
  if os.environ.get("KERAS_BACKEND"):
    return os.environ["KERAS_BACKEND"]
  home = keras_home or os.path.join(os.path.expanduser("~"), ".keras")
  try:
    with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
      return str(json.load(f).get("backend", "tensorflow"))
  except (OSError, ValueError, AttributeError):
    return "tensorflow"


def _train_setting_aside(cfg: config_lib.Config, model_dir: str,
                         verbose: int, build_model=None) -> dict:
  """Trains; an image failing mid-run is named, or set aside and resumed."""
  # Loaded only now: the checks before answer in milliseconds.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import manifest  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
  set_aside = set()
  for attempt in range(MAX_SET_ASIDE + 1):
    try:
      return _train(cfg, model_dir, verbose, build_model)
    except tf.errors.OpError as e:
      problem = setup.failed_image(cfg, model_dir, e)
      if problem is None:
        raise
      where = f"{problem.origin}:{problem.line}: {problem.path}: {problem.reason}"
      if not cfg.data.quarantine:
        raise manifest.DataError(
            f"training stopped at an image that failed after the check:\n"
            f"  {where}\nFix or remove the row and re-run the same command "
            "to resume (or add --quarantine to set such rows aside)") from None
      row = (problem.origin, problem.line)
      if row in set_aside:
        # Setting it aside did not keep it out: another restart would fail
        # the same way, so each retry would only cost a restart, forever.
        raise manifest.DataError(
            f"training failed again at a row already set aside "
            f"(--quarantine):\n  {where}\nFix or remove the row and re-run "
            "the same command to resume") from None
      set_aside.add(row)
      if attempt == MAX_SET_ASIDE:
        raise manifest.DataError(
            f"{MAX_SET_ASIDE + 1} images failed during training, the last:\n"
            f"  {where}\nRun with --image_check=decode to find them all "
            "before training") from None
      log.warning("%s: set aside (--quarantine); resuming from the last "
                  "backup", where)
  raise AssertionError("unreachable")


def _train(cfg: config_lib.Config, model_dir: str, verbose: int,
           build_model=None) -> dict:
  from mlc_keras.training import distributed  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import fit  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
  if cfg.train.strategy in ("mirrored", "multi_worker") and (
      not setup.jax_data_parallel(cfg.train.strategy)):
    # fit fails under MultiWorkerMirroredStrategy (keras#20585) and averages
    # per-replica masked means: these run a custom step. On JAX, mirrored
    # is fit over keras.distribution, one program over the global batch.
    return distributed.train_and_evaluate(cfg, model_dir, build_model)
  return fit.train_and_evaluate(cfg, model_dir, verbose=verbose,
                                build_model=build_model)
