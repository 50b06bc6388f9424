"""The fit path's resume state: ResumableBackup (a BackupAndRestore that
never leaves a torn backup and resumes mid-epoch exactly) and check_backup,
which validates or repairs a backup folder before a run resumes from it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

import keras
import numpy as np

from mlc_keras.data import manifest as manifest_lib

log = logging.getLogger("mlc_keras")


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

