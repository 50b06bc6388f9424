"""train_and_evaluate(config, model_dir): the library under the train CLI.

Artefacts written to model_dir:
  model.keras        the final model (what export and predict read)
  best.keras         the best epoch by validation loss (training loss without
                     validation data)
  labels.json        the schema: head names and class order
  config.json        the config of the run
  results.json       per-head labelled count and accuracy on validation data
  history.csv        per-epoch losses and metrics
  tensorboard/       TensorBoard logs
  backup/            BackupAndRestore state while a run is unfinished
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from mlc_keras import config as config_lib
from mlc_keras import data
from mlc_keras import demo
from mlc_keras import heads as heads_lib
from mlc_keras import losses
from mlc_keras import metrics
from mlc_keras import model as model_lib

log = logging.getLogger("mlc_keras")

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class DataBundle:
  schema: heads_lib.LabelSchema
  train: data.Source
  val: Optional[data.Source]
  train_size: int
  # Rows left out under --quarantine (see write_quarantine).
  quarantined: list = dataclasses.field(default_factory=list)


def load_data(cfg: config_lib.DataConfig, seed: int) -> DataBundle:
  """Resolves the configured source into a schema and train/val sources,
  validating labels and (for manifests) every image before training."""
  sources = [s for s in (cfg.manifest, cfg.tfrecord, cfg.tfds) if s]
  if len(sources) > 1:
    raise data.DataError(
        "give one of --manifest, --tfrecord or --tfds, not several")
  schema = heads_lib.LabelSchema.load(cfg.heads_file) if cfg.heads_file else None

  if cfg.tfds:
    pairs = data.parse_tfds_heads(cfg.tfds_heads)
    train, tfds_schema = data.tfds_source(cfg.tfds, cfg.tfds_train_split, pairs,
                                          cfg.tfds_data_dir)
    val = None
    if cfg.tfds_val_split:
      val, _ = data.tfds_source(cfg.tfds, cfg.tfds_val_split, pairs,
                                cfg.tfds_data_dir)
    if schema is not None and schema.names != tfds_schema.names:
      raise data.DataError(
          f"{cfg.heads_file}: heads {list(schema.names)} do not match "
          f"--tfds_heads {list(tfds_schema.names)}")
    schema = schema or tfds_schema
    return DataBundle(schema, train, val, data.count(train))

  if cfg.tfrecord:
    if schema is None:
      folder = os.path.dirname(os.path.abspath(cfg.tfrecord))
      schema = heads_lib.LabelSchema.load(os.path.join(folder, "labels.json"))
    train = data.tfrecord_source(cfg.tfrecord, schema)
    val = data.tfrecord_source(cfg.val_tfrecord, schema) if cfg.val_tfrecord else None
    return DataBundle(schema, train, val, data.count(train))

  if cfg.manifest:
    manifest, val_manifest = cfg.manifest, cfg.val_manifest
  else:
    log.info("no data source given: generating the demo set in %s", cfg.demo_dir)
    paths = demo.generate(cfg.demo_dir, cfg.demo_train_size, cfg.demo_val_size)
    manifest, val_manifest = paths["train"], paths["val"]
    schema = schema or heads_lib.LabelSchema.load(paths["labels"])

  quarantined = [] if cfg.quarantine else None
  train_rec, schema = data.read_manifest(
      manifest, schema, cfg.image_column, image_root=cfg.image_root,
      quarantine=quarantined)
  if val_manifest:
    val_rec, _ = data.read_manifest(
        val_manifest, schema, cfg.image_column, image_root=cfg.image_root,
        quarantine=quarantined)
  elif cfg.val_fraction > 0:
    train_rec, val_rec = data.split_records(train_rec, cfg.val_fraction, seed)
  else:
    val_rec = None
  if cfg.validate_images or cfg.quarantine:
    checked = []
    for rec in (train_rec, val_rec):
      if rec is None:
        checked.append(rec)
      elif quarantined is None:
        data.check_images(rec, max_pixels=cfg.max_image_pixels)
        checked.append(rec)
      else:
        bad = data.screen_images(rec, max_pixels=cfg.max_image_pixels)
        quarantined.extend(bad)
        bad_lines = {b.line for b in bad}
        checked.append(rec.take(np.array(
            [l not in bad_lines for l in rec.lines], bool)))
    train_rec, val_rec = checked
  if quarantined:
    quarantined.sort(key=lambda b: (b.origin, b.line))
  train = data.records_source(train_rec)
  val = data.records_source(val_rec) if val_rec is not None and len(val_rec) else None
  return DataBundle(schema, train, val, len(train_rec), quarantined or [])


def write_quarantine(bundle: DataBundle, model_dir: str) -> Optional[str]:
  """Writes model_dir/quarantine.csv when rows were left out (before training,
  so it survives a crash); returns the message to print at the end."""
  if not bundle.quarantined:
    return None
  path = os.path.join(model_dir, "quarantine.csv")
  data.write_quarantine(path, bundle.quarantined)
  return (f"{len(bundle.quarantined)} manifest row(s) quarantined (not trained "
          f"on or evaluated); listed in {path}")


def make_strategy(name: str) -> tf.distribute.Strategy:
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    # The cluster comes from the TF_CONFIG environment variable.
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


def backup_epoch(backup_dir: str) -> int:
  """The epoch a BackupAndRestore in ``backup_dir`` will resume at (0 if none)."""
  path = os.path.join(backup_dir, "training_metadata.json")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return int(json.load(f)["epoch"])


def _optimizer(cfg: config_lib.TrainConfig, total_steps: int):
  warmup = min(max(total_steps // 10, 1), 1000)
  schedule = keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=cfg.learning_rate / 10,
      decay_steps=max(total_steps - warmup, 1), alpha=0.01,
      warmup_target=cfg.learning_rate, warmup_steps=warmup)
  if cfg.optimizer == "adamw":
    return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
  if cfg.optimizer == "sgd":
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
  raise ValueError(f"--optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def compile_model(model: keras.Model, schema: heads_lib.LabelSchema,
                  optimizer, top_k: int = 5, jit_compile: bool = False) -> None:
  model.compile(optimizer=optimizer,
                loss=losses.head_losses(schema),
                loss_weights=losses.loss_weights(schema),
                weighted_metrics=metrics.weighted_metrics(schema, top_k),
                jit_compile=jit_compile)


def prepare_run(cfg: config_lib.Config, out_dir: str):
  """Loads the data, writes labels.json, config.json (and quarantine.csv) to
  ``out_dir``; returns (bundle, schema, steps_per_epoch, class_weights,
  quarantine_note). Shared by fit and the distributed custom step."""
  tc = cfg.train
  bundle = load_data(cfg.data, tc.seed)
  quarantine_note = write_quarantine(bundle, out_dir)
  schema = bundle.schema
  if tc.loss_weights:
    schema = schema.with_loss_weights(dict(tc.loss_weights))
  if tc.focal_loss:
    gammas = dict(tc.focal_loss)
    if "*" in gammas:
      gammas = {**{n: gammas["*"] for n in schema.names},
                **{k: v for k, v in gammas.items() if k != "*"}}
    schema = schema.with_focal_gammas(gammas)
  schema.save(os.path.join(out_dir, "labels.json"))
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    f.write(cfg.to_json() + "\n")
  # steps_for also refuses a training set smaller than one batch.
  full_steps = data.steps_for(bundle.train_size, tc.batch_size, bundle.train.name)
  steps = tc.steps_per_epoch or full_steps
  class_weights = data.class_weights_from(tc.class_weight, bundle.train, schema)
  return bundle, schema, steps, class_weights, quarantine_note


def train_and_evaluate(cfg: config_lib.Config, model_dir: str) -> dict:
  """Trains the multi-head model described by ``cfg`` and writes its
  artefacts to ``model_dir`` (see the module docstring).

  Re-running with the same model_dir resumes an interrupted run from its
  last backup. Returns the results dict also written to results.json.
  """
  tc, dc, mc = cfg.train, cfg.data, cfg.model
  if tc.strategy in ("mirrored", "multi_worker"):
    # fit fails under MultiWorkerMirroredStrategy (keras#20585) and averages
    # per-replica masked means: these run a custom step (see distributed.py).
    from mlc_keras import distributed  # pylint: disable=g-import-not-at-top
    return distributed.train_and_evaluate(cfg, model_dir)
  if tc.precision not in PRECISIONS:
    raise ValueError(f"--precision must be one of {PRECISIONS}, got {tc.precision!r}")
  os.makedirs(model_dir, exist_ok=True)
  keras.utils.set_random_seed(tc.seed)
  if dc.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(tc.precision)

  bundle, schema, steps, class_weights, quarantine_note = prepare_run(
      cfg, model_dir)
  backup_dir = os.path.join(model_dir, "backup")
  start_epoch = backup_epoch(backup_dir)
  train_ds = data.train_dataset(
      bundle.train, schema, image_size=dc.image_size, batch_size=tc.batch_size,
      seed=tc.seed, start_epoch=start_epoch, end_epoch=tc.epochs,
      steps_per_epoch=steps, augmentations=dc.augment, cache=dc.cache,
      shuffle_buffer=dc.shuffle_buffer, deterministic=dc.deterministic,
      class_weights=class_weights)
  val_ds = None
  if bundle.val is not None:
    val_ds = data.eval_dataset(bundle.val, schema, image_size=dc.image_size,
                               batch_size=tc.batch_size, cache=True)

  strategy = make_strategy(tc.strategy)
  with strategy.scope():
    model = model_lib.build_model(schema, dc.image_size, mc.backbone, mc.weights,
                                  mc.dropout, mc.bn_momentum)
    compile_model(model, schema, _optimizer(tc, steps * tc.epochs), tc.top_k,
                  tc.jit_compile)

  monitor = "val_loss" if val_ds is not None else "loss"
  callbacks = [
      keras.callbacks.BackupAndRestore(
          backup_dir, save_freq=tc.backup_every_steps or "epoch",
          double_checkpoint=True),
      keras.callbacks.ModelCheckpoint(
          os.path.join(model_dir, "best.keras"), monitor=monitor,
          save_best_only=True),
      keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard")),
      keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"),
                                append=start_epoch > 0),
      # raise_error=True: a NaN run must fail loudly and keep its backup.
      keras.callbacks.TerminateOnNaN(raise_error=True),
  ]
  if start_epoch:
    log.info("resuming from the backup in %s at epoch %d", backup_dir, start_epoch)
  model.fit(train_ds, epochs=tc.epochs, steps_per_epoch=steps,
            validation_data=val_ds, callbacks=callbacks, shuffle=False,
            verbose=1 if os.environ.get("MLC_QUIET") != "1" else 2)
  model.save(os.path.join(model_dir, "model.keras"))

  eval_source = bundle.val if bundle.val is not None else bundle.train
  eval_ds = val_ds if val_ds is not None else data.eval_dataset(
      bundle.train, schema, image_size=dc.image_size, batch_size=tc.batch_size)
  rows = metrics.head_table(metrics.collect(model, eval_ds, schema), schema,
                            tc.top_k)
  results = {"evaluated_on": eval_source.name, "train_size": bundle.train_size,
             "epochs": tc.epochs, "steps_per_epoch": steps, "heads": rows}
  with open(os.path.join(model_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  print(metrics.format_table(
      rows, title=f"Per-head results on {eval_source.name} "
      f"(inference mode, labelled samples only):"))
  if quarantine_note:
    print(quarantine_note)
  return results
