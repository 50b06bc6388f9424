"""Composition on combinations never seen in training, on two data sets
(issue 13): S / U / H of composed classes, with and without calibrated
stacking, and each head's accuracy on seen vs unseen combinations, per
training-side remedy, over seeds.

Sets (each a full factorial of two heads as the class table):
- demo: shape x colour of the embedded demo set; held out of training and
  validation: circle+red, square+green (the test's unseen classes);
  out of training only: triangle+blue (stacking's calibration classes). The
  test set is a second demo draw (seed 1), never trained on.
- fmnist: category x ink of Fashion-MNIST (benchmarks/realdata.py; ink is the
  image's brightness tercile, correlated with category, so the rarest pairs
  are avoided): six pairs held out (each category once, each ink twice), four
  others out of training only. The test set is Fashion-MNIST's own test
  split, less the calibration pairs (stacking must not see the test's
  unseen classes, and the test must not hold the fit's).

Arms are train flag sets (``ARMS``); every arm is evaluated with
``--stacking``, so each gives S / U / H before and after the bias. One run
per (set, arm, seed), through the train and evaluate CLIs
(realdata.train_and_evaluate); results are appended to
``<work_dir>/results.jsonl`` as they finish, and the table is printed from
that file (``--table_only`` prints it without training).

  nice -n 10 python benchmarks/composition_real.py --fmnist_dir=/work/data/fmnist \\
      --seeds=0,1,2 --sets=demo,fmnist --arms=baseline --work_dir=/tmp/composition

Prints the table last, and as its ratio U / S of the first arm (the target
is U >= 0.8 S).
"""

from __future__ import annotations

import csv
import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import realdata  # pylint: disable=g-import-not-at-top,wrong-import-position

_FMNIST = flags.DEFINE_string("fmnist_dir", "/work/data/fmnist",
                              "Folder of the Fashion-MNIST manifests.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_SETS = flags.DEFINE_list("sets", ["demo", "fmnist"], "Data sets.")
_ARMS = flags.DEFINE_list("arms", ["baseline"], "Arms (keys of ARMS).")
_WORK = flags.DEFINE_string("work_dir", "/tmp/composition_real",
                            "Runs, derived manifests and results.jsonl.")
_STEPS = flags.DEFINE_integer("steps_per_epoch", 30, "Training steps per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs.")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False,
                                "Print the table of results.jsonl only.")

# The stated budget of every arm: ResNet50V2 from scratch at 32 px, batch 64.
BUDGET = {"image_size": 32, "batch_size": 64}
ARMS = {
    "baseline": {},
    "balanced": {"balance_combinations": "{pair}"},
    "projections": {"head_projection": 64},
    "balanced+projections": {"balance_combinations": "{pair}",
                             "head_projection": 64},
    # CutMix pairs every image with another of the batch, mostly of another
    # combination: a shape's pixels pasted next to another colour's.
    "cutmix": {"cutmix_alpha": "1.0"},
}
SETS = {
    "demo": {"pair": ("shape", "colour"),
             "holdout": "shape=circle+colour=red;shape=square+colour=green",
             "calibration": "shape=triangle+colour=blue"},
    "fmnist": {"pair": ("category", "ink"),
               "holdout": ("category=tshirt+ink=low;category=trouser+ink=mid;"
                           "category=pullover+ink=high;category=dress+ink=low;"
                           "category=coat+ink=mid;category=bag+ink=high"),
               "calibration": ("category=shirt+ink=mid;category=ankle_boot+"
                               "ink=high;category=sneaker+ink=mid;"
                               "category=tshirt+ink=high")},
}


def _pairs(spec: str) -> set:
  return {tuple(v.split("=")[1] for v in c.split("+")) for c in spec.split(";")}


def _filtered(src: str, dst: str, pair, drop: set) -> str:
  """``src`` less the rows whose (pair) values are in ``drop``, written to
  ``dst`` with absolute image paths (the source folder is left alone)."""
  with open(src, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  folder = os.path.dirname(os.path.abspath(src))
  with open(dst, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
      if (r[pair[0]], r[pair[1]]) not in drop:
        w.writerow(dict(r, image=os.path.join(folder, r["image"])))
  return dst


def _table_file(path: str, pair, values) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"class,{pair[0]},{pair[1]}\n")
    for a in values[0]:
      for b in values[1]:
        f.write(f"{a}_{b},{a},{b}\n")
  return path


def prepare(name: str, work: str) -> dict:
  """{train, val, test, table} of a set, written under ``work``."""
  spec = SETS[name]
  pair = spec["pair"]
  if name == "demo":
    from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
    folder = os.path.join(work, "demo_data")
    paths = demo.generate(folder, 1600, 400, seed=0)
    test_src = demo.generate(os.path.join(work, "demo_test"), 8, 900,
                             seed=1)["val"]
    values = [demo.SCHEMA.head(h).classes for h in pair]
  else:
    paths = realdata.locate(_FMNIST.value)
    test_src = paths["test"]
    values = [sorted({r[h] for r in csv.DictReader(open(paths["train"]))} - {""})
              for h in pair]
  test = _filtered(test_src, os.path.join(work, f"{name}_test.csv"), pair,
                   _pairs(spec["calibration"]))
  table = _table_file(os.path.join(work, f"{name}_classes.csv"), pair, values)
  out = {"train": paths["train"], "val": paths["val"], "test": test,
         "table": table}
  if name == "demo":
    # The demo's marks column is a tag head: its labels.json says so.
    out["heads_file"] = paths["labels"]
  return out


def run_arm(name: str, arm: str, seed: int, data: dict, work: str) -> dict:
  spec = SETS[name]
  flags_ = {k: (v.format(pair=",".join(spec["pair"])) if isinstance(v, str)
                else v) for k, v in ARMS[arm].items()}
  train_flags = dict(BUDGET, manifest=data["train"], val_manifest=data["val"],
                     holdout_combinations=spec["holdout"],
                     calibration_combinations=spec["calibration"],
                     steps_per_epoch=_STEPS.value, epochs=_EPOCHS.value,
                     seed=seed, **flags_)
  if "heads_file" in data:
    train_flags["heads_file"] = data["heads_file"]
  out = realdata.train_and_evaluate(
      os.path.join(work, "runs", f"{name}_{arm}_{seed}"), train_flags,
      data["test"], {"class_table": data["table"], "stacking": "true"})
  comp = out["evaluation"]["composed"]
  su, st = comp["seen_unseen"], comp["stacking"]
  return {"set": name, "arm": arm, "seed": seed, "S": su["seen"],
          "U": su["unseen"], "H": su["harmonic"], "S_stack": st["seen"],
          "U_stack": st["unseen"], "H_stack": st["harmonic"],
          "gamma": st["gamma"], "mean_ma": out["mean_ma"],
          "heads": {h: su["heads"][h] for h in spec["pair"]},
          "train_seconds": out["train_seconds"], "train_flags": train_flags}


def table(results: list) -> str:
  ms = realdata.mean_spread
  header = ["set", "arm", "S", "U", "H", "S stacked", "U stacked", "H stacked",
            "head A seen / unseen", "head B seen / unseen", "mean mA"]
  rows = []
  keys = list(dict.fromkeys((r["set"], r["arm"]) for r in results))
  for s, a in keys:
    rs = [r for r in results if (r["set"], r["arm"]) == (s, a)]
    heads = []
    for h in SETS[s]["pair"]:
      heads.append(f"{h}: {ms([r['heads'][h]['seen'] for r in rs])} / "
                   f"{ms([r['heads'][h]['unseen'] for r in rs])}")
    rows.append([s, a, *(ms([r[k] for r in rs]) for k in (
        "S", "U", "H", "S_stack", "U_stack", "H_stack")), *heads,
                 ms([r["mean_ma"] for r in rs])])
  return realdata.markdown_table(header, rows)


def main(argv):
  del argv
  work = os.path.abspath(_WORK.value)
  os.makedirs(work, exist_ok=True)
  results_path = os.path.join(work, "results.jsonl")
  done = set()
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      done = {(r["set"], r["arm"], r["seed"])
              for r in map(json.loads, filter(str.strip, f))}
  if not _TABLE_ONLY.value:
    data = {name: prepare(name, work) for name in _SETS.value}
    # Seeds outermost: a run cut short still has every set and arm at n >= 1;
    # a finished (set, arm, seed) in results.jsonl is not run again.
    for seed in _SEEDS.value:
      for name in _SETS.value:
        for arm in _ARMS.value:
          if (name, arm, int(seed)) in done:
            continue
          r = run_arm(name, arm, int(seed), data[name], work)
          with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
          print(f"{name} {arm} seed {seed}: S {r['S']:.3f} U {r['U']:.3f} "
                f"H {r['H']:.3f}; stacked U {r['U_stack']:.3f} H "
                f"{r['H_stack']:.3f} ({r['train_seconds']:.0f} s)", flush=True)
  with open(results_path, encoding="utf-8") as f:
    results = [json.loads(line) for line in f if line.strip()]
  print(table(results))
  first = [r for r in results if r["arm"] == results[0]["arm"]]
  for s in dict.fromkeys(r["set"] for r in first):
    rs = [r for r in first if r["set"] == s]
    ratio = (sum(r["U"] for r in rs) / max(sum(r["S"] for r in rs), 1e-9))
    print(f"{s}: U / S = {ratio:.3f} ({results[0]['arm']}, n={len(rs)}; "
          "target >= 0.8)")


if __name__ == "__main__":
  app.run(main)
