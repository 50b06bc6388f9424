"""Predict's library: image listing and reading, and each image's outputs as
the JSON line the predict CLI prints (see mlc_keras/predict.py)."""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.labeling import compose
from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import folder as run_dir
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.data import headers
from mlc_keras.data import imagecheck
from mlc_keras.data import imageio
from mlc_keras.data import manifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Training's cap (DataConfig.max_image_pixels): a decompression bomb is
# refused from its header here as in training and serving.
MAX_IMAGE_PIXELS = config_lib.DataConfig.max_image_pixels
OVER_CAP = "too many pixels to decode"


# --- images ------------------------------------------------------------------------


def list_images(source: str, image_column: str = "image",
                skipped: Optional[collections.Counter] = None) -> list[str]:
  """Image paths from a folder (recursive), a manifest CSV (its image column,
  read by training's reader: relative paths against the CSV's folder) or a
  single image file. Raises ExportError, or manifest.DataError for a manifest
  training would refuse.

  A folder's files are picked by content, as training reads them: an image
  extension, or any other name whose first bytes are a JPEG/PNG/GIF/BMP/WebP
  (a PNG named .dat is an image). The rest is counted in ``skipped`` by
  reason."""
  if os.path.isdir(source):
    found = []
    for root, dirs, files in os.walk(source):
      dirs.sort()
      for name in sorted(files):
        path = os.path.join(root, name)
        why = _not_an_image(path, name)
        if why is None:
          found.append(path)
        elif skipped is not None:
          skipped[why] += 1
    if not found:
      raise ExportError(f"{source}: no images in this folder (none is a "
                        "JPEG, PNG, GIF, BMP or WebP by its content)")
    return found
  if not os.path.isfile(source):
    raise ExportError(f"{source}: no such image, folder or manifest")
  if source.lower().endswith(".csv"):
    return list(manifest.read_images(source, image_column).paths)
  return [source]


def _not_an_image(path: str, name: str) -> Optional[str]:
  if name.lower().endswith(IMAGE_EXTENSIONS):
    return None  # decoded, and reported per file if it fails
  try:
    with open(path, "rb") as f:
      prefix = f.read(16)
  except OSError as e:
    return f"unreadable ({e.strerror})"
  return None if headers.sniff(prefix) else "not an image by content"


def expand_inputs(inputs: Sequence[str], image_column: str = "image",
                  skipped: Optional[collections.Counter] = None
                  ) -> list[str]:
  """Files, folders and manifest CSVs -> image paths, in the order given
  (see list_images for ``skipped``)."""
  paths = []
  for item in inputs:
    paths += list_images(item, image_column, skipped)
  return paths


def read_image(path: str, image_size: int,
               max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> np.ndarray:
  """One file -> uint8 [S, S, 3] through imageio.decode_and_resize (the
  training path), after training's header check (imagecheck.check_file:
  a file over ``max_pixels`` is refused before it is decoded). Raises
  ExportError naming the file if it is refused or unreadable."""
  reason = imagecheck.check_file(path, max_pixels)
  if reason == "file not found" or reason.startswith("cannot read"):
    raise ExportError(f"{path}: cannot read image ({reason})")
  if reason.endswith("(max_image_pixels)"):
    raise ExportError(f"{path}: {OVER_CAP}: {reason}")
  if reason:
    raise ExportError(f"{path}: not a decodable image ({reason})")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ExportError(f"{path}: cannot read image ({e.strerror})") from None
  try:
    return imageio.decode_and_resize(tf.constant(data), image_size).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    raise ExportError(f"{path}: not a decodable image "
                      f"({imageio.op_reason(e)})") from None


def load_images(paths: Sequence[str], image_size: int) -> np.ndarray:
  """Decodes and resizes each path; uint8 [N, S, S, 3]."""
  if not paths:
    return np.zeros((0, image_size, image_size, 3), np.uint8)
  return np.stack([read_image(p, image_size) for p in paths])


# --- predictions as JSON -----------------------------------------------------------


def compose_outputs(outputs: Mapping[str, np.ndarray], table
                    ) -> dict[str, np.ndarray]:
  """``outputs`` with its "class" output (re)computed from the heads through
  ``table`` (a compose.ClassTable): what a model exported with that table
  would return."""
  heads = {k: v for k, v in outputs.items() if k != artefacts.CLASS_OUTPUT}
  probs = compose.compose_probs(heads, table).astype(np.float32)
  return {**outputs, artefacts.CLASS_OUTPUT: np.atleast_2d(probs)}


def describe(outputs: Mapping[str, np.ndarray], index: int,
             schema: heads_lib.LabelSchema, table=None,
             threshold: float = artefacts.DEFAULT_THRESHOLD) -> dict[str, Any]:
  """One image's outputs as the predict CLI prints them: a head becomes
  {"class", "score", "scores": {class: p}}, a tag head {"tags": [the tags
  whose score reaches their threshold in labels.json], "scores": {tag: p}};
  so does the "class" output when
  ``table`` (a compose.ClassTable) names its columns, its "class" being
  "unknown" when the best probability is below ``threshold``; any other
  output its raw values."""
  result = {}
  for name in _ordered(outputs, schema):
    row = np.asarray(outputs[name][index])
    if name in schema.names:
      head = schema.head(name)
      result[name] = head.kind_impl.describe(head, row)
    elif name == artefacts.CLASS_OUTPUT and table is not None:
      if row.shape != (len(table),):
        raise ExportError(
            f"the {artefacts.CLASS_OUTPUT!r} output has {row.shape[-1]} columns but the "
            f"class table {table.source} has {len(table)} classes")
      result[name] = {
          "class": compose.predict_classes(row, table, threshold)[0],
          "score": float(np.max(row)),
          "scores": {c: float(p) for c, p in zip(table.classes, row)}}
    else:
      result[name] = row.tolist() if row.dtype.kind != "S" else row.astype(str).tolist()
  return result


def _ordered(outputs: Mapping[str, np.ndarray],
             schema: heads_lib.LabelSchema) -> list[str]:
  heads = [n for n in schema.names if n in outputs]
  return heads + sorted(n for n in outputs if n not in schema.names)



# --- the whole predict -------------------------------------------------------------


def predict_files(predictor, paths: Sequence[str], batch_size: int = 32,
                  table=None, threshold: float = artefacts.DEFAULT_THRESHOLD
                  ) -> Iterator[dict]:
  """Yields one result dict per path (see mlc_keras/predict.py); an
  unreadable image yields {"image": path, "error": reason} and the others
  still get their result.

  table: a compose.ClassTable to compose the heads with (replacing any
  "class" output of the artefact); None uses the artefact's own table
  (predictor.class_table), if any.
  """
  names = table if table is not None else predictor.class_table
  for start in range(0, len(paths), batch_size):
    chunk, images, errors = paths[start:start + batch_size], [], {}
    for path in chunk:
      try:
        images.append(read_image(path, predictor.image_size))
      except ExportError as e:
        errors[path] = str(e)
    good = [p for p in chunk if p not in errors]
    outputs = predictor(np.stack(images)) if images else None
    if outputs is not None:
      # Every artefact: a line must never name classes of another model.
      run_dir.check_outputs_match_schema(
          {k: np.shape(v) for k, v in outputs.items()}, predictor.schema,
          predictor.path)
    if outputs is not None and table is not None:
      outputs = compose_outputs(outputs, table)
    for path in chunk:
      if path in errors:
        yield {"image": path, "error": errors[path]}
        continue
      yield {"image": path, **describe(outputs, good.index(path),
                                       predictor.schema, names, threshold)}


def run(model: str, inputs: Sequence[str], out: TextIO = sys.stdout,
        batch_size: int = 32, image_column: str = "image",
        class_table: Optional[str] = None,
        threshold: float = artefacts.DEFAULT_THRESHOLD,
        err: TextIO = sys.stderr) -> int:
  """Loads ``model``, classifies ``inputs`` and writes JSON lines to ``out``
  (notes to ``err``). Returns the number of images. ``class_table``: a class
  table CSV to compose the heads with (see mlc_keras/predict.py).

  An image that cannot be read or decoded gets a "predict: error: ..." line
  on ``err`` while the others are still predicted; at the end the counts
  (predicted, failed, skipped in folders and why) go to ``err`` and, if any
  image failed, ExportError is raised (naming the first).

  Raises ExportError, manifest.DataError, heads.SchemaError or
  compose.ClassTableError (a class table that does not fit the model's
  labels.json).
  """
  threshold = artefacts.check_threshold(threshold)
  if not inputs:
    raise ExportError("no images given")
  skipped = collections.Counter()
  paths = expand_inputs(inputs, image_column, skipped)
  predictor = predictors.load_predictor(model)
  why = getattr(predictor, "chosen_because", None)
  if why:  # a model folder: say which .keras file (stdout is the JSON)
    print(f"predict: {predictor.path}: {why}", file=err)
  table = None
  if class_table:
    table = compose.load(class_table, predictor.schema)
  else:
    predictor.class_table  # a bad classes.csv fails before any image is read
  n, failed = 0, []
  for result in predict_files(predictor, paths, batch_size, table, threshold):
    if "error" in result:
      failed.append(result["error"])
      print(f"predict: error: {result['error']}", file=err)
      continue
    out.write(json.dumps(result) + "\n")
    n += 1
  out.flush()
  _summary(n, failed, skipped, err)
  if failed:
    raise ExportError(f"{len(failed)} of {len(paths)} image(s) could not be "
                      f"predicted; the first: {failed[0]}")
  return n


def _summary(n: int, failed: list[str], skipped: collections.Counter,
             err: TextIO) -> None:
  parts = [f"{n} image(s) predicted"]
  if failed:
    kinds = collections.Counter(
        "not decodable" if "not a decodable image" in f else
        "over the pixel cap" if OVER_CAP in f else "unreadable"
        for f in failed)
    parts.append(f"{len(failed)} failed (" + ", ".join(
        f"{k}: {v}" for k, v in sorted(kinds.items())) + ")")
  if skipped:
    parts.append(f"{sum(skipped.values())} file(s) in folders skipped (" +
                 ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
                 + ")")
  print("predict: " + "; ".join(parts), file=err)
