r"""How the cost of one model grows with its number of heads.

For N in --heads (default 1, 2, 4, 8, 16, 32, 64) heads of --classes classes
each on the same backbone (modeling.model.build_model, weights=None, a
missing label every fourth cell): the train step (compile_model's loss,
weighted metrics and AdamW, through model.train_on_batch on one in-memory
batch of --batch images) and the predict latency of one image
(model(x, training=False) in a tf.function), each as a ratio to 1 head.
All N are built first; then --rounds rounds time every N in turn (order
rotated each round), --steps calls each, and the median of a call's time
over the rounds' calls is kept, so load from other processes hits every N
alike. The FLOP count beside each ratio is 2 x the multiply-adds of every
Conv2D / DepthwiseConv2D / Dense layer of one forward pass.

  python benchmarks/heads_scaling.py                         # ResNet50V2 64px
  python benchmarks/heads_scaling.py --image_size=224 --batch=32

Target: <= 1.01x per extra head, i.e. (ratio - 1) / (N - 1) <= 0.01 for
both the train step and predict, at every N.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HEADS = flags.DEFINE_list("heads", ["1", "2", "4", "8", "16", "32", "64"],
                           "Head counts to measure (the first is the base).")
_CLASSES = flags.DEFINE_integer("classes", 10, "Classes per head.")
_BACKBONE = flags.DEFINE_string("backbone", "ResNet50V2", "Backbone.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Input side.")
_BATCH = flags.DEFINE_integer("batch", 8, "Train batch size.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per N per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds over every N.")

TARGET = 0.01  # extra cost per extra head, as a share of the 1-head cost


def flops(model) -> int:
  """2 x multiply-adds of the Conv2D, DepthwiseConv2D and Dense layers."""
  import keras
  total = 0
  for layer in _layers(model):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      kh, kw = layer.kernel_size
      _, h, w, c = layer.output.shape
      total += h * w * c * kh * kw
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      _, h, w, c = layer.output.shape
      total += h * w * c * kh * kw * layer.input.shape[-1] // layer.groups
    elif isinstance(layer, keras.layers.Dense):
      total += layer.input.shape[-1] * layer.units
  return 2 * total


def _layers(model):
  for layer in model.layers:
    if hasattr(layer, "layers"):
      yield from _layers(layer)
    else:
      yield layer


def schema_of(n: int, classes: int):
  from mlc_keras.core import heads as heads_lib
  return heads_lib.LabelSchema(tuple(
      heads_lib.HeadSpec(f"h{i:02d}", tuple(f"c{j}" for j in range(classes)))
      for i in range(n)))


def build(n: int):
  """(train call, predict call, FLOPs) of an n-head model."""
  import keras
  import numpy as np
  import tensorflow as tf
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.training import setup
  schema = schema_of(n, _CLASSES.value)
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(schema, _SIZE.value, _BACKBONE.value, None)
  setup.compile_model(model, schema, keras.optimizers.AdamW(1e-4), top_k=2)
  rng = np.random.default_rng(0)
  b, s = _BATCH.value, _SIZE.value
  x = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  labels = rng.integers(0, _CLASSES.value, (n, b))
  y = {h.name: labels[k] for k, h in enumerate(schema.heads)}
  w = {h.name: (np.arange(b) % 4 != k % 4).astype(np.float32)
       for k, h in enumerate(schema.heads)}
  one = tf.constant(x[:1])
  serve = tf.function(lambda t: model(t, training=False))

  def train():
    model.train_on_batch(x, y, sample_weight=w)

  def predict():
    tf.nest.map_structure(lambda t: t.numpy(), serve(one))
  train()  # traces
  predict()
  return train, predict, flops(model)


def main(argv):
  del argv
  counts = [int(n) for n in _HEADS.value]
  started = time.time()
  print(f"{benchutil.machine()}; other processes share the cores", flush=True)
  arms = {}
  for n in counts:
    arms[n] = build(n)
    print(f"  built {n} heads at {time.time() - started:.0f} s", flush=True)
  times = {n: {"train": [], "predict": []} for n in counts}
  for r in range(_ROUNDS.value):
    order = counts[r % len(counts):] + counts[:r % len(counts)]
    for n in order:
      for kind, call in (("train", arms[n][0]), ("predict", arms[n][1])):
        for _ in range(_STEPS.value):
          t = time.perf_counter()
          call()
          times[n][kind].append(time.perf_counter() - t)
    print(f"  round {r + 1} done at {time.time() - started:.0f} s", flush=True)

  base = counts[0]
  med = {n: {k: statistics.median(v) for k, v in d.items()}
         for n, d in times.items()}
  print(f"\n{_BACKBONE.value} {_SIZE.value}px, heads of {_CLASSES.value} "
        f"classes; train batch {_BATCH.value}, predict batch 1; median of "
        f"{_ROUNDS.value * _STEPS.value} calls")
  print(f"{'heads':>5} {'train ms':>9} {'ratio':>6} {'/head':>7} "
        f"{'predict ms':>10} {'ratio':>6} {'/head':>7} {'GFLOP':>8} "
        f"{'ratio':>7}")
  rows, worst = [], 0.0
  for n in counts:
    tr = med[n]["train"] / med[base]["train"]
    pr = med[n]["predict"] / med[base]["predict"]
    fr = arms[n][2] / arms[base][2]
    per = [(x - 1) / (n - base) if n > base else 0.0 for x in (tr, pr)]
    worst = max(worst, *per)
    rows.append({"heads": n, "train_ms": med[n]["train"] * 1e3,
                 "train_ratio": tr, "predict_ms": med[n]["predict"] * 1e3,
                 "predict_ratio": pr, "gflop": arms[n][2] / 1e9,
                 "flop_ratio": fr})
    print(f"{n:>5} {med[n]['train'] * 1e3:>9.1f} {tr:>6.3f} {per[0]:>+7.4f} "
          f"{med[n]['predict'] * 1e3:>10.2f} {pr:>6.3f} {per[1]:>+7.4f} "
          f"{arms[n][2] / 1e9:>8.3f} {fr:>7.4f}")
  print(json.dumps({"benchmark": "heads_scaling", "rows": rows}))
  print(f"total {time.time() - started:.0f} s")
  print(f"\nworst extra cost per extra head (train or predict): {worst:+.4f} "
        f"of the 1-head cost (target <= {TARGET:.2f}) "
        f"{'PASS' if worst <= TARGET else 'FAIL'}")


if __name__ == "__main__":
  app.run(main)
