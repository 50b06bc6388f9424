r"""Trains a multi-head image classifier.

With no flags: generates the embedded demo set and trains on it (about ten
minutes on two CPU cores), leaving a model in mlc_runs/demo.

  python -m mlc_keras.train
  python -m mlc_keras.train --manifest=data/train.csv --model_dir=runs/logos \
      --image_size=224 --weights=imagenet --epochs=20
  python -m mlc_keras.train --flagfile=run.flags
  python -m mlc_keras.train --config=runs/logos --model_dir=runs/logos2
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from absl import app
from absl import flags

from mlc_keras.cli import help as cli_help
from mlc_keras.core import config as config_lib
from mlc_keras.core import errors

_d = config_lib.DataConfig()

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", "mlc_runs/demo",
    "Where the model, labels.json, results and backups go; one run at a time "
    "(run.lock). Re-running with the same model_dir resumes an interrupted "
    "run and leaves a finished one alone (see --overwrite).")
_PRESET = flags.DEFINE_enum(
    "preset", None, list(config_lib.PRESETS),
    "Starting config that the other flags override. Default: 'demo' when no "
    "data source is given, else 'default'. Recipes: 'scratch_small' (from "
    "scratch on a small data set) and 'finetune_imagenet' (ImageNet weights, "
    "frozen then unfrozen backbone); see mlc_keras/core/config.py.")
_CONFIG = flags.DEFINE_string(
    "config", None,
    "A config.json (or a run folder holding one) to start from instead of "
    "a preset; each flag given overrides its value, so --config=runs/a "
    "--model_dir=runs/b trains run a's settings again in runs/b (a run's "
    "config.json holds absolute paths).")
# The flags whose value is parsed into its field's, or whose default is left
# None so that the preset's value stands (and --help shows no default of
# its own); every other config field's flag is defined from its declaration
# in core/config.py (_define, below).
# Data.
_TFDS_VAL = flags.DEFINE_string("tfds_val_split", _d.tfds_val_split,
                                "TFDS validation split ('' for none).")
_LABEL_COLUMNS = flags.DEFINE_list(
    "label_columns", [], "Manifest columns to train as heads, e.g. "
    "logo,medium (default: every column but the image column; other columns, "
    "such as notes, are ignored).")
# --- tag heads ---
_TAG_COLUMNS = flags.DEFINE_list(
    "tag_columns", [], "Manifest columns to train as tag heads (independent "
    "sigmoids over the column's tags): a cell lists tags joined by '|', "
    "'(none)' when none apply, blank when unknown. Without --heads_file only.")
# Held-out combinations.
_HOLDOUT = flags.DEFINE_string(
    "holdout_combinations", None, "Combinations of head values that no "
    "training or validation image may carry, e.g. 'shape=triangle+colour=blue;"
    "shape=circle+colour=red' or a file with one per line; rows that may carry "
    "one (a blank label included) are removed and listed in holdout.json.")
_CALIBRATION_COMBOS = flags.DEFINE_string(
    "calibration_combinations", None, "Combinations removed from training "
    "only (same syntax): validation keeps them, so evaluate --stacking can fit "
    "its bias on unseen combinations other than the test's. 'auto' picks "
    "about 5% of the --factor_heads' combinations from the data (seeded, "
    "each also in validation, never a held-out one, never a value's last "
    "training row) and lists them in holdout.json.")
_BALANCE = flags.DEFINE_list(
    "balance_combinations", [], "Heads (two or more, e.g. category,ink) whose "
    "value combinations training draws about equally often: a row of a rare "
    "combination is repeated (up to 10x) within each epoch. Off by default "
    "(see BUILD_NOTES for its measured effect).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Square input side.")
_CACHE = flags.DEFINE_bool("cache", None, "Cache decoded images in memory.")
_AUGMENT = flags.DEFINE_list(
    "augment", None, "Training augmentations: flip, crop (pad and crop, for "
    "small images), resized_crop (random resized crop cut while decoding, for "
    "photos; needs --nocache), colour, randaugment (--randaugment_ops random "
    "ops of --randaugment_magnitude), erasing (random erasing, "
    "--erasing_prob) ('' for none). Default: none (the demo preset "
    "uses crop): at short from-scratch budgets each of these cost accuracy "
    "in the measured tables (BUILD_NOTES). Leave out any that change a label "
    "(flip for text, digits or left/right; colour for a colour head).")
# Feeding.
_CROP_SCALE = flags.DEFINE_list(
    "crop_scale", None,
    "--augment=resized_crop: low,high share of the image area the random "
    "window covers (default 0.08,1, as Inception/ResNet).")
_CROP_RATIO = flags.DEFINE_list(
    "crop_ratio", None,
    "--augment=resized_crop: low,high aspect (width / height) of the window "
    "(default 0.75,1.333..., i.e. 3/4,4/3).")
_DATA_SERVICE = flags.DEFINE_string(
    "data_service", None, "grpc://host:port of a tf.data service dispatcher: "
    "its workers decode and augment the training input (README: 'Several "
    "GPUs, several machines').")
# Model.
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Backbone weights: none, imagenet, or a local no-top "
    "weights file.")
# Training.
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs.")
_LR = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_LOSS_WEIGHTS = flags.DEFINE_list(
    "loss_weights", [], "Per-head loss weights 'head=w,...' (override the "
    "heads file).")
_FOCAL_LOSS = flags.DEFINE_list(
    "focal_loss", [], "Focal loss for some heads: 'head=gamma,...' or a bare "
    "gamma for every head (e.g. 2); other heads keep cross-entropy. Overrides "
    "the heads file.")
# Model selection.
_MONITOR = flags.DEFINE_string(
    "monitor", None, "Which epoch best.keras holds (and --early_stopping_"
    "patience watches): a quantity of the epoch logs, e.g. val_loss, "
    "val_shape_balanced_acc. Default: val_mean_balanced_accuracy, the mean "
    "over heads of the balanced accuracy on validation data "
    "(mean_balanced_accuracy on training data when there is none).")
# Growing a trained model.
_REINIT_HEADS = flags.DEFINE_list(
    "reinit_heads", [], "With --init_from: heads whose class list lost or "
    "renamed a class, to train from scratch (otherwise such a head is an "
    "error).")
_TRAIN_HEADS = flags.DEFINE_list(
    "train_heads", [], "Train only these heads (e.g. a new one): every other "
    "head and the backbone (BatchNorm in inference mode) stay frozen, so "
    "their outputs stay bit-identical. Default: train everything.")
# The training recipe.
_LABEL_SMOOTHING = flags.DEFINE_list(
    "label_smoothing", [], "Label smoothing: a bare s for every head (e.g. "
    "0.1) or 'head=s,...'; a smoothed head trains towards 1 - s on its class "
    "and s/k on each of its k classes (a tag head: s/2 and 1 - s/2). Heads "
    "left out: none.")
_FACTOR_HEADS = flags.DEFINE_list(
    "factor_heads", [], "Heads (two or more, e.g. char,family) that are "
    "independent factors of the world, whatever their co-occurrence in the "
    "training data: during training each one's logits get the log prior of "
    "its class given the others' labels, so that it reads its own attribute "
    "also on combinations never seen in training (inference uses the plain "
    "outputs). Do not declare heads that are functions of each other. "
    "Default: none.")
_FIND_LR = flags.DEFINE_bool(
    "find_lr", False, "Instead of training, run the learning-rate range test: "
    "--find_lr_steps steps with the rate rising from 1e-6 to 1, the loss "
    "curve in <model_dir>/lr_find/lr_find.png and .csv, and the suggested "
    "--learning_rate (a tenth of the rate at the lowest smoothed loss) "
    "printed with the command to train with it.")
_FIND_LR_STEPS = flags.DEFINE_integer(
    "find_lr_steps", 100, "Steps of --find_lr.", lower_bound=10)
# Owning the model_dir.
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start over in a --model_dir that holds a finished "
    "or interrupted run, deleting its model, backups and logs first (exports "
    "are kept). Without it a finished run is not retrained.")


_TYPES = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
          "float": flags.DEFINE_float, "bool": flags.DEFINE_bool}


def _define(d) -> flags.FlagHolder:
  """The flag of config field ``d`` (settings.Declared) as config.py
  declares it: type and default from the field, its help (the settings it
  names shown as flags), choices as an enum, lo / hi as bounds."""
  s = d.setting
  text = cli_help.flag_text(s.help)
  if s.choices is not None:
    return flags.DEFINE_enum(s.flag, d.default, list(s.choices), text)
  kind = d.type.removeprefix("Optional[").removesuffix("]")
  bounds = dict(lower_bound=s.lo, upper_bound=s.hi) if s.flag_bounds else {}
  return _TYPES[kind](s.flag, d.default, text, **bounds)


# The flags defined from the declarations (those with a help text), by field.
_F = {d.name: _define(d) for d in config_lib.SETTINGS if d.setting.help}


# The flags of this CLI that set no config field; every other flag sets the
# field that declares it (config.py, settings.setting's flag).
CLI_ONLY_FLAGS = ("model_dir", "preset", "config", "overwrite", "find_lr",
                  "find_lr_steps")


def _per_head(flag: str, items: list[str], bare: bool = False):
  return config_lib.per_head_values(flag, items, bare)


def _names(items: list[str]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))


def _columns(items: list[str]) -> tuple[str, ...]:
  return tuple(c.strip() for c in items if c.strip())


def _or_none(value):
  return value or None


def _weights(value):
  return None if value is None or value.lower() == "none" else value


# How a flag's value becomes its field's, where it is not the value itself
# (list flags to tuples, '' to None, 'head=value' items parsed and checked).
_PARSE = {
    "tfds_val_split": _or_none, "data_service": _or_none,
    "holdout_combinations": _or_none, "calibration_combinations": _or_none,
    "monitor": _or_none, "weights": _weights,
    "label_columns": _columns, "tag_columns": _columns,
    "balance_combinations": _names, "reinit_heads": _names,
    "train_heads": _names, "factor_heads": _names,
    "augment": lambda v: tuple(a for a in v if a),
    "crop_scale": lambda v: config_lib.crop_range("crop_scale", v, 1.0),
    "crop_ratio": lambda v: config_lib.crop_range("crop_ratio", v, None),
    "loss_weights": lambda v: _per_head("loss_weights", v),
    "focal_loss": lambda v: _per_head("focal_loss", v, bare=True),
    "label_smoothing": lambda v: _per_head("label_smoothing", v, bare=True),
}


def _overridden(base, section: str):
  """``base`` (the config's ``section``) with the value of each flag the
  user set, the field's declared flag (config.py): a flag left at its
  default does not undo what the preset or --config chose."""
  changes = {}
  for d in config_lib.SETTINGS:
    if d.section != section or d.setting.flag is None:
      continue
    flag = flags.FLAGS[d.setting.flag]
    if not flag.using_default_value:
      parse = _PARSE.get(d.name)
      changes[d.name] = flag.value if parse is None else parse(flag.value)
  return dataclasses.replace(base, **changes)


def _base_config() -> config_lib.Config:
  """--config's Config, else --preset's (default: 'demo' when no data
  source is given, else 'default')."""
  if _CONFIG.value:
    if _PRESET.value:
      raise errors.SettingError("give `config` or `preset`, not both")
    return config_lib.load(_CONFIG.value)
  has_source = _F["manifest"].value or _F["tfrecord"].value or _F["tfds"].value
  return getattr(config_lib,
                 _PRESET.value or ("default" if has_source else "demo"))()


def config_from_flags() -> config_lib.Config:
  """The run config: a preset or --config's file, overridden by every flag
  that was set."""
  base = _base_config()
  cfg = config_lib.Config(**{section: _overridden(getattr(base, section),
                                                  section)
                             for section in ("data", "model", "train")})
  config_lib.check_feed(cfg.data)
  return cfg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger("mlc_keras").setLevel(logging.INFO)
  try:
    cfg = config_from_flags()
  except errors.MlcError as e:
    cli_help.fail(e)
  # None of these loads TensorFlow: a bad flag, a locked or finished
  # model_dir is answered in milliseconds (--help too).
  from mlc_keras.runs import folder as run_dir  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import run as train_lib  # pylint: disable=g-import-not-at-top
  # A progress bar only makes sense on a terminal: in a batch job, CI or a
  # log file (or with MLC_QUIET=1) fit prints one line per epoch holding
  # every head's numbers instead of one bar frame per epoch.
  quiet = os.environ.get("MLC_QUIET") == "1" or not sys.stdout.isatty()
  verbose = 2 if quiet else 1
  if _FIND_LR.value:
    _find_lr(cfg)
    return
  try:
    train_lib.train_and_evaluate(
        cfg, _MODEL_DIR.value, verbose=verbose, overwrite=_OVERWRITE.value,
        tf_config=os.environ.get("TF_CONFIG"),
        keras_home=os.environ.get("KERAS_HOME"))
  except run_dir.RunFinished as e:
    # The same command again is not an error; other flags are.
    if not e.same_flags:
      cli_help.fail(e)
    print(cli_help.error_line(e), file=sys.stderr)
    sys.exit(0)
  except errors.MlcError as e:
    cli_help.fail(e)
  except Exception as e:  # pylint: disable=broad-except
    _exit_on_nan(e)
    raise
  print(f"\nModel written to {_MODEL_DIR.value}/model.keras (labels.json beside "
        "it). Next:\n" + "\n".join(
            "  " + c for c in run_dir.next_commands(_MODEL_DIR.value)))


def _find_lr(cfg) -> None:
  """--find_lr: the range test, its suggestion and the command using it."""
  from mlc_keras.runs import preflight  # pylint: disable=g-import-not-at-top
  out = os.path.join(_MODEL_DIR.value, "lr_find")
  try:
    cfg = preflight.absolute_paths(cfg)
    preflight.check(cfg)
    from mlc_keras.training import lr_find  # pylint: disable=g-import-not-at-top
    result = lr_find.range_test(cfg, out, steps=_FIND_LR_STEPS.value)
  except errors.MlcError as e:
    cli_help.fail(e)
  except Exception as e:  # pylint: disable=broad-except
    _exit_on_nan(e)
    raise
  keep = [a for a in sys.argv[1:] if not a.startswith(
      ("--find_lr", "--nofind_lr", "--learning_rate"))]
  print(f"\nLearning-rate range test: {len(result.losses)} steps, lowest "
        f"smoothed loss at {result.at_minimum:.3g}; suggested learning rate "
        f"{result.suggestion:.2g}.\nCurve: {result.png_path} (and "
        f"{result.csv_path}). Train with it:\n  python -m mlc_keras.train "
        + " ".join(keep + [f"--learning_rate={result.suggestion:.2g}"]))


def _exit_on_nan(e: Exception) -> None:
  """Exits with code 3 and a hint for a NaN loss (not a bug, nor a mistake
  in what was given); returns for any other error."""
  # Loaded by training already when it can be raised.
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
  if isinstance(e, setup.NonFiniteLossError):
    # The fine-tuning phase has its own folder (training.fit.phases).
    kept = [d for d in ("backup", "backup_finetune")
            if os.path.isdir(os.path.join(_MODEL_DIR.value, d))]
    if kept:
      hint = (f"The last backup is kept in {_MODEL_DIR.value}/{kept[-1]}; "
              "lower --learning_rate and re-run the same command to resume.")
    else:
      hint = ("No backup had been written yet; lower --learning_rate and "
              "re-run the same command.")
    print(f"error: {e}\n{hint}", file=sys.stderr)
    sys.exit(3)


# --helpfull lists every flag of this module under these headings
# (cli_help), by flag name; one left out here still shows, under "other".
_HELP_GROUPS = {heading: tuple(flags.FLAGS[name] for name in names.split())
                for heading, names in {
    "run folder": "model_dir preset config overwrite backup_every_steps",
    "data": "manifest val_manifest val_fraction image_column label_columns "
            "tag_columns heads_file tfrecord val_tfrecord tfds tfds_heads "
            "tfds_train_split tfds_val_split tfds_data_dir demo_dir",
    "images and checks": "image_size cache val_cache_max_mb validate_images "
                         "image_check image_root max_image_pixels quarantine "
                         "deterministic data_service",
    "augmentation": "augment crop_scale crop_ratio randaugment_ops "
                    "randaugment_magnitude erasing_prob mixup_alpha "
                    "cutmix_alpha",
    "combinations": "holdout_combinations calibration_combinations "
                    "balance_combinations factor_heads",
    "model": "backbone weights dropout bn_momentum head_projection "
             "head_pooling",
    "training": "epochs batch_size steps_per_epoch learning_rate find_lr "
                "find_lr_steps optimizer seed class_weight loss_weights "
                "focal_loss label_smoothing clip_global_norm ema_decay top_k",
    "fine-tuning and growing a model": "freeze_epochs unfreeze_layers "
                                       "finetune_lr_scale init_from "
                                       "reinit_heads train_heads "
                                       "train_backbone",
    "model selection": "monitor early_stopping_patience",
    "devices": "precision xla strategy",
}.items()}


# --help lists only these, the flags a first run on one's own data needs
# (settings.GROUPS' headings), and counts the rest.
_CORE_HELP = {heading: tuple(flags.FLAGS[name] for name in names.split())
              for heading, names in {
    "data": "manifest val_manifest label_columns heads_file tfrecord tfds "
            "image_size",
    "model": "backbone weights",
    "training": "epochs batch_size learning_rate",
    "recipe": "preset augment label_smoothing",
    "run folder": "model_dir config overwrite",
}.items()}


def run():
  """The mlc-train console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS, core=_CORE_HELP)


if __name__ == "__main__":
  run()
