r"""One command for a machine with a GPU: how fast the package trains there.

  python benchmarks/gpu.py            # ResNet50V2, 224 px, batch 128 (halved until it fits)
  python benchmarks/gpu.py --tiny     # seconds on a CPU: small CNN, 32 px, batch 4

Needs nothing but the package (JPEGs are generated into a temporary folder).
For float32, mixed_float16 and mixed_float16 + XLA, the train step's images/s
(model.fit through compile_model, AdamW, two heads with missing labels) fed
(a) by synthetic tensors (one in-memory batch, repeated) and (b) by the real
pipeline (pipeline.train_dataset over --num_images generated photo-like
JPEGs of --jpeg_side px, flip + crop, decoding on this host's cores). Each
arm is one fit() of --steps steps whose first --warmup are not timed. Then
the N-heads-vs-N-models ratio on the device: the train step of one model
with --heads heads against --heads one-head models stepped one after the
other (same backbone, batch, precision mixed_float16 on a GPU, float32 on a
CPU). Prints a table, a JSON line, and the ratio last.

Reference: NVIDIA's ResNet-50 v1.5 TF reference trains at ~2,375 img/s on an
A100-40GB with AMP + XLA; "pipeline / synthetic" under 1 says the host's
cores cannot decode that fast (see benchmarks/input_pipeline.py for images/s
per core, and README "Several GPUs, several machines" for tf.data service).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TINY = flags.DEFINE_bool(
    "tiny", False, "CPU smoke mode: small CNN, 32 px, batch 4, 3 steps, 8 "
    "JPEGs of 64 px, 2 heads (tests/benchmarks_gpu_test.py runs it).")
_BACKBONE = flags.DEFINE_string("backbone", "ResNet50V2", "Backbone.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input side.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size; halved on OOM.")
_STEPS = flags.DEFINE_integer("steps", 30, "fit() steps per arm.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Leading steps left untimed.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1024, "JPEGs generated.")
_JPEG_SIDE = flags.DEFINE_integer("jpeg_side", 500, "Generated JPEG side.")
_HEADS = flags.DEFINE_integer("heads", 8, "N of N heads vs N models.")

ARMS = (("float32", False), ("mixed_float16", False), ("mixed_float16", True))


def settings() -> dict:
  if _TINY.value:
    return dict(backbone="small_cnn", size=32, batch=4, steps=3, warmup=1,
                num_images=8, jpeg_side=64, heads=2)
  return dict(backbone=_BACKBONE.value, size=_SIZE.value, batch=_BATCH.value,
              steps=_STEPS.value, warmup=_WARMUP.value,
              num_images=_NUM_IMAGES.value, jpeg_side=_JPEG_SIDE.value,
              heads=_HEADS.value)


def build(schema, s: dict, precision: str, xla: bool):
  import keras
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.training import setup
  keras.mixed_precision.set_global_policy(precision)
  keras.utils.set_random_seed(0)
  if s["backbone"] == "small_cnn":
    model = model_lib.small_cnn(schema, s["size"])
  else:
    model = model_lib.build_model(schema, s["size"], s["backbone"], None)
  # No top-k metric (k >= classes): small_cnn's heads stay float16 under
  # mixed precision, which InTopK refuses; the step's cost is the same.
  setup.compile_model(model, schema, keras.optimizers.AdamW(1e-4),
                      top_k=1000, jit_compile=xla)
  return model


def fit_rate(model, ds, s: dict) -> float:
  """Timed steps/s of one fit() of s["steps"] steps, after s["warmup"]."""
  import keras
  ends = []

  class Ends(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      ends.append(time.perf_counter())
  model.fit(ds, epochs=1, steps_per_epoch=s["steps"], callbacks=[Ends()],
            verbose=0, shuffle=False)
  timed = ends[s["warmup"] - 1:] if s["warmup"] else ends
  return (len(timed) - 1) / (timed[-1] - timed[0])


def synthetic(schema, s: dict):
  import numpy as np
  import tensorflow as tf
  rng = np.random.default_rng(0)
  b = s["batch"]
  x = rng.integers(0, 256, (b, s["size"], s["size"], 3), dtype=np.uint8)
  y = {h.name: rng.integers(0, h.num_classes, b).astype(np.int32)
       for h in schema.heads}
  w = {h.name: (np.arange(b) % 3 != k).astype(np.float32)
       for k, h in enumerate(schema.heads)}
  return tf.data.Dataset.from_tensors((x, y, w)).repeat()


def precision_rows(source, schema, s: dict) -> list[dict]:
  """One row per ARMS entry; the batch is halved while it does not fit."""
  import tensorflow as tf
  from mlc_keras.data import pipeline
  rows = []
  for precision, xla in ARMS:
    while True:
      try:
        model = build(schema, s, precision, xla)
        synth = fit_rate(model, synthetic(schema, s), s) * s["batch"]
        real_ds = pipeline.train_dataset(
            source, schema, image_size=s["size"], batch_size=s["batch"],
            seed=0, augmentations=("flip", "crop"))
        real = fit_rate(model, real_ds, s) * s["batch"]
        break
      except tf.errors.ResourceExhaustedError:
        if s["batch"] == 1:
          raise
        s["batch"] //= 2
        print(f"  out of memory: batch halved to {s['batch']}", flush=True)
    rows.append({"precision": precision, "xla": xla, "batch": s["batch"],
                 "synthetic_img_s": synth, "pipeline_img_s": real,
                 "pipeline_over_synthetic": real / synth})
    print(f"  {precision}{' + XLA' if xla else ''}: {synth:.1f} / "
          f"{real:.1f} img/s", flush=True)
  return rows


def heads_vs_models(s: dict, gpu: bool) -> dict:
  """Train-step time of one N-head model over N one-head models'."""
  from mlc_keras import heads as heads_lib
  n = s["heads"]
  classes = tuple(f"c{j}" for j in range(10))
  multi = heads_lib.LabelSchema(tuple(
      heads_lib.HeadSpec(f"h{i}", classes) for i in range(n)))
  precision = "mixed_float16" if gpu else "float32"
  one = build(multi, s, precision, False)
  one_rate = fit_rate(one, synthetic(multi, s), s)
  seconds = 0.0
  for i in range(n):
    single = heads_lib.LabelSchema((multi.heads[i],))
    seconds += 1 / fit_rate(build(single, s, precision, False),
                            synthetic(single, s), s)
  return {"heads": n, "precision": precision, "one_model_ms": 1e3 / one_rate,
          "n_models_ms": seconds * 1e3, "ratio": (1 / one_rate) / seconds}


def main(argv):
  del argv
  import keras
  import tensorflow as tf
  from mlc_keras.data import manifest as manifest_lib
  from mlc_keras.data import sources

  s = settings()
  gpus = tf.config.list_physical_devices("GPU")
  device = (tf.config.experimental.get_device_details(gpus[0]).get(
      "device_name", "GPU") if gpus else "CPU")
  print(f"{benchutil.machine()}; device {device}", flush=True)
  if not gpus and not _TINY.value:
    print("no GPU found: this measures the CPU (use --tiny for a quick check)")
  workdir = tempfile.mkdtemp(prefix="gpu_bench_")
  started = time.time()
  try:
    path, _ = benchutil.write_jpegs(workdir, s["num_images"], s["jpeg_side"],
                                    s["jpeg_side"], distinct=64)
    records, schema = manifest_lib.read_manifest(path)
    source = sources.records_source(records)
    rows = precision_rows(source, schema, s)
    ratio = heads_vs_models(s, bool(gpus))
  finally:
    keras.mixed_precision.set_global_policy("float32")
    shutil.rmtree(workdir, ignore_errors=True)

  print(f"\n{s['backbone']} {s['size']}px on {device}, {s['steps'] - s['warmup']}"
        f" timed steps per arm; real pipeline over {s['num_images']} JPEGs of "
        f"{s['jpeg_side']} px")
  print(f"{'precision':<22} {'batch':>6} {'synthetic img/s':>16} "
        f"{'pipeline img/s':>15} {'pipe/synth':>11}")
  for r in rows:
    name = r["precision"] + (" + XLA" if r["xla"] else "")
    print(f"{name:<22} {r['batch']:>6} {r['synthetic_img_s']:>16.1f} "
          f"{r['pipeline_img_s']:>15.1f} {r['pipeline_over_synthetic']:>11.3f}")
  print(f"\n{ratio['heads']} heads in one model: {ratio['one_model_ms']:.1f} ms "
        f"per step; {ratio['heads']} one-head models: "
        f"{ratio['n_models_ms']:.1f} ms ({ratio['precision']})")
  print(json.dumps({"benchmark": "gpu", "device": device, "tiny": _TINY.value,
                    "backbone": s["backbone"], "image_size": s["size"],
                    "rows": rows, "heads_vs_models": ratio,
                    "seconds": time.time() - started}))
  print(f"\nN heads / N models train-step time: {ratio['ratio']:.3f} "
        f"(1/N = {1 / ratio['heads']:.3f})")


if __name__ == "__main__":
  app.run(main)
