"""Tests of temperature scaling: the fit recovers a known temperature, the
layer matches numpy, survives save/load and never changes the argmax."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mlc_keras.evaluation import calibrate
from mlc_keras.evaluation import scoring
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import layers
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square", "triangle")),
    heads_lib.HeadSpec("colour", ("blue", "red")),
))


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


class TemperatureTest(tf.test.TestCase):

  def test_fit_recovers_overconfidence(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20000, 4))
    true = _softmax(logits)
    labels = np.array([rng.choice(4, p=p) for p in true])
    # The model reports logits x2.5: over-confident by a temperature of 2.5.
    reported = _softmax(logits * 2.5)
    t = calibrate.fit_temperature(reported, labels)
    self.assertAllClose(t, 2.5, atol=0.1)
    ece_before = scoring.expected_calibration_error(reported, labels)
    ece_after = scoring.expected_calibration_error(
        calibrate.scale(reported, t), labels)
    self.assertGreater(ece_before, 0.1)
    self.assertLess(ece_after, 0.02)
    self.assertEqual(calibrate.fit_temperature(reported[:0], labels[:0]), 1.0)

  def test_scale(self):
    p = np.array([[0.2, 0.8]])
    # p^(1/2) normalised.
    expected = np.sqrt(p) / np.sqrt(p).sum()
    self.assertAllClose(calibrate.scale(p, 2.0), expected)
    layer = layers.Temperature(2.0)
    self.assertAllClose(layer(tf.constant(p, tf.float32)), expected, atol=1e-6)
    with self.assertRaises(ValueError):
      layers.Temperature(0.0)

  def test_model_round_trip(self):
    model = model_lib.build_model(SCHEMA, 32, "MobileNetV2", None)
    scaled = outputs.with_temperatures(model, {"shape": 2.0, "colour": 0.5})
    again = outputs.with_temperatures(scaled, {"shape": 3.0})
    self.assertEqual(outputs.temperatures_of(again),
                     {"shape": 3.0, "colour": 0.5})
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
    raw = model(images, training=False)
    out = again(images, training=False)
    self.assertEqual(set(out), {"shape", "colour"})
    self.assertAllClose(out["shape"], calibrate.scale(raw["shape"], 3.0),
                        atol=1e-5)
    self.assertAllClose(out["colour"], calibrate.scale(raw["colour"], 0.5),
                        atol=1e-5)
    path = os.path.join(self.get_temp_dir(), "cal.keras")
    again.save(path)
    loaded = saving.load_model(path)
    self.assertEqual(outputs.temperatures_of(loaded),
                     {"shape": 3.0, "colour": 0.5})
    self.assertAllClose(loaded(images, training=False)["shape"], out["shape"],
                        atol=1e-6)
    with self.assertRaisesRegex(ValueError, "size"):
      outputs.with_temperatures(model, {"size": 2.0})


if __name__ == "__main__":
  tf.test.main()
