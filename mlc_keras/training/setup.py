"""What both trainers share: the data of a run, its strategy, optimizer and
compiled losses/metrics, the files written before training (labels.json,
config.json, quarantine.csv) and the results written after it (results.json
and the per-head table)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib
from mlc_keras.runs import folder as run_dir
from mlc_keras.labeling import tagging
from mlc_keras.evaluation import scoring
from mlc_keras.data import augment
from mlc_keras.data import combinations
from mlc_keras.data import demo
from mlc_keras.data import imagecheck
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources as sources_lib
from mlc_keras.data import tfrecords
from mlc_keras.modeling import factors
from mlc_keras.modeling import grow
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.training import ema

log = logging.getLogger("mlc_keras")

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class NonFiniteLossError(RuntimeError):
  """Training stopped on a NaN or Inf loss; the last backup is kept."""


@dataclasses.dataclass
class DataBundle:
  schema: heads_lib.LabelSchema
  train: sources_lib.Source
  val: Optional[sources_lib.Source]
  train_size: int
  # Rows left out under --quarantine (see write_quarantine).
  quarantined: list = dataclasses.field(default_factory=list)
  # What --holdout_combinations removed (combinations.split), or None.
  holdout: Optional[dict] = None


def load_data(cfg: config_lib.DataConfig, seed: int,
              check_cache: Optional[str] = None,
              check: bool = True, factor_heads=()) -> DataBundle:
  """Resolves the configured source into a schema and train/val sources,
  validating labels and (for manifests) every image before training.
  ``check_cache``: the image check's cache file (see data.imagecheck);
  ``check``: False skips the image check (rows only); ``factor_heads``: the
  heads calibration_combinations=auto combines."""
  sources = [s for s in (cfg.manifest, cfg.tfrecord, cfg.tfds) if s]
  if len(sources) > 1:
    raise manifest_lib.DataError(
        "give one of `manifest`, `tfrecord` or `tfds`, not several")
  schema = heads_lib.LabelSchema.load(cfg.heads_file) if cfg.heads_file else None

  if cfg.tfds:
    return _tfds_bundle(cfg, schema)

  if cfg.tfrecord:
    if schema is None:
      folder = os.path.dirname(os.path.abspath(cfg.tfrecord))
      schema = heads_lib.LabelSchema.load(os.path.join(folder, "labels.json"))
    train = tfrecords.tfrecord_source(cfg.tfrecord, schema)
    val = (tfrecords.tfrecord_source(cfg.val_tfrecord, schema)
           if cfg.val_tfrecord else None)
    return DataBundle(schema, train, val, sources_lib.count(train))

  if cfg.manifest:
    manifest, val_manifest = cfg.manifest, cfg.val_manifest
  else:
    log.info("no data source given: generating the demo set in %s", cfg.demo_dir)
    paths = demo.generate(cfg.demo_dir, cfg.demo_train_size, cfg.demo_val_size)
    manifest, val_manifest = paths["train"], paths["val"]
    schema = schema or heads_lib.LabelSchema.load(paths["labels"])

  quarantined = [] if cfg.quarantine else None
  if cfg.label_columns and cfg.heads_file:
    raise errors.SettingError("`label_columns` and `heads_file` both choose the heads; "
                              "give one")
  train_rec, schema = manifest_lib.read_manifest(
      manifest, schema, cfg.image_column,
      label_columns=cfg.label_columns or None, image_root=cfg.image_root,
      quarantine=quarantined, tag_columns=cfg.tag_columns)
  if val_manifest:
    val_rec, _ = manifest_lib.read_manifest(
        val_manifest, schema, cfg.image_column, image_root=cfg.image_root,
        quarantine=quarantined)
  elif cfg.val_fraction > 0:
    train_rec, val_rec = sources_lib.split_records(train_rec, cfg.val_fraction, seed)
  else:
    val_rec = None
  train_rec, val_rec, holdout = _hold_out(train_rec, val_rec, schema, cfg,
                                          seed, factor_heads)
  if check and (cfg.validate_images or cfg.quarantine):
    train_rec, val_rec = (_checked(rec, cfg, quarantined, check_cache)
                          for rec in (train_rec, val_rec))
  if quarantined:
    quarantined.sort(key=lambda b: (b.origin, b.line))
  train = sources_lib.records_source(train_rec)
  val = (sources_lib.records_source(val_rec)
         if val_rec is not None and len(val_rec) else None)
  return DataBundle(schema, train, val, len(train_rec), quarantined or [],
                    holdout)


def _balanced(train_rec, schema, cfg: config_lib.DataConfig):
  try:
    train_rec, report = combinations.balance(train_rec, schema,
                                             cfg.balance_combinations)
  except combinations.CombinationError as e:
    raise manifest_lib.DataError(*e.args) from None
  log.info("balance_combinations: %d rows drawn as %d (%d combinations, "
           "up to %dx)", report["rows"], report["rows_balanced"],
           report["groups"], report["max_repeat"])
  return train_rec, report


def _hold_out(train_rec, val_rec, schema, cfg: config_lib.DataConfig,
              seed: int = 0, factor_heads=()):
  """(train, val, report): the held-out combinations removed (data/
  combinations.py), then the training rows balanced over combinations
  (balance_combinations); report None when neither is configured."""
  if cfg.balance_combinations:
    train_rec, val_rec, report = _hold_out(
        train_rec, val_rec, schema,
        dataclasses.replace(cfg, balance_combinations=()), seed, factor_heads)
    train_rec, balanced = _balanced(train_rec, schema, cfg)
    return train_rec, val_rec, {**(report or {}), "balanced": balanced}
  if not (cfg.holdout_combinations or cfg.calibration_combinations):
    return train_rec, val_rec, None
  try:
    holdout = combinations.parse(cfg.holdout_combinations, schema)
    if cfg.calibration_combinations == combinations.AUTO:
      calibration = combinations.auto_calibration(
          combinations.remove(train_rec, schema, holdout)[0], val_rec,
          schema, factor_heads, seed, exclude=holdout)
      log.info("calibration_combinations=auto: %s left out of training "
               "for evaluate's stacking (holdout.json)",
               ";".join(c.name(schema) for c in calibration))
    else:
      calibration = combinations.parse(cfg.calibration_combinations, schema,
                                       "`calibration_combinations`")
  except combinations.CombinationError as e:
    raise manifest_lib.DataError(*e.args) from None
  overlap = set(holdout) & set(calibration)
  if overlap:
    raise manifest_lib.DataError(
        "`holdout_combinations` and `calibration_combinations` both name "
        + ", ".join(c.name(schema) for c in overlap) + "; the stacking bias "
        "must be fitted on other combinations than the test's")
  train_rec, val_rec, report = combinations.split(
      train_rec, val_rec, schema, holdout, calibration)
  if not len(train_rec):
    raise manifest_lib.DataError(
        "`holdout_combinations` removed every training row")
  removed = report["removed"]
  log.info("held-out combinations: %d training rows removed (%d labelled "
           "with one, %d with a blank that may hide one), %d validation rows "
           "(holdout.json)", sum(removed["train"].values()),
           removed["train"]["labelled"], removed["train"]["blank"],
           sum(removed["val"].values()))
  return train_rec, val_rec, report


def _tfds_bundle(cfg: config_lib.DataConfig,
                 schema: Optional[heads_lib.LabelSchema]) -> DataBundle:
  pairs = sources_lib.parse_tfds_heads(cfg.tfds_heads)
  train, tfds_schema = sources_lib.tfds_source(
      cfg.tfds, cfg.tfds_train_split, pairs, cfg.tfds_data_dir)
  val = None
  if cfg.tfds_val_split:
    val, _ = sources_lib.tfds_source(cfg.tfds, cfg.tfds_val_split, pairs,
                                     cfg.tfds_data_dir)
  if schema is not None and schema.names != tfds_schema.names:
    raise manifest_lib.DataError(
        f"{cfg.heads_file}: heads {list(schema.names)} do not match "
        f"`tfds_heads` {list(tfds_schema.names)}")
  return DataBundle(schema or tfds_schema, train, val, sources_lib.count(train))


def _checked(rec, cfg: config_lib.DataConfig, quarantined: Optional[list],
             cache: Optional[str]):
  """``rec`` with every image checked once (cfg.image_check): an unusable
  one raises, or with ``quarantined`` (a list) is appended there and left
  out. Without cfg.validate_images (quarantine alone) only the cheap
  header level runs."""
  if rec is None:
    return None
  level = cfg.image_check if cfg.validate_images else "header"
  kwargs = dict(max_pixels=cfg.max_image_pixels, level=level,
                cache_path=cache, progress=sys.stderr)
  if quarantined is None:
    sources_lib.check_images(rec, **kwargs)
    return rec
  bad = sources_lib.screen_images(rec, **kwargs)
  quarantined.extend(bad)
  bad_lines = {b.line for b in bad}
  return rec.take(np.array([l not in bad_lines for l in rec.lines], bool))


def write_quarantine(bundle: DataBundle, model_dir: str) -> Optional[str]:
  """Writes model_dir/quarantine.csv when rows were left out (before training,
  so it survives a crash); returns the message to print at the end."""
  if not bundle.quarantined:
    return None
  path = os.path.join(model_dir, "quarantine.csv")
  sources_lib.write_quarantine(path, bundle.quarantined)
  return (f"{len(bundle.quarantined)} manifest row(s) quarantined (not trained "
          f"on or evaluated); listed in {path}")


def make_strategy(name: str) -> tf.distribute.Strategy:
  # On JAX, "mirrored" is keras.distribution around the whole run
  # (data_parallel), not a tf.distribute scope.
  if name == "default" or jax_data_parallel(name):
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    # The cluster comes from the TF_CONFIG environment variable.
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise errors.SettingError(
      f"`strategy` must be one of {STRATEGIES}, got {name!r}")



def jax_data_parallel(strategy: str) -> bool:
  """True when ``strategy`` trains through Keras' own fit over
  keras.distribution.DataParallel: --strategy=mirrored on the JAX backend
  (distributed.py's custom step is tf.distribute, TensorFlow only)."""
  return strategy == "mirrored" and keras.backend.backend() == "jax"


@contextlib.contextmanager
def data_parallel(strategy: str, batch_size: int):
  """Yields the number of devices each batch is split across. Under
  jax_data_parallel(strategy): keras.distribution.DataParallel over the
  local devices, set for the whole run (before the model is built, so its
  variables are replicated on every device) and unset after it; otherwise
  1 and nothing changes. The train step is one program over the global
  batch, sharded by XLA: each head's masked mean divides by the labels of
  the whole batch, and BatchNormalization sees the whole batch too."""
  if not jax_data_parallel(strategy):
    yield 1
    return
  devices = keras.distribution.list_devices()
  if batch_size % len(devices):
    raise errors.SettingError(
        f"`batch_size`={batch_size} must be a multiple of the "
        f"{len(devices)} devices `strategy`=mirrored splits each batch "
        "across")
  previous = keras.distribution.distribution()
  keras.distribution.set_distribution(
      keras.distribution.DataParallel(devices=devices))
  log.info("strategy=mirrored on JAX: each batch of %d split across %d "
           "devices (keras.distribution.DataParallel)", batch_size,
           len(devices))
  try:
    yield len(devices)
  finally:
    keras.distribution.set_distribution(previous)


def pad_batches(ds: Optional[tf.data.Dataset], multiple: int
                ) -> Optional[tf.data.Dataset]:
  """``ds`` (image, labels, weights batches) with each batch padded to a
  multiple of ``multiple`` rows by zero images with weight 0, which count
  in no loss or metric: a batch split across devices must divide evenly,
  and an evaluation pass keeps its smaller last batch."""
  if ds is None or multiple == 1:
    return ds

  def pad(*batch):
    short = -tf.shape(batch[0])[0] % multiple
    return tf.nest.map_structure(
        lambda t: tf.pad(t, [[0, short]] + [[0, 0]] * (t.shape.rank - 1)),
        batch)
  return ds.map(pad)


def optimizer(cfg: config_lib.TrainConfig, total_steps: int,
              lr_scale: float = 1.0) -> keras.optimizers.Optimizer:
  """The configured optimizer on a warm-up + cosine schedule over
  ``total_steps``, peaking at ``cfg.learning_rate * lr_scale``; gradients
  clipped to ``cfg.clip_global_norm`` and the weights averaged with decay
  ``cfg.ema_decay`` when set (training/ema.py swaps the average in)."""
  peak = cfg.learning_rate * lr_scale
  warmup = min(max(total_steps // 10, 1), 1000)
  schedule = keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=peak / 10,
      decay_steps=max(total_steps - warmup, 1), alpha=0.01,
      warmup_target=peak, warmup_steps=warmup)
  extra = {"global_clipnorm": cfg.clip_global_norm}
  adamw, sgd = keras.optimizers.AdamW, keras.optimizers.SGD
  if cfg.ema_decay is not None:
    extra.update(use_ema=True, ema_momentum=cfg.ema_decay)
    adamw, sgd = ema.AdamW, ema.SGD  # the average with warm-up
  if cfg.optimizer == "adamw":
    return adamw(schedule, weight_decay=cfg.weight_decay, **extra)
  if cfg.optimizer == "sgd":
    return sgd(schedule, momentum=0.9, nesterov=True, **extra)
  raise errors.SettingError(f"`optimizer` must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def compile_model(model: keras.Model, schema: heads_lib.LabelSchema,
                  optimizer, top_k: int = 5,
                  jit_compile: Optional[bool] = None,
                  label_smoothing=None, soft: bool = False) -> None:
  """``jit_compile``: None is Keras' "auto" (see TrainConfig.jit_compile);
  ``label_smoothing``: {head: s} (losses.smoothing_per_head); ``soft``:
  training targets of single-label heads are [batch, k] probabilities
  (MixUp / CutMix; validation's stay class indices, which the metrics take
  too)."""
  selection = metrics.selection_metrics(schema)
  model.compile(optimizer=optimizer,
                loss=losses.head_losses(schema, label_smoothing, soft),
                loss_weights=losses.loss_weights(schema),
                weighted_metrics={
                    h: ms + selection[h]
                    for h, ms in metrics.weighted_metrics(
                        schema, top_k, soft).items()},
                jit_compile="auto" if jit_compile is None else jit_compile)


@dataclasses.dataclass(frozen=True)
class Run:
  """A run ready to train: its data, final schema (with loss weights and
  focal gammas applied), steps per epoch and per-head class weights."""
  bundle: DataBundle
  schema: heads_lib.LabelSchema
  steps_per_epoch: int
  class_weights: Optional[dict]
  # Printed after the results table (see write_quarantine).
  quarantine_note: Optional[str]
  # {head: label smoothing} (losses.smoothing_per_head; empty: none).
  label_smoothing: dict = dataclasses.field(default_factory=dict)
  # {factor head: modeling.factors.FactorPrior} (empty: no factor heads).
  factor_priors: dict = dataclasses.field(default_factory=dict)


class ModelError(heads_lib.SchemaError):
  """A model given to train does not fit the run's data."""


def build_model(cfg: config_lib.Config, schema,
                build: Optional[Callable[..., keras.Model]] = None
                ) -> keras.Model:
  """The configured model, shared by fit.py and distributed.py (call it in
  the strategy's scope). A parent's backbone (init_from) replaces whatever
  weights the flags name, so none are downloaded.

  ``build(schema, image_size)``, when given, makes the model instead; it
  must take uint8 images of the configured size as its one input and have
  one output per head, named after it, with one column per class."""
  if build is not None:
    return _checked_model(build(schema, cfg.data.image_size), schema,
                          cfg.data.image_size)
  mc = cfg.model
  return model_lib.build_model(
      schema, cfg.data.image_size, mc.backbone,
      None if cfg.train.init_from else mc.weights, mc.dropout, mc.bn_momentum,
      mc.head_projection, mc.head_pooling)


def _checked_model(model, schema, image_size: int) -> keras.Model:
  if not isinstance(model, keras.Model):
    raise ModelError(f"the model builder returned {type(model).__name__}, "
                     "not a keras.Model")
  if len(model.inputs) != 1:
    raise ModelError(f"the model has {len(model.inputs)} inputs; it needs one "
                     "(uint8 images)")
  shape = tuple(model.inputs[0].shape[1:])
  if len(shape) != 3 or shape[2] not in (None, 3) or any(
      s not in (None, image_size) for s in shape[:2]):
    raise ModelError(f"the model's input is {list(shape)}; the data gives "
                     f"[{image_size}, {image_size}, 3] uint8 images")
  try:
    outputs = model_lib.named_outputs(model)
  except ValueError as e:
    raise ModelError(f"the model's outputs are not named after the heads "
                     f"({e})") from None
  for h in schema.heads:
    if h.name not in outputs:
      raise ModelError(f"the model has no output named {h.name!r} (outputs: "
                       f"{', '.join(sorted(outputs))})")
    width = outputs[h.name].shape[-1]
    if width != h.num_classes:
      raise ModelError(f"output {h.name!r} has {width} columns; the head has "
                       f"{h.num_classes} classes")
  return model


def init_from_parent(model: keras.Model, schema, tc: config_lib.TrainConfig
                     ) -> Optional[dict]:
  """Copies init_from's backbone and heads into ``model`` (a resumed run
  then overwrites them from its backup or checkpoint) and logs what each head
  got; shared by fit.py and distributed.py (there, inside the strategy's
  scope: every replica gets the parent's values).
  Returns {"init_from": {...}} for results.json, or None."""
  if tc.train_heads:
    grow.check_train_heads(schema, tc.train_heads)
  if not tc.init_from:
    if tc.reinit_heads:
      raise grow.GrowError("`reinit_heads` needs `init_from`")
    return None
  parent, parent_schema, path = grow.load_parent(tc.init_from)
  plans = grow.copy_from(parent, parent_schema, model, schema,
                         tc.reinit_heads, origin=path)
  log.info("%s", grow.format_plan(plans, path))
  return {"init_from": {"model": path, "heads": {
      p.name: {"status": p.status, "added": list(p.added),
               "removed": list(p.removed)} for p in plans}}}


def prepare_run(cfg: config_lib.Config, out_dir: str) -> Run:
  """Loads the data, writes labels.json, config.json (and quarantine.csv) to
  ``out_dir``."""
  tc = cfg.train
  bundle = load_data(cfg.data, tc.seed, check_cache=os.path.join(
      out_dir, imagecheck.CACHE_FILE), factor_heads=tc.factor_heads)
  # A resume must mean the same classes as its backup: checked before this
  # run writes anything of its own over the interrupted run's files.
  run_dir.check_resumed_schema(out_dir, bundle.schema)
  quarantine_note = write_quarantine(bundle, out_dir)
  if bundle.train.records is not None:
    small = imagecheck.upscale_note(
        os.path.join(out_dir, imagecheck.CACHE_FILE),
        bundle.train.records.paths, cfg.data.image_size)
    if small:
      log.warning("%s", small)
  schema = bundle.schema
  if tc.loss_weights:
    schema = schema.with_loss_weights(dict(tc.loss_weights))
  if tc.focal_loss:
    gammas = dict(tc.focal_loss)
    if "*" in gammas:
      gammas = {**{n: gammas["*"] for n in schema.names},
                **{k: v for k, v in gammas.items() if k != "*"}}
    schema = schema.with_focal_gammas(gammas)
  if "flip" in cfg.data.augment:
    changed = augment.flip_sensitive_heads(schema)
    if changed:
      log.warning("augment=flip mirrors every training image, which can "
                  "change the label of head(s) %s (their classes look like "
                  "characters or sides); drop flip from augment unless "
                  "mirrored images keep those labels", ", ".join(changed))
  # config.json first: it marks the folder as a run (run_dir.foreign_files).
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    f.write(cfg.to_json() + "\n")
  schema.save(os.path.join(out_dir, "labels.json"))
  if bundle.holdout is not None:
    with open(os.path.join(out_dir, combinations.HOLDOUT_FILE), "w",
              encoding="utf-8") as f:
      json.dump(bundle.holdout, f, indent=2)
      f.write("\n")
  # steps_for also refuses a training set smaller than one batch.
  full_steps = pipeline.steps_for(bundle.train_size, tc.batch_size,
                                  bundle.train.name)
  steps = tc.steps_per_epoch or full_steps
  class_weights = pipeline.class_weights_from(tc.class_weight, bundle.train,
                                              schema)
  smoothing = losses.smoothing_per_head(schema, tc.label_smoothing)
  priors = {}
  if tc.factor_heads:
    priors = factors.priors(sources_lib.all_labels(bundle.train, schema),
                            schema,
                            tc.factor_heads)
    log.info("factor heads %s: each one's training logits get the log prior "
             "of its class given the others' labels", ", ".join(priors))
  return Run(bundle, schema, steps, class_weights, quarantine_note,
             smoothing, priors)


# With no validation data, the end-of-run report scores at most this many
# training examples: a full pass over a large training set would cost as
# much as an epoch, for scores that are not held-out ones anyway.
REPORT_SAMPLE = 2048


def fit_tag_thresholds(schema: heads_lib.LabelSchema, collected,
                       has_validation: bool, out_dir: str):
  """Fits the tag heads' thresholds on the validation outputs (the default
  for every tag without validation data: fitting on the training data would
  fit its noise) and rewrites labels.json with them, so every export
  carries them. Returns (schema, {head: {tag: fit}}); no-op without tag
  heads."""
  if not schema.tag_thresholds():
    return schema, {}
  schema, report = tagging.fit_schema(schema,
                                      collected if has_validation else None)
  schema.save(os.path.join(out_dir, "labels.json"))
  return schema, report


def write_results(model: keras.Model, run: Run, cfg: config_lib.Config,
                  out_dir: str, eval_ds: Optional[tf.data.Dataset] = None,
                  extra: Optional[dict] = None, show: bool = True) -> dict:
  """Evaluates ``model`` on the validation data (the first REPORT_SAMPLE
  training examples when there is none, said so), writes results.json to
  ``out_dir`` and, when ``show``, prints the per-head table. ``eval_ds``:
  the validation dataset if already built; ``extra``: more keys for
  results.json."""
  tc, bundle = cfg.train, run.bundle
  sampled = bundle.val is None
  eval_source = bundle.train if sampled else bundle.val
  if eval_ds is None:
    eval_ds = pipeline.eval_dataset(eval_source, run.schema,
                                    image_size=cfg.data.image_size,
                                    batch_size=tc.batch_size)
  title = f"Per-head results on {eval_source.name}"
  if sampled:
    batches = -(-REPORT_SAMPLE // tc.batch_size)
    eval_ds = eval_ds.take(batches)
    count = min(bundle.train_size, batches * tc.batch_size)
    extra = {"evaluated_sample": count, "sample_of": "training data",
             **(extra or {})}
    title = (f"Per-head results on the first {count} of {bundle.train_size} "
             f"training examples of {eval_source.name} (no validation data: "
             "not held-out scores")
  collected = metrics.collect(model, eval_ds, run.schema)
  schema, thresholds = fit_tag_thresholds(run.schema, collected,
                                          not sampled, out_dir)
  rows = metrics.head_table(collected, schema, tc.top_k)
  across = metrics.add_field_scores(rows, collected, schema, tc.top_k)
  results = {"evaluated_on": eval_source.name, "train_size": bundle.train_size,
             "epochs": tc.epochs, "steps_per_epoch": run.steps_per_epoch,
             "heads": rows, "across_heads": across, **(extra or {})}
  if thresholds:
    results["tag_thresholds"] = thresholds
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  if show:
    print(metrics.format_table(
        rows, title=title + ("; " if sampled else " (") +
        "inference mode, labelled samples only):"))
    print(scoring.format_across(across))
    if run.quarantine_note:
      print(run.quarantine_note)
  return results


def failed_image(cfg: config_lib.Config, model_dir: str,
                 error: tf.errors.OpError) -> Optional[manifest_lib.Problem]:
  """The manifest row whose image stopped training with ``error`` (a file
  deleted, changed or corrupt since the check), recorded as unusable in the
  image check's cache so the next run's check refuses or quarantines it;
  None when the error is not an image's (or the data is not a manifest)."""
  if not isinstance(error, (tf.errors.NotFoundError, tf.errors.DataLossError,
                            tf.errors.InvalidArgumentError,
                            tf.errors.PermissionDeniedError)):
    return None
  dc = cfg.data
  if dc.tfrecord or dc.tfds:
    return None
  cache = os.path.join(model_dir, imagecheck.CACHE_FILE)
  # The rows training read: under --quarantine the check (answered from its
  # cache) leaves out the rows already set aside, which would otherwise be
  # named again (a missing file fails the search's decode too) while the
  # image really at fault stays in; without it every row passed the check.
  bundle = load_data(dc, cfg.train.seed, check_cache=cache,
                     check=dc.quarantine, factor_heads=cfg.train.factor_heads)
  records = [s.records for s in (bundle.train, bundle.val)
             if s is not None and s.records is not None]
  problem = imagecheck.explain(error.message or "", records)
  if problem is not None:
    imagecheck.record_failure(cache, problem.path, problem.reason)
  return problem
