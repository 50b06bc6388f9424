r"""Suggests which blank manifest cells to label next (and pseudo-labels).

  python -m mlc_keras.suggest --model_dir=mlc_runs/demo \
      --manifest=pool.csv --budget=200 --output=to_label.csv
  python -m mlc_keras.suggest --model_dir=mlc_runs/demo --manifest=pool.csv \
      --budget=200 --output=to_label.csv \
      --pseudo_label_threshold=0.98 --pseudo_output=pool_pseudo.csv

Ranks every blank (image, head) cell of --manifest by the uncertainty of the
model's calibrated head (margin or entropy; see mlc_keras/labeling/suggest.py) and
writes the --budget most uncertain: --output is the pool's rows of those
images with the cells to fill left blank, <output>.cells.csv the ranked list
of cells. Run `evaluate --calibrate` first: the ranking uses calibrated.keras
when it is current.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from mlc_keras.cli import help as cli_help
from mlc_keras.core import errors

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "A training run's folder (or a .keras file with "
    "labels.json beside it).", required=True)
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "The pool: a manifest whose blank cells are the "
    "candidates (labelled cells are never suggested).", required=True)
_BUDGET = flags.DEFINE_integer("budget", 100, "How many cells to suggest.",
                               lower_bound=1)
_OUTPUT = flags.DEFINE_string(
    "output", "suggestions.csv", "The annotators' CSV (manifest format); the "
    "ranked cell list goes to <output stem>.cells.csv.")
_RULE = flags.DEFINE_enum(
    "rule", "margin", ["margin", "entropy"], "Uncertainty: margin = 1 - (p1 - "
    "p2); entropy = normalised Shannon entropy.")
_HEADS = flags.DEFINE_list("heads", [], "Only suggest cells of these heads "
                           "(default: every head).")
_PSEUDO = flags.DEFINE_float(
    "pseudo_label_threshold", None, "Also write --pseudo_output: the pool "
    "with every blank cell whose calibrated confidence is >= this filled, "
    "and <stem>.pseudo_cells.csv listing those cells.")
_PSEUDO_OUTPUT = flags.DEFINE_string(
    "pseudo_output", None, "Where the pseudo-labelled manifest goes.")
_IMAGE_COLUMN = flags.DEFINE_string(
    "image_column", None, "Manifest column holding image paths (default: the "
    "training run's, from its config.json; else 'image').")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch.",
                                   lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so --help answers without loading TensorFlow.
  from mlc_keras.runs import folder as run_dir  # pylint: disable=g-import-not-at-top
  from mlc_keras.labeling import suggest as suggest_lib  # pylint: disable=g-import-not-at-top
  try:
    column = _IMAGE_COLUMN.value
    if column is None:
      data = run_dir.run_data(_MODEL_DIR.value) if not _MODEL_DIR.value.endswith(
          ".keras") else None
      column = (data or {}).get("image_column") or "image"
    out = suggest_lib.suggest(
        _MODEL_DIR.value, _MANIFEST.value, _BUDGET.value, _OUTPUT.value,
        rule=_RULE.value, heads=[h.strip() for h in _HEADS.value if h.strip()],
        pseudo_label_threshold=_PSEUDO.value,
        pseudo_output=_PSEUDO_OUTPUT.value, image_column=column,
        batch_size=_BATCH_SIZE.value)
  except errors.MlcError as e:
    cli_help.fail(e)
  except OSError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if not out.calibrated:
    print(f"note: {out.model} is not calibrated (run evaluate --calibrate); "
          "uncertainties are those of the raw softmax")
  print(f"{out.blank_cells} blank cell(s) in {_MANIFEST.value}; "
        f"{len(out.suggested)} suggested ({_RULE.value})")
  if out.suggestions:
    print(f"  fill the blank cells of {out.suggestions} listed in {out.cells}")
  if out.pseudo:
    print(f"  {out.pseudo_count} cell(s) pseudo-labelled in {out.pseudo} "
          f"(listed in {out.pseudo_cells})")


# --help lists every flag of this module under these headings (cli_help).
_HELP_GROUPS = {
    "run folder": (_MODEL_DIR,),
    "data": (_MANIFEST, _IMAGE_COLUMN, _BATCH_SIZE),
    "suggestions": (_BUDGET, _RULE, _HEADS, _OUTPUT),
    "pseudo-labels": (_PSEUDO, _PSEUDO_OUTPUT),
}


def run():
  """The mlc-suggest console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
