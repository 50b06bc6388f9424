"""Shared by the benchmark scripts: a one-line description of the machine
and small_cnn, the fast backbone of the CPU-sized claims."""

import os
import platform


def machine() -> str:
  import tensorflow as tf
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    with open("/proc/loadavg", encoding="utf-8") as f:
      load = f.read().split()[0]
  except OSError:
    load = "?"
  return (f"{os.cpu_count()} CPU cores ({cpu}), TF {tf.__version__}, "
          f"load average {load}")


def small_cnn(schema, size: int):
  """A model with build_model's contract (uint8 "image" in, one softmax per
  head named after it) over three conv blocks. On CPU it learns the demo
  shapes at 32 px in about a minute, where ResNet50V2 at 32 px stays at
  chance on "shape" after 80 steps: the benchmarks' claims are about sharing
  and masking, not about the backbone, and need runs that finish here."""
  import keras
  image = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
  for filters in (32, 64, 128):
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(image, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(x) for h in schema.heads})
