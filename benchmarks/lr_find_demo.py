"""Does the learning-rate range test find a good rate? On the demo set:
``train --find_lr`` once, then the demo trained at a small grid of rates and
at the suggestion, each over seeds; the figure is the suggestion's ratio to
the grid's best rate (by mean validation balanced accuracy over heads). The
claim to check: within 2x.

  python benchmarks/lr_find_demo.py --work_dir=/work/lr_find_demo \
      --grid=5e-4,1e-3,2e-3,4e-3,8e-3 --seeds=0,1,2

Every training is the demo preset (``python -m mlc_keras.train`` with no
data flags) with --learning_rate and --seed set; finished runs leave
results.jsonl lines and are not run again. The last line printed is the
ratio suggestion / best grid rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_WORK = flags.DEFINE_string("work_dir", "/tmp/lr_find_demo", "Runs go here.")
_GRID = flags.DEFINE_list("grid", ["5e-4", "1e-3", "2e-3", "4e-3", "8e-3"],
                          "Learning rates of the grid.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STEPS = flags.DEFINE_integer("find_lr_steps", 100, "Range-test steps.")


def _train(args: dict, log_path: str) -> None:
  cmd = [sys.executable, "-m", "mlc_keras.train"]
  cmd += [f"--{k}={v}" for k, v in args.items()]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  with open(log_path, "w", encoding="utf-8") as log:
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                           env=env, cwd=REPO)
  if code:
    raise RuntimeError(f"{' '.join(cmd)} exited {code} (log {log_path})")


def main(argv):
  del argv
  from mlc_keras.training import lr_find  # pylint: disable=g-import-not-at-top
  work = os.path.abspath(_WORK.value)
  os.makedirs(work, exist_ok=True)
  demo = {"demo_dir": os.path.join(work, "demo_data")}
  curve = os.path.join(work, "find", "lr_find", "lr_find.csv")
  if not os.path.exists(curve):
    _train(dict(demo, model_dir=os.path.join(work, "find"), find_lr="true",
                find_lr_steps=_STEPS.value), os.path.join(work, "find.log"))
  with open(curve, encoding="utf-8") as f:
    rows = [line.strip().split(",") for line in f.readlines()[1:]]
  lrs, losses = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
  suggestion, _ = lr_find.suggest(lrs, lr_find.smooth_centered(losses))
  rates = [float(r) for r in _GRID.value] + [float(f"{suggestion:.2g}")]
  results_path = os.path.join(work, "results.jsonl")
  done = {}
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      for line in f:
        r = json.loads(line)
        done[(r["lr"], r["seed"])] = r["mean_ma"]
  for seed in map(int, _SEEDS.value):
    for lr in rates:
      if (lr, seed) in done:
        continue
      run = os.path.join(work, "runs", f"lr{lr:g}_s{seed}")
      _train(dict(demo, model_dir=run, learning_rate=lr, seed=seed,
                  overwrite="true"), os.path.join(work, f"lr{lr:g}_s{seed}.log"))
      with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
        mean_ma = json.load(f)["across_heads"]["mean_balanced_accuracy"]
      done[(lr, seed)] = mean_ma
      with open(results_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"lr": lr, "seed": seed, "mean_ma": mean_ma}) + "\n")
  print("| learning rate | mean val mA over heads | n |\n| --- | --- | --- |")
  means = {}
  for lr in rates:
    vals = [v for (r, _), v in done.items() if r == lr]
    means[lr] = statistics.mean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    tag = " (suggested)" if lr == rates[-1] else ""
    print(f"| {lr:g}{tag} | {means[lr]:.3f} ± {sd:.3f} | {len(vals)} |")
  best = max(rates[:-1], key=means.get)
  print(f"suggested {rates[-1]:g}, best of the grid {best:g}: ratio "
        f"{rates[-1] / best:.2f}")


if __name__ == "__main__":
  app.run(main)
