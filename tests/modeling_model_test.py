"""Tests for the model, the masked losses and the masked metrics."""

import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.training import setup
from tests import testutil


class ModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(0)
    cls.model = model_lib.build_model(testutil.SCHEMA, 32)

  def test_named_float32_softmax_outputs(self):
    out = self.model(np.zeros((2, 32, 32, 3), np.uint8))
    self.assertEqual(set(out), {"shape", "colour"})
    self.assertEqual(out["shape"].shape, (2, 3))
    self.assertEqual(out["colour"].shape, (2, 2))
    self.assertAllClose(np.sum(out["shape"], axis=1), [1.0, 1.0], atol=1e-6)
    self.assertEqual(self.model.input.name.split(":")[0], "image")
    self.assertEqual(self.model.input.dtype, "uint8")

  def test_bn_momentum_applies_to_backbone(self):
    bns = [l for l in self.model.get_layer("backbone").layers
           if isinstance(l, keras.layers.BatchNormalization)]
    self.assertNotEmpty(bns)
    self.assertAllEqual({l.momentum for l in bns}, {0.9})

  def test_mixed_precision_heads_stay_float32(self):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      m = model_lib.build_model(testutil.SCHEMA, 32)
      out = m(np.zeros((1, 32, 32, 3), np.uint8))
      self.assertEqual(m.get_layer("backbone").compute_dtype, "float16")
      self.assertEqual(out["shape"].dtype, tf.float32)
    finally:
      keras.mixed_precision.set_global_policy("float32")

  def test_save_load_safe_mode_round_trip(self):
    path = os.path.join(self.get_temp_dir(), "m.keras")
    self.model.save(path)
    loaded = saving.load_model(path)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a, b = self.model(x), loaded(x)
    for h in ("shape", "colour"):
      self.assertAllClose(a[h], b[h], atol=1e-6)
    with self.assertRaisesRegex(ValueError, "legacy HDF5"):
      saving.load_model(os.path.join(self.get_temp_dir(), "m.h5"))

  def test_old_keras_is_refused_at_import(self):
    import mlc_keras
    for old in ("3.13.1", "3.0.0", "2.15.0"):
      with self.assertRaisesRegex(ImportError, f"keras >= 3.13.2.*found keras {old}"):
        mlc_keras._check_keras(old)
    for ok in ("3.13.2", "3.15.1", "3.20.0rc1", "4.0.0"):
      mlc_keras._check_keras(ok)

  def test_unknown_backbone(self):
    with self.assertRaisesRegex(ValueError, "unknown backbone 'ResNet9'"):
      model_lib.build_model(testutil.SCHEMA, 32, backbone="ResNet9")


class MaskedLossTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(1)
    cls.model = model_lib.build_model(testutil.SCHEMA, 32)
    setup.compile_model(cls.model, testutil.SCHEMA, keras.optimizers.SGD(0.0), top_k=2)
    rng = np.random.default_rng(0)
    cls.x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

  def _grads(self, y, w):
    fns = losses.head_losses(testutil.SCHEMA)
    head_vars = {h: self.model.get_layer(h).trainable_variables for h in ("shape", "colour")}
    with tf.GradientTape() as tape:
      out = self.model(self.x, training=False)
      total = sum(fns[h](y[h], out[h], sample_weight=w[h]) for h in fns)
    return tape.gradient(total, head_vars), out

  def test_unlabelled_head_gets_exactly_zero_gradient(self):
    y = {"shape": np.array([0, 1, 2, 0, 1, 2]), "colour": np.zeros(6, np.int32)}
    w = {"shape": np.ones(6, np.float32), "colour": np.zeros(6, np.float32)}
    grads, _ = self._grads(y, w)
    for g in grads["colour"]:
      self.assertEqual(float(tf.reduce_max(tf.abs(g))), 0.0)
    self.assertGreater(float(tf.reduce_max(tf.abs(grads["shape"][0]))), 0.0)

  def test_loss_averages_over_labelled_samples_only(self):
    out = self.model(self.x, training=False)
    y = np.array([0, 1, 2, 0, 1, 2])
    w = np.array([1, 0, 1, 0, 0, 1], np.float32)
    loss = losses.head_losses(testutil.SCHEMA)["shape"](y, out["shape"], sample_weight=w)
    p = out["shape"].numpy()[np.arange(6), y]
    self.assertAllClose(loss, -np.log(p[w > 0]).mean(), rtol=1e-5)
    # No labels at all: exactly 0, not NaN.
    zero = losses.head_losses(testutil.SCHEMA)["shape"](y, out["shape"], sample_weight=np.zeros(6))
    self.assertEqual(float(zero), 0.0)

  def test_focal_loss_numbers_and_masking(self):
    out = self.model(self.x, training=False)
    y = np.array([0, 1, 2, 0, 1, 2])
    w = np.array([1, 0, 1, 0, 0, 1], np.float32)
    p = out["shape"].numpy()[np.arange(6), y]
    focal = losses.SparseFocalCrossentropy(gamma=2.0)
    expected = (-(1 - p) ** 2 * np.log(p))[w > 0].mean()
    self.assertAllClose(focal(y, out["shape"], sample_weight=w), expected,
                        rtol=1e-5)
    # gamma 0 is exactly the cross-entropy head loss.
    xent = losses.head_losses(testutil.SCHEMA)["shape"]
    self.assertAllClose(
        losses.SparseFocalCrossentropy(gamma=0.0)(y, out["shape"], sample_weight=w),
        xent(y, out["shape"], sample_weight=w), rtol=1e-6)
    self.assertEqual(float(focal(y, out["shape"], sample_weight=np.zeros(6))), 0.0)

  def test_focal_head_from_schema_masks_gradient(self):
    schema = testutil.SCHEMA.with_focal_gammas({"colour": 2.0})
    fns = losses.head_losses(schema)
    self.assertIsInstance(fns["colour"], losses.SparseFocalCrossentropy)
    self.assertNotIsInstance(fns["shape"], losses.SparseFocalCrossentropy)
    kernel = self.model.get_layer("colour").trainable_variables
    with tf.GradientTape() as tape:
      out = self.model(self.x, training=False)
      loss = fns["colour"](np.ones(6, np.int32), out["colour"],
                           sample_weight=np.zeros(6, np.float32))
    for g in tape.gradient(loss, kernel):
      self.assertEqual(float(tf.reduce_max(tf.abs(g))), 0.0)

  def test_evaluate_counts_only_labelled_samples(self):
    out = self.model.predict(self.x, verbose=0)
    pred = np.argmax(out["shape"], axis=1)
    # Labels right on samples 0-2, wrong on 3-5, and 3-5 are masked out.
    y_shape = np.concatenate([pred[:3], (pred[3:] + 1) % 3])
    w = {"shape": np.array([1, 1, 1, 0, 0, 0], np.float32), "colour": np.ones(6, np.float32)}
    y = {"shape": y_shape, "colour": np.argmax(out["colour"], axis=1)}
    res = self.model.evaluate(self.x, y, sample_weight=w, verbose=0, return_dict=True)
    self.assertAllClose(res["shape_acc"], 1.0)
    self.assertAllClose(res["colour_acc"], 1.0)
    p = out["shape"][np.arange(3), y_shape[:3]]
    self.assertAllClose(res["shape_loss"], -np.log(p).mean(), rtol=1e-4)


class HeadTableTest(tf.test.TestCase):

  def test_table_counts_labelled_and_never_nan(self):
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.05, 0.15, 0.8], [0.6, 0.3, 0.1]])
    collected = {
        "shape": (probs, np.array([0, 1, 0, 2]), np.array([True, True, True, False])),
        "colour": (np.full((4, 2), 0.5), np.zeros(4, int), np.zeros(4, bool)),
    }
    rows = metrics.head_table(collected, testutil.SCHEMA, top_k=2)
    self.assertEqual(rows[0]["labelled"], 3)
    self.assertAllClose(rows[0]["accuracy"], 2 / 3)
    self.assertAllClose(rows[0]["top2"], 2 / 3)
    self.assertIsNone(rows[1]["accuracy"])
    self.assertEqual(rows[1]["note"], "no labelled samples")
    self.assertIn("no labelled samples", metrics.format_table(rows))


if __name__ == "__main__":
  tf.test.main()
