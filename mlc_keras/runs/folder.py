"""What a training run folder holds, and how export, predict and evaluate
read it: the .keras files, labels.json, config.json (the run's settings) and
results.json.

  <run>/model.keras        written by train
  <run>/calibrated.keras   written by evaluate with calibrate; preferred by
                           export and predict while it is current
  <run>/labels.json        the heads and their classes
  <run>/config.json        the run's Config (config.Config.to_json)
  <run>/results.json       what train evaluated on, and the scores
  <run>/run.lock           held by the run training there (run_lock.py)

A folder is one run: claim() refuses to retrain a finished run, and to
resume an interrupted one with flags that change what its backup means.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from typing import Mapping, Optional, Sequence

from mlc_keras.exporters import artefacts
from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib

MODEL_FILE = "model.keras"
# Written by `evaluate --calibrate`; preferred by export when it is current.
CALIBRATED_FILE = "calibrated.keras"
LABELS_FILE = artefacts.LABELS_FILE
CONFIG_FILE = config_lib.CONFIG_FILE
RESULTS_FILE = "results.json"
# A run's resume state: the fit trainer's backups and hand-over file
# (training/fit.py) and the distributed trainer's checkpoints, which stay
# after the run ends (training/distributed.py).
FIT_RESUME_STATE = ("backup", "backup_finetune", "frozen_phase.npz")
CHECKPOINT_DIR = "checkpoints"
# Everything a training run writes, deleted by claim(overwrite=True); the
# exports and evaluate's reports are left alone.
TRAINING_FILES = (MODEL_FILE, "best.keras", CALIBRATED_FILE, LABELS_FILE,
                  CONFIG_FILE, RESULTS_FILE, "history.csv", "tensorboard",
                  "quarantine.csv", CHECKPOINT_DIR) + FIT_RESUME_STATE
# Config fields that may change when an interrupted run is resumed (declared
# resumable in config.py: they change how it runs or what it checks, not what
# its backup holds); every other field must match (README "Resuming and
# backups"). Paths (declared path=True): relative ones in an old config.json
# are relative to the folder training ran in.
RESUMABLE_CHANGES = frozenset(
    d.key for d in config_lib.SETTINGS if d.setting.resumable)
_PATH_FIELDS = tuple(
    d.key for d in config_lib.SETTINGS if d.setting.path is True)

# What a training run writes into its folder before config.json (the run's
# marker): the lock record and the image check's cache (and its temporary
# file), and the rows set aside. A folder holding nothing else is a run that
# stopped early. Logs (*.log) are let be: `train ... > run/train.log` is how
# a batch job keeps one, and training writes no such file.
_BEFORE_CONFIG = ("run.lock", "image_check.csv", "quarantine.csv",
                  "lr_find")  # train --find_lr's curve, before a run

log = logging.getLogger("mlc_keras")


class RunDirError(errors.MlcError):
  """A run folder that lacks a file, or holds one that cannot be read."""


class RunFinished(RunDirError):
  """The folder holds a finished run; ``same_flags`` tells whether it was
  trained with the config asked for again."""

  def __init__(self, message: str, same_flags: bool):
    super().__init__(message)
    self.same_flags = same_flags


# --- one run per folder ---------------------------------------------------------


def _flat(config: Mapping) -> dict:
  """{"section.field": value} of a config dict, lists as tuples (JSON has
  no tuples), relative paths made absolute from the current folder."""
  out = {}
  for section, values in config.items():
    if not isinstance(values, Mapping):
      continue
    for field, value in values.items():
      key = f"{section}.{field}"
      if isinstance(value, list):
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
      if key in _PATH_FIELDS and isinstance(value, str) and value not in (
          "", "imagenet"):
        value = os.path.abspath(value)
      out[key] = value
  return out


def _show(value) -> str:
  if value is None:
    return "none"
  if isinstance(value, tuple):
    return ",".join(_show(v) if not isinstance(v, tuple) else
                    "=".join(map(str, v)) for v in value)
  return str(value)


def config_differences(recorded: Mapping, asked: Mapping,
                       ignore=frozenset()) -> list[tuple[str, str, str]]:
  """(setting, recorded value, asked value) for each config field that
  differs between two config dicts (Config.to_dict or a config.json), the
  setting marked for a message (errors.setting), leaving out ``ignore``
  ("section.field") and fields ``asked`` lacks. A field ``recorded`` lacks
  (a config.json written before the field existed) counts as its default,
  which is what that run used."""
  old = {**_flat(config_lib.Config().to_dict()), **_flat(recorded)}
  new = _flat(asked)
  return [(errors.setting(k.split(".", 1)[1]), _show(old[k]), _show(new[k]))
          for k in sorted(old.keys() & new.keys())
          if k not in ignore and old[k] != new[k]]


def _load_config(model_dir: str, hint: str = "") -> tuple[str, object]:
  """(path of the run's config.json, its parsed JSON or None when there is no
  such file). Raises RunDirError naming the file (then ``hint``) when it
  cannot be read."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    return path, None
  try:
    with open(path, encoding="utf-8") as f:
      return path, json.load(f)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path}: cannot read the run's config ({e}){hint}"
                      ) from None


def _in_progress(model_dir: str) -> list[str]:
  """The resume state present in ``model_dir`` (names)."""
  found = [n for n in FIT_RESUME_STATE
           if os.path.exists(os.path.join(model_dir, n))]
  checkpoints = os.path.join(model_dir, CHECKPOINT_DIR)
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    found.append(CHECKPOINT_DIR)
  return found


def _epochs_done(model_dir: str) -> int:
  """Epochs the fit trainer's backups record as done (0 if unreadable: the
  backup's own check reports that)."""
  done = 0
  for name in FIT_RESUME_STATE[:2]:
    path = os.path.join(model_dir, name, "training_metadata.json")
    try:
      with open(path, encoding="utf-8") as f:
        done = max(done, int(json.load(f)["epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return done


def _start_over(model_dir: str) -> None:
  removed = []
  for name in TRAINING_FILES:
    path = os.path.join(model_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    else:
      continue
    removed.append(name)
  if removed:
    log.warning("overwrite: deleted the previous run's %s from %s",
                ", ".join(removed), model_dir)


def is_run_config(config) -> bool:
  """Whether parsed JSON is a config.json this package wrote (a Config's
  sections), the marker of one of its run folders."""
  return isinstance(config, dict) and all(
      isinstance(config.get(k), dict) for k in ("data", "model", "train"))


def foreign_files(model_dir: str) -> list[str]:
  """The names in ``model_dir`` that are not this package's, when it holds
  no run of this package (no config.json of one); [] for a missing or empty
  folder, or a run's."""
  if not os.path.isdir(model_dir):
    return []
  names = sorted(os.listdir(model_dir))
  try:
    _, config = _load_config(model_dir)
  except RunDirError:
    config = None
  if is_run_config(config):
    return []
  return [n for n in names if n not in _BEFORE_CONFIG
          and not n.startswith("image_check.csv.tmp")
          and not n.endswith(".log")]


def check_writable(model_dir: str) -> None:
  """Creates ``model_dir`` if needed; raises RunDirError naming it when it is
  a file or cannot be written (a read-only folder), before a run starts."""
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise RunDirError(f"{model_dir} is a file, not a folder; give a folder "
                      "as `model_dir`")
  try:
    os.makedirs(model_dir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_check", dir=model_dir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise RunDirError(
        f"{model_dir}: cannot write there ({e.strerror or e}); give a "
        "folder you can write as `model_dir`") from None


def claim(model_dir: str, config: Mapping, overwrite: bool = False,
          chief: bool = True) -> str:
  """Decides what training ``config`` (Config.to_dict) in ``model_dir``
  means, before anything is written there: "new" (nothing to keep),
  "resume" (an interrupted run with the same meaning) or, with
  ``overwrite``, "overwrite" (the previous run's files deleted, on the
  chief only; other workers trust it and check nothing).

  Raises RunFinished when the folder holds a finished run, and RunDirError
  naming each setting and both values when an interrupted run's backup was made
  with a config that means something else (RESUMABLE_CHANGES may differ),
  or naming the files of a folder that holds something else than a run of
  this package (refused even with ``overwrite``: those files are a user's).
  """
  foreign = foreign_files(model_dir) if chief else []
  if foreign:
    shown = ", ".join(foreign[:10]) + (
        f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
    raise RunDirError(
        f"{model_dir} is not empty and holds no mlc_keras run (no config.json "
        f"of one): {shown}; nothing was written. Train into a new or empty "
        "`model_dir` (`overwrite` only replaces an mlc_keras run).")
  if overwrite:
    if chief:
      _start_over(model_dir)
    return "overwrite"
  model = os.path.join(model_dir, MODEL_FILE)
  in_progress = _in_progress(model_dir)
  _, recorded = _load_config(model_dir, "; pass `overwrite` to start over")
  recorded = recorded if isinstance(recorded, dict) else None
  if os.path.isfile(model) and not set(in_progress) - {CHECKPOINT_DIR}:
    diffs = config_differences(recorded, config) if recorded else []
    changed = "; ".join(f"{f} was {a}, now {b}" for f, a, b in diffs)
    when = time.strftime("%Y-%m-%d %H:%M UTC",
                         time.gmtime(os.path.getmtime(model)))
    raise RunFinished(
        f"{model_dir} holds a finished run"
        + (f" trained with other settings ({changed})" if diffs else "")
        + f"; nothing was trained. Its model: {os.path.abspath(model)} "
        f"(written {when}). To train again, pass `overwrite` (deletes that "
        "run's files first) or give a new `model_dir`.", not diffs)
  if not in_progress or recorded is None:
    return "new"
  diffs = config_differences(recorded, config, ignore=RESUMABLE_CHANGES)
  done, epochs = _epochs_done(model_dir), config.get("train", {}).get("epochs")
  if isinstance(epochs, int) and epochs < done:
    diffs.append((errors.setting("epochs"), f"{done} already trained",
                  str(epochs)))
  if diffs:
    lines = "\n  ".join(f"{f}: {a} in the interrupted run, {b} now"
                         for f, a, b in diffs)
    raise RunDirError(
        f"{model_dir} holds an interrupted run ({', '.join(in_progress)}) "
        "whose backup is only valid with its own settings:\n  "
        f"{lines}\nResume with the interrupted run's values, or start over "
        "with `overwrite` (or a new `model_dir`). Its config.json is "
        "unchanged.")
  return "resume"


def schema_differences(saved: heads_lib.LabelSchema,
                       now: heads_lib.LabelSchema) -> list[str]:
  """What differs in meaning between two schemas: heads (their order),
  each head's kind and its classes (their order); [] when none. Loss
  weights, focal gammas and tag thresholds are settings, not meaning."""
  if saved.names != now.names:
    return [f"heads: {', '.join(saved.names)} in the interrupted run, "
            f"{', '.join(now.names)} now"]
  out = []
  for old, new in zip(saved.heads, now.heads):
    if old.kind != new.kind:
      out.append(f"head {old.name!r}: kind {old.kind} in the interrupted run, "
                 f"{new.kind} now")
    elif old.classes != new.classes:
      out.append(f"head {old.name!r}: classes {', '.join(old.classes)} in the "
                 f"interrupted run, {', '.join(new.classes)} now")
  return out


def check_resumed_schema(model_dir: str, schema: heads_lib.LabelSchema
                         ) -> None:
  """Before a run writes its labels.json: when ``model_dir`` holds an
  interrupted run, its saved labels.json must mean what ``schema`` (inferred
  from the data now, or given) means, since the backup's output columns are
  its classes in that order (a class renamed or inserted in the manifest
  would silently retrain column k as another class).

  Raises RunDirError naming each head and both class lists."""
  in_progress = _in_progress(model_dir)
  path = os.path.join(model_dir, LABELS_FILE)
  if not in_progress or not os.path.isfile(path):
    return
  diffs = schema_differences(heads_lib.LabelSchema.load(path), schema)
  if diffs:
    raise RunDirError(
        f"{model_dir} holds an interrupted run ({', '.join(in_progress)}) "
        "whose backup was trained on other classes than the data has now:\n  "
        + "\n  ".join(diffs) + f"\nRestore the data the run was started "
        f"with (its classes are in {path}) to resume, or start over with "
        "`overwrite` (or a new `model_dir`). Its labels.json and "
        "config.json are unchanged.")


# --- config.json / results.json --------------------------------------------------


def run_config(model_dir: str) -> Optional[config_lib.Config]:
  """The Config a run wrote to ``model_dir`` (a field its config.json lacks:
  the default, which that run used), or None without one. Raises
  RunDirError naming the file when it is not a config of this package."""
  path, config = _load_config(model_dir)
  if config is None and not os.path.isfile(path):
    return None
  try:
    return config_lib.Config.from_dict(config, source=path)
  except errors.SettingError as e:
    raise RunDirError(str(e)) from None


def run_data(model_dir: str) -> Optional[dict]:
  """run_config's "data" section as a dict (None: no config.json)."""
  cfg = run_config(model_dir)
  return None if cfg is None else dataclasses.asdict(cfg.data)


def run_image_column(model_dir: str) -> str:
  """The manifest image column of the run in ``model_dir`` (its config.json
  data.image_column), so evaluate and export read the run's manifests as
  training did.

  Raises RunDirError naming the file when there is no config.json or it
  cannot be read. A config.json without the key gets config's default
  ("image"), which is what training used before the key was recorded.
  """
  data = run_data(model_dir)
  if data is None:
    raise RunDirError(
        f"{os.path.join(model_dir, CONFIG_FILE)}: no such file; the image "
        "column of the run's manifests is read from it (give `image_column`)")
  column = data.get("image_column", config_lib.DataConfig.image_column)
  if not isinstance(column, str) or not column:
    raise RunDirError(
        f"{os.path.join(model_dir, CONFIG_FILE)}: data.image_column is "
        f"{column!r}, not a column name")
  return column


def demo_dir(data: Mapping) -> Optional[str]:
  """The folder of the generated demo set when the run's config "data"
  section (run_data) shows it trained on the demo set, i.e. on no manifest,
  TFRecord or TFDS source; else None."""
  if any(data.get(k) for k in ("manifest", "tfrecord", "tfds")):
    return None
  return data.get("demo_dir") or config_lib.DataConfig.demo_dir


def example_manifest(model_dir: str) -> Optional[str]:
  """A manifest of images this run did not train on, for the predict command
  train prints: the demo set's heldout.csv for a demo run, else the first
  held-out manifest the run recorded (see default_image_sources) that exists
  here; None when there is none (train then prints a placeholder)."""
  data = run_data(model_dir) or {}
  demo = demo_dir(data) if data else None
  candidates = [os.path.join(demo, "heldout.csv")] if demo else []
  candidates += _recorded_sources(model_dir)[1]
  return next((c for c in candidates if os.path.isfile(c)), None)


def next_commands(model_dir: str) -> list[str]:
  """The evaluate, export and predict commands train prints after a run,
  each runnable as printed: paths shell-quoted (a space or a quote in one
  would split or break the pasted command), evaluate and predict given real
  held-out images when the run names some (else a <placeholder> to fill,
  never a command that fails as printed)."""
  q = shlex.quote
  images = example_manifest(model_dir)
  data = run_data(model_dir) or {}
  demo = demo_dir(data) if data else None
  # evaluate's default data (evaluate_lib.default_manifest): the run's
  # validation manifest, the demo set's, or the rows a --val_fraction run
  # split off its training manifest; a TFRecord/TFDS run (or one whose
  # manifests are gone) has none, so the command says what to fill in.
  split = (data.get("manifest") and not data.get("val_manifest")
           and data.get("val_fraction", config_lib.DataConfig.val_fraction) > 0)
  default = data.get("val_manifest") or (
      demo and os.path.join(demo, "val.csv")) or (
          split and data.get("manifest"))
  evaluate_data = "" if default and os.path.isfile(default) else (
      " --manifest=<held-out manifest>")
  return [f"python -m mlc_keras.evaluate --model_dir={q(model_dir)}"
          + evaluate_data,
          f"python -m mlc_keras.export --model_dir={q(model_dir)}",
          f"python -m mlc_keras.predict --model={q(model_dir)} "
          + (q(images) if images else "<images>")]


def _recorded_sources(model_dir: str) -> tuple[list[str], list[str]]:
  """(training, held-out) manifests the run's results.json and config.json
  name, found here or not."""
  train, held_out = [], []
  results = os.path.join(model_dir, RESULTS_FILE)
  if os.path.isfile(results):
    with open(results, encoding="utf-8") as f:
      evaluated = json.load(f).get("evaluated_on")
    if isinstance(evaluated, str) and evaluated.endswith(".csv"):
      held_out.append(evaluated)
  data = run_data(model_dir)
  if data is not None:
    held_out.append(data.get("val_manifest"))
    train.append(data.get("manifest"))
    demo = demo_dir(data)
    if demo:
      train.append(os.path.join(demo, "train.csv"))
      held_out.append(os.path.join(demo, "val.csv"))
  return [c for c in train if c], [c for c in held_out if c]


def default_image_sources(model_dir: str) -> tuple[Optional[str], Optional[str]]:
  """(calibration, parity) manifests of real images for a trained model
  folder, used when neither representative nor parity_images is given.

  Calibration prefers the training manifest (what int8 ranges should cover),
  parity the set the run was evaluated on (results.json), else the
  validation manifest; each falls back to the other. Read from results.json
  and config.json; (None, None) if none exists on this machine. Paths are
  absolute since config.json records them so; a relative one (an older
  config.json) is relative to the folder training ran in.
  """
  train, held_out = (
      [c for c in found if os.path.isfile(c)]
      for found in _recorded_sources(model_dir))
  calibration = (train + held_out or [None])[0]
  parity_source = (held_out + train or [None])[0]
  return calibration, parity_source


def missing_image_sources(model_dir: str) -> list[str]:
  """The manifests the run's files name that do not exist from here (to
  say why default_image_sources found none)."""
  train, held_out = _recorded_sources(model_dir)
  return sorted({c for c in train + held_out if not os.path.isfile(c)})


# --- the trained model ----------------------------------------------------------


def model_outputs(model, images) -> dict:
  """Calls ``model`` in inference mode and returns its outputs keyed by name,
  whatever structure the model returns (dict, list or a single tensor)."""
  out = model(images, training=False)
  if isinstance(out, Mapping):
    return dict(out)
  if isinstance(out, (list, tuple)):
    return dict(zip(model.output_names, out))
  return {model.output_names[0]: out}


def image_size_of(model) -> int:
  """The side S of a Keras model's [N, S, S, 3] input."""
  shape = model.input_shape
  if isinstance(shape, list):
    shape = shape[0]
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise artefacts.ExportError(
        f"model input shape {shape} is not [N, S, S, 3]; only square RGB "
        "models are exported")
  return int(shape[1])


def check_outputs_match_schema(output_shapes: Mapping[str, Sequence[int]],
                               schema: heads_lib.LabelSchema,
                               origin: str) -> None:
  """Every head of the schema must be an output with one column per class.

  Outputs that are not heads (e.g. a composed "class" output) are allowed.
  """
  for h in schema.heads:
    if h.name not in output_shapes:
      raise artefacts.ExportError(
          f"{origin}: labels.json has head {h.name!r} but the model has no "
          f"such output (outputs: {', '.join(sorted(output_shapes))})")
    width = output_shapes[h.name][-1]
    if width is not None and width != h.num_classes:
      raise artefacts.ExportError(
          f"{origin}: head {h.name!r} has {h.num_classes} classes in "
          f"labels.json but the model outputs {width} columns")


def choose_model_file(model_dir: str, model_file: Optional[str] = None
                      ) -> tuple[str, str]:
  """Which .keras file of a model folder to export: (path, why).

  model_file: a file name inside ``model_dir``. None picks calibrated.keras
  (written by evaluate with ``calibrate``) when it exists and is not older than
  model.keras, else model.keras: a calibrated model is what the run's owner
  asked for, but one older than model.keras belongs to weights that have
  since been retrained, so exporting it would publish the old model.
  ``model_dir`` may also be a .keras file, which is then used as it is.
  """
  if os.path.isfile(model_dir) and model_dir.endswith(".keras"):
    if model_file:
      raise artefacts.ExportError(
          f"{model_dir} is a .keras file; `model_file` only picks a file "
          "inside a model folder")
    return model_dir, "the .keras file given"
  if not os.path.isdir(model_dir):
    raise artefacts.ExportError(f"{model_dir}: no such model folder or .keras file")
  if model_file:
    if os.path.basename(model_file) != model_file:
      raise artefacts.ExportError(
          f"model file {model_file!r} must be a file name inside {model_dir} "
          "(to export a .keras file elsewhere, pass it as `model_dir`)")
    path = os.path.join(model_dir, model_file)
    if not os.path.isfile(path):
      present = sorted(f for f in os.listdir(model_dir) if f.endswith(".keras"))
      raise artefacts.ExportError(
          f"{model_dir}: no {model_file} in this model folder (.keras files "
          f"there: {', '.join(present) or 'none'})")
    return path, f"model_file={model_file}"
  plain = os.path.join(model_dir, MODEL_FILE)
  calibrated = os.path.join(model_dir, CALIBRATED_FILE)
  if os.path.isfile(calibrated):
    if not os.path.isfile(plain):
      return calibrated, f"{CALIBRATED_FILE} (no {MODEL_FILE} in the folder)"
    if os.path.getmtime(calibrated) >= os.path.getmtime(plain):
      return calibrated, (
          f"{CALIBRATED_FILE} (temperature-scaled by evaluate with calibrate; "
          f"model_file={MODEL_FILE} exports the uncalibrated model)")
    return plain, (
        f"{MODEL_FILE}; warning: {CALIBRATED_FILE} is older than "
        f"{MODEL_FILE} (the model was retrained after evaluate with "
        "calibrate), so it is not used: re-run evaluate with calibrate, or "
        f"pass model_file={CALIBRATED_FILE} to export it anyway")
  if not os.path.isfile(plain):
    raise artefacts.ExportError(f"{model_dir}: no {MODEL_FILE} in this model folder")
  return plain, MODEL_FILE


def load_schema(model_path: str) -> heads_lib.LabelSchema:
  """The labels.json beside a .keras file."""
  folder = os.path.dirname(os.path.abspath(model_path))
  labels = os.path.join(folder, LABELS_FILE)
  if not os.path.exists(labels):
    raise artefacts.ExportError(
        f"{folder}: no {LABELS_FILE} beside the model; the class names of "
        "each head come from it (train writes it into the model folder)")
  return heads_lib.LabelSchema.load(labels)


def load_trained(model_dir: str, model_file: Optional[str] = None):
  """Loads the model of ``model_dir`` (see choose_model_file; or a .keras
  file) and the labels.json beside it. Returns (keras model, LabelSchema)."""
  model_path, _ = choose_model_file(model_dir, model_file)
  schema = load_schema(model_path)
  return load_checked(model_path, schema), schema


def load_checked(model_path: str, schema: heads_lib.LabelSchema):
  """Loads a .keras file and checks its outputs against ``schema``."""
  from mlc_keras.modeling import saving  # keras import kept at the edge
  model = saving.load_model(model_path)
  shapes = {n: tuple(t.shape) for n, t in symbolic_outputs(model).items()}
  check_outputs_match_schema(shapes, schema, model_path)
  return model


def symbolic_outputs(model) -> dict:
  """The model's output tensors by name (no call made)."""
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.named_outputs(model)


