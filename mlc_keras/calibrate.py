"""Per-head temperature scaling (Guo et al. 2017), fitted on validation data.

A head's softmax output p becomes softmax(log p / T): T > 1 softens an
over-confident head, T < 1 sharpens an under-confident one; the argmax (and so
accuracy) never changes. T is chosen per head to minimise the negative
log-likelihood of the labelled validation samples, and is stored in the model
as a ``Temperature`` layer after the head, so Keras and every export apply it.
"""

from __future__ import annotations

import math
from typing import Mapping

import keras
import numpy as np

_EPS = 1e-7
# Search range of 1/T; NLL is convex in 1/T, so a golden-section search over
# it finds the minimum.
_BETA_RANGE = (0.02, 50.0)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(log p / T) over the last axis (numpy)."""
  z = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / temperature
  z -= z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of ``labels`` under ``probs`` [N, k]."""
  p = np.clip(np.asarray(probs, np.float64)[np.arange(len(labels)), labels],
              _EPS, 1.0)
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


@keras.saving.register_keras_serializable(package="mlc_keras")
class Temperature(keras.layers.Layer):
  """Probabilities p -> softmax(log p / temperature).

  Args:
    temperature: a positive float.
  """

  def __init__(self, temperature: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    self.temperature = float(temperature)

  def call(self, probs):
    ops = keras.ops
    p = ops.clip(ops.cast(probs, "float32"), _EPS, 1.0)
    return ops.softmax(ops.log(p) / self.temperature, axis=-1)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(temperature=self.temperature)
    return config


def layer_name(head: str) -> str:
  return f"{head}_temperature"


def with_temperatures(model: keras.Model,
                      temperatures: Mapping[str, float]) -> keras.Model:
  """The same model (shared weights) with each named head's output passed
  through a Temperature layer; output keys are unchanged. Heads already
  scaled are re-scaled from their unscaled output, not stacked. Any other
  output (e.g. a composed "class" output) is kept as it is: re-apply
  compose.with_class_output to compose the calibrated heads."""
  from mlc_keras import compose  # pylint: disable=g-import-not-at-top
  outputs = compose.named_outputs(model)
  new = {}
  for name, tensor in outputs.items():
    if name not in temperatures:
      new[name] = tensor
      continue
    try:
      # Already calibrated: start again from the head's own softmax.
      tensor = model.get_layer(layer_name(name)).input
    except ValueError:
      pass
    new[name] = Temperature(temperatures[name], name=layer_name(name))(tensor)
  unknown = sorted(set(temperatures) - set(outputs))
  if unknown:
    raise ValueError(f"no output(s) {unknown} to calibrate "
                     f"(outputs: {', '.join(sorted(outputs))})")
  return keras.Model(model.inputs, new, name=model.name)


def temperatures_of(model: keras.Model) -> dict[str, float]:
  """{head: T} of the Temperature layers in ``model`` (empty if none)."""
  return {l.name[:-len("_temperature")]: l.temperature for l in model.layers
          if isinstance(l, Temperature)}
