"""Logit adjustment by the co-occurrence prior of factor heads."""

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.modeling import factors
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("a", ("a0", "a1")),
    heads_lib.HeadSpec("b", ("b0", "b1", "b2")),
    heads_lib.HeadSpec("other", ("x", "y")),
))


class PriorTest(tf.test.TestCase):

  def test_smoothed_cooccurrence_by_hand(self):
    # Columns a, b, other; -1 is a missing label.
    labels = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0],
                       [1, 2, 1], [1, -1, 0], [-1, 2, 0]])
    got = factors.priors(labels, SCHEMA, ["a", "b"])
    # p(a): a labelled in 6 rows: a0 3, a1 3; +1 each -> 4/8, 4/8.
    self.assertAllClose(np.exp(got["a"].log_marginal), [0.5, 0.5])
    # p(a | b) over the 5 rows labelled for both, +1 per cell:
    # b0: a0 2, a1 1 -> 3/5, 2/5; b1: a0 1 -> 2/3, 1/3; b2: a1 1 -> 1/3, 2/3.
    want = np.array([[3 / 5, 2 / 5], [2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    pmi = got["a"].pmi["b"]
    self.assertAllClose(pmi[0], [0.0, 0.0])  # b missing: nothing added
    self.assertAllClose(np.exp(pmi[1:] + got["a"].log_marginal), want,
                        atol=1e-6)
    # p(b): b labelled in 6 rows: b0 3, b1 1, b2 2; +1 -> 4/9, 2/9, 3/9.
    self.assertAllClose(np.exp(got["b"].log_marginal), [4 / 9, 2 / 9, 3 / 9])
    # A row's log prior: b = 1 -> log p(a | b1); b missing -> log p(a).
    rows = got["a"].log_prior({"b": np.array([1, -1])})
    self.assertAllClose(np.exp(rows), [[2 / 3, 1 / 3], [0.5, 0.5]], atol=1e-6)
    self.assertNotIn("other", got)

  def test_pipeline_target_carries_the_prior(self):
    labels = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, -1, 1]], np.int32)
    priors = factors.priors(labels, SCHEMA, ["a", "b"])
    ys, ws = pipeline._targets(tf.constant(labels), SCHEMA, None, priors)  # pylint: disable=protected-access
    self.assertEqual(ys["a"].shape, (4, 4))
    self.assertAllClose(ys["a"][:, :2], np.eye(2)[[0, 1, 0, 1]])
    want = priors["a"].log_prior({"b": labels[:, 1]})
    self.assertAllClose(ys["a"][:, 2:], want)
    self.assertEqual(ys["other"].shape, (4,))  # not a factor: class indices
    self.assertAllClose(ws["b"], [1, 1, 1, 0])
    # The metrics read the class from the one-hot half.
    self.assertAllEqual(metrics.hard_labels(ys["a"], tf.zeros((4, 2))),
                        [0, 1, 0, 1])

  def test_loss_is_cross_entropy_of_adjusted_logits(self):
    logits = np.array([[0.3, -0.2], [1.0, 2.0]], np.float32)
    prior = np.log(np.array([[0.9, 0.1], [0.2, 0.8]], np.float32))
    target = np.eye(2, dtype=np.float32)[[1, 0]]
    loss = losses.head_loss(SCHEMA.head("a"), soft=True)
    got = loss.call(np.concatenate([target, prior], -1),
                    keras.ops.softmax(logits))
    adjusted = logits + prior
    want = -(adjusted - np.log(np.exp(adjusted).sum(-1, keepdims=True)))
    self.assertAllClose(got, [want[0, 1], want[1, 0]], atol=1e-5)

  def test_unknown_or_single_head_is_refused_by_name(self):
    labels = np.zeros((2, 3), np.int32)
    with self.assertRaisesRegex(heads_lib.SchemaError, "'c' is not a head"):
      factors.priors(labels, SCHEMA, ["a", "c"])
    with self.assertRaisesRegex(heads_lib.SchemaError, "at least two"):
      factors.priors(labels, SCHEMA, ["a"])


def _two_factor_images(n, combos, rng):
  """16x16 images: b is the background colour (strong, red / green / blue),
  a a small white square in a corner (a1) or none (a0), with noise."""
  images, labels = [], []
  for i in range(n):
    a, b = combos[i % len(combos)]
    img = rng.integers(0, 60, (16, 16, 3))
    img[..., b] += 150
    if a:
      img[2:6, 2:6] = 255
    images.append(np.clip(img, 0, 255).astype(np.uint8))
    labels.append((a, b, 0))
  return np.stack(images), np.array(labels, np.int32)


class ComposeTest(tf.test.TestCase):
  """One combination absent from training: the adjusted head names its own
  value on that combination's images, the plain head does not."""

  def _train(self, priors):
    keras.utils.set_random_seed(0)
    schema = SCHEMA.select(["a", "b"])
    rng = np.random.default_rng(0)
    seen = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 2)]  # (a1, b1) held out
    # b1 is common, so the plain head's shortcut "b1 means a0" pays.
    seen += [(0, 1)] * 5
    images, labels = _two_factor_images(640, seen, rng)
    labels = labels[:, :2]
    source = sources.Source(
        lambda: tf.data.Dataset.from_tensor_slices((images, labels)),
        len(images), False, "two factors")
    priors = factors.priors(labels, schema, ["a", "b"]) if priors else None
    ds = pipeline.train_dataset(source, schema, image_size=16, batch_size=32,
                                seed=0, end_epoch=15,
                                factor_priors=priors)
    model = model_lib.small_cnn(schema, 16)
    model.compile(keras.optimizers.Adam(3e-3),
                  loss=losses.head_losses(schema, soft=bool(priors)))
    model.fit(ds, epochs=1, verbose=0)
    test, _ = _two_factor_images(64, [(1, 1)], rng)
    probs = model.predict(test, verbose=0)
    return float(np.mean(np.argmax(probs["a"], -1) == 1))

  def test_adjusted_head_reads_its_own_attribute(self):
    plain = self._train(priors=False)
    adjusted = self._train(priors=True)
    self.assertLess(plain, 0.5)
    self.assertGreater(adjusted, 0.9)


if __name__ == "__main__":
  tf.test.main()
