"""The learning-rate range test (training/lr_find.py)."""

import csv
import dataclasses
import os

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.modeling import model as model_lib
from mlc_keras.training import lr_find


class SuggestTest(tf.test.TestCase):

  def test_a_tenth_of_the_rate_at_the_lowest_smoothed_loss(self):
    rates = lr_find.schedule(1e-6, 1.0, 200)
    self.assertAllClose([rates[0], rates[-1]], [1e-6, 1.0])
    self.assertTrue(np.all(np.diff(rates) > 0))
    # A loss flat at 2, falling to 0.5 around 1e-2, then blowing up.
    x = np.log10(rates)
    losses = 2 - 1.5 * np.exp(-((x + 2) ** 2) / 0.5) + np.where(
        x > -1, 10 * (x + 1) ** 2, 0)
    noisy = losses + np.random.default_rng(0).normal(0, 0.2, len(losses))
    smoothed = lr_find.smooth_centered(list(noisy))
    suggestion, at_min = lr_find.suggest(list(rates), smoothed)
    # Centred smoothing does not lag: the minimum stays near 1e-2 (a causal
    # average at 0.98 puts it past 3e-2).
    self.assertBetween(at_min, 1e-2 / 1.5, 1e-2 * 1.5)
    _, causal = lr_find.suggest(list(rates), lr_find.smooth(list(noisy)))
    self.assertGreater(causal, 2.5e-2)
    self.assertAllClose(suggestion, at_min / 10)

  def test_smoothing_is_bias_corrected(self):
    self.assertAllClose(lr_find.smooth([3.0, 3.0, 3.0]), [3.0, 3.0, 3.0])


class RangeTestTest(tf.test.TestCase):

  def test_tiny_run_writes_its_curve_and_a_suggestion_inside_it(self):
    tmp = self.get_temp_dir()
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, demo_dir=os.path.join(tmp, "demo"), augment=()))
    out = os.path.join(tmp, "run", "lr_find")
    result = lr_find.range_test(
        cfg, out, steps=40,
        build_model=lambda c, s: model_lib.small_cnn(s, c.data.image_size))
    with open(result.csv_path, newline="") as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, len(result.losses))
    self.assertBetween(len(rows), 10, 40)
    lrs = [float(r["learning_rate"]) for r in rows]
    self.assertAllClose(lrs[0], 1e-6)
    self.assertTrue(np.all(np.diff(lrs) > 0))
    self.assertTrue(all(np.isfinite(float(r["loss"])) for r in rows[:10]))
    self.assertAllClose(result.suggestion, result.at_minimum / 10)
    self.assertBetween(result.at_minimum, lrs[0], lrs[-1])
    with open(result.png_path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    # Nothing of a run is written beside it.
    self.assertEqual(sorted(os.listdir(out)), ["lr_find.csv", "lr_find.png"])
    self.assertEqual(os.listdir(os.path.dirname(out)), ["lr_find"])


if __name__ == "__main__":
  tf.test.main()
