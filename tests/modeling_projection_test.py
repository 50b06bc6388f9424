"""Per-head feature projections (--head_projection): each head
reads the pooled features through a Dense layer of its own, so one head's
loss moves only its own projection; growing a model keeps them."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import grow
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from tests import testutil

SIZE = 32


def _build(schema=testutil.SCHEMA, width=8):
  keras.utils.set_random_seed(0)
  return model_lib.build_model(schema, SIZE, "MobileNetV2", None,
                               head_projection=width)


class ProjectionTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _build()

  def test_each_head_reads_its_own_projection(self):
    features = self.model.get_layer(model_lib.FEATURES_LAYER).output
    for head in testutil.SCHEMA.names:
      proj = self.model.get_layer(model_lib.projection_name(head))
      self.assertEqual(proj.units, 8)
      self.assertIs(proj.input, features)
      self.assertIs(self.model.get_layer(head).input, proj.output)
      self.assertEqual(model_lib.projection_width(self.model, head), 8)
    plain = model_lib.build_model(testutil.SCHEMA, SIZE, "MobileNetV2", None)
    self.assertEqual(model_lib.projection_width(plain, "shape"), 0)
    self.assertIs(plain.get_layer("shape").input,
                  plain.get_layer(model_lib.FEATURES_LAYER).output)

  def test_one_heads_loss_moves_only_its_own_projection(self):
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3),
                                               dtype=np.uint8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    shape_proj = self.model.get_layer("shape_projection").kernel.value
    colour_proj = self.model.get_layer("colour_projection").kernel.value
    with tf.GradientTape() as tape:
      out = self.model(images, training=False)
      loss = loss_fn(np.array([0, 1, 2, 0]), out["shape"])
    g_shape, g_colour = tape.gradient(loss, [shape_proj, colour_proj],
                                      unconnected_gradients="zero")
    self.assertGreater(float(tf.reduce_max(tf.abs(g_shape))), 0.0)
    self.assertEqual(float(tf.reduce_max(tf.abs(g_colour))), 0.0)

  def test_survives_keras_save_and_load(self):
    path = os.path.join(self.get_temp_dir(), "projected.keras")
    self.model.save(path)
    back = saving.load_model(path)
    images = np.full((2, SIZE, SIZE, 3), 100, np.uint8)
    want, got = self.model(images), back(images)
    for head in testutil.SCHEMA.names:
      self.assertAllClose(want[head], got[head], atol=1e-6)
    self.assertEqual(model_lib.projection_width(back, "colour"), 8)

  def test_head_named_like_a_projection_is_refused(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("shape", ("a", "b")),
        heads_lib.HeadSpec("shape_projection", ("c", "d"))))
    with self.assertRaisesRegex(ValueError, "'shape_projection'"):
      _build(schema)

  def test_growing_copies_projections_and_freezes_them_with_their_head(self):
    child_schema = heads_lib.LabelSchema(
        testutil.SCHEMA.heads + (heads_lib.HeadSpec("size", ("s", "l")),))
    keras.utils.set_random_seed(1)
    child = model_lib.build_model(child_schema, SIZE, "MobileNetV2", None,
                                  head_projection=8)
    grow.copy_from(self.model, testutil.SCHEMA, child, child_schema)
    for head in testutil.SCHEMA.names:
      name = model_lib.projection_name(head)
      for a, b in zip(self.model.get_layer(name).get_weights(),
                      child.get_layer(name).get_weights()):
        self.assertAllEqual(a, b)
    grow.freeze_all_but(child, child_schema, ["size"])
    self.assertTrue(child.get_layer("size_projection").trainable)
    self.assertFalse(child.get_layer("shape_projection").trainable)
    self.assertFalse(child.get_layer("colour_projection").trainable)

  def test_growing_refuses_another_width(self):
    keras.utils.set_random_seed(1)
    child = model_lib.build_model(testutil.SCHEMA, SIZE, "MobileNetV2", None)
    with self.assertRaisesRegex(grow.GrowError,
                                "head 'shape'.*head_projection=8"):
      grow.copy_from(self.model, testutil.SCHEMA, child, testutil.SCHEMA)


if __name__ == "__main__":
  tf.test.main()
