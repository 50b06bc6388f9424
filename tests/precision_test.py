"""The GPU code paths, run on CPU: mixed precision and XLA keep the masking
contract (an unlabelled head does not move) and agree with float32."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.modeling import model as model_lib
from mlc_keras.training import setup
from tests import testutil


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  y = {"shape": rng.integers(0, 3, n).astype(np.int32),
       "colour": np.zeros(n, np.int32)}
  # colour is unlabelled everywhere: weight 0.
  w = {"shape": np.ones(n, np.float32), "colour": np.zeros(n, np.float32)}
  return x, y, w


def _train(precision: str, jit_compile: bool, steps: int = 2):
  keras.mixed_precision.set_global_policy(precision)
  try:
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(testutil.SCHEMA, 32, "MobileNetV2")
    # Adam without weight decay: a zero gradient gives exactly a zero update.
    setup.compile_model(model, testutil.SCHEMA, keras.optimizers.Adam(1e-3),
                            top_k=2, jit_compile=jit_compile)
    colour0 = [np.array(v) for v in model.get_layer("colour").weights]
    shape0 = [np.array(v) for v in model.get_layer("shape").weights]
    x, y, w = _batch()
    losses = [model.train_on_batch(x, y, sample_weight=w, return_dict=True)
              for _ in range(steps)]
    out = model(x, training=False)
    return model, losses, out, colour0, shape0
  finally:
    keras.mixed_precision.set_global_policy("float32")


class PrecisionTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = _train("float32", False)

  def _check(self, precision, jit_compile, loss_tol, steps=2):
    """loss_tol: (first step, later steps). The first step's loss is computed
    with the same initial weights; after an Adam step, a tiny gradient
    difference can flip a near-zero gradient's update by up to the learning
    rate, so later losses drift more."""
    model, losses, out, colour0, shape0 = _train(precision, jit_compile, steps)
    for h in ("shape", "colour"):
      self.assertEqual(out[h].dtype, "float32", h)
    for before, v in zip(colour0, model.get_layer("colour").weights):
      self.assertAllEqual(before, np.array(v))  # masked head: not moved
    self.assertTrue(any(not np.array_equal(b, np.array(v)) for b, v in
                        zip(shape0, model.get_layer("shape").weights)))
    ref_losses = self.reference[1]
    for step, (got, ref) in enumerate(zip(losses, ref_losses)):
      self.assertTrue(np.isfinite(got["loss"]))
      tol = loss_tol[min(step, 1)]
      if tol is not None:
        self.assertAllClose(got["shape_loss"], ref["shape_loss"], atol=tol)
      self.assertEqual(got["colour_loss"], 0.0)
    return model

  def test_mixed_float16(self):
    # Dynamic loss scaling skips the first steps (the initial scale 2**15
    # overflows float16 gradients): only the first loss (same weights) is
    # compared, and a few more steps let the head move. float16 keeps ~3
    # significant digits per op; through MobileNetV2's BatchNorms at a 1x1
    # final map (batch variance of 8 samples) the first loss differs from
    # float32 by 0.0134 on one machine (1.2% of it) and under 0.01 on another:
    # 2e-2 bounds that rounding, while a masking or dtype bug moves it by
    # whole units.
    model = self._check("mixed_float16", False, loss_tol=(2e-2, None), steps=8)
    self.assertIsInstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

  def test_xla(self):
    # Same ops, fused: equal to float32 up to reordering of float sums. After
    # one Adam step the reordering shows as 0.0029 on one machine (under 0.002
    # on another): near-zero gradients' signs flip, moving weights by up to the
    # learning rate. The first step, same weights, stays within 1e-4.
    self._check("float32", True, loss_tol=(1e-4, 5e-3))


if __name__ == "__main__":
  tf.test.main()
