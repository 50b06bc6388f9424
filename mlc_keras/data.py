"""Data: manifest | TFRecord | TFDS -> decode -> resize/augment -> batches.

Every element the model sees is ``(image, {head: label}, {head: weight})``:
``image`` is uint8 [S, S, 3], ``label`` an int32 class index and ``weight`` a
float32 that is 0 wherever the label is missing. Missing labels are -1 in
stored data; the loss is handed a clamped 0 there (a -1 crashes it on CPU) and
the zero weight removes it from loss, gradients and metrics.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import hashlib
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from mlc_keras import config as config_lib
from mlc_keras import heads as heads_lib
from mlc_keras import imageio

AUTOTUNE = tf.data.AUTOTUNE
AUGMENTATIONS = ("flip", "crop", "colour")
_GRAPH_SEED = 87654321


class DataError(ValueError):
  """Input data that cannot be used; the message names the file and row."""


# --- records: what a source holds before any pixels are read ----------------


@dataclasses.dataclass(frozen=True)
class Records:
  """Image paths and their labels ([N, heads] int32, -1 = missing)."""

  paths: tuple[str, ...]
  labels: np.ndarray
  # The manifest line of each record, for error messages.
  lines: tuple[int, ...]
  origin: str

  def __len__(self) -> int:
    return len(self.paths)

  def take(self, mask: np.ndarray) -> "Records":
    idx = np.flatnonzero(mask)
    return Records(tuple(self.paths[i] for i in idx), self.labels[idx],
                   tuple(self.lines[i] for i in idx), self.origin)


def read_manifest(path: str,
                  schema: Optional[heads_lib.LabelSchema] = None,
                  image_column: str = "image",
                  label_columns: Optional[Sequence[str]] = None,
                  image_root: Optional[str] = None,
                  quarantine: Optional[list] = None,
                  ) -> tuple[Records, heads_lib.LabelSchema]:
  """Reads a CSV manifest: an image path column and one column per head.

  Relative image paths resolve against the manifest's folder. A blank cell is
  a missing label. Without a ``schema`` one is inferred (sorted distinct
  values of each label column); with one, its heads must all be columns and
  every non-blank value must be one of its classes.

  Args:
    path: the CSV file.
    schema: the heads to read, or None to infer them.
    image_column: name of the image path column.
    label_columns: columns to use as heads when inferring (default: all
      columns but the image column).
    image_root: if given, every image path must resolve (symlinks followed)
      inside this folder.
    quarantine: if a list, rows whose image path escapes ``image_root`` or
      repeats an earlier row are appended to it as ``Problem``s and left out,
      instead of raising.

  Returns:
    (records, schema).

  Raises:
    DataError: naming the file, line and column of the first problem.
  """
  header, body = read_table(path, image_column)
  root = os.path.dirname(os.path.abspath(path))
  col = {name: i for i, name in enumerate(header)}
  if schema is None:
    names = list(label_columns) if label_columns else [
        c for c in header if c != image_column]
    for n in names:
      if n not in col:
        raise DataError(f"{path}: no column {n!r}; columns are {header}")
    if not names:
      raise DataError(f"{path}: no label columns besides {image_column!r}")
    try:
      schema = heads_lib.LabelSchema.infer(
          {n: [r[col[n]].strip() for _, r in body] for n in names})
    except heads_lib.SchemaError as e:
      raise DataError(f"{path}: {e}") from None
  else:
    missing = [h for h in schema.names if h not in col]
    if missing:
      raise DataError(
          f"{path}: head(s) {missing} from the heads file are not columns of "
          f"the manifest (columns: {header})")
  labels = np.full((len(body), len(schema)), heads_lib.MISSING, np.int32)
  paths, lines, keep = [], [], []
  real_root = os.path.realpath(image_root) if image_root else None
  first_line = {}
  for j, (line, r) in enumerate(body):
    cell = r[col[image_column]].strip()
    if not cell:
      raise DataError(f"{path}:{line}: blank {image_column!r} cell")
    full = cell if os.path.isabs(cell) else os.path.join(root, cell)
    real = os.path.realpath(full)
    problem = None
    if real_root and os.path.commonpath([real_root, real]) != real_root:
      problem = f"resolves to {real}, outside --image_root {real_root}"
    elif real in first_line:
      problem = f"same image as line {first_line[real]}"
    else:
      first_line[real] = line
    if problem:
      if quarantine is None:
        raise DataError(f"{path}:{line}: {cell}: {problem}")
      quarantine.append(Problem(path, line, full, problem))
    keep.append(problem is None)
    paths.append(full)
    lines.append(line)
    for k, head in enumerate(schema.heads):
      value = r[col[head.name]].strip()
      if value:
        try:
          labels[j, k] = head.index(value)
        except heads_lib.SchemaError as e:
          raise DataError(
              f"{path}:{line}: column {head.name!r}: {e}. The classes come "
              "from --heads_file or the training manifest: fix the cell, or "
              "list the class in a --heads_file and train again") from None
  records = Records(tuple(paths), labels, tuple(lines), path)
  return records.take(np.array(keep, bool)), schema


def read_table(path: str, image_column: str = "image"
               ) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """A manifest's header (names stripped) and its non-blank rows as (line,
  cells), checked as training checks them: UTF-8, named and distinct columns,
  an image column, at least one row, one cell per column. Raises DataError."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: manifest not found")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except UnicodeDecodeError as e:
    line = _line_of_offset(path, e.start)
    raise DataError(
        f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save "
        "the manifest as UTF-8") from None
  if not rows or not any(cell.strip() for cell in rows[0]):
    raise DataError(f"{path}: empty manifest (no header row)")
  header = [c.strip() for c in rows[0]]
  for i, name in enumerate(header):
    if not name:
      raise DataError(
          f"{path}:1: column {i + 1} has no name (columns are {header}); name "
          "it or delete it")
    if header.index(name) != i:
      raise DataError(
          f"{path}:1: columns {header.index(name) + 1} and {i + 1} are both "
          f"named {name!r}; rename one")
  if image_column not in header:
    raise DataError(
        f"{path}: no image column {image_column!r}; columns are {header} "
        "(set --image_column)")
  body = [(i + 2, r) for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
  if not body:
    raise DataError(f"{path}: the manifest has a header but no rows")
  for line, r in body:
    if len(r) != len(header):
      raise DataError(
          f"{path}:{line}: {len(r)} cells, the header has {len(header)}")
  return header, body


def image_paths(path: str, image_column: str = "image") -> list[str]:
  """The image paths a manifest lists, relative ones resolved against its
  folder, as read_manifest resolves them; its other columns are not read."""
  header, body = read_table(path, image_column)
  root = os.path.dirname(os.path.abspath(path))
  i = header.index(image_column)
  paths = []
  for line, r in body:
    cell = r[i].strip()
    if not cell:
      raise DataError(f"{path}:{line}: blank {image_column!r} cell")
    paths.append(cell if os.path.isabs(cell) else os.path.join(root, cell))
  return paths


def _line_of_offset(path: str, offset: int) -> int:
  with open(path, "rb") as f:
    return f.read(offset).count(b"\n") + 1


# Pillow's default Image.MAX_IMAGE_PIXELS: above it an image is treated as a
# decompression bomb (a small file that decodes to gigabytes).
MAX_IMAGE_PIXELS = config_lib.DataConfig.max_image_pixels


@dataclasses.dataclass(frozen=True)
class Problem:
  """One unusable manifest row: where it is and why."""

  origin: str
  line: int
  path: str
  reason: str


def op_reason(e: tf.errors.OpError) -> str:
  """TF's reason for a failed op, without its "{{function_node ...}}" and
  "[Op:...]" noise (first line, at most 160 characters)."""
  first = e.message.splitlines()[0] if e.message else type(e).__name__
  return re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", first).strip()[:160]


def screen_images(records: Records, workers: int = 8,
                  max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> list[Problem]:
  """Every record whose image is missing, empty, not a JPEG/PNG/GIF/BMP/WebP,
  larger than ``max_pixels`` (read from the header, before decoding) or not
  decodable (truncated, corrupt). The format is judged by content, not by
  the file extension."""

  def screen(item):
    line, p = item
    if not os.path.isfile(p):
      return Problem(records.origin, line, p, "file not found")
    try:
      # The whole file: a JPEG's frame header can sit behind 64 KB+ of EXIF
      # and ICC segments. The pixel limit guards the decode, not this read.
      with open(p, "rb") as f:
        encoded = f.read()
      if not encoded:
        return Problem(records.origin, line, p, "empty file")
      # A JPEG whose frame header cannot be read raises: "cannot decode".
      # The serving signature's check: a GIF counts every frame, at the size
      # of the largest (imageio.decoded_extent).
      width, height, frames = imageio.decoded_extent(
          tf.constant(encoded)).numpy().tolist()
      if width < 0:
        return Problem(records.origin, line, p,
                       "not a JPEG, PNG, GIF, BMP or WebP image (or its header "
                       "is cut short)")
      pixels = width * height * frames
      if max_pixels and pixels > max_pixels:
        size = f"{width}x{height}" + (f" x {frames} frames" if frames > 1
                                      else "")
        return Problem(
            records.origin, line, p,
            f"{size} = {pixels:,} pixels is over the limit of "
            f"{max_pixels:,} (--max_image_pixels)")
      imageio.decode(tf.constant(encoded))
    except OSError as e:
      return Problem(records.origin, line, p, f"cannot read: {e.strerror}")
    except tf.errors.OpError as e:
      return Problem(records.origin, line, p, "cannot decode: " + op_reason(e))
    return None

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    found = pool.map(screen, zip(records.lines, records.paths))
    return [b for b in found if b]


def check_images(records: Records, workers: int = 8,
                 max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> None:
  """Reads and decodes every image once; raises DataError listing each file
  that is missing, too large or cannot be decoded, with its manifest line
  (see screen_images)."""
  bad = screen_images(records, workers, max_pixels)
  missing = [(b.line, b.path) for b in bad if b.reason == "file not found"]
  if missing:
    raise DataError(_listing(records.origin, "image file(s) not found", missing))
  if bad:
    raise DataError(_listing(records.origin, "image(s) could not be decoded",
                             [(b.line, f"{b.path} ({b.reason})") for b in bad]))


def write_quarantine(path: str, problems: Sequence[Problem]) -> None:
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


def split_records(records: Records, val_fraction: float,
                  seed: int) -> tuple[Records, Records]:
  """Deterministic train/val split by a seeded hash of each path (stable
  when rows are added or reordered)."""
  def bucket(p):
    digest = hashlib.sha256(f"{seed}:{p}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64
  is_val = np.array([bucket(p) < val_fraction for p in records.paths])
  return records.take(~is_val), records.take(is_val)


# --- sources: a tf.data view of records, TFRecords or TFDS -------------------


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
  # [heads, classes] labelled counts when cheaply known (manifests).
  records: Optional[Records] = None


def records_source(records: Records) -> Source:
  paths = np.array(records.paths, dtype=object)
  labels = records.labels

  def make():
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda p, y: (tf.io.read_file(p), y),
                  num_parallel_calls=AUTOTUNE)
  return Source(make, len(records), True, records.origin, records)


def _example_spec(schema: heads_lib.LabelSchema, with_image: bool = True) -> dict:
  spec = {f"label/{h}": tf.io.FixedLenFeature([], tf.int64, heads_lib.MISSING)
          for h in schema.names}
  if with_image:
    spec["image/encoded"] = tf.io.FixedLenFeature([], tf.string)
  return spec


def tfrecord_source(pattern: str, schema: heads_lib.LabelSchema) -> Source:
  files = sorted(glob.glob(pattern))
  if not files:
    raise DataError(f"{pattern}: no TFRecord files match")
  spec = _example_spec(schema)

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    labels = tf.stack([tf.cast(ex[f"label/{h}"], tf.int32) for h in schema.names])
    return ex["image/encoded"], labels

  def make():
    return tf.data.TFRecordDataset(files, num_parallel_reads=AUTOTUNE).map(
        parse, num_parallel_calls=AUTOTUNE)
  return Source(make, None, True, pattern)


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
    raise DataError("--tfds_heads is empty: name at least one feature")
  return pairs


def tfds_source(name: str, split: str, feature_heads: Sequence[tuple[str, str]],
                data_dir: Optional[str] = None,
                image_feature: str = "image",
                ) -> tuple[Source, heads_lib.LabelSchema]:
  """A TFDS split; each ClassLabel feature in ``feature_heads`` becomes a head
  whose classes are the feature's names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  if image_feature not in features:
    raise DataError(
        f"TFDS {name!r} has no {image_feature!r} feature (features: "
        f"{sorted(features.keys())})")
  heads = []
  for feature, head in feature_heads:
    if feature not in features:
      raise DataError(
          f"--tfds_heads: TFDS {name!r} has no feature {feature!r} "
          f"(features: {sorted(features.keys())})")
    f = features[feature]
    if not isinstance(f, tfds.features.ClassLabel):
      raise DataError(
          f"--tfds_heads: feature {feature!r} of {name!r} is "
          f"{type(f).__name__}, not a ClassLabel")
    names = f.names if f.names else [str(i) for i in range(f.num_classes)]
    heads.append(heads_lib.HeadSpec(head, tuple(names)))
  schema = heads_lib.LabelSchema(tuple(heads))
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
    return ds.map(pick, num_parallel_calls=AUTOTUNE)
  return Source(make, size, False, f"tfds:{name}/{split}"), schema


def count(source: Source) -> int:
  if source.size is not None:
    return source.size
  return int(source.make().reduce(np.int64(0), lambda n, _: n + 1))


def label_counts(source: Source, schema: heads_lib.LabelSchema) -> list[np.ndarray]:
  """Per head, the number of labelled examples of each class."""
  if source.records is not None:
    labels = source.records.labels
  else:
    labels = np.stack(list(source.make().map(
        lambda _, y: y).as_numpy_iterator())) if count(source) else np.zeros(
            (0, len(schema)), np.int32)
  return [np.bincount(labels[:, k][labels[:, k] >= 0], minlength=h.num_classes)
          for k, h in enumerate(schema.heads)]


def balanced_class_weights(counts: Sequence[np.ndarray]) -> list[np.ndarray]:
  """n / (k * n_c) per class (sklearn's "balanced"); 0 for unseen classes."""
  out = []
  for c in counts:
    c = np.asarray(c, np.float64)
    w = np.zeros_like(c)
    seen = c > 0
    if seen.any():
      w[seen] = c.sum() / (seen.sum() * c[seen])
    out.append(w.astype(np.float32))
  return out


# --- the pipeline -------------------------------------------------------------


def _to_pixels(item, image_size: int, encoded: bool):
  if encoded:
    return imageio.decode_and_resize(item, image_size)
  return imageio.resize(item, image_size)


def augment(image: tf.Tensor, seed: tf.Tensor, kinds: Sequence[str]) -> tf.Tensor:
  """Seeded (stateless) augmentation of one uint8 image: the same seed gives
  the same pixels, so runs and resumed runs are reproducible."""
  unknown = set(kinds) - set(AUGMENTATIONS)
  if unknown:
    raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from "
                     f"{AUGMENTATIONS}")
  seeds = tf.random.split(seed, 5)
  if "flip" in kinds:
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
  if "crop" in kinds:
    size = tf.shape(image)[0]
    pad = tf.maximum(size // 8, 1)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seeds[1])
  if "colour" in kinds:
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, 0.1, seeds[2])
    x = tf.image.stateless_random_contrast(x, 0.8, 1.2, seeds[3])
    x = tf.image.stateless_random_saturation(x, 0.8, 1.2, seeds[4])
    image = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
  return image


def _targets(labels: tf.Tensor, schema: heads_lib.LabelSchema,
             class_weights: Optional[Sequence[np.ndarray]]):
  ys, ws = {}, {}
  for k, head in enumerate(schema.heads):
    y = labels[..., k]
    present = y >= 0
    clamped = tf.where(present, y, tf.zeros_like(y))
    w = tf.cast(present, tf.float32)
    if class_weights is not None:
      w = w * tf.gather(tf.constant(class_weights[k], tf.float32), clamped)
    ys[head.name] = clamped
    ws[head.name] = w
  return ys, ws


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  return options


def train_dataset(source: Source, schema: heads_lib.LabelSchema, *,
                  image_size: int, batch_size: int, seed: int,
                  start_epoch: int = 0, end_epoch: int = 1_000_000,
                  steps_per_epoch: Optional[int] = None,
                  augmentations: Sequence[str] = (),
                  cache: bool | str = False, shuffle_buffer: int = 10_000,
                  deterministic: bool = False,
                  class_weights: Optional[Sequence[np.ndarray]] = None,
                  ) -> tf.data.Dataset:
  """Batches for training, epochs ``start_epoch`` .. ``end_epoch - 1`` back
  to back; each epoch holds ``len // batch_size`` full batches.

  Epoch e is shuffled with a seed made of (seed, e), and each image is
  augmented with a seed made of (seed, e, position), so a run resumed at
  epoch e sees exactly the batches an uninterrupted run would have.
  ``cache`` is False, True (in memory) or a file path prefix; it keeps
  decoded, resized pixels, so augmentation still differs per epoch.
  With ``steps_per_epoch`` every epoch is exactly that many batches (the
  epoch's order repeats if it needs more than one pass).
  """
  if source.size is not None:
    steps_for(source.size, batch_size, source.name)
  base = source.make()
  if cache is not False:
    base = base.map(lambda x, y: (_to_pixels(x, image_size, source.encoded), y),
                    num_parallel_calls=AUTOTUNE)
    base = base.cache("" if cache is True else cache)
    decoded = True
  else:
    decoded = False
  buffer = shuffle_buffer
  if source.size is not None and (not decoded or source.size <= shuffle_buffer):
    # Undecoded records are a path or a few KB of bytes: shuffle them all.
    buffer = max(source.size, 1)

  def one_epoch(epoch):
    # The order must depend on (seed, epoch) alone. tf.data pairs an op seed
    # with the graph's global seed, and with a global seed of 0 a tensor op
    # seed fails inside TF's get_seed; pin this function graph's seed instead.
    tf.compat.v1.get_default_graph().seed = _GRAPH_SEED
    epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + epoch
    ds = base.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    if not decoded:
      ds = ds.map(lambda x, y: (_to_pixels(x, image_size, source.encoded), y),
                  num_parallel_calls=AUTOTUNE)
    ds = ds.enumerate()

    def finish(i, item):
      image, labels = item
      if augmentations:
        image = augment(image, tf.stack([epoch_seed, i]), augmentations)
      return image, labels
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE).batch(
        batch_size, drop_remainder=True)
    if steps_per_epoch:
      ds = ds.repeat().take(steps_per_epoch)
    return ds

  ds = tf.data.Dataset.range(start_epoch, end_epoch).flat_map(one_epoch)
  ds = ds.map(lambda x, y: (x, *_targets(y, schema, class_weights)),
              num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def eval_dataset(source: Source, schema: heads_lib.LabelSchema, *,
                 image_size: int, batch_size: int,
                 cache: bool = False) -> tf.data.Dataset:
  """One ordered pass, no augmentation, last batch kept."""
  ds = source.make().map(
      lambda x, y: (_to_pixels(x, image_size, source.encoded), y),
      num_parallel_calls=AUTOTUNE)
  if cache:
    ds = ds.cache()
  ds = ds.batch(batch_size).map(
      lambda x, y: (x, *_targets(y, schema, None)), num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


# --- TFRecord writing ----------------------------------------------------------


def write_tfrecords(records: Records, schema: heads_lib.LabelSchema,
                    output_prefix: str, num_shards: int = 1) -> list[str]:
  """Writes records as tf.Example shards ``<prefix>-00000-of-0000N.tfrecord``
  (encoded bytes as stored, labels as int64 with -1 = missing) and
  labels.json beside them. Returns the shard paths."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  folder = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(folder, exist_ok=True)
  names = [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(n) for n in names]
  try:
    for i, (p, y) in enumerate(zip(records.paths, records.labels)):
      with open(p, "rb") as f:
        encoded = f.read()
      feature = {
          "image/encoded": tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[encoded])),
          "image/path": tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[p.encode()])),
      }
      for k, h in enumerate(schema.names):
        feature[f"label/{h}"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(y[k])]))
      ex = tf.train.Example(features=tf.train.Features(feature=feature))
      writers[i % num_shards].write(ex.SerializeToString())
  finally:
    for w in writers:
      w.close()
  schema.save(os.path.join(folder, "labels.json"))
  return names



def class_weights_from(mode: str, source: Source,
                       schema: heads_lib.LabelSchema) -> Optional[list[np.ndarray]]:
  if mode == "none":
    return None
  if mode == "balanced":
    return balanced_class_weights(label_counts(source, schema))
  raise ValueError(f"--class_weight must be 'none' or 'balanced', got {mode!r}")


def steps_for(size: int, batch_size: int, origin: str) -> int:
  if size < batch_size:
    raise DataError(
        f"{origin}: {size} training examples is fewer than one batch of "
        f"{batch_size}; lower --batch_size")
  return size // batch_size

