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
  confusion_<head>.png one confusion matrix per softmax head, rows
                       normalised per true class, counts where they fit
  pr_<head>.png        precision-recall curves of each tag head, the chosen
                       thresholds marked
  curves.png           training curves from history.csv (when present), a
                       panel per head and one overall
  calibrated.keras     the model with fitted temperatures (with calibrate=True)
                       and/or the class output's stacking bias (stacking=True)
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np

from mlc_keras.evaluation import calibrate as calibrate_lib
from mlc_keras.labeling import compose
from mlc_keras.evaluation import composed as composed_lib
from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.evaluation import markdown as evaluation_md
from mlc_keras.evaluation import plots as plots_lib
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import metrics
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving
from mlc_keras.runs import folder as run_dir
from mlc_keras.evaluation import scoring
from mlc_keras.labeling import suggest as suggest_lib


# --- numbers (scoring: numpy + scikit-learn) ----------------------------------------


def head_report(spec: heads_lib.HeadSpec, probs: np.ndarray, labels: np.ndarray,
                mask: np.ndarray, top_k: int = 5) -> dict:
  """Every per-head number on the samples where ``mask`` is true, as the
  head's kind reports them: scoring.head_scores plus NLL and the majority
  baseline (an ordinal head adds its error in ranks, "mae"); a tag head:
  scoring.tag_scores at its thresholds."""
  return spec.kind_impl.report(spec, probs, labels, mask, top_k)


# --- the report -------------------------------------------------------------------

def report_from_collected(collected, schema: heads_lib.LabelSchema, *,
                          top_k: int = 5, table=None,
                          threshold: float = 0.5,
                          training: Optional[tuple] = None) -> dict:
  """The numbers of a report from metrics.collect() output; ``training``:
  see composed_lib.composed_report."""
  heads = [head_report(h, *collected[h.name], top_k=top_k) for h in schema.heads]
  report = {"heads": heads, "across_heads": scoring.across_heads(
      collected, schema.heads,
      {r["head"]: r["balanced_accuracy"] for r in heads
       if "balanced_accuracy" in r})}
  if table is not None:
    report["composed"] = composed_lib.composed_report(collected, table,
                                                      threshold, training)
  return report


# The validation rows a --val_fraction run split off its training manifest,
# written by evaluate so they are evaluated (and can be read) as a manifest.
VALIDATION_SPLIT_FILE = "validation_split.csv"


def default_manifest(model_dir: str) -> str:
  """The validation manifest of the run in ``model_dir`` (its config.json):
  val_manifest, else the demo set's val.csv when the run used the demo set,
  else for a run that split its training manifest (val_fraction) the rows
  it held out, written to VALIDATION_SPLIT_FILE in ``model_dir``."""
  d = run_dir.run_data(model_dir)
  if d is None:
    raise errors.SettingError(f"{model_dir}: no config.json; give `manifest`")
  if (d.get("manifest") and not d.get("val_manifest")
      and d.get("val_fraction", config_lib.DataConfig.val_fraction) > 0):
    return _validation_split(model_dir, d["manifest"])
  if d.get("val_manifest"):
    val = d["val_manifest"]
    if not os.path.isfile(val) and not os.path.isabs(val):
      # config.json records absolute paths since the run-folder checks; older ones hold
      # the path as given to train.
      raise errors.SettingError(
          f"{model_dir}: its config.json names the validation manifest "
          f"{val!r}, relative to the folder training ran in and not found "
          f"from {os.getcwd()}; run from that folder or give `manifest`")
    return val
  demo = run_dir.demo_dir(d)
  if demo:
    val = os.path.join(demo, "val.csv")
    if os.path.exists(val):
      return val
    raise errors.SettingError(f"{model_dir}: the run used the demo set but {val} is "
                              "gone; give `manifest`")
  raise errors.SettingError(
      f"{model_dir}: the run had no separate validation manifest (it split "
      "its training data or used TFRecord/TFDS); give `manifest`")


def _validation_split(model_dir: str, train_manifest: str) -> str:
  """Writes the validation rows of a val_fraction run as training chose
  them (setup.load_data on the run's config: the same seeded split, the
  same held-out combinations removed); returns the file's path."""
  if not os.path.isfile(train_manifest):
    raise errors.SettingError(
        f"{model_dir}: the run split its validation rows off "
        f"{train_manifest}, which is not found from {os.getcwd()}; give "
        "`manifest`")
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
  cfg = run_dir.run_config(model_dir)
  bundle = setup.load_data(cfg.data, cfg.train.seed, check=False)
  if bundle.val is None or bundle.val.records is None:
    raise errors.SettingError(f"{model_dir}: the run's `val_fraction` split of "
                              f"{train_manifest} holds no row; give `manifest`")
  path = os.path.join(model_dir, VALIDATION_SPLIT_FILE)
  manifest_lib.write_records(path, bundle.val.records, bundle.schema,
                             cfg.data.image_column)
  return path


def calibration_split(n: int, seed: int = 0) -> np.ndarray:
  """[n] bool: the seeded half of a data set that temperatures are fitted
  on when no separate calibration manifest is given."""
  return np.random.default_rng(seed).permutation(n) < n // 2


def _rows(collected, rows: np.ndarray):
  return {h: tuple(a[rows] for a in v) for h, v in collected.items()}


def _collect(model, manifest: str, schema, image_column: str,
             batch_size: int, max_pixels: Optional[int]):
  """(number of rows, metrics.collect() output) of ``model`` on ``manifest``,
  whose images first pass training's header check (a missing, cut short or
  over-the-cap file is a DataError naming its line, before any decode)."""
  records, _ = manifest_lib.read_manifest(manifest, schema, image_column)
  sources.check_images(records, max_pixels=max_pixels, level="header")
  ds = pipeline.eval_dataset(sources.records_source(records), schema,
                             image_size=int(model.input_shape[1]),
                             batch_size=batch_size)
  return len(records), metrics.collect(model, ds, schema)


def calibration_report(fit_collected, shown, schema) -> tuple[dict, dict]:
  """({head: T} fitted on ``fit_collected``, {head: {"temperature", ECE and
  NLL before/after}} measured on ``shown``). Tag heads are not scaled:
  their fitted thresholds already set where a score becomes a decision."""
  softmax = [h.name for h in schema.heads if h.kind_impl.single_label]
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
          ece_before=scoring.expected_calibration_error(probs[m], y[m]),
          ece_after=scoring.expected_calibration_error(after, y[m]),
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
  saving.embed_schema_file(path, os.path.join(model_dir, "labels.json"))
  return path


def _plot(report: dict, model_dir: str, collected) -> None:
  for r in report["heads"]:
    if "confusion" in r:
      plots_lib.plot_confusion(
          np.array(r["confusion"]), r["classes"], r["head"],
          os.path.join(model_dir, f"confusion_{r['head']}.png"))
    if "per_tag" in r:
      # The thresholds the report scored, so the marks match its numbers.
      plots_lib.plot_pr(*collected[r["head"]], r["classes"],
                        [r["per_tag"][t]["threshold"] for t in r["classes"]],
                        r["head"],
                        os.path.join(model_dir, f"pr_{r['head']}.png"))
  history = os.path.join(model_dir, "history.csv")
  if os.path.exists(history) and plots_lib.plot_history(
      plots_lib.read_history(history), os.path.join(model_dir, "curves.png"),
      [r["head"] for r in report["heads"]]):
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
    f.write(evaluation_md.markdown(report))
    if "pseudo_labels" in report:
      f.write(evaluation_md.pseudo_labels(report["pseudo_labels"]))


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
  # Its reports go there: a read-only folder is said before the work.
  run_dir.check_writable(model_dir)
  image_column = image_column or run_dir.run_image_column(model_dir)
  # The run's own pixel cap (a config.json without it: training's default).
  max_pixels = (run_dir.run_data(model_dir) or {}).get(
      "max_image_pixels", sources.MAX_IMAGE_PIXELS)
  table = compose.load(class_table, schema) if class_table else None
  manifest = manifest or default_manifest(model_dir)
  model_path = os.path.join(model_dir, "model.keras")
  model = run_dir.load_checked(model_path, schema)

  def load(path):
    return _collect(model, path, schema, image_column, batch_size,
                    max_pixels)

  n, collected = load(manifest)
  training = (composed_lib.training_labels(model_dir, schema, image_column)
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
    bias, report["composed"]["stacking"] = composed_lib.stacking(
        table, training, collected, manifest,
        calibration_manifest or default_manifest(model_dir), load, temps,
        model_dir, schema)
  if calibrate or stacking:
    report["calibrated_model"] = _save_calibrated(model, model_dir, temps,
                                                  table, bias)
  if pseudo_label_threshold is not None:
    report["pseudo_labels"] = _pseudo_section(model_dir, collected, schema,
                                              pseudo_label_threshold)
  if plots:
    _plot(report, model_dir, collected)
  _write(report, model_dir)
  return report
