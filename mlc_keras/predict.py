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

Composed classes (compose.py): with --class_table, each line also has
"class": {"class": <name, or "unknown" below --threshold>, "score": p,
"scores": {<class>: p, ...}}, composed from the heads. An artefact exported
with --class_table (a "class" output, classes.csv beside it) gets the same
entry without the flag, from its own "class" output; --class_table
overrides it.
"""

from __future__ import annotations

import json
import sys
from typing import Iterator, Optional, Sequence, TextIO

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string(
    "model", None, "Model file or folder (.keras, model folder, SavedModel, "
    ".tflite, .onnx).", required=True)
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


def expand_inputs(inputs: Sequence[str], image_column: str = "image"
                  ) -> list[str]:
  """Files, folders and manifest CSVs -> image paths, in the order given."""
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  paths = []
  for item in inputs:
    paths += export_lib.list_images(item, image_column)
  return paths


def predict_files(predictor, paths: Sequence[str], batch_size: int = 32,
                  table=None, threshold: float = 0.5) -> Iterator[dict]:
  """Yields one result dict per path (see the module docstring). An
  unreadable image raises ExportError naming the file.

  table: a compose.ClassTable to compose the heads with (replacing any
  "class" output of the artefact); None uses the artefact's own table
  (predictor.class_table), if any.
  """
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  names = table if table is not None else predictor.class_table
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    images = export_lib.load_images(chunk, predictor.image_size)
    outputs = predictor(images)
    if table is not None:
      outputs = export_lib.compose_outputs(outputs, table)
    for i, path in enumerate(chunk):
      yield {"image": path,
             **export_lib.describe(outputs, i, predictor.schema, names,
                                   threshold)}


def run(model: str, inputs: Sequence[str], out: TextIO = sys.stdout,
        batch_size: int = 32, image_column: str = "image",
        class_table: Optional[str] = None, threshold: float = 0.5) -> int:
  """Loads ``model``, classifies ``inputs`` and writes JSON lines to ``out``.
  Returns the number of images. ``class_table``: a class table CSV to
  compose the heads with (see the module docstring).

  Raises ExportError, heads.SchemaError or compose.ClassTableError (a class
  table that does not fit the model's labels.json).
  """
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  threshold = export_lib.check_threshold(threshold)
  if not inputs:
    raise export_lib.ExportError("no images given")
  paths = expand_inputs(inputs, image_column)
  predictor = export_lib.load_predictor(model)
  why = getattr(predictor, "chosen_because", None)
  if why:  # a model folder: say which .keras file (stdout is the JSON)
    print(f"predict: {predictor.path}: {why}", file=sys.stderr)
  table = None
  if class_table:
    from mlc_keras import compose  # pylint: disable=g-import-not-at-top
    table = compose.load(class_table, predictor.schema)
  else:
    predictor.class_table  # a bad classes.csv fails before any image is read
  n = 0
  for result in predict_files(predictor, paths, batch_size, table, threshold):
    out.write(json.dumps(result) + "\n")
    n += 1
  out.flush()
  return n


def main(argv):
  from mlc_keras import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras import heads  # pylint: disable=g-import-not-at-top
  try:
    run(_MODEL.value, argv[1:], batch_size=_BATCH_SIZE.value,
        image_column=_IMAGE_COLUMN.value, class_table=_CLASS_TABLE.value,
        threshold=_THRESHOLD.value)
  except (export_lib.ExportError, heads.SchemaError,
          compose.ClassTableError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
