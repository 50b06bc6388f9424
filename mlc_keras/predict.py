r"""Classifies images with any exported artefact; one JSON line per image.

  python -m mlc_keras.predict --model=mlc_runs/demo photo.jpg more/ list.csv
  python -m mlc_keras.predict --model=export/demo/1 photo.jpg
  python -m mlc_keras.predict --model=export/litert/demo/1/demo_int8.tflite a.png

--model: a .keras file, a model folder, a SavedModel folder (or a TF Serving
model folder: the highest version), a .tflite or a .onnx file. labels.json is
read from beside the artefact (a SavedModel's assets/). Images: files,
folders (recursive) or manifest CSVs (their image column). Every artefact
prints the same thing:

  {"image": "a.png", "<head>": {"class": "red", "score": 0.97,
                                "scores": {"blue": 0.01, ...}}, ...}
"""

from __future__ import annotations

import json
import sys
from typing import Iterator, Sequence, TextIO

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string(
    "model", None, "Model file or folder (.keras, model folder, SavedModel, "
    ".tflite, .onnx).", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per model call.",
                                   lower_bound=1)
_IMAGE_COLUMN = flags.DEFINE_string(
    "image_column", "image", "Image path column of manifest CSVs.")


def expand_inputs(inputs: Sequence[str], image_column: str = "image"
                  ) -> list[str]:
  """Files, folders and manifest CSVs -> image paths, in the order given."""
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  paths = []
  for item in inputs:
    paths += export_lib.list_images(item, image_column)
  return paths


def predict_files(predictor, paths: Sequence[str], batch_size: int = 32
                  ) -> Iterator[dict]:
  """Yields one result dict per path (see the module docstring). An
  unreadable image raises ExportError naming the file."""
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    images = export_lib.load_images(chunk, predictor.image_size)
    outputs = predictor(images)
    for i, path in enumerate(chunk):
      yield {"image": path,
             **export_lib.describe(outputs, i, predictor.schema)}


def run(model: str, inputs: Sequence[str], out: TextIO = sys.stdout,
        batch_size: int = 32, image_column: str = "image") -> int:
  """Loads ``model``, classifies ``inputs`` and writes JSON lines to ``out``.
  Returns the number of images."""
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  if not inputs:
    raise export_lib.ExportError("no images given")
  paths = expand_inputs(inputs, image_column)
  predictor = export_lib.load_predictor(model)
  n = 0
  for result in predict_files(predictor, paths, batch_size):
    out.write(json.dumps(result) + "\n")
    n += 1
  out.flush()
  return n


def main(argv):
  from mlc_keras import export_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras import heads  # pylint: disable=g-import-not-at-top
  try:
    run(_MODEL.value, argv[1:], batch_size=_BATCH_SIZE.value,
        image_column=_IMAGE_COLUMN.value)
  except (export_lib.ExportError, heads.SchemaError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
