"""Per-head temperature scaling (Guo et al. 2017), fitted on validation data.

A head's softmax output p becomes softmax(log p / T): T > 1 softens an
over-confident head, T < 1 sharpens an under-confident one; the argmax (and so
accuracy) never changes. T is chosen per head to minimise the negative
log-likelihood of the labelled validation samples, and is stored in the model
as a ``Temperature`` layer after the head (modeling/layers.py), so Keras and
every export apply it.

Calibrated stacking (fit_stacking) is the same idea for composed classes: a
bias subtracted from the scores of the classes seen in training, fitted on
validation rows of other unseen classes than the test's, and carried by the
``ComposeClasses`` layer of the "class" output.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mlc_keras.evaluation import scoring

EPS = 1e-7
# Search range of 1/T; NLL is convex in 1/T, so a golden-section search over
# it finds the minimum.
_BETA_RANGE = (0.02, 50.0)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(log p / T) over the last axis (numpy)."""
  z = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0)) / temperature
  z -= z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of ``labels`` under ``probs`` [N, k]."""
  p = np.clip(np.asarray(probs, np.float64)[np.arange(len(labels)), labels],
              EPS, 1.0)
  return float(-np.mean(np.log(p)))


def fit_temperature(probs: np.ndarray, labels: np.ndarray,
                    iterations: int = 100) -> float:
  """The T minimising the NLL of ``labels`` [N] under scale(probs [N, k], T).

  Returns 1.0 when there are no labelled samples.
  """
  labels = np.asarray(labels)
  if labels.size == 0:
    return 1.0
  lo, hi = math.log(_BETA_RANGE[0]), math.log(_BETA_RANGE[1])
  g = (math.sqrt(5) - 1) / 2

  def f(log_beta):
    return nll(scale(probs, 1.0 / math.exp(log_beta)), labels)

  # Golden-section search over log(1/T): convex in 1/T stays unimodal in its log.
  a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
  fa, fb = f(a), f(b)
  for _ in range(iterations):
    if fa < fb:
      hi, b, fb = b, a, fa
      a = lo + (1 - g) * (hi - lo)
      fa = f(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + g * (hi - lo)
      fb = f(b)
  t = float(1.0 / math.exp((lo + hi) / 2))
  # A flat NLL (e.g. uniform outputs) lets the search wander: never return a
  # temperature that fits worse than leaving the head alone.
  if f(math.log(1.0 / t)) > nll(probs, labels):
    return 1.0
  return t


def fit_temperatures(collected, schema) -> dict[str, float]:
  """{head: T} from metrics.collect() output, labelled samples only."""
  out = {}
  for h in schema.names:
    probs, y, m = collected[h]
    out[h] = fit_temperature(probs[m], y[m]) if m.any() else 1.0
  return out


# Calibrated stacking's gamma is searched among this many quantiles of the
# rows' flip points (where a row's best class turns from seen to unseen).
STACKING_CANDIDATES = 201


def fit_stacking(scores: np.ndarray, target: np.ndarray, seen: np.ndarray,
                 class_names: Sequence[str]) -> tuple[float, dict]:
  """Calibrated stacking's gamma (Chao et al., ECCV 2016): the bias on the
  seen classes' scores (compose.compose_scores) that maximises H on these
  rows, whose classes must include seen and unseen ones with rows. Among
  equal H the smallest |gamma| wins (0 when nothing beats no bias).
  Returns (gamma, {"before", "after": scoring.gzsl_scores}).

  Raises:
    ValueError: no row of a seen class or none of an unseen class.
  """
  seen = np.asarray(seen, bool)
  target = np.asarray(target, np.int64)
  present = np.bincount(target, minlength=len(seen)) > 0
  if not (present & seen).any() or not (present & ~seen).any():
    raise ValueError(
        "calibrated stacking needs rows of seen and of unseen classes to fit "
        f"on; these rows have {int((present & seen).sum())} seen and "
        f"{int((present & ~seen).sum())} unseen classes")
  # Row i's best seen class gives way to its best unseen one past gamma = d.
  d = scores[:, seen].max(axis=1) - scores[:, ~seen].max(axis=1)
  cuts = np.quantile(d, np.linspace(0, 1, STACKING_CANDIDATES))
  candidates = np.unique(np.concatenate([[0.0], cuts + 1e-6, cuts - 1e-6]))
  best, best_h = 0.0, -1.0
  for gamma in sorted(candidates, key=abs):
    pred = (scores - gamma * seen[None, :]).argmax(axis=1)
    h = scoring.gzsl_scores(target, pred, seen, class_names)["harmonic"]
    if h > best_h + 1e-12:
      best, best_h = float(gamma), h
  before = scoring.gzsl_scores(target, scores.argmax(axis=1), seen, class_names)
  after = scoring.gzsl_scores(
      target, (scores - best * seen[None, :]).argmax(axis=1), seen, class_names)
  return best, {"before": before, "after": after}
