"""Tests for tag heads' thresholds and decisions, and their masked loss."""

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.inference import files as predict_lib
from mlc_keras.labeling import tagging
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square")),
    heads_lib.HeadSpec("marks", ("bar", "corner", "edge"), kind=heads_lib.TAGS),
))


class ThresholdTest(tf.test.TestCase):

  def test_threshold_maximises_f1_halfway_below_the_kept_score(self):
    # Cuts (on iff score >= cut): 0.8 -> P 1, R 1/2, F1 2/3; 0.4 -> 1/2, 1/2,
    # 1/2; 0.35 -> 2/3, 1, 4/5; 0.1 -> 1/2, 1, 2/3. Best 0.35; the next
    # lower score is 0.1, so the threshold is 0.225.
    threshold, f1, note = tagging.fit_threshold(
        np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    self.assertAlmostEqual(threshold, 0.225)
    self.assertAlmostEqual(f1, 0.8)
    self.assertIsNone(note)

  def test_ties_keep_the_highest_threshold(self):
    # Cuts 0.8 and 0.2 both give F1 2/3: 0.8 wins, halfway to 0.6 below it.
    threshold, f1, _ = tagging.fit_threshold(
        np.array([0.2, 0.4, 0.6, 0.8]), np.array([1, 0, 0, 1]))
    self.assertAlmostEqual(threshold, 0.7)
    self.assertAlmostEqual(f1, 2 / 3)
    # The lowest score kept: halfway to 0.
    self.assertAlmostEqual(tagging.fit_threshold(
        np.array([0.2, 0.6]), np.array([1, 1]))[0], 0.1)

  def test_no_positive_or_no_label_gives_the_default_and_a_note(self):
    for truth in (np.zeros(3), np.zeros(0)):
      threshold, f1, note = tagging.fit_threshold(np.full(truth.size, 0.9),
                                                  truth)
      self.assertEqual(threshold, 0.5)
      self.assertIsNone(f1)
      self.assertStartsWith(note, "not defined")

  def test_fit_schema_uses_labelled_rows_only(self):
    probs = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.2], [0.8, 0.1, 0.3],
                      [0.1, 0.1, 0.9]], np.float32)
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    # Row 3 is unlabelled: its "edge" positive must not count.
    mask = np.array([True, True, True, False])
    collected = {"shape": (np.full((4, 2), 0.5), np.zeros(4), mask),
                 "marks": (probs, truth, mask)}
    schema, report = tagging.fit_schema(SCHEMA, collected)
    # bar: positives {0.9}, negatives {0.3, 0.8}: cut 0.9 (F1 1), halfway
    # to 0.8. corner: cut 0.6 (F1 1), halfway to 0.2.
    self.assertAllClose(schema.head("marks").thresholds, [0.85, 0.4, 0.5])
    self.assertEqual(report["marks"]["edge"]["note"], tagging.NO_POSITIVE)
    self.assertIsNone(report["marks"]["edge"]["f1"])
    self.assertAlmostEqual(report["marks"]["bar"]["f1"], 1.0)
    # Without validation data every tag keeps the default, with a note.
    schema, report = tagging.fit_schema(SCHEMA, None)
    self.assertEqual(schema.head("marks").thresholds, (0.5, 0.5, 0.5))
    self.assertEqual(report["marks"]["bar"]["note"], tagging.NO_VALIDATION)

  def test_decisions_table_row_and_predict_json(self):
    head = SCHEMA.with_thresholds({"marks": [0.5, 0.25, 0.75]}).head("marks")
    row = np.array([0.5, 0.2, 0.8], np.float32)
    # At the threshold a tag is on.
    self.assertEqual(tagging.tag_names(row, head), ["bar", "edge"])
    schema = SCHEMA.with_thresholds({"marks": [0.5, 0.25, 0.75]})
    line = predict_lib.describe({"marks": row[None]}, 0, schema)
    self.assertEqual(line["marks"]["tags"], ["bar", "edge"])
    self.assertEqual(list(line["marks"]["scores"]), ["bar", "corner", "edge"])
    self.assertAlmostEqual(line["marks"]["scores"]["corner"], 0.2, places=6)
    # Decisions [[1,0,1],[0,1,0]] against truth [[1,0,0],[0,1,0]]: 5 of 6
    # right; each tag's more common value covers 1/2, 1/2 and 1 of the rows.
    got = metrics.tag_accuracy(np.array([row, [0.1, 0.3, 0.1]]),
                               np.array([[1, 0, 0], [0, 1, 0]]),
                               head.thresholds)
    self.assertAlmostEqual(got["accuracy"], 5 / 6)
    self.assertAlmostEqual(got["majority"], 2 / 3)


class TagLossTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(3)
    cls.model = model_lib.small_cnn(SCHEMA, 8)
    cls.x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3),
                                              dtype=np.uint8)
    cls.y = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 0]], np.float32)

  def _loss_and_grads(self, y, w):
    fn = losses.head_losses(SCHEMA)["marks"]
    kernel = self.model.get_layer("marks").trainable_variables
    with tf.GradientTape() as tape:
      out = self.model(self.x, training=False)["marks"]
      loss = fn(y, out, sample_weight=w)
    return loss, tape.gradient(loss, kernel), out.numpy()

  def test_sigmoid_outputs_named_after_the_head(self):
    out = self.model(self.x)
    self.assertEqual(out["marks"].shape, (4, 3))
    self.assertEqual(self.model.get_layer("marks").activation.__name__,
                     "sigmoid")

  def test_bce_averaged_over_labelled_samples(self):
    w = np.array([1, 0, 1, 1], np.float32)
    loss, _, p = self._loss_and_grads(self.y, w)
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(self.y * np.log(p) + (1 - self.y) * np.log(1 - p)).mean(axis=1)
    self.assertAllClose(loss, bce[w > 0].mean(), rtol=1e-5)

  def test_a_missing_row_adds_exactly_zero_loss_and_gradient(self):
    w = np.array([1, 0, 1, 1], np.float32)
    loss, grads, _ = self._loss_and_grads(self.y, w)
    # Whatever the masked row's targets, loss and gradient are bit-identical.
    flipped = self.y.copy()
    flipped[1] = 1 - flipped[1]
    loss2, grads2, _ = self._loss_and_grads(flipped, w)
    self.assertEqual(float(loss), float(loss2))
    for g, g2 in zip(grads, grads2):
      self.assertAllEqual(g, g2)
    # No labelled row at all: exactly 0, not NaN, and no gradient.
    loss, grads, _ = self._loss_and_grads(self.y, np.zeros(4, np.float32))
    self.assertEqual(float(loss), 0.0)
    for g in grads:
      self.assertEqual(float(tf.reduce_max(tf.abs(g))), 0.0)


if __name__ == "__main__":
  tf.test.main()
