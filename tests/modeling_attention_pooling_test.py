"""Per-head attention pooling (--head_pooling=attention): each head pools the
backbone's last feature map with its own spatial softmax instead of reading
one shared global average.

The behaviour test trains the small CNN on a two-region set (colour on the
left, a pattern on the right, one colour x pattern pair never in training).
What it asserts is what held on six seeds (0-5) here; the pattern head's
numbers, which did not hold on every seed, are printed and written up in
BUILD_NOTES.md, not asserted.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import onnx as onnx_lib
from mlc_keras.exporters import saved_model as saved_model_lib
from mlc_keras.exporters import tflite as tflite_lib
from mlc_keras.modeling import grow
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.inference import predictors
from tests import testutil

SIZE = 32
BACKBONE_SIZE = 64  # MobileNetV2's last map is 2x2 here


def _images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                              dtype=np.uint8)


def _weights_model(model: keras.Model, head: str) -> keras.Model:
  return keras.Model(model.input, model.get_layer(
      model_lib.attention_weights_name(head)).output)


def _scramble_attention(model: keras.Model, schema, seed: int = 0,
                        scale: float = 0.05) -> None:
  """Random attention kernels, so the weights are not the uniform start."""
  rng = np.random.default_rng(seed)
  for head in schema.names:
    layer = model.get_layer(model_lib.attention_name(head))
    kernel, bias = layer.get_weights()
    layer.set_weights([rng.normal(0, scale, kernel.shape).astype("float32"),
                       bias])


class ShapesTest(tf.test.TestCase):

  def test_outputs_layers_and_weights_sum_to_one(self):
    keras.utils.set_random_seed(0)
    model = model_lib.small_cnn(testutil.SCHEMA, SIZE, "attention")
    _scramble_attention(model, testutil.SCHEMA, scale=0.5)
    images = _images(5)
    out = model(images)
    self.assertEqual(sorted(out), sorted(testutil.SCHEMA.names))
    for h in testutil.SCHEMA.heads:
      self.assertEqual(tuple(out[h.name].shape), (5, h.num_classes))
      self.assertAllClose(np.sum(out[h.name], -1), np.ones(5), atol=1e-6)
      # One logit per location of the 4x4 map, a softmax over the 16.
      conv = model.get_layer(model_lib.attention_name(h.name))
      self.assertEqual(conv.filters, 1)
      self.assertEqual(tuple(conv.kernel_size), (1, 1))
      weights = _weights_model(model, h.name)(images).numpy()
      self.assertEqual(weights.shape, (5, 16, 1))
      self.assertAllClose(weights.sum(axis=1), np.ones((5, 1)), atol=1e-6)
      self.assertGreaterEqual(weights.min(), 0.0)
      self.assertGreater(weights.max() - weights.min(), 1e-3)  # not uniform
    self.assertEqual(model_lib.head_pooling_of(model, "shape"), "attention")
    plain = model_lib.small_cnn(testutil.SCHEMA, SIZE)
    self.assertEqual(model_lib.head_pooling_of(plain, "shape"), "avg")

  def test_build_model_pools_the_unpooled_map_per_head(self):
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE,
                                  "MobileNetV2", None, dropout=0.1,
                                  head_projection=4, head_pooling="attention")
    features = model.get_layer(model_lib.FEATURES_LAYER).output
    self.assertEqual(tuple(features.shape[1:]), (2, 2, 1280))
    out = model(_images(2, size=BACKBONE_SIZE))
    self.assertEqual(sorted(out), sorted(testutil.SCHEMA.names))
    for h in testutil.SCHEMA.heads:
      self.assertEqual(tuple(out[h.name].shape), (2, h.num_classes))
      self.assertIs(model.get_layer(h.name).input,
                    model.get_layer(model_lib.projection_name(h.name)).output)
      self.assertEqual(
          tuple(model.get_layer(model_lib.attention_weights_name(h.name))
                .output.shape[1:]), (4, 1))

  def test_zero_start_is_the_average_pool(self):
    # A fresh attention model reads what an "avg" model with the same weights
    # reads; grow relies on it for an "avg" parent.
    keras.utils.set_random_seed(0)
    avg = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE, "MobileNetV2",
                                None)
    keras.utils.set_random_seed(1)
    att = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE, "MobileNetV2",
                                None, head_pooling="attention")
    plans = grow.copy_from(avg, testutil.SCHEMA, att, testutil.SCHEMA)
    self.assertEqual({p.status for p in plans}, {grow.COPIED})
    images = _images(4, seed=3, size=BACKBONE_SIZE)
    want, got = avg(images), att(images)
    for head in testutil.SCHEMA.names:
      self.assertAllClose(want[head], got[head], atol=1e-5)

  def test_mixed_precision_keeps_the_softmax_in_float32(self):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      keras.utils.set_random_seed(0)
      model = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE,
                                    "MobileNetV2", None,
                                    head_pooling="attention")
      _scramble_attention(model, testutil.SCHEMA, scale=0.5)
      images = _images(3, size=BACKBONE_SIZE)
      for head in testutil.SCHEMA.names:
        layer = model.get_layer(model_lib.attention_weights_name(head))
        self.assertEqual(layer.compute_dtype, "float32")
        self.assertEqual(model.get_layer(model_lib.attention_name(head))
                         .compute_dtype, "float16")
        weights = _weights_model(model, head)(images)
        self.assertEqual(weights.dtype, tf.float32)
        self.assertTrue(np.all(np.isfinite(weights.numpy())))
        self.assertAllClose(np.sum(weights.numpy(), axis=1), np.ones((3, 1)),
                            atol=1e-6)
      out = model(images)
      for head in testutil.SCHEMA.names:
        self.assertEqual(out[head].dtype, tf.float32)
        self.assertTrue(np.all(np.isfinite(out[head].numpy())))
    finally:
      keras.mixed_precision.set_global_policy(policy)

  def test_bad_settings_are_refused(self):
    with self.assertRaisesRegex(ValueError, "unknown head_pooling 'max'"):
      model_lib.small_cnn(testutil.SCHEMA, SIZE, "max")
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("shape", ("a", "b")),
        heads_lib.HeadSpec("shape_attention", ("c", "d"))))
    with self.assertRaisesRegex(ValueError, "'shape_attention'"):
      model_lib.build_model(schema, BACKBONE_SIZE, "MobileNetV2", None,
                            head_pooling="attention")


class SavingAndGrowingTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(0)
    cls.model = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE,
                                      "MobileNetV2", None,
                                      head_pooling="attention")
    _scramble_attention(cls.model, testutil.SCHEMA)

  def test_survives_keras_save_and_safe_load(self):
    path = os.path.join(self.get_temp_dir(), "attention.keras")
    self.model.save(path)
    back = saving.load_model(path)
    images = _images(3, seed=4, size=BACKBONE_SIZE)
    want, got = self.model(images), back(images)
    for head in testutil.SCHEMA.names:
      self.assertAllClose(want[head], got[head], atol=1e-6)
      self.assertEqual(model_lib.head_pooling_of(back, head), "attention")

  def test_growing_copies_attention_and_freezes_it_with_its_head(self):
    child_schema = heads_lib.LabelSchema(
        testutil.SCHEMA.heads + (heads_lib.HeadSpec("size", ("s", "l")),))
    keras.utils.set_random_seed(1)
    child = model_lib.build_model(child_schema, BACKBONE_SIZE, "MobileNetV2",
                                  None, head_pooling="attention")
    grow.copy_from(self.model, testutil.SCHEMA, child, child_schema)
    for head in testutil.SCHEMA.names:
      name = model_lib.attention_name(head)
      for a, b in zip(self.model.get_layer(name).get_weights(),
                      child.get_layer(name).get_weights()):
        self.assertAllEqual(a, b)
    # The new head starts uniform.
    self.assertAllEqual(
        child.get_layer(model_lib.attention_name("size")).get_weights()[0],
        np.zeros((1, 1, 1280, 1), np.float32))
    grow.freeze_all_but(child, child_schema, ["size"])
    self.assertTrue(child.get_layer("size_attention").trainable)
    self.assertFalse(child.get_layer("shape_attention").trainable)
    self.assertFalse(child.get_layer("colour_attention").trainable)

  def test_an_attention_parent_cannot_seed_an_avg_head(self):
    keras.utils.set_random_seed(1)
    child = model_lib.build_model(testutil.SCHEMA, BACKBONE_SIZE,
                                  "MobileNetV2", None)
    with self.assertRaisesRegex(grow.GrowError,
                                "head 'shape'.*head_pooling=attention"):
      grow.copy_from(self.model, testutil.SCHEMA, child, testutil.SCHEMA)


# --- the behaviour test ---

REGIONS = heads_lib.LabelSchema((
    heads_lib.HeadSpec("colour", ("red", "green", "blue")),
    heads_lib.HeadSpec("pattern", ("rows", "columns", "checks")),
))
HELD_OUT = (2, 2)  # (blue, checks): never in training
# Colour fills pixel columns 0-7, the pattern 24-31, noise between: the small
# CNN's last map is 4x4 with a 22-pixel receptive field, so no cell sees
# both. (With the two halves touching, the pattern head chose the boundary
# cell, which sees both, on 2 of 2 seeds: see BUILD_NOTES.md.)
_EDGE = 8


def region_images(n: int, seed: int, combos) -> tuple[np.ndarray, dict]:
  rs = np.random.RandomState(seed)
  pick = rs.randint(len(combos), size=n)
  colour = np.array([combos[i][0] for i in pick])
  pattern = np.array([combos[i][1] for i in pick])
  x = rs.normal(50, 15, (n, SIZE, SIZE, 3))
  for c in range(3):
    x[colour == c, :, :_EDGE, c] += 150
  yy, xx = np.mgrid[0:SIZE, 0:_EDGE]
  marks = ((yy // 4) % 2 == 0, (xx // 4) % 2 == 0,
           ((yy // 4) + (xx // 4)) % 2 == 0)
  for p, mark in enumerate(marks):
    x[pattern == p, :, SIZE - _EDGE:, :] += 150 * mark[None, :, :, None]
  return (np.clip(x, 0, 255).astype(np.uint8),
          {"colour": colour, "pattern": pattern})


def train_regions(head_pooling: str, seed: int = 0) -> dict:
  """Trains the small CNN on the seen pairs (768 images, 4 epochs); returns
  accuracies on seen pairs and on the held-out pair, and for attention the
  mean attention mass each head puts on its own half of the map."""
  seen = [(c, p) for c in range(3) for p in range(3) if (c, p) != HELD_OUT]
  keras.utils.set_random_seed(seed)
  model = model_lib.small_cnn(REGIONS, SIZE, head_pooling)
  model.compile(keras.optimizers.Adam(3e-3),
                loss="sparse_categorical_crossentropy")
  x, y = region_images(768, seed, seen)
  model.fit(x, y, batch_size=32, epochs=4, verbose=0)
  result = {}
  for split, (images, labels) in (
      ("seen", region_images(128, 200 + seed, seen)),
      ("held_out", region_images(64, 100 + seed, [HELD_OUT]))):
    out = model.predict(images, verbose=0)
    result[split] = {h: float(np.mean(out[h].argmax(-1) == labels[h]))
                     for h in REGIONS.names}
    if split == "held_out" and head_pooling == "attention":
      result["mass"] = {}
      for head, cols in (("colour", slice(0, 2)), ("pattern", slice(2, 4))):
        w = _weights_model(model, head).predict(images, verbose=0)
        w = w.reshape(-1, 4, 4)  # row-major locations of the 4x4 map
        result["mass"][head] = float(w[:, :, cols].sum(axis=(1, 2)).mean())
  return result


class RegionsTest(tf.test.TestCase):

  def test_heads_attend_to_their_region(self):
    avg = train_regions("avg")
    att = train_regions("attention")
    print(f"\nregions, seed 0: avg {avg}\nregions, seed 0: attention {att}")
    for result in (avg, att):
      for head in REGIONS.names:
        self.assertGreaterEqual(result["seen"][head], 0.95)
      self.assertEqual(result["held_out"]["colour"], 1.0)
    # Held on seeds 0-5 (lowest 0.69); the pattern head's mass did not
    # (0.42 and 0.43 on two of them).
    self.assertGreater(att["mass"]["colour"], 0.5)
    self.assertGreater(np.mean(list(att["mass"].values())), 0.5)


class ExportParityTest(tf.test.TestCase):

  def test_saved_model_tflite_and_onnx_match_keras(self):
    keras.utils.set_random_seed(2)
    model = model_lib.small_cnn(testutil.SCHEMA, SIZE, "attention")
    _scramble_attention(model, testutil.SCHEMA, scale=0.5)
    # Spread the probabilities (a random head's are all near 1/k).
    for head in testutil.SCHEMA.names:
      kernel, bias = model.get_layer(head).get_weights()
      model.get_layer(head).set_weights([kernel * 30.0, bias])
    images = _images(6, seed=5)
    want = {k: np.asarray(v) for k, v in model(images).items()}
    self.assertGreater(np.ptp(want["shape"]), 0.3)
    root = self.get_temp_dir()
    saved = saved_model_lib.to_saved_model(
        model, testutil.SCHEMA, os.path.join(root, "saved_model"))
    testutil.SCHEMA.save(root)
    candidates = {
        "saved_model": predictors.SavedModelPredictor(saved),
        "tflite": predictors.TFLitePredictor(tflite_lib.to_tflite(
            saved, os.path.join(root, "model.tflite"))),
        "onnx": predictors.OnnxPredictor(onnx_lib.to_onnx(
            saved, os.path.join(root, "model.onnx"))),
    }
    for kind, predictor in candidates.items():
      got = predictor(images)
      self.assertEqual(sorted(got), sorted(testutil.SCHEMA.names), kind)
      for head in testutil.SCHEMA.names:
        diff = float(np.max(np.abs(got[head] - want[head])))
        print(f"\n{kind} {head}: max |diff| {diff:.1e}", end="")
        self.assertLess(diff, 1e-4, f"{kind} {head}: max |diff| {diff}")


if __name__ == "__main__":
  tf.test.main()
