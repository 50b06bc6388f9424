"""The field's metrics, on labelled samples only (numpy + scikit-learn).

Per head (``head_scores``): accuracy, balanced accuracy (the attribute
literature's label-based mA: the mean per-class recall), macro-F1, per-class
precision / recall / F1, the confusion matrix, top-k, ECE, and for a two-class
head average precision and ROC-AUC of its second class. Across heads
(``across_heads``): the mean of the per-head balanced accuracies, instance-based
accuracy / precision / recall / F1 (the PA-100K protocol of Rethinking_of_PAR)
and the share of images whose every labelled head is right. Composed classes
(``seen_classes``, ``gzsl_scores``): seen and unseen mean per-class accuracy S
and U and their harmonic mean H (the generalised zero-shot protocol of Xian et
al.). Definitions and sources: BUILD_NOTES.md, "tag heads".

A number that is not defined on the data at hand (a head with no labelled
sample, AUC with one class present, H without unseen classes) is None, and the
entry's ``not_defined`` dict says why: never NaN.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence
import warnings

import numpy as np
from sklearn import metrics as skm

NO_LABELS = "no labelled samples"
ECE_BINS = 15
# Images or classes whose ratio has an empty denominator count 0, as the
# PA-100K reference code does (its eps); see instance_scores.
ZERO_DIVISION = 0.0


def _one_class(y: np.ndarray, classes: Sequence[str]) -> str:
  present = sorted({classes[int(i)] for i in np.unique(y)})
  return (f"only class {present[0]!r} among the {len(y)} labelled samples"
          if present else NO_LABELS)


# --- from a confusion matrix ------------------------------------------------------


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
  """[true, predicted] counts over classes 0..num_classes-1."""
  return skm.confusion_matrix(np.asarray(labels, np.int64),
                              np.asarray(preds, np.int64),
                              labels=np.arange(num_classes)).astype(np.int64)


def _expand(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The (true, predicted) label arrays a confusion matrix counts."""
  cm = np.asarray(cm, np.int64)
  k = cm.shape[0]
  true = np.repeat(np.repeat(np.arange(k), k), cm.ravel())
  pred = np.repeat(np.tile(np.arange(k), k), cm.ravel())
  return true, pred


def precision_recall_f1(cm: np.ndarray):
  """Per-class precision, recall and F1 from a confusion matrix; 0 where a
  ratio is undefined (no predictions / no samples of the class)."""
  true, pred = _expand(cm)
  p, r, f, _ = skm.precision_recall_fscore_support(
      true, pred, labels=np.arange(len(cm)), average=None,
      zero_division=ZERO_DIVISION)
  return p.astype(np.float64), r.astype(np.float64), f.astype(np.float64)


def macro_f1(cm: np.ndarray) -> float:
  """Mean F1 over the classes that occur in the labels or the predictions
  (sklearn's default): a class absent from both says nothing."""
  true, pred = _expand(cm)
  if not true.size:
    return 0.0
  return float(skm.f1_score(true, pred, average="macro",
                            labels=np.union1d(true, pred),
                            zero_division=ZERO_DIVISION))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
  """ECE: sum over equal-width confidence bins of |accuracy - mean
  confidence| weighted by the bin's share of samples (confidence = max p).

  Hand-written: scikit-learn has calibration_curve (per-class reliability
  of a binary classifier) but no top-label ECE.
  """
  probs = np.asarray(probs, np.float64)
  if len(labels) == 0:
    return 0.0
  conf = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
  # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur.
  idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    sel = idx == b
    if sel.any():
      ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
  return float(ece)


# --- one head -----------------------------------------------------------------


def balanced_accuracy(y: np.ndarray, pred: np.ndarray,
                      classes: Sequence[str]) -> tuple[Optional[float], str]:
  """(mean per-class recall over the classes present in ``y``, "") or
  (None, why) when fewer than two classes are present."""
  if len(np.unique(y)) < 2:
    return None, _one_class(y, classes)
  # sklearn averages over the classes of y_true; a predicted class absent
  # from y_true only lowers the recall of the class it was mistaken for
  # (sklearn warns about it; that is the definition, not a problem).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return float(skm.balanced_accuracy_score(y, pred)), ""


def binary_scores(y: np.ndarray, p_positive: np.ndarray,
                  classes: Sequence[str]) -> tuple[dict, dict]:
  """({"average_precision", "roc_auc"}, not_defined) of a two-class head,
  its second class (index 1) the positive one."""
  if len(np.unique(y)) < 2:
    why = _one_class(y, classes)
    return {"average_precision": None, "roc_auc": None}, {
        "average_precision": why, "roc_auc": why}
  positive = np.asarray(y) == 1
  return {"average_precision": float(skm.average_precision_score(
              positive, p_positive)),
          "roc_auc": float(skm.roc_auc_score(positive, p_positive))}, {}


def reported_top_k(num_classes: int, top_k: int) -> Optional[int]:
  """The k whose top-k accuracy a head of ``num_classes`` reports, or None:
  the k asked for, and only where it is informative (fewer than all the
  classes). results.json, evaluation.json and the Keras metrics all follow
  this, so a "top5" key means top-5 wherever it appears."""
  return top_k if num_classes > top_k else None


def top_k(probs: np.ndarray, y: np.ndarray, k: int) -> float:
  """Share of rows whose label is among the k most probable classes."""
  return float(skm.top_k_accuracy_score(
      y, probs, k=k, labels=np.arange(probs.shape[1])))


def head_scores(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                classes: Sequence[str], k: Optional[int] = None) -> dict:
  """Every per-head number on the samples where ``mask`` is true. ``k``: the
  top-k to report (None: none)."""
  mask = np.asarray(mask, bool)
  out = {"labelled": int(mask.sum()), "total": int(mask.size)}
  if not mask.any():
    # No "accuracy" key: the callers' rows say "no labelled samples" for it.
    out.update(balanced_accuracy=None,
               not_defined={"balanced_accuracy": NO_LABELS})
    return out
  p = np.asarray(probs, np.float64)[mask]
  y = np.asarray(labels, np.int64)[mask]
  pred = p.argmax(axis=1)
  n = len(classes)
  cm = confusion_matrix(y, pred, n)
  precision, recall, f1 = precision_recall_f1(cm)
  undefined = {}
  bacc, why = balanced_accuracy(y, pred, classes)
  if why:
    undefined["balanced_accuracy"] = why
  out.update(
      accuracy=float(skm.accuracy_score(y, pred)), balanced_accuracy=bacc,
      macro_f1=macro_f1(cm), ece=expected_calibration_error(p, y),
      per_class={c: {"support": int(cm[i].sum()),
                     "precision": float(precision[i]),
                     "recall": float(recall[i]), "f1": float(f1[i])}
                 for i, c in enumerate(classes)},
      confusion=cm.tolist())
  if n == 2:
    binary, why2 = binary_scores(y, p[:, 1], classes)
    out.update(binary)
    undefined.update(why2)
  if k is not None:
    out[f"top{k}"] = top_k(p, y, k)
  if undefined:
    out["not_defined"] = undefined
  return out


# --- across heads ---------------------------------------------------------------


def mean_balanced_accuracy(per_head: Mapping[str, Optional[float]]) -> dict:
  """{"mean_balanced_accuracy", "heads_in_mean"} (+ "not_defined"): the mean
  over the heads whose balanced accuracy is defined."""
  defined = {h: v for h, v in per_head.items() if v is not None}
  out = {"mean_balanced_accuracy": (float(np.mean(list(defined.values())))
                                    if defined else None),
         "heads_in_mean": sorted(defined)}
  if not defined:
    out["not_defined"] = {"mean_balanced_accuracy":
                          "no head has a defined balanced accuracy"}
  return out


def attribute_matrix(labels_by_head: Mapping[str, np.ndarray],
                     mask_by_head: Mapping[str, np.ndarray],
                     num_classes: Mapping[str, int]) -> np.ndarray:
  """[N, attributes] 0/1: a two-class head is one attribute (its second
  class), a head of k > 2 classes is k one-hot attributes (how PA-100K
  encodes its age and orientation groups). Unlabelled heads are all zeros,
  so they add nothing to an image's sets."""
  cols = []
  for h, k in num_classes.items():
    y = np.asarray(labels_by_head[h], np.int64)
    m = np.asarray(mask_by_head[h], bool)
    if k == 2:
      cols.append(((y == 1) & m)[:, None])
    else:
      cols.append((y[:, None] == np.arange(k)[None, :]) & m[:, None])
  return np.concatenate(cols, axis=1).astype(np.int64)


def instance_scores(true_attrs: np.ndarray, pred_attrs: np.ndarray,
                    labelled_any: np.ndarray) -> dict:
  """Instance-based accuracy (|T and P| / |T or P|), precision (/ |P|) and
  recall (/ |T|), each averaged over the images with a labelled head, and F1
  as the harmonic mean of the averaged precision and recall (as the PA-100K
  reference code computes it). An empty denominator counts 0 for that image
  (the reference code's eps)."""
  rows = np.asarray(labelled_any, bool)
  if not rows.any():
    return {"images": 0, "accuracy": None, "precision": None, "recall": None,
            "f1": None, "not_defined": {"instance": NO_LABELS}}
  # A zero column changes no image's sets, and keeps sklearn reading a
  # single attribute as multilabel rather than as one binary target.
  pad = np.zeros((int(rows.sum()), 1), np.int64)
  t = np.concatenate([true_attrs[rows], pad], axis=1)
  p = np.concatenate([pred_attrs[rows], pad], axis=1)
  precision, recall, _, _ = skm.precision_recall_fscore_support(
      t, p, average="samples", zero_division=ZERO_DIVISION)
  accuracy = skm.jaccard_score(t, p, average="samples",
                               zero_division=ZERO_DIVISION)
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall > 0 else 0.0)
  return {"images": int(rows.sum()), "accuracy": float(accuracy),
          "precision": float(precision), "recall": float(recall),
          "f1": float(f1)}


def across_heads(collected: Mapping[str, tuple], heads: Sequence,
                 per_head_bacc: Mapping[str, Optional[float]]) -> dict:
  """The across-head numbers from metrics.collect()-style
  {head: (probs, labels, mask)}; ``heads``: HeadSpecs, each asked for its
  share (its kind's ``across``: a tag head's tags are binary attributes of
  their own, decided at its thresholds, and it is right on an image when
  every tag is)."""
  masks_all, wrong_all, true_cols, pred_cols = [], [], [], []
  for h in heads:
    probs, labels, mask = collected[h.name]
    wrong, true, pred = h.kind_impl.across(h, probs, labels, mask)
    masks_all.append(np.asarray(mask, bool))
    wrong_all.append(wrong)
    true_cols.append(true)
    pred_cols.append(pred)
  labelled_any = np.any(masks_all, axis=0)
  wrong = np.any(wrong_all, axis=0)
  out = mean_balanced_accuracy(per_head_bacc)
  out["instance"] = instance_scores(np.concatenate(true_cols, axis=1),
                                    np.concatenate(pred_cols, axis=1),
                                    labelled_any)
  n = int(labelled_any.sum())
  out["all_heads_right"] = (float(np.mean(~wrong[labelled_any])) if n
                            else None)
  if not n:
    out.setdefault("not_defined", {})["all_heads_right"] = NO_LABELS
  return out


def field_scores(collected: Mapping[str, tuple], heads: Sequence,
                 top_k: int = 5) -> tuple[dict, dict]:
  """({head: head_scores}, across_heads) from metrics.collect()-style
  {head: (probs, labels, mask)}; ``heads``: HeadSpecs (their kind's
  ``scores``)."""
  # A tag head has no balanced accuracy: it stays out of the mean mA.
  per_head = {h.name: h.kind_impl.scores(h, *collected[h.name], top_k)
              for h in heads}
  across = across_heads(collected, heads, {
      h: v["balanced_accuracy"] for h, v in per_head.items()
      if "balanced_accuracy" in v})
  return per_head, across


def format_across(across: dict) -> str:
  """One line of the across-head numbers, for the end-of-training table."""
  def num(entry, key):
    v = entry.get(key)
    return "not defined" if v is None else f"{v:.3f}"
  inst = across["instance"]
  return (f"mean mA {num(across, 'mean_balanced_accuracy')} over "
          f"{len(across['heads_in_mean'])} head(s); instance accuracy "
          f"{num(inst, 'accuracy')}, precision {num(inst, 'precision')}, "
          f"recall {num(inst, 'recall')}, F1 {num(inst, 'f1')}; every "
          f"labelled head right {num(across, 'all_heads_right')}")


# --- composed classes: seen / unseen ----------------------------------------------


def seen_classes(values: Sequence[Sequence[int]], heads: Sequence[str],
                 train_labels: Mapping[str, np.ndarray]) -> np.ndarray:
  """[classes] bool: some training image carries the class's combination,
  i.e. is labelled with its value on every head the class specifies.
  ``values``: a class table's (compose.ClassTable.values, -1 = any);
  ``train_labels``: {head: [N] int, -1 = missing} for a softmax head,
  [N, tags] 0/1 (-1 = missing) for a tag head, whose table value names a tag
  that must be present (compose.classes_of' rule)."""
  out = np.zeros(len(values), bool)
  n = len(next(iter(train_labels.values()))) if train_labels else 0
  for c, row in enumerate(values):
    ok = np.ones(n, bool)
    for j, h in enumerate(heads):
      if row[j] >= 0:
        labels = np.asarray(train_labels[h])
        ok &= labels[:, row[j]] > 0.5 if labels.ndim == 2 else labels == row[j]
    out[c] = bool(ok.any())
  return out


def _mean_recall(recall: np.ndarray, support: np.ndarray,
                 sel: np.ndarray) -> Optional[float]:
  use = sel & (support > 0)
  return float(recall[use].mean()) if use.any() else None


def gzsl_scores(target: np.ndarray, pred: np.ndarray, seen: np.ndarray,
                class_names: Sequence[str]) -> dict:
  """S, U (mean per-class accuracy over the seen / unseen classes that have
  evaluated rows), H = 2SU / (S + U), and the mean per-class accuracy over
  every evaluated class; predictions range over all the table's classes."""
  c = len(class_names)
  seen = np.asarray(seen, bool)
  support = np.bincount(np.asarray(target, np.int64), minlength=c)
  recall = skm.recall_score(target, pred, labels=np.arange(c), average=None,
                            zero_division=ZERO_DIVISION)
  s = _mean_recall(recall, support, seen)
  u = _mean_recall(recall, support, ~seen)
  out = {"seen": s, "unseen": u, "harmonic": None,
         "mean_per_class": _mean_recall(recall, support, np.ones(c, bool)),
         "seen_classes": [n for n, x in zip(class_names, seen) if x],
         "unseen_classes": [n for n, x in zip(class_names, seen) if not x],
         "not_evaluated": [n for n, x in zip(class_names, support) if not x]}
  undefined = {}
  if s is None:
    undefined["seen"] = "no evaluated row of a seen class"
  if u is None:
    undefined["unseen"] = "no evaluated row of an unseen class"
  if s is not None and u is not None:
    out["harmonic"] = 2 * s * u / (s + u) if s + u > 0 else 0.0
  else:
    undefined["harmonic"] = "needs both S and U"
  if out["mean_per_class"] is None:
    undefined["mean_per_class"] = NO_LABELS
  if undefined:
    out["not_defined"] = undefined
  return out


def head_accuracy_by_split(collected: Mapping[str, tuple],
                           row_seen: np.ndarray) -> dict:
  """Per softmax head of metrics.collect()-style {head: (probs, labels,
  mask)}: accuracy on its labelled rows whose combination was seen in
  training (``row_seen``) and on the others, and the gap seen - unseen
  (positive: the head is worse where the combination is new)."""
  out = {}
  row_seen = np.asarray(row_seen, bool)
  for h, (probs, labels, mask) in collected.items():
    labels = np.asarray(labels)
    if labels.ndim != 1:
      continue  # a tag head has no single accuracy
    right = np.asarray(probs).argmax(axis=1) == labels
    mask = np.asarray(mask, bool)
    entry = {}
    for name, sel in (("seen", mask & row_seen), ("unseen", mask & ~row_seen)):
      entry[name] = float(right[sel].mean()) if sel.any() else None
      entry[f"{name}_rows"] = int(sel.sum())
    entry["gap"] = (entry["seen"] - entry["unseen"]
                    if entry["seen"] is not None and entry["unseen"] is not None
                    else None)
    out[h] = entry
  return out


# --- tag heads ------------------------------------------------------------------

NO_POSITIVE = "no positive example of this tag among the labelled samples"


def tag_scores(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray,
               tags: Sequence[str], thresholds: Sequence[float]) -> dict:
  """A tag head's numbers on the rows where ``mask`` is true, as multi-label
  work on COCO / NUS-WIDE reports them (e.g. ML-GCN, Chen et al. 2019):

  - per-tag AP (sklearn average_precision_score) and mAP, their mean over
    the tags with a positive example (AP is not defined without one);
  - at ``thresholds`` (a tag is on iff score >= threshold): per-class
    precision CP and recall CR (means over those tags of each tag's
    precision and recall, 0 for a tag never predicted), CF1 = 2 CP CR /
    (CP + CR); overall OP / OR pooled over every (image, tag) decision,
    OF1 = 2 OP OR / (OP + OR).
  """
  mask = np.asarray(mask, bool)
  out = {"labelled": int(mask.sum()), "total": int(mask.size)}
  if not mask.any():
    out.update(mAP=None, not_defined={"mAP": NO_LABELS})
    return out
  p = np.asarray(probs, np.float64)[mask]
  t = (np.asarray(truth)[mask] > 0.5).astype(np.int64)
  on = (np.asarray(probs, np.float32)[mask]
        >= np.asarray(thresholds, np.float32)).astype(np.int64)
  has_positive = t.sum(axis=0) > 0
  undefined = {}
  per_tag = {}
  for i, tag in enumerate(tags):
    entry = {"support": int(t[:, i].sum()), "threshold": float(thresholds[i])}
    if has_positive[i]:
      entry["ap"] = float(skm.average_precision_score(t[:, i], p[:, i]))
    else:
      entry["ap"] = None
      undefined[f"ap:{tag}"] = NO_POSITIVE
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        t[:, i], on[:, i], average="binary", zero_division=ZERO_DIVISION)
    entry.update(precision=float(precision), recall=float(recall),
                 f1=float(f1))
    per_tag[tag] = entry
  out["per_tag"] = per_tag
  defined = [per_tag[tag] for tag, ok in zip(tags, has_positive) if ok]
  if defined:
    out["mAP"] = float(np.mean([e["ap"] for e in defined]))
    cp = float(np.mean([e["precision"] for e in defined]))
    cr = float(np.mean([e["recall"] for e in defined]))
    out.update(CP=cp, CR=cr, CF1=_harmonic(cp, cr))
  else:
    out.update(mAP=None, CP=None, CR=None, CF1=None)
    undefined.update(mAP=NO_POSITIVE.replace("this tag", "any tag"),
                     CF1=NO_POSITIVE.replace("this tag", "any tag"))
  hits, predicted, actual = (int((on & t).sum()), int(on.sum()),
                             int(t.sum()))
  op = hits / predicted if predicted else ZERO_DIVISION
  orr = hits / actual if actual else ZERO_DIVISION
  out.update(OP=float(op), OR=float(orr), OF1=_harmonic(op, orr),
             label_accuracy=float(np.mean(on == t)))
  if undefined:
    out["not_defined"] = undefined
  return out


def _harmonic(a: float, b: float) -> float:
  return float(2 * a * b / (a + b)) if a + b > 0 else 0.0
