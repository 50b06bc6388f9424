"""Tests for the tf.data pipeline: structure, masking, seeded epochs, augmentation, class weights."""

import numpy as np
import tensorflow as tf

from mlc_keras.data import manifest
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from tests import testutil


class PipelineTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    path = testutil.write_manifest(self.dir, testutil.simple_rows(8), size=40)
    self.records, self.schema = manifest.read_manifest(path, testutil.SCHEMA)
    self.source = sources.records_source(self.records)

  def _train(self, **kwargs):
    args = dict(image_size=24, batch_size=4, seed=7, deterministic=True,
                augmentations=("flip", "crop", "colour"))
    args.update(kwargs)
    return pipeline.train_dataset(self.source, self.schema, **args)

  def test_element_structure_and_masking(self):
    ds = pipeline.eval_dataset(self.source, self.schema, image_size=24, batch_size=8)
    images, labels, weights = next(iter(ds))
    self.assertEqual(images.dtype, tf.uint8)
    self.assertEqual(images.shape, (8, 24, 24, 3))
    self.assertEqual(set(labels), {"shape", "colour"})
    self.assertEqual(labels["colour"].dtype, tf.int32)
    # Missing colour labels (rows 2 and 5) are clamped to 0 with weight 0.
    self.assertAllEqual(labels["colour"], [0, 1, 0, 1, 0, 0, 0, 1])
    self.assertAllEqual(weights["colour"], [1, 1, 0, 1, 1, 0, 1, 1])
    self.assertAllEqual(weights["shape"], np.ones(8))

  def test_eval_pixels_match_direct_decode(self):
    ds = pipeline.eval_dataset(self.source, self.schema, image_size=40, batch_size=8)
    images = next(iter(ds))[0].numpy()
    # Same size in and out: the resize is the identity, pixels are the file's.
    with open(self.records.paths[1], "rb") as f:
      expected = tf.io.decode_png(f.read(), channels=3).numpy()
    self.assertAllEqual(images[1], expected)

  def test_epochs_are_keyed_by_seed_and_epoch(self):
    full = [b for b in self._train(start_epoch=0, end_epoch=3).as_numpy_iterator()]
    resumed = [b for b in self._train(start_epoch=1, end_epoch=3).as_numpy_iterator()]
    self.assertLen(full, 6)  # 8 images / batch 4 = 2 batches an epoch
    self.assertLen(resumed, 4)
    for a, b in zip(full[2:], resumed):
      self.assertAllEqual(a[0], b[0])
      self.assertAllEqual(a[1]["shape"], b[1]["shape"])
    # Different epochs are ordered or augmented differently.
    self.assertNotAllEqual(full[0][0], full[2][0])

  def test_steps_per_epoch_repeats_within_epoch(self):
    batches = list(self._train(end_epoch=2, steps_per_epoch=3).as_numpy_iterator())
    self.assertLen(batches, 6)

  def test_cache_gives_same_batches(self):
    plain = list(self._train(end_epoch=2).as_numpy_iterator())
    cached = list(self._train(end_epoch=2, cache=True).as_numpy_iterator())
    for a, b in zip(plain, cached):
      self.assertAllEqual(a[1]["shape"], b[1]["shape"])

  def test_augment_eagerly_and_in_dataset(self):
    image = tf.constant(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    seed = tf.constant([1, 2], tf.int64)
    eager = pipeline.augment(image, seed, ("flip", "crop", "colour"))
    in_ds = next(iter(tf.data.Dataset.from_tensors(image).map(
        lambda x: pipeline.augment(x, seed, ("flip", "crop", "colour")))))
    self.assertAllEqual(eager, in_ds)
    self.assertEqual(eager.dtype, tf.uint8)
    with self.assertRaisesRegex(ValueError, "unknown augmentation"):
      pipeline.augment(image, seed, ("rotate",))

  def test_balanced_class_weights_fold_into_sample_weight(self):
    counts = sources.label_counts(self.source, self.schema)
    self.assertAllEqual(counts[0], [3, 3, 2])
    weights = pipeline.balanced_class_weights(counts)
    self.assertAllClose(weights[0], [8 / 9, 8 / 9, 8 / 6])
    ds = pipeline.train_dataset(self.source, self.schema, image_size=24, batch_size=8,
                            seed=0, end_epoch=1, class_weights=weights)
    _, labels, w = next(iter(ds))
    expected = weights[1][labels["colour"].numpy()] * (w["colour"].numpy() > 0)
    self.assertAllClose(w["colour"], expected)
    self.assertEqual(float(tf.reduce_sum(tf.cast(w["colour"] == 0, tf.int32))), 2)

  def test_fewer_images_than_a_batch(self):
    with self.assertRaisesRegex(manifest.DataError, "fewer than one batch"):
      pipeline.train_dataset(self.source, self.schema, image_size=24, batch_size=16, seed=0)

class TagTargetsTest(tf.test.TestCase):

  def test_multi_hot_targets_weights_and_counts(self):
    rows = [{"image": f"img/{i}.png", "shape": ("circle", "square")[i % 2],
             "marks": m}
            for i, m in enumerate(["edge|bar", "", "(none)", "corner|edge"])]
    path = testutil.write_manifest(self.get_temp_dir(), rows, size=8,
                                   columns=("image", "shape", "marks"))
    records, schema = manifest.read_manifest(path, tag_columns=["marks"])
    source = sources.records_source(records)
    _, labels, weights = next(iter(pipeline.eval_dataset(
        source, schema, image_size=8, batch_size=4)))
    self.assertEqual(labels["marks"].dtype, tf.float32)
    # The blank row: zeros with weight 0; "(none)": zeros with weight 1.
    self.assertAllEqual(labels["marks"], [[1, 0, 1], [0, 0, 0], [0, 0, 0],
                                          [0, 1, 1]])
    self.assertAllEqual(weights["marks"], [1, 0, 1, 1])
    self.assertAllEqual(labels["shape"], [0, 1, 0, 1])
    # Per tag, the labelled rows carrying it (the blank row counts nothing).
    counts = sources.label_counts(source, schema)
    self.assertAllEqual(counts[1], [1, 1, 2])
    # --class_weight=balanced weights softmax heads; tag rows stay 0/1.
    weights_of = pipeline.class_weights_from("balanced", source, schema)
    _, _, w = next(iter(pipeline.train_dataset(
        source, schema, image_size=8, batch_size=4, seed=0,
        class_weights=weights_of, deterministic=True)))
    self.assertAllEqual(sorted(w["marks"].numpy()), [0, 1, 1, 1])


if __name__ == "__main__":
  tf.test.main()
