r"""One single-label model over attribute combinations vs one multi-head model.

On demo images rendered in memory (demo.render; the held-out combination,
demo.HELD_OUT = large outlined blue triangles, never in training):

  (a) "single": one softmax over every attribute combination seen in training
      (shape x colour x size x fill; 35 of 36, the held-out one excluded);
  (b) "multi": one model with a softmax per attribute (4 heads);
  (c) a head with 10x fewer labels ("fill" labelled on --few_share of the
      training images): trained alone on those images vs inside the
      multi-head model with the other heads fully labelled.

Reported, in inference mode, on a fresh test set and on held-out
combination images: combination accuracy (all four attributes right), per-attribute
accuracy, held-out-combination accuracy ((a) scores 0 by construction: the
combination is not one of its classes), and the few-label head's accuracy
both ways. Every model: same backbone, image size, steps, batch and seed.

  python benchmarks/single_vs_multi.py                      # 32px, 150 steps
  python benchmarks/single_vs_multi.py --image_size=48 --steps=400

The held-out ratio (multi / chance of picking the combination at random) is
printed last.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Square input side.")
_STEPS = flags.DEFINE_integer("steps", 150, "Training steps per model.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_TRAIN = flags.DEFINE_integer("train_size", 2000, "Training images.")
_TEST = flags.DEFINE_integer("test_size", 400, "Test images (seen combinations).")
_HELDOUT = flags.DEFINE_integer("heldout_size", 100,
                                "Test images of the held-out combination.")
_FEW_SHARE = flags.DEFINE_float(
    "few_share", 0.1, "Share of training images where the few-label head "
    "(fill) is labelled, for (c).")
_BACKBONE = flags.DEFINE_string(
    "backbone", "ResNet50V2", "model.BACKBONES name, or 'small_cnn' (three "
    "conv layers, the network of tests/compose_test.py): from scratch at 32px "
    "it learns the demo's shapes in minutes, where the keras.applications "
    "backbones need far more steps than a CPU run allows.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data and weights.")
_FEW_HEAD = "fill"


def render_set(n: int, seed: int, held_out: bool, size: int):
  import numpy as np
  import tensorflow as tf
  from mlc_keras.data import demo
  rng = np.random.default_rng(seed)
  images, labels = [], {h.name: [] for h in demo.SCHEMA}
  for _ in range(n):
    attrs = demo._sample_attrs(rng, held_out)  # pylint: disable=protected-access
    images.append(demo.render(attrs, rng, n=64))
    for h in demo.SCHEMA:
      labels[h.name].append(h.index(attrs[h.name]))
  # Render at the demo's size, then resize like the data pipeline does.
  x = tf.image.resize(np.stack(images), (size, size), antialias=True)
  x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8).numpy()
  return x, {k: np.array(v, np.int32) for k, v in labels.items()}


def train(model, x, ys, ws, steps, batch, lr, seed):
  import keras
  import numpy as np
  schema_names = list(ys)
  model.compile(
      optimizer=keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
          lr / 10, max(steps - steps // 10, 1), alpha=0.01, warmup_target=lr,
          warmup_steps=max(steps // 10, 1)), weight_decay=1e-4),
      loss={h: keras.losses.SparseCategoricalCrossentropy(
          reduction="mean_with_sample_weight") for h in schema_names})
  rng = np.random.default_rng(seed)
  n = len(x)
  order = np.concatenate([rng.permutation(n) for _ in range(
      steps * batch // n + 1)])[:steps * batch]
  t = time.time()
  for s in range(steps):
    idx = order[s * batch:(s + 1) * batch]
    model.train_on_batch(x[idx], {h: ys[h][idx] for h in schema_names},
                         sample_weight={h: ws[h][idx] for h in schema_names})
  return time.time() - t


def predict(model, x):
  import numpy as np
  out = {}
  for i in range(0, len(x), 100):
    o = model(x[i:i + 100], training=False)
    for k, v in o.items():
      out.setdefault(k, []).append(np.asarray(v))
  return {k: np.concatenate(v) for k, v in out.items()}


def main(argv):
  del argv
  import keras
  import numpy as np
  from mlc_keras.core import heads as heads_lib
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.data import demo

  size, steps, batch = _IMAGE_SIZE.value, _STEPS.value, _BATCH.value
  seed = _SEED.value
  t0 = time.time()
  x, y = render_set(_TRAIN.value, seed, False, size)
  xt, yt = render_set(_TEST.value, seed + 1, False, size)
  xh, yh = render_set(_HELDOUT.value, seed + 2, True, size)
  names = demo.SCHEMA.names
  print(f"data: train {len(x)}, test {len(xt)}, held-out {len(xh)} at "
        f"{size}px, rendered in {time.time() - t0:.0f}s; backbone "
        f"{_BACKBONE.value}, {steps} steps x batch {batch}, seed {seed}")

  held = tuple(demo.SCHEMA.head(h).index(demo.HELD_OUT[h]) if h in demo.HELD_OUT
               else None for h in names)
  combos = [c for c in itertools.product(*(range(h.num_classes)
                                           for h in demo.SCHEMA))
            if not all(v is None or v == c[k] for k, v in enumerate(held))]
  combo_index = {c: i for i, c in enumerate(combos)}
  combo_schema = heads_lib.LabelSchema((heads_lib.HeadSpec(
      "combination", tuple("_".join(demo.SCHEMA.heads[k].classes[v]
                                    for k, v in enumerate(c)) for c in combos)),))

  def combos_of(labels):
    return np.array([combo_index[tuple(int(labels[h][i]) for h in names)]
                     for i in range(len(labels[names[0]]))])

  def build(schema):
    keras.utils.set_random_seed(seed)
    if _BACKBONE.value == "small_cnn":
      return model_lib.small_cnn(schema, size)
    return model_lib.build_model(schema, size, _BACKBONE.value, None,
                                 bn_momentum=0.9)

  def ones(labels):
    return {h: np.ones(len(v), np.float32) for h, v in labels.items()}

  results, times = {}, {}
  # (a) one softmax over combinations.
  single = build(combo_schema)
  yc = {"combination": combos_of(y)}
  times["a"] = train(single, x, yc, ones(yc), steps, batch, _LR.value, seed)
  pick = np.array(combos)

  def single_attrs(xs):
    p = predict(single, xs)["combination"].argmax(axis=1)
    return {h: pick[p, k] for k, h in enumerate(names)}
  results["a"] = (single_attrs(xt), single_attrs(xh))

  # (b) multi-head, every head fully labelled.
  multi = build(demo.SCHEMA)
  times["b"] = train(multi, x, y, ones(y), steps, batch, _LR.value, seed)
  results["b"] = ({h: p.argmax(1) for h, p in predict(multi, xt).items()},
                  {h: p.argmax(1) for h, p in predict(multi, xh).items()})

  # (c) the few-label head alone vs inside the multi-head model.
  rng = np.random.default_rng(seed + 3)
  few = rng.random(len(x)) < _FEW_SHARE.value
  few_schema = demo.SCHEMA.select([_FEW_HEAD])
  alone = build(few_schema)
  yf = {_FEW_HEAD: y[_FEW_HEAD][few]}
  times["c_alone"] = train(alone, x[few], yf, ones(yf), steps, batch,
                           _LR.value, seed)
  acc_alone = float(np.mean(
      predict(alone, xt)[_FEW_HEAD].argmax(1) == yt[_FEW_HEAD]))
  shared = build(demo.SCHEMA)
  ws = ones(y)
  ws[_FEW_HEAD] = few.astype(np.float32)
  times["c_multi"] = train(shared, x, y, ws, steps, batch, _LR.value, seed)
  acc_shared = float(np.mean(
      predict(shared, xt)[_FEW_HEAD].argmax(1) == yt[_FEW_HEAD]))

  def combo_acc(pred, truth):
    return float(np.mean(np.all([pred[h] == truth[h] for h in names], axis=0)))

  print()
  print(f"{'model':<28} {'combination':>11} {'held-out':>9} " +
        " ".join(f"{h:>7}" for h in names) + f" {'train s':>8}")
  for key, label in (("a", f"(a) single, {len(combos)} combinations"),
                     ("b", "(b) multi-head, 4 heads")):
    test_pred, held_pred = results[key]
    print(f"{label:<28} {combo_acc(test_pred, yt):>11.3f} "
          f"{combo_acc(held_pred, yh):>9.3f} " +
          " ".join(f"{np.mean(test_pred[h] == yt[h]):>7.3f}" for h in names) +
          f" {times[key]:>8.0f}")
  print()
  print(f"(c) '{_FEW_HEAD}' labelled on {int(few.sum())} of {len(x)} training "
        f"images ({_FEW_SHARE.value:.0%}):")
  print(f"  alone, trained on those {int(few.sum())} images: "
        f"{acc_alone:.3f} ({times['c_alone']:.0f}s)")
  print(f"  inside the multi-head model:            {acc_shared:.3f} "
        f"({times['c_multi']:.0f}s)")
  print(f"  ratio shared / alone: {acc_shared / max(acc_alone, 1e-9):.2f}")
  heldout = combo_acc(results["b"][1], yh)
  chance = 1.0 / np.prod([h.num_classes for h in demo.SCHEMA])
  print()
  print(f"held-out combination accuracy: multi {heldout:.3f}, single 0 by "
        f"construction, random {chance:.3f}; ratio multi / random: "
        f"{heldout / chance:.1f}")


if __name__ == "__main__":
  app.run(main)
