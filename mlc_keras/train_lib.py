"""train_and_evaluate(config, model_dir): the library under the train CLI.

Artefacts written to model_dir:
  model.keras        the final model (what export and predict read)
  best.keras         the best epoch by validation loss (training loss without
                     validation data)
  labels.json        the schema: head names and class order
  config.json        the config of the run (absolute paths)
  results.json       per-head labelled count and accuracy on validation data
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
from typing import Optional

from mlc_keras import config as config_lib
from mlc_keras import preflight
from mlc_keras import run_dir
from mlc_keras import run_lock


def train_and_evaluate(cfg: config_lib.Config, model_dir: str,
                       verbose: int = 1, overwrite: bool = False,
                       tf_config: Optional[str] = None,
                       keras_home: Optional[str] = None) -> dict:
  """Trains the multi-head model described by ``cfg`` and writes its
  artefacts to ``model_dir`` (see the module docstring).

  Re-running with the same model_dir resumes an interrupted run from its
  last backup; ``overwrite`` starts it over instead, deleting the previous
  run's files. Returns the results dict also written to results.json.
  ``verbose``: Keras fit's progress output (2: one line per epoch).
  ``tf_config``, ``keras_home``: the TF_CONFIG and KERAS_HOME values (for
  --strategy=multi_worker and --weights=imagenet).

  Raises preflight.FlagError (a bad config value, named),
  run_lock.LockedError (another run owns model_dir), run_dir.RunFinished,
  run_dir.RunDirError (a resume with other settings), and
  training.setup.NonFiniteLossError when the loss turns NaN or Inf.
  """
  cfg = preflight.absolute_paths(cfg)
  plan = preflight.check(cfg, tf_config=tf_config, keras_home=keras_home)
  # Only the chief writes model_dir, so only it holds the lock (run_lock.py).
  owner = run_lock.RunLock(model_dir) if plan.chief else contextlib.nullcontext()
  with owner:
    run_dir.claim(model_dir, cfg.to_dict(), overwrite, chief=plan.chief)
    # Loaded only now: the checks above answer in milliseconds.
    from mlc_keras.training import distributed  # pylint: disable=g-import-not-at-top
    from mlc_keras.training import fit  # pylint: disable=g-import-not-at-top
    if cfg.train.strategy in ("mirrored", "multi_worker"):
      # fit fails under MultiWorkerMirroredStrategy (keras#20585) and averages
      # per-replica masked means: these run a custom step.
      return distributed.train_and_evaluate(cfg, model_dir)
    return fit.train_and_evaluate(cfg, model_dir, verbose=verbose)
