"""What train checks before it reads any data or loads TensorFlow: every
config value in range, the data files and the backbone named, the weights
present (or ImageNet's reachable), TF_CONFIG parsed. Each problem is a
FlagError (errors.SettingError) naming the config field (or TF_CONFIG) and
its value; the train CLI shows the field as its flag.

Takes values, never flags or the environment: the train CLI passes
TF_CONFIG's text and KERAS_HOME in.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import math
import os
import threading
import urllib.error
import urllib.request
from typing import Callable, Optional

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.core import settings

_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# MobileNetV2's ImageNet files exist for these input sides (Keras picks 224
# for any other).
_MOBILENET_SIDES = (96, 128, 160, 192, 224)
PROBE_TIMEOUT = 3.0
# tensorflow-datasets is an extra: only --tfds needs it (and pyarrow with it).
TFDS_INSTALL_HINT = ("needs tensorflow-datasets, which is not installed: "
                     "pip install -e '.[tfds]' (or pip install "
                     "tensorflow-datasets==4.9.10)")


# A setting or environment value that cannot work; the message names it.
FlagError = errors.SettingError


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the checks found out about the run's place in a cluster."""
  chief: bool = True  # owns model_dir (writes it and holds its lock)
  workers: int = 1


def absolute_paths(cfg: config_lib.Config) -> config_lib.Config:
  """``cfg`` with its file paths made absolute, so that config.json means
  the same files from any folder (evaluate and export read it). The paths
  are the fields declared path=True; a combinations spec (path="file") is a
  file or inline text, made absolute only when it names a file."""
  return settings.absolute_paths(cfg)


def check(cfg: config_lib.Config, tf_config: Optional[str] = None,
          keras_home: Optional[str] = None,
          probe: Optional[Callable[[str], Optional[str]]] = None,
          backend: str = "tensorflow") -> Plan:
  """Every check of this module; returns the Plan. ``tf_config``: the
  TF_CONFIG text (None when unset); ``keras_home``: KERAS_HOME (None: Keras'
  default); ``probe(url)``: None when the URL answers, else why not
  (default: a HEAD request with a short timeout); ``backend``: the Keras
  backend the run will train on."""
  check_ranges(cfg, backend)
  check_sources(cfg.data)
  check_parent(cfg.train)
  check_weights(cfg.model, cfg.data.image_size, keras_home, probe or probe_url)
  return check_cluster(cfg.train, tf_config)


def _fail(field: str, value, why: str):
  raise FlagError(f"{errors.setting(field)}={_show(value)}: {why}")


def _show(value) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return str(value)


def _custom_step(tc: config_lib.TrainConfig, backend: str) -> bool:
  """Whether training/distributed.py's TensorFlow custom step trains the
  run (on JAX, mirrored is Keras' fit over keras.distribution)."""
  return tc.strategy != "default" and backend != "jax"


def _check_recipe(dc: config_lib.DataConfig, tc: config_lib.TrainConfig,
                  backend: str = "tensorflow") -> None:
  """The training recipe's settings (beyond their declared ranges)."""
  for head, value in tc.label_smoothing:
    if not (math.isfinite(value) and 0 <= value < 1):
      _fail("label_smoothing", f"{head}={value}", "must be in [0, 1)")
  if tc.ema_decay is not None and not 0 < tc.ema_decay < 1:
    _fail("ema_decay", tc.ema_decay, "must be in (0, 1), e.g. 0.999")
  if dc.calibration_combinations == "auto" and len(tc.factor_heads) < 2:
    _fail("calibration_combinations", "auto", "picks combinations of the "
          "factor heads: name two or more with `factor_heads` (e.g. "
          "`factor_heads`=char,family)")
  if tc.factor_heads:
    mixing = [f for f in ("mixup_alpha", "cutmix_alpha") if getattr(dc, f)]
    if mixing:
      _fail(mixing[0], getattr(dc, mixing[0]), "cannot be combined with "
            "`factor_heads`: a mixed image has two rows' labels, and its "
            "prior would be neither row's")
  if _custom_step(tc, backend):
    # training/distributed.py's custom step supports neither.
    mixing = [f for f in ("mixup_alpha", "cutmix_alpha") if getattr(dc, f)]
    if mixing:
      _fail(mixing[0], getattr(dc, mixing[0]), "is not supported with "
            f"`strategy`={tc.strategy} yet (its step takes class-index "
            "targets); use the default strategy")
    if tc.ema_decay is not None:
      _fail("ema_decay", tc.ema_decay, "is not supported with "
            f"`strategy`={tc.strategy} yet (its custom step does not swap "
            "the averaged weights in); use the default strategy")


def check_ranges(cfg: config_lib.Config, backend: str = "tensorflow") -> None:
  """Sizes and counts in range, names among the known ones (and what the
  Keras ``backend`` cannot train)."""
  dc, mc, tc = cfg.data, cfg.model, cfg.train
  # Each field's declared range or choices (config.py; e.g. image_size >= 32:
  # keras.applications builds no backbone below 32 px).
  for field, value, why in settings.problems(cfg):
    _fail(field, value, why)
  unknown = [a for a in dc.augment if a not in config_lib.AUGMENTATIONS]
  if unknown:
    _fail("augment", dc.augment, f"unknown augmentation {unknown[0]!r}; "
          f"choose from {', '.join(config_lib.AUGMENTATIONS)} ('' for none)")
  _check_recipe(dc, tc, backend)
  if mc.backbone not in config_lib.BACKBONES:
    _fail("backbone", mc.backbone,
          f"unknown backbone; choose one of {', '.join(config_lib.BACKBONES)}")
  for field in ("loss_weights", "focal_loss"):
    for head, value in getattr(tc, field):
      if not (math.isfinite(value) and value >= 0):
        _fail(field, f"{head}={value}", "must be a number >= 0")
  if backend == "jax" and tc.strategy == "multi_worker":
    _fail("strategy", tc.strategy, "is TensorFlow only (tf.distribute over "
          "TF_CONFIG); on the JAX backend use mirrored (this machine's "
          "devices) or train with KERAS_BACKEND=tensorflow")
  if _custom_step(tc, backend):
    # training/distributed.py's custom step supports neither.
    if tc.precision != "float32" or tc.jit_compile:
      _fail("strategy", tc.strategy, "supports float32 without `jit_compile` only")
    if tc.freeze_epochs:
      _fail("freeze_epochs", tc.freeze_epochs, "is not supported with "
            f"`strategy`={tc.strategy} yet; use the default strategy")


def check_parent(tc: config_lib.TrainConfig) -> None:
  """init_from names a run folder or a .keras file (read later)."""
  path = tc.init_from
  if path and not (os.path.isdir(path) or (
      os.path.isfile(path) and path.endswith(".keras"))):
    _fail("init_from", path, "no such run folder or .keras file")
  if tc.reinit_heads and not path:
    _fail("reinit_heads", ",".join(tc.reinit_heads), "needs `init_from`")


def check_sources(dc: config_lib.DataConfig) -> None:
  """The data files named exist (their contents are read later)."""
  given = [f for f in ("manifest", "tfrecord", "tfds") if getattr(dc, f)]
  if len(given) > 1:
    raise FlagError(f"give one of `manifest`, `tfrecord` or `tfds`, not "
                    f"{' and '.join(errors.setting(g) for g in given)}")
  for field in ("manifest", "val_manifest", "heads_file"):
    path = getattr(dc, field)
    # A manifest may be an image folder (data/folders.py).
    if path and not (os.path.isfile(path) or (
        field != "heads_file" and os.path.isdir(path))):
      _fail(field, path, "no such file")
  if dc.tfds and importlib.util.find_spec("tensorflow_datasets") is None:
    _fail("tfds", dc.tfds, TFDS_INSTALL_HINT)
  if dc.val_manifest and not dc.manifest:
    _fail("val_manifest", dc.val_manifest, "needs `manifest` (the training "
          "CSV)")
  if dc.val_tfrecord and not dc.tfrecord:
    _fail("val_tfrecord", dc.val_tfrecord, "needs `tfrecord`")
  for field in ("tfrecord", "val_tfrecord"):
    pattern = getattr(dc, field)
    if pattern and not glob.glob(pattern):
      _fail(field, pattern, "matches no file")
  if dc.tfrecord and not dc.heads_file:
    labels = os.path.join(os.path.dirname(os.path.abspath(dc.tfrecord)),
                          "labels.json")
    if not os.path.isfile(labels):
      _fail("tfrecord", dc.tfrecord, f"no {labels} beside the shards (the "
            "tfrecord CLI writes it); give `heads_file`")
  if dc.label_columns and dc.heads_file:
    raise FlagError("`label_columns` and `heads_file` both choose the heads; "
                    "give one")
  if (dc.holdout_combinations or dc.calibration_combinations
      or dc.balance_combinations) and (dc.tfrecord or dc.tfds):
    raise FlagError("`holdout_combinations` / `calibration_combinations` / "
                    "`balance_combinations` read the labels of manifest rows; "
                    "give `manifest` (or the demo set), not `tfrecord` / "
                    "`tfds`")
  if dc.image_root and not os.path.isdir(dc.image_root):
    _fail("image_root", dc.image_root, "no such folder")


def imagenet_file(backbone: str, image_size: int) -> tuple[str, str]:
  """(file name, download URL) of the no-top ImageNet weights Keras fetches
  for ``backbone`` (keras/src/applications, Keras 3.15). EfficientNetV2 and
  ConvNeXt name the file after the model's Keras name
  ("efficientnetv2-b0", "convnext_tiny"), under which modeling.model
  builds them."""
  if backbone.startswith("ResNet"):
    name = (f"{backbone[:-2].lower()}v2_weights_tf_dim_ordering_tf_kernels"
            "_notop.h5")
    return name, f"{_APPS}resnet/{name}"
  if backbone == "MobileNetV2":
    side = image_size if image_size in _MOBILENET_SIDES else 224
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{side}_no_top.h5"
    return name, f"{_APPS}mobilenet_v2/{name}"
  if backbone.startswith("EfficientNetV2"):
    name = f"efficientnetv2-{backbone[len('EfficientNetV2'):].lower()}_notop.h5"
    return name, f"{_APPS}efficientnet_v2/{name}"
  if backbone.startswith("ConvNeXt"):
    name = f"convnext_{backbone[len('ConvNeXt'):].lower()}_notop.h5"
    return name, f"{_APPS}convnext/{name}"
  raise FlagError(f"`weights`=imagenet: no ImageNet file known for "
                  f"`backbone`={backbone}")


def keras_cache_dirs(keras_home: Optional[str]) -> list[str]:
  """Where keras.utils.get_file looks for a downloaded file: KERAS_HOME (or
  ~/.keras), and /tmp/.keras when that is not writable."""
  home = os.path.expanduser(keras_home or os.path.join("~", ".keras"))
  return [os.path.join(home, "models"), os.path.join("/tmp", ".keras", "models")]


def probe_url(url: str, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
  """None when a HEAD request to ``url`` answers within ``timeout`` s, else
  why not. Run in a thread so that a hanging name lookup (which urllib's
  timeout does not cover) cannot hold the run longer."""
  outcome = ["no answer within %g s" % timeout]

  def ask():
    try:
      request = urllib.request.Request(url, method="HEAD")
      with urllib.request.urlopen(request, timeout=timeout):
        outcome[0] = None
    except urllib.error.HTTPError as e:
      outcome[0] = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
      outcome[0] = str(getattr(e, "reason", e))
  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return outcome[0]


def check_weights(mc: config_lib.ModelConfig, image_size: int,
                  keras_home: Optional[str],
                  probe: Callable[[str], Optional[str]]) -> None:
  """A weights file exists; ImageNet weights are cached or downloadable."""
  weights = mc.weights
  if weights is None:
    return
  if weights != "imagenet":
    if not os.path.isfile(weights):
      hint = (" (ImageNet weights are `weights`=imagenet, in lower case)"
              if weights.lower().endswith("imagenet") else "")
      _fail("weights", weights, "no such file; give a local no-top weights "
            f"file, imagenet or none{hint}")
    why = weights_file_problem(weights)
    if why:
      _fail("weights", weights, why)
    return
  name, url = imagenet_file(mc.backbone, image_size)
  cache = keras_cache_dirs(keras_home)
  if any(os.path.isfile(os.path.join(d, name)) for d in cache):
    return
  why = probe(url)
  if why is not None:
    _fail("weights", weights,
          f"the {mc.backbone} weights are not in the Keras cache "
          f"({os.path.join(cache[0], name)}) and cannot be downloaded from "
          f"{url} ({why}). Offline: fetch that file on a connected machine "
          f"and pass `weights`=/path/to/{name}, or copy it into {cache[0]}")


# Keras' load_weights picks its reader by the file name's ending; each
# reader wants its container, told by its first bytes (HDF5's superblock may
# sit after a user block of 512 * 2^n bytes).
_HDF5 = b"\x89HDF\r\n\x1a\n"
_ZIP = b"PK\x03\x04"


def weights_file_problem(path: str) -> Optional[str]:
  """Why Keras could not read ``path`` as weights (by its name and first
  bytes, without loading it), or None. Shapes that do not fit the backbone
  are only found by loading."""
  if path.endswith(".keras"):
    offsets, magic, kind = (0,), _ZIP, "a .keras (zip) file"
  elif path.endswith((".h5", ".hdf5")):
    offsets, magic, kind = (0, 512, 1024, 2048), _HDF5, "an HDF5 file"
  else:
    return ("not a Keras weights file: Keras reads weights from a file "
            "named *.weights.h5, *.h5, *.hdf5 or *.keras")
  try:
    with open(path, "rb") as f:
      head = f.read(2048 + len(magic))
  except OSError as e:
    return f"cannot read it ({e.strerror})"
  if not any(head[o:o + len(magic)] == magic for o in offsets):
    return f"not a Keras weights file: its content is not {kind}"
  return None


def parse_tf_config(text: str) -> Plan:
  """TF_CONFIG's cluster and task -> Plan (is this task the chief, how many
  workers). Raises FlagError naming TF_CONFIG and what is wrong."""
  try:
    spec = json.loads(text)
  except ValueError as e:
    raise FlagError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}") from None
  example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
             '"task": {"type": "worker", "index": 0}}')
  cluster = spec.get("cluster") if isinstance(spec, dict) else None
  task = spec.get("task") if isinstance(spec, dict) else None
  if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
    raise FlagError(f"TF_CONFIG needs a \"cluster\" and a \"task\" object; "
                    f"{example}")
  for job, addresses in cluster.items():
    if not (isinstance(addresses, list) and addresses and all(
        isinstance(a, str) and ":" in a for a in addresses)):
      raise FlagError(f"TF_CONFIG cluster.{job} must be a list of "
                      f"\"host:port\" strings, got {addresses!r}")
  kind, index = task.get("type"), task.get("index")
  if kind not in cluster or kind not in ("chief", "worker"):
    raise FlagError(f"TF_CONFIG task.type is {kind!r}; it must be \"chief\" "
                    f"or \"worker\", a job of the cluster ({', '.join(cluster)})")
  if isinstance(index, bool) or not isinstance(index, int) or not (
      0 <= index < len(cluster[kind])):
    raise FlagError(f"TF_CONFIG task.index is {index!r}; cluster.{kind} has "
                    f"{len(cluster[kind])} address(es)")
  chief = kind == "chief" or (index == 0 and "chief" not in cluster)
  return Plan(chief=chief, workers=sum(len(a) for a in cluster.values()))


def check_cluster(tc: config_lib.TrainConfig, tf_config: Optional[str]) -> Plan:
  """strategy=multi_worker needs a well-formed TF_CONFIG."""
  if tc.strategy != "multi_worker":
    return Plan()
  if not tf_config or not tf_config.strip():
    raise FlagError(
        "`strategy`=multi_worker needs the TF_CONFIG environment variable "
        "(the cluster and this machine's task, see README \"Several GPUs, "
        "several machines\"); without it every machine would train alone as "
        "the chief of the same `model_dir`")
  return parse_tf_config(tf_config)
