"""Per-head metrics that count labelled samples only."""

from __future__ import annotations

import types
from typing import Optional

import keras
import numpy as np

from mlc_keras.core.kinds import tags as tags_kind
from mlc_keras.evaluation import scoring

# Heads and schemas are core.heads' HeadSpec and LabelSchema, not imported:
# the head kinds (core/kinds), which core.heads imports, build these metrics.


reported_top_k = scoring.reported_top_k


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Share of rows whose label is among the k most probable classes (ties
  broken by class order, so the number does not depend on the sort)."""
  topk = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
  return float(np.mean((topk == np.asarray(labels)[:, None]).any(axis=1)))


def majority(labels: np.ndarray, num_classes: int) -> float:
  """Accuracy of always answering the most common class of ``labels``: the
  floor a head must beat on this data (not 1/k chance)."""
  labels = np.asarray(labels, np.int64)
  return float(np.bincount(labels, minlength=num_classes).max() / labels.size)


def hard_labels(y_true, y_pred):
  """Class indices of ``y_true``: soft [batch, k] targets (MixUp / CutMix)
  and a factor head's [batch, 2k] training targets (modeling/factors.py)
  give their largest class, index labels pass through. A single-label head
  has k >= 2 classes, so index labels shaped [batch, 1] are never taken for
  soft ones."""
  k = y_pred.shape[-1]
  if len(y_true.shape) == 2 and k and k > 1 and y_true.shape[-1] in (k, 2 * k):
    # [batch, 2k]: a factor head's one-hot target and its log prior.
    return keras.ops.argmax(y_true[:, :k], axis=-1)
  return y_true


class _HardTargets:
  """Mixed into a sparse metric: soft training targets are scored by their
  largest class (validation's index labels are unchanged)."""

  def update_state(self, y_true, y_pred, sample_weight=None):
    return super().update_state(hard_labels(y_true, y_pred), y_pred,
                                sample_weight=sample_weight)


class SoftAccuracy(_HardTargets, keras.metrics.SparseCategoricalAccuracy):
  pass


class SoftTopK(_HardTargets, keras.metrics.SparseTopKCategoricalAccuracy):
  pass


def weighted_metrics(schema: "LabelSchema", top_k: int = 5,
                     soft: bool = False
                     ) -> dict[str, list[keras.metrics.Metric]]:
  """Each head's kind's metrics: accuracy, plus top-k where a head has more
  than k classes (a tag head: accuracy at 0.5; an ordinal head adds its
  error in ranks); ``soft``: training targets may be soft (see hard_labels).

  Passed to compile() as ``weighted_metrics`` (``metrics=`` ignores
  sample_weight, so masked samples would count).
  """
  return {h.name: h.kind_impl.metrics(h, top_k, soft) for h in schema.heads}


# The name of each head's BalancedAccuracy in the logs ("shape_balanced_acc").
BALANCED_ACC = "balanced_acc"


@keras.saving.register_keras_serializable(package="mlc_keras")
class BalancedAccuracy(keras.metrics.MeanIoU):
  """Balanced accuracy (mean per-class recall over the classes with labelled
  samples) of one softmax head, streamed over a whole epoch.

  MeanIoU supplies the state: a [true, predicted] confusion matrix summed
  over batches (and over replicas: its variable aggregates by sum), weighted
  by sample_weight, so masked samples (weight 0) add nothing. It is kept in
  float32: class weights folded into sample_weight are fractional, and being
  constant within a class they cancel out of every per-class recall. Only the
  result differs from MeanIoU. A head with no labelled sample gives 0 (a
  constant, so it never changes which epoch is best); evaluate reports it as
  not defined.
  """

  def __init__(self, num_classes: int, name: str = BALANCED_ACC, dtype=None):
    super().__init__(num_classes=num_classes, name=name,
                     dtype=dtype or "float32", sparse_y_true=True,
                     sparse_y_pred=False)

  def update_state(self, y_true, y_pred, sample_weight=None):
    # Soft (mixed) training targets count as their largest class.
    return super().update_state(hard_labels(y_true, y_pred), y_pred,
                                sample_weight=sample_weight)

  def result(self):
    cm = keras.ops.cast(self.total_cm, "float32")
    support = keras.ops.sum(cm, axis=1)
    present = keras.ops.cast(support > 0, "float32")
    recall = keras.ops.diagonal(cm) / keras.ops.maximum(support, 1e-12)
    return (keras.ops.sum(recall * present)
            / keras.ops.maximum(keras.ops.sum(present), 1.0))

  def get_config(self):
    return {"num_classes": self.num_classes, "name": self.name,
            "dtype": self.dtype}


def selection_metrics(schema: "LabelSchema"
                      ) -> dict[str, list[keras.metrics.Metric]]:
  """A BalancedAccuracy per head, compiled beside weighted_metrics (as
  weighted metrics, so masked samples do not count): model selection and
  early stopping monitor their mean over heads (training.selection)."""
  # A tag head has no balanced accuracy over classes: none for it.
  return {h.name: h.kind_impl.selection_metrics(h) for h in schema.heads}


def collect(model: keras.Model, dataset, schema: "LabelSchema"):
  """Runs the model over a dataset of (image, labels, weights) batches.

  Returns {head: (probs [N, k], labels [N], labelled mask [N])}.
  """
  probs = {h: [] for h in schema.names}
  labels = {h: [] for h in schema.names}
  mask = {h: [] for h in schema.names}
  for images, ys, ws in dataset:
    out = model(images, training=False)
    for h in schema.names:
      probs[h].append(np.asarray(out[h]))
      labels[h].append(np.asarray(ys[h]))
      mask[h].append(np.asarray(ws[h]) > 0)
  return {h: (np.concatenate(probs[h]) if probs[h] else np.zeros((0, 0)),
              np.concatenate(labels[h]) if labels[h] else np.zeros((0,), int),
              np.concatenate(mask[h]) if mask[h] else np.zeros((0,), bool))
          for h in schema.names}


def head_table(collected, schema: "LabelSchema",
               top_k: int = 5) -> list[dict]:
  """Per head: labelled count, accuracy and top-k on labelled samples only
  (the head's kind's table_row; a tag head: see tag_accuracy).

  A head with no labelled samples gets ``accuracy: None`` and a note, never NaN.
  """
  rows = []
  for h in schema.heads:
    probs, y, m = collected[h.name]
    row = {"head": h.name, "classes": h.num_classes, "labelled": int(m.sum()),
           "total": int(m.size)}
    if not m.any():
      row.update(accuracy=None, note="no labelled samples")
    else:
      row.update(h.kind_impl.table_row(h, probs[m], y[m], top_k))
    rows.append(row)
  return rows


def tag_accuracy(probs: np.ndarray, tags: np.ndarray,
                 thresholds) -> dict:
  """A tag head's labelled rows: the share of (sample, tag) decisions that
  are right at ``thresholds`` ("accuracy"), and the same share for always
  answering each tag's more common value ("majority", the floor to beat)."""
  spec = types.SimpleNamespace(thresholds=tuple(thresholds))
  return tags_kind.KIND.table_row(spec, probs, tags, 0)


def add_field_scores(rows: list[dict], collected,
                     schema: "LabelSchema", top_k: int = 5) -> dict:
  """Adds scoring's balanced accuracy (mA), AP / ROC-AUC (two-class heads)
  and not-defined reasons to head_table() ``rows`` in place; returns the
  across-head numbers (scoring.across_heads)."""
  per_head, across = scoring.field_scores(collected, schema.heads, top_k)
  for r in rows:
    scores = per_head[r["head"]]
    for key in ("balanced_accuracy", "average_precision", "roc_auc",
                "not_defined"):
      if key in scores:
        r[key] = scores[key]
  return across


def format_table(rows: list[dict], title: Optional[str] = None) -> str:
  """Plain-text table of head_table() rows (mA: add_field_scores')."""
  lines = [title] if title else []
  lines.append(f"{'head':<16} {'classes':>7} {'labelled':>9} {'accuracy':>9} "
               f"{'mA':>9} {'majority':>9}")
  for r in rows:
    acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
    bacc = ("-" if r.get("balanced_accuracy") is None
            else f"{r['balanced_accuracy']:.3f}")
    maj = f"{r['majority']:.3f}" if "majority" in r else "-"
    note = f"  ({r['note']})" if "note" in r else ""
    if "note" not in r and "balanced_accuracy" in r.get("not_defined", {}):
      note = f"  (mA not defined: {r['not_defined']['balanced_accuracy']})"
    lines.append(f"{r['head']:<16} {r['classes']:>7} "
                 f"{r['labelled']:>4}/{r['total']:<4} {acc:>9} {bacc:>9} "
                 f"{maj:>9}{note}")
  return "\n".join(lines)
