"""The recipe's augmentations (data/augment.py): RandAugment and random
erasing give the same pixels for the same seed (eagerly, in a parallel
tf.data map, through train_dataset); MixUp / CutMix follow the stated rule
for a head labelled on one image of a pair, checked on hand-built batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.data import augment
from mlc_keras.data import manifest
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from tests import testutil

SHAPE = heads_lib.HeadSpec("shape", ("a", "b", "c"))
MARKS = heads_lib.HeadSpec("marks", ("x", "y"), kind="tags")
SCHEMA = heads_lib.LabelSchema((SHAPE, MARKS))


def _image(seed=0, side=16):
  return tf.constant(np.random.default_rng(seed).integers(
      0, 256, (side, side, 3)), tf.uint8)


class RandAugmentTest(tf.test.TestCase):

  def test_same_seed_same_pixels_other_seed_other_pixels(self):
    image = _image()
    a = augment.randaugment(image, tf.constant([3, 4], tf.int64), 2, 0.5)
    b = augment.randaugment(image, tf.constant([3, 4], tf.int64), 2, 0.5)
    self.assertEqual(a.dtype, tf.uint8)
    self.assertAllEqual(a, b)
    changed = [not np.array_equal(a, augment.randaugment(
        image, tf.constant([3, s], tf.int64), 2, 0.5)) for s in range(5, 10)]
    self.assertGreater(sum(changed), 2)

  def test_every_op_but_identity_changes_the_image(self):
    # 60-238: autocontrast has something to stretch, solarize pixels over
    # its threshold (191 at m=0.5).
    x = tf.cast(_image(1), tf.float32) * 0.7 + 60.0
    seed = tf.constant([1, 2], tf.int64)
    for index in range(augment.RANDAUGMENT_OPS):
      out = augment._op(x, tf.constant(index), 1.0, 0.5, seed)  # pylint: disable=protected-access
      self.assertEqual(out.shape, x.shape)
      if index == 0:
        self.assertAllEqual(out, x)
      else:
        self.assertGreater(float(tf.reduce_max(tf.abs(out - x))), 1.0, index)

  def test_parallel_tf_data_map_matches_eager(self):
    images = tf.stack([_image(i) for i in range(8)])
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate().map(
        lambda i, x: augment.random_erasing(augment.randaugment(
            x, tf.stack([tf.constant(7, tf.int64), i]), 2, 0.7),
                                            tf.stack([tf.constant(8, tf.int64), i]),
                                            1.0),
        num_parallel_calls=4, deterministic=True)
    for i, got in enumerate(ds):
      want = augment.random_erasing(augment.randaugment(
          images[i], tf.constant([7, i], tf.int64), 2, 0.7),
                                    tf.constant([8, i], tf.int64), 1.0)
      self.assertAllEqual(got, want)


class RandomErasingTest(tf.test.TestCase):

  def test_one_rectangle_of_the_stated_size_or_nothing(self):
    image = tf.zeros((20, 20, 3), tf.uint8) + 7
    for s in range(6):
      seed = tf.constant([s, 1], tf.int64)
      out = augment.random_erasing(image, seed, 1.0).numpy()
      self.assertAllEqual(out, augment.random_erasing(image, seed, 1.0))
      rows, cols = np.nonzero((out != 7).any(-1))
      # Noise equals 7 on a few pixels by chance: the box is the span.
      h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      self.assertBetween(h * w, 0.02 * 400 - 8, 400 / 3 + 16)
      self.assertGreater(np.mean((out[rows.min():rows.max() + 1,
                                       cols.min():cols.max() + 1] != 7)), 0.9)
      self.assertAllEqual(augment.random_erasing(image, seed, 0.0), image)


class MixRuleTest(tf.test.TestCase):
  """Batch of 4, partners 0<->3 and 1<->2 (the batch reversed)."""

  def _targets(self, lam, shape_w=(2.0, 1.0, 0.0, 0.5)):
    ys = {"shape": tf.constant([0, 1, 2, 1]),
          "marks": tf.constant([[1, 0], [0, 1], [1, 1], [0, 0]], tf.float32)}
    ws = {"shape": tf.constant(shape_w),
          "marks": tf.constant([1.0, 0.0, 1.0, 1.0])}
    return augment.mix_targets(ys, ws, tf.constant(lam), SCHEMA)

  def test_a_head_labelled_on_one_image_of_the_pair_gets_weight_zero(self):
    y, w = self._targets([0.7, 0.6, 0.3, 0.2])
    # shape: sample 2 unlabelled, so samples 1 and 2 (a pair) get weight 0;
    # 0 and 3 mix their class weights by share: 0.7*2 + 0.3*0.5.
    self.assertAllClose(w["shape"], [1.55, 0.0, 0.0, 0.2 * 0.5 + 0.8 * 2])
    self.assertAllClose(y["shape"][0], [0.7, 0.3, 0.0])
    self.assertAllClose(y["shape"][3], [0.8, 0.2, 0.0])
    # marks: sample 1 unlabelled, so 1 and 2 get 0; tags mixed by share.
    self.assertAllClose(w["marks"], [1.0, 0.0, 0.0, 1.0])
    self.assertAllClose(y["marks"][0], [0.7, 0.0])
    self.assertAllClose(y["marks"][3], [0.8, 0.0])

  def test_masked_sample_adds_nothing_to_the_loss(self):
    y, w = self._targets([0.7, 0.6, 0.3, 0.2], shape_w=(1.0, 1.0, 0.0, 1.0))
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6],
                      [0.6, 0.3, 0.1]], np.float32)
    loss = float(losses.head_loss(SHAPE, soft=True)(
        y["shape"], probs, sample_weight=w["shape"]))
    ce0 = -(0.7 * np.log(0.5) + 0.3 * np.log(0.3))
    ce3 = -(0.8 * np.log(0.6) + 0.2 * np.log(0.3))
    self.assertAllClose(loss, (ce0 + ce3) / 2, atol=1e-5)

  def test_cutmix_target_share_is_the_pasted_area(self):
    images = tf.stack([tf.fill((16, 16, 3), tf.constant(v, tf.uint8))
                       for v in (10, 20, 30, 40)])
    # Each pair of distinct classes, so a target shows its own share.
    ys = {"shape": tf.constant([0, 1, 2, 1]),
          "marks": tf.zeros((4, 2))}
    ws = {"shape": tf.ones(4), "marks": tf.ones(4)}
    recipe = augment.Recipe(cutmix_alpha=1.0)
    for s in range(4):
      x, y, _ = augment.mix_batch(images, ys, ws, tf.constant([s, 0], tf.int64),
                                  SCHEMA, recipe)
      for i in range(4):
        own = float(np.mean(x[i].numpy() == images[i, 0, 0, 0].numpy()))
        target = y["shape"][i].numpy()
        self.assertAllClose(target[ys["shape"][i]], own, atol=1e-6)

  def test_mixup_pixels_are_the_blend_of_the_pair(self):
    images = tf.stack([tf.fill((8, 8, 3), tf.constant(v, tf.uint8))
                       for v in (0, 100, 200, 250)])
    ys = {"shape": tf.constant([0, 1, 2, 2]), "marks": tf.zeros((4, 2))}
    ws = {"shape": tf.ones(4), "marks": tf.ones(4)}
    x, y, _ = augment.mix_batch(images, ys, ws, tf.constant([5, 0], tf.int64),
                                SCHEMA, augment.Recipe(mixup_alpha=0.4))
    lam0 = y["shape"][0, 0].numpy()  # sample 0 is class 0, partner class 2
    self.assertAllEqual(x[0], tf.fill((8, 8, 3), tf.constant(
        int(round(lam0 * 0 + (1 - lam0) * 250)), tf.uint8)))


class PipelineTest(tf.test.TestCase):

  def _dataset(self, tmp, **kw):
    path = testutil.write_manifest(tmp, testutil.simple_rows(8))
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    return pipeline.train_dataset(
        sources.records_source(records), schema, image_size=32, batch_size=4,
        seed=3, end_epoch=2, deterministic=True, **kw), schema

  def test_mixed_batches_repeat_with_the_seed_and_carry_soft_targets(self):
    tmp = self.get_temp_dir()
    kw = dict(augmentations=("flip", "randaugment", "erasing"),
              recipe=augment.Recipe(erasing_prob=1.0, mixup_alpha=0.3,
                                    cutmix_alpha=1.0))
    first, schema = self._dataset(tmp, **kw)
    second, _ = self._dataset(tmp, **kw)
    batches = list(first)
    self.assertLen(batches, 4)
    for (xa, ya, wa), (xb, yb, wb) in zip(batches, second):
      self.assertAllEqual(xa, xb)
      for h in schema.names:
        self.assertAllEqual(ya[h], yb[h])
        self.assertAllEqual(wa[h], wb[h])
    shape = schema.head("shape")
    self.assertEqual(batches[0][1]["shape"].shape, (4, shape.num_classes))
    self.assertAllClose(tf.reduce_sum(batches[0][1]["shape"], -1), [1.0] * 4)
    plain, _ = self._dataset(tmp, augmentations=("flip",))
    self.assertNotAllEqual(next(iter(plain))[0], batches[0][0])


class SoftMetricTest(tf.test.TestCase):

  def test_soft_targets_score_as_their_largest_class(self):
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]],
                     np.float32)
    soft = np.array([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4], [0.2, 0.8, 0.0]],
                    np.float32)
    hard = np.array([0, 1, 1])
    for make in (lambda: metrics.SoftAccuracy(),
                 lambda: metrics.BalancedAccuracy(3)):
      a, b = make(), make()
      a.update_state(soft, probs)
      b.update_state(hard, probs)
      self.assertAllClose(a.result(), b.result())
    acc = metrics.SoftAccuracy()
    acc.update_state(soft, probs)
    self.assertAllClose(acc.result(), 1 / 3)


if __name__ == "__main__":
  tf.test.main()


class MixedFitTest(tf.test.TestCase):

  def test_soft_targets_train_and_sparse_validation_scores(self):
    # pylint: disable=g-import-not-at-top
    import keras
    from mlc_keras.modeling import model as model_lib
    from mlc_keras.training import setup
    tmp = self.get_temp_dir()
    path = testutil.write_manifest(tmp, testutil.simple_rows(8))
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    source = sources.records_source(records)
    train = pipeline.train_dataset(
        source, schema, image_size=32, batch_size=4, seed=0, end_epoch=2,
        augmentations=("randaugment",), deterministic=True,
        recipe=augment.Recipe(mixup_alpha=0.4, cutmix_alpha=1.0))
    val = pipeline.eval_dataset(source, schema, image_size=32, batch_size=4)
    keras.utils.set_random_seed(0)
    model = model_lib.small_cnn(schema, 32)
    setup.compile_model(model, schema, keras.optimizers.Adam(1e-3), top_k=2,
                        label_smoothing={"shape": 0.1}, soft=True)
    history = model.fit(train, epochs=2, steps_per_epoch=2,
                        validation_data=val, verbose=0).history
    self.assertTrue(np.isfinite(history["loss"]).all())
    # Validation labels are class indices: scored as without mixing.
    collected = metrics.collect(model, val, schema)
    probs, labels, _ = collected["shape"]
    self.assertAllClose(history["val_shape_acc"][-1],
                        np.mean(probs.argmax(1) == labels), atol=1e-6)


class FlipSensitiveTest(tf.test.TestCase):

  def test_text_and_side_heads_are_named(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("char", tuple("abcdXYZ") + ("dot",)),
        heads_lib.HeadSpec("digit", tuple("0123456789")),
        heads_lib.HeadSpec("facing", ("Left", "right", "front")),
        heads_lib.HeadSpec("shape", ("circle", "square", "x")),
        heads_lib.HeadSpec("marks", ("a", "b"), kind="tags"),
    ))
    self.assertEqual(augment.flip_sensitive_heads(schema),
                     ["char", "digit", "facing"])
