"""Shared by the benchmarks whose claims need real images (issues 13 and 15):
a Fashion-MNIST multi-attribute manifest, one train + evaluate run through the
package's own CLIs, and the mean / spread of a figure over seeds.

The data: real photos of clothing (28x28 grey) written as a manifest by the
repo-external generator the team uses (``../shared/data/fashion_mnist.py``,
needs ``apt-get install dataset-fashion-mnist``)::

  python ../shared/data/fashion_mnist.py --out=/tmp/fmnist

gives train.csv / val.csv (label cells blank with probability 0.15) and
test.csv (complete, from Fashion-MNIST's own test split) with heads category,
group, sleeves and ink. Every table script takes ``--fmnist_dir`` pointing at
such a folder; ``locate`` names the generator command when it is missing.

A run is ``python -m mlc_keras.train`` then ``python -m mlc_keras.evaluate``
on a test manifest, each a subprocess (exactly what a user runs, one
TensorFlow per run, nothing carried over between arms). The figures come from
the evaluate report (evaluation.json): per-head accuracy and balanced accuracy
(mA) on labelled test cells, and the mean mA over heads.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATOR = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion_mnist.py")
SPLITS = ("train", "val", "test")


def locate(folder: str) -> dict:
  """The train / val / test manifests in ``folder``; a clear error (with the
  command that writes them) when one is missing."""
  paths = {s: os.path.join(folder, f"{s}.csv") for s in SPLITS}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise SystemExit(
        f"--fmnist_dir={folder}: {', '.join(missing)} not found. Write the "
        f"manifests with: python {GENERATOR} --out={folder}  (needs apt-get "
        "install dataset-fashion-mnist)")
  return paths


def read_rows(path: str) -> list:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def write_rows(path: str, rows, columns, folder: str) -> str:
  """A manifest of ``columns`` with image paths made absolute against
  ``folder`` (the copies live elsewhere than the images)."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow(dict(r, image=os.path.join(folder, r["image"])))
  return path


def fixed_splits(folder: str, out: str, val_rows: int, test_rows: int) -> dict:
  """train.csv whole, the first ``val_rows`` rows of val.csv and the first
  ``test_rows`` of test.csv, written under ``out``: the fixed validation and
  test subsets every real-image table shares."""
  found = locate(folder)
  os.makedirs(out, exist_ok=True)
  data = os.path.abspath(folder)
  paths = {}
  for split, n in (("train", None), ("val", val_rows), ("test", test_rows)):
    rows = read_rows(found[split])
    paths[split] = write_rows(os.path.join(out, f"{split}.csv"), rows[:n],
                              list(rows[0]), data)
  return paths


def _cli(verb: str, args: Mapping[str, object], log_path: str) -> float:
  """Runs ``python -m mlc_keras.<verb>`` with ``--k=v`` flags; returns wall
  seconds. A failed run raises with the tail of its log (the log is kept)."""
  cmd = [sys.executable, "-m", f"mlc_keras.{verb}"]
  cmd += [f"--{k}={v}" for k, v in args.items()]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(cmd) + "\n")
    log.flush()
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
  seconds = time.perf_counter() - start
  if code != 0:
    with open(log_path, encoding="utf-8") as log:
      tail = "".join(log.readlines()[-15:])
    raise RuntimeError(f"{verb} exited {code} (log {log_path}):\n{tail}")
  return seconds


def train_and_evaluate(model_dir: str, train_flags: Mapping[str, object],
                       test_manifest: str,
                       evaluate_flags: Optional[Mapping[str, object]] = None,
                       fresh: bool = True) -> dict:
  """One arm: trains into ``model_dir`` with ``train_flags`` (``model_dir``
  is added), evaluates on ``test_manifest`` and returns
  ``{"heads": {head: {"accuracy", "balanced_accuracy"}}, "mean_ma",
  "train_seconds", "evaluation": <the whole evaluation.json>}``.

  A finished arm leaves ``result.json`` (the result and the exact flags and
  test manifest that made it); called again with the same arguments it is
  returned without training, so a table cut at a deadline resumes where it
  stopped. Other arguments train afresh."""
  key = {"train": {k: str(v) for k, v in train_flags.items()},
         "test": test_manifest,
         "evaluate": {k: str(v) for k, v in (evaluate_flags or {}).items()}}
  done = os.path.join(model_dir, "result.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      stored = json.load(f)
    if stored.get("key") == key:
      return stored["result"]
  if fresh and os.path.isdir(model_dir):
    shutil.rmtree(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  train_s = _cli("train", dict(train_flags, model_dir=model_dir),
                 os.path.join(model_dir, "train.log"))
  _cli("evaluate", dict(evaluate_flags or {}, model_dir=model_dir,
                        manifest=test_manifest),
       os.path.join(model_dir, "evaluate.log"))
  with open(os.path.join(model_dir, "evaluation.json"), encoding="utf-8") as f:
    report = json.load(f)
  # A tag head has neither number (its mAP is in "evaluation").
  heads = {h["head"]: {"accuracy": h.get("accuracy"),
                       "balanced_accuracy": h.get("balanced_accuracy")}
           for h in report["heads"]}
  result = {"heads": heads,
            "mean_ma": report["across_heads"]["mean_balanced_accuracy"],
            "train_seconds": train_s, "evaluation": report}
  with open(done + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"key": key, "result": result}, f)
  os.replace(done + ".tmp", done)
  return result


def mean_spread(values: Sequence[Optional[float]]) -> str:
  """'mean ± sd (n)' over the defined values (sd is the sample standard
  deviation; a single value has none); '-' when none is defined."""
  vals = [v for v in values if v is not None]
  if not vals:
    return "-"
  if len(vals) == 1:
    return f"{vals[0]:.3f} (n=1)"
  return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} (n={len(vals)})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
