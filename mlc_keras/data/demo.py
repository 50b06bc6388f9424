"""The embedded demo data set, generated deterministically from a seed.

Each image shows one shape with four independent attributes: shape, colour,
size and fill, and carries any subset of three white marks (a bar along the
bottom, a square in the top-left corner, a stripe down the right edge): the
tag head ``marks``, "(none)" when it has none. Like real multi-attribute data, some labels are blank (fill is
labelled on fewer than half of the training images), and one combination
of all four (large outlined blue triangles) never appears in training at
all: it only appears in the validation set and in ``heldout.csv``, so that
composing attributes can be judged on a class the model never saw. Every
other combination of its values is trained on (small blue triangles, large
outlined red triangles, ...), as a platypus's fur, bill and tail are each
seen on other animals.

Files written to ``out_dir``: ``train.csv``, ``val.csv``, ``heldout.csv``
(manifests: an ``image`` column and one column per head), ``images/*.png|jpg``
and ``labels.json`` (the schema).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from mlc_keras.core import heads as heads_lib

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square", "triangle")),
    heads_lib.HeadSpec("colour", ("blue", "green", "red")),
    heads_lib.HeadSpec("size", ("large", "small")),
    heads_lib.HeadSpec("fill", ("outline", "solid")),
    # A tag head: which white marks the picture carries (any subset).
    heads_lib.HeadSpec("marks", ("bar", "corner", "edge"), kind=heads_lib.TAGS),
))
# Chance of each mark, independently per image.
MARK_RATE = 0.35

# Never rendered into the training split. Holding out a pair instead (every
# blue triangle) teaches the heads "blue => not a triangle", true of that
# training set; see BUILD_NOTES.md for the measured difference.
HELD_OUT = {"shape": "triangle", "colour": "blue", "size": "large",
            "fill": "outline"}

# Share of training labels left blank, per head.
MISSING_RATE = {"shape": 0.1, "colour": 0.1, "size": 0.25, "fill": 0.6,
                "marks": 0.2}

_RGB = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230)}
_RENDER_SIZE = 64
# Shape radius as a share of the image side. ResNet50V2's stem divides the
# side by 4 before its first block: at the demo's 48px a small shape must
# still span several pixels there, and an outline more than one.
_RADIUS = {"large": 0.38, "small": 0.24}
_VERSION = 4


def _mask(shape: str, size: str, filled: bool, cx: float, cy: float,
          n: int) -> np.ndarray:
  y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
  r = n * _RADIUS[size]

  def solid(radius):
    if shape == "circle":
      return (x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2
    if shape == "square":
      half = radius * 0.85
      return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    # Upward triangle: below the top-left and top-right edges, above the base.
    top, base, half_w = cy - radius, cy + 0.8 * radius, 0.95 * radius
    slope = half_w / (base - top)
    return ((y <= base) & (y >= top)
            & (np.abs(x - cx) <= (y - top) * slope))

  outer = solid(r)
  if filled:
    return outer
  return outer & ~solid(r - max(2.0, 0.12 * n))


def render(attrs: dict, rng: np.random.Generator,
           n: int = _RENDER_SIZE) -> np.ndarray:
  """One uint8 [n, n, 3] image with the given attribute values."""
  r_max = n * _RADIUS[attrs["size"]]
  margin = r_max + 1
  cx, cy = rng.uniform(margin, n - margin, size=2)
  background = rng.integers(20, 110, size=3)
  image = np.clip(background + rng.normal(0, 12, size=(n, n, 3)), 0, 255)
  colour = np.clip(np.array(_RGB[attrs["colour"]]) + rng.normal(0, 18, 3), 0, 255)
  mask = _mask(attrs["shape"], attrs["size"], attrs["fill"] == "solid", cx, cy, n)
  image[mask] = colour
  _draw_marks(image, attrs.get("marks", ()))
  return image.astype(np.uint8)


def _draw_marks(image: np.ndarray, marks) -> None:
  # White, which no shape colour is; drawn over the shape, a few pixels wide
  # so they survive the resize to 32-48 px.
  n = image.shape[0]
  w = max(3, n // 16)
  if "bar" in marks:
    image[n - w:, :] = 255
  if "corner" in marks:
    image[:2 * w, :2 * w] = 255
  if "edge" in marks:
    image[:, n - w:] = 255


def _encode(image: np.ndarray, path: str) -> None:
  import tensorflow as tf  # only needed when files are written
  if path.endswith(".png"):
    data = tf.io.encode_png(image).numpy()
  else:
    data = tf.io.encode_jpeg(image, quality=95).numpy()
  with open(path, "wb") as f:
    f.write(data)


def _sample_marks(rng: np.random.Generator) -> tuple[str, ...]:
  tags = SCHEMA.head("marks").classes
  return tuple(t for t, on in zip(tags, rng.random(len(tags)) < MARK_RATE)
               if on)


def _sample_attrs(rng: np.random.Generator, held_out: bool) -> dict:
  while True:
    attrs = {h.name: h.classes[rng.integers(h.num_classes)] for h in SCHEMA
             if h.kind_impl.single_label}
    if held_out:
      return dict(attrs, **HELD_OUT)
    if not all(attrs[k] == v for k, v in HELD_OUT.items()):
      return attrs


def _write_split(out_dir: str, split: str, count: int, rng: np.random.Generator,
                 mode: str, mark_rng: np.random.Generator) -> None:
  rows = []
  for i in range(count):
    attrs = _sample_attrs(rng, held_out=(mode == "heldout"))
    if mode == "val" and rng.random() < 0.1:
      attrs = dict(attrs, **HELD_OUT)
    attrs["marks"] = _sample_marks(mark_rng)
    ext = ".jpg" if i % 4 == 3 else ".png"
    rel = os.path.join("images", f"{split}_{i:05d}{ext}")
    _encode(render(attrs, rng), os.path.join(out_dir, rel))
    row = {"image": rel}
    for h in SCHEMA:
      # The marks (the tag head) draw from their own generator.
      rates = rng if h.kind_impl.single_label else mark_rng
      blank = mode == "train" and rates.random() < MISSING_RATE[h.name]
      row[h.name] = "" if blank else _cell(h, attrs[h.name])
    rows.append(row)
  with open(os.path.join(out_dir, f"{split}.csv"), "w", newline="",
            encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["image", *SCHEMA.names])
    writer.writeheader()
    writer.writerows(rows)


def _cell(head: heads_lib.HeadSpec, value) -> str:
  if head.kind_impl.single_label:
    return value
  return head.kind_impl.cell(head, [t in value for t in head.classes])


def generate(out_dir: str, train_size: int = 2000, val_size: int = 400,
             heldout_size: int = 100, seed: int = 0) -> dict[str, str]:
  """Writes the demo set (or reuses an identical earlier one) and returns the
  manifest paths: {"train": ..., "val": ..., "heldout": ..., "labels": ...}."""
  paths = {s: os.path.join(out_dir, f"{s}.csv") for s in ("train", "val", "heldout")}
  paths["labels"] = os.path.join(out_dir, "labels.json")
  stamp = {"version": _VERSION, "train": train_size, "val": val_size,
           "heldout": heldout_size, "seed": seed}
  stamp_path = os.path.join(out_dir, "demo.json")
  if os.path.exists(stamp_path):
    with open(stamp_path, encoding="utf-8") as f:
      if json.load(f) == stamp and all(os.path.exists(p) for p in paths.values()):
        return paths
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  # The marks draw from their own stream, so the other heads' images and
  # labels are those of the demo before it had marks.
  mark_rng = np.random.default_rng([seed, 1])
  for split, size in (("train", train_size), ("val", val_size),
                      ("heldout", heldout_size)):
    _write_split(out_dir, split, size, rng, split, mark_rng)
  SCHEMA.save(paths["labels"])
  with open(stamp_path, "w", encoding="utf-8") as f:
    json.dump(stamp, f)
  return paths
