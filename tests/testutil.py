"""Tiny fixtures shared by the tests: a few small images and a manifest."""

from __future__ import annotations

import csv
import os

import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square", "triangle")),
    heads_lib.HeadSpec("colour", ("blue", "red")),
))


def write_image(path: str, size: int = 32, seed: int = 0) -> np.ndarray:
  """Writes a random RGB image as PNG or JPEG (by extension); returns pixels."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
  if path.endswith(".png"):
    data = tf.io.encode_png(pixels).numpy()
  else:
    data = tf.io.encode_jpeg(pixels, quality=95).numpy()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return pixels


def write_manifest(folder: str, rows: list[dict], name: str = "train.csv",
                   columns=("image", "shape", "colour"), size: int = 32) -> str:
  """Writes each row's image (unless it exists) and the CSV; returns its path."""
  for i, row in enumerate(rows):
    path = os.path.join(folder, row["image"])
    if not os.path.exists(path):
      write_image(path, size=size, seed=i)
  manifest = os.path.join(folder, name)
  with open(manifest, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
      writer.writerow({c: row.get(c, "") for c in columns})
  return manifest


def simple_rows(n: int = 8) -> list[dict]:
  """n rows cycling through the classes; every third colour label is blank."""
  shapes, colours = SCHEMA.head("shape").classes, SCHEMA.head("colour").classes
  return [{"image": f"img/{i:03d}." + ("png" if i % 2 else "jpg"),
           "shape": shapes[i % 3],
           "colour": "" if i % 3 == 2 else colours[i % 2]}
          for i in range(n)]

