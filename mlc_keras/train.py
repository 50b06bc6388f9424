r"""Trains a multi-head image classifier.

With no flags: generates the embedded demo set and trains on it (about ten
minutes on two CPU cores), leaving a model in mlc_runs/demo.

  python -m mlc_keras.train
  python -m mlc_keras.train --manifest=data/train.csv --model_dir=runs/logos \
      --image_size=224 --weights=imagenet --epochs=20
  python -m mlc_keras.train --flagfile=run.flags
  python -m mlc_keras.train --config=runs/logos --model_dir=runs/logos2 --epochs=30
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
_m = config_lib.ModelConfig()
_t = config_lib.TrainConfig()

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
# Data.
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "Training CSV: an image path column and one column per "
    "head; a blank cell is a missing label.")
_VAL_MANIFEST = flags.DEFINE_string("val_manifest", None, "Validation CSV.")
_TFRECORD = flags.DEFINE_string(
    "tfrecord", None, "Training TFRecord file pattern (see mlc_keras.tfrecord).")
_VAL_TFRECORD = flags.DEFINE_string("val_tfrecord", None,
                                    "Validation TFRecord file pattern.")
_TFDS = flags.DEFINE_string("tfds", None, "A TFDS dataset name, e.g. cifar10.")
_TFDS_HEADS = flags.DEFINE_string(
    "tfds_heads", _d.tfds_heads,
    "TFDS ClassLabel features to use as heads: 'feature[:head],...'.")
_TFDS_TRAIN = flags.DEFINE_string("tfds_train_split", _d.tfds_train_split,
                                  "TFDS training split.")
_TFDS_VAL = flags.DEFINE_string("tfds_val_split", _d.tfds_val_split,
                                "TFDS validation split ('' for none).")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_HEADS_FILE = flags.DEFINE_string(
    "heads_file", None, "labels.json-style heads file (names, classes, loss "
    "weights). Default: inferred from the manifest columns.")
_IMAGE_COLUMN = flags.DEFINE_string("image_column", _d.image_column,
                                    "Manifest column holding image paths.")
_LABEL_COLUMNS = flags.DEFINE_list(
    "label_columns", [], "Manifest columns to train as heads, e.g. "
    "logo,medium (default: every column but the image column; other columns, "
    "such as notes, are ignored).")
# --- tag heads ---
_TAG_COLUMNS = flags.DEFINE_list(
    "tag_columns", [], "Manifest columns to train as tag heads (independent "
    "sigmoids over the column's tags): a cell lists tags joined by '|', "
    "'(none)' when none apply, blank when unknown. Without --heads_file only.")
_VAL_FRACTION = flags.DEFINE_float(
    "val_fraction", _d.val_fraction,
    "Share of --manifest held out for validation when no --val_manifest.")
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
# The recipe's augmentations.
_RA_OPS = flags.DEFINE_integer(
    "randaugment_ops", _d.randaugment_ops, "--augment=randaugment: ops drawn "
    "per image.", lower_bound=1)
_RA_MAGNITUDE = flags.DEFINE_float(
    "randaugment_magnitude", _d.randaugment_magnitude, "--augment="
    "randaugment: strength of every op, 0-1 (1: rotate 30 degrees, shear "
    "0.3, translate 30%, brightness 40%, ...).", lower_bound=0, upper_bound=1)
_ERASING_PROB = flags.DEFINE_float(
    "erasing_prob", _d.erasing_prob, "--augment=erasing: share of images "
    "that get one rectangle of noise (2-33% of the area).", lower_bound=0,
    upper_bound=1)
_MIXUP = flags.DEFINE_float(
    "mixup_alpha", _d.mixup_alpha, "MixUp: blend each training image with "
    "another of its batch by lam ~ Beta(alpha, alpha) (e.g. 0.2), targets "
    "mixed per head; a head labelled on only one of the two gets weight 0 "
    "for that sample (README 'The training recipe'). 0: off.", lower_bound=0)
_CUTMIX = flags.DEFINE_float(
    "cutmix_alpha", _d.cutmix_alpha, "CutMix: paste a box of another image "
    "of the batch (area share 1 - lam, lam ~ Beta(alpha, alpha), e.g. 1.0), "
    "targets mixed by area as MixUp's. With both on, each batch uses one of "
    "them. 0: off.", lower_bound=0)
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "Deterministic data order and ops (slower).")
_VALIDATE = flags.DEFINE_bool(
    "validate_images", True, "Check every manifest image once before "
    "training (see --image_check); cached in <model_dir>/image_check.csv.")
_IMAGE_CHECK = flags.DEFINE_enum(
    "image_check", _d.image_check, ["header", "decode"],
    "header: format by content, size from the header, pixel cap, end marker "
    "(~0.1 ms per file, in parallel); decode: also decode every file once.")
_VAL_CACHE_MAX_MB = flags.DEFINE_integer(
    "val_cache_max_mb", _d.val_cache_max_mb, "Validation pixels up to this "
    "size are cached in memory; a larger validation set is decoded again "
    "each epoch, so memory does not grow with it.", lower_bound=0)
_IMAGE_ROOT = flags.DEFINE_string(
    "image_root", None, "If set, manifest image paths must resolve inside "
    "this folder (a row pointing elsewhere, e.g. ../../etc/passwd, is an "
    "error).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", _d.max_image_pixels, "Largest width*height accepted, "
    "read from the image header before decoding (0: no limit).")
_QUARANTINE = flags.DEFINE_bool(
    "quarantine", False, "Train without unusable manifest rows (bad, huge, "
    "duplicated or out-of-root images, and images that fail to read or "
    "decode mid-training: set aside, then training resumes from its last "
    "backup), listing them in <model_dir>/quarantine.csv, instead of "
    "stopping with an error.")
_DEMO_DIR = flags.DEFINE_string("demo_dir", _d.demo_dir,
                                "Where the demo set is generated.")
# Model.
_BACKBONE = flags.DEFINE_string(
    "backbone", _m.backbone, "A keras.applications backbone: "
    + ", ".join(config_lib.BACKBONES) + ".")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Backbone weights: none, imagenet, or a local no-top "
    "weights file.")
_DROPOUT = flags.DEFINE_float("dropout", _m.dropout, "Dropout on features.")
_BN_MOMENTUM = flags.DEFINE_float(
    "bn_momentum", _m.bn_momentum, "BatchNorm momentum of the backbone (lower "
    "it for short runs; Keras' default is 0.99).")
_HEAD_PROJECTION = flags.DEFINE_integer(
    "head_projection", _m.head_projection, "Width of a private Dense+relu "
    "projection of the pooled features per head (0: heads read the features "
    "directly). Measured for unseen attribute combinations in BUILD_NOTES.md.")
_HEAD_POOLING = flags.DEFINE_enum(
    "head_pooling", _m.head_pooling, list(config_lib.HEAD_POOLINGS),
    "How each head pools the backbone's last feature map: avg (one global "
    "average shared by every head) or attention (each head its own spatial "
    "softmax from a 1x1 conv, so a head can read its own attribute's region "
    "instead of the others' context; for attributes that combine in ways "
    "training did not show).")
# Training.
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs.")
_STEPS = flags.DEFINE_integer("steps_per_epoch", None,
                              "Steps per epoch (default: one pass).")
_LR = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", _t.optimizer, ["adamw", "sgd"],
                               "Optimizer.")
_SEED = flags.DEFINE_integer("seed", _t.seed, "Random seed.")
_PRECISION = flags.DEFINE_enum(
    "precision", _t.precision, ["float32", "mixed_float16", "mixed_bfloat16"],
    "Mixed precision policy (mixed_float16 on GPUs).")
_XLA = flags.DEFINE_bool(
    "xla", _t.jit_compile, "Compile steps with XLA. Default: Keras' own "
    "choice ('auto'): on for JAX, on for TensorFlow with a GPU (not under "
    "--strategy=mirrored/multi_worker), off for TensorFlow on CPUs alone.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", _t.strategy, ["default", "mirrored", "multi_worker"],
    "default (fit, one device), mirrored (every local device) or "
    "multi_worker (the cluster in TF_CONFIG; TensorFlow only). On "
    "TensorFlow the last two are tf.distribute with a custom step that "
    "resumes from model_dir/checkpoints; on JAX, mirrored is fit over "
    "keras.distribution.DataParallel.")
_CLASS_WEIGHT = flags.DEFINE_enum(
    "class_weight", _t.class_weight, ["none", "balanced"],
    "Per-head class weights folded into sample weights.")
_LOSS_WEIGHTS = flags.DEFINE_list(
    "loss_weights", [], "Per-head loss weights 'head=w,...' (override the "
    "heads file).")
_FOCAL_LOSS = flags.DEFINE_list(
    "focal_loss", [], "Focal loss for some heads: 'head=gamma,...' or a bare "
    "gamma for every head (e.g. 2); other heads keep cross-entropy. Overrides "
    "the heads file.")
_TOP_K = flags.DEFINE_integer("top_k", _t.top_k, "k of the top-k metric.")
_FREEZE_EPOCHS = flags.DEFINE_integer(
    "freeze_epochs", _t.freeze_epochs, "Fine-tuning schedule: train only the "
    "heads on a frozen backbone (BatchNorm in inference mode) for this many "
    "epochs, then unfreeze it at a lower learning rate. Use with "
    "--weights=imagenet. 0: train everything from the start.", lower_bound=0)
_UNFREEZE_LAYERS = flags.DEFINE_integer(
    "unfreeze_layers", _t.unfreeze_layers, "After --freeze_epochs, unfreeze "
    "only the backbone's last N layers (0: all). BatchNorm stays frozen.",
    lower_bound=0)
_FINETUNE_LR_SCALE = flags.DEFINE_float(
    "finetune_lr_scale", _t.finetune_lr_scale, "Learning rate multiplier "
    "after --freeze_epochs.", lower_bound=0)
# Model selection.
_MONITOR = flags.DEFINE_string(
    "monitor", None, "Which epoch best.keras holds (and --early_stopping_"
    "patience watches): a quantity of the epoch logs, e.g. val_loss, "
    "val_shape_balanced_acc. Default: val_mean_balanced_accuracy, the mean "
    "over heads of the balanced accuracy on validation data "
    "(mean_balanced_accuracy on training data when there is none).")
_PATIENCE = flags.DEFINE_integer(
    "early_stopping_patience", _t.early_stopping_patience, "Stop training "
    "when --monitor has not improved for this many epochs (0: never; counted "
    "across the fine-tuning phases and a resumed run).", lower_bound=0)
# Growing a trained model.
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "Start from a trained run folder (its model.keras) or "
    ".keras file: the backbone and every head whose name and classes match "
    "are copied, a head that gained classes keeps the weights of the ones it "
    "had, other heads start fresh. Prints which heads are new, copied or "
    "changed.")
_REINIT_HEADS = flags.DEFINE_list(
    "reinit_heads", [], "With --init_from: heads whose class list lost or "
    "renamed a class, to train from scratch (otherwise such a head is an "
    "error).")
_TRAIN_HEADS = flags.DEFINE_list(
    "train_heads", [], "Train only these heads (e.g. a new one): every other "
    "head and the backbone (BatchNorm in inference mode) stay frozen, so "
    "their outputs stay bit-identical. Default: train everything.")
_TRAIN_BACKBONE = flags.DEFINE_bool(
    "train_backbone", False, "With --train_heads: train the backbone too "
    "(the other heads' outputs then change).")
# The training recipe.
_LABEL_SMOOTHING = flags.DEFINE_list(
    "label_smoothing", [], "Label smoothing: a bare s for every head (e.g. "
    "0.1) or 'head=s,...'; a smoothed head trains towards 1 - s on its class "
    "and s/k on each of its k classes (a tag head: s/2 and 1 - s/2). Heads "
    "left out: none.")
_CLIP_GLOBAL_NORM = flags.DEFINE_float(
    "clip_global_norm", None, "Rescale each step's gradients to at most this "
    "global L2 norm (e.g. 1.0). Default: no clipping.")
_EMA_DECAY = flags.DEFINE_float(
    "ema_decay", None, "Keep an exponential moving average of the weights "
    "with this decay per step (e.g. 0.999; 0.99 for runs of a few hundred "
    "steps): validation, best.keras, model.keras and every export use the "
    "averaged weights. Default: off.")
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
_BACKUP_STEPS = flags.DEFINE_integer(
    "backup_every_steps", None, "Back up every N steps (default: each epoch).")
# Owning the model_dir.
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start over in a --model_dir that holds a finished "
    "or interrupted run, deleting its model, backups and logs first (exports "
    "are kept). Without it a finished run is not retrained.")


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
  has_source = _MANIFEST.value or _TFRECORD.value or _TFDS.value
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


# --help lists every flag of this module under these headings (cli_help);
# one left out here still shows, under "other".
_HELP_GROUPS = {
    "run folder": (_MODEL_DIR, _PRESET, _CONFIG, _OVERWRITE,
                   _BACKUP_STEPS),
    "data": (_MANIFEST, _VAL_MANIFEST, _VAL_FRACTION, _IMAGE_COLUMN,
             _LABEL_COLUMNS, _TAG_COLUMNS, _HEADS_FILE, _TFRECORD,
             _VAL_TFRECORD, _TFDS, _TFDS_HEADS, _TFDS_TRAIN, _TFDS_VAL,
             _TFDS_DATA_DIR, _DEMO_DIR),
    "images and checks": (_IMAGE_SIZE, _CACHE, _VAL_CACHE_MAX_MB, _VALIDATE,
                          _IMAGE_CHECK, _IMAGE_ROOT, _MAX_PIXELS, _QUARANTINE,
                          _DETERMINISTIC, _DATA_SERVICE),
    "augmentation": (_AUGMENT, _CROP_SCALE, _CROP_RATIO, _RA_OPS,
                     _RA_MAGNITUDE, _ERASING_PROB, _MIXUP, _CUTMIX),
    "combinations": (_HOLDOUT, _CALIBRATION_COMBOS, _BALANCE, _FACTOR_HEADS),
    "model": (_BACKBONE, _WEIGHTS, _DROPOUT, _BN_MOMENTUM, _HEAD_PROJECTION,
              _HEAD_POOLING),
    "training": (_EPOCHS, _BATCH_SIZE, _STEPS, _LR, _FIND_LR, _FIND_LR_STEPS,
                 _OPTIMIZER, _SEED,
                 _CLASS_WEIGHT, _LOSS_WEIGHTS, _FOCAL_LOSS, _LABEL_SMOOTHING,
                 _CLIP_GLOBAL_NORM, _EMA_DECAY, _TOP_K),
    "fine-tuning and growing a model": (
        _FREEZE_EPOCHS, _UNFREEZE_LAYERS, _FINETUNE_LR_SCALE, _INIT_FROM,
        _REINIT_HEADS, _TRAIN_HEADS, _TRAIN_BACKBONE),
    "model selection": (_MONITOR, _PATIENCE),
    "devices": (_PRECISION, _XLA, _STRATEGY),
}


def run():
  """The mlc-train console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
