"""Per-head losses that ignore missing labels.

Missing labels arrive with sample weight 0 (see data/pipeline.py). The reduction
"mean_with_sample_weight" divides each head's summed loss by the weight
present in the batch, so a head labelled on 10% of a batch still gets a full
gradient from those labels, and a head with no labels in a batch adds exactly
0 (not NaN). Keras' default reduction would divide by the batch size instead.

A head with ``focal_gamma > 0`` (heads file or --focal_loss) uses focal loss,
which scales each sample's cross-entropy by (1 - p_true)^gamma so that the
many easy examples of a large class weigh less than the hard ones.
"""

from __future__ import annotations

import keras

from mlc_keras import heads as heads_lib


@keras.saving.register_keras_serializable("mlc_keras")
class SparseFocalCrossentropy(keras.losses.Loss):
  """Focal loss for integer labels over softmax probabilities.

  Keras' categorical_focal_crossentropy on the one-hot labels, with alpha=1
  so that gamma=0 is exactly sparse categorical cross-entropy (the class
  balance is left to --class_weight, which folds into sample_weight).
  """

  def __init__(self, gamma: float = 2.0, reduction="mean_with_sample_weight",
               name="sparse_focal_crossentropy", dtype=None):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    self.gamma = float(gamma)

  def call(self, y_true, y_pred):
    y_true = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    one_hot = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1],
                                dtype=y_pred.dtype)
    return keras.losses.categorical_focal_crossentropy(
        one_hot, y_pred, alpha=1.0, gamma=self.gamma)

  def get_config(self):
    return {**super().get_config(), "gamma": self.gamma}


def head_loss(head: heads_lib.HeadSpec) -> keras.losses.Loss:
  """The loss of one head, averaged over its labelled samples. A tag head's
  per-sample loss is the binary cross-entropy averaged over its tags (its
  focal form with focal_gamma > 0)."""
  if head.is_tags:
    if head.focal_gamma > 0:
      return keras.losses.BinaryFocalCrossentropy(
          gamma=head.focal_gamma, reduction="mean_with_sample_weight",
          name=f"{head.name}_focal")
    return keras.losses.BinaryCrossentropy(
        reduction="mean_with_sample_weight", name=f"{head.name}_bce")
  if head.focal_gamma > 0:
    return SparseFocalCrossentropy(head.focal_gamma, name=f"{head.name}_focal")
  return keras.losses.SparseCategoricalCrossentropy(
      reduction="mean_with_sample_weight", name=f"{head.name}_xent")


def head_losses(schema: heads_lib.LabelSchema) -> dict[str, keras.losses.Loss]:
  """One loss per head (see head_loss)."""
  return {h.name: head_loss(h) for h in schema.heads}


def loss_weights(schema: heads_lib.LabelSchema) -> dict[str, float]:
  return {h.name: float(h.loss_weight) for h in schema.heads}
