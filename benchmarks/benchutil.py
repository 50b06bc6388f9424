"""Shared by the benchmark scripts: a one-line description of the machine
(small_cnn, the fast backbone of the CPU-sized claims, is modeling.model.small_cnn)."""

import csv
import os
import platform
import shutil


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



def photo_jpeg(rng, height: int, width: int, quality: int = 90) -> bytes:
  """A JPEG sized like a photo of its size: low-frequency colour fields plus
  grain (white noise would be far larger, a flat image far smaller)."""
  import numpy as np
  import tensorflow as tf
  coarse = rng.uniform(0, 255, (1, 6, 6, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0]
  pixels = smooth.numpy() + rng.normal(0, 6, (height, width, 3))
  image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(image, quality=quality).numpy()


def write_jpegs(folder: str, n: int, min_side: int, max_side: int,
                seed: int = 0, distinct: int | None = None,
                aspect: float = 1.0) -> tuple[str, float]:
  """Writes n JPEGs (sides min_side..max_side; the width times ``aspect``)
  and manifest.csv (two heads, some labels blank); returns the manifest
  path and the mean file size in KB. With ``distinct``, only that many
  images are encoded and the rest are copies under other names (large
  photos take seconds each to generate)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  rows, total = [], 0
  for i in range(n):
    name = f"images/{i:05d}.jpg"
    if distinct is not None and i >= distinct:
      shutil.copyfile(os.path.join(folder, f"images/{i % distinct:05d}.jpg"),
                      os.path.join(folder, name))
      total += os.path.getsize(os.path.join(folder, name))
    else:
      h, w = rng.integers(min_side, max_side + 1, size=2)
      encoded = photo_jpeg(rng, int(h), int(round(w * aspect)))
      with open(os.path.join(folder, name), "wb") as f:
        f.write(encoded)
      total += len(encoded)
    kind = ("a", "b", "c")[i % 3]
    tone = "" if i % 4 == 0 else ("dark", "light")[i % 2]
    rows.append((name, kind, tone))
  manifest = os.path.join(folder, "manifest.csv")
  with open(manifest, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(("image", "kind", "tone"))
    writer.writerows(rows)
  return manifest, total / n / 1024


def balanced_draw(labels, k: int, num_classes: int, seed: int):
  """A boolean mask of k images, as evenly spread over the classes as the
  counts allow, drawn with a seeded permutation."""
  import numpy as np
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  per_class = [list(order[labels[order] == c]) for c in range(num_classes)]
  picked, c = [], 0
  while len(picked) < k:
    if per_class[c % num_classes]:
      picked.append(per_class[c % num_classes].pop(0))
    c += 1
  mask = np.zeros(len(labels), bool)
  mask[picked] = True
  return mask
