"""Which epoch best.keras holds, and when training stops early.

The monitor is by default the mean over heads of each head's balanced
accuracy on the validation data (``val_mean_balanced_accuracy``; on the
training data when there is none), not the summed loss, which a many-class
head dominates. Each head's balanced accuracy is a streaming Keras metric
(modeling.metrics.BalancedAccuracy, masked through sample_weight); MeanOverHeads
adds their mean to the epoch's logs before ModelCheckpoint, EarlyStopping and
CSVLogger read them.

The best value so far and the epochs since it are read back from history.csv
before every fit() call (restore_from_history), so they carry over the
fine-tuning phases (one fit() each) and a resumed run (a new process):
Keras' callbacks would start from scratch in both cases, and a resumed run
would overwrite best.keras with its first epoch whatever it scored.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional

import keras
import numpy as np

from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import preflight
from mlc_keras.modeling import metrics
from mlc_keras.modeling import saving

MEAN_BALANCED_ACC = "mean_balanced_accuracy"


class MonitorError(preflight.FlagError):
  """monitor names a quantity the run does not log (the train CLI prints
  FlagErrors without a traceback)."""


def log_names(schema: heads_lib.LabelSchema, top_k: int) -> list[str]:
  """The training-side names the epoch logs carry (without "val_")."""
  names = ["loss", MEAN_BALANCED_ACC]
  for h in schema.heads:
    names += h.kind_impl.log_names(h, top_k)
  return names


def choose_monitor(monitor: Optional[str], schema: heads_lib.LabelSchema,
                   top_k: int, has_val: bool) -> tuple[str, str]:
  """(monitor, "min" or "max"): ``monitor`` (the monitor flag; None: the
  mean balanced accuracy, on validation data when there is some). Raises
  MonitorError naming the flag when it is not a quantity the logs carry."""
  if monitor is None:
    monitor = ("val_" if has_val else "") + MEAN_BALANCED_ACC
  names = log_names(schema, top_k)
  if has_val:
    names += [f"val_{n}" for n in names]
  if monitor not in names:
    why = (" (the run has no validation data)"
           if monitor.startswith("val_") and not has_val else "")
    raise MonitorError(f"`monitor`={monitor!r} is not a quantity this run logs"
                     f"{why}; choose one of {', '.join(names)}")
  return monitor, "min" if monitor.endswith("loss") else "max"


class MeanOverHeads(keras.callbacks.Callback):
  """Adds ``mean_balanced_accuracy`` (and ``val_...``) to the epoch logs: the
  mean of the heads' BalancedAccuracy results. Placed before the callbacks
  that read it (they share the logs dict)."""

  def __init__(self, schema: heads_lib.LabelSchema):
    super().__init__()
    self.names = [f"{h}_{metrics.BALANCED_ACC}" for h in schema.names]

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    for prefix in ("", "val_"):
      values = [logs[prefix + n] for n in self.names if prefix + n in logs]
      if values:
        logs[prefix + MEAN_BALANCED_ACC] = float(np.mean(values))


def history_state(history_csv: str, monitor: str, mode: str,
                  before_epoch: int) -> tuple[Optional[float], int]:
  """(best value of ``monitor`` over history.csv's epochs < before_epoch,
  epochs since it) or (None, 0) when no such row carries the column."""
  if not os.path.exists(history_csv):
    return None, 0
  with open(history_csv, newline="", encoding="utf-8") as f:
    rows = [r for r in csv.DictReader(f)
            if r.get("epoch") not in (None, "") and int(r["epoch"]) < before_epoch]
  values = []
  for r in sorted(rows, key=lambda r: int(r["epoch"])):
    try:
      values.append(float(r.get(monitor) or "nan"))
    except ValueError:
      values.append(float("nan"))
  finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
  if not finite:
    return None, 0
  sign = 1 if mode == "max" else -1
  # The earliest of equal values, as Keras' strict comparison keeps it.
  best, at = max(finite, key=lambda vi: (sign * vi[0], -vi[1]))
  return best, len(values) - 1 - at


class EarlyStopping(keras.callbacks.EarlyStopping):
  """Keras' EarlyStopping whose best value and patience count survive the
  next fit() call (fine-tuning phase, resumed run): see restore."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._carried = (None, 0)

  def restore(self, best: Optional[float], wait: int) -> None:
    self._carried = (best, wait)

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    self.best, self.wait = self._carried


def make_callbacks(schema: heads_lib.LabelSchema, monitor: str, mode: str,
                   best_path: str, patience: int) -> list:
  """[MeanOverHeads, ModelCheckpoint(best.keras), EarlyStopping if
  ``patience``], in the order they must run."""
  out = [MeanOverHeads(schema),
         # No optimizer state in best.keras (saving.InferenceCheckpoint).
         saving.InferenceCheckpoint(best_path, monitor=monitor, mode=mode,
                                    save_best_only=True)]
  if patience:
    out.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience,
                             verbose=1))
  return out


def restore_from_history(callbacks: list, history_csv: str,
                         before_epoch: int) -> None:
  """Sets the best value (and the patience count) of ``callbacks``'
  ModelCheckpoint / EarlyStopping from history.csv's epochs before
  ``before_epoch``; call it before each fit()."""
  for cb in callbacks:
    if isinstance(cb, (keras.callbacks.ModelCheckpoint, EarlyStopping)):
      best, wait = history_state(history_csv, cb.monitor, cb.mode,
                                 before_epoch)
      if isinstance(cb, EarlyStopping):
        cb.restore(best, wait)
      else:
        cb.best = best


def stopped_early(callbacks: list) -> Optional[int]:
  """The epoch an EarlyStopping among ``callbacks`` stopped at, or None
  (Keras stops at an epoch > 0 only)."""
  for cb in callbacks:
    if isinstance(cb, EarlyStopping) and cb.stopped_epoch:
      return cb.stopped_epoch
  return None
