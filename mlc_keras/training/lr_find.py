"""The learning-rate range test (Smith 2017, "Cyclical learning rates for
training neural networks", section 3.3; fastai's lr_find, Lightning's
tuner): a few hundred steps of the configured model, data and optimizer with
the learning rate rising exponentially from ``start`` to ``end``, the loss
of each step recorded. The loss falls once the rate is large enough to
learn and blows up once it is too large; the suggestion is the rate at the
lowest smoothed loss divided by 10 (fastai's "lr_min"), safely on the
falling side. The curve is smoothed forwards and backwards (no lag); the
stop on divergence uses the causal average.

Writes ``lr_find.csv`` (step, learning rate, loss, smoothed loss) and
``lr_find.png`` (the curve on a log axis, the suggestion marked) to the
output folder. Nothing of a training run is written there: the run folder
the user trains in afterwards stays untouched.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import tempfile

import keras
import numpy as np

from mlc_keras.core import config as config_lib
from mlc_keras.data import augment
from mlc_keras.data import pipeline
from mlc_keras.training import setup

log = logging.getLogger("mlc_keras")

FOLDER = "lr_find"
# Exponential smoothing of the per-step loss (bias-corrected, as fastai) for
# the stop on divergence.
SMOOTHING = 0.98
# The test stops once the smoothed loss exceeds this multiple of its best.
DIVERGED = 4.0


@dataclasses.dataclass(frozen=True)
class Result:
  learning_rates: list
  losses: list
  smoothed: list
  suggestion: float
  # The rate at the lowest smoothed loss.
  at_minimum: float
  csv_path: str
  png_path: str


def schedule(start: float, end: float, steps: int) -> np.ndarray:
  """The rate of each step: exponential from ``start`` to ``end``."""
  return start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses, beta: float = SMOOTHING) -> list:
  """Bias-corrected exponential moving average of ``losses``."""
  out, avg = [], 0.0
  for i, loss in enumerate(losses, 1):
    avg = beta * avg + (1 - beta) * loss
    out.append(avg / (1 - beta ** i))
  return out


def smooth_centered(losses, window: int = 0) -> list:
  """The mean of each step's centred window (``window`` steps, odd; 0: a
  twentieth of the curve, at least 3), shrunk at the ends: no lag, so the
  lowest point sits at the rate where the loss was lowest (a causal average
  of 100 steps at 0.98 lags ~50 steps, over a decade of rates), and the
  blown-up losses at the end reach only their neighbours."""
  x = np.asarray(losses, np.float64)
  window = window or max(3, len(x) // 20)
  half = window // 2
  return [float(np.mean(x[max(0, i - half):i + half + 1]))
          for i in range(len(x))]


def suggest(learning_rates, smoothed) -> tuple[float, float]:
  """(suggestion, rate at the lowest smoothed loss): the suggestion is a
  tenth of the latter. The first tenth of the steps is skipped when looking
  for the minimum (the average is still warming up there)."""
  skip = len(smoothed) // 10
  finite = [(s, lr) for s, lr in zip(smoothed[skip:], learning_rates[skip:])
            if math.isfinite(s)]
  if not finite:
    raise ValueError("the learning-rate range test recorded no finite loss")
  at_min = min(finite)[1]
  return at_min / 10, at_min


class _RangeTest(keras.callbacks.Callback):
  """Sets each step's rate, records its loss (metrics reset before each
  step, so the logged loss is that step's), stops on divergence."""

  def __init__(self, rates):
    super().__init__()
    self.rates = rates
    self.losses = []
    self.best = math.inf

  def on_train_batch_begin(self, batch, logs=None):
    self.model.reset_metrics()
    self.model.optimizer.learning_rate = float(
        self.rates[min(batch, len(self.rates) - 1)])

  def on_train_batch_end(self, batch, logs=None):
    if batch >= len(self.rates):
      return
    loss = float(logs["loss"])
    self.losses.append(loss)
    avg = smooth(self.losses)[-1]
    self.best = min(self.best, avg)
    if not math.isfinite(loss) or avg > DIVERGED * self.best:
      self.model.stop_training = True


def range_test(cfg: config_lib.Config, out_dir: str, steps: int = 100,
               start: float = 1e-6, end: float = 1.0,
               build_model=setup.build_model) -> Result:
  """Runs the test for ``cfg`` (its data, model, optimizer, augmentation and
  factor heads; the learning rate and schedule are the test's) and writes
  its CSV and PNG to ``out_dir``. ``build_model(cfg, schema)``: the model
  (tests pass a small one)."""
  tc, dc = cfg.train, cfg.data
  keras.utils.set_random_seed(tc.seed)
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="mlc_lr_find_") as scratch:
    run = setup.prepare_run(cfg, scratch)
  model = build_model(cfg, run.schema)
  epochs = -(-steps // run.steps_per_epoch)
  train_ds = pipeline.train_dataset(
      run.bundle.train, run.schema, image_size=dc.image_size,
      batch_size=tc.batch_size, seed=tc.seed, end_epoch=epochs,
      steps_per_epoch=run.steps_per_epoch, augmentations=dc.augment,
      cache=dc.cache, crop_scale=dc.crop_scale, crop_ratio=dc.crop_ratio,
      shuffle_buffer=dc.shuffle_buffer, class_weights=run.class_weights,
      recipe=augment.Recipe.of(dc), factor_priors=run.factor_priors
  ).take(steps)
  if tc.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(start, momentum=0.9, nesterov=True)
  else:
    optimizer = keras.optimizers.AdamW(start, weight_decay=tc.weight_decay)
  setup.compile_model(model, run.schema, optimizer, tc.top_k,
                      label_smoothing=run.label_smoothing,
                      soft=augment.Recipe.of(dc).mixes
                      or bool(run.factor_priors))
  rates = schedule(start, end, steps)
  test = _RangeTest(rates)
  model.fit(train_ds, epochs=1, steps_per_epoch=steps, callbacks=[test],
            verbose=0)
  losses = test.losses
  lrs = [float(r) for r in rates[:len(losses)]]
  smoothed = smooth_centered(losses)
  suggestion, at_min = suggest(lrs, smoothed)
  csv_path = os.path.join(out_dir, "lr_find.csv")
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
    for i, row in enumerate(zip(lrs, losses, smoothed)):
      w.writerow([i, *(f"{v:.6g}" for v in row)])
  png_path = os.path.join(out_dir, "lr_find.png")
  _plot(lrs, losses, smoothed, suggestion, png_path)
  return Result(lrs, losses, smoothed, suggestion, at_min, csv_path, png_path)


def _plot(lrs, losses, smoothed, suggestion, path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  ax.plot(lrs, losses, color="0.75", linewidth=1, label="loss per step")
  ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed")
  ax.axvline(suggestion, color="C3", linestyle="--",
             label=f"suggested {suggestion:.2g}")
  finite = [s for s in smoothed if math.isfinite(s)]
  if finite:
    low, first = min(finite), finite[0]
    ax.set_ylim(low - 0.1 * abs(first - low), first + 0.5 * abs(first - low)
                + 1e-6)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("training loss (sum over heads)")
  ax.set_title("Learning-rate range test")
  ax.legend(loc="upper left", frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
