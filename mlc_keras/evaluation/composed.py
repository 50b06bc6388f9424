"""The composed-class part of evaluate (evaluate_lib): accuracy of the
classes of a class table, seen / unseen S, U, H against the run's training
data (less its held-out combinations, data/combinations.py), each head's
accuracy on rows of seen vs unseen classes, and calibrated stacking fitted
on other unseen classes than the reported ones."""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from mlc_keras.evaluation import calibrate as calibrate_lib
from mlc_keras.labeling import compose
from mlc_keras.core import config as config_lib
from mlc_keras.data import combinations
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import sources
from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir
from mlc_keras.evaluation import scoring

NO_LABELS = scoring.NO_LABELS


def _rows(collected, rows: np.ndarray):
  return {h: tuple(a[rows] for a in v) for h, v in collected.items()}


def composed_report(collected, table, threshold: float,
                    training: Optional[tuple] = None) -> dict:
  """Accuracy of the table's classes on rows whose heads in the table are all
  labelled and whose labels match a table class. ``training``: (labels by
  head of the training data, its name) for seen / unseen, or (None, why)."""
  labels = {h: collected[h][1] for h in table.heads}
  masks = {h: collected[h][2] for h in table.heads}
  target, usable = compose.classes_of(labels, masks, table)
  rows = target >= 0
  out = {"table": table.source, "classes": list(table.classes),
         "threshold": threshold, "total": int(usable.size),
         "heads_labelled": int(usable.sum()),
         "no_matching_class": int((usable & ~rows).sum()),
         "evaluated": int(rows.sum()),
         "chance": 1.0 / len(table)}
  if not rows.any():
    out["note"] = NO_LABELS
    return out
  probs = compose.compose_probs({h: collected[h][0] for h in table.heads}, table)
  p, t = probs[rows], target[rows]
  pred = p.argmax(axis=1)
  names = compose.predict_classes(p, table, threshold)
  cm = scoring.confusion_matrix(t, pred, len(table))
  _, recall, _ = scoring.precision_recall_f1(cm)
  out.update(
      accuracy=float(np.mean(pred == t)),
      accuracy_with_unknown=float(np.mean(
          [n == table.classes[c] for n, c in zip(names, t)])),
      unknown_rate=float(np.mean([n == compose.UNKNOWN for n in names])),
      macro_f1=scoring.macro_f1(cm),
      per_class={c: {"support": int(cm[i].sum()), "recall": float(recall[i])}
                 for i, c in enumerate(table.classes)},
      confusion=cm.tolist())
  if training is not None:
    out["seen_unseen"] = seen_unseen(table, t, pred, *training,
                                     collected=_rows(collected, rows))
  return out


def seen_unseen(table, target: np.ndarray, pred: np.ndarray,
                train_labels: Optional[dict], source: str,
                collected=None) -> dict:
  """scoring.gzsl_scores of the evaluated rows, classes seen in
  ``train_labels`` ({head: [N], -1 = missing}); without them, a not-defined
  entry saying why (``source``). ``collected``: the evaluated rows'
  {head: (probs, labels, mask)}, for each head's accuracy on rows of seen
  vs unseen classes ("heads")."""
  if train_labels is None:
    return {"seen": None, "unseen": None, "harmonic": None,
            "not_defined": {"seen_unseen": source}}
  seen = scoring.seen_classes(table.values, table.heads, train_labels)
  out = {"training_data": source,
         **scoring.gzsl_scores(target, pred, seen, table.classes)}
  if collected is not None:
    out["heads"] = scoring.head_accuracy_by_split(collected, seen[target])
  return out


def training_labels(model_dir: str, schema: heads_lib.LabelSchema,
                    image_column: str) -> tuple[Optional[dict], str]:
  """({head: [N] labels, -1 = missing} of the images the run in ``model_dir``
  trained on, the manifest's path), or (None, why not). The training
  manifest comes from config.json (the demo set's train.csv for a demo run),
  less the validation share when the run split it off."""
  config = os.path.join(model_dir, run_dir.CONFIG_FILE)
  d = run_dir.run_data(model_dir)
  if d is None:
    return None, f"{config}: no such file, so the training data is unknown"
  if d.get("tfrecord") or d.get("tfds"):
    return None, ("the run trained on TFRecord/TFDS data; seen classes are "
                  "read from a training manifest")
  path = d.get("manifest") or os.path.join(run_dir.demo_dir(d), "train.csv")
  if not os.path.isfile(path):
    rel = ("" if os.path.isabs(path) else
           f", relative to the folder training ran in, not found from "
           f"{os.getcwd()}")
    return None, (f"{path} (the run's training manifest, from {config}"
                  f"{rel}) is gone")
  records, _ = manifest_lib.read_manifest(path, schema, image_column)
  fraction = d.get("val_fraction", config_lib.DataConfig.val_fraction)
  if d.get("manifest") and not d.get("val_manifest") and fraction > 0:
    seed = run_dir.run_config(model_dir).train.seed
    records, _ = sources.split_records(records, fraction, seed)
  records, held = _without_held_out(records, model_dir, schema)
  if held is not None:
    path = (f"{path} less the combinations of "
            f"{os.path.join(model_dir, combinations.HOLDOUT_FILE)}")
  slices = schema.label_slices()
  # A single-label head's labels are one column, a tag head's a 0/1 matrix.
  return ({h.name: records.labels[:, slices[h.name].start]
           if h.kind_impl.single_label else records.labels[:, slices[h.name]]
           for h in schema.heads},
          path)


def _without_held_out(records, model_dir: str, schema):
  """``records`` less the combinations the run held out of training
  (its holdout.json), as training removed them; (records, report or None)."""
  path = os.path.join(model_dir, combinations.HOLDOUT_FILE)
  if not os.path.isfile(path):
    return records, None
  with open(path, encoding="utf-8") as f:
    held = json.load(f)
  combos = combinations.parse(
      ";".join(held.get("holdout", []) + held.get("calibration", [])),
      schema, path)
  records, _ = combinations.remove(records, schema, combos)
  return records, held


def held_out_rows(collected, model_dir: str, schema) -> np.ndarray:
  """[N] bool: the rows of ``collected`` that may carry a combination the
  run held out of training and validation (holdout.json's "holdout"), as
  the split removed them from its validation data."""
  n = len(next(iter(collected.values()))[1])
  path = os.path.join(model_dir, combinations.HOLDOUT_FILE)
  if not os.path.isfile(path):
    return np.zeros(n, bool)
  with open(path, encoding="utf-8") as f:
    names = json.load(f).get("holdout", [])
  combos = combinations.parse(";".join(names), schema, path)
  if not combos:
    return np.zeros(n, bool)
  labels = {h: np.where(np.asarray(m, bool), y, heads_lib.MISSING)
            for h, (_, y, m) in collected.items() if np.ndim(y) == 1}
  return combinations.carries(labels, combos)[1]


def _scaled(collected, temps):
  return {h: ((calibrate_lib.scale(p, temps[h]) if h in temps and len(p)
               else p), y, m) for h, (p, y, m) in collected.items()}


def _table_rows(collected, table):
  """(target [R], {head: probs [R, k]}) of the rows matching a table class."""
  target, _ = compose.classes_of({h: collected[h][1] for h in table.heads},
                                 {h: collected[h][2] for h in table.heads},
                                 table)
  rows = target >= 0
  return target[rows], {h: collected[h][0][rows] for h in table.heads}


def stacking_report(table, seen: np.ndarray, fit_collected, shown_collected,
                    fitted_on: str, reported_on: str) -> tuple[np.ndarray, dict]:
  """(bias [C], the report's "stacking" entry): calibrated stacking's gamma
  fitted on ``fit_collected`` (calibrate.fit_stacking), S / U / H with it on
  ``shown_collected``. The unseen classes fitted on must not be the shown
  ones: a bias tuned on the test's own unseen classes would flatter U."""
  ft, fprobs = _table_rows(fit_collected, table)
  st, sprobs = _table_rows(shown_collected, table)
  both = sorted({table.classes[c] for c in set(ft) & set(st) if not seen[c]})
  if both:
    raise errors.SettingError(
        f"`stacking`: the calibration data ({fitted_on}) has rows of the "
        f"unseen class(es) {', '.join(both)} that are evaluated too; fit on "
        "validation data that holds out other combinations (train with "
        "`calibration_combinations`, `holdout_combinations` for the test's)")
  gamma, fit = calibrate_lib.fit_stacking(
      compose.compose_scores(fprobs, table), ft, seen, table.classes)
  bias = compose.stacking_bias(seen, gamma)
  pred = compose.compose_probs(sprobs, table, bias).argmax(axis=1)
  return bias, {
      "gamma": gamma, "fitted_on": fitted_on, "reported_on": reported_on,
      "fit_unseen_classes": sorted(table.classes[c] for c in set(ft)
                                   if not seen[c]),
      "fit": fit, "accuracy": float(np.mean(pred == st)) if len(st) else None,
      **scoring.gzsl_scores(st, pred, seen, table.classes)}


def stacking(table, training, collected, manifest: str, fit_on: str, load,
             temps, model_dir: str, schema) -> tuple[np.ndarray, dict]:
  """Calibrated stacking fitted on the manifest ``fit_on`` (collected by
  ``load``) less the rows of the run's held-out combinations (the
  validation data training saw), reported on ``collected`` (from
  ``manifest``); both scaled by ``temps`` ({head: T}) as calibrated.keras
  will scale them."""
  if table is None:
    raise errors.SettingError("`stacking` needs `class_table` (the composed classes "
                              "whose seen ones get the bias)")
  if training[0] is None:
    raise errors.SettingError(f"`stacking` needs the run's training data to know the "
                              f"seen classes: {training[1]}")
  if os.path.abspath(fit_on) == os.path.abspath(manifest):
    raise errors.SettingError(
        f"`stacking`: the bias would be fitted on the data it is reported on "
        f"({manifest}); give `manifest`=<test set> (the fit uses the run's "
        "validation data) or `calibration_manifest`")
  seen = scoring.seen_classes(table.values, table.heads, training[0])
  _, fit_collected = load(fit_on)
  held = held_out_rows(fit_collected, model_dir, schema)
  if held.any():
    fit_collected = _rows(fit_collected, ~held)
    fit_on = f"{fit_on} less {int(held.sum())} rows of held-out combinations"
  return stacking_report(table, seen, _scaled(fit_collected, temps),
                         _scaled(collected, temps), fit_on, manifest)
