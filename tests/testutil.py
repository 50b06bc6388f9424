"""Tiny fixtures shared by the tests: a few small images and a manifest."""

from __future__ import annotations

import csv
import os

import numpy as np
import tensorflow as tf

from mlc_keras import heads as heads_lib

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


def small_cnn(schema: heads_lib.LabelSchema, size: int):
  """Same contract as model.build_model (uint8 "image" in, a named softmax
  per head out) over three conv layers: it learns the demo shapes at 32px in
  about a minute on CPU, where ResNet50V2 at 32px stays at chance on "shape"
  after 80 steps (measured 0.33) at 12 s/step on a loaded 2-core machine.
  Used by compose_test and imageio_test."""
  import keras  # pylint: disable=g-import-not-at-top
  image = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
  for filters in (32, 64, 128):
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(image, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(x) for h in schema.heads})
