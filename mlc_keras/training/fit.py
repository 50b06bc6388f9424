"""The Keras-fit trainer (strategy=default): the run as a schedule of
phases, each compiled with its own optimizer and backed up by
ResumableBackup so that re-running the same command resumes it."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.data import augment
from mlc_keras.data import pipeline
from mlc_keras.modeling import grow
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.training import backup
from mlc_keras.training import ema
from mlc_keras.training import selection
from mlc_keras.training import setup
from mlc_keras.training import tensorboard

log = logging.getLogger("mlc_keras")

# The frozen phase's end state, handed to the fine-tuning phase.
FROZEN_PHASE_WEIGHTS = "frozen_phase.npz"


@dataclasses.dataclass(frozen=True)
class Phase:
  """Epochs [first_epoch, end_epoch) trained with one optimizer."""
  first_epoch: int
  end_epoch: int
  frozen: bool  # the backbone does not train (BatchNorm in inference mode)
  lr_scale: float
  backup_dir: str
  train_batchnorm: bool = True
  # Where this phase writes its end state for the next one. Until that file
  # exists the phase keeps its backup (a crash in between loses nothing);
  # once it exists the phase is done and is skipped on a re-run.
  hands_over: Optional[str] = None
  # The previous phase's end state, loaded before this phase trains.
  starts_from: Optional[str] = None

  @property
  def epochs(self) -> int:
    return self.end_epoch - self.first_epoch

  def is_done(self) -> bool:
    return self.hands_over is not None and os.path.exists(self.hands_over)


def phases(tc: config_lib.TrainConfig, model_dir: str) -> list[Phase]:
  """The run as phases: one, or frozen-backbone then fine-tuning (each with
  its own backup folder, since the optimizer differs)."""
  backup_dir = os.path.join(model_dir, "backup")
  if tc.freeze_epochs < 0 or not tc.finetune_lr_scale > 0:
    raise errors.SettingError("`freeze_epochs` must be >= 0 and `finetune_lr_scale` > 0")
  if not tc.freeze_epochs:
    return [Phase(0, tc.epochs, False, 1.0, backup_dir)]
  if tc.freeze_epochs >= tc.epochs:
    return [Phase(0, tc.epochs, True, 1.0, backup_dir)]
  handover = os.path.join(model_dir, FROZEN_PHASE_WEIGHTS)
  # BatchNorm stays frozen while fine-tuning: its statistics are the
  # pretrained backbone's, which small fine-tuning batches would spoil.
  return [
      Phase(0, tc.freeze_epochs, True, 1.0, backup_dir, train_batchnorm=False,
            hands_over=handover),
      Phase(tc.freeze_epochs, tc.epochs, False, tc.finetune_lr_scale,
            os.path.join(model_dir, "backup_finetune"), train_batchnorm=False,
            starts_from=handover),
  ]


def save_weights_npz(model: keras.Model, path: str) -> None:
  """All layer weights, written to a temporary file then renamed, so a crash
  leaves either the old file or the new one."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, *model.get_weights())
  os.replace(tmp, path)


def load_weights_npz(model: keras.Model, path: str) -> None:
  with np.load(path) as f:
    model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])


class StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Raises NonFiniteLossError at the first NaN or Inf batch loss, before
  any later callback (the backup) sees that batch."""

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not np.isfinite(loss):
      raise setup.NonFiniteLossError(
          f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}.")


def train_and_evaluate(cfg: config_lib.Config, model_dir: str,
                       verbose: int = 1,
                       build_model: Optional[Callable[..., keras.Model]] = None
                       ) -> dict:
  """train_lib.train_and_evaluate for strategy=default (and mirrored on
  the JAX backend: setup.data_parallel), through ``model.fit``;
  ``verbose`` is fit's (2: one line per epoch); ``build_model(schema,
  image_size)`` replaces the configured model (setup.build_model checks
  what it returns)."""
  with setup.data_parallel(cfg.train.strategy,
                           cfg.train.batch_size) as devices:
    return _train_and_evaluate(cfg, model_dir, verbose, build_model, devices)


def _train_and_evaluate(cfg: config_lib.Config, model_dir: str, verbose: int,
                        build_model, devices: int) -> dict:
  tc, dc = cfg.train, cfg.data
  if tc.precision not in setup.PRECISIONS:
    raise errors.SettingError(f"`precision` must be one of {setup.PRECISIONS}, got "
                              f"{tc.precision!r}")
  os.makedirs(model_dir, exist_ok=True)
  keras.utils.set_random_seed(tc.seed)
  if dc.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(tc.precision)

  run = setup.prepare_run(cfg, model_dir)
  val_ds = None
  if run.bundle.val is not None:
    val_ds = pipeline.eval_dataset(run.bundle.val, run.schema,
                               image_size=dc.image_size,
                               batch_size=tc.batch_size,
                               cache=_cache_validation(run.bundle.val, dc))
  strategy = setup.make_strategy(tc.strategy)
  with strategy.scope():
    model = setup.build_model(cfg, run.schema, build_model)
  grown = setup.init_from_parent(model, run.schema, tc)
  monitor, shared = _shared_callbacks(run, tc, model_dir,
                                      setup.pad_batches(val_ds, devices))
  schedule = phases(tc, model_dir)
  for phase in schedule:
    if phase.is_done():
      log.info("frozen-backbone phase already done (%s)", phase.hands_over)
      shutil.rmtree(phase.backup_dir, ignore_errors=True)
      continue
    if len(schedule) > 1:
      log.info("epochs %d-%d: backbone %s, learning rate x%g",
               phase.first_epoch + 1, phase.end_epoch,
               "frozen" if phase.frozen else "unfrozen", phase.lr_scale)
    # Padded for the devices; results below read the unpadded batches.
    _train_phase(model, phase, run, cfg, strategy, shared,
                 setup.pad_batches(val_ds, devices), model_dir, verbose)
    stopped = selection.stopped_early(shared)
    if stopped is not None:
      log.info("early stopping at epoch %d: %s did not improve for %d "
               "epochs; later phases are skipped", stopped + 1, monitor,
               tc.early_stopping_patience)
      break
  saving.save_for_inference(model, os.path.join(model_dir, "model.keras"))
  handover = os.path.join(model_dir, FROZEN_PHASE_WEIGHTS)
  if os.path.exists(handover):
    os.remove(handover)
  results = setup.write_results(model, run, cfg, model_dir, eval_ds=val_ds,
                                extra=grown)
  saving.embed_run_schema(model_dir)  # labels.json has its final thresholds
  return results


def _shared_callbacks(run: setup.Run, tc: config_lib.TrainConfig,
                      model_dir: str, val_ds: Optional[tf.data.Dataset]
                      ) -> tuple[str, list]:
  """(monitor, callbacks shared by the phases): best.keras is the best of
  the whole run, its best value restored from history.csv before each phase
  (training/selection.py); it holds no optimizer state (the backup does).
  TensorBoard draws its per-epoch confusion images from ``val_ds``."""
  monitor, mode = selection.choose_monitor(tc.monitor, run.schema, tc.top_k,
                                          val_ds is not None)
  return monitor, selection.make_callbacks(
      run.schema, monitor, mode, os.path.join(model_dir, "best.keras"),
      tc.early_stopping_patience) + [
          # After make_callbacks: its MeanOverHeads adds to the logs.
          tensorboard.HeadTensorBoard(
              os.path.join(model_dir, "tensorboard"), run.schema,
              os.path.join(model_dir, "config.json"), validation_data=val_ds)]


def _cache_validation(val, dc: config_lib.DataConfig) -> bool:
  """In-memory validation pixels while they fit val_cache_max_mb; above
  it they are decoded each epoch, so memory stays flat in the data size."""
  if pipeline.cache_fits(val.size, dc.image_size, dc.val_cache_max_mb):
    return True
  log.info("validation: %s images of %dx%d exceed val_cache_max_mb=%d; "
           "decoded every epoch instead of cached in memory",
           "?" if val.size is None else f"{val.size:,}", dc.image_size,
           dc.image_size, dc.val_cache_max_mb)
  return False


def _train_phase(model: keras.Model, phase: Phase, run: setup.Run,
                 cfg: config_lib.Config, strategy: tf.distribute.Strategy,
                 shared: list, val_ds: Optional[tf.data.Dataset],
                 model_dir: str, verbose: int) -> None:
  """Fits one phase, resuming from its backup folder when it holds one."""
  tc, dc = cfg.train, cfg.data
  if phase.starts_from and os.path.exists(phase.starts_from):
    load_weights_npz(model, phase.starts_from)
  model_lib.set_backbone_trainable(
      model, not phase.frozen, top_layers=tc.unfreeze_layers,
      train_batchnorm=phase.train_batchnorm)
  if tc.train_heads:
    grow.freeze_all_but(model, run.schema, tc.train_heads, tc.train_backbone)
  start_epoch = max(phase.first_epoch, backup.backup_epoch(phase.backup_dir))
  steps = run.steps_per_epoch
  train_ds = pipeline.train_dataset(
      run.bundle.train, run.schema, image_size=dc.image_size,
      batch_size=tc.batch_size, seed=tc.seed, start_epoch=start_epoch,
      end_epoch=phase.end_epoch, steps_per_epoch=steps,
      augmentations=dc.augment, cache=dc.cache,
      crop_scale=dc.crop_scale, crop_ratio=dc.crop_ratio,
      data_service=dc.data_service,
      shuffle_buffer=dc.shuffle_buffer, deterministic=dc.deterministic,
      class_weights=run.class_weights, recipe=augment.Recipe.of(dc),
      factor_priors=run.factor_priors)
  with strategy.scope():
    # A new optimizer per phase: the set of trainable variables changed.
    setup.compile_model(
        model, run.schema,
        setup.optimizer(tc, steps * phase.epochs, phase.lr_scale),
        tc.top_k, tc.jit_compile, label_smoothing=run.label_smoothing,
        soft=augment.Recipe.of(dc).mixes or bool(run.factor_priors))
  history = os.path.join(model_dir, "history.csv")
  # With --ema_decay the averaged weights are in the model from validation
  # to just before the backup (training/ema.py).
  swap_in, swap_out = ema.callbacks() if tc.ema_decay else ((), ())
  callbacks = [*swap_in, *shared,
      keras.callbacks.CSVLogger(history, append=start_epoch > 0),
      # Raises (keeping the backup) instead of ending the run "normally".
      StopOnNonFiniteLoss(),
      *swap_out,
      # Last: an epoch is backed up only once the callbacks above logged it
      # (a kill in between would lose its history.csv row), and a NaN step
      # raises before its weights are backed up.
      backup.ResumableBackup(
          phase.backup_dir, save_freq=tc.backup_every_steps or "epoch",
          delete_checkpoint=phase.hands_over is None, history_csv=history),
  ]
  selection.restore_from_history(shared, history, start_epoch)
  if start_epoch > phase.first_epoch:
    log.info("resuming from the backup in %s at epoch %d", phase.backup_dir,
             start_epoch)
  model.fit(train_ds, initial_epoch=phase.first_epoch, epochs=phase.end_epoch,
            steps_per_epoch=steps, validation_data=val_ds,
            callbacks=callbacks, shuffle=False, verbose=verbose)
  if phase.hands_over:
    save_weights_npz(model, phase.hands_over)
    shutil.rmtree(phase.backup_dir, ignore_errors=True)
