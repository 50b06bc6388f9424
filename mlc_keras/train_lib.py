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
import shutil
from typing import Optional
import uuid

import keras
import numpy as np
import tensorflow as tf

from mlc_keras import config as config_lib
from mlc_keras import heads as heads_lib
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib
from mlc_keras.data import demo
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources as sources_lib
from mlc_keras.data import tfrecords

log = logging.getLogger("mlc_keras")

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class DataBundle:
  schema: heads_lib.LabelSchema
  train: sources_lib.Source
  val: Optional[sources_lib.Source]
  train_size: int
  # Rows left out under --quarantine (see write_quarantine).
  quarantined: list = dataclasses.field(default_factory=list)


def load_data(cfg: config_lib.DataConfig, seed: int) -> DataBundle:
  """Resolves the configured source into a schema and train/val sources,
  validating labels and (for manifests) every image before training."""
  sources = [s for s in (cfg.manifest, cfg.tfrecord, cfg.tfds) if s]
  if len(sources) > 1:
    raise manifest_lib.DataError(
        "give one of --manifest, --tfrecord or --tfds, not several")
  schema = heads_lib.LabelSchema.load(cfg.heads_file) if cfg.heads_file else None

  if cfg.tfds:
    pairs = sources_lib.parse_tfds_heads(cfg.tfds_heads)
    train, tfds_schema = sources_lib.tfds_source(cfg.tfds, cfg.tfds_train_split, pairs,
                                          cfg.tfds_data_dir)
    val = None
    if cfg.tfds_val_split:
      val, _ = sources_lib.tfds_source(cfg.tfds, cfg.tfds_val_split, pairs,
                                cfg.tfds_data_dir)
    if schema is not None and schema.names != tfds_schema.names:
      raise manifest_lib.DataError(
          f"{cfg.heads_file}: heads {list(schema.names)} do not match "
          f"--tfds_heads {list(tfds_schema.names)}")
    schema = schema or tfds_schema
    return DataBundle(schema, train, val, sources_lib.count(train))

  if cfg.tfrecord:
    if schema is None:
      folder = os.path.dirname(os.path.abspath(cfg.tfrecord))
      schema = heads_lib.LabelSchema.load(os.path.join(folder, "labels.json"))
    train = tfrecords.tfrecord_source(cfg.tfrecord, schema)
    val = tfrecords.tfrecord_source(cfg.val_tfrecord, schema) if cfg.val_tfrecord else None
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
    raise ValueError("--label_columns and --heads_file both choose the heads; "
                     "give one")
  train_rec, schema = manifest_lib.read_manifest(
      manifest, schema, cfg.image_column,
      label_columns=cfg.label_columns or None, image_root=cfg.image_root,
      quarantine=quarantined)
  if val_manifest:
    val_rec, _ = manifest_lib.read_manifest(
        val_manifest, schema, cfg.image_column, image_root=cfg.image_root,
        quarantine=quarantined)
  elif cfg.val_fraction > 0:
    train_rec, val_rec = sources_lib.split_records(train_rec, cfg.val_fraction, seed)
  else:
    val_rec = None
  if cfg.validate_images or cfg.quarantine:
    checked = []
    for rec in (train_rec, val_rec):
      if rec is None:
        checked.append(rec)
      elif quarantined is None:
        sources_lib.check_images(rec, max_pixels=cfg.max_image_pixels)
        checked.append(rec)
      else:
        bad = sources_lib.screen_images(rec, max_pixels=cfg.max_image_pixels)
        quarantined.extend(bad)
        bad_lines = {b.line for b in bad}
        checked.append(rec.take(np.array(
            [l not in bad_lines for l in rec.lines], bool)))
    train_rec, val_rec = checked
  if quarantined:
    quarantined.sort(key=lambda b: (b.origin, b.line))
  train = sources_lib.records_source(train_rec)
  val = sources_lib.records_source(val_rec) if val_rec is not None and len(val_rec) else None
  return DataBundle(schema, train, val, len(train_rec), quarantined or [])


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
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    # The cluster comes from the TF_CONFIG environment variable.
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


class BackupError(manifest_lib.DataError):
  """A backup folder that cannot be resumed from (corrupt or inconsistent)."""


# The backup pair: the training state and its metadata. The state is an .npz
# of every model and optimizer variable, written by _save_state: about 3x
# faster than Model.save_weights, whose HDF5 writer walks every layer and
# rebuilds attribute skip-sets (0.15 s against 0.5 s for MobileNetV2 and
# AdamW; BUILD_NOTES.md, backup overhead).
BACKUP_STATE = "latest.state.npz"
_METADATA = "training_metadata.json"
_PREVIOUS = ".bkp"  # BackupAndRestore's suffix for the double checkpoint
_LEGACY_WEIGHTS = "latest.weights.h5"  # Keras' own format, not resumable here


def _state_variables(model: keras.Model) -> list:
  """Every variable a resumed run needs: weights, BatchNorm statistics, seed
  states, and the optimizer's step and moments (built if not yet)."""
  optimizer = model.optimizer
  if optimizer is not None and not optimizer.built:
    optimizer.build(model.trainable_variables)
  return list(model.variables) + (list(optimizer.variables) if optimizer else [])


def _save_state(model: keras.Model, path: str, token: str) -> None:
  variables = _state_variables(model)
  arrays = {f"v{i}": v.numpy()
            for i, v in enumerate(variables)}
  with open(path, "wb") as f:
    np.savez(f, token=np.array(token),
             paths=np.array([v.path for v in variables]), **arrays)
    f.flush()
    os.fsync(f.fileno())


def read_state(path: str) -> tuple[str, list[str], list[np.ndarray]]:
  """(token, variable paths, arrays) of a backup state file; every array is
  read, so a truncated or garbled file raises here (zip CRCs)."""
  with np.load(path, allow_pickle=False) as f:
    paths = [str(p) for p in f["paths"]]
    return (str(f["token"]), paths, [f[f"v{i}"] for i in range(len(paths))])


def _load_state(model: keras.Model, path: str) -> None:
  _, paths, arrays = read_state(path)
  variables = _state_variables(model)
  # Compared by order, shape and dtype, not by path: paths carry layer names
  # that Keras numbers per process (dense_3), so the same model rebuilt can
  # differ in them.
  mismatch = next((i for i, (v, a) in enumerate(zip(variables, arrays))
                   if tuple(v.shape) != a.shape
                   or np.dtype(v.dtype) != a.dtype), None)
  if mismatch is not None or len(arrays) != len(variables):
    if mismatch is None:
      diff = (f"{len(arrays)} variables in the backup, {len(variables)} in "
              "the model")
    else:
      v, a = variables[mismatch], arrays[mismatch]
      diff = (f"variable {mismatch} is {paths[mismatch]} {a.shape} {a.dtype} "
              f"in the backup, {v.path} {tuple(v.shape)} "
              f"{np.dtype(v.dtype)} in the model")
    raise BackupError(
        f"{path} was written by another model or optimizer ({diff}). Resume "
        "with the flags of the interrupted run, or delete "
        f"{os.path.dirname(path)} to start the run over from epoch 0.")
  for v, a in zip(variables, arrays):
    v.assign(a)


def _check_pair(state: str, metadata: str) -> dict:
  """The metadata of one (state, metadata) backup pair; raises ValueError
  saying what is wrong with it."""
  for path in (state, metadata):
    if not os.path.exists(path):
      raise ValueError(f"{path} is missing")
  try:
    with open(metadata, encoding="utf-8") as f:
      meta = json.load(f)
    int(meta["epoch"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{metadata} is unreadable ({e})") from e
  try:
    token = read_state(state)[0]
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{state} is unreadable ({e})") from e
  if token != meta.get("token"):
    raise ValueError(f"{state} and {metadata} come from different saves "
                     "(the run stopped while writing its backup)")
  return meta


def check_backup(backup_dir: str) -> dict:
  """Validates a BackupAndRestore folder before fit and returns the metadata
  ({"epoch", ...}) that the run will resume from ({} when there is nothing to
  resume).

  Keras falls back to the previous (double_checkpoint) backup only when h5py
  raises OSError; a garbled metadata file, a weights file without metadata or
  metadata without weights make it crash obscurely or resume with untrained
  weights. Here, when the latest pair is unusable, the previous pair is
  copied over it (so Keras and the data pipeline agree on the epoch); when
  neither is usable a BackupError names the files.
  """
  state = os.path.join(backup_dir, BACKUP_STATE)
  metadata = os.path.join(backup_dir, _METADATA)
  pairs = [(state, metadata),
           (state + _PREVIOUS, metadata + _PREVIOUS)]
  legacy = os.path.join(backup_dir, _LEGACY_WEIGHTS)
  if os.path.exists(legacy) and not os.path.exists(state):
    raise BackupError(
        f"{legacy} is a backup in Keras' own format, which this version does "
        f"not resume from (it writes {BACKUP_STATE}). Resume with the version "
        f"that wrote it, or delete {backup_dir} to start the run over from "
        "epoch 0.")
  if not any(os.path.exists(p) for pair in pairs for p in pair):
    return {}
  problems = []
  for i, (w, m) in enumerate(pairs):
    try:
      meta = _check_pair(w, m)
    except ValueError as e:
      problems.append(str(e))
      continue
    if i:
      log.warning("the latest backup is unusable (%s); resuming from the "
                  "previous one, epoch %d", problems[0], int(meta["epoch"]))
      for src, dst in zip(pairs[i], pairs[0]):
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    return meta
  raise BackupError(
      f"cannot resume from the backup in {backup_dir}: {problems[0]}; "
      f"previous backup: {problems[1]}. Delete {backup_dir} to start the run "
      "over from epoch 0.")


def backup_epoch(backup_dir: str) -> int:
  """The epoch a BackupAndRestore in ``backup_dir`` will resume at (0 if
  none), after check_backup has validated (or repaired) the folder."""
  return int(check_backup(backup_dir).get("epoch", 0))


def _link_or_copy(src: str, dst: str) -> None:
  tmp = dst + ".tmp"
  if os.path.exists(tmp):
    os.remove(tmp)
  try:
    os.link(src, tmp)  # no copy: src is replaced, never rewritten in place
  except OSError:
    shutil.copyfile(src, tmp)
  os.replace(tmp, dst)


def _drop_history_rows(path: str, first_epoch: int) -> None:
  """Drops CSVLogger rows of epochs >= first_epoch, in place (a CSVLogger
  that already opened the file in append mode keeps appending at its end)."""
  if not os.path.exists(path):
    return
  with open(path, "r+", newline="", encoding="utf-8") as f:
    lines = f.readlines()
    keep = lines[:1] + [l for l in lines[1:]
                        if not l.strip() or int(l.split(",", 1)[0]) < first_epoch]
    if len(keep) < len(lines):
      f.seek(0)
      f.writelines(keep)
      f.truncate()


class ResumableBackup(keras.callbacks.BackupAndRestore):
  """BackupAndRestore (double_checkpoint) with these fixes, for Keras 3.15:

  * A save never leaves a half-written latest backup: the new pair is
    written beside it (and fsynced) and renamed into place, the previous pair
    is kept as the .bkp pair, and a token ties each state file to its
    metadata (see check_backup). Keras writes straight over its files.
  * Both pairs are validated before resuming (check_backup), not only when
    h5py raises OSError.
  * The state (every model and optimizer variable) is an .npz, about 3x
    faster to write than Model.save_weights' HDF5.
  * A mid-epoch backup (save_freq=N) resumes exactly: Keras restores the
    mid-epoch weights but replays the epoch from its first batch, training
    those batches twice. Here the first ``batches_done`` batches of the
    resumed epoch are replayed (the data pipeline restarts the epoch too) and
    the backup is loaded again after them, so training goes on from the
    state it was saved in. The replay costs those batches' time, and the
    epoch's training metrics include them.
  * Keras sets the epoch it records only at an epoch's end, so a mid-epoch
    save in the first epoch after a resume recorded epoch 0.

  ``history_csv``: a CSVLogger file (append mode) whose rows for the epochs
  about to be re-run are dropped on resume, so each epoch has one row even
  when the run resumes from an older backup or was killed between logging an
  epoch and backing it up.
  """

  def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True,
               history_csv=None):
    super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True,
                     delete_checkpoint=delete_checkpoint)
    self.history_csv = history_csv
    self._replay = 0
    # The state is written by _save_state, not Model.save_weights.
    self._weights_path = os.path.join(backup_dir, BACKUP_STATE)
    self._prev_weights_path = self._weights_path + _PREVIOUS

  def on_train_begin(self, logs=None):
    if not self.model.built:
      raise ValueError("ResumableBackup needs a built model before fit()")
    # Validates both pairs, promotes the previous one if the latest is
    # unusable, or raises BackupError naming the files.
    meta = check_backup(self.backup_dir)
    self._replay = 0
    if not meta:
      return
    _load_state(self.model, self._weights_path)
    self.model._initial_epoch = int(meta["epoch"])  # pylint: disable=protected-access
    self._replay = int(meta.get("batches_done", 0))
    if self.history_csv:
      _drop_history_rows(self.history_csv, int(meta["epoch"]))

  def on_epoch_begin(self, epoch, logs=None):
    self._current_epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self._replay:
      if batch + 1 >= self._replay:
        _load_state(self.model, self._weights_path)
        self._replay = 0
        self._last_batch_seen = batch
        self._batches_seen_since_last_saving = 0
      return
    super().on_train_batch_end(batch, logs)

  def _save_model(self):
    os.makedirs(self.backup_dir, exist_ok=True)
    token = uuid.uuid4().hex
    done = 0 if self.save_freq == "epoch" else self._last_batch_seen + 1
    new_state = os.path.join(self.backup_dir, "incoming.state.npz")
    new_metadata = os.path.join(self.backup_dir, "incoming_metadata.json")
    _save_state(self.model, new_state, token)
    with open(new_metadata, "w", encoding="utf-8") as f:
      json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen,
                 "batches_done": done, "token": token}, f)
    # At every moment one of the two pairs is whole and consistent.
    if (os.path.exists(self._weights_path)
        and os.path.exists(self._training_metadata_path)):
      _link_or_copy(self._weights_path, self._prev_weights_path)
      _link_or_copy(self._training_metadata_path,
                    self._prev_training_metadata_path)
    os.replace(new_state, self._weights_path)
    os.replace(new_metadata, self._training_metadata_path)


def _optimizer(cfg: config_lib.TrainConfig, total_steps: int,
               lr_scale: float = 1.0):
  peak = cfg.learning_rate * lr_scale
  warmup = min(max(total_steps // 10, 1), 1000)
  schedule = keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=peak / 10,
      decay_steps=max(total_steps - warmup, 1), alpha=0.01,
      warmup_target=peak, warmup_steps=warmup)
  if cfg.optimizer == "adamw":
    return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
  if cfg.optimizer == "sgd":
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
  raise ValueError(f"--optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


FROZEN_PHASE_WEIGHTS = "frozen_phase.npz"


@dataclasses.dataclass(frozen=True)
class Phase:
  """Epochs [first_epoch, end_epoch) trained with one optimizer."""
  first_epoch: int
  end_epoch: int
  frozen: bool
  lr_scale: float
  backup_dir: str


def phases(tc: config_lib.TrainConfig, model_dir: str) -> list[Phase]:
  """The run as phases: one, or frozen-backbone then fine-tuning (each with
  its own backup folder, since the optimizer differs)."""
  backup = os.path.join(model_dir, "backup")
  if tc.freeze_epochs < 0 or not tc.finetune_lr_scale > 0:
    raise ValueError("--freeze_epochs must be >= 0 and --finetune_lr_scale > 0")
  if not tc.freeze_epochs:
    return [Phase(0, tc.epochs, False, 1.0, backup)]
  frozen = Phase(0, min(tc.freeze_epochs, tc.epochs), True, 1.0, backup)
  if tc.freeze_epochs >= tc.epochs:
    return [frozen]
  return [frozen, Phase(tc.freeze_epochs, tc.epochs, False, tc.finetune_lr_scale,
                        os.path.join(model_dir, "backup_finetune"))]


def save_weights_npz(model: keras.Model, path: str) -> None:
  """All layer weights, written to a temporary file then renamed, so a crash
  leaves either the old file or the new one."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, *model.get_weights())
  os.replace(tmp, path)


def load_weights_npz(model: keras.Model, path: str) -> None:
  with np.load(path) as f:
    model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])


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
  full_steps = pipeline.steps_for(bundle.train_size, tc.batch_size, bundle.train.name)
  steps = tc.steps_per_epoch or full_steps
  class_weights = pipeline.class_weights_from(tc.class_weight, bundle.train, schema)
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
  val_ds = None
  if bundle.val is not None:
    val_ds = pipeline.eval_dataset(bundle.val, schema, image_size=dc.image_size,
                               batch_size=tc.batch_size, cache=True)

  strategy = make_strategy(tc.strategy)
  with strategy.scope():
    model = model_lib.build_model(schema, dc.image_size, mc.backbone, mc.weights,
                                  mc.dropout, mc.bn_momentum)

  monitor = "val_loss" if val_ds is not None else "loss"
  # Shared by the phases, so best.keras is the best of the whole run.
  best = keras.callbacks.ModelCheckpoint(
      os.path.join(model_dir, "best.keras"), monitor=monitor,
      save_best_only=True)
  tensorboard = keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard"))
  run_phases = phases(tc, model_dir)
  marker = os.path.join(model_dir, FROZEN_PHASE_WEIGHTS)
  for i, phase in enumerate(run_phases):
    hands_over = i < len(run_phases) - 1
    if hands_over and os.path.exists(marker):
      log.info("frozen-backbone phase already done (%s)", marker)
      shutil.rmtree(phase.backup_dir, ignore_errors=True)
      continue
    if not phase.frozen and i > 0 and os.path.exists(marker):
      load_weights_npz(model, marker)
    model_lib.set_backbone_trainable(
        model, not phase.frozen, top_layers=tc.unfreeze_layers,
        train_batchnorm=len(run_phases) == 1)
    start_epoch = max(phase.first_epoch, backup_epoch(phase.backup_dir))
    train_ds = pipeline.train_dataset(
        bundle.train, schema, image_size=dc.image_size, batch_size=tc.batch_size,
        seed=tc.seed, start_epoch=start_epoch, end_epoch=phase.end_epoch,
        steps_per_epoch=steps, augmentations=dc.augment, cache=dc.cache,
        shuffle_buffer=dc.shuffle_buffer, deterministic=dc.deterministic,
        class_weights=class_weights)
    with strategy.scope():
      # A new optimizer per phase: the set of trainable variables changed.
      compile_model(model, schema,
                    _optimizer(tc, steps * (phase.end_epoch - phase.first_epoch),
                               phase.lr_scale),
                    tc.top_k, tc.jit_compile)
    callbacks = [
        best, tensorboard,
        keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"),
                                  append=start_epoch > 0),
        # raise_error=True: a NaN run must fail loudly and keep its backup.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        # Last: an epoch is backed up only once the callbacks above logged it
        # (a kill in between would lose its history.csv row), and a NaN step
        # raises before its weights are backed up.
        # A frozen phase keeps its backup until its end state is saved as
        # the marker below: a crash in between then loses nothing.
        ResumableBackup(
            phase.backup_dir, save_freq=tc.backup_every_steps or "epoch",
            delete_checkpoint=not hands_over,
            history_csv=os.path.join(model_dir, "history.csv")),
    ]
    if start_epoch > phase.first_epoch:
      log.info("resuming from the backup in %s at epoch %d", phase.backup_dir,
               start_epoch)
    if len(run_phases) > 1:
      log.info("epochs %d-%d: backbone %s, learning rate x%g",
               phase.first_epoch + 1, phase.end_epoch,
               "frozen" if phase.frozen else "unfrozen", phase.lr_scale)
    model.fit(train_ds, initial_epoch=phase.first_epoch, epochs=phase.end_epoch,
              steps_per_epoch=steps, validation_data=val_ds,
              callbacks=callbacks, shuffle=False,
              verbose=1 if os.environ.get("MLC_QUIET") != "1" else 2)
    if hands_over:
      save_weights_npz(model, marker)
      shutil.rmtree(phase.backup_dir, ignore_errors=True)
  model.save(os.path.join(model_dir, "model.keras"))
  if os.path.exists(marker):
    os.remove(marker)

  eval_source = bundle.val if bundle.val is not None else bundle.train
  eval_ds = val_ds if val_ds is not None else pipeline.eval_dataset(
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
