r"""Backbones and the seed's claims on real images (Fashion-MNIST, issue 15).

Every arm is the real train CLI then the real evaluate CLI on a fixed test
split (benchmarks/realdata.py), at one stated budget: --image_size px,
--batch_size, --steps_per_epoch x --epochs steps, weights=none, validation on
the first --val_rows rows of val.csv, test on the first --test_rows rows of
test.csv (complete labels).

--table=backbones  one multi-head model (category, group, sleeves, ink) per
    backbone in --backbones: mean mA and category accuracy on the test rows,
    training images/s (Keras' end-of-epoch wall time, epochs after the
    first, so tracing is out; the validation pass is in), parameters, fp32 TFLite size (exported
    from the first seed's run).
--table=seed  the seed's table on real images, protocol of
    benchmarks/few_labels.py (its balanced_draw, in benchutil): (1) one single-label model
    over the 10 categories vs the multi-head model, category accuracy; (2) a
    few-label head (--few_head labelled on --few_k training rows, a seeded
    class-balanced draw, blank elsewhere) inside the shared model with the
    other heads labelled as given vs trained alone on its K rows, equal
    steps.

  python benchmarks/backbones_real.py --fmnist_dir=/work/data/fmnist \
      --table=backbones --seeds=0,1,2

Printed last: the table (markdown) and its ratio against the first arm.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil  # pylint: disable=g-import-not-at-top  (balanced_draw)
import realdata  # pylint: disable=g-import-not-at-top

_FMNIST = flags.DEFINE_string("fmnist_dir", "/work/data/fmnist",
                              "Folder with train.csv, val.csv, test.csv.")
_OUT = flags.DEFINE_string("out", "/tmp/backbones_real", "Run folders.")
_TABLE = flags.DEFINE_enum("table", "backbones", ["backbones", "seed"],
                           "Which table.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_BACKBONES = flags.DEFINE_list(
    "backbones", ["ResNet50V2", "EfficientNetV2B0", "MobileNetV2"],
    "--table=backbones: the backbones compared.")
_SEED_BACKBONE = flags.DEFINE_string("seed_backbone", "ResNet50V2",
                                     "--table=seed: the backbone.")
_SIZE = flags.DEFINE_integer("image_size", 32, "Input side.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_epoch", 40, "Steps per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
_VAL_ROWS = flags.DEFINE_integer("val_rows", 500, "Validation rows used.")
_TEST_ROWS = flags.DEFINE_integer("test_rows", 1000, "Test rows used.")
_FEW_HEAD = flags.DEFINE_string("few_head", "sleeves",
                                "--table=seed: the few-label head.")
_FEW_K = flags.DEFINE_integer("few_k", 100, "Its labelled training rows.")


def _flags(manifest, val, seed, backbone, **extra):
  return dict(manifest=manifest, val_manifest=val, seed=seed,
              backbone=backbone, weights="none", image_size=_SIZE.value,
              batch_size=_BATCH.value, steps_per_epoch=_STEPS.value,
              epochs=_EPOCHS.value, learning_rate=_LR.value, **extra)


def _images_per_second(model_dir):
  """Training images/s from Keras' end-of-epoch lines ("30/30 - 66s - ..."):
  steps x batch over the epoch's wall seconds (its validation pass
  included; Keras' own "s/step" is rounded to whole seconds), epochs after
  the first (tracing); None when the log has no such line."""
  with open(os.path.join(model_dir, "train.log"), encoding="utf-8") as f:
    found = re.findall(r"^(\d+)/\1 - (\d+(?:\.\d+)?)s - ", f.read(), re.M)
  rates = [int(steps) * _BATCH.value / float(sec) for steps, sec in found]
  if len(rates) > 1:
    rates = rates[1:]
  return statistics.mean(rates) if rates else None


def _tflite_size(model_dir):
  """fp32 TFLite bytes of the run's model (an export into the run folder)."""
  realdata._cli("export", dict(  # pylint: disable=protected-access
      model_dir=model_dir, formats="tflite", quantization="fp32",
      output=os.path.join(model_dir, "export")),
      os.path.join(model_dir, "export.log"))
  for root, _, files in os.walk(os.path.join(model_dir, "export")):
    for name in files:
      if name.endswith(".tflite"):
        return os.path.getsize(os.path.join(root, name))
  raise RuntimeError(f"{model_dir}/export: no .tflite written")


def _parameters(backbone):
  from mlc_keras.core import heads as heads_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  schema = heads_lib.LabelSchema((heads_lib.HeadSpec("c", tuple("abcdefghij")),))
  net = model_lib.build_model(schema, _SIZE.value, backbone)
  return net.get_layer(model_lib.BACKBONE_LAYER).count_params()


def backbones_table(paths, seeds):
  """Seed-major (every backbone once, then the next seed), the table
  printed after each round, so an interrupted run still gives one."""
  results = {b: [] for b in _BACKBONES.value}
  for seed in seeds:
    for backbone in _BACKBONES.value:
      run = os.path.join(_OUT.value, f"{backbone}_s{seed}")
      r = realdata.train_and_evaluate(
          run, _flags(paths["train"], paths["val"], seed, backbone),
          paths["test"])
      r["ips"] = _images_per_second(run)
      r["tflite"] = _tflite_size(run) if seed == seeds[0] else None
      print(f"  {backbone} seed {seed}: mean mA {r['mean_ma']:.3f}, category "
            f"{r['heads']['category']['accuracy']:.3f}, {r['ips'] or 0:.1f} "
            f"img/s, {r['train_seconds']:.0f} s", flush=True)
      results[backbone].append(r)
    _print_backbones(results)


def _print_backbones(results):
  table = []
  for b, rs in results.items():
    table.append((b, realdata.mean_spread([r["mean_ma"] for r in rs]),
                  realdata.mean_spread([r["heads"]["category"]["accuracy"]
                                        for r in rs]),
                  realdata.mean_spread([r["ips"] for r in rs]),
                  f"{_parameters(b) / 1e6:.2f} M",
                  f"{rs[0]['tflite'] / 2**20:.1f} MB"))
  print(realdata.markdown_table(
      ["backbone", "mean mA", "category acc", "train images/s",
       "backbone params", "TFLite fp32"], table), flush=True)
  first, *rest = results
  base = statistics.mean(r["mean_ma"] for r in results[first])
  for b in rest:
    print(f"mean mA {b} / {first}: "
          f"{statistics.mean(r['mean_ma'] for r in results[b]) / base:.3f}",
          flush=True)


def seed_table(paths, seeds, data):
  train = realdata.read_rows(paths["train"])
  heads = [c for c in train[0] if c != "image"]
  few = _FEW_HEAD.value
  rows = {k: [] for k in ("single", "multi", "shared", "alone")}
  for seed in seeds:
    folder = os.path.join(_OUT.value, f"seed_s{seed}")
    os.makedirs(folder, exist_ok=True)
    labelled = [r for r in train if r[few]]
    classes = sorted({r[few] for r in labelled})
    import numpy as np  # pylint: disable=g-import-not-at-top
    ids = np.array([classes.index(r[few]) for r in labelled])
    keep = benchutil.balanced_draw(ids, _FEW_K.value, len(classes),
                                    1000 * seed + 3)
    kept = {id(r) for r, k in zip(labelled, keep) if k}
    masked = [dict(r, **{few: r[few] if id(r) in kept else ""})
              for r in train]
    shared = realdata.write_rows(os.path.join(folder, "shared.csv"), masked,
                    ["image"] + heads, data)
    alone = realdata.write_rows(os.path.join(folder, "alone.csv"),
                   [r for r in train if id(r) in kept], ["image", few], data)
    arms = {
        "single": (paths["train"], dict(label_columns="category")),
        "multi": (paths["train"], {}),
        "shared": (shared, {}),
        "alone": (alone, dict(label_columns=few)),
    }
    for arm, (manifest, extra) in arms.items():
      r = realdata.train_and_evaluate(
          os.path.join(folder, arm),
          _flags(manifest, paths["val"], seed, _SEED_BACKBONE.value, **extra),
          paths["test"])
      rows[arm].append(r)
      print(f"  seed {seed} {arm}: " + ", ".join(
          f"{h} {v['accuracy']:.3f}" for h, v in r["heads"].items()),
            flush=True)
  def acc(arm, head):
    return realdata.mean_spread([r["heads"][head]["accuracy"]
                                 for r in rows[arm]])
  print(realdata.markdown_table(
      ["comparison", "arm", "test accuracy"],
      [("10 categories", "one single-label model", acc("single", "category")),
       ("10 categories", "multi-head model (4 heads)", acc("multi", "category")),
       (f"{few}, {_FEW_K.value} labels", "inside the shared model",
        acc("shared", few)),
       (f"{few}, {_FEW_K.value} labels", "alone", acc("alone", few))]))
  d = [s["heads"][few]["accuracy"] - a["heads"][few]["accuracy"]
       for s, a in zip(rows["shared"], rows["alone"])]
  print(f"{few} accuracy shared - alone (paired by seed): "
        f"{realdata.mean_spread(d)}")


def main(argv):
  del argv
  paths = realdata.fixed_splits(_FMNIST.value, _OUT.value, _VAL_ROWS.value,
                                _TEST_ROWS.value)
  data = os.path.abspath(_FMNIST.value)
  seeds = [int(s) for s in _SEEDS.value]
  print(f"budget: {_SIZE.value} px, batch {_BATCH.value}, "
        f"{_STEPS.value} x {_EPOCHS.value} steps, lr {_LR.value}, "
        f"weights none; val {_VAL_ROWS.value} rows, test {_TEST_ROWS.value} "
        f"rows; seeds {seeds}", flush=True)
  if _TABLE.value == "backbones":
    backbones_table(paths, seeds)
  else:
    seed_table(paths, seeds, data)


if __name__ == "__main__":
  app.run(main)
