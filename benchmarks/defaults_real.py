"""Defaults against a plain Keras script, on real images, per head, on seen
and held-out combinations of two factor heads.

Arms (each a subprocess, exactly what a user runs):
- plain: benchmarks/plain_keras.py (ResNet50V2 from scratch, masked losses,
  AdamW warm-up + cosine, BatchNorm momentum 0.9, no augmentation);
- before: ``python -m mlc_keras.train`` with the defaults main had before the
  defaults campaign, pinned as flags (BEFORE), so the arm means the same
  thing after the defaults change;
- after: ``python -m mlc_keras.train`` with today's defaults (only the
  data, image size, epochs and seed given);
- any key of EXTRA: an ablation (today's defaults plus those flags).

Every arm gets the same manifests (held-out pairs already removed from
training and validation), image size, epochs, batch size and seed. Every
model is scored by the same code (``score``): its saved .keras on the test
manifest, per head, accuracy on rows of seen pairs and of held-out pairs;
the composed class (pair[0], pair[1]) right when both heads are (S / U / H
over rows); and calibrated stacking over every pair of the two heads
(``stacked_scores``: gamma fitted on val.csv, S / U / H on the test).

Sets:
- glyphs: ../shared/data/glyphs.py's set (char x family; 48 pairs held out;
  the test style, bold italic, is never trained on). Its train.csv keeps the
  calibration pairs out already; val.csv has them (they are seen pairs for
  this table: a user's validation data).
- fmnist: Fashion-MNIST, category x ink (benchmarks/realdata.py), six pairs
  held out (composition_real.SETS).
- demo: the embedded demo shapes, shape x colour (composition_real.SETS).

  python benchmarks/defaults_real.py --sets=glyphs --arms=plain,before,after \
      --seeds=0,1,2 --epochs=6 --work_dir=/work/defaults_real

A finished run leaves one line in <work_dir>/results.jsonl and is not run
again (a table cut by a deadline resumes); ``--table_only`` prints the table.
The last line printed is the ratio (after - plain) of the held-out mean.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import realdata  # pylint: disable=wrong-import-position

_SETS = flags.DEFINE_list("sets", ["glyphs"], "glyphs, fmnist, demo.")
_ARMS = flags.DEFINE_list("arms", ["plain", "before", "after"], "Arms.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "Epochs (the budget).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Input side.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_GLYPHS = flags.DEFINE_string("glyphs_dir", "/work/data/glyphs",
                              "Folder written by ../shared/data/glyphs.py.")
_FMNIST = flags.DEFINE_string("fmnist_dir", "/work/data/fmnist",
                              "Folder written by ../shared/data/fashion_mnist.py.")
_TRAIN_ROWS = flags.DEFINE_integer(
    "train_rows", 3000,
    "Training rows kept (a fixed random sample; fmnist has 54k).")
_WORK = flags.DEFINE_string("work_dir", "/tmp/defaults_real", "Runs go here.")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Print the table only.")
_RESCORE = flags.DEFINE_bool(
    "rescore", False, "Score every finished run's saved model again (no "
    "training), then print the table.")

# The defaults main had before the defaults campaign (config.py then).
BEFORE = {"augment": "flip,crop", "learning_rate": "1e-3"}
# Arms of the plain script: its own defaults, and ablations of them.
PLAIN = {
    "plain": {},
    # Without XLA (our steps' default on CPU), so a gap that closes here is
    # XLA's, not the training path's.
    "plain_nojit": {"jit_compile": "false"},
    # With our weight decay (1e-4) instead of Keras AdamW's 0.004.
    "plain_wd": {"weight_decay": "1e-4"},
}
# Arms that change a setting with no flag: today's default config with these
# values, written to <work_dir>/configs/<arm>.json and given as --config.
CONFIGS = {
    # Keras AdamW's own weight decay (the plain script's) for our 1e-4.
    "wd4e-3": {"train": {"weight_decay": 0.004}},
}
EXTRA = {
    "noaug": {"augment": ""},
    "flipcrop": {"augment": "flip,crop"},
    # Per-head attention pooling (modeling/model.py, head_pooling).
    "attn": {"head_pooling": "attention"},
    # Steps compiled with XLA, as the plain script's jit_compile="auto" does
    # on TensorFlow.
    "xla": {"xla": "true"},
    # Each head's loss weighted by its labelled share of the demo's
    # train.csv (fill 506, size 988, shape 1131, colour 1138 of 1307 rows):
    # in expectation the plain script's loss, which divides a head's masked
    # sum by the batch size where ours divides by its labelled rows.
    "labelled_share": {"loss_weights": "shape=0.865,colour=0.871,size=0.756,"
                                       "fill=0.387"},
}
# Arm "factors": today's defaults with --factor_heads (modeling/factors.py):
# the set's two pair heads, and on glyphs weight and slant too (the test
# style, bold italic, is an unseen weight x slant combination). char and
# case are functions of each other, so case is not declared.
FACTORS = {"glyphs": "char,family,weight,slant", "fmnist": "category,ink",
           "demo": "shape,colour"}
# composition_real.SETS' held-out pairs (that module defines flags of the
# same names, so it is not imported).
HELDOUT = {
    "fmnist": {("tshirt", "low"), ("trouser", "mid"), ("pullover", "high"),
               ("dress", "low"), ("coat", "mid"), ("bag", "high")},
    "demo": {("circle", "red"), ("square", "green")},
}
PAIRS = {"glyphs": ("char", "family"), "fmnist": ("category", "ink"),
         "demo": ("shape", "colour")}


def _write(path, rows, columns):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  return path


def _absolute(rows, folder):
  return [dict(r, image=os.path.join(folder, r["image"])) for r in rows]


def prepare(name: str, work: str) -> dict:
  """{train, val, test, heldout} for a set: manifests with absolute image
  paths, held-out pairs removed from train and val."""
  out = os.path.join(work, "data", name)
  os.makedirs(out, exist_ok=True)
  pair = PAIRS[name]
  if name == "glyphs":
    folder = os.path.abspath(_GLYPHS.value)
    with open(os.path.join(folder, "heldout.txt"), encoding="utf-8") as f:
      heldout = {tuple(v.split("=")[1] for v in line.strip().split("+"))
                 for line in f if line.strip()}
    src = {s: os.path.join(folder, f"{s}.csv") for s in ("train", "val", "test")}
  elif name == "fmnist":
    src = realdata.locate(_FMNIST.value)
    folder = os.path.abspath(_FMNIST.value)
    heldout = HELDOUT["fmnist"]
  else:
    from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
    paths = demo.generate(os.path.join(out, "demo_data"), 1600, 400, seed=0)
    test = demo.generate(os.path.join(out, "demo_test"), 8, 900, seed=1)
    src = {"train": paths["train"], "val": paths["val"], "test": test["val"]}
    folder = None
    heldout = HELDOUT["demo"]
  paths = {"heldout": sorted(heldout), "name": name}
  for split, path in src.items():
    rows = realdata.read_rows(path)
    base = folder or os.path.dirname(os.path.abspath(path))
    columns = list(rows[0])
    if name == "demo":
      columns = [c for c in columns if c != "marks"]  # a tag head
    rows = _absolute(rows, base)
    if split != "test":
      rows = [r for r in rows if (r[pair[0]], r[pair[1]]) not in heldout]
    if split == "train" and len(rows) > _TRAIN_ROWS.value:
      rows = random.Random(0).sample(rows, _TRAIN_ROWS.value)
    paths[split] = _write(os.path.join(out, f"{split}.csv"), rows, columns)
  return paths


def _run(cmd, log_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(cmd) + "\n")
    log.flush()
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                           env=env, cwd=REPO)
  if code:
    with open(log_path, encoding="utf-8") as log:
      raise RuntimeError(f"exit {code} (log {log_path}):\n"
                         + "".join(log.readlines()[-15:]))
  return time.perf_counter() - start


def _config_file(arm: str, runs: str) -> str:
  """Today's default config with CONFIGS[arm] over it, as a JSON file."""
  from mlc_keras.core import config as config_lib  # pylint: disable=g-import-not-at-top
  d = config_lib.default().to_dict()
  for section, values in CONFIGS[arm].items():
    d[section].update(values)
  config_lib.Config.from_dict(d, arm)  # a typo fails here, not in a run
  path = os.path.join(os.path.dirname(runs), "configs", f"{arm}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(d, f, indent=2)
  return path


def train(arm: str, data: dict, seed: int, run_dir: str) -> tuple[str, dict]:
  """Trains one arm; returns (the .keras file to score, the flags used)."""
  os.makedirs(run_dir, exist_ok=True)
  budget = {"image_size": _IMAGE_SIZE.value, "epochs": _EPOCHS.value,
            "batch_size": _BATCH.value, "seed": seed}
  if arm in PLAIN:
    args = dict(budget, train=data["train"], val=data["val"],
                out=os.path.join(run_dir, "model.keras"), **PLAIN[arm])
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "plain_keras.py")]
    cmd += [f"--{k}={v}" for k, v in args.items()]
    _run(cmd, os.path.join(run_dir, "train.log"))
    return args["out"], args
  if arm == "factors":
    extra = {"factor_heads": FACTORS[data["name"]]}
  elif arm == "attn_factors":
    extra = {"factor_heads": FACTORS[data["name"]], **EXTRA["attn"]}
  elif arm in CONFIGS:
    extra = {"config": _config_file(arm, os.path.dirname(run_dir))}
  elif arm in ("before", "after") or arm in EXTRA:
    extra = BEFORE if arm == "before" else EXTRA.get(arm, {})
  else:
    raise SystemExit(f"--arms: unknown arm {arm!r}")
  args = dict(budget, manifest=data["train"], val_manifest=data["val"],
              model_dir=run_dir, overwrite="true", **extra)
  cmd = [sys.executable, "-m", "mlc_keras.train"]
  cmd += [f"--{k}={v}" for k, v in args.items()]
  _run(cmd, os.path.join(run_dir, "train.log"))
  return os.path.join(run_dir, "model.keras"), args


def _predict(model, csv_path: str, image_size: int) -> tuple[list, dict]:
  """(the manifest's rows, {head: probs [N, k]}) of ``model`` on its images."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import imageio  # pylint: disable=g-import-not-at-top
  rows = realdata.read_rows(csv_path)
  ds = tf.data.Dataset.from_tensor_slices([r["image"] for r in rows]).map(
      lambda p: imageio.decode_and_resize(tf.io.read_file(p), image_size)
  ).batch(64)
  return rows, model.predict(ds, verbose=0)


def stacked_scores(classes: dict, pair, train_rows: list, val: tuple,
                   test: tuple) -> dict:
  """Calibrated stacking (Chao et al. 2016) over every (a, b) pair of the
  two pair heads: a class's score is log p(a) + log p(b)
  (compose.compose_scores); seen classes are the pairs labelled together on
  some row of ``train_rows`` (the manifest the arm trained on); gamma, the
  bias subtracted from the seen classes' scores, maximises H on ``val``
  (calibrate.fit_stacking, through composed_lib.stacking_report as evaluate
  --stacking fits it); S / U / H with it on ``test``.

  ``classes``: {head: class names in output order}; ``val`` and ``test``:
  (manifest rows, {head: probs [N, k]}). S and U are mean per-class
  accuracies over the seen / unseen classes with test rows
  (scoring.gzsl_scores), where ``score``'s composed S / U are over rows:
  the same when every pair has as many test rows, as on glyphs.
  "without_bias": the same numbers at gamma = 0. Where gamma cannot be
  fitted (no validation row of an unseen pair, as on fmnist whose val.csv
  holds only trained pairs) the numbers are None and "not_defined" says
  why.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras.evaluation import composed as composed_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.core import errors  # pylint: disable=g-import-not-at-top
  from mlc_keras.evaluation import scoring  # pylint: disable=g-import-not-at-top
  a, b = pair
  table = compose.ClassTable(
      classes=tuple(f"{x}+{y}" for x in classes[a] for y in classes[b]),
      heads=(a, b),
      values=tuple((i, j) for i in range(len(classes[a]))
                   for j in range(len(classes[b]))),
      source=f"every ({a}, {b}) pair")

  def labels(rows, head):
    # A blank cell, or a value the head has no class for, is missing (-1).
    index = {c: i for i, c in enumerate(classes[head])}
    return np.array([index.get(r[head], -1) if r[head] else -1
                     for r in rows], np.int64)

  def collected(rows, probs):
    return {h: (np.asarray(probs[h], np.float64), labels(rows, h),
                labels(rows, h) >= 0) for h in pair}

  seen = scoring.seen_classes(table.values, table.heads,
                              {h: labels(train_rows, h) for h in pair})
  fit, shown = collected(*val), collected(*test)
  out = {"S": None, "U": None, "H": None, "gamma": None}
  target, _ = compose.classes_of({h: fit[h][1] for h in pair},
                                 {h: fit[h][2] for h in pair}, table)
  fit_seen = seen[target[target >= 0]]
  if not fit_seen.any() or fit_seen.all():
    out["not_defined"] = (
        f"the validation rows have {int(fit_seen.sum())} rows of seen pairs "
        f"and {int((~fit_seen).sum())} of pairs unseen in training: gamma "
        "is fitted on both")
    return out
  try:
    _, report = composed_lib.stacking_report(table, seen, fit, shown,
                                             "val", "test")
  except errors.SettingError as e:  # val and test share an unseen pair
    out["not_defined"] = str(e)
    return out
  target, _ = compose.classes_of({h: shown[h][1] for h in pair},
                                 {h: shown[h][2] for h in pair}, table)
  rows = target >= 0
  pred = compose.compose_scores({h: shown[h][0][rows] for h in pair},
                                table).argmax(axis=1)
  before = scoring.gzsl_scores(target[rows], pred, seen, table.classes)
  out.update(S=report["seen"], U=report["unseen"], H=report["harmonic"],
             gamma=report["gamma"],
             without_bias={"S": before["seen"], "U": before["unseen"],
                           "H": before["harmonic"]},
             val_H={"without_bias": report["fit"]["before"]["harmonic"],
                    "stacked": report["fit"]["after"]["harmonic"]},
             val_unseen_pairs=len(report["fit_unseen_classes"]))
  return out


def score(model_path: str, test_csv: str, pair, heldout, image_size: int,
          train_csv: str | None = None, val_csv: str | None = None
          ) -> tuple[dict, dict, dict | None]:
  """({head: {"seen", "unseen", "all"}} accuracy of the model's argmax on the
  test manifest's labelled cells, unseen = rows whose pair is held out;
  the composed pair's S / U / H; stacked_scores with seen pairs from
  ``train_csv`` and gamma fitted on ``val_csv``, or None without them)."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import saving  # pylint: disable=g-import-not-at-top
  model = saving.load_model(model_path)
  rows, probs = _predict(model, test_csv, image_size)
  # Class order: mlc_keras writes labels.json beside its model, the plain
  # script <model>.classes.json.
  labels = os.path.join(os.path.dirname(model_path), "labels.json")
  if os.path.exists(labels):
    with open(labels, encoding="utf-8") as f:
      classes = {h["name"]: h["classes"] for h in json.load(f)["heads"]}
  else:
    with open(os.path.splitext(model_path)[0] + ".classes.json",
              encoding="utf-8") as f:
      classes = json.load(f)
  unseen = np.array([(r[pair[0]], r[pair[1]]) in heldout for r in rows])
  out = {}
  both = None
  for head in [*pair, *(h for h in probs if h not in pair)]:
    p = probs[head]
    names = np.array(classes[head])[np.argmax(p, axis=-1)]
    truth = np.array([r[head] for r in rows])
    labelled = truth != ""
    right = names == truth
    def acc(mask):
      m = mask & labelled
      return float(right[m].mean()) if m.any() else None
    out[head] = {"seen": acc(~unseen), "unseen": acc(unseen),
                 "all": acc(np.ones_like(unseen))}
    if head in pair:
      both = right if both is None else both & right
  # The composed class (pair[0], pair[1]) is right when both heads are.
  s, u = float(both[~unseen].mean()), float(both[unseen].mean())
  composed = {"S": s, "U": u, "H": 2 * s * u / (s + u) if s + u else 0.0}
  stacked = None
  if train_csv and val_csv:
    stacked = stacked_scores(classes, pair, realdata.read_rows(train_csv),
                             _predict(model, val_csv, image_size),
                             (rows, probs))
  keras.backend.clear_session()
  return out, composed, stacked


def table(results: list, pair_of) -> str:
  ms = realdata.mean_spread
  header = ["set", "epochs", "arm", "n", "head A seen / held-out",
            "head B seen / held-out", "mean seen (all heads)",
            "mean held-out (pair heads)", "composed S / U / H",
            "stacked S / U / H", "other heads (all test rows)"]
  rows = []
  keys = list(dict.fromkeys((r["set"], r["epochs"], r["arm"]) for r in results))
  for s, e, a in sorted(keys, key=lambda k: (k[0], k[1])):
    rs = [r for r in results if (r["set"], r["epochs"], r["arm"]) == (s, e, a)]
    pair = pair_of[s]
    cells = [f"{h}: {ms([r['heads'][h]['seen'] for r in rs])} / "
             f"{ms([r['heads'][h]['unseen'] for r in rs])}" for h in pair]
    seen = [sum(v["seen"] for v in r["heads"].values()) / len(r["heads"])
            for r in rs]
    held = [sum(r["heads"][h]["unseen"] for h in pair) / 2 for r in rs]
    others = sorted(h for h in rs[0]["heads"] if h not in pair)
    other = ", ".join(f"{h} {ms([r['heads'][h]['all'] for r in rs])}"
                      for h in others)
    comp = [r for r in rs if "composed" in r]
    composed = " / ".join(ms([r["composed"][k] for r in comp])
                          for k in ("S", "U", "H"))
    # Runs scored before stacking was added, or where it is not defined,
    # count as not defined ("-").
    stack = [r["stacked"] for r in rs if r.get("stacked")]
    stacked = " / ".join(ms([v[k] for v in stack]) for k in ("S", "U", "H"))
    rows.append([s, e, a, len(rs), *cells, ms(seen), ms(held), composed,
                 stacked, other])
  return realdata.markdown_table(header, rows)


def main(argv):
  del argv
  work = os.path.abspath(_WORK.value)
  os.makedirs(work, exist_ok=True)
  results_path = os.path.join(work, "results.jsonl")
  results = []
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      results = [json.loads(line) for line in f if line.strip()]
  if _RESCORE.value:
    # Results written before a scoring change: score their saved models again.
    for r in results:
      data = prepare(r["set"], work)
      model = r.get("model") or os.path.join(
          work, "runs", f"{r['set']}_e{r['epochs']}_{r['arm']}_{r['seed']}",
          "model.keras")
      r["heads"], r["composed"], r["stacked"] = score(
          model, data["test"], PAIRS[r["set"]],
          {tuple(p) for p in data["heldout"]}, _IMAGE_SIZE.value,
          data["train"], data["val"])
      r["model"] = model
    with open(results_path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in results)
    os.replace(results_path + ".tmp", results_path)
  elif not _TABLE_ONLY.value:
    done = {(r["set"], r["epochs"], r["arm"], r["seed"]) for r in results}
    for name in _SETS.value:
      data = prepare(name, work)
      heldout = {tuple(p) for p in data["heldout"]}
      for seed in map(int, _SEEDS.value):
        for arm in _ARMS.value:
          key = (name, _EPOCHS.value, arm, seed)
          if key in done:
            continue
          run_dir = os.path.join(work, "runs", f"{name}_e{_EPOCHS.value}_{arm}_{seed}")
          start = time.perf_counter()
          model_path, args = train(arm, data, seed, run_dir)
          heads, composed, stacked = score(
              model_path, data["test"], PAIRS[name], heldout,
              _IMAGE_SIZE.value, data["train"], data["val"])
          result = {"set": name, "epochs": _EPOCHS.value, "arm": arm,
                    "seed": seed, "seconds": time.perf_counter() - start,
                    "flags": args, "model": model_path, "heads": heads,
                    "composed": composed, "stacked": stacked}
          results.append(result)
          with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
          print(json.dumps({k: result[k] for k in ("set", "arm", "seed", "heads")}),
                flush=True)
  print(table(results, PAIRS))


if __name__ == "__main__":
  app.run(main)
