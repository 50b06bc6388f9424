"""Run configuration as frozen dataclasses, with a default and a tiny variant.

The config used for a run is written to ``<model_dir>/config.json`` so that a
run can be read back (load) and resumed or repeated with the same settings.
Each field is declared once, with setting() (core/settings.py): its flag,
group, range, path-ness and whether it may change on resume sit beside its
default, and the flags' table, the range checks and the resume rules are
read from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from mlc_keras.core import errors
from mlc_keras.core import settings
from mlc_keras.core.settings import setting

# The names a config may hold, here so that train checks them before
# TensorFlow loads; modeling.model and data.pipeline implement them (and
# tests/preflight_test.py keeps the lists equal).
BACKBONES = ("ResNet50V2", "ResNet101V2", "ResNet152V2", "MobileNetV2",
             "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2",
             "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M",
             "EfficientNetV2L", "ConvNeXtTiny", "ConvNeXtSmall",
             "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge")
AUGMENTATIONS = ("flip", "crop", "resized_crop", "colour", "randaugment",
                 "erasing")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adamw", "sgd")
HEAD_POOLINGS = ("avg", "attention")
IMAGE_CHECKS = ("header", "decode")
CLASS_WEIGHTS = ("none", "balanced")
# Preset names: functions of this module returning a Config.
PRESETS = ("default", "demo", "tiny", "scratch_small", "finetune_imagenet")
# What a run folder names its config (runs/folder.py writes and reads it).
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images and labels come from and how they are fed.

  Exactly one source is used: ``manifest`` (CSV), ``tfrecord`` (file pattern)
  or ``tfds`` (a TFDS name); with none given the embedded demo set is
  generated into ``demo_dir``.
  """

  manifest: Optional[str] = setting(
      None, "data", path=True,
      help="Training CSV: an image path column and one column per head; a "
      "blank cell is a missing label.")
  val_manifest: Optional[str] = setting(
      None, "data", path=True,
      help="Validation CSV.")
  tfrecord: Optional[str] = setting(
      None, "data", path=True,
      help="Training TFRecord file pattern (see mlc_keras.tfrecord).")
  val_tfrecord: Optional[str] = setting(
      None, "data", path=True,
      help="Validation TFRecord file pattern.")
  tfds: Optional[str] = setting(
      None, "data",
      help="A TFDS dataset name, e.g. cifar10.")
  tfds_train_split: str = setting(
      "train", "data",
      help="TFDS training split.")
  tfds_val_split: Optional[str] = setting("test", "data")
  tfds_data_dir: Optional[str] = setting(
      None, "data", path=True,
      help="TFDS data_dir.")
  # "feature:head,feature:head"; a feature maps to a head of the same name
  # when ":head" is left out.
  tfds_heads: str = setting(
      "label", "data",
      help="TFDS ClassLabel features to use as heads: 'feature[:head],...'.")
  heads_file: Optional[str] = setting(
      None, "data", path=True,
      help="labels.json-style heads file (names, classes, loss weights). "
      "Default: inferred from the manifest columns.")
  image_column: str = setting(
      "image", "data",
      help="Manifest column holding image paths.")
  # Manifest columns trained as heads (empty: every column but the image
  # column); ignored when heads_file is given (its heads are the columns).
  label_columns: tuple[str, ...] = setting((), "data")
  # Manifest columns read as tag heads ("a|b" cells, "(none)" for no tag);
  # without a heads_file only (a heads file says each head's kind).
  tag_columns: tuple[str, ...] = setting((), "data")
  # Share of a single manifest held out for validation when no val_manifest
  # is given (split by a seeded hash of the path, so it is stable).
  val_fraction: float = setting(
      0.1, "data", lo=0, hi=1,
      help="Share of `manifest` held out for validation when no "
      "`val_manifest`.")
  image_size: int = setting(224, "data", lo=32, hi=4096, hi_open=False,
                            integer=True)
  cache: bool = setting(False, "data", resumable=True)
  shuffle_buffer: int = setting(10_000, "data", flag=None, lo=1, integer=True)
  # None by default: on real multi-attribute sets trained from scratch at
  # 6 epochs, flip + pad-and-crop cost 16 points of one head's accuracy
  # against a plain Keras script with none (BUILD_NOTES, "Defaults that
  # win"), and flip changes the label of text, digits and left/right heads.
  augment: tuple[str, ...] = setting((), "recipe")
  deterministic: bool = setting(
      False, "data", resumable=True,
      help="Deterministic data order and ops (slower).")
  validate_images: bool = setting(
      True, "data", resumable=True,
      help="Check every manifest image once before training (see "
      "`image_check`); cached in <model_dir>/image_check.csv.")
  # How deep that check goes: "header" (format by content, size from the
  # header, pixel cap, end marker; ~0.1 ms per file) or "decode" (every file
  # decoded once). Results are cached in <model_dir>/image_check.csv.
  image_check: str = setting(
      "header", "data", choices=IMAGE_CHECKS,
      help="header: format by content, size from the header, "
      "pixel cap, end marker (~0.1 ms per file, in parallel); decode: "
      "also decode every file once.")
  # Validation pixels are cached in memory up to this size; above it they
  # are decoded again every epoch (streamed), so memory stays flat.
  val_cache_max_mb: int = setting(
      1024, "data", lo=0, integer=True, flag_bounds=True,
      help="Validation pixels up to this size are cached in memory; a larger "
      "validation set is decoded again each epoch, so memory does not "
      "grow with it.")
  # Image paths must resolve inside this folder (None: anywhere).
  image_root: Optional[str] = setting(
      None, "data", path=True, resumable=True,
      help="If set, manifest image paths must resolve inside this folder (a "
      "row pointing elsewhere, e.g. ../../etc/passwd, is an error).")
  # Header-checked before decoding; Pillow's default MAX_IMAGE_PIXELS.
  max_image_pixels: int = setting(
      89_478_485, "data", lo=0, integer=True, resumable=True,
      help="Largest width*height accepted, read from the image header before "
      "decoding (0: no limit).")
  # Unusable rows go to <model_dir>/quarantine.csv instead of stopping the run.
  quarantine: bool = setting(
      False, "data", resumable=True,
      help="Train without unusable manifest rows (bad, huge, duplicated or "
      "out-of-root images, and images that fail to read or decode "
      "mid-training: set aside, then training resumes from its last "
      "backup), listing them in <model_dir>/quarantine.csv, instead of "
      "stopping with an error.")
  # --augment=resized_crop: share of the area and aspect (w / h) ranges of
  # the random window (Inception / ResNet defaults).
  crop_scale: tuple[float, float] = setting((0.08, 1.0), "recipe")
  crop_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "recipe")
  # "grpc://host:port" of a tf.data service dispatcher that decodes the
  # training input on its workers (None: decode in this process).
  data_service: Optional[str] = setting(None, "data", resumable=True)
  # --- the recipe's augmentations (data/augment.py) ---
  # --augment=randaugment: ops per image and their magnitude (0-1).
  randaugment_ops: int = setting(
      2, "recipe", lo=1, integer=True, flag_bounds=True,
      help="`augment`=randaugment: ops drawn per image.")
  randaugment_magnitude: float = setting(
      0.5, "recipe", lo=0, hi=1, hi_open=False, flag_bounds=True,
      help="`augment`=randaugment: strength of every op, 0-1 (1: rotate 30 "
      "degrees, shear 0.3, translate 30%, brightness 40%, ...).")
  # --augment=erasing: share of images given one noise rectangle.
  erasing_prob: float = setting(
      0.25, "recipe", lo=0, hi=1, hi_open=False, flag_bounds=True,
      help="`augment`=erasing: share of images that get one rectangle of noise"
      " (2-33% of the area).")
  # MixUp / CutMix Beta(alpha, alpha) mixing of batch pairs (0: off; both
  # on: each batch one of them).
  mixup_alpha: float = setting(
      0.0, "recipe", lo=0, flag_bounds=True,
      help="MixUp: blend each training image with another of its batch by lam "
      "~ Beta(alpha, alpha) (e.g. 0.2), targets mixed per head; a head "
      "labelled on only one of the two gets weight 0 for that sample "
      "(README 'The training recipe'). 0: off.")
  cutmix_alpha: float = setting(
      0.0, "recipe", lo=0, flag_bounds=True,
      help="CutMix: paste a box of another image of the batch (area share 1 - "
      "lam, lam ~ Beta(alpha, alpha), e.g. 1.0), targets mixed by area as"
      " MixUp's. With both on, each batch uses one of them. 0: off.")
  # Combinations of head values no training or validation image may carry
  # ("head=value+head=value;..." or a file, data/combinations.py), and
  # others left out of training only (evaluate --stacking fits on them).
  holdout_combinations: Optional[str] = setting(None, "data", path="file")
  calibration_combinations: Optional[str] = setting(None, "data", path="file")
  # Heads whose value combinations are oversampled to about equal counts in
  # training (combinations.balance); () for none.
  balance_combinations: tuple[str, ...] = setting((), "data")
  demo_dir: str = setting(
      "mlc_runs/demo_data", "data", path=True,
      help="Where the demo set is generated.")
  demo_train_size: int = setting(2000, "data", flag=None, lo=1, integer=True)
  demo_val_size: int = setting(400, "data", flag=None, lo=1, integer=True)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  backbone: str = setting(
      "ResNet50V2", "model",
      help="A keras.applications backbone: " + ", ".join(BACKBONES) + ".")
  # None (random init), "imagenet" (downloaded by Keras) or a local file path.
  weights: Optional[str] = setting(None, "model", path=True)
  dropout: float = setting(
      0.0, "model", lo=0, hi=1,
      help="Dropout on features.")
  # Keras' default 0.99 leaves moving statistics far behind the weights in a
  # short run (inference accuracy near chance); 0.9 catches up within ~100
  # steps. See BUILD_NOTES.md.
  bn_momentum: float = setting(
      0.9, "model", lo=0, hi=1, optional=True,
      help="BatchNorm momentum of the backbone (lower it for short runs; "
      "Keras' default is 0.99).")
  # > 0: a private Dense(n, relu) between the pooled features and each head
  # (modeling/model.build_model); 0: every head reads the features directly.
  head_projection: int = setting(
      0, "model", lo=0, integer=True,
      help="Width of a private Dense+relu projection of the pooled features "
      "per head (0: heads read the features directly). Measured for "
      "unseen attribute combinations in BUILD_NOTES.md.")
  # "avg": every head reads one global average pool of the backbone's last
  # map; "attention": each head pools that map with its own spatial softmax
  # (a 1x1 conv per head), so it can keep to its own attribute's evidence.
  head_pooling: str = setting(
      "avg", "model", choices=HEAD_POOLINGS,
      help="How each head pools the backbone's last feature "
      "map: avg (one global average shared by every head) or attention "
      "(each head its own spatial softmax from a 1x1 conv, so a head can "
      "read its own attribute's region instead of the others' context; "
      "for attributes that combine in ways training did not show).")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = setting(32, "training", lo=1, integer=True)
  epochs: int = setting(10, "training", lo=1, integer=True, resumable=True)
  # None: one pass over the training data per epoch.
  steps_per_epoch: Optional[int] = setting(
      None, "training", lo=1, integer=True,
      help="Steps per epoch (default: one pass).")
  learning_rate: float = setting(1e-3, "training", lo=0, lo_open=True,
                                 resumable=True)
  weight_decay: float = setting(1e-4, "training", flag=None, lo=0)
  optimizer: str = setting(
      "adamw", "training", choices=OPTIMIZERS,
      help="Optimizer.")
  seed: int = setting(
      0, "training",
      help="Random seed.")
  # "float32", "mixed_float16" (GPU) or "mixed_bfloat16" (TPU, recent CPUs).
  precision: str = setting(
      "float32", "training", choices=PRECISIONS,
      help="Mixed precision policy "
      "(mixed_float16 on GPUs).")
  # XLA for the compiled steps. None: Keras' own default ("auto"): on for
  # JAX (its steps are jitted), on for TensorFlow where it sees a GPU and no
  # tf.distribute strategy, off for TensorFlow on CPUs alone. False on JAX
  # would run every step op by op.
  jit_compile: Optional[bool] = setting(
      None, "training", flag="xla", resumable=True,
      help="Compile steps with XLA. Default: Keras' own choice ('auto'): on "
      "for JAX, on for TensorFlow with a GPU (not under "
      "`strategy`=mirrored/multi_worker), off for TensorFlow on CPUs "
      "alone.")
  # "default" (one device, fit), "mirrored" (all local devices) or
  # "multi_worker" (TF_CONFIG, TensorFlow only). On TensorFlow the last two
  # run distributed.py's custom step; on JAX, mirrored is fit over
  # keras.distribution.DataParallel (setup.data_parallel).
  strategy: str = setting(
      "default", "training", choices=STRATEGIES,
      help="default (fit, one device), "
      "mirrored (every local device) or multi_worker (the cluster in "
      "TF_CONFIG; TensorFlow only). On TensorFlow the last two are "
      "tf.distribute with a custom step that resumes from "
      "model_dir/checkpoints; on JAX, mirrored is fit over "
      "keras.distribution.DataParallel.")
  # "none" or "balanced": per-head class weights folded into sample_weight.
  class_weight: str = setting(
      "none", "training", choices=CLASS_WEIGHTS,
      help="Per-head class weights folded into sample "
      "weights.")
  # Loss weights "head=w,head=w" override the heads file.
  loss_weights: tuple[tuple[str, float], ...] = setting((), "training")
  # Focal-loss gammas "head=g" ("*" = every head) override the heads file.
  focal_loss: tuple[tuple[str, float], ...] = setting((), "training")
  top_k: int = setting(
      5, "training", lo=1, integer=True, resumable=True,
      help="k of the top-k metric.")
  backup_every_steps: Optional[int] = setting(
      None, "run folder", lo=1, integer=True, resumable=True,
      help="Back up every N steps (default: each epoch).")
  # Fine-tuning schedule: the first freeze_epochs train the heads on a frozen
  # backbone (BatchNorm in inference mode); the rest unfreeze the backbone
  # (all of it, or its last unfreeze_layers layers; BatchNorm stays frozen)
  # at learning_rate * finetune_lr_scale. 0 trains everything from the start.
  freeze_epochs: int = setting(
      0, "training", lo=0, integer=True, flag_bounds=True,
      help="Fine-tuning schedule: train only the heads on a frozen backbone "
      "(BatchNorm in inference mode) for this many epochs, then unfreeze "
      "it at a lower learning rate. Use with `weights`=imagenet. 0: train"
      " everything from the start.")
  unfreeze_layers: int = setting(
      0, "training", lo=0, integer=True, flag_bounds=True,
      help="After `freeze_epochs`, unfreeze only the backbone's last N layers "
      "(0: all). BatchNorm stays frozen.")
  finetune_lr_scale: float = setting(
      0.1, "training", lo=0, lo_open=True, flag_bounds=True,
      help="Learning rate multiplier after `freeze_epochs`.")
  # Which epoch best.keras holds (and early stopping watches): an epoch-log
  # quantity such as "val_loss"; None: the mean balanced accuracy over heads,
  # on validation data when there is some (training/selection.py).
  monitor: Optional[str] = setting(None, "training")
  # Stop when the monitor has not improved for this many epochs (0: never).
  early_stopping_patience: int = setting(
      0, "training", lo=0, integer=True, flag_bounds=True,
      help="Stop training when `monitor` has not improved for this many epochs"
      " (0: never; counted across the fine-tuning phases and a resumed "
      "run).")
  # Growing a trained model (modeling/grow.py): start from this run folder or
  # .keras file (backbone and matching heads copied), re-initialise the
  # listed heads whose classes changed, and train only train_heads (empty:
  # every head), the backbone frozen unless train_backbone.
  init_from: Optional[str] = setting(
      None, "training", path=True,
      help="Start from a trained run folder (its model.keras) or .keras file: "
      "the backbone and every head whose name and classes match are "
      "copied, a head that gained classes keeps the weights of the ones "
      "it had, other heads start fresh. Prints which heads are new, "
      "copied or changed.")
  reinit_heads: tuple[str, ...] = setting((), "training")
  train_heads: tuple[str, ...] = setting((), "training")
  train_backbone: bool = setting(
      False, "training",
      help="With `train_heads`: train the backbone too (the other heads' "
      "outputs then change).")
  # --- the training recipe ---
  # Label smoothing "head=s" ("*" = every head; none: 0).
  label_smoothing: tuple[tuple[str, float], ...] = setting((), "recipe")
  # Gradients rescaled to at most this global L2 norm (None: not clipped).
  clip_global_norm: Optional[float] = setting(
      None, "recipe", lo=0, lo_open=True,
      help="Rescale each step's gradients to at most this global L2 norm (e.g."
      " 1.0). Default: no clipping.")
  # Weight EMA decay per step (None: no EMA); the averaged weights are the
  # ones validated, kept in best.keras / model.keras and exported.
  ema_decay: Optional[float] = setting(
      None, "recipe",
      help="Keep an exponential moving average of the weights with this decay "
      "per step (e.g. 0.999; 0.99 for runs of a few hundred steps): "
      "validation, best.keras, model.keras and every export use the "
      "averaged weights. Default: off.")
  # Heads declared independent factors (modeling/factors.py): during
  # training each one's logits get the log prior of its class given the
  # others' labels, so it does not learn their co-occurrence. () for none.
  factor_heads: tuple[str, ...] = setting((), "recipe")


@dataclasses.dataclass(frozen=True)
class Config:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d, source: str = "<dict>") -> "Config":
    """The Config of a dict as to_dict (or a config.json) holds it: lists
    back to tuples, a section or field left out takes its default (a
    config.json written before the field existed). Raises
    errors.SettingError naming ``source`` and every key that is not a
    field."""
    sections = {f.name: f.default for f in dataclasses.fields(cls)}
    if not isinstance(d, dict):
      raise errors.SettingError(
          f"{source}: a config is a JSON object of "
          f"{', '.join(sections)} objects, got {type(d).__name__}")
    unknown = [k for k in d if k not in sections]
    built = {}
    for section, default in sections.items():
      values = d.get(section, {})
      if not isinstance(values, dict):
        raise errors.SettingError(
            f"{source}: config key {section!r} must be an object of "
            f"{type(default).__name__} fields, got {values!r}")
      names = {f.name for f in dataclasses.fields(default)}
      unknown += [f"{section}.{k}" for k in values if k not in names]
      built[section] = type(default)(**{
          k: _from_json(v) for k, v in values.items() if k in names})
    if unknown:
      raise errors.SettingError(
          f"{source}: unknown config key{'s' if len(unknown) > 1 else ''} "
          f"{', '.join(map(repr, unknown))} (no such field; a typo, or a "
          "config.json of another version?)")
    return cls(**built)



# Every field's declaration (settings.declared), in order; a field declared
# without setting() fails here, at import.
SETTINGS = settings.declared(Config)

def _from_json(value):
  """JSON has no tuples: a list (of lists) is a tuple (of tuples)."""
  if isinstance(value, list):
    return tuple(_from_json(v) for v in value)
  return value


def load(path: str) -> Config:
  """The Config in a config.json (``path``, or a run folder holding one),
  as a run wrote it. Raises errors.SettingError naming the file when it
  cannot be read or holds a key that is not a config field."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except OSError as e:
    raise errors.SettingError(
        f"{path}: cannot read the config ({e.strerror or e})") from None
  except ValueError as e:
    raise errors.SettingError(f"{path}: not a JSON config ({e})") from None
  return Config.from_dict(d, source=path)


def default() -> Config:
  return Config()


def demo() -> Config:
  """What ``python -m mlc_keras.train`` runs with no flags: the embedded demo
  set at 48x48, about ten minutes on two CPU cores. Three epochs leave the
  shape head at 0.75 validation accuracy, five at 0.92 (measured, see
  BUILD_NOTES.md)."""
  return Config(
      data=DataConfig(image_size=48, demo_train_size=1600, demo_val_size=400,
                      cache=True, augment=("crop",)),
      train=TrainConfig(batch_size=32, epochs=5, learning_rate=2e-3),
  )


def tiny() -> Config:
  """Seconds-long settings for tests and smoke runs."""
  return Config(
      data=DataConfig(image_size=32, demo_train_size=64, demo_val_size=32,
                      shuffle_buffer=64, augment=("flip", "crop")),
      train=TrainConfig(batch_size=8, epochs=1, steps_per_epoch=2, top_k=2),
  )


def scratch_small() -> Config:
  """A from-scratch recipe for a small data set (thousands of images, no
  pretrained weights): strong augmentation (flip, a random-resized crop
  that keeps at least a third of the image, colour jitter), dropout 0.2 on
  the features, five times the default weight decay, BatchNorm momentum
  0.9 so inference statistics keep up in a short run, and 30 epochs at
  2e-3 (a random backbone needs the larger step), label smoothing 0.1 on
  every head (timm's default). ``resized_crop`` reads the full image each
  epoch, so the decoded-pixel cache stays off. No weight EMA: Keras starts
  the average at the initial weights, so a decay that suits one data size
  leaves a smaller run's average near its random start."""
  return Config(
      data=DataConfig(augment=("flip", "resized_crop", "colour"),
                      crop_scale=(0.35, 1.0), cache=False),
      model=ModelConfig(weights=None, dropout=0.2, bn_momentum=0.9),
      train=TrainConfig(epochs=30, learning_rate=2e-3, weight_decay=5e-4,
                        label_smoothing=(("*", 0.1),)),
  )


def finetune_imagenet() -> Config:
  """Fine-tuning from ImageNet weights: 224 px (the weights' own size),
  two epochs training only the heads on the frozen backbone (BatchNorm in
  inference mode) at 1e-3, then the whole backbone unfrozen at a tenth of
  that with BatchNorm kept frozen (its statistics are ImageNet's, which
  small batches would spoil); mild augmentation (flip and a resized crop
  over at least a quarter of the image), dropout 0.1, label smoothing 0.1,
  12 epochs."""
  return Config(
      data=DataConfig(image_size=224, augment=("flip", "resized_crop"),
                      crop_scale=(0.25, 1.0), cache=False),
      model=ModelConfig(weights="imagenet", dropout=0.1),
      train=TrainConfig(epochs=12, learning_rate=1e-3, freeze_epochs=2,
                        unfreeze_layers=0, finetune_lr_scale=0.1,
                        label_smoothing=(("*", 0.1),)),
  )


def per_head_values(flag: str, items, bare: bool = False
                    ) -> tuple[tuple[str, float], ...]:
  """'head=value' items of the list setting ``flag`` -> ((head, value),
  ...). With ``bare``, a lone number applies to every head (returned under
  "*"). Raises errors.SettingError naming the setting."""
  out = []
  for item in items:
    head, sep, value = item.partition("=")
    if not sep and bare:
      head, sep, value = "*", "=", item
    try:
      out.append((head.strip(), float(value)))
    except ValueError:
      sep = ""
    if not sep or not out[-1][0]:
      raise errors.SettingError(
          f"`{flag}`: expected head=number{' or a number' if bare else ''}, "
          f"got {item!r}")
  return tuple(out)


def crop_range(flag: str, values, top: Optional[float]) -> tuple[float, float]:
  """Two numbers 0 < low <= high (<= top when given) -> (low, high); raises
  errors.SettingError naming the setting ``flag``."""
  try:
    low, high = (float(v) for v in values)
  except (TypeError, ValueError):
    raise errors.SettingError(
        f"`{flag}`: expected two numbers low,high, got "
        f"{','.join(map(str, values))!r}") from None
  if not (0 < low <= high and (top is None or high <= top)):
    raise errors.SettingError(f"`{flag}` must be 0 < low <= high"
                              f"{f' <= {top:g}' if top is not None else ''}, got "
                              f"{low:g},{high:g}")
  return low, high


def check_data_service(address: str) -> str:
  """"grpc://host:port" as tf.data service takes it; raises
  errors.SettingError naming the setting otherwise."""
  host, sep, port = address.removeprefix("grpc://").rpartition(":")
  if not address.startswith("grpc://") or not sep or not host or (
      not port.isdigit()):
    raise errors.SettingError(
        f"`data_service` must look like grpc://host:port (the dispatcher's "
        f"address), got {address!r}")
  return address


RESIZED_CROP_WITH_CACHE = (
    "`augment`=resized_crop cuts its window from the full image while "
    "decoding, every epoch; `cache` keeps pixels already resized to "
    "`image_size`, so the two cannot be combined: set `cache`=false or use "
    "`augment`=crop")


def check_feed(data: DataConfig) -> None:
  """The input-feeding settings (crop ranges, resized_crop without cache,
  data service address); raises errors.SettingError naming the setting."""
  crop_range("crop_scale", data.crop_scale, 1.0)
  crop_range("crop_ratio", data.crop_ratio, None)
  if "resized_crop" in data.augment and data.cache:
    raise errors.SettingError(RESIZED_CROP_WITH_CACHE)
  if data.data_service is not None:
    check_data_service(data.data_service)
