"""Where examples come from, before any pixels are decoded.

Manifest records are screened (see imagecheck: every file's header checked
against a pixel cap, or every file decoded, so a bad file fails before
training, naming its line),
split into train/val, and wrapped with TFRecord shards (see tfrecords) and
TFDS splits as a ``Source``: a tf.data view of (encoded bytes or pixels,
labels) that the pipeline decodes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Callable, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import imagecheck
from mlc_keras.data import manifest

# Pillow's default Image.MAX_IMAGE_PIXELS: above it an image is treated as a
# decompression bomb (a small file that decodes to gigabytes).
MAX_IMAGE_PIXELS = config_lib.DataConfig.max_image_pixels


# --- screening: every image checked once before training -----------------------


def screen_images(records: manifest.Records, workers: Optional[int] = None,
                  max_pixels: Optional[int] = MAX_IMAGE_PIXELS,
                  level: str = "decode", cache_path: Optional[str] = None,
                  progress: Optional[TextIO] = None
                  ) -> list[manifest.Problem]:
  """Every record whose image is missing, not a regular file, empty, not a
  JPEG/PNG/GIF/BMP/WebP, larger than ``max_pixels`` (read from the header,
  before decoding) or, at ``level`` "decode", not decodable (at "header":
  cut short). The format is judged by content, not by the file extension.
  See imagecheck.check for ``cache_path`` and ``progress``."""
  return imagecheck.check(records, level, max_pixels, cache_path, workers,
                          progress=progress)


def check_images(records: manifest.Records, workers: Optional[int] = None,
                 max_pixels: Optional[int] = MAX_IMAGE_PIXELS,
                 level: str = "decode", cache_path: Optional[str] = None,
                 progress: Optional[TextIO] = None) -> None:
  """Checks every image once (see screen_images); raises DataError listing
  each file that is missing, too large or unusable, with its manifest
  line."""
  bad = screen_images(records, workers, max_pixels, level, cache_path,
                      progress)
  missing = [(b.line, b.path) for b in bad if b.reason == "file not found"]
  if missing:
    raise manifest.DataError(
        _listing(records.origin, "image file(s) not found", missing))
  if bad:
    raise manifest.DataError(
        _listing(records.origin, "image(s) could not be decoded",
                 [(b.line, f"{b.path} ({b.reason})") for b in bad]))


def write_quarantine(path: str, problems: Sequence[manifest.Problem]) -> None:
  """Writes quarantined rows as CSV: manifest, line, path, reason."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["manifest", "line", "path", "reason"])
    for b in problems:
      writer.writerow([b.origin, b.line, b.path, b.reason])


def _listing(origin: str, what: str, items: list, limit: int = 20) -> str:
  shown = "\n".join(f"  {origin}:{line}: {p}" for line, p in items[:limit])
  more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
  return f"{len(items)} {what}:\n{shown}{more}"


def split_records(records: manifest.Records, val_fraction: float,
                  seed: int) -> tuple[manifest.Records, manifest.Records]:
  """Deterministic train/val split by a seeded hash of each path (stable
  when rows are added or reordered)."""
  def bucket(p):
    digest = hashlib.sha256(f"{seed}:{p}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64
  is_val = np.array([bucket(p) < val_fraction for p in records.paths])
  return records.take(~is_val), records.take(is_val)


# --- sources: a tf.data view of records or TFDS ---------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
  """Elements (pixels_or_bytes, labels int32 [heads]) before decoding.

  ``encoded`` tells whether the first item is encoded bytes (manifests,
  TFRecords) or an already-decoded uint8 image (TFDS).
  """

  make: Callable[[], tf.data.Dataset]
  size: Optional[int]
  encoded: bool
  name: str
  # The records behind a manifest source: their labels count classes
  # without a pass over the data.
  records: Optional[manifest.Records] = None
  # The same elements before their files are read: (path, labels). A
  # shuffle of these holds paths, not every file's bytes (training reads
  # after shuffling: see pipeline.train_dataset).
  make_paths: Optional[Callable[[], tf.data.Dataset]] = None


def records_source(records: manifest.Records) -> Source:
  paths = np.array(records.paths, dtype=object)
  labels = records.labels

  def make_paths():
    return tf.data.Dataset.from_tensor_slices((paths, labels))

  def make():
    return make_paths().map(lambda p, y: (tf.io.read_file(p), y),
                            num_parallel_calls=tf.data.AUTOTUNE)
  return Source(make, len(records), True, records.origin, records,
                make_paths)


def parse_tfds_heads(spec: str) -> list[tuple[str, str]]:
  """"label:digit,other" -> [("label", "digit"), ("other", "other")]."""
  pairs = []
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    feature, _, head = item.partition(":")
    pairs.append((feature.strip(), (head or feature).strip()))
  if not pairs:
    raise manifest.DataError("`tfds_heads` is empty: name at least one feature")
  return pairs


def _import_tfds():
  """tensorflow_datasets, an optional extra ([tfds]): a DataError naming it
  when it is not installed."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name != "tensorflow_datasets":
      raise
    from mlc_keras.runs import preflight  # pylint: disable=g-import-not-at-top
    raise manifest.DataError(f"`tfds` {preflight.TFDS_INSTALL_HINT}") from None
  return tfds


def _tfds_schema(name: str, features, feature_heads: Sequence[tuple[str, str]],
                 image_feature: str) -> heads_lib.LabelSchema:
  tfds = _import_tfds()
  if image_feature not in features:
    raise manifest.DataError(
        f"TFDS {name!r} has no {image_feature!r} feature (features: "
        f"{sorted(features.keys())})")
  heads = []
  for feature, head in feature_heads:
    if feature not in features:
      raise manifest.DataError(
          f"`tfds_heads`: TFDS {name!r} has no feature {feature!r} "
          f"(features: {sorted(features.keys())})")
    f = features[feature]
    if not isinstance(f, tfds.features.ClassLabel):
      raise manifest.DataError(
          f"`tfds_heads`: feature {feature!r} of {name!r} is "
          f"{type(f).__name__}, not a ClassLabel")
    names = f.names if f.names else [str(i) for i in range(f.num_classes)]
    heads.append(heads_lib.HeadSpec(head, tuple(names)))
  return heads_lib.LabelSchema(tuple(heads))


def tfds_source(name: str, split: str, feature_heads: Sequence[tuple[str, str]],
                data_dir: Optional[str] = None,
                image_feature: str = "image",
                ) -> tuple[Source, heads_lib.LabelSchema]:
  """A TFDS split; each ClassLabel feature in ``feature_heads`` becomes a head
  whose classes are the feature's names."""
  tfds = _import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  schema = _tfds_schema(name, builder.info.features, feature_heads,
                        image_feature)
  try:
    size = builder.info.splits[split].num_examples
  except KeyError:  # not downloaded yet: counted after tfds.load prepares it
    size = None

  def make():
    # tfds.load downloads and prepares the data on first use.
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)

    def pick(ex):
      image = ex[image_feature]
      if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
      labels = tf.stack([tf.cast(ex[f], tf.int32) for f, _ in feature_heads])
      return image, labels
    return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
  return Source(make, size, False, f"tfds:{name}/{split}"), schema


def count(source: Source) -> int:
  if source.size is not None:
    return source.size
  return int(source.make().reduce(np.int64(0), lambda n, _: n + 1))


def all_labels(source: Source, schema: heads_lib.LabelSchema) -> np.ndarray:
  """Every example's labels, int [n, label_width] (-1: missing); read from
  the manifest's records where there are some, else one pass without
  decoding."""
  if source.records is not None:
    return source.records.labels
  if not count(source):
    return np.zeros((0, schema.label_width), np.int32)
  return np.stack(list(source.make().map(lambda _, y: y).as_numpy_iterator()))


def label_counts(source: Source,
                 schema: heads_lib.LabelSchema) -> list[np.ndarray]:
  """Per head, the number of labelled examples of each class (of a tag
  head: the number of labelled examples carrying each tag)."""
  labels = all_labels(source, schema)
  return [h.kind_impl.counts(h, labels[:, cols])
          for h, cols in zip(schema.heads, schema.label_slices().values())]
