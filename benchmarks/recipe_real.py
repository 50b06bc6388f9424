r"""The training recipe's effect on real images (issue 15): the default
training vs each recipe component alone vs the whole recipe, on the
Fashion-MNIST multi-attribute manifest, at one fixed budget, several seeds,
scored on the fixed test split (test.csv) by ``mlc_keras.evaluate``.

  python benchmarks/recipe_real.py --fmnist_dir=/work/data/fmnist --seeds=0,1,2

Every arm is the same train command (benchmarks/realdata.py runs the real
CLIs) plus the arm's flags. Finished runs are kept in --out_dir/runs.json, so
re-running with more arms or seeds only trains what is missing. Prints, last,
the table: per-head accuracy and the mean balanced accuracy (mA) over heads,
mean ± sd over seeds, and each arm's mA difference from the default arm.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realdata  # pylint: disable=g-import-not-at-top,wrong-import-position

# Arm name -> the flags it adds to the budget's. "recipe" is every component.
ARMS = {
    "default": {},
    "label_smoothing": {"label_smoothing": "0.1"},
    "clip_global_norm": {"clip_global_norm": "1.0"},
    "ema": {"ema_decay": "0.98"},
    "randaugment": {"augment": "flip,crop,randaugment"},
    "random_erasing": {"augment": "flip,crop,erasing"},
    "mixup": {"mixup_alpha": "0.2"},
    "cutmix": {"cutmix_alpha": "1.0"},
}
RECIPE = ("label_smoothing", "clip_global_norm", "ema", "randaugment",
          "random_erasing", "cutmix")

_DIR = flags.DEFINE_string("fmnist_dir", "/work/data/fmnist",
                           "Folder with train.csv, val.csv, test.csv.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_ARMS = flags.DEFINE_list("arms", list(ARMS) + ["recipe"],
                          f"Arms to run: {', '.join(ARMS)}, recipe.")
_OUT = flags.DEFINE_string("out_dir", "/tmp/recipe_real", "Runs go here.")
# The budget of backbones_real's table (a): its ResNet50V2 row is this
# table's default arm, so the two tables check each other.
_BACKBONE = flags.DEFINE_string("backbone", "ResNet50V2", "Backbone.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Input side.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs.")
_STEPS = flags.DEFINE_integer("steps_per_epoch", 30, "Steps per epoch.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
_VAL_ROWS = flags.DEFINE_integer("val_rows", 500, "Validation rows used.")
_TEST_ROWS = flags.DEFINE_integer("test_rows", 1000, "Test rows used.")


def arm_flags(arm: str) -> dict:
  """The flags an arm adds; "recipe" merges its components' (their
  augmentations joined)."""
  if arm != "recipe":
    return dict(ARMS[arm])
  out, augment = {}, ["flip", "crop"]
  for part in RECIPE:
    for k, v in ARMS[part].items():
      if k == "augment":
        augment += [a for a in v.split(",") if a not in augment]
      else:
        out[k] = v
  out["augment"] = ",".join(augment)
  return out


def budget(paths: dict, seed: int) -> dict:
  return {"manifest": paths["train"], "val_manifest": paths["val"],
          "backbone": _BACKBONE.value, "weights": "none",
          "image_size": _IMAGE_SIZE.value, "batch_size": _BATCH.value,
          "epochs": _EPOCHS.value, "steps_per_epoch": _STEPS.value,
          "learning_rate": _LR.value, "seed": seed}


def _load(path: str) -> dict:
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {}


def table(runs: dict, arms, seeds) -> str:
  heads = None
  base = [runs[f"default/{s}"]["mean_ma"] for s in seeds
          if f"default/{s}" in runs]
  rows = []
  for arm in arms:
    done = [runs[f"{arm}/{s}"] for s in seeds if f"{arm}/{s}" in runs]
    if not done:
      continue
    heads = heads or list(done[0]["heads"])
    mas = [r["mean_ma"] for r in done]
    delta = "-"
    if base and arm != "default":
      paired = [runs[f"{arm}/{s}"]["mean_ma"] - runs[f"default/{s}"]["mean_ma"]
                for s in seeds
                if f"{arm}/{s}" in runs and f"default/{s}" in runs]
      delta = (f"{statistics.mean(paired):+.3f}"
               + (f" ({sum(d > 0 for d in paired)}/{len(paired)} seeds up)"
                  if paired else ""))
    rows.append([arm] + [realdata.mean_spread(
        [r["heads"][h]["accuracy"] for r in done]) for h in heads]
                + [realdata.mean_spread(mas), delta])
  if heads is None:
    return "(no finished runs)"
  return realdata.markdown_table(
      ["arm"] + [f"{h} acc" for h in heads] + ["mean mA", "mA vs default"],
      rows)


def main(argv):
  del argv
  paths = realdata.fixed_splits(_DIR.value, _OUT.value, _VAL_ROWS.value,
                                _TEST_ROWS.value)
  seeds = [int(s) for s in _SEEDS.value]
  unknown = [a for a in _ARMS.value if a not in ARMS and a != "recipe"]
  if unknown:
    raise app.UsageError(f"--arms: unknown arm(s) {unknown}; choose from "
                         f"{', '.join(ARMS)}, recipe")
  os.makedirs(_OUT.value, exist_ok=True)
  store = os.path.join(_OUT.value, "runs.json")
  runs = _load(store)
  # Seed-major, so that a stopped table has every arm at n seeds.
  for seed in seeds:
    for arm in _ARMS.value:
      key = f"{arm}/{seed}"
      if key in runs:
        continue
      train_flags = {**budget(paths, seed), **arm_flags(arm)}
      result = realdata.train_and_evaluate(
          os.path.join(_OUT.value, arm, str(seed)), train_flags, paths["test"])
      result.pop("evaluation")
      runs[key] = dict(result, flags=train_flags)
      with open(store, "w", encoding="utf-8") as f:
        json.dump(runs, f, indent=1)
      print(f"{key}: mean mA {result['mean_ma']:.3f} "
            f"({result['train_seconds']:.0f} s)", flush=True)
  print(f"\nFashion-MNIST, {_BACKBONE.value} weights=none, "
        f"{_IMAGE_SIZE.value} px, batch {_BATCH.value}, {_EPOCHS.value} "
        f"epochs x {_STEPS.value} steps, lr {_LR.value}; val {_VAL_ROWS.value}"
        f" rows, test {_TEST_ROWS.value} rows of test.csv; seeds {seeds}\n")
  print(table(runs, _ARMS.value, seeds))


if __name__ == "__main__":
  app.run(main)
