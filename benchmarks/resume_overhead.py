r"""Wall-time cost of the fit path's backups (training.backup.ResumableBackup).

One model (--backbone, weights=None, --image_size px, batch --batch_size,
AdamW, the project's compile_model) on the demo set through the real
pipeline.train_dataset, traced once by an untimed warm-up fit. Then each arm is
one fit() of --epochs x --steps_per_epoch steps with the same traced step:

  none     no backup callback
  epoch    ResumableBackup(save_freq="epoch")   (the default of train.py)
  steps    ResumableBackup(save_freq=--every_steps)
  keras    keras.callbacks.BackupAndRestore(save_freq=--every_steps,
           double_checkpoint=True): the stock callback, for reference

Arms run in a rotating order (none, epoch, steps, keras / epoch, steps,
keras, none / ...) for --rounds rounds; each side's time is the median of its
arms. Wall-time differences of a few percent are within the noise of a shared
machine, so each backup arm also times its own saves (seconds spent inside
the callback's save, summed): that share of the arm's time is the overhead
measured directly.

  overhead ratio = arm time / no-backup time, printed last for the default
  (per-epoch) backups.

  python benchmarks/resume_overhead.py                  # ~6 min*
  python benchmarks/resume_overhead.py --backbone=ResNet50V2 --image_size=96

* MobileNetV2 at 64 px on 2 shared CPU cores.

Target: <= 1.05 at the default setting (a backup each epoch).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import benchutil  # benchmarks/ is sys.path[0] when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BACKBONE = flags.DEFINE_string("backbone", "MobileNetV2", "Backbone.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Input side.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs per arm.")
_STEPS = flags.DEFINE_integer(
    "steps_per_epoch", 150, "Steps per epoch (150: a 17 s epoch on 2 idle "
    "cores, short next to a real epoch, so the default is a hard case).")
_EVERY = flags.DEFINE_integer("every_steps", 10,
                              "save_freq of the 'steps' arm (--backup_every_steps).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Arms per side.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Demo data and backups (default: a temporary folder, "
    "deleted).")

TARGET = 1.05


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import keras  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import manifest  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import pipeline  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import sources  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import backup  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top

  print(f"{benchutil.machine()}; other processes may share the cores",
        flush=True)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="resume_overhead_")
  try:
    started = time.time()
    keras.utils.set_random_seed(0)
    paths = demo.generate(os.path.join(workdir, "demo"), train_size=400,
                          val_size=8, heldout_size=8)
    records, schema = manifest.read_manifest(paths["train"])
    source = sources.records_source(records)
    steps = _STEPS.value
    train_ds = pipeline.train_dataset(
        source, schema, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
        seed=0, steps_per_epoch=steps, augmentations=("flip", "crop"),
        cache=True)
    model = model_lib.build_model(schema, _IMAGE_SIZE.value, _BACKBONE.value)
    setup.compile_model(model, schema, keras.optimizers.AdamW(1e-3),
                            top_k=2)
    model.fit(train_ds, epochs=1, steps_per_epoch=2, verbose=0,
              shuffle=False)  # traces the step
    n_weights = sum(int(v.numpy().size) for v in model.variables)
    print(f"{_BACKBONE.value} at {_IMAGE_SIZE.value}px, batch {_BATCH.value}, "
          f"{n_weights / 1e6:.1f}M model variables; arm = {_EPOCHS.value} "
          f"epochs x {steps} steps; traced at {time.time() - started:.0f} s",
          flush=True)

    backup_dir = os.path.join(workdir, "backup")
    save_seconds = []  # of the arm running now

    def timed(cls):
      class Timed(cls):
        def _save_model(self, *args, **kwargs):
          t0 = time.perf_counter()
          super()._save_model(*args, **kwargs)
          save_seconds.append(time.perf_counter() - t0)
      return Timed

    arms = {
        "none": lambda: [],
        "epoch": lambda: [timed(backup.ResumableBackup)(backup_dir)],
        "steps": lambda: [timed(backup.ResumableBackup)(
            backup_dir, save_freq=_EVERY.value)],
        "keras": lambda: [timed(keras.callbacks.BackupAndRestore)(
            backup_dir, save_freq=_EVERY.value, double_checkpoint=True)],
    }
    names = list(arms)
    times = {name: [] for name in names}
    saving = {name: [] for name in names}  # seconds in saves, per arm run
    n_saves = {name: 0 for name in names}
    for r in range(_ROUNDS.value):
      for name in names[r % len(names):] + names[:r % len(names)]:
        shutil.rmtree(backup_dir, ignore_errors=True)
        save_seconds.clear()
        t0 = time.perf_counter()
        model.fit(train_ds, epochs=_EPOCHS.value, steps_per_epoch=steps,
                  callbacks=arms[name](), verbose=0, shuffle=False)
        times[name].append(time.perf_counter() - t0)
        saving[name].append(sum(save_seconds))
        n_saves[name] = len(save_seconds)
        print(f"  round {r + 1} {name:<6} {times[name][-1]:7.2f} s, "
              f"{saving[name][-1]:5.2f} s in {len(save_seconds)} saves",
              flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    save_med = {name: statistics.median(t) for name, t in saving.items()}
    print(f"\n{'arm':<34} {'median s':>9} {'saves':>6} {'ratio':>7} "
          f"{'in saves':>9} {'per save':>9}")
    labels = {"none": "no backup", "epoch": "backup each epoch (default)",
              "steps": f"backup every {_EVERY.value} steps",
              "keras": f"Keras' own, every {_EVERY.value} steps"}
    for name in names:
      per_save = (f"{1000 * save_med[name] / n_saves[name]:7.0f} ms"
                  if n_saves[name] else f"{'-':>9}")
      print(f"{labels[name]:<34} {med[name]:>9.2f} {n_saves[name]:>6} "
            f"{med[name] / med['none']:>7.3f} "
            f"{100 * save_med[name] / med[name]:>8.1f}% {per_save}")
    print(f"a step: {1000 * med['none'] / (_EPOCHS.value * steps):.0f} ms; "
          f"total {time.time() - started:.0f} s")
    ratio = med["epoch"] / med["none"]
    direct = 1 + save_med["epoch"] / med["none"]
    print(f"\noverhead ratio (epoch backups / no backup): wall {ratio:.3f}, "
          f"from the time in saves {direct:.3f}  (target <= {TARGET}: "
          f"{'met' if max(ratio, direct) <= TARGET else 'NOT met'})")
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
