r"""Launch-to-first-step time and peak RSS of `python -m mlc_keras.train` on
big manifests of tiny real images, with the image check on (header level)
against the same launch without it (--novalidate_images), in the same run.

For each row count: `--distinct` tiny PNG/JPEG files (8x8, half of each) are
generated once, and the manifest's rows point at hard links to them (so 1M
rows do not need 1M distinct files' worth of disk, and each row is still a
distinct path that is statted and read). Each arm launches the train CLI in
a fresh process (a small driver: it runs train's main with a callback that
records the time and peak RSS at the end of the first training step, then
exits) in a fresh model_dir; the "cached" arm re-launches in the header
arm's model_dir, where the check's cache answers. Prints one line per arm,
then the ratios (header check over no check, per row count) last.

  python benchmarks/startup.py --rows=10000,100000 --dir=/tmp/startup
  python benchmarks/startup.py --rows=1000000 --arms=header,none
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

_DRIVER = r"""
import json, os, resource, sys, time
t0 = float(sys.argv[1]); out = sys.argv[2]
import keras
from absl import app
from mlc_keras import train
from mlc_keras.modeling import model as model_lib
# The shared three-conv net instead of a keras.applications backbone: the
# backbone's build is the same constant in every arm; the data's cost is
# what differs.
model_lib.build_model = lambda schema, size, *a, **k: model_lib.small_cnn(
    schema, size)
model_lib.set_backbone_trainable = lambda *a, **k: None

class _FirstStep(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    use = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
      json.dump({"seconds": time.time() - t0, "peak_rss": use.ru_maxrss * 1024,
                 "cpu": use.ru_utime + use.ru_stime}, f)
    os._exit(0)

_fit = keras.Model.fit
def fit(self, *a, callbacks=None, **k):
  return _fit(self, *a, callbacks=[_FirstStep()] + list(callbacks or []), **k)
keras.Model.fit = fit
sys.argv = ["train"] + sys.argv[3:]
app.run(train.main)
"""


def make_files(folder: str, distinct: int) -> list[str]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  names = []
  for i in range(distinct):
    name = os.path.join(folder, f"d{i:05d}." + ("png" if i % 2 else "jpg"))
    if not os.path.exists(name):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(name)
    names.append(name)
  return names


def make_manifest(root: str, rows: int, distinct: list[str]) -> str:
  """rows hard links (made once, reused by later runs) and their CSV."""
  path = os.path.join(root, f"rows{rows}.csv")
  if os.path.exists(path):
    return path
  links = os.path.join(root, f"links{rows}")
  os.makedirs(links, exist_ok=True)
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "shape", "colour"])
    for i in range(rows):
      sub = os.path.join(links, f"{i // 10000:03d}")
      if i % 10000 == 0:
        os.makedirs(sub, exist_ok=True)
      src = distinct[i % len(distinct)]
      link = os.path.join(sub, f"{i:07d}{os.path.splitext(src)[1]}")
      if not os.path.exists(link):
        os.link(src, link)
      w.writerow([link, ("circle", "square")[i % 2], ("red", "blue")[i % 3 % 2]])
  os.replace(path + ".tmp", path)
  return path


_ARM_FLAGS = {"none": ["--novalidate_images"], "header": [],
              "cached": [], "decode": ["--image_check=decode"]}


def run_arm(arm: str, manifest: str, model_dir: str) -> dict:
  out = model_dir + ".json"
  cmd = [sys.executable, "-c", _DRIVER, str(time.time()), out,
         f"--manifest={manifest}", f"--model_dir={model_dir}",
         "--image_size=32", "--batch_size=8", "--epochs=1",
         "--steps_per_epoch=1", "--augment=",
         *_ARM_FLAGS[arm]]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MLC_QUIET="1",
             PYTHONPATH=os.getcwd())
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  if not os.path.exists(out):
    raise SystemExit(f"{arm}: no first step (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
  with open(out) as f:
    got = json.load(f)
  os.remove(out)
  return got


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rows", default="10000,100000")
  ap.add_argument("--distinct", type=int, default=4000)
  ap.add_argument("--arms", default="none,header,cached")
  ap.add_argument("--dir", default="/tmp/mlc_startup")
  args = ap.parse_args()
  distinct = make_files(os.path.join(args.dir, "distinct"), args.distinct)
  arms = args.arms.split(",")
  results = {}
  for rows in [int(r) for r in args.rows.split(",")]:
    t = time.time()
    manifest = make_manifest(args.dir, rows, distinct)
    print(f"{rows:,} rows: manifest ready ({time.time() - t:.0f} s)",
          flush=True)
    base = os.path.join(args.dir, f"runs{rows}-{int(time.time())}")
    for arm in arms:
      model_dir = base + ("-header" if arm == "cached" else f"-{arm}")
      got = run_arm(arm, manifest, model_dir)
      results[(rows, arm)] = got
      print(f"{rows:>9,} rows  {arm:<7} first step after {got['seconds']:7.1f}"
            f" s ({got['cpu']:6.1f} s CPU)  peak RSS "
            f"{got['peak_rss'] / 2**20:7.0f} MB", flush=True)
  _report(results, arms)


def _report(results: dict, arms: list[str]) -> None:
  counts = sorted({r for r, _ in results})
  for rows in counts:
    none = results.get((rows, "none"))
    for arm in arms:
      got = results.get((rows, arm))
      if none is None or got is None or arm == "none":
        continue
      extra, cpu = got["seconds"] - none["seconds"], got["cpu"] - none["cpu"]
      print(f"{rows:,} rows, {arm}: +{extra:.1f} s wall, +{cpu:.1f} s CPU over "
            f"no check ({cpu / rows * 1e5:.1f} CPU s per 100k rows)")
  for arm in arms:
    have = [r for r in counts if (r, arm) in results]
    if len(have) > 1:
      lo, hi = results[(have[0], arm)], results[(have[-1], arm)]
      growth = (hi["peak_rss"] - lo["peak_rss"]) / (have[-1] - have[0])
      print(f"{arm}: peak RSS growth {growth:,.0f} B per row "
            f"({have[0]:,} -> {have[-1]:,} rows)")
  for rows in counts:
    if (rows, "none") in results and (rows, "header") in results:
      print(f"ratio (header check / no check, launch to first step, "
            f"{rows:,} rows): "
            f"{results[(rows, 'header')]['seconds'] / results[(rows, 'none')]['seconds']:.2f}")


if __name__ == "__main__":
  main()
