r"""Adding one head to a trained model: --init_from + --train_heads against
retraining every head.

On the demo set: a parent is trained on three heads (shape, colour, fill;
the manifest's size column is left out by its heads file). Then "size" is
added two ways, each for --epochs epochs with the same data, batch, seed and
learning rate:

  add_head   --init_from=<parent> --train_heads=size: the parent's backbone
             and heads copied, only the new Dense head trains (backbone frozen,
             BatchNorm in inference mode; the other heads stay bit-identical);
  add_head + backbone
             --init_from --train_heads=size --train_backbone: the new head and
             the backbone train (the other heads' Dense layers stay frozen, but
             their outputs move with the backbone);
  warm start --init_from alone: every head and the backbone train, starting
             from the parent's weights;
  retrain    all heads from scratch (what one does without --init_from).

Both go through train_lib.train_and_evaluate (the train CLI's library), timed
wall-clock from start to results.json, so model building, data loading and
the final evaluation are in both. The new head's accuracy is measured on the
validation set in inference mode (results.json). Printed last: the time ratio
retrain / add_head and both arms' "size" accuracy.

  python benchmarks/add_head.py                 # demo scale: 48 px, ResNet50V2
  python benchmarks/add_head.py --tiny          # 32 px, 320 images (a smoke run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import benchutil  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlc_keras.core import config as config_lib  # pylint: disable=wrong-import-position
from mlc_keras.training import run as train_lib  # pylint: disable=wrong-import-position
from mlc_keras.data import demo  # pylint: disable=wrong-import-position

NEW_HEAD = "size"


def _config(args, data: dict, heads_file: str, **train) -> config_lib.Config:
  cfg = config_lib.demo()
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(
          cfg.data, manifest=data["train"], val_manifest=data["val"],
          heads_file=heads_file, image_size=args.image_size),
      model=dataclasses.replace(cfg.model, backbone=args.backbone),
      train=dataclasses.replace(cfg.train, epochs=args.epochs,
                                batch_size=args.batch_size, **train))


def _timed(cfg: config_lib.Config, model_dir: str) -> tuple[float, dict]:
  start = time.perf_counter()
  results = train_lib.train_and_evaluate(cfg, model_dir, verbose=0)
  return time.perf_counter() - start, results


def _accuracy(results: dict, head: str) -> float:
  return next(r["accuracy"] for r in results["heads"] if r["head"] == head)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--parent_epochs", type=int, default=5)
  parser.add_argument("--image_size", type=int, default=48)
  parser.add_argument("--train_size", type=int, default=1600)
  parser.add_argument("--val_size", type=int, default=400)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--backbone", default="ResNet50V2")
  parser.add_argument("--two_arms", action="store_true",
                      help="only add_head and retrain (skip the two middle arms)")
  args = parser.parse_args()
  if args.tiny:
    args.image_size, args.train_size, args.val_size = 32, 320, 160
    args.epochs, args.parent_epochs = 2, 3
  print(benchutil.machine())
  root = tempfile.mkdtemp(prefix="add_head_")
  data = demo.generate(os.path.join(root, "data"), args.train_size,
                       args.val_size)
  full = demo.SCHEMA
  parent_heads = os.path.join(root, "parent_heads.json")
  full.select([n for n in full.names if n != NEW_HEAD]).save(parent_heads)
  full.save(os.path.join(root, "all_heads.json"))
  all_heads = os.path.join(root, "all_heads.json")

  parent_dir = os.path.join(root, "parent")
  parent_cfg = _config(args, data, parent_heads)
  parent_cfg = dataclasses.replace(parent_cfg, train=dataclasses.replace(
      parent_cfg.train, epochs=args.parent_epochs))
  t_parent, _ = _timed(parent_cfg, parent_dir)
  print(f"parent ({', '.join(n for n in full.names if n != NEW_HEAD)}; "
        f"{args.parent_epochs} epochs): {t_parent:.1f} s")

  t_add, r_add = _timed(
      _config(args, data, all_heads, init_from=parent_dir,
              train_heads=(NEW_HEAD,)), os.path.join(root, "add_head"))
  rows = [("add_head (--init_from --train_heads=size)", t_add, r_add)]
  if not args.two_arms:
    for name, extra in (
        ("add_head + --train_backbone", dict(train_heads=(NEW_HEAD,),
                                             train_backbone=True)),
        ("warm start (--init_from, every head)", {})):
      t, r = _timed(_config(args, data, all_heads, init_from=parent_dir,
                            **extra),
                    os.path.join(root, name.split()[0] + str(len(rows))))
      rows.append((name, t, r))
  t_all, r_all = _timed(_config(args, data, all_heads),
                        os.path.join(root, "retrain"))
  rows.append(("retrain (all heads, from scratch)", t_all, r_all))
  print(f"\n{args.backbone} at {args.image_size} px, {args.train_size} train / "
        f"{args.val_size} val images, {args.epochs} epochs, batch "
        f"{args.batch_size}")
  print(f"{'arm':44s} {'time s':>8s} " + " ".join(f"{n:>8s}" for n in full.names))
  for name, t, r in rows:
    print(f"{name:44s} {t:8.1f} " + " ".join(
        f"{_accuracy(r, n):8.3f}" for n in full.names))
  summary = {"time_ratio_retrain_over_add_head": t_all / t_add,
             "size_accuracy_add_head": _accuracy(r_add, NEW_HEAD),
             "size_accuracy_retrain": _accuracy(r_all, NEW_HEAD),
             "arms": {name: {"seconds": round(t, 1),
                             "time_over_retrain": round(t / t_all, 3),
                             "accuracy": {n: _accuracy(r, n) for n in full.names}}
                      for name, t, r in rows}}
  print(json.dumps(summary))
  print(f"ratio: retrain takes {t_all / t_add:.2f}x the time of add_head; "
        f"new head accuracy {summary['size_accuracy_add_head']:.3f} (add_head) "
        f"vs {summary['size_accuracy_retrain']:.3f} (retrain)")


if __name__ == "__main__":
  main()
