r"""How fast the model trains and predicts on one accelerator, on any Keras
backend; runs where TensorFlow is not installed (JAX backend).

  KERAS_BACKEND=jax python benchmarks/gpu.py        # ResNet50V2, 224 px
  python benchmarks/gpu.py --backend=tensorflow     # the same on TF + XLA
  python benchmarks/gpu.py --tiny                   # seconds on a CPU

The model is the package's own (modeling.model.build_model, uint8 input,
preprocessing inside) compiled with its masked per-head losses
(modeling.losses: "mean_with_sample_weight", some labels missing with weight
0, as the demo's heads have them) and AdamW, jit-compiled, under mixed
precision: bfloat16 on Hopper or newer (compute capability >= 9), float16 on
older GPUs (Keras adds loss scaling), float32 on a CPU. The data is one
synthetic uint8 batch put on the device once and fed again every step (on
TensorFlow a repeated in-memory tf.data batch), so the figures are the
step's, not the input pipeline's (see benchmarks/input_pipeline.py).

Three arms: one head (the demo's "shape"), the demo's heads
(mlc_keras/data/demo.py SCHEMA: four softmax heads and a tag head) and
--heads heads (the demo's plus softmax heads of 10 classes). Each arm: one
fit() of --warmup steps (compilation), then one timed fit() of --steps
steps; the same for predict(). The batch is halved while it does not fit.
Peak memory: the device allocator's peak so far in the process (cumulative
over the arms on JAX, per arm on TensorFlow), or the process's peak RSS on a
CPU. The last line is one JSON object; "step_ratio" is the --heads-head
model's train-step time per image over the one-head model's (1.0: the extra
heads cost nothing).

Carrying it to a machine with CUDA + JAX but no TensorFlow and no network:
see BUILD_NOTES.md "Backends and the GPU benchmark" (benchmarks/gpu_wheels.sh
downloads keras and its small dependencies into wheels/).

Reference: NVIDIA's ResNet-50 v1.5 TF reference trains at ~2,375 img/s on an
A100-40GB with AMP + XLA.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BACKENDS = ("jax", "tensorflow")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

_BACKEND = flags.DEFINE_enum(
    "backend", None, BACKENDS,
    "Keras backend (default: $KERAS_BACKEND, else jax).")
_TINY = flags.DEFINE_bool(
    "tiny", False, "CPU smoke mode: 32 px, batch 2, 1 warm-up + 2 timed "
    "steps, backbone small_cnn unless --backbone is given (ResNet50V2's "
    "compilation alone takes minutes on 2 cores); "
    "tests/benchmarks_gpu_test.py runs it.")
_BACKBONE = flags.DEFINE_string(
    "backbone", "ResNet50V2",
    "A modeling.model.BACKBONES name, or small_cnn (modeling.model.small_cnn).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input side.")
_BATCH = flags.DEFINE_integer("batch", 256, "Batch size; halved on OOM.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps per arm.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compile).")
_HEADS = flags.DEFINE_integer("heads", 8, "Heads of the widest arm.")
_PRECISION = flags.DEFINE_enum(
    "precision", "auto", PRECISIONS,
    "auto: mixed_bfloat16 on compute capability >= 9, mixed_float16 on an "
    "older GPU, float32 on a CPU.")

_MIB = 1 << 20


def settings() -> dict:
  if _TINY.value:
    backbone = _BACKBONE.value if _BACKBONE.present else "small_cnn"
    return dict(backbone=backbone, size=32, batch=2, steps=2, warmup=1,
                heads=_HEADS.value)
  return dict(backbone=_BACKBONE.value, size=_SIZE.value, batch=_BATCH.value,
              steps=_STEPS.value, warmup=_WARMUP.value, heads=_HEADS.value)


def device_info(backend: str) -> dict:
  """{"kind": "gpu"|"cpu", "name", "compute_capability" (str or None)}."""
  if backend == "jax":
    import jax
    d = jax.devices()[0]
    if d.platform == "gpu":
      return {"kind": "gpu", "name": d.device_kind,
              "compute_capability": getattr(d, "compute_capability", None)}
    return {"kind": d.platform, "name": platform.processor() or d.device_kind,
            "compute_capability": None}
  import tensorflow as tf
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    cc = details.get("compute_capability")
    return {"kind": "gpu", "name": details.get("device_name", "GPU"),
            "compute_capability": ".".join(map(str, cc)) if cc else None}
  return {"kind": "cpu", "name": platform.processor() or "CPU",
          "compute_capability": None}


def choose_precision(requested: str, device: dict) -> str:
  if requested != "auto":
    return requested
  if device["kind"] != "gpu":
    return "float32"
  try:
    major = int(str(device["compute_capability"]).split(".")[0])
  except ValueError:
    major = 0
  return "mixed_bfloat16" if major >= 9 else "mixed_float16"


def arm_schemas(n: int):
  """(arm name, schema): one head, the demo's heads, n heads."""
  from mlc_keras.core import heads as heads_lib
  from mlc_keras.data import demo
  base = demo.SCHEMA.heads
  extra = tuple(
      heads_lib.HeadSpec(f"extra{i}", tuple(f"c{j}" for j in range(10)))
      for i in range(max(0, n - len(base))))
  return (("1_head", heads_lib.LabelSchema(base[:1])),
          (f"demo_{len(base)}_heads", demo.SCHEMA),
          (f"{n}_heads", heads_lib.LabelSchema((base + extra)[:n])))


def synthetic_batch(schema, batch: int, size: int, seed: int = 0):
  """(uint8 images, labels, sample weights) as numpy, with missing labels
  (weight 0) at the demo's rates."""
  import numpy as np
  from mlc_keras.data import demo
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  y, w = {}, {}
  for h in schema.heads:
    if h.is_tags:
      y[h.name] = (rng.random((batch, h.num_classes)) < demo.MARK_RATE
                   ).astype(np.float32)
    else:
      y[h.name] = rng.integers(0, h.num_classes, batch).astype(np.int32)
    missing = demo.MISSING_RATE.get(h.name, 0.2)
    w[h.name] = (rng.random(batch) >= missing).astype(np.float32)
  return x, y, w


def on_device(backend: str, batch):
  """A zero-argument callable returning a fresh iterable for fit() or
  predict() that yields ``batch`` (a tuple) every step without copying it
  from the host again."""
  import keras
  if backend == "tensorflow":
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    return lambda: ds
  tensors = keras.tree.map_structure(keras.ops.convert_to_tensor, batch)

  def forever():
    while True:
      yield tensors
  return forever


def build(schema, s: dict, precision: str):
  import keras
  from mlc_keras.modeling import losses
  from mlc_keras.modeling import model as model_lib
  keras.backend.clear_session()
  # After clear_session, which resets the global dtype policy.
  keras.mixed_precision.set_global_policy(precision)
  keras.utils.set_random_seed(0)
  if s["backbone"] == "small_cnn":
    model = model_lib.small_cnn(schema, s["size"])
  else:
    model = model_lib.build_model(schema, s["size"], s["backbone"], None)
  model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                loss=losses.head_losses(schema),
                loss_weights=losses.loss_weights(schema),
                jit_compile=True)
  return model


def _sync(model) -> None:
  import keras
  keras.ops.convert_to_numpy(model.trainable_variables[-1].value)


def rates(model, schema, s: dict, backend: str) -> tuple[float, float]:
  """(train images/s, predict images/s) over s["steps"] timed steps."""
  x, y, w = synthetic_batch(schema, s["batch"], s["size"])
  train = on_device(backend, (x, y, w))
  images = on_device(backend, (x,))
  model.fit(train(), epochs=1, steps_per_epoch=s["warmup"], verbose=0,
            shuffle=False)
  _sync(model)
  start = time.perf_counter()
  model.fit(train(), epochs=1, steps_per_epoch=s["steps"], verbose=0,
            shuffle=False)
  _sync(model)
  train_s = time.perf_counter() - start
  model.predict(images(), steps=s["warmup"], verbose=0)
  start = time.perf_counter()
  model.predict(images(), steps=s["steps"], verbose=0)
  predict_s = time.perf_counter() - start
  n = s["steps"] * s["batch"]
  return n / train_s, n / predict_s


def peak_memory(backend: str, device: dict) -> tuple[float, str]:
  """(MiB, what was measured)."""
  if device["kind"] == "gpu" and backend == "jax":
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return stats["peak_bytes_in_use"] / _MIB, "device_peak_in_process"
  if device["kind"] == "gpu" and backend == "tensorflow":
    import tensorflow as tf
    return (tf.config.experimental.get_memory_info("GPU:0")["peak"] / _MIB,
            "device_peak_in_arm")
  # Linux reports ru_maxrss in KiB.
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "host_peak_rss")


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_arm(name: str, schema, s: dict, backend: str, precision: str,
            device: dict) -> dict:
  while True:
    try:
      if backend == "tensorflow" and device["kind"] == "gpu":
        import tensorflow as tf
        tf.config.experimental.reset_memory_stats("GPU:0")
      model = build(schema, s, precision)
      train, predict = rates(model, schema, s, backend)
      break
    except Exception as e:  # pylint: disable=broad-except
      if not _out_of_memory(e) or s["batch"] == 1:
        raise
      s["batch"] //= 2
      print(f"  out of memory: batch halved to {s['batch']}", flush=True)
  mib, what = peak_memory(backend, device)
  row = {"arm": name, "heads": len(schema.heads), "batch": s["batch"],
         "train_img_s": train, "predict_img_s": predict,
         "train_step_ms": 1e3 * s["batch"] / train,
         "peak_memory_mib": mib, "memory": what}
  print(f"  {name:<16} batch {s['batch']:>4}  train {train:9.1f} img/s  "
        f"predict {predict:9.1f} img/s  peak {mib:8.0f} MiB ({what})",
        flush=True)
  return row


def main(argv):
  del argv
  backend = _BACKEND.value or os.environ.get("KERAS_BACKEND", "jax")
  if backend not in BACKENDS:
    raise app.UsageError(f"KERAS_BACKEND={backend}: this benchmark runs on "
                         f"{' or '.join(BACKENDS)} (--backend)")
  if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
    raise app.UsageError("keras was imported before the backend was chosen")
  os.environ["KERAS_BACKEND"] = backend
  import keras
  import mlc_keras  # pylint: disable=unused-import  (checks the keras version)

  s = settings()
  device = device_info(backend)
  precision = choose_precision(_PRECISION.value, device)
  backend_version = __import__(backend).__version__
  print(f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"keras {keras.__version__} on {backend} {backend_version}; device "
        f"{device['name']} ({device['kind']}, compute capability "
        f"{device['compute_capability']}); {precision}, jit", flush=True)
  if device["kind"] != "gpu" and not _TINY.value:
    print("no GPU found: this measures the CPU (--tiny for a quick check)")
  started = time.time()
  rows = []
  try:
    for name, schema in arm_schemas(s["heads"]):
      rows.append(run_arm(name, schema, s, backend, precision, device))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  # Per image: an arm may have run at a halved batch.
  ratio = rows[0]["train_img_s"] / rows[-1]["train_img_s"]
  predict_ratio = rows[0]["predict_img_s"] / rows[-1]["predict_img_s"]
  print(f"{rows[-1]['heads']}-head / 1-head train step: {ratio:.3f}; "
        f"predict: {predict_ratio:.3f}", flush=True)
  print(json.dumps({
      "benchmark": "gpu", "backend": backend,
      "backend_version": backend_version, "keras": keras.__version__,
      "device": device["name"], "device_kind": device["kind"],
      "compute_capability": device["compute_capability"],
      "precision": precision, "jit": True, "tiny": _TINY.value,
      "backbone": s["backbone"], "image_size": s["size"],
      "steps": s["steps"], "warmup": s["warmup"], "rows": rows,
      "step_ratio": ratio, "predict_ratio": predict_ratio,
      "step_ratio_heads": rows[-1]["heads"],
      "peak_memory_mib": max(r["peak_memory_mib"] for r in rows),
      "seconds": time.time() - started}))


if __name__ == "__main__":
  app.run(main)
