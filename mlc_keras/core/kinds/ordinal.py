"""The ordinal head: one class per image from classes with an order (an age
band child < teen < adult, a quality low < mid < high), the order being the
one the heads file declares (never sorted).

The model is the proportional-odds, or cumulative-logit, model (McCullagh
1980, "Regression models for ordinal data"): one scalar score f = w.x per
image and K - 1 ordered thresholds t_1 < ... < t_{K-1},

  P(y <= k) = sigmoid(t_k - f),   P(y = k) = P(y <= k) - P(y <= k - 1),

so a higher score moves probability to higher classes, the same way at
every cut. The thresholds are kept ordered by construction,
t = t_1 + [0, cumsum(softplus(d))]; they depend on the weights alone, so
an export folds them into constants and the graph a converter sees is a
matmul, a sigmoid, slices and subtractions (built-in TFLite and ONNX ops).

Its output is still K class probabilities named after the head, so
everything downstream of the output is the softmax head's: the masked
sparse cross-entropy on those probabilities, argmax decisions, the predict
JSON, the SavedModel's <head>_class / <head>_score, confusion matrices,
temperature scaling. What it adds is its layer and one number, the mean
absolute error in ranks (|predicted class - true class| in positions of
the declared order), compiled as "<head>_mae" and reported as "mae".
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core.kinds import softmax

LAYER = "CumulativeLogits"
METRIC = "RankError"
# softplus(_GAP_INIT) = 1: the thresholds start one logit apart.
_GAP_INIT = math.log(math.e - 1.0)


def keras_classes() -> dict:
  """{registered name: class} of the ordinal layer and metric, defined on
  first use so that importing this module does not import Keras."""
  return {f"mlc_keras>{LAYER}": _layer_class(),
          f"mlc_keras>{METRIC}": _metric_class()}


@functools.lru_cache(maxsize=None)
def _layer_class():
  import keras  # pylint: disable=g-import-not-at-top

  @keras.saving.register_keras_serializable(package="mlc_keras", name=LAYER)
  class CumulativeLogits(keras.layers.Layer):
    """Features [batch, d] -> [batch, num_classes] class probabilities of
    the cumulative-logit model (see the module docstring).

    Args:
      num_classes: K >= 2, the ordered classes.
    """

    def __init__(self, num_classes: int, **kwargs):
      super().__init__(**kwargs)
      if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
      self.num_classes = int(num_classes)

    def build(self, input_shape):
      k = self.num_classes
      self.kernel = self.add_weight(
          name="kernel", shape=(int(input_shape[-1]), 1),
          initializer="glorot_uniform")
      # Centred on 0, one logit apart.
      self.first = self.add_weight(
          name="first_threshold", shape=(1,),
          initializer=keras.initializers.Constant(-(k - 2) / 2.0))
      self.gaps = (self.add_weight(
          name="gaps", shape=(k - 2,),
          initializer=keras.initializers.Constant(_GAP_INIT))
                   if k > 2 else None)

    def thresholds(self):
      """The K - 1 thresholds, increasing whatever the weights."""
      ops = keras.ops
      if self.gaps is None:
        return self.first
      return ops.concatenate(
          [self.first, self.first + ops.cumsum(ops.softplus(self.gaps))])

    def call(self, x):
      ops = keras.ops
      score = ops.matmul(x, ops.cast(self.kernel, x.dtype))
      cdf = ops.sigmoid(ops.cast(self.thresholds(), x.dtype)[None, :] - score)
      # P(y = 0) = P(y <= 0); P(y = k) = P(y <= k) - P(y <= k - 1);
      # P(y = K - 1) = 1 - P(y <= K - 2).
      return ops.concatenate(
          [cdf[:, :1], cdf[:, 1:] - cdf[:, :-1], 1.0 - cdf[:, -1:]], axis=-1)

    def compute_output_shape(self, input_shape):
      return (*input_shape[:-1], self.num_classes)

    def get_config(self):
      config = super().get_config()
      config.update(num_classes=self.num_classes)
      return config

  return CumulativeLogits


@functools.lru_cache(maxsize=None)
def _metric_class():
  import keras  # pylint: disable=g-import-not-at-top

  @keras.saving.register_keras_serializable(package="mlc_keras", name=METRIC)
  class RankError(keras.metrics.Mean):
    """Mean |argmax class - true class| in ranks, weighted by sample_weight
    (masked samples add nothing); soft (mixed) targets count as their
    largest class."""

    def __init__(self, name: str = "mae", dtype=None):
      super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
      from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
      ops = keras.ops
      y = ops.reshape(ops.cast(metrics.hard_labels(y_true, y_pred), "float32"),
                      (-1,))
      pred = ops.cast(ops.argmax(y_pred, axis=-1), "float32")
      return super().update_state(ops.abs(pred - y),
                                  sample_weight=sample_weight)

    def get_config(self):
      return {"name": self.name, "dtype": self.dtype}

  return RankError


def rank_error(probs, labels) -> float:
  """Mean |argmax class - true class| over rows (numpy)."""
  pred = np.asarray(probs).argmax(axis=1)
  return float(np.mean(np.abs(pred - np.asarray(labels, np.int64))))


class OrdinalKind(softmax.SoftmaxKind):
  """See the module docstring."""

  name = "ordinal"
  noun = "ordinal head"
  description = ("class probabilities (ordinal: cumulative logits over the "
                 "classes in this order)")

  def check(self, spec) -> None:
    if len(spec.classes) < 2:
      raise errors.SchemaError(
          f"ordinal head {spec.name!r} needs at least 2 ordered classes, "
          f"got {list(spec.classes)}")
    super().check(spec)

  def output_layer(self, spec, **kwargs):
    return _layer_class()(
        spec.num_classes, name=spec.name, **kwargs)

  def copy_weights(self, parent_spec, spec, src, dst) -> None:
    # A threshold sits between two neighbouring classes: with a class
    # added, there is no threshold to copy for the new cut.
    if tuple(parent_spec.classes) != tuple(spec.classes):
      raise errors.SchemaError(
          f"ordinal head {spec.name!r}: its classes changed "
          f"({list(parent_spec.classes)} -> {list(spec.classes)}), so its "
          "thresholds cannot be copied; list it in `reinit_heads` or keep "
          "its classes")
    dst.set_weights(src.get_weights())

  def metrics(self, spec, top_k: int = 5, soft: bool = False) -> list:
    return [*super().metrics(spec, top_k, soft),
            _metric_class()(name="mae")]

  def log_names(self, spec, top_k: int) -> list[str]:
    return [*super().log_names(spec, top_k), f"{spec.name}_mae"]

  def keras_objects(self) -> dict:
    return dict(keras_classes())

  def table_row(self, spec, probs, y, top_k: int) -> dict:
    return {**super().table_row(spec, probs, y, top_k),
            "mae": rank_error(probs, y)}

  def report(self, spec, probs, labels, mask, top_k: int) -> dict:
    row = {**super().report(spec, probs, labels, mask, top_k),
           "kind": self.name}
    mask = np.asarray(mask, bool)
    if mask.any():
      row["mae"] = rank_error(np.asarray(probs)[mask],
                              np.asarray(labels)[mask])
    return row


KIND = OrdinalKind()
