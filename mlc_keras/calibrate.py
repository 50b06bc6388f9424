"""Per-head temperature scaling (Guo et al. 2017), fitted on validation data.

A head's softmax output p becomes softmax(log p / T): T > 1 softens an
over-confident head, T < 1 sharpens an under-confident one; the argmax (and so
accuracy) never changes. T is chosen per head to minimise the negative
log-likelihood of the labelled validation samples, and is stored in the model
as a ``Temperature`` layer after the head (modeling/layers.py), so Keras and
every export apply it.
"""

from __future__ import annotations

import math
import numpy as np

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
