r"""Does a head with few labels gain from sharing the backbone with a head
that has many?

Demo images (demo.render, rendered in memory at the demo's 64 px and resized
by the data pipeline). For each pair A:B, head A is labelled on every one of
the --train_size training images and head B on only K of them (a seeded,
class-balanced draw; blank elsewhere, i.e. masked through sample_weight by
pipeline.train_dataset). Two models, same backbone (modeling.model.small_cnn),
same image size, optimizer (training.setup's AdamW with warm-up + cosine), batch,
seed and initial backbone weights:

  alone   only head B, trained on its K labelled images;
  shared  heads A and B in one model, trained on all the images, B masked
          where unlabelled (the project's normal missing-label path).

Budgets (why two: neither alone is a fair fight on its own terms):

  equal steps      both arms get --steps steps. The alone arm then sees each
                   of its K images --steps*batch/K times (hundreds of epochs:
                   it is trained to convergence, memorises its K images), the
                   shared arm each image --steps*batch/train_size times. Equal
                   compute; the alone arm sees many more B-label presentations.
  equal epochs     (alone_ee) the alone arm trained for as many epochs over
                   its K images as the shared arm did over its images, i.e.
                   each B label is presented as often in both arms. Cheap
                   (few steps); it handicaps the alone arm, which is not
                   converged, so it is the budget most favourable to sharing.

Head-B accuracy is measured in inference mode on a fresh, fully labelled test
set (pipeline.eval_dataset + metrics.collect). The equal-steps arms are also
scored at 1/3 and 2/3 of their steps, to show whether they have plateaued
(diagnostic only: nothing is selected on the test set).

  python benchmarks/few_labels.py                            # defaults below
  python benchmarks/few_labels.py --pairs=shape:fill --ks=32 --seeds=0 --steps=300

Printed last: per pair and K, the mean over seeds of the paired difference
shared - alone in head-B accuracy (equal steps), with its spread.
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

_PAIRS = flags.DEFINE_list(
    "pairs", ["shape:fill", "shape:size"],
    "A:B pairs: A (one head, or several joined by '+') labelled on every "
    "training image, B on only K.")
_KS = flags.DEFINE_list("ks", ["16", "32", "64"],
                        "Numbers of training images labelled for head B.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"],
                           "Seeds: data, label draw, weights, data order.")
_STEPS = flags.DEFINE_integer("steps", 900, "Steps per arm (equal steps).")
_BATCH = flags.DEFINE_integer(
    "batch_size", 32, "Batch size (the alone arm uses min(this, K)).")
_TRAIN = flags.DEFINE_integer("train_size", 2000, "Training images.")
_TEST = flags.DEFINE_integer("test_size", 400, "Test images (all labelled).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Square input side.")
_LR = flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.")
_EQUAL_EPOCHS = flags.DEFINE_bool(
    "equal_epochs", True, "Also train the alone arm for the shared arm's "
    "number of epochs (equal B-label presentations).")

_RENDER = 64  # the demo's render size; the pipeline resizes to --image_size


def render_set(n: int, seed: int):
  """n demo images (uint8 [n, 64, 64, 3]) and {head: int32 labels [n]}."""
  import numpy as np
  from mlc_keras.data import demo
  rng = np.random.default_rng(seed)
  images, labels = [], {h.name: [] for h in demo.SCHEMA}
  for _ in range(n):
    attrs = demo._sample_attrs(rng, False)  # pylint: disable=protected-access
    images.append(demo.render(attrs, rng, n=_RENDER))
    for h in demo.SCHEMA:
      labels[h.name].append(h.index(attrs[h.name]))
  return np.stack(images), {k: np.array(v, np.int32) for k, v in labels.items()}


balanced_draw = benchutil.balanced_draw  # shared with backbones_real.py


def source(images, labels: dict, schema, name: str, rows=None):
  """A decoded-pixels sources.Source over the given rows; labels [N, heads]
  with -1 where a head is unlabelled (the layout every source produces)."""
  import numpy as np
  import tensorflow as tf
  from mlc_keras.data import sources
  if rows is None:
    rows = np.ones(len(images), bool)
  x = images[rows]
  y = np.stack([labels[h][rows] for h in schema.names], axis=1).astype(np.int32)

  def make():
    return tf.data.Dataset.from_tensor_slices((x, y))
  return sources.Source(make, len(x), False, name)


def masked(labels: dict, head: str, keep):
  import numpy as np
  out = dict(labels)
  out[head] = np.where(keep, labels[head], -1).astype(np.int32)
  return out


def train_and_score(schema, train_src, test_src, b_head: str, steps: int,
                    batch: int, seed: int, checkpoints: int = 1):
  """Builds small_cnn (seeded), compiles it with the project's losses,
  metrics and optimizer, fits `steps` steps of pipeline.train_dataset and
  returns (head-B test accuracy at each checkpoint, {head: final test
  accuracy}, seconds)."""
  import keras
  import numpy as np
  from mlc_keras.core import config as config_lib
  from mlc_keras.modeling import metrics
  from mlc_keras.data import pipeline
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.training import setup

  size = _IMAGE_SIZE.value
  keras.utils.set_random_seed(seed)
  model = model_lib.small_cnn(schema, size)
  optimizer = setup.optimizer(
      config_lib.TrainConfig(learning_rate=_LR.value), steps)
  setup.compile_model(model, schema, optimizer)
  ds = pipeline.train_dataset(train_src, schema, image_size=size, batch_size=batch,
                          seed=seed, cache=True, deterministic=True)
  test_ds = pipeline.eval_dataset(test_src, schema, image_size=size,
                              batch_size=200, cache=True)

  def score():
    got = metrics.collect(model, test_ds, schema)
    return {h: float(np.mean(p.argmax(1)[m] == y[m]))
            for h, (p, y, m) in got.items()}

  curve = []

  class Probe(keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch < checkpoints - 1:
        curve.append(score()[b_head])

  per = [steps // checkpoints] * checkpoints
  per[-1] += steps - sum(per)
  t = time.time()
  # Equal chunks only if they divide evenly; otherwise one chunk.
  if len(set(per)) == 1:
    model.fit(ds, epochs=checkpoints, steps_per_epoch=per[0], verbose=0,
              callbacks=[Probe()])
  else:
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
  seconds = time.time() - t
  final = score()
  curve.append(final[b_head])
  return curve, final, seconds


def main(argv):
  del argv
  import numpy as np
  from mlc_keras.data import demo

  started = time.time()
  batch, n = _BATCH.value, _TRAIN.value
  steps = _STEPS.value
  ks = [int(k) for k in _KS.value]
  seeds = [int(s) for s in _SEEDS.value]
  pairs = []
  for p in _PAIRS.value:
    a, _, b = p.partition(":")
    pairs.append((tuple(a.split("+")), b))
  print(f"{benchutil.machine()}; other processes may share the cores",
        flush=True)
  print(f"small_cnn at {_IMAGE_SIZE.value}px, train {n} / test {_TEST.value} "
        f"demo images per seed, batch {batch}, {steps} steps per arm "
        f"(= {steps * batch / n:.1f} epochs of the shared arm), peak lr "
        f"{_LR.value}, pairs {_PAIRS.value}, K {ks}, seeds {seeds}",
        flush=True)

  rows = []  # dicts, one per (pair, K, seed)
  for seed in seeds:
    x, y = render_set(n, 1000 * seed + 1)
    xt, yt = render_set(_TEST.value, 1000 * seed + 2)
    for heads_a, b in pairs:
      head_b = demo.SCHEMA.head(b)
      schema_b = demo.SCHEMA.select([b])
      schema_ab = demo.SCHEMA.select(list(heads_a) + [b])
      test_b = source(xt, yt, schema_b, "test")
      test_ab = source(xt, yt, schema_ab, "test")
      majority = float(np.bincount(yt[b]).max() / len(yt[b]))
      for k in ks:
        few = balanced_draw(y[b], k, head_b.num_classes, 1000 * seed + 3)
        alone_src = source(x, y, schema_b, f"{b} alone", rows=few)
        shared_src = source(x, masked(y, b, few), schema_ab, "shared")
        alone_batch = min(batch, k)
        shared_curve, shared_final, t_s = train_and_score(
            schema_ab, shared_src, test_ab, b, steps, batch, seed, 3)
        alone_curve, _, t_a = train_and_score(
            schema_b, alone_src, test_b, b, steps, alone_batch, seed, 3)
        row = dict(pair=f"{'+'.join(heads_a)}:{b}", k=k, seed=seed,
                   shared=shared_curve[-1], alone=alone_curve[-1],
                   shared_curve=shared_curve, alone_curve=alone_curve,
                   a_acc={h: shared_final[h] for h in heads_a},
                   majority=majority, t_s=t_s, t_a=t_a)
        line = (f"  seed {seed} {row['pair']:<12} K={k:<3} head-B acc: "
                f"shared {row['shared']:.3f} (curve "
                f"{' '.join(f'{v:.3f}' for v in shared_curve)}; A "
                f"{' '.join(f'{h} {v:.3f}' for h, v in row['a_acc'].items())};"
                f" {t_s:.0f}s), alone {row['alone']:.3f} (curve "
                f"{' '.join(f'{v:.3f}' for v in alone_curve)}; {t_a:.0f}s)")
        if _EQUAL_EPOCHS.value:
          # As many epochs over the K images as the shared arm made over n
          # (train_dataset drops the last partial batch, so epochs are
          # counted in whole batches on both sides).
          epochs = steps / (n // batch)
          ee_steps = max(1, round(epochs * (k // alone_batch)))
          ee_curve, _, _ = train_and_score(
              schema_b, alone_src, test_b, b, ee_steps, alone_batch, seed)
          row["alone_ee"] = ee_curve[-1]
          row["ee_steps"] = ee_steps
          line += f", alone_ee {row['alone_ee']:.3f} ({ee_steps} steps)"
        print(line + f"  [majority {majority:.3f}; "
              f"{time.time() - started:.0f}s elapsed]", flush=True)
        rows.append(row)

  def mean_sd(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)

  arms = ["shared", "alone"] + (["alone_ee"] if _EQUAL_EPOCHS.value else [])
  print(f"\nhead-B test accuracy (inference mode), per seed {seeds}; "
        "mean ± sample sd over seeds")
  print(f"{'pair':<14} {'K':>3} {'arm':<9} {'per seed':<28} {'mean':>6} "
        f"{'sd':>6}")
  summary = []
  for pair in dict.fromkeys(r["pair"] for r in rows):
    for k in ks:
      cell = [r for r in rows if r["pair"] == pair and r["k"] == k]
      for arm in arms:
        v = [r[arm] for r in cell]
        m, sd = mean_sd(v)
        print(f"{pair:<14} {k:>3} {arm:<9} "
              f"{' '.join(f'{a:.3f}' for a in v):<28} {m:>6.3f} {sd:>6.3f}")
      d = [r["shared"] - r["alone"] for r in cell]
      wins = sum(x > 0 for x in d)
      summary.append((pair, k, mean_sd(d), wins, len(d),
                      statistics.mean(r["majority"] for r in cell)))
  print(f"\ntotal {time.time() - started:.0f} s")
  print("\nhead-B accuracy, shared - alone at equal steps (paired by seed): "
        "mean ± sd, seeds where shared is higher")
  for pair, k, (m, sd), wins, count, majority in summary:
    print(f"  {pair:<14} K={k:<3} {m:+.3f} ± {sd:.3f}  ({wins}/{count}; "
          f"majority class {majority:.3f})")


if __name__ == "__main__":
  app.run(main)
