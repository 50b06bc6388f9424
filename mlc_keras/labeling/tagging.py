"""Tag heads' decisions: per-tag thresholds fitted on validation data, and
the rule that turns sigmoid scores into a set of tags (numpy + scikit-learn).

The rule (``fit_thresholds``), per tag, on the labelled validation samples:
the threshold that maximises the tag's F1 (2PR / (P + R), a tag being "on"
when its score is >= the threshold), taken halfway between the lowest score
it keeps and the highest score below it, so a score that moves by less than
half that gap (an export's rounding) keeps its decision. Among thresholds of
equal F1 the highest wins (fewer false positives). A tag with no positive
(or no labelled sample) in the validation data has no F1 to maximise: it gets
DEFAULT_TAG_THRESHOLD and a "not defined" note, never NaN.

``decide`` is the one rule every reader applies (predict, the SavedModel's
``<head>_tags`` output, evaluation): tag on iff score >= threshold.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from sklearn import metrics as skm

from mlc_keras.core import heads as heads_lib
from mlc_keras.core.kinds import tags as tags_kind

DEFAULT_THRESHOLD = heads_lib.DEFAULT_TAG_THRESHOLD
NO_POSITIVE = "not defined: no positive example of this tag in the validation data"
NO_LABELS = "not defined: no labelled validation sample of this head"
NO_VALIDATION = "not defined: the run has no validation data"


def fit_threshold(scores: np.ndarray, truth: np.ndarray
                  ) -> tuple[float, Optional[float], Optional[str]]:
  """One tag: (threshold, its validation F1 or None, note or None)."""
  scores = np.asarray(scores, np.float64)
  truth = np.asarray(truth).astype(bool)
  if truth.size == 0:
    return DEFAULT_THRESHOLD, None, NO_LABELS
  if not truth.any():
    return DEFAULT_THRESHOLD, None, NO_POSITIVE
  precision, recall, cuts = skm.precision_recall_curve(
      truth, scores, drop_intermediate=False)
  # The last (precision, recall) pair is sklearn's (1, 0) end point, which
  # has no threshold.
  precision, recall = precision[:-1], recall[:-1]
  f1 = np.divide(2 * precision * recall, precision + recall,
                 out=np.zeros_like(precision), where=precision + recall > 0)
  best = int(np.flatnonzero(f1 == f1.max())[-1])
  below = scores[scores < cuts[best]]
  lower = below.max() if below.size else 0.0
  return float((cuts[best] + lower) / 2), float(f1[best]), None


def fit_thresholds(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray
                   ) -> dict:
  """One tag head: thresholds fitted on the rows where ``mask`` is true.

  Args:
    probs: [N, T] sigmoid scores.
    truth: [N, T] 0/1 tags.
    mask: [N] bool, the labelled rows.

  Returns:
    {"thresholds": [T floats], "f1": [T floats or None],
     "not_defined": {tag index: why}}.
  """
  mask = np.asarray(mask, bool)
  probs, truth = np.asarray(probs)[mask], np.asarray(truth)[mask]
  thresholds, f1s, notes = [], [], {}
  for t in range(probs.shape[1]):
    threshold, f1, note = fit_threshold(probs[:, t], truth[:, t])
    thresholds.append(threshold)
    f1s.append(f1)
    if note:
      notes[t] = note
  return {"thresholds": thresholds, "f1": f1s, "not_defined": notes}


def fit_schema(schema: heads_lib.LabelSchema,
               collected: Optional[Mapping[str, tuple]]
               ) -> tuple[heads_lib.LabelSchema, dict]:
  """Fits every tag head of ``schema`` on ``collected`` validation outputs
  ({head: (probs, labels, mask)}, as modeling.metrics.collect returns), or
  gives every tag the default when ``collected`` is None (no validation
  data). Returns (schema with thresholds, {head: {tag: {"threshold", "f1",
  "note"?}}}) for results.json."""
  fitted, report = {}, {}
  for h in schema.heads:
    if h.kind_impl.thresholds(h) is None:  # decided without thresholds
      continue
    if collected is None:
      fit = {"thresholds": [DEFAULT_THRESHOLD] * h.num_classes,
             "f1": [None] * h.num_classes,
             "not_defined": dict.fromkeys(range(h.num_classes), NO_VALIDATION)}
    else:
      fit = fit_thresholds(*collected[h.name])
    fitted[h.name] = fit["thresholds"]
    report[h.name] = {
        tag: {"threshold": fit["thresholds"][i], "f1": fit["f1"][i],
              **({"note": fit["not_defined"][i]}
                 if i in fit["not_defined"] else {})}
        for i, tag in enumerate(h.classes)}
  return schema.with_thresholds(fitted), report


# [..., T] scores -> bool [..., T]: a tag is on iff score >= threshold.
decide = tags_kind.decide


def tag_names(probs: np.ndarray, head: heads_lib.HeadSpec) -> list[str]:
  """One image's [T] scores -> the tags that are on, in vocabulary order."""
  on = decide(probs, head.tag_thresholds())
  return [t for t, v in zip(head.classes, on) if v]
