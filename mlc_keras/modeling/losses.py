"""Per-head losses that ignore missing labels.

Missing labels arrive with sample weight 0 (see data/pipeline.py). The reduction
"mean_with_sample_weight" divides each head's summed loss by the weight
present in the batch, so a head labelled on 10% of a batch still gets a full
gradient from those labels, and a head with no labels in a batch adds exactly
0 (not NaN). Keras' default reduction would divide by the batch size instead.

A head with ``focal_gamma > 0`` (heads file or focal_loss) uses focal loss,
which scales each sample's cross-entropy by (1 - p_true)^gamma so that the
many easy examples of a large class weigh less than the hard ones.

Label smoothing (label_smoothing, per head) trains a head towards
(1 - s) on its class and s / k on each of its k classes instead of a one-hot
target (Szegedy et al. 2016, "Rethinking the Inception architecture"); a tag
head's 0/1 targets become s/2 and 1 - s/2 (Keras' binary form).
"""

from __future__ import annotations

import keras

from mlc_keras.core import errors

# Heads and schemas are core.heads' HeadSpec and LabelSchema, not imported:
# the head kinds (core/kinds), which core.heads imports, build these losses.


@keras.saving.register_keras_serializable("mlc_keras")
class SparseFocalCrossentropy(keras.losses.Loss):
  """Focal loss for integer labels over softmax probabilities, with optional
  label smoothing.

  Keras' categorical_focal_crossentropy on the one-hot labels, with alpha=1
  so that gamma=0 is exactly sparse categorical cross-entropy (the class
  balance is left to class_weight, which folds into sample_weight).
  Keras' sparse cross-entropy has no label smoothing, so a smoothed head
  with gamma=0 comes here too (categorical cross-entropy on the one-hot).
  ``soft``: y_true may be a [batch, k] target (MixUp / CutMix) or a
  factor head's [batch, 2k] one-hot target and log prior
  (modeling/factors.py); class indices are still taken (validation).
  """

  def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.0,
               soft: bool = False, reduction="mean_with_sample_weight",
               name="sparse_focal_crossentropy", dtype=None):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    self.gamma = float(gamma)
    self.label_smoothing = float(label_smoothing)
    self.soft = bool(soft)

  def call(self, y_true, y_pred):
    k = y_pred.shape[-1]
    if self.soft and len(y_true.shape) == len(y_pred.shape) and (
        y_true.shape[-1] == 2 * k):
      # A factor head in training: [one-hot | log prior], the prior added to
      # the logits (modeling/factors.py); softmax(log q + prior) is the
      # softmax of the adjusted logits.
      y_true = keras.ops.cast(y_true, y_pred.dtype)
      target, log_prior = y_true[..., :k], y_true[..., k:]
      y_pred = keras.ops.softmax(
          keras.ops.log(keras.ops.maximum(y_pred, 1e-7)) + log_prior)
    # Validation batches of a mixing run still hold class indices.
    elif self.soft and len(y_true.shape) == len(y_pred.shape) and (
        y_true.shape[-1] == k):
      target = keras.ops.cast(y_true, y_pred.dtype)
    else:
      y_true = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
      target = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1],
                                 dtype=y_pred.dtype)
    if self.gamma > 0:
      return keras.losses.categorical_focal_crossentropy(
          target, y_pred, alpha=1.0, gamma=self.gamma,
          label_smoothing=self.label_smoothing)
    return keras.losses.categorical_crossentropy(
        target, y_pred, label_smoothing=self.label_smoothing)

  def get_config(self):
    return {**super().get_config(), "gamma": self.gamma,
            "label_smoothing": self.label_smoothing, "soft": self.soft}


def head_loss(head: "HeadSpec", label_smoothing: float = 0.0,
              soft: bool = False) -> keras.losses.Loss:
  """The loss of one head, averaged over its labelled samples. A tag head's
  per-sample loss is the binary cross-entropy averaged over its tags (its
  focal form with focal_gamma > 0). ``label_smoothing``: see the module
  docstring; ``soft``: a single-label head's targets arrive as [batch, k]
  probabilities (mixed pairs) instead of class indices."""
  if not 0 <= label_smoothing < 1:
    raise errors.SettingError(f"`label_smoothing` for head {head.name!r} must be in "
                              f"[0, 1), got {label_smoothing}")
  return head.kind_impl.loss(head, label_smoothing, soft)


def smoothing_per_head(schema: "LabelSchema",
                       values) -> dict[str, float]:
  """((head, s), ...) as label_smoothing gives them ("*": every head)
  -> {head: s} over the schema's heads; an unknown head raises SchemaError
  naming it."""
  values = dict(values or ())
  every = values.pop("*", 0.0)
  for name in values:
    schema.head(name)
  return {h.name: float(values.get(h.name, every)) for h in schema.heads}


def head_losses(schema: "LabelSchema", label_smoothing=None,
                soft: bool = False) -> dict[str, keras.losses.Loss]:
  """One loss per head (see head_loss); ``label_smoothing``: {head: s}
  (heads left out: none)."""
  smooth = label_smoothing or {}
  return {h.name: head_loss(h, smooth.get(h.name, 0.0), soft)
          for h in schema.heads}


def loss_weights(schema: "LabelSchema") -> dict[str, float]:
  return {h.name: float(h.loss_weight) for h in schema.heads}
