"""The tag head: any subset of a tag vocabulary per image, one sigmoid per
tag, binary cross-entropy averaged over the tags, decided per tag at the
thresholds fitted on validation data (labeling.tagging) and carried in
labels.json."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core.kinds import base
from mlc_keras.exporters import artefacts

# A tag-head manifest cell: tags joined by TAG_SEPARATOR, or NO_TAGS when none
# of the vocabulary applies (a blank cell stays "missing", as for softmax).
TAG_SEPARATOR = "|"
NO_TAGS = "(none)"
# The decision threshold of a tag that has none fitted (no validation data,
# or no positive example of it there).
DEFAULT_TAG_THRESHOLD = 0.5


def decide(probs, thresholds: Sequence[float]) -> np.ndarray:
  """[..., T] scores -> bool [..., T]: a tag is on iff score >= threshold."""
  return np.asarray(probs) >= np.asarray(thresholds, np.float32)


class TagsKind(base.HeadKind):
  """See the module docstring."""

  name = "tags"
  noun = "tag head"
  single_label = False
  min_classes = 1
  description = "independent tag probabilities (sigmoid)"
  serving_suffixes = (artefacts.TAGS_SUFFIX,)

  # --- schema ----------------------------------------------------------------

  def check(self, spec) -> None:
    if not spec.classes:
      raise errors.SchemaError(f"tag head {spec.name!r} needs at least 1 tag")
    for c in spec.classes:
      if isinstance(c, str) and (TAG_SEPARATOR in c or c == NO_TAGS):
        raise errors.SchemaError(
            f"tag head {spec.name!r}: tag {c!r} "
            + (f"contains the separator {TAG_SEPARATOR!r}"
               if TAG_SEPARATOR in c else f"is the no-tags token {NO_TAGS!r}")
            + "; rename it")
    if spec.thresholds is not None:
      if len(spec.thresholds) != len(spec.classes) or not all(
          isinstance(t, float) and 0.0 <= t <= 1.0 for t in spec.thresholds):
        raise errors.SchemaError(
            f"tag head {spec.name!r}: thresholds must be {len(spec.classes)} "
            f"numbers in [0, 1] (one per tag), got {list(spec.thresholds)}")

  def width(self, spec) -> int:
    return len(spec.classes)

  def parse(self, spec, cell: str) -> list[int]:
    """"a|b" sets tags a and b; NO_TAGS sets none. SchemaError naming the
    value for a tag outside the vocabulary, an empty item ("a||b") or
    NO_TAGS mixed with tags."""
    vector = [0] * len(spec.classes)
    if cell == NO_TAGS:
      return vector
    for item in cell.split(TAG_SEPARATOR):
      tag = item.strip()
      if tag == NO_TAGS or not tag:
        raise errors.SchemaError(
            f"{cell!r}: " + ("an empty tag between separators" if not tag else
                             f"{NO_TAGS!r} cannot be combined with tags")
            + f" (tags are joined by {TAG_SEPARATOR!r}; {NO_TAGS!r} alone "
            "means none apply)")
      if tag not in spec.classes:
        raise errors.SchemaError(
            f"tag {tag!r} is not in the vocabulary of tag head {spec.name!r} "
            f"(tags: {', '.join(spec.classes)})")
      vector[spec.classes.index(tag)] = 1
    return vector

  def index(self, spec, value: str) -> int:
    try:
      return spec.classes.index(value)
    except ValueError:
      raise errors.SchemaError(
          f"tag {value!r} is not in the vocabulary of tag head "
          f"{spec.name!r} (tags: {', '.join(spec.classes)}; one tag "
          "here)") from None

  def cell(self, spec, y) -> str:
    return TAG_SEPARATOR.join(
        c for c, on in zip(spec.classes, y) if on) or NO_TAGS

  def thresholds(self, spec) -> tuple[float, ...]:
    if spec.thresholds is not None:
      return spec.thresholds
    return (DEFAULT_TAG_THRESHOLD,) * len(spec.classes)

  def infer(self, name: str, values) -> tuple[str, ...]:
    tags = set()
    for v in values:
      if v and v != NO_TAGS:
        tags.update(t.strip() for t in v.split(TAG_SEPARATOR))
    tags.discard("")
    if not tags:
      raise errors.SchemaError(
          f"tag column {name!r} names no tag (every cell is blank or "
          f"{NO_TAGS!r}); a tag head needs at least 1. Drop it from "
          "`tag_columns` or list its tags in a `heads_file`")
    return tuple(base.sorted_values(tags))

  # --- data ------------------------------------------------------------------

  def tfrecord_feature(self, spec):
    # The 0/1 vector, all -1 when missing.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.FixedLenFeature([spec.width], tf.int64,
                                 [base.MISSING] * spec.width)

  def targets(self, spec, y, class_weight=None):
    # Multi-hot float targets; the row's weight says whether it is labelled
    # (a missing row is -1 in every column, and 0 targets with weight 0).
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    present = y[..., 0] >= 0
    return tf.cast(tf.maximum(y, 0), tf.float32), tf.cast(present, tf.float32)

  def mix_target(self, spec, y):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.cast(y, tf.float32)

  def counts(self, spec, y):
    y = np.asarray(y)
    return y[y[:, 0] >= 0].sum(axis=0).astype(np.int64)

  # --- model -----------------------------------------------------------------

  def output_layer(self, spec, **kwargs):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(spec.num_classes, activation="sigmoid",
                              name=spec.name, **kwargs)

  def copy_weights(self, parent_spec, spec, src, dst) -> None:
    base.dense_copy(parent_spec, spec, src, dst)

  def loss(self, spec, label_smoothing: float = 0.0, soft: bool = False):
    import keras  # pylint: disable=g-import-not-at-top
    if spec.focal_gamma > 0:
      return keras.losses.BinaryFocalCrossentropy(
          gamma=spec.focal_gamma, label_smoothing=label_smoothing,
          reduction="mean_with_sample_weight", name=f"{spec.name}_focal")
    return keras.losses.BinaryCrossentropy(
        label_smoothing=label_smoothing,
        reduction="mean_with_sample_weight", name=f"{spec.name}_bce")

  def metrics(self, spec, top_k: int = 5, soft: bool = False) -> list:
    # Share of (sample, tag) decisions right at 0.5; the fitted thresholds
    # come after training.
    import keras  # pylint: disable=g-import-not-at-top
    return [keras.metrics.BinaryAccuracy(name="acc")]

  def log_names(self, spec, top_k: int) -> list[str]:
    return [f"{spec.name}_loss", f"{spec.name}_acc"]

  # --- decisions -------------------------------------------------------------

  def describe(self, spec, row) -> dict:
    row = np.asarray(row)
    on = decide(row, self.thresholds(spec))
    return {"tags": [t for t, v in zip(spec.classes, on) if v],
            "scores": {t: float(p) for t, p in zip(spec.classes, row)}}

  def serving_outputs(self, spec, probs) -> dict:
    # decide() in the graph: a tag is on iff score >= threshold.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return {artefacts.TAGS_SUFFIX: probs >= tf.constant(
        list(self.thresholds(spec)), tf.float32)}

  # --- evaluation ------------------------------------------------------------

  def table_row(self, spec, probs, y, top_k: int) -> dict:
    """The share of (sample, tag) decisions that are right at the
    thresholds ("accuracy"), and the same share for always answering each
    tag's more common value ("majority", the floor to beat)."""
    tags = np.asarray(y) > 0.5
    decided = decide(probs, self.thresholds(spec))
    share_on = tags.mean(axis=0)
    return {"kind": self.name,
            "accuracy": float(np.mean(decided == tags)),
            "majority": float(np.mean(np.maximum(share_on, 1 - share_on)))}

  def scores(self, spec, probs, labels, mask, top_k: int) -> dict:
    # A tag head has no balanced accuracy: it stays out of the mean mA.
    from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
    return scoring.tag_scores(probs, labels, mask, spec.classes,
                              self.thresholds(spec))

  def report(self, spec, probs, labels, mask, top_k: int) -> dict:
    return {"head": spec.name, "kind": self.name,
            "classes": list(spec.classes),
            **self.scores(spec, probs, labels, mask, top_k)}

  def across(self, spec, probs, labels, mask):
    # Each tag is a binary attribute of its own; the head is right on an
    # image when every tag is.
    mask = np.asarray(mask, bool)
    truth = np.asarray(labels) > 0.5
    on = decide(np.asarray(probs, np.float32), self.thresholds(spec))
    return (mask & (on != truth).any(axis=1),
            (truth & mask[:, None]).astype(np.int64),
            (on & mask[:, None]).astype(np.int64))


KIND = TagsKind()
