r"""Evaluates a trained model: per-head numbers, plots and composed classes.

  python -m mlc_keras.evaluate --model_dir=mlc_runs/demo
  python -m mlc_keras.evaluate --model_dir=mlc_runs/demo \
      --manifest=mlc_runs/demo_data/heldout.csv --class_table=classes.csv
  python -m mlc_keras.evaluate --model_dir=mlc_runs/demo --calibrate

Writes evaluation.json, evaluation.md, confusion_<head>.png and curves.png
into --model_dir (and calibrated.keras with --calibrate).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from mlc_keras.cli import help as cli_help
from mlc_keras.core import errors

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A training run's folder (model.keras, labels.json, "
    "config.json).", required=True)
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "CSV to evaluate on. Default: the run's validation "
    "manifest (the demo set's val.csv for a demo run).")
_CLASS_TABLE = flags.DEFINE_string(
    "class_table", None, "Class table CSV (class name, then one column per "
    "head; blank = does not matter): adds composed-class accuracy.")
_THRESHOLD = flags.DEFINE_float(
    "threshold", 0.5, "Composed classes: below this probability the answer "
    "is 'unknown'.")
_CALIBRATE = flags.DEFINE_bool(
    "calibrate", False, "Fit a temperature per head (see "
    "--calibration_manifest), report ECE before/after on data it was not "
    "fitted on and write calibrated.keras.")
_CALIBRATION_MANIFEST = flags.DEFINE_string(
    "calibration_manifest", None, "With --calibrate (or --stacking): CSV to "
    "fit the temperatures (the stacking bias) on (e.g. the validation set, when --manifest is a test set). "
    "Default: a seeded half of --manifest, the other half is reported on.")
_STACKING = flags.DEFINE_bool(
    "stacking", False, "With --class_table: calibrated stacking, a bias "
    "against the classes seen in training fitted (for the best H) on "
    "--calibration_manifest (default: the run's validation data, whose "
    "unseen classes come from train --calibration_combinations), reported on "
    "--manifest and written into calibrated.keras's class output.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.",
                                   lower_bound=1)
_TOP_K = flags.DEFINE_integer("top_k", 5, "k of top-k accuracy.", lower_bound=1)
_PSEUDO = flags.DEFINE_float(
    "pseudo_label_threshold", None, "Also report how accurate suggest's "
    "pseudo-labels at this calibrated confidence would be on the evaluated "
    "(labelled) cells: coverage and accuracy per head.")
_IMAGE_COLUMN = flags.DEFINE_string(
    "image_column", None, "Manifest column holding image paths (default: the "
    "training run's --image_column, from its config.json).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mlc_keras.evaluation import report as evaluate_lib  # pylint: disable=g-import-not-at-top
  try:
    evaluate_lib.evaluate(
        _MODEL_DIR.value, _MANIFEST.value, _CLASS_TABLE.value,
        threshold=_THRESHOLD.value, calibrate=_CALIBRATE.value,
        calibration_manifest=_CALIBRATION_MANIFEST.value,
        batch_size=_BATCH_SIZE.value, top_k=_TOP_K.value,
        image_column=_IMAGE_COLUMN.value,
        pseudo_label_threshold=_PSEUDO.value, stacking=_STACKING.value)
  except errors.MlcError as e:
    cli_help.fail(e)
  with open(f"{_MODEL_DIR.value}/evaluation.md", encoding="utf-8") as f:
    print(f.read())


# --help lists every flag of this module under these headings (cli_help).
_HELP_GROUPS = {
    "run folder": (_MODEL_DIR,),
    "data": (_MANIFEST, _IMAGE_COLUMN, _BATCH_SIZE, _TOP_K),
    "calibration": (_CALIBRATE, _CALIBRATION_MANIFEST, _PSEUDO),
    "composed classes": (_CLASS_TABLE, _THRESHOLD, _STACKING),
}


def run():
  """The mlc-evaluate console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
