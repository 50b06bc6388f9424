"""Label smoothing and soft targets in the per-head losses, checked against
hand-computed cross-entropies; gradient clipping in the shared optimizer."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import losses
from mlc_keras.training import setup

SINGLE = heads_lib.HeadSpec("shape", ("a", "b", "c"))
TAGS = heads_lib.HeadSpec("marks", ("x", "y"), kind="tags")


def _xent(target, probs):
  return -sum(t * math.log(p) for t, p in zip(target, probs))


class LabelSmoothingTest(tf.test.TestCase):

  def test_smoothed_target_loss_matches_hand_computation(self):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    labels = np.array([0, 2])
    # s = 0.1, k = 3: 0.9 + 0.1/3 on the class, 0.1/3 elsewhere.
    on, off = 0.9 + 0.1 / 3, 0.1 / 3
    want = [_xent([on, off, off], probs[0]), _xent([off, off, on], probs[1])]
    loss = losses.head_loss(SINGLE, label_smoothing=0.1)
    got = loss.call(labels, probs).numpy()
    self.assertAllClose(got, want, atol=1e-5)
    # Not the plain cross-entropy: -ln 0.7, -ln 0.6.
    plain = losses.head_loss(SINGLE).call(labels, probs).numpy()
    self.assertAllClose(plain, [-math.log(0.7), -math.log(0.6)], atol=1e-5)
    self.assertGreater(abs(got[0] - plain[0]), 0.05)

  def test_masked_sample_adds_nothing_to_the_smoothed_loss(self):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    loss = losses.head_loss(SINGLE, label_smoothing=0.2)
    on, off = 0.8 + 0.2 / 3, 0.2 / 3
    got = float(loss(np.array([0, 1]), probs, sample_weight=np.array([1., 0.])))
    self.assertAllClose(got, _xent([on, off, off], probs[0]), atol=1e-5)

  def test_tag_head_smoothing_matches_hand_computation(self):
    probs = np.array([[0.8, 0.3]], np.float32)
    tags = np.array([[1.0, 0.0]], np.float32)
    # s = 0.2: targets 0.9 and 0.1; the loss is the mean over the tags.
    def bce(t, p):
      return -(t * math.log(p) + (1 - t) * math.log(1 - p))
    want = (bce(0.9, 0.8) + bce(0.1, 0.3)) / 2
    got = float(losses.head_loss(TAGS, label_smoothing=0.2)(tags, probs))
    self.assertAllClose(got, want, atol=1e-5)

  def test_soft_targets_use_the_given_probabilities(self):
    probs = np.array([[0.5, 0.3, 0.2]], np.float32)
    target = np.array([[0.6, 0.4, 0.0]], np.float32)
    got = losses.head_loss(SINGLE, soft=True).call(target, probs).numpy()
    self.assertAllClose(got, [_xent(target[0], probs[0])], atol=1e-5)

  def test_per_head_values_and_unknown_head(self):
    schema = heads_lib.LabelSchema((SINGLE, TAGS))
    self.assertEqual(losses.smoothing_per_head(schema, (("*", 0.1),)),
                     {"shape": 0.1, "marks": 0.1})
    self.assertEqual(
        losses.smoothing_per_head(schema, (("*", 0.1), ("marks", 0.0))),
        {"shape": 0.1, "marks": 0.0})
    with self.assertRaisesRegex(heads_lib.SchemaError, "unknown head 'colour'"):
      losses.smoothing_per_head(schema, (("colour", 0.1),))
    with self.assertRaisesRegex(ValueError, "label_smoothing.*shape"):
      losses.head_loss(SINGLE, label_smoothing=1.0)


class ClippingTest(tf.test.TestCase):

  def _step(self, clip, grad):
    cfg = config_lib.TrainConfig(optimizer="sgd", clip_global_norm=clip)
    opt = setup.optimizer(cfg, total_steps=10)
    a, b = tf.Variable([1.0, 1.0]), tf.Variable([2.0])
    opt.apply_gradients(zip([tf.constant(grad[:2]), tf.constant(grad[2:])],
                            [a, b]))
    return np.concatenate([a.numpy(), b.numpy()])

  def test_update_of_a_large_gradient_is_that_of_its_unit_norm_rescale(self):
    grad = np.array([6.0, 0.0, 8.0], np.float32)  # global norm 10 over a, b
    clipped = self._step(1.0, grad)
    self.assertAllClose(clipped, self._step(None, grad / 10), atol=1e-7)
    self.assertNotAllClose(clipped, self._step(None, grad), atol=1e-4)
    # Below the threshold nothing changes.
    self.assertAllClose(self._step(100.0, grad), self._step(None, grad))


if __name__ == "__main__":
  tf.test.main()
