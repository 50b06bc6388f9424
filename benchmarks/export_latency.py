r"""Latency, size and agreement of every export artefact, in one run.

Batch-1 and batch-32 latency of Keras, the SavedModel's tensor and bytes
signatures, TFLite fp32/fp16/dynamic/int8 (LiteRT) and ONNX Runtime, each
artefact's size, and its top-1 agreement with Keras. Ratios against the
SavedModel tensor signature are printed last.

  python benchmarks/export_latency.py                      # 224x224, ~5 min
  python benchmarks/export_latency.py --image_size=96 --repeats=15   # ~3 min
  python benchmarks/export_latency.py --model_dir=mlc_runs/demo
  python benchmarks/export_latency.py --workdir=/tmp/lat     # keep artefacts;
                                                  # a second run only re-times

Without --model_dir the model is ResNet50V2 (weights=None) on the demo schema
with its heads fitted on the frozen backbone's features of rendered demo
images: latency does not depend on the weights, and fitted heads make the
agreement column mean something.

Targets measured before on 2 CPU cores: TFLite fp32 batch-1 <= 0.8x the
SavedModel; ONNX Runtime batch-32 <= 0.65x; bytes signature <= 1.10x the
tensor signature; int8 ~3.9x smaller than fp32. Measured here at 224x224
(quiet machine): 0.67x, 0.65x, 1.02x, 3.89x. At 96x96 ONNX Runtime's
batch-32 lead shrinks (0.80x) while TFLite's batch-1 lead grows (0.52x).
The machine is shared: other processes' load swings latencies 2-3x, so
compare ratios from one run, never milliseconds across runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Trained model folder; default: a fresh demo-schema model.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 224, "Image side when no --model_dir is given.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
_IMAGES = flags.DEFINE_integer("images", 32, "Images for the agreement column.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where artefacts go (default: a temporary folder, "
    "deleted). A workdir kept from an earlier run is timed again, not "
    "re-exported.")


def demo_images(schema, n: int, size: int, seed: int):
  import numpy as np
  from mlc_keras.data import demo
  rng = np.random.default_rng(seed)
  images, labels = [], {h.name: [] for h in schema.heads}
  for _ in range(n):
    attrs = {h.name: h.classes[rng.integers(h.num_classes)] for h in schema.heads}
    images.append(demo.render(attrs, rng, n=size))
    for h in schema.heads:
      labels[h.name].append(h.index(attrs[h.name]))
  return np.stack(images), {k: np.array(v) for k, v in labels.items()}


def fitted_demo_model(size: int):
  import keras
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.data import demo
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(demo.SCHEMA, size)
  images, labels = demo_images(demo.SCHEMA, 256, size, seed=0)
  features = keras.Model(model.input, model.get_layer(
      model_lib.FEATURES_LAYER).output).predict(images, batch_size=32, verbose=0)
  inputs = keras.Input(features.shape[1:])
  heads = keras.Model(inputs, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(inputs) for h in demo.SCHEMA.heads})
  heads.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss="sparse_categorical_crossentropy")
  heads.fit(features, labels, epochs=60, batch_size=32, verbose=0)
  for h in demo.SCHEMA.heads:
    model.get_layer(h.name).set_weights(heads.get_layer(h.name).get_weights())
  return model, demo.SCHEMA


def median_ms(calls: dict, repeats: int) -> dict:
  """{name: (fn, arg)} -> {name: median ms per call}.

  The artefacts take turns, one timed call each per round, so the load of
  other processes on the shared machine (it swings 2-3x within seconds)
  hits them all alike. An untimed call before each timed one lets the
  previous runtime's spinning worker threads (ONNX Runtime, XNNPACK) go
  quiet first.
  """
  for fn, arg in calls.values():
    fn(arg)  # tracing, allocation, caches
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, arg) in calls.items():
      fn(arg)
      start = time.perf_counter()
      fn(arg)
      times[name].append(time.perf_counter() - start)
  return {name: 1000 * statistics.median(t) for name, t in times.items()}


def folder_size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def main(argv):
  del argv
  import tensorflow as tf
  from mlc_keras.exporters import onnx as onnx_lib
  from mlc_keras.exporters import parity as parity_lib
  from mlc_keras.exporters import saved_model as saved_model_lib
  from mlc_keras.exporters import tflite as tflite_lib
  from mlc_keras.inference import predictors
  from mlc_keras.runs import folder as run_dir

  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="export_latency_")
  started = time.time()
  try:
    keras_path = os.path.join(workdir, "model.keras")
    saved_model = os.path.join(workdir, "mlc", "1")
    tflite = {q: tflite_lib.tflite_path(os.path.join(workdir, "litert"), "mlc", q)
              for q in tflite_lib.QUANTIZATIONS}
    onnx = os.path.join(workdir, "onnx", "mlc.onnx")
    reuse = all(os.path.exists(p) for p in
                [keras_path, saved_model, onnx, *tflite.values()])
    if reuse:  # a --workdir kept from an earlier run: time it again
      model, schema = run_dir.load_trained(workdir)
    elif _MODEL_DIR.value:
      model, schema = run_dir.load_trained(_MODEL_DIR.value)
    else:
      model, schema = fitted_demo_model(_IMAGE_SIZE.value)
    size = run_dir.image_size_of(model)
    images, _ = demo_images(schema, max(_IMAGES.value, 32), size, seed=1)
    calibration, _ = demo_images(schema, 100, size, seed=2)
    print(f"model {model.name} at {size}x{size}, {len(schema)} heads; "
          f"{os.cpu_count()} CPU cores; workdir {workdir}", flush=True)

    if not reuse:
      if os.path.exists(saved_model):
        shutil.rmtree(saved_model)
      saved_model_lib.to_saved_model(model, schema, saved_model)
      tflite = tflite_lib.to_tflite_variants(
          saved_model, os.path.join(workdir, "litert"), "mlc",
          tflite_lib.QUANTIZATIONS, calibration, isolate=True)
      onnx = onnx_lib.to_onnx_with_labels(
          saved_model, os.path.join(workdir, "onnx"), "mlc", isolate=True)
      model.save(keras_path)
      schema.save(workdir)
      print(f"exported in {time.time() - started:.0f} s", flush=True)

    sm = predictors.SavedModelPredictor(saved_model)
    sm_bytes = predictors.SavedModelBytesPredictor(saved_model, sm.loaded)
    runners = [("keras", predictors.KerasPredictor(keras_path, model),
                   os.path.getsize(keras_path)),
                  ("saved_model", sm, folder_size(saved_model)),
                  ("saved_model_bytes", sm_bytes, folder_size(saved_model))]
    runners += [(f"tflite_{q}", predictors.TFLitePredictor(p),
                    os.path.getsize(p)) for q, p in tflite.items()]
    runners.append(("onnx", predictors.OnnxPredictor(onnx),
                       os.path.getsize(onnx)))

    reference = runners[0][1].predict(images)
    batches = {1: images[:1], 32: images[:32]}
    # The bytes signature is timed on encoded JPEGs, as a client sends them:
    # decoding is part of its cost.
    encoded = {b: [tf.io.encode_jpeg(i, quality=95).numpy() for i in x]
               for b, x in batches.items()}
    latency = {name: {} for name, _, _ in runners}
    for b in batches:
      calls = {name: ((p.predict_encoded, encoded[b])
                      if name == "saved_model_bytes" else (p, batches[b]))
               for name, p, _ in runners}
      for name, ms in median_ms(calls, _REPEATS.value).items():
        latency[name][b] = ms
      print(f"  timed batch {b}", flush=True)
    rows = {}
    for name, predictor, nbytes in runners:
      report = parity_lib.parity(predictor, reference, images, name=name)
      agree = min(v["top1_agreement"] for v in report["outputs"].values())
      diff = max(v["max_abs_diff"] for v in report["outputs"].values())
      rows[name] = (latency[name], nbytes, agree, diff)

    print(f"\n{'artefact':<18} {'batch-1 ms':>10} {'batch-32 ms':>11} "
          f"{'size MB':>8} {'top-1 agree':>11} {'max|diff|':>9}")
    for name, (latency, nbytes, agree, diff) in rows.items():
      print(f"{name:<18} {latency[1]:>10.1f} {latency[32]:>11.1f} "
            f"{nbytes / 1e6:>8.1f} {agree:>11.1%} {diff:>9.1e}")

    base = rows["saved_model"][0]
    print("\nratios vs the SavedModel tensor signature (lower is faster):")
    for name, (latency, _, _, _) in rows.items():
      print(f"  {name:<18} batch-1 {latency[1] / base[1]:.2f}x   "
            f"batch-32 {latency[32] / base[32]:.2f}x")
    fp32, int8 = rows["tflite_fp32"], rows["tflite_int8"]
    print("\ntargets:")
    print(f"  TFLite fp32 batch-1 / SavedModel     "
          f"{fp32[0][1] / base[1]:.2f}x  (target <= 0.80x)")
    print(f"  ONNX Runtime batch-32 / SavedModel   "
          f"{rows['onnx'][0][32] / base[32]:.2f}x  (target <= 0.65x)")
    for b in (1, 32):
      print(f"  bytes / tensor signature, batch-{b:<2}   "
            f"{rows['saved_model_bytes'][0][b] / base[b]:.2f}x  "
            "(target <= 1.10x)")
    print(f"  TFLite fp32 size / int8 size         "
          f"{fp32[1] / int8[1]:.2f}x  (target ~3.9x smaller)")
    print(f"total {time.time() - started:.0f} s")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
