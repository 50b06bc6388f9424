"""evaluate(model_dir, ...): the library under the evaluate CLI.

Per head, on labelled samples only: labelled count, accuracy, balanced
accuracy (mA), top-k, macro-F1, per-class precision/recall/F1, confusion
matrix, expected calibration error (ECE), and AP / ROC-AUC for two-class
heads; across heads: mean mA, instance-based accuracy/precision/recall/F1 and
the share of images with every labelled head right (the numbers are
scoring.py's). Optionally the accuracy of classes composed through a class
table, with seen / unseen S, U, H against the run's training data, and
per-head temperature scaling. Artefacts written to model_dir:

  evaluation.json      every number
  evaluation.md        the same as readable tables
  confusion_<head>.png one confusion matrix per head
  curves.png           training curves from history.csv (when present)
  calibrated.keras     the model with fitted temperatures (with calibrate=True)
                       and/or the class output's stacking bias (stacking=True)
"""

from __future__ import annotations

import csv
import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras import calibrate as calibrate_lib
from mlc_keras import compose
from mlc_keras import config as config_lib
from mlc_keras import evaluation_md
from mlc_keras.data import combinations
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras import heads as heads_lib
from mlc_keras.modeling import metrics
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving
from mlc_keras import run_dir
from mlc_keras import scoring
from mlc_keras import suggest_lib

NO_LABELS = scoring.NO_LABELS
ECE_BINS = scoring.ECE_BINS


# --- numbers (scoring: numpy + scikit-learn) ----------------------------------------

confusion_matrix = scoring.confusion_matrix
precision_recall_f1 = scoring.precision_recall_f1
macro_f1 = scoring.macro_f1
expected_calibration_error = scoring.expected_calibration_error


def head_report(spec: heads_lib.HeadSpec, probs: np.ndarray, labels: np.ndarray,
                mask: np.ndarray, top_k: int = 5) -> dict:
  """Every per-head number (scoring.head_scores, plus NLL and the majority
  baseline), on the samples where ``mask`` is true; a tag head:
  scoring.tag_scores at its thresholds."""
  if spec.is_tags:
    return {"head": spec.name, "kind": heads_lib.TAGS,
            "classes": list(spec.classes),
            **scoring.tag_scores(probs, labels, mask, spec.classes,
                                 spec.tag_thresholds())}
  mask = np.asarray(mask, bool)
  row = {"head": spec.name, "classes": list(spec.classes),
         **scoring.head_scores(probs, labels, mask, spec.classes,
                               scoring.reported_top_k(spec.num_classes, top_k))}
  if not mask.any():
    row["note"] = NO_LABELS
    return row
  p, y = np.asarray(probs)[mask], np.asarray(labels)[mask]
  row.update(nll=calibrate_lib.nll(p, y),
             majority=metrics.majority(y, spec.num_classes))
  return row


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
  cm = confusion_matrix(t, pred, len(table))
  _, recall, _ = precision_recall_f1(cm)
  out.update(
      accuracy=float(np.mean(pred == t)),
      accuracy_with_unknown=float(np.mean(
          [n == table.classes[c] for n, c in zip(names, t)])),
      unknown_rate=float(np.mean([n == compose.UNKNOWN for n in names])),
      macro_f1=macro_f1(cm),
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
    with open(config, encoding="utf-8") as f:
      seed = json.load(f).get("train", {}).get("seed", 0)
    records, _ = sources.split_records(records, fraction, seed)
  records, held = _without_held_out(records, model_dir, schema)
  if held is not None:
    path = (f"{path} less the combinations of "
            f"{os.path.join(model_dir, combinations.HOLDOUT_FILE)}")
  slices = schema.label_slices()
  return ({h.name: records.labels[:, slices[h.name]] if h.is_tags
           else records.labels[:, slices[h.name].start] for h in schema.heads},
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
      ";".join(held["holdout"] + held["calibration"]), schema, path)
  records, _ = combinations.remove(records, schema, combos)
  return records, held


# --- pictures -------------------------------------------------------------------


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display on servers and CI
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str,
                   path: str) -> None:
  """Writes a confusion matrix PNG (rows: true class, columns: predicted)."""
  plt = _pyplot()
  n = len(classes)
  fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
  ax.imshow(cm, cmap="Blues")
  ax.set_xticks(range(n), classes, rotation=45, ha="right")
  ax.set_yticks(range(n), classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  top = cm.max() if cm.size else 0
  for i in range(n):
    for j in range(n):
      ax.text(j, i, str(cm[i][j]), ha="center", va="center",
              color="white" if top and cm[i][j] > top / 2 else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def read_history(path: str) -> dict[str, list[float]]:
  """history.csv (Keras CSVLogger) -> {column: values}."""
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  cols = {}
  for r in rows:
    for k, v in r.items():
      try:
        cols.setdefault(k, []).append(float(v))
      except (TypeError, ValueError):
        cols.setdefault(k, []).append(float("nan"))
  return cols


def plot_history(history: Mapping[str, Sequence[float]], path: str) -> bool:
  """Losses and accuracies per epoch; returns False when there is nothing to
  plot (no epochs)."""
  epochs = history.get("epoch")
  if not epochs:
    return False
  x = [e + 1 for e in epochs]
  losses = [k for k in history if k.endswith("loss")]
  accs = [k for k in history if k.endswith("acc") or "_top" in k]
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, keys, title in ((axes[0], losses, "loss"), (axes[1], accs, "accuracy")):
    for k in sorted(keys):
      ax.plot(x, history[k], marker="o", label=k,
              linestyle="--" if k.startswith("val_") else "-")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    if keys:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


# --- the report -------------------------------------------------------------------

markdown = evaluation_md.markdown


def report_from_collected(collected, schema: heads_lib.LabelSchema, *,
                          top_k: int = 5, table=None,
                          threshold: float = 0.5,
                          training: Optional[tuple] = None) -> dict:
  """The numbers of a report from metrics.collect() output; ``training``:
  see composed_report."""
  heads = [head_report(h, *collected[h.name], top_k=top_k) for h in schema.heads]
  report = {"heads": heads, "across_heads": scoring.across_heads(
      collected, schema.heads,
      {r["head"]: r["balanced_accuracy"] for r in heads
       if "balanced_accuracy" in r})}
  if table is not None:
    report["composed"] = composed_report(collected, table, threshold, training)
  return report


def default_manifest(model_dir: str) -> str:
  """The validation manifest of the run in ``model_dir`` (its config.json):
  val_manifest, else the demo set's val.csv when the run used the demo set."""
  d = run_dir.run_data(model_dir)
  if d is None:
    raise ValueError(f"{model_dir}: no config.json; give --manifest")
  if d.get("val_manifest"):
    val = d["val_manifest"]
    if not os.path.isfile(val) and not os.path.isabs(val):
      # config.json records absolute paths since issue 11; older ones hold
      # the path as given to train.
      raise ValueError(
          f"{model_dir}: its config.json names the validation manifest "
          f"{val!r}, relative to the folder training ran in and not found "
          f"from {os.getcwd()}; run from that folder or give --manifest")
    return val
  demo = run_dir.demo_dir(d)
  if demo:
    val = os.path.join(demo, "val.csv")
    if os.path.exists(val):
      return val
    raise ValueError(f"{model_dir}: the run used the demo set but {val} is "
                     "gone; give --manifest")
  raise ValueError(
      f"{model_dir}: the run had no separate validation manifest (it split "
      "its training data or used TFRecord/TFDS); give --manifest")


def calibration_split(n: int, seed: int = 0) -> np.ndarray:
  """[n] bool: the seeded half of a data set that temperatures are fitted
  on when no separate calibration manifest is given."""
  return np.random.default_rng(seed).permutation(n) < n // 2


def _rows(collected, rows: np.ndarray):
  return {h: tuple(a[rows] for a in v) for h, v in collected.items()}


def _collect(model, manifest: str, schema, image_column: str,
             batch_size: int):
  """(number of rows, metrics.collect() output) of ``model`` on ``manifest``."""
  records, _ = manifest_lib.read_manifest(manifest, schema, image_column)
  ds = pipeline.eval_dataset(sources.records_source(records), schema,
                             image_size=int(model.input_shape[1]),
                             batch_size=batch_size)
  return len(records), metrics.collect(model, ds, schema)


def calibration_report(fit_collected, shown, schema) -> tuple[dict, dict]:
  """({head: T} fitted on ``fit_collected``, {head: {"temperature", ECE and
  NLL before/after}} measured on ``shown``). Tag heads are not scaled:
  their fitted thresholds already set where a score becomes a decision."""
  softmax = [h.name for h in schema.heads if not h.is_tags]
  if not softmax:
    return {}, {}
  schema = schema.select(softmax)
  temps = calibrate_lib.fit_temperatures(fit_collected, schema)
  heads = {}
  for h in schema.names:
    probs, y, m = shown[h]
    entry = {"temperature": temps[h]}
    if m.any():
      after = calibrate_lib.scale(probs[m], temps[h])
      entry.update(
          ece_before=expected_calibration_error(probs[m], y[m]),
          ece_after=expected_calibration_error(after, y[m]),
          nll_before=calibrate_lib.nll(probs[m], y[m]),
          nll_after=calibrate_lib.nll(after, y[m]))
    heads[h] = entry
  return temps, heads


def _calibrate(model, model_dir: str, schema, manifest: str, collected,
               n: int, calibration_manifest: Optional[str], table,
               load) -> tuple[dict, dict]:
  """Fits temperatures; returns (the report's "calibration" entry, {head:
  T}) (_save_calibrated writes calibrated.keras). ``load(manifest)`` collects another manifest."""
  if calibration_manifest and (os.path.abspath(calibration_manifest)
                               != os.path.abspath(manifest)):
    _, fit_collected = load(calibration_manifest)
    shown = collected
    cal = {"fitted_on": calibration_manifest, "reported_on": manifest}
  else:
    # One data set: fit on a seeded half, report on the other half, so the
    # after-numbers are not measured on the data the temperature saw.
    fit_rows = calibration_split(n)
    fit_collected = _rows(collected, fit_rows)
    shown = _rows(collected, ~fit_rows)
    cal = {"fitted_on": f"{manifest} (seeded half: {int(fit_rows.sum())} rows)",
           "reported_on": f"{manifest} (the other {int((~fit_rows).sum())} rows)"}
  temps, cal["heads"] = calibration_report(fit_collected, shown, schema)
  cal["model"] = os.path.join(model_dir, run_dir.CALIBRATED_FILE)
  return cal, temps


def _save_calibrated(model, model_dir: str, temps, table, bias) -> str:
  """Writes calibrated.keras: ``model`` with the temperatures and the class
  output (its stacking bias, if any) inside, so every export applies them."""
  calibrated = outputs.with_temperatures(model, temps) if temps else model
  if table is not None:
    calibrated = outputs.with_class_output(calibrated, table, bias)
  path = os.path.join(model_dir, run_dir.CALIBRATED_FILE)
  calibrated.save(path)
  return path


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
    raise ValueError(
        f"--stacking: the calibration data ({fitted_on}) has rows of the "
        f"unseen class(es) {', '.join(both)} that are evaluated too; fit on "
        "validation data that holds out other combinations (train with "
        "--calibration_combinations, --holdout_combinations for the test's)")
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


def _stacking(model_dir, table, training, collected, manifest,
              calibration_manifest, load, temps) -> tuple[np.ndarray, dict]:
  """Calibrated stacking fitted on the calibration manifest (default: the
  run's validation data), reported on ``manifest``."""
  if table is None:
    raise ValueError("--stacking needs --class_table (the composed classes "
                     "whose seen ones get the bias)")
  if training[0] is None:
    raise ValueError(f"--stacking needs the run's training data to know the "
                     f"seen classes: {training[1]}")
  fit_on = calibration_manifest or default_manifest(model_dir)
  if os.path.abspath(fit_on) == os.path.abspath(manifest):
    raise ValueError(
        f"--stacking: the bias would be fitted on the data it is reported on "
        f"({manifest}); give --manifest=<test set> (the fit uses the run's "
        "validation data) or --calibration_manifest")
  seen = scoring.seen_classes(table.values, table.heads, training[0])
  _, fit_collected = load(fit_on)
  return stacking_report(table, seen, _scaled(fit_collected, temps),
                         _scaled(collected, temps), fit_on, manifest)


def _plot(report: dict, model_dir: str) -> None:
  for r in report["heads"]:
    if "confusion" in r:
      plot_confusion(np.array(r["confusion"]), r["classes"], r["head"],
                     os.path.join(model_dir, f"confusion_{r['head']}.png"))
  history = os.path.join(model_dir, "history.csv")
  if os.path.exists(history) and plot_history(
      read_history(history), os.path.join(model_dir, "curves.png")):
    report["curves"] = "curves.png"


def pseudo_label_report(collected, schema: heads_lib.LabelSchema,
                        threshold: float, temperatures: Mapping[str, float],
                        model: str) -> dict:
  """How accurate suggest's pseudo-labels at ``threshold`` would be, per
  head, on the evaluated cells a person labelled (suggest_lib
  .pseudo_label_accuracy), with the probabilities scaled by the
  ``temperatures`` of ``model`` (the calibrated file suggest would use)."""
  heads = {}
  for h in schema.heads:
    probs, labels, mask = collected[h.name]
    if h.name in temperatures and len(probs):
      probs = calibrate_lib.scale(probs, temperatures[h.name])
    heads[h.name] = suggest_lib.pseudo_label_accuracy(
        probs, np.where(mask, labels, heads_lib.MISSING), threshold)
  return {"threshold": float(threshold), "temperatures_from": model,
          "heads": heads}


pseudo_label_markdown = evaluation_md.pseudo_labels


def _pseudo_section(model_dir: str, collected, schema, threshold) -> dict:
  chosen, _ = run_dir.choose_model_file(model_dir)
  temperatures = (outputs.temperatures_of(saving.load_model(chosen))
                  if chosen.endswith(run_dir.CALIBRATED_FILE) else {})
  return pseudo_label_report(collected, schema, threshold, temperatures, chosen)


def _write(report: dict, model_dir: str) -> None:
  with open(os.path.join(model_dir, "evaluation.json"), "w",
            encoding="utf-8") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  with open(os.path.join(model_dir, "evaluation.md"), "w", encoding="utf-8") as f:
    f.write(markdown(report))
    if "pseudo_labels" in report:
      f.write(pseudo_label_markdown(report["pseudo_labels"]))


def evaluate(model_dir: str, manifest: Optional[str] = None,
             class_table: Optional[str] = None, *, threshold: float = 0.5,
             calibrate: bool = False,
             calibration_manifest: Optional[str] = None, batch_size: int = 32,
             top_k: int = 5, image_column: Optional[str] = None,
             plots: bool = True,
             pseudo_label_threshold: Optional[float] = None,
             stacking: bool = False) -> dict:
  """Evaluates ``<model_dir>/model.keras`` on ``manifest`` (default: the
  run's validation data) and writes the artefacts listed in the module
  docstring. With ``calibrate``, per-head temperatures are fitted on
  ``calibration_manifest`` (or on a seeded half of ``manifest``) and ECE/NLL
  before and after are reported on the rest. With ``stacking`` (and
  ``class_table``), calibrated stacking's bias is fitted on
  ``calibration_manifest`` (default: the run's validation data), reported on
  ``manifest`` and carried by calibrated.keras's class output. Returns the
  report dict (also evaluation.json)."""
  schema = heads_lib.LabelSchema.load(model_dir)
  image_column = image_column or run_dir.run_image_column(model_dir)
  table = compose.load(class_table, schema) if class_table else None
  manifest = manifest or default_manifest(model_dir)
  model_path = os.path.join(model_dir, "model.keras")
  model = saving.load_model(model_path)

  def load(path):
    return _collect(model, path, schema, image_column, batch_size)

  n, collected = load(manifest)
  training = (training_labels(model_dir, schema, image_column)
              if table is not None else None)
  report = {"model": model_path, "data": manifest, "samples": n,
            **report_from_collected(collected, schema, top_k=top_k,
                                    table=table, threshold=threshold,
                                    training=training)}
  temps, bias = {}, None
  if calibrate:
    report["calibration"], temps = _calibrate(
        model, model_dir, schema, manifest, collected, n,
        calibration_manifest, table, load)
  if stacking:
    bias, report["composed"]["stacking"] = _stacking(
        model_dir, table, training, collected, manifest, calibration_manifest,
        load, temps)
  if calibrate or stacking:
    report["calibrated_model"] = _save_calibrated(model, model_dir, temps,
                                                  table, bias)
  if pseudo_label_threshold is not None:
    report["pseudo_labels"] = _pseudo_section(model_dir, collected, schema,
                                              pseudo_label_threshold)
  if plots:
    _plot(report, model_dir)
  _write(report, model_dir)
  return report
