"""train_and_evaluate(config, model_dir): the library under the train CLI.

Artefacts written to model_dir:
  model.keras        the final model (what export and predict read)
  best.keras         the best epoch by the mean balanced accuracy over heads
                     on validation data (training data without it), or by
                     --monitor (training/selection.py)
  labels.json        the schema: head names and class order
  config.json        the config of the run
  results.json       per-head labelled count, accuracy, mA (+ AP/AUC) and
                     the across-head numbers on validation data
  history.csv        per-epoch losses and metrics
  tensorboard/       TensorBoard logs
  backup/            BackupAndRestore state while a run is unfinished
"""

from __future__ import annotations

from mlc_keras import config as config_lib
from mlc_keras.training import distributed
from mlc_keras.training import fit


def train_and_evaluate(cfg: config_lib.Config, model_dir: str,
                       verbose: int = 1) -> dict:
  """Trains the multi-head model described by ``cfg`` and writes its
  artefacts to ``model_dir`` (see the module docstring).

  Re-running with the same model_dir resumes an interrupted run from its
  last backup. Returns the results dict also written to results.json.
  ``verbose``: Keras fit's progress output (2: one line per epoch). Raises
  training.setup.NonFiniteLossError when the loss turns NaN or Inf.
  """
  if cfg.train.strategy in ("mirrored", "multi_worker"):
    # fit fails under MultiWorkerMirroredStrategy (keras#20585) and averages
    # per-replica masked means: these run a custom step.
    return distributed.train_and_evaluate(cfg, model_dir)
  return fit.train_and_evaluate(cfg, model_dir, verbose=verbose)
