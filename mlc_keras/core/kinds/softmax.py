"""The softmax head: one class per image, a Dense softmax over the classes,
sparse cross-entropy (focal / smoothed / soft forms in modeling.losses),
accuracy, top-k and balanced accuracy, decided by argmax."""

from __future__ import annotations

import numpy as np

from mlc_keras.core.kinds import base
from mlc_keras.exporters import artefacts


class SoftmaxKind(base.HeadKind):
  """See the module docstring; the ordinal kind shares all but the layer."""

  name = "softmax"
  noun = "softmax head"
  single_label = True
  description = "class probabilities (softmax)"
  serving_suffixes = (artefacts.CLASS_SUFFIX, artefacts.SCORE_SUFFIX)

  # --- data ------------------------------------------------------------------

  def tfrecord_feature(self, spec):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.FixedLenFeature([], tf.int64, base.MISSING)

  def targets(self, spec, y, class_weight=None):
    # A -1 label raises in the sparse cross-entropy even with weight 0: the
    # loss gets a clamped label and weight 0 instead.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    y = y[..., 0]
    present = y >= 0
    clamped = tf.where(present, y, tf.zeros_like(y))
    w = tf.cast(present, tf.float32)
    if class_weight is not None:
      w = w * tf.gather(tf.constant(class_weight, tf.float32), clamped)
    return clamped, w

  def mix_target(self, spec, y):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.one_hot(tf.cast(y, tf.int32), spec.num_classes)

  def counts(self, spec, y):
    y = np.asarray(y)[:, 0]
    return np.bincount(y[y >= 0], minlength=spec.num_classes)

  # --- model -----------------------------------------------------------------

  def output_layer(self, spec, **kwargs):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(spec.num_classes, activation="softmax",
                              name=spec.name, **kwargs)

  def copy_weights(self, parent_spec, spec, src, dst) -> None:
    base.dense_copy(parent_spec, spec, src, dst)

  def loss(self, spec, label_smoothing: float = 0.0, soft: bool = False):
    import keras  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import losses  # pylint: disable=g-import-not-at-top
    if spec.focal_gamma > 0 or label_smoothing > 0 or soft:
      return losses.SparseFocalCrossentropy(
          spec.focal_gamma, label_smoothing, soft,
          name=f"{spec.name}_{'focal' if spec.focal_gamma > 0 else 'xent'}")
    return keras.losses.SparseCategoricalCrossentropy(
        reduction="mean_with_sample_weight", name=f"{spec.name}_xent")

  def metrics(self, spec, top_k: int = 5, soft: bool = False) -> list:
    import keras  # pylint: disable=g-import-not-at-top
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    accuracy = (metrics.SoftAccuracy if soft
                else keras.metrics.SparseCategoricalAccuracy)
    top = metrics.SoftTopK if soft else keras.metrics.SparseTopKCategoricalAccuracy
    out = [accuracy(name="acc")]
    k = scoring.reported_top_k(spec.num_classes, top_k)
    if k is not None:
      out.append(top(k=k, name=f"top{k}"))
    return out

  def selection_metrics(self, spec) -> list:
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    return [metrics.BalancedAccuracy(spec.num_classes)]

  def log_names(self, spec, top_k: int) -> list[str]:
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    names = [f"{spec.name}_loss", f"{spec.name}_acc",
             f"{spec.name}_{metrics.BALANCED_ACC}"]
    k = scoring.reported_top_k(spec.num_classes, top_k)
    if k is not None:
      names.append(f"{spec.name}_top{k}")
    return names

  # --- decisions -------------------------------------------------------------

  def describe(self, spec, row) -> dict:
    row = np.asarray(row)
    best = int(np.argmax(row))
    return {"class": spec.classes[best], "score": float(row[best]),
            "scores": {c: float(p) for c, p in zip(spec.classes, row)}}

  def serving_outputs(self, spec, probs) -> dict:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return {artefacts.CLASS_SUFFIX: tf.gather(tf.constant(list(spec.classes)),
                                              tf.argmax(probs, axis=-1)),
            artefacts.SCORE_SUFFIX: tf.reduce_max(probs, axis=-1)}

  # --- evaluation ------------------------------------------------------------

  def table_row(self, spec, probs, y, top_k: int) -> dict:
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    row = {"accuracy": float(np.mean(np.argmax(probs, axis=1) == y)),
           "majority": metrics.majority(y, spec.num_classes)}
    k = metrics.reported_top_k(spec.num_classes, top_k)
    if k is not None:
      row[f"top{k}"] = metrics.top_k_accuracy(probs, y, k)
    return row

  def scores(self, spec, probs, labels, mask, top_k: int) -> dict:
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    return scoring.head_scores(probs, labels, mask, spec.classes,
                               scoring.reported_top_k(spec.num_classes, top_k))

  def report(self, spec, probs, labels, mask, top_k: int) -> dict:
    from mlc_keras.evaluation import calibrate  # pylint: disable=g-import-not-at-top
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    mask = np.asarray(mask, bool)
    row = {"head": spec.name, "classes": list(spec.classes),
           **self.scores(spec, probs, labels, mask, top_k)}
    if not mask.any():
      row["note"] = scoring.NO_LABELS
      return row
    p, y = np.asarray(probs)[mask], np.asarray(labels)[mask]
    row.update(nll=calibrate.nll(p, y),
               majority=metrics.majority(y, spec.num_classes))
    return row

  def across(self, spec, probs, labels, mask):
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    mask = np.asarray(mask, bool)
    y = np.asarray(labels, np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    k = {spec.name: spec.num_classes}
    return (mask & (pred != y),
            scoring.attribute_matrix({spec.name: y}, {spec.name: mask}, k),
            scoring.attribute_matrix({spec.name: pred}, {spec.name: mask}, k))


KIND = SoftmaxKind()
