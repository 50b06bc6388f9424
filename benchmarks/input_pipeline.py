r"""Input pipeline throughput, alone and under a training step.

(a) Images/s of pipeline.train_dataset alone (no model): JPEG read + decode +
    antialiased resize to --pipeline_size + flip/crop/colour augmentation +
    batching, over --num_images generated JPEGs of --min_side..--max_side px
    listed in a CSV manifest (smooth random content with noise, so the files
    are sized like photos, not like white noise). Files sit in the page
    cache after generation: this measures CPU, not disk.
(b) Training steps/s of ResNet50V2 (weights=None, --train_size px, batch
    --train_batch, AdamW, the project's compile_model) fed by the real
    pipeline vs by one batch of that pipeline held in memory
    (Dataset.from_tensors(batch).repeat(): same tensors, no decoding;
    --held_batches=K cycles K cached batches instead). Both go
    through model.fit with the same traced train step. Arms alternate in ABBA
    order; each arm is one fit() of --steps_per_arm steps whose first
    --skip_steps are not timed (iterator start-up); the rate of each side is
    its timed steps over its timed seconds, pooled over its arms.

  ratio = real-pipeline steps/s / in-memory steps/s, printed last.

  python benchmarks/input_pipeline.py                        # 96px, batch 16, ~6 min*
  python benchmarks/input_pipeline.py --held_batches=8
  python benchmarks/input_pipeline.py --train_batch=32 --rounds=6
  python benchmarks/input_pipeline.py --train_size=224 --steps_per_arm=3 --rounds=2

* on 2 shared CPU cores at load average ~8 (other jobs running).

Target: ratio >= 0.97 (the pipeline hides under compute). On a CPU-only
machine the pipeline and the model share the same cores, so the ratio can
only approach 1 when the pipeline's CPU cost per image is small beside the
training step's; the table prints the pipeline's share that the two
measured rates imply.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_NUM_IMAGES = flags.DEFINE_integer("num_images", 300, "JPEGs to generate.")
_MIN_SIDE = flags.DEFINE_integer("min_side", 256, "Smallest generated side.")
_MAX_SIDE = flags.DEFINE_integer("max_side", 320, "Largest generated side.")
_PIPELINE_SIZE = flags.DEFINE_integer(
    "pipeline_size", 224, "(a) output side of the pipeline-alone measurement.")
_PIPELINE_BATCH = flags.DEFINE_integer("pipeline_batch", 32, "(a) batch size.")
_PIPELINE_IMAGES = flags.DEFINE_integer(
    "pipeline_images", 1200,
    "(a) timed images (whole batches, after 3 untimed batches).")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 96, "(b) model input side.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 16, "(b) batch size.")
_STEPS = flags.DEFINE_integer("steps_per_arm", 5, "(b) fit() steps per arm.")
_SKIP = flags.DEFINE_integer(
    "skip_steps", 1, "(b) leading steps of each arm left untimed (>= 1).")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 4, "(b) arms per side; sides alternate ABBA (keep it even).")
_HELD = flags.DEFINE_integer(
    "held_batches", 1,
    "(b) batches the in-memory side cycles through; 1 = the same batch every "
    "step, more rules out effects of seeing one batch over and over.")
_AUGMENT = flags.DEFINE_list(
    "augment", ["flip", "crop", "colour"], "Augmentations (data.AUGMENTATIONS).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the JPEGs go (default: a temporary folder, deleted).")

TARGET = 0.97


def machine() -> str:
  return benchutil.machine()


def write_jpegs(folder: str, n: int, min_side: int, max_side: int,
                seed: int = 0) -> tuple[str, float]:
  """Writes n JPEGs and manifest.csv (two heads, some labels blank); returns
  the manifest path and the mean file size in KB."""
  import numpy as np
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  rows, total = [], 0
  for i in range(n):
    h, w = rng.integers(min_side, max_side + 1, size=2)
    # Low-frequency colour fields plus grain: JPEG sizes like small photos.
    coarse = rng.uniform(0, 255, (1, 6, 6, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [int(h), int(w)], method="bicubic")[0]
    pixels = smooth.numpy() + rng.normal(0, 6, (int(h), int(w), 3))
    image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    encoded = tf.io.encode_jpeg(image, quality=90).numpy()
    name = f"images/{i:05d}.jpg"
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


def pipeline_images_per_s(source, schema, size: int, batch: int,
                          images: int, augment) -> float:
  from mlc_keras.data import pipeline
  ds = pipeline.train_dataset(source, schema, image_size=size, batch_size=batch,
                          seed=0, augmentations=augment)
  it = iter(ds)
  for _ in range(3):  # tracing, thread pools, autotune's first guesses
    next(it)
  batches = max(-(-images // batch), 1)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  import keras
  import tensorflow as tf
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.data import manifest as manifest_lib
  from mlc_keras.data import pipeline
  from mlc_keras.data import sources
  from mlc_keras.training import setup

  if _SKIP.value < 1 or _STEPS.value <= _SKIP.value:
    raise app.UsageError("need 1 <= --skip_steps < --steps_per_arm")
  augment = tuple(_AUGMENT.value)
  started = time.time()
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="input_pipeline_")
  try:
    print(f"{machine()}; other processes may share the cores", flush=True)
    manifest, kb = write_jpegs(workdir, _NUM_IMAGES.value, _MIN_SIDE.value,
                               _MAX_SIDE.value)
    records, schema = manifest_lib.read_manifest(manifest)
    source = sources.records_source(records)
    print(f"wrote {len(records)} JPEGs ({_MIN_SIDE.value}-{_MAX_SIDE.value} px,"
          f" mean {kb:.0f} KB) in {time.time() - started:.0f} s", flush=True)

    # (a) the pipeline alone.
    size_a, batch_a = _PIPELINE_SIZE.value, _PIPELINE_BATCH.value
    alone_a = pipeline_images_per_s(source, schema, size_a, batch_a,
                                    _PIPELINE_IMAGES.value, augment)
    size_b, batch_b = _TRAIN_SIZE.value, _TRAIN_BATCH.value
    alone_b = pipeline_images_per_s(source, schema, size_b, batch_b,
                                    _PIPELINE_IMAGES.value, augment)
    print(f"(a) pipeline alone: {alone_a:.0f} img/s at {size_a}px, "
          f"{alone_b:.0f} img/s at {size_b}px", flush=True)

    # (b) a training step fed by the pipeline vs by memory.
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(schema, size_b, "ResNet50V2")
    setup.compile_model(model, schema, keras.optimizers.AdamW(1e-3))
    real = pipeline.train_dataset(source, schema, image_size=size_b,
                              batch_size=batch_b, seed=0,
                              augmentations=augment)
    if _HELD.value == 1:
      memory = tf.data.Dataset.from_tensors(next(iter(real))).repeat()
    else:
      memory = real.take(_HELD.value).cache().repeat()
      for _ in memory.take(_HELD.value):  # fills the cache before timing
        pass

    class StepEnds(keras.callbacks.Callback):

      def __init__(self):
        super().__init__()
        self.ends = []

      def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def arm(ds, steps):
      ends = StepEnds()
      model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[ends],
                verbose=0, shuffle=False)
      timed = ends.ends[_SKIP.value - 1:]
      return len(timed) - 1, timed[-1] - timed[0]

    arm(memory, 2)  # traces the train step
    arm(real, 2)
    print(f"model built and warmed up at {time.time() - started:.0f} s",
          flush=True)

    sides = {"real": [], "memory": []}
    for r in range(_ROUNDS.value):
      order = ("real", "memory") if r % 2 == 0 else ("memory", "real")
      for name in order:
        steps, seconds = arm(real if name == "real" else memory, _STEPS.value)
        sides[name].append((steps, seconds))
      paired = [sides[k][-1][0] / sides[k][-1][1] for k in ("real", "memory")]
      print(f"  round {r + 1}: real {paired[0]:.3f} steps/s, memory "
            f"{paired[1]:.3f} steps/s, ratio {paired[0] / paired[1]:.3f}",
            flush=True)

    rate = {k: sum(s for s, _ in v) / sum(t for _, t in v)
            for k, v in sides.items()}
    per_round = [(rs / rt) / (ms / mt) for (rs, rt), (ms, mt)
                 in zip(sides["real"], sides["memory"])]
    ratio = rate["real"] / rate["memory"]
    timed = sum(s for s, _ in sides["real"])

    print(f"\n(a) pipeline alone, {len(records)} JPEGs "
          f"{_MIN_SIDE.value}-{_MAX_SIDE.value} px, augment {','.join(augment)}")
    print(f"{'output':<10} {'batch':>6} {'img/s':>8}")
    print(f"{f'{size_a}px':<10} {batch_a:>6} {alone_a:>8.0f}")
    print(f"{f'{size_b}px':<10} {batch_b:>6} {alone_b:>8.0f}")
    print(f"\n(b) ResNet50V2 train step, {size_b}px, batch {batch_b}, "
          f"{_ROUNDS.value} arms x {_STEPS.value - _SKIP.value} timed steps "
          "per side, ABBA")
    print(f"{'fed by':<22} {'steps/s':>8} {'img/s':>8}")
    held = ("in-memory batch" if _HELD.value == 1
            else f"{_HELD.value} in-memory batches")
    for k, label in (("real", "real pipeline"), ("memory", held)):
      print(f"{label:<22} {rate[k]:>8.3f} {rate[k] * batch_b:>8.1f}")
    train_img_s = rate["memory"] * batch_b
    share = train_img_s / alone_b
    print(f"\nfeeding {train_img_s:.1f} img/s takes the pipeline {share:.1%} "
          f"of the cores (from (a) at {size_b}px): expected ratio "
          f"~{1 / (1 + share):.3f} if the two simply share the cores")
    print(f"per-round ratios: {', '.join(f'{x:.3f}' for x in per_round)} "
          f"(range {min(per_round):.3f} .. {max(per_round):.3f})")
    print(f"total {time.time() - started:.0f} s, {timed} timed steps per side")
    print(f"\nthroughput ratio (real pipeline / in-memory): {ratio:.3f}  "
          f"(target >= {TARGET:.2f}) {'PASS' if ratio >= TARGET else 'FAIL'}")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
