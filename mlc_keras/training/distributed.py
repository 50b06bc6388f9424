"""Training under MirroredStrategy / MultiWorkerMirroredStrategy with a custom
step (``strategy.run``) instead of ``model.fit``.

Why not fit: Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy
(keras#20585), and under any strategy fit averages each replica's own
"mean over labelled samples", which is not the mean over the labelled samples
of the global batch when replicas hold different numbers of labels. Here each
head's loss is divided by the weight present in the *global* batch (an
all-reduce), so N replicas compute exactly the gradient of one device on the
same global batch (up to float summation order). BatchNormalization still
normalises each replica's own slice, as under fit: with a BN backbone the
runs agree only in expectation.

Every worker runs the same code and writes the same artefacts; only the
chief writes into model_dir, the others into a temporary folder that is
deleted at the end (saving may need every worker to take part). Resume state
is a tf.train.Checkpoint (model, optimizer, epoch) in model_dir/checkpoints,
saved after each epoch and read by every worker from the chief's folder, so
all workers resume at the same epoch.

The chief writes TensorBoard logs as the fit trainer does
(training/tensorboard.py: per-head scalars of each epoch's training
metrics, the learning rate, the HParams session); this loop validates only
at the end, so there is no validation run nor confusion image per epoch.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import augment
from mlc_keras.data import pipeline
from mlc_keras.modeling import grow
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import saving
from mlc_keras.training import setup
from mlc_keras.training import tensorboard

log = logging.getLogger("mlc_keras")

CHECKPOINT_DIR = "checkpoints"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that owns model_dir (always true on one machine)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type in (None, "chief") or (
      task_type == "worker" and task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())


def checkpoint_epoch(model_dir: str) -> int:
  """The epoch a distributed run in ``model_dir`` resumes at (0 if none)."""
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
  if latest is None:
    return 0
  return int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def distribute(strategy: tf.distribute.Strategy,
               make_global: Callable[[], tf.data.Dataset],
               global_batch: int):
  """Splits each global batch of ``make_global()`` across the replicas.

  Every input pipeline (one per worker) builds the same global-batch dataset
  and keeps its own slice of each batch (sharding by DATA), cut into one
  per-replica batch per local replica. The union over replicas of step k is
  exactly global batch k of a single-device run.
  """
  replicas = strategy.num_replicas_in_sync
  if global_batch % replicas:
    raise errors.SettingError(
        f"`batch_size`={global_batch} must be a multiple of the {replicas} "
        "replicas")

  def dataset_fn(ctx: tf.distribute.InputContext):
    per = ctx.get_per_replica_batch_size(global_batch)
    local = replicas // ctx.num_input_pipelines
    lo = ctx.input_pipeline_id * per * local
    ds = make_global().map(lambda *t: tf.nest.map_structure(
        lambda x: x[lo:lo + per * local], t))
    if local > 1:
      ds = ds.unbatch().batch(per, drop_remainder=True)
    options = tf.data.Options()
    # The slicing above is the sharding; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)
  return strategy.distribute_datasets_from_function(dataset_fn)


def make_train_step(strategy, model, optimizer, schema: heads_lib.LabelSchema,
                    label_smoothing=None, soft: bool = False):
  """A tf.function running one step on every replica (``label_smoothing``:
  {head: s}, see losses.head_losses; ``soft``: factor heads' targets carry
  their log prior, see modeling/factors.py).

  Returns (global loss, {head: global head loss}, (outputs, labels,
  weights)) of this worker's replicas for the metrics (see local_batches).
  """
  head_losses = losses.head_losses(schema, label_smoothing, soft)
  weights = losses.loss_weights(schema)
  replicas = strategy.num_replicas_in_sync

  def replica_step(images, ys, ws):
    ctx = tf.distribute.get_replica_context()
    # The weight present in the global batch, per head: the denominator of
    # "mean over labelled samples" (0 labels -> loss 0, as mean_with_sample_weight).
    present = {h: ctx.all_reduce("sum", tf.reduce_sum(ws[h])) for h in ws}
    with tf.GradientTape() as tape:
      out = model(images, training=True)
      head = {}
      for h in schema.names:
        per_sample = head_losses[h].call(ys[h], out[h])
        head[h] = tf.math.divide_no_nan(
            tf.reduce_sum(per_sample * ws[h]), present[h])
      total = tf.add_n([weights[h] * head[h] for h in schema.names])
      if model.losses:
        total += tf.add_n(model.losses) / replicas
    grads = tape.gradient(total, model.trainable_variables)
    # Keras' optimizer sums gradients over replicas, which is the gradient of
    # the global loss since each replica's share is already divided globally.
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return total, head, out

  @tf.function
  def step(iterator):
    images, ys, ws = next(iterator)
    total, head, out = strategy.run(replica_step, args=(images, ys, ws))
    total = strategy.reduce("SUM", total, axis=None)
    head = {h: strategy.reduce("SUM", v, axis=None) for h, v in head.items()}
    return total, head, (out, ys, ws)
  return step


def local_batches(strategy, values):
  """This worker's per-replica (outputs, labels, weights) as plain tensors."""
  parts = [strategy.experimental_local_results(v)
           for v in tf.nest.flatten(values)]
  return [tf.nest.pack_sequence_as(values, [p[i] for p in parts])
          for i in range(len(parts[0]))]


def sum_metrics_over_workers(strategy, metric_list) -> None:
  """Replaces each worker's metric state by its sum over workers.

  Each worker updates its metrics with its own replicas' batches (all our
  metrics are weighted means: sums of numerators and denominators), so the
  summed state gives the metric over the global batches. Needs every worker.
  """
  variables = [v for m in metric_list for v in m.variables]
  if not variables:
    return
  try:
    local = len(strategy.extended.worker_devices)
  except RuntimeError:  # the default strategy: one device, nothing to sum
    return
  if local == strategy.num_replicas_in_sync:  # one worker
    return
  values = [tf.convert_to_tensor(v) for v in variables]

  def per_replica(ctx):
    # One replica per worker carries the worker's state, the others zeros.
    keep = ctx.replica_id_in_sync_group % local == 0
    return [v if keep else tf.zeros_like(v) for v in values]
  distributed = strategy.experimental_distribute_values_from_function(
      per_replica)
  summed = [strategy.reduce("SUM", v, axis=None) for v in distributed]
  for var, value in zip(variables, summed):
    var.assign(value)


def train_and_evaluate(cfg: config_lib.Config, model_dir: str,
                       build_model: Optional[Callable[..., keras.Model]] = None,
                       ) -> dict:
  """train_lib.train_and_evaluate for strategy=mirrored|multi_worker.

  Writes model.keras, labels.json, config.json, history.csv and results.json
  to model_dir (chief only) and resumes from model_dir/checkpoints. Not
  supported here: mixed precision, XLA, best.keras, per-epoch validation.
  ``build_model(schema, image_size)`` replaces the configured backbone (tests).
  """
  tc, dc = cfg.train, cfg.data
  # MultiWorkerMirroredStrategy must exist before any other TF op runs.
  strategy = setup.make_strategy(tc.strategy)
  _check_supported(tc, dc)
  chief = is_chief(strategy)
  out_dir = model_dir if chief else tempfile.mkdtemp(prefix="mlc_worker_")
  os.makedirs(out_dir, exist_ok=True)
  keras.utils.set_random_seed(tc.seed)
  if dc.deterministic:
    tf.config.experimental.enable_op_determinism()

  run = setup.prepare_run(cfg, out_dir)
  model, optimizer, checkpoint, grown = _train_state(strategy, cfg, run,
                                                     build_model)
  epoch_var = checkpoint.epoch
  chief_ckpt = os.path.join(model_dir, CHECKPOINT_DIR)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(out_dir, CHECKPOINT_DIR), max_to_keep=2)
  start_epoch = _restore(checkpoint, chief_ckpt)
  epoch_var.assign(start_epoch)

  def make_global():
    return pipeline.train_dataset(
        run.bundle.train, run.schema, image_size=dc.image_size,
        batch_size=tc.batch_size, seed=tc.seed, start_epoch=start_epoch,
        end_epoch=tc.epochs, steps_per_epoch=run.steps_per_epoch,
        augmentations=dc.augment, cache=dc.cache,
        crop_scale=dc.crop_scale, crop_ratio=dc.crop_ratio,
        data_service=dc.data_service,
        shuffle_buffer=dc.shuffle_buffer, deterministic=dc.deterministic,
        class_weights=run.class_weights, recipe=augment.Recipe.of(dc),
        factor_priors=run.factor_priors)
  iterator = iter(distribute(strategy, make_global, tc.batch_size))
  soft = bool(run.factor_priors)
  step = make_train_step(strategy, model, optimizer, run.schema,
                         run.label_smoothing, soft)
  head_metrics = metrics.weighted_metrics(run.schema, tc.top_k, soft)
  history_path = os.path.join(out_dir, "history.csv")
  board = None
  if chief:
    board = tensorboard.HeadTensorBoard(
        os.path.join(model_dir, "tensorboard"), run.schema,
        os.path.join(model_dir, "config.json"))
    board.set_model(model)
    board.on_train_begin()
  for epoch in range(start_epoch, tc.epochs):
    row = _train_epoch(strategy, step, iterator, head_metrics, epoch,
                       run.steps_per_epoch, chief_ckpt)
    log.info("epoch %d/%d: %s", epoch + 1, tc.epochs,
             ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    _append_csv(history_path, row)
    if board is not None:
      # The model is not compiled here: the board reads no optimizer of it.
      board.on_epoch_end(epoch, {
          **{k: v for k, v in row.items() if k != "epoch"},
          "learning_rate": float(keras.ops.convert_to_numpy(
              optimizer.learning_rate))})
    epoch_var.assign(epoch + 1)
    manager.save(checkpoint_number=epoch + 1)
  if board is not None:
    board.on_train_end()

  saving.save_for_inference(model, os.path.join(out_dir, "model.keras"))
  results = setup.write_results(
      model, run, cfg, out_dir, show=chief,
      extra={"strategy": tc.strategy,
             "replicas": strategy.num_replicas_in_sync, **(grown or {})})
  if chief:
    saving.embed_run_schema(out_dir)
  if not chief:
    shutil.rmtree(out_dir, ignore_errors=True)
  return results


def _check_supported(tc: config_lib.TrainConfig,
                     dc: config_lib.DataConfig) -> None:
  if dc.data_service and tc.strategy == "multi_worker":
    # Each trainer keeps its slice of global batch k; with several service
    # workers the trainers' streams interleave epochs differently, so the
    # slices would not come from the same batch.
    raise errors.SettingError("`data_service` works with `strategy`=default or "
                              "mirrored (one input pipeline), not multi_worker")
  if tc.precision != "float32" or tc.jit_compile:
    raise errors.SettingError(f"`strategy`={tc.strategy} supports float32 without "
                              "`jit_compile` only")
  if tc.monitor or tc.early_stopping_patience:
    # This loop keeps no best.keras and validates only at the end.
    raise errors.SettingError(f"`monitor` and `early_stopping_patience` are not "
                              f"supported with `strategy`={tc.strategy} yet; use the "
                              "default strategy")
  if tc.freeze_epochs:
    raise errors.SettingError(f"`freeze_epochs` is not supported with `strategy`="
                              f"{tc.strategy} yet; use the default strategy")


def _train_state(strategy, cfg: config_lib.Config, run: setup.Run,
                 build_model: Optional[Callable[..., keras.Model]]):
  """(model, optimizer, checkpoint of both and of the epoch, the
  init_from report or None), built under ``strategy``. With init_from the
  parent's weights are copied in before the checkpoint is restored (a resumed
  run overwrites them); train_heads freezes the rest before the optimizer
  is built, so it holds slots for the trainable heads only."""
  tc, dc = cfg.train, cfg.data
  with strategy.scope():
    model = setup.build_model(cfg, run.schema, build_model)
    grown = setup.init_from_parent(model, run.schema, tc)
    if tc.train_heads:
      grow.freeze_all_but(model, run.schema, tc.train_heads,
                          tc.train_backbone)
    optimizer = setup.optimizer(tc, run.steps_per_epoch * tc.epochs)
    # Built now so that a checkpoint restores the slots instead of deferring.
    optimizer.build(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  return model, optimizer, tf.train.Checkpoint(
      model=model, optimizer=optimizer, epoch=epoch), grown


def _train_epoch(strategy, step, iterator, head_metrics: dict, epoch: int,
                 steps: int, chief_ckpt: str) -> dict:
  """Runs one epoch of ``step``; returns its history.csv row (mean loss and
  every metric over the global batches)."""
  for ms in head_metrics.values():
    for m in ms:
      m.reset_state()
  loss_sum = 0.0
  for i in range(steps):
    total, _, batch = step(iterator)
    total = float(total)
    if not np.isfinite(total):
      raise setup.NonFiniteLossError(
          f"NaN or Inf loss at epoch {epoch + 1} step {i + 1}; the last "
          f"checkpoint (epoch {epoch}) is kept in {chief_ckpt}")
    loss_sum += total
    for out, ys, ws in local_batches(strategy, batch):
      for h, ms in head_metrics.items():
        for m in ms:
          m.update_state(ys[h], out[h], sample_weight=ws[h])
  sum_metrics_over_workers(
      strategy, [m for ms in head_metrics.values() for m in ms])
  row = {"epoch": epoch, "loss": loss_sum / steps}
  for h, ms in head_metrics.items():
    for m in ms:
      row[f"{h}_{m.name}"] = float(m.result())
  return row


def _restore(checkpoint: tf.train.Checkpoint, folder: str) -> int:
  """Restores the newest readable checkpoint in ``folder``; returns its epoch.

  A damaged newest checkpoint falls back to the one before it (with a
  warning); if none can be read, raises instead of starting from scratch.
  """
  state = tf.train.get_checkpoint_state(folder)
  if state is None:
    if os.path.isdir(folder) and os.listdir(folder):
      raise RuntimeError(f"{folder}: holds files but no readable 'checkpoint' "
                         "index; refusing to start from scratch (delete the "
                         "folder to do so)")
    return 0
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  errors = []
  for path in reversed(paths):
    if not os.path.isabs(path):
      path = os.path.join(folder, path)
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
      errors.append(f"{path}: {str(e).splitlines()[0][:200]}")
      log.warning("cannot restore %s (%s); trying an older checkpoint",
                  path, errors[-1])
      continue
    epoch = int(checkpoint.epoch.numpy())
    log.info("resuming from %s at epoch %d", path, epoch)
    return epoch
  raise RuntimeError(
      f"{folder}: no checkpoint could be restored; refusing to start from "
      "scratch (delete the folder to do so):\n  " + "\n  ".join(errors))


def _append_csv(path: str, row: dict) -> None:
  new = not os.path.exists(path)
  with open(path, "a", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(row))
    if new:
      writer.writeheader()
    writer.writerow(row)
