r"""Classifies images with any exported artefact; one JSON line per image.

  python -m mlc_keras.predict --model=mlc_runs/demo photo.jpg more/ list.csv
  python -m mlc_keras.predict --model=export/demo/1 photo.jpg
  python -m mlc_keras.predict --model=export/litert/demo/1/demo_int8.tflite a.png
  python -m mlc_keras.predict --model=mlc_runs/demo --class_table=classes.csv a.png

--model: a .keras file, a model folder (calibrated.keras if evaluate
--calibrate wrote it after the last training, else model.keras, as export
picks; the choice goes to stderr), a SavedModel folder (or a TF Serving
model folder: the highest version), a .tflite or a .onnx file. labels.json is
read from beside the artefact (a SavedModel's assets/). Images: files,
folders (recursive) or manifest CSVs (their image column). Every artefact
prints the same thing:

  {"image": "a.png", "<head>": {"class": "red", "score": 0.97,
                                "scores": {"blue": 0.01, ...}}, ...}

A tag head prints {"tags": [<tags scoring at least their threshold in
labels.json>], "scores": {<tag>: p, ...}}.

Composed classes (compose.py): with --class_table, each line also has
"class": {"class": <name, or "unknown" below --threshold>, "score": p,
"scores": {<class>: p, ...}}, composed from the heads. An artefact exported
with --class_table (a "class" output, classes.csv beside it) gets the same
entry without the flag, from its own "class" output; --class_table
overrides it.
"""

from __future__ import annotations

import sys

from absl import flags

from mlc_keras.cli import help as cli_help
from mlc_keras.core import errors
from mlc_keras.exporters import formats as formats_lib  # no TensorFlow

_MODEL = flags.DEFINE_string(
    "model", None, "Model file or folder (.keras, model folder, "
    + ", ".join(f.suffix or f.title for f in formats_lib.registered())
    + ").", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per model call.",
                                   lower_bound=1)
_IMAGE_COLUMN = flags.DEFINE_string(
    "image_column", "image", "Image path column of manifest CSVs.")
_CLASS_TABLE = flags.DEFINE_string(
    "class_table", None, "Class table CSV (class name, then one column per "
    "head; blank = does not matter): adds a composed \"class\" entry. "
    "Default: the classes.csv of an artefact exported with a class table.")
_THRESHOLD = flags.DEFINE_float(
    "threshold", 0.5, "Composed classes: below this probability the answer "
    "is 'unknown'.", lower_bound=0.0, upper_bound=1.0)


def main(argv):
  # Imported here so --help answers without loading TensorFlow.
  from mlc_keras.inference import files as predict_lib  # pylint: disable=g-import-not-at-top
  try:
    predict_lib.run(_MODEL.value, argv[1:], batch_size=_BATCH_SIZE.value,
                    image_column=_IMAGE_COLUMN.value,
                    class_table=_CLASS_TABLE.value, threshold=_THRESHOLD.value)
  except errors.MlcError as e:
    cli_help.fail(e)


# --help lists every flag of this module under these headings (cli_help).
_HELP_GROUPS = {
    "model": (_MODEL,),
    "data": (_IMAGE_COLUMN, _BATCH_SIZE),
    "composed classes": (_CLASS_TABLE, _THRESHOLD),
}


def run():
  """The mlc-predict console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
