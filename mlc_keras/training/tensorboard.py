"""TensorBoard logs grouped by head, with the run's settings as HParams.

Keras' own TensorBoard callback writes every epoch log under one flat list
(``epoch_shape_acc``, ``epoch_colour_loss``, ...), which for a many-head
model is a long alphabetical wall. HeadTensorBoard writes, per epoch:

  <log_dir>/train/       <head>/<metric> (``shape/acc``, ``shape/loss``,
                         ``shape/balanced_acc``, ``shape/top5``) and
                         overall/loss, overall/mean_balanced_accuracy,
                         overall/learning_rate
  <log_dir>/validation/  the same tags for the val_ logs, so TensorBoard
                         draws train and validation in one chart per tag

and, given the validation data (the fit trainer passes it), in validation/:

  <head>/confusion       for each softmax head, its confusion matrix drawn
                         by evaluation/plots.py (rows: true class, as shares
                         of its labelled images; counts in the cells),
                         as an image
  <head>/f1/<tag>        for each tag head, each tag's F1 at its threshold
                         (0.5 until thresholds are fitted after training)

computed from one extra prediction pass per epoch over the first
CONFUSION_IMAGES validation images (rows whose label is missing are left
out), and once, when training begins, an HParams session in <log_dir>
holding the run's config flattened to ``section.field`` scalars
(``train.lr``, ``data.image_size``). The HParams dashboard shows each scalar tag's last
value beside them, so the final metrics of several runs compare side by
side under ``tensorboard --logdir <folder of runs>``. Steps are epochs
completed (1 for the first), as curves.png counts them.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.evaluation import plots
from mlc_keras.evaluation import scoring

OVERALL = "overall"
TRAIN, VALIDATION = "train", "validation"
# Epoch logs about the whole model, not one head.
_OVERALL_NAMES = ("loss", "mean_balanced_accuracy", "learning_rate")
_SCALARS = (bool, str, int, float)
# The per-epoch confusion images and tag F1s read the first this-many
# validation images: enough for a picture of a few dozen classes, and a
# bounded cost (one more forward pass over at most this many images per
# epoch) whatever the size of the validation set.
CONFUSION_IMAGES = 512
# A confusion image's longer side, in pixels, at most (a many-class
# matrix draws on a large figure; its cells carry no text above
# plots.ANNOTATE_MAX_CLASSES classes, so fewer pixels lose nothing).
IMAGE_MAX_PIXELS = 1200


def scalar_tag(name: str, heads: Sequence[str]) -> tuple[str, str]:
  """An epoch log name -> (run, tag): ``val_shape_acc`` -> ("validation",
  "shape/acc"), ``loss`` -> ("train", "overall/loss"). The longest head
  that prefixes the name owns it; a name owned by no head goes under
  overall/."""
  run = TRAIN
  if name.startswith("val_"):
    run, name = VALIDATION, name[len("val_"):]
  if name not in _OVERALL_NAMES:
    for head in sorted(heads, key=len, reverse=True):
      if name.startswith(head + "_"):
        return run, f"{head}/{name[len(head) + 1:]}"
  return run, f"{OVERALL}/{name}"


def flatten_config(config: Mapping, prefix: str = "") -> dict:
  """A nested config dict (Config.to_dict()) -> {"section.field": value}
  with the values HParams takes: bools, numbers and strings as they are,
  a tuple of scalars (or of pairs) joined by ", " (and ":"). Unset settings (None) and
  anything else are left out: HParams has no null, and a placeholder
  string would clash with the number the same field holds in another run."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, str, int, float, np.generic)):
      flat[name] = value.item() if isinstance(value, np.generic) else value
    elif isinstance(value, (list, tuple)):
      text = _joined(value)
      if text is not None:
        flat[name] = text
  return flat


def _joined(values) -> Optional[str]:
  """("flip", "crop") -> "flip, crop"; (("shape", 2.0),) -> "shape:2.0";
  None when an item is neither a scalar nor a tuple of scalars."""
  items = []
  for v in values:
    if isinstance(v, _SCALARS):
      items.append(str(v))
    elif isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS)
                                              for x in v):
      items.append(":".join(str(x) for x in v))
    else:
      return None
  return ", ".join(items)


def confusion_counts(labels: np.ndarray, probs: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[true, predicted] counts of a softmax head, predicted = the argmax of
  ``probs`` ([n, num_classes]); rows whose label is MISSING (-1) are left
  out. plots.normalise_confusion turns it into per-true-class shares."""
  labels = np.asarray(labels).reshape(-1)
  probs = np.asarray(probs).reshape(len(labels), num_classes)
  present = labels != heads_lib.MISSING
  return scoring.confusion_matrix(labels[present],
                                  probs[present].argmax(axis=-1), num_classes)


def tag_f1(probs: np.ndarray, truth: np.ndarray, labelled: np.ndarray,
           thresholds: Sequence[float]) -> np.ndarray:
  """Each tag's F1 over the ``labelled`` rows (a tag is on iff its score
  >= its threshold, compared in float32 as tagging.decide does); 0 for a
  tag neither present nor predicted."""
  labelled = np.asarray(labelled, bool)
  on = (np.asarray(probs, np.float32)[labelled]
        >= np.asarray(thresholds, np.float32))
  true = np.asarray(truth)[labelled] > 0.5
  hits = (on & true).sum(axis=0)
  both = on.sum(axis=0) + true.sum(axis=0)
  return np.divide(2.0 * hits, both, out=np.zeros(on.shape[1]),
                   where=both > 0)


def confusion_image(counts: np.ndarray, classes: Sequence[str],
                    title: str) -> np.ndarray:
  """plots.confusion_figure of ``counts`` as a [1, height, width, 3] uint8
  image for tf.summary.image, its longer side at most IMAGE_MAX_PIXELS."""
  fig = plots.confusion_figure(counts, classes, title)
  fig.set_dpi(min(100.0, IMAGE_MAX_PIXELS / max(fig.get_size_inches())))
  fig.canvas.draw()
  rgb = np.array(fig.canvas.buffer_rgba())[..., :3]
  plots.pyplot().close(fig)
  return rgb[np.newaxis]


class HeadTensorBoard(keras.callbacks.Callback):
  """Writes the epoch logs as ``<head>/<metric>`` scalars in train/ and
  validation/ runs under ``log_dir`` and the run's settings as an HParams
  session (see the module docstring).

  Args:
    log_dir: the folder TensorBoard reads (created when missing).
    heads: the model's LabelSchema, or just its head names (then no
      validation_data: the pictures need each head's kind and classes).
    config: the run's config as a dict (Config.to_dict()), or the path of a
      config.json read when training begins (it is written before), or None
      for no HParams.
    validation_data: batches of (images, {head: labels}, {head: weights})
      (pipeline.eval_dataset; a weight of 0 marks a missing label), read
      at each epoch's end for the confusion images and tag F1s; None for
      scalars only.
    confusion_images: how many validation images those read (the first
      ones; CONFUSION_IMAGES by default).

  Place it after the callbacks that add to the logs (selection's
  MeanOverHeads): they share the logs dict. One instance may serve several
  fit() calls (the fine-tuning phases); the HParams session is written once.
  """

  def __init__(self, log_dir: str,
               heads: Union[heads_lib.LabelSchema, Sequence[str]],
               config: Union[Mapping, str, None] = None,
               validation_data: Optional[tf.data.Dataset] = None,
               confusion_images: int = CONFUSION_IMAGES):
    super().__init__()
    self.log_dir = log_dir
    self.schema = (heads if isinstance(heads, heads_lib.LabelSchema)
                   else None)
    self.heads = tuple(self.schema.names if self.schema else heads)
    if validation_data is not None and self.schema is None:
      raise ValueError("validation_data needs the LabelSchema as `heads` (the "
                       "pictures need each head's kind and classes); "
                       f"received: heads={list(self.heads)}")
    self.config = config
    self.validation_data = validation_data
    self.confusion_images = confusion_images
    self._writers = {}
    self._hparams_written = False

  def _writer(self, run: str):
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(
          os.path.join(self.log_dir, run) if run else self.log_dir)
    return self._writers[run]

  def _settings(self) -> Optional[dict]:
    config = self.config
    if isinstance(config, str):
      if not os.path.exists(config):
        return None
      with open(config, encoding="utf-8") as f:
        config = json.load(f)
    return None if config is None else flatten_config(config)

  def on_train_begin(self, logs=None):
    settings = None if self._hparams_written else self._settings()
    if settings:
      # Imported here: the hparams plugin comes with the tensorboard
      # package, which only this callback needs.
      from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
      with self._writer("").as_default():
        hp.hparams(settings)
      self._writer("").flush()
      self._hparams_written = True

  def on_epoch_end(self, epoch, logs=None):
    logs = dict(logs or {})
    if "learning_rate" not in logs:
      rate = self._learning_rate()
      if rate is not None:
        logs["learning_rate"] = rate
    by_run = {}
    for name, value in logs.items():
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      run, tag = scalar_tag(name, self.heads)
      by_run.setdefault(run, []).append((tag, value))
    for run, scalars in by_run.items():
      writer = self._writer(run)
      with writer.as_default():
        for tag, value in scalars:
          tf.summary.scalar(tag, value, step=epoch + 1)
      writer.flush()
    if self.validation_data is not None and self.confusion_images > 0:
      self._write_validation_pictures(epoch + 1)

  def _write_validation_pictures(self, step: int) -> None:
    """Confusion images and tag F1s from one prediction pass over the first
    confusion_images validation images."""
    probs, labels, weights = self._predict_validation()
    if probs is None:
      return
    writer = self._writer(VALIDATION)
    with writer.as_default():
      for head in self.schema.heads:
        present = weights[head.name] > 0
        # A single-label head (softmax, ordinal): one class per image, so a
        # confusion matrix; a multi-label one (tags): a decision per tag.
        if head.kind_impl.single_label:
          y = np.where(present, labels[head.name].astype(np.int64),
                       heads_lib.MISSING)
          counts = confusion_counts(y, probs[head.name], head.num_classes)
          tf.summary.image(
              f"{head.name}/confusion",
              confusion_image(counts, head.classes,
                              f"{head.name}, epoch {step}"),
              step=step,
              description=f"the first {len(present)} validation images, "
                          f"{int(present.sum())} labelled")
        elif present.any():
          f1 = tag_f1(probs[head.name], labels[head.name], present,
                      head.tag_thresholds())
          for tag, value in zip(head.classes, f1):
            tf.summary.scalar(f"{head.name}/f1/{tag}", float(value),
                              step=step)
    writer.flush()

  def _predict_validation(self):
    """({head: probabilities}, {head: labels}, {head: weights}) over the
    first confusion_images validation images, or Nones when there are
    none."""
    probs, labels, weights = {}, {}, {}
    seen = 0
    for images, ys, ws in self.validation_data:
      if seen >= self.confusion_images:
        break
      out = self.model.predict_on_batch(np.asarray(images))
      for name in self.heads:
        probs.setdefault(name, []).append(
            np.asarray(keras.ops.convert_to_numpy(out[name]), np.float32))
        labels.setdefault(name, []).append(np.asarray(ys[name]))
        weights.setdefault(name, []).append(np.asarray(ws[name]))
      seen += len(images)
    if not seen:
      return None, None, None
    n = min(seen, self.confusion_images)
    return tuple({k: np.concatenate(v)[:n] for k, v in d.items()}
                 for d in (probs, labels, weights))

  def on_train_end(self, logs=None):
    for writer in self._writers.values():
      writer.close()
    self._writers = {}

  def _learning_rate(self) -> Optional[float]:
    optimizer = getattr(self.model, "optimizer", None)
    # A mixed-precision run wraps its optimizer in a LossScaleOptimizer.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    try:
      return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
      return None
