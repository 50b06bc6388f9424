"""The tf.data pipeline: a Source -> decode -> resize/augment -> batches.

Every element the model sees is ``(image, {head: label}, {head: weight})``:
``image`` is uint8 [S, S, 3], ``label`` an int32 class index (a tag head's: a
float32 0/1 vector over its tags) and ``weight`` a float32 that is 0 wherever
the label is missing (for a tag head, per sample: the whole row). Missing labels are -1 in
stored data; the loss is handed a clamped 0 there (a -1 crashes it on CPU) and
the zero weight removes it from loss, gradients and metrics.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import augment as augment_lib
from mlc_keras.data import imageio
from mlc_keras.data import manifest
from mlc_keras.data import sources

AUTOTUNE = tf.data.AUTOTUNE
AUGMENTATIONS = ("flip", "crop", "resized_crop", "colour", "randaugment",
                 "erasing")
# Inception's / ResNet's random resized crop: 8%-100% of the area, aspect
# 3/4-4/3 (torchvision's RandomResizedCrop defaults are the same).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_GRAPH_SEED = 87654321


def _to_pixels(item, image_size: int, encoded: bool):
  if encoded:
    return imageio.decode_and_resize(item, image_size)
  return imageio.resize(item, image_size)


def check_augmentations(kinds: Sequence[str],
                        crop_scale: Sequence[float] = CROP_SCALE,
                        crop_ratio: Sequence[float] = CROP_RATIO) -> None:
  """Raises ValueError naming the flag for an unknown augmentation or a
  crop range that is not lo <= hi inside its bounds."""
  unknown = set(kinds) - set(AUGMENTATIONS)
  if unknown:
    raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from "
                     f"{AUGMENTATIONS}")
  config_lib.crop_range("crop_scale", crop_scale, 1.0)
  config_lib.crop_range("crop_ratio", crop_ratio, None)


def _crop_seed(seed: tf.Tensor) -> tf.Tensor:
  # Folded in, not split off: tf.random.split(seed, 5) below keeps giving
  # the flip/crop/colour pixels of runs made before resized_crop existed.
  return tf.random.experimental.stateless_fold_in(seed, 5)


def _pixels(item, seed, image_size: int, encoded: bool, kinds: Sequence[str],
            crop_scale, crop_ratio):
  """One source item -> uint8 [S, S, 3]; with "resized_crop" in kinds the
  random window is cut while decoding (imageio.random_resized_crop)."""
  if "resized_crop" not in kinds:
    return _to_pixels(item, image_size, encoded)
  if encoded:
    return imageio.random_resized_crop(item, image_size, _crop_seed(seed),
                                       crop_scale, crop_ratio)
  return imageio.resize(imageio.crop_pixels(item, _crop_seed(seed),
                                            crop_scale, crop_ratio),
                        image_size)


def augment(image: tf.Tensor, seed: tf.Tensor, kinds: Sequence[str],
            crop_scale: Sequence[float] = CROP_SCALE,
            crop_ratio: Sequence[float] = CROP_RATIO,
            recipe: augment_lib.Recipe = augment_lib.Recipe()) -> tf.Tensor:
  """Seeded (stateless) augmentation of one uint8 image: the same seed gives
  the same pixels, so runs and resumed runs are reproducible.
  "resized_crop" here crops these pixels and resizes back to their size;
  train_dataset instead cuts it while decoding, from the full image.
  "randaugment" and "erasing" (data/augment.py, settings in ``recipe``)
  come last, erasing after everything."""
  check_augmentations(kinds, crop_scale, crop_ratio)
  if "resized_crop" in kinds:
    side = image.shape[0] or tf.shape(image)[0]
    image = _pixels(image, seed, side, False, kinds, crop_scale, crop_ratio)
  seeds = tf.random.split(seed, 5)
  if "flip" in kinds:
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
  if "crop" in kinds:
    size = tf.shape(image)[0]
    pad = tf.maximum(size // 8, 1)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seeds[1])
  if "colour" in kinds:
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, 0.1, seeds[2])
    x = tf.image.stateless_random_contrast(x, 0.8, 1.2, seeds[3])
    x = tf.image.stateless_random_saturation(x, 0.8, 1.2, seeds[4])
    image = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
  # Folded in like _crop_seed: the older kinds keep their pixels.
  fold = tf.random.experimental.stateless_fold_in
  if "randaugment" in kinds:
    image = augment_lib.randaugment(image, fold(seed, 6),
                                    recipe.randaugment_ops,
                                    recipe.randaugment_magnitude)
  if "erasing" in kinds:
    image = augment_lib.random_erasing(image, fold(seed, 7),
                                       recipe.erasing_prob)
  return image


def _targets(labels: tf.Tensor, schema: heads_lib.LabelSchema,
             class_weights: Optional[Sequence[np.ndarray]],
             factor_priors: Optional[Mapping] = None):
  """(targets, sample weights) per head from int labels (-1: missing).
  ``factor_priors`` ({head: modeling.factors.FactorPrior}, training only):
  such a head's target is [one-hot (k) | the row's log prior (k)], which its
  loss adds to the logits (modeling/losses.py)."""
  ys, ws = {}, {}
  slices = schema.label_slices()
  for k, head in enumerate(schema.heads):
    cols = slices[head.name]
    ys[head.name], ws[head.name] = head.kind_impl.targets(
        head, labels[..., cols.start:cols.stop],
        None if class_weights is None else class_weights[k])
    if factor_priors and head.name in factor_priors:
      # A factor head is single-label: its target is the clamped index.
      ys[head.name] = _with_prior(ys[head.name], labels, schema,
                                  factor_priors[head.name], head.num_classes)
  return ys, ws


def _with_prior(clamped, labels, schema, prior, num_classes):
  slices = schema.label_slices()
  log_prior = tf.constant(prior.log_marginal)[tf.newaxis]
  for other, table in prior.pmi.items():
    yb = labels[..., slices[other].start]
    log_prior = log_prior + tf.gather(tf.constant(table), yb + 1)
  return tf.concat([tf.one_hot(clamped, num_classes), log_prior], axis=-1)


FACTORS_WITH_MIXING = (
    "factor_heads cannot be combined with MixUp or CutMix: a mixed image "
    "has two rows' labels, and its prior would be neither row's")


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  return options


def _epoch_fn(base: tf.data.Dataset, source: sources.Source, *, decoded: bool,
              buffer: int, image_size: int, batch_size: int, seed: int,
              steps_per_epoch: Optional[int], augmentations: Sequence[str],
              crop_scale: Sequence[float], crop_ratio: Sequence[float],
              unread: bool = False, recipe=augment_lib.Recipe(),
              per_batch=None):
  """epoch -> that epoch's batches, keyed by (seed, epoch) alone.
  ``unread``: ``base`` holds file paths, read after the shuffle;
  ``per_batch(images, labels, seed)``: applied to each batch with a seed of
  (seed, epoch, batch index) (MixUp / CutMix)."""

  def one_epoch(epoch):
    # tf.data pairs an op seed with the graph's global seed, and with a
    # global seed of 0 a tensor op seed fails inside TF's get_seed; pin this
    # function graph's seed instead.
    tf.compat.v1.get_default_graph().seed = _GRAPH_SEED
    epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + epoch
    # Positions are taken before any parallel map: without
    # options.deterministic a map may reorder elements, and each image's
    # augmentation seed must follow the image, not its arrival order.
    ds = base.shuffle(buffer, seed=epoch_seed,
                      reshuffle_each_iteration=False).enumerate()
    if unread:
      ds = ds.map(lambda i, item: (i, (tf.io.read_file(item[0]), item[1])),
                  num_parallel_calls=AUTOTUNE)
    pixel_kinds = [k for k in augmentations if k != "resized_crop"]

    def finish(i, item):
      image, labels = item
      seed_i = tf.stack([epoch_seed, i])
      if not decoded:
        image = _pixels(image, seed_i, image_size, source.encoded,
                        augmentations, crop_scale, crop_ratio)
      if pixel_kinds:
        image = augment(image, seed_i, pixel_kinds, recipe=recipe)
      return image, labels
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE).batch(
        batch_size, drop_remainder=True)
    if steps_per_epoch:
      ds = ds.repeat().take(steps_per_epoch)
    if per_batch is not None:
      # Folded with a tag so that batch b's seed is not image b's.
      ds = ds.enumerate().map(
          lambda b, batch: per_batch(*batch, tf.stack(
              [epoch_seed, -1 - b])), num_parallel_calls=AUTOTUNE)
    return ds
  return one_epoch


def _check_train_args(augmentations, crop_scale, crop_ratio, cache,
                      data_service) -> None:
  if data_service is not None:
    config_lib.check_data_service(data_service)
  check_augmentations(augmentations, crop_scale, crop_ratio)
  if "resized_crop" in augmentations and cache is not False:
    raise errors.SettingError(config_lib.RESIZED_CROP_WITH_CACHE)


def _base(source: sources.Source, decoded: bool
          ) -> tuple[bool, tf.data.Dataset]:
  """(unread, the elements to shuffle). Paths, not bytes, when they are to
  be decoded after the shuffle: a shuffle buffer of every file's bytes
  would read the whole set before the first step and hold it in memory."""
  unread = not decoded and source.make_paths is not None
  return unread, source.make_paths() if unread else source.make()


def _buffer(source: sources.Source, decoded: bool, shuffle_buffer: int) -> int:
  if source.size is not None and (not decoded or source.size <= shuffle_buffer):
    # Undecoded records are a path or a few KB of bytes: shuffle them all.
    return max(source.size, 1)
  return shuffle_buffer


def _mixer(schema: heads_lib.LabelSchema, class_weights, recipe):
  """The per-batch MixUp / CutMix of _epoch_fn (None when off)."""
  if not recipe.mixes:
    return None
  recipe.check()

  def mix(images, labels, seed):
    ys, ws = _targets(labels, schema, class_weights)
    return augment_lib.mix_batch(images, ys, ws, seed, schema, recipe)
  return mix


def train_dataset(source: sources.Source, schema: heads_lib.LabelSchema, *,
                  image_size: int, batch_size: int, seed: int,
                  start_epoch: int = 0, end_epoch: int = 1_000_000,
                  steps_per_epoch: Optional[int] = None,
                  augmentations: Sequence[str] = (),
                  cache: bool | str = False, shuffle_buffer: int = 10_000,
                  deterministic: bool = False,
                  class_weights: Optional[Sequence[np.ndarray]] = None,
                  crop_scale: Sequence[float] = CROP_SCALE,
                  crop_ratio: Sequence[float] = CROP_RATIO,
                  data_service: Optional[str] = None,
                  recipe: augment_lib.Recipe = augment_lib.Recipe(),
                  factor_priors: Optional[Mapping] = None,
                  one_epoch_per_iteration: bool = False,
                  ) -> tf.data.Dataset:
  """Batches for training, epochs ``start_epoch`` .. ``end_epoch - 1`` back
  to back; each epoch holds ``len // batch_size`` full batches.

  Epoch e is shuffled with a seed made of (seed, e), each image augmented
  with one of (seed, e, position), so a run resumed at epoch e sees exactly
  the batches an uninterrupted run would have.
  ``cache`` is False, True (in memory) or a file path prefix; it keeps
  decoded, resized pixels, so augmentation still differs per epoch.
  With ``steps_per_epoch`` every epoch is exactly that many batches (the
  epoch's order repeats if it needs more than one pass).
  "resized_crop" (a random window of ``crop_scale`` of the area, aspect
  ``crop_ratio``) is cut while decoding each epoch, so it cannot be combined
  with ``cache`` (which keeps pixels already resized). ``recipe``:
  data/augment.py (MixUp / CutMix batches carry soft per-head targets).
  ``factor_priors``: see _targets (not with MixUp / CutMix).

  ``one_epoch_per_iteration``: the dataset is one epoch, and each pass over
  it (each ``model.fit`` epoch) is a new epoch drawn from ``seed``'s
  sequence, as plain tf.data's reshuffle_each_iteration does
  (start_epoch and end_epoch are not used).

  ``data_service`` ("grpc://host:port"): the whole pipeline above runs on
  tf.data service workers, which split it by epoch (dynamic sharding of the
  epoch range): one worker gives exactly the local batches in the local
  order; several give the same batches, each once, epochs interleaved.
  """
  _check_train_args(augmentations, crop_scale, crop_ratio, cache, data_service)
  if factor_priors and recipe.mixes:
    raise ValueError(FACTORS_WITH_MIXING)
  if source.size is not None:
    steps_for(source.size, batch_size, source.name)
  decoded = cache is not False
  unread, base = _base(source, decoded)
  if decoded:
    base = base.map(lambda x, y: (_to_pixels(x, image_size, source.encoded), y),
                    num_parallel_calls=AUTOTUNE)
    base = base.cache("" if cache is True else cache)
  one_epoch = _epoch_fn(
      base, source, decoded=decoded,
      buffer=_buffer(source, decoded, shuffle_buffer), image_size=image_size,
      batch_size=batch_size, seed=seed, steps_per_epoch=steps_per_epoch,
      augmentations=augmentations, crop_scale=tuple(crop_scale),
      crop_ratio=tuple(crop_ratio), unread=unread, recipe=recipe,
      per_batch=_mixer(schema, class_weights, recipe))
  if one_epoch_per_iteration:
    epochs = tf.data.Dataset.random(
        seed=seed, rerandomize_each_iteration=True).take(1).map(
            lambda e: e % (1 << 31))
  else:
    epochs = tf.data.Dataset.range(start_epoch, end_epoch)
  ds = epochs.flat_map(one_epoch)
  if one_epoch_per_iteration and (steps_per_epoch or source.size):
    # Known length: Keras plans its epochs without running one dry.
    ds = ds.apply(tf.data.experimental.assert_cardinality(
        steps_per_epoch or source.size // batch_size))
  if not recipe.mixes:  # mixed batches got their targets in one_epoch
    ds = ds.map(lambda x, y: (x, *_targets(y, schema, class_weights,
                                           factor_priors)),
                num_parallel_calls=AUTOTUNE)
  if data_service is not None:
    # Options first: they travel with the dataset graph to the workers.
    ds = ds.with_options(_options(deterministic)).apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            service=data_service))
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def cache_fits(size: Optional[int], image_size: int, max_mb: int) -> bool:
  """Whether ``size`` decoded images of ``image_size`` fit in ``max_mb`` MB
  (unknown sizes do not)."""
  if size is None:
    return False
  return size * image_size * image_size * 3 <= max_mb * 2 ** 20


def eval_dataset(source: sources.Source, schema: heads_lib.LabelSchema, *,
                 image_size: int, batch_size: int,
                 cache: bool = False) -> tf.data.Dataset:
  """One ordered pass, no augmentation, last batch kept."""
  ds = source.make().map(
      lambda x, y: (_to_pixels(x, image_size, source.encoded), y),
      num_parallel_calls=AUTOTUNE)
  if cache:
    ds = ds.cache()
  ds = ds.batch(batch_size).map(
      lambda x, y: (x, *_targets(y, schema, None)), num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


# --- sample weights -------------------------------------------------------------


def balanced_class_weights(counts: Sequence[np.ndarray]) -> list[np.ndarray]:
  """n / (k * n_c) per class (sklearn's "balanced"); 0 for unseen classes.
  Tag heads are not class-weighted (_targets leaves their weight 0/1)."""
  out = []
  for c in counts:
    c = np.asarray(c, np.float64)
    w = np.zeros_like(c)
    seen = c > 0
    if seen.any():
      w[seen] = c.sum() / (seen.sum() * c[seen])
    out.append(w.astype(np.float32))
  return out


def class_weights_from(mode: str, source: sources.Source,
                       schema: heads_lib.LabelSchema
                       ) -> Optional[list[np.ndarray]]:
  """Per-head class weights for ``class_weight`` ("none" or "balanced")."""
  if mode == "none":
    return None
  if mode == "balanced":
    return balanced_class_weights(sources.label_counts(source, schema))
  raise errors.SettingError(f"`class_weight` must be 'none' or 'balanced', got {mode!r}")


def steps_for(size: int, batch_size: int, origin: str) -> int:
  """Full batches in an epoch of ``size``; raises if not even one."""
  if size < batch_size:
    raise manifest.DataError(
        f"{origin}: {size} training examples is fewer than one batch of "
        f"{batch_size}; lower `batch_size`")
  return size // batch_size
