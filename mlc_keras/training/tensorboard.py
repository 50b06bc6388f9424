"""TensorBoard logs grouped by head, with the run's settings as HParams.

Keras' own TensorBoard callback writes every epoch log under one flat list
(``epoch_shape_acc``, ``epoch_colour_loss``, ...), which for a many-head
model is a long alphabetical wall. HeadTensorBoard writes, per epoch:

  <log_dir>/train/       <head>/<metric> (``shape/acc``, ``shape/loss``,
                         ``shape/balanced_acc``, ``shape/top5``) and
                         overall/loss, overall/mean_balanced_accuracy,
                         overall/learning_rate
  <log_dir>/validation/  the same tags for the val_ logs, so TensorBoard
                         draws train and validation in one chart per tag

and once, when training begins, an HParams session in <log_dir> holding the
run's config flattened to ``section.field`` scalars (``train.lr``,
``data.image_size``). The HParams dashboard shows each scalar tag's last
value beside them, so the final metrics of several runs compare side by
side under ``tensorboard --logdir <folder of runs>``. Steps are epochs
completed (1 for the first), as curves.png counts them.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

OVERALL = "overall"
TRAIN, VALIDATION = "train", "validation"
# Epoch logs about the whole model, not one head.
_OVERALL_NAMES = ("loss", "mean_balanced_accuracy", "learning_rate")
_SCALARS = (bool, str, int, float)


def scalar_tag(name: str, heads: Sequence[str]) -> tuple[str, str]:
  """An epoch log name -> (run, tag): ``val_shape_acc`` -> ("validation",
  "shape/acc"), ``loss`` -> ("train", "overall/loss"). The longest head
  that prefixes the name owns it; a name owned by no head goes under
  overall/."""
  run = TRAIN
  if name.startswith("val_"):
    run, name = VALIDATION, name[len("val_"):]
  if name not in _OVERALL_NAMES:
    for head in sorted(heads, key=len, reverse=True):
      if name.startswith(head + "_"):
        return run, f"{head}/{name[len(head) + 1:]}"
  return run, f"{OVERALL}/{name}"


def flatten_config(config: Mapping, prefix: str = "") -> dict:
  """A nested config dict (Config.to_dict()) -> {"section.field": value}
  with the values HParams takes: bools, numbers and strings as they are,
  a tuple of scalars (or of pairs) joined by ", " (and ":"). Unset settings (None) and
  anything else are left out: HParams has no null, and a placeholder
  string would clash with the number the same field holds in another run."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, str, int, float, np.generic)):
      flat[name] = value.item() if isinstance(value, np.generic) else value
    elif isinstance(value, (list, tuple)):
      text = _joined(value)
      if text is not None:
        flat[name] = text
  return flat


def _joined(values) -> Optional[str]:
  """("flip", "crop") -> "flip, crop"; (("shape", 2.0),) -> "shape:2.0";
  None when an item is neither a scalar nor a tuple of scalars."""
  items = []
  for v in values:
    if isinstance(v, _SCALARS):
      items.append(str(v))
    elif isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS)
                                              for x in v):
      items.append(":".join(str(x) for x in v))
    else:
      return None
  return ", ".join(items)


class HeadTensorBoard(keras.callbacks.Callback):
  """Writes the epoch logs as ``<head>/<metric>`` scalars in train/ and
  validation/ runs under ``log_dir`` and the run's settings as an HParams
  session (see the module docstring).

  Args:
    log_dir: the folder TensorBoard reads (created when missing).
    heads: the model's head names (LabelSchema.names).
    config: the run's config as a dict (Config.to_dict()), or the path of a
      config.json read when training begins (it is written before), or None
      for no HParams.

  Place it after the callbacks that add to the logs (selection's
  MeanOverHeads): they share the logs dict. One instance may serve several
  fit() calls (the fine-tuning phases); the HParams session is written once.
  """

  def __init__(self, log_dir: str, heads: Sequence[str],
               config: Union[Mapping, str, None] = None):
    super().__init__()
    self.log_dir = log_dir
    self.heads = tuple(heads)
    self.config = config
    self._writers = {}
    self._hparams_written = False

  def _writer(self, run: str):
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(
          os.path.join(self.log_dir, run) if run else self.log_dir)
    return self._writers[run]

  def _settings(self) -> Optional[dict]:
    config = self.config
    if isinstance(config, str):
      if not os.path.exists(config):
        return None
      with open(config, encoding="utf-8") as f:
        config = json.load(f)
    return None if config is None else flatten_config(config)

  def on_train_begin(self, logs=None):
    settings = None if self._hparams_written else self._settings()
    if settings:
      # Imported here: the hparams plugin comes with the tensorboard
      # package, which only this callback needs.
      from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
      with self._writer("").as_default():
        hp.hparams(settings)
      self._writer("").flush()
      self._hparams_written = True

  def on_epoch_end(self, epoch, logs=None):
    logs = dict(logs or {})
    if "learning_rate" not in logs:
      rate = self._learning_rate()
      if rate is not None:
        logs["learning_rate"] = rate
    by_run = {}
    for name, value in logs.items():
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      run, tag = scalar_tag(name, self.heads)
      by_run.setdefault(run, []).append((tag, value))
    for run, scalars in by_run.items():
      writer = self._writer(run)
      with writer.as_default():
        for tag, value in scalars:
          tf.summary.scalar(tag, value, step=epoch + 1)
      writer.flush()

  def on_train_end(self, logs=None):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}

  def _learning_rate(self) -> Optional[float]:
    optimizer = getattr(self.model, "optimizer", None)
    # A mixed-precision run wraps its optimizer in a LossScaleOptimizer.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    try:
      return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
      return None
