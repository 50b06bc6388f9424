r"""Predict latency of one N-head model vs N single-head models.

The claim: one backbone shared by N heads costs ~1/N of N separate models
(one per attribute, same backbone). Both sides are built with
model.build_model (ResNet50V2, weights=None: latency does not depend on the
weights) and run through Keras' compiled predict function
(predict_on_batch) on the same uint8 batch. The separate side is the N
single-head models called one after another. Each model is warmed up first
(the first call traces); then the two sides are timed alternately, ABBA
order, so load drift from other processes hits both alike. Medians are
reported, and the headline ratio is printed last:

  ratio = median time(one N-head model) / median time(N single-head models)

  python benchmarks/heads_vs_separate.py                       # 8 heads, 96px, ~4 min*
  python benchmarks/heads_vs_separate.py --image_size=224 --repeats=5

* on 2 shared CPU cores at load average ~7 (other jobs running).

Target: ratio <= 0.13 (FLOPs say ~1/N = 0.125 for N = 8). The floor is 1/N
plus the heads' own cost, so the target leaves ~4% for noise: on a shared
machine read the paired per-round ratios printed above the headline too.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HEADS = flags.DEFINE_integer("heads", 8, "N: heads of the shared model.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per predict call.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 96, "Square input side.")
_BACKBONE = flags.DEFINE_string("backbone", "ResNet50V2", "model.BACKBONES name.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 8, "Timed rounds; each times both sides once.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls per model first.")

TARGET = 0.13


def machine() -> str:
  return benchutil.machine()


def schema_of(n: int):
  from mlc_keras.core import heads as heads_lib
  # Varied class counts, as real attributes have; heads are a negligible
  # share of the cost either way.
  return heads_lib.LabelSchema(tuple(
      heads_lib.HeadSpec(f"attr{i}", tuple(f"c{j}" for j in range(2 + i % 5)))
      for i in range(n)))


def main(argv):
  del argv
  import keras
  import numpy as np
  from mlc_keras.modeling import model as model_lib

  started = time.time()
  n, size, batch = _HEADS.value, _IMAGE_SIZE.value, _BATCH.value
  print(f"{machine()}; other processes may share the cores", flush=True)
  keras.utils.set_random_seed(0)
  schema = schema_of(n)
  multi = model_lib.build_model(schema, size, _BACKBONE.value)
  singles = [model_lib.build_model(schema.select([name]), size, _BACKBONE.value)
             for name in schema.names]
  images = np.random.default_rng(0).integers(
      0, 256, (batch, size, size, 3), dtype=np.uint8)
  print(f"built 1 x {n}-head + {n} x 1-head {_BACKBONE.value} at {size}x{size} "
        f"in {time.time() - started:.0f} s", flush=True)

  for m in [multi] + singles:
    for _ in range(_WARMUP.value):
      m.predict_on_batch(images)
  out = multi.predict_on_batch(images)
  assert sorted(out) == sorted(schema.names), sorted(out)
  print(f"warmed up in {time.time() - started:.0f} s", flush=True)

  def time_multi():
    t = time.perf_counter()
    multi.predict_on_batch(images)
    return time.perf_counter() - t

  def time_separate():
    each = []
    for m in singles:
      t = time.perf_counter()
      m.predict_on_batch(images)
      each.append(time.perf_counter() - t)
    return sum(each), each

  multi_s, sep_s, one_s, paired = [], [], [], []
  for r in range(_REPEATS.value):
    # ABBA: alternate which side goes first so drift cancels.
    if r % 2 == 0:
      a = time_multi()
      b, each = time_separate()
    else:
      b, each = time_separate()
      a = time_multi()
    multi_s.append(a)
    sep_s.append(b)
    one_s.extend(each)
    paired.append(a / b)
    print(f"  round {r + 1}: {n}-head {1000 * a:.0f} ms, {n} x 1-head "
          f"{1000 * b:.0f} ms, ratio {a / b:.3f}", flush=True)

  med_multi = statistics.median(multi_s)
  med_sep = statistics.median(sep_s)
  med_one = statistics.median(one_s)
  p_multi = multi.count_params()
  p_sep = sum(m.count_params() for m in singles)
  ratio = med_multi / med_sep
  q = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3

  print(f"\n{_BACKBONE.value}, weights=None, {size}x{size}, batch {batch}, "
        f"{n} heads, median of {_REPEATS.value} interleaved rounds")
  print(f"{'model(s)':<28} {'median ms':>10} {'img/s':>8} {'params (M)':>11}")
  print(f"{f'1 x {n}-head':<28} {1000 * med_multi:>10.0f} "
        f"{batch / med_multi:>8.1f} {p_multi / 1e6:>11.2f}")
  print(f"{f'{n} x 1-head, in sequence':<28} {1000 * med_sep:>10.0f} "
        f"{batch / med_sep:>8.1f} {p_sep / 1e6:>11.2f}")
  print(f"{'one 1-head model':<28} {1000 * med_one:>10.0f} "
        f"{batch / med_one:>8.1f} {p_sep / n / 1e6:>11.2f}")
  print(f"\n{n}-head / one 1-head model time: {med_multi / med_one:.3f} "
        "(the heads' own cost; ~1.0 expected)")
  print(f"paired per-round ratio: median {statistics.median(paired):.3f}, "
        f"quartiles {q[0]:.3f} .. {q[2]:.3f}, range {min(paired):.3f} .. "
        f"{max(paired):.3f}")
  print(f"parameter ratio ({n}-head / {n} x 1-head): {p_multi / p_sep:.3f} "
        f"(1/N = {1 / n:.3f})")
  print(f"total {time.time() - started:.0f} s")
  print(f"\nlatency ratio ({n}-head / {n} x 1-head): {ratio:.3f}  "
        f"(target <= {TARGET:.2f}) {'PASS' if ratio <= TARGET else 'FAIL'}")


if __name__ == "__main__":
  app.run(main)
