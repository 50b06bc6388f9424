"""Per-head losses that ignore missing labels.

Missing labels arrive with sample weight 0 (see data.py). The reduction
"mean_with_sample_weight" divides each head's summed loss by the weight
present in the batch, so a head labelled on 10% of a batch still gets a full
gradient from those labels, and a head with no labels in a batch adds exactly
0 (not NaN). Keras' default reduction would divide by the batch size instead.
"""

from __future__ import annotations

import keras

from mlc_keras import heads as heads_lib


def head_losses(schema: heads_lib.LabelSchema) -> dict[str, keras.losses.Loss]:
  """One sparse cross-entropy per head, averaged over labelled samples."""
  return {
      h.name: keras.losses.SparseCategoricalCrossentropy(
          reduction="mean_with_sample_weight", name=f"{h.name}_xent")
      for h in schema.heads
  }


def loss_weights(schema: heads_lib.LabelSchema) -> dict[str, float]:
  return {h.name: float(h.loss_weight) for h in schema.heads}
