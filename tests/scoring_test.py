"""scoring: the field's metrics against hand-computed numbers; masked samples
must not count and undefined numbers are None with a reason, never NaN."""

import math

import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.evaluation import scoring

# Three classes, seven rows, the last two masked. Labelled predictions
# (argmax) [0, 1, 1, 1, 0] against labels [0, 0, 1, 1, 2].
PROBS3 = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.15, 0.8, 0.05],
                   [0.2, 0.7, 0.1], [0.5, 0.3, 0.2],
                   [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]])
LABELS3 = np.array([0, 0, 1, 1, 2, 2, 0])
MASK3 = np.array([1, 1, 1, 1, 1, 0, 0], bool)
CLASSES3 = ("a", "b", "c")


class HeadScoresTest(tf.test.TestCase):

  def test_three_classes_masked_rows_do_not_count(self):
    r = scoring.head_scores(PROBS3, LABELS3, MASK3, CLASSES3, k=2)
    self.assertEqual((r["labelled"], r["total"]), (5, 7))
    self.assertAllClose(r["accuracy"], 3 / 5)
    # Recalls 1/2, 2/2, 0/1 (with the masked rows: 1/3, 2/2, 1/2).
    self.assertAllClose(r["balanced_accuracy"], 0.5)
    self.assertEqual(r["confusion"], [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    pc = r["per_class"]
    self.assertAllClose([pc[c]["precision"] for c in CLASSES3], [0.5, 2 / 3, 0])
    self.assertAllClose([pc[c]["recall"] for c in CLASSES3], [0.5, 1.0, 0])
    self.assertAllClose([pc[c]["f1"] for c in CLASSES3], [0.5, 0.8, 0])
    self.assertAllClose(r["macro_f1"], 1.3 / 3)
    # Row 4 (label c) has c third: 4 of 5 in the top 2.
    self.assertAllClose(r["top2"], 0.8)
    # Correct at 0.6, 0.8, 0.7; wrong twice at 0.5:
    # (0.4 + 0.2 + 0.3) / 5 + 2/5 * 0.5.
    self.assertAllClose(r["ece"], 0.38)
    self.assertNotIn("average_precision", r)
    self.assertNotIn("not_defined", r)

  def test_two_classes_ap_auc_on_labelled_rows(self):
    # The masked row (a negative scored 0.95) would halve the AUC.
    p_yes = np.array([0.9, 0.4, 0.6, 0.1, 0.95])
    probs = np.stack([1 - p_yes, p_yes], axis=1)
    labels = np.array([1, 1, 0, 0, 0])
    mask = np.array([1, 1, 1, 1, 0], bool)
    r = scoring.head_scores(probs, labels, mask, ("no", "yes"))
    # Positive-negative pairs ranked right: 3 of 4.
    self.assertAllClose(r["roc_auc"], 0.75)
    # Ranked P N P N: precision 1 at recall 1/2, 2/3 at recall 1.
    self.assertAllClose(r["average_precision"], 0.5 * 1 + 0.5 * 2 / 3)
    # Predictions yes, no, yes, no: TPR 1/2, TNR 1/2.
    self.assertAllClose(r["balanced_accuracy"], 0.5)
    self.assertNotIn("top2", r)

  def test_one_class_present_is_not_defined(self):
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    r = scoring.head_scores(probs, np.array([0, 0, 1]),
                            np.array([1, 1, 0], bool), ("no", "yes"))
    self.assertAllClose(r["accuracy"], 0.5)
    for key in ("balanced_accuracy", "average_precision", "roc_auc"):
      self.assertIsNone(r[key], key)
      self.assertIn("only class 'no'", r["not_defined"][key])

  def test_no_labelled_sample_is_not_defined(self):
    r = scoring.head_scores(PROBS3, LABELS3, np.zeros(7, bool), CLASSES3, k=2)
    self.assertEqual(r["labelled"], 0)
    self.assertNotIn("accuracy", r)
    self.assertIsNone(r["balanced_accuracy"])
    self.assertEqual(r["not_defined"]["balanced_accuracy"], scoring.NO_LABELS)


def _onehot(index, k):
  out = np.full((len(index), k), 0.05)
  out[np.arange(len(index)), index] = 1 - 0.05 * (k - 1)
  return out


# Head A (3 classes) and B (no/yes) on eight images; see the test for the
# images' attribute sets.
A_LABELS = np.array([0, 1, 2, 0, 0, 0, 1, 0])
A_PREDS = np.array([0, 2, 2, 1, 0, 0, 1, 0])
A_MASK = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
B_LABELS = np.array([1, 0, 1, 1, 1, 0, 1, 0])
B_PREDS = np.array([1, 1, 0, 1, 0, 0, 0, 0])
B_MASK = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
HEADS = (heads_lib.HeadSpec("a", ("a0", "a1", "a2")),
         heads_lib.HeadSpec("b", ("no", "yes")))


class AcrossHeadsTest(tf.test.TestCase):

  def test_instance_metrics_and_all_right_share(self):
    collected = {"a": (_onehot(A_PREDS, 3), A_LABELS, A_MASK),
                 "b": (_onehot(B_PREDS, 2), B_LABELS, B_MASK)}
    bacc = {h.name: scoring.head_scores(*collected[h.name], h.classes)[
        "balanced_accuracy"] for h in HEADS}
    # a: recalls 2/2, 1/2, 1/1; b: TPR 2/3, TNR 2/3.
    self.assertAllClose([bacc["a"], bacc["b"]], [5 / 6, 2 / 3])
    r = scoring.across_heads(collected, HEADS, bacc)
    self.assertAllClose(r["mean_balanced_accuracy"], 0.75)
    self.assertEqual(r["heads_in_mean"], ["a", "b"])
    # Image: true set / predicted set (attributes a0 a1 a2 b=yes).
    # 0 {a0,b}/{a0,b}  1 {a1}/{a2,b}  2 {a2}/{a2} (b masked)  3 {b}/{b}
    # (a masked)  4 nothing labelled: left out  5 {a0}/{a0}
    # 6 {a1,b}/{a1}  7 {}/{} (only b=no labelled): 0 as in the PAR code.
    inst = r["instance"]
    self.assertEqual(inst["images"], 7)
    self.assertAllClose(inst["accuracy"], (1 + 0 + 1 + 1 + 1 + 0.5 + 0) / 7)
    self.assertAllClose(inst["precision"], 5 / 7)
    self.assertAllClose(inst["recall"], 4.5 / 7)
    p, rec = 5 / 7, 4.5 / 7
    self.assertAllClose(inst["f1"], 2 * p * rec / (p + rec))
    # Wrong: images 1 and 6 (image 2's wrong b is masked).
    self.assertAllClose(r["all_heads_right"], 5 / 7)

  def test_one_binary_head_and_no_labels(self):
    head = (heads_lib.HeadSpec("b", ("no", "yes")),)
    collected = {"b": (_onehot(np.array([1, 0, 1]), 2), np.array([1, 1, 0]),
                       np.array([1, 1, 0], bool))}
    r = scoring.across_heads(collected, head, {"b": 0.5})
    # {b}/{b} and {b}/{}: accuracy and recall 1/2, precision (1 + 0) / 2.
    self.assertAllClose([r["instance"]["accuracy"], r["instance"]["recall"],
                         r["instance"]["precision"]], [0.5, 0.5, 0.5])
    none = {"b": (collected["b"][0], collected["b"][1], np.zeros(3, bool))}
    r = scoring.across_heads(none, head, {"b": None})
    self.assertIsNone(r["mean_balanced_accuracy"])
    self.assertIsNone(r["instance"]["f1"])
    self.assertIsNone(r["all_heads_right"])
    self.assertIn("mean_balanced_accuracy", r["not_defined"])
    self.assertIn("all_heads_right", r["not_defined"])


class SeenUnseenTest(tf.test.TestCase):
  # Heads shape (circle, square, triangle) and colour (blue, green, red).
  VALUES = ((0, 2), (1, 0), (2, 0), (-1, 1))
  NAMES = ("red_circle", "blue_square", "blue_triangle", "anything_green")

  def test_seen_needs_every_specified_head_labelled(self):
    train = {"shape": np.array([0, 1, 2, 0]),
             "colour": np.array([2, 0, -1, 1])}
    seen = scoring.seen_classes(self.VALUES, ("shape", "colour"), train)
    # The triangle's colour is missing, so blue_triangle was never seen.
    self.assertEqual(seen.tolist(), [True, True, False, True])

  def test_seen_with_a_tag_head_asks_for_the_tag(self):
    # A tag head's labels are [N, tags] 0/1 rows (-1 = missing row): the
    # class (circle, tag 1) is seen only where that tag is present.
    train = {"shape": np.array([0, 0, 1]),
             "marks": np.array([[1, 0], [-1, -1], [0, 1]])}
    seen = scoring.seen_classes(((0, 1), (1, 1), (0, -1)), ("shape", "marks"),
                                train)
    self.assertEqual(seen.tolist(), [False, True, True])

  def test_s_u_h(self):
    target = np.array([0, 0, 1, 2, 2, 2, 3])
    pred = np.array([0, 1, 1, 2, 0, 0, 3])
    seen = np.array([True, True, False, True])
    r = scoring.gzsl_scores(target, pred, seen, self.NAMES)
    # Per-class accuracy 1/2, 1, 1/3, 1.
    s, u = (0.5 + 1 + 1) / 3, 1 / 3
    self.assertAllClose(r["seen"], s)
    self.assertAllClose(r["unseen"], u)
    self.assertAllClose(r["harmonic"], 10 / 21)
    self.assertAllClose(r["harmonic"], 2 * s * u / (s + u))
    self.assertAllClose(r["mean_per_class"], (0.5 + 1 + 1 / 3 + 1) / 4)
    self.assertEqual(r["unseen_classes"], ["blue_triangle"])
    self.assertNotIn("not_defined", r)

  def test_no_unseen_rows_is_not_defined(self):
    r = scoring.gzsl_scores(np.array([0, 3]), np.array([0, 0]),
                            np.array([True, True, False, True]), self.NAMES)
    self.assertAllClose(r["seen"], 0.5)
    self.assertIsNone(r["unseen"])
    self.assertIsNone(r["harmonic"])
    self.assertEqual(r["not_evaluated"], ["blue_square", "blue_triangle"])
    self.assertEqual(set(r["not_defined"]), {"unseen", "harmonic"})
    for v in (r["seen"], r["mean_per_class"]):
      self.assertFalse(math.isnan(v))


class HeadAccuracyBySplitTest(tf.test.TestCase):

  def test_each_head_on_seen_and_unseen_rows_and_the_gap(self):
    # Rows 0-2 of seen combinations, 3-4 of unseen ones.
    row_seen = np.array([1, 1, 1, 0, 0], bool)
    collected = {
        # argmax 0 1 1 0 2 against 0 1 0 1 2: seen 2/3, unseen 1/2.
        "a": (np.array([[.9, .1, 0], [.1, .9, 0], [.2, .8, 0], [.6, .4, 0],
                        [0, .1, .9]]),
              np.array([0, 1, 0, 1, 2]), np.ones(5, bool)),
        # Row 1 and row 4 unlabelled: seen 2/2 right, unseen 0/1.
        "b": (np.array([[.8, .2], [.3, .7], [.1, .9], [.7, .3], [.5, .5]]),
              np.array([0, 0, 1, 1, 0]), np.array([1, 0, 1, 1, 0], bool)),
        # A tag head has no single accuracy: left out.
        "t": (np.zeros((5, 2)), np.zeros((5, 2)), np.ones(5, bool)),
    }
    r = scoring.head_accuracy_by_split(collected, row_seen)
    self.assertEqual(sorted(r), ["a", "b"])
    self.assertAllClose([r["a"]["seen"], r["a"]["unseen"], r["a"]["gap"]],
                        [2 / 3, 1 / 2, 2 / 3 - 1 / 2])
    self.assertEqual((r["a"]["seen_rows"], r["a"]["unseen_rows"]), (3, 2))
    self.assertAllClose([r["b"]["seen"], r["b"]["unseen"], r["b"]["gap"]],
                        [1.0, 0.0, 1.0])
    self.assertEqual((r["b"]["seen_rows"], r["b"]["unseen_rows"]), (2, 1))
    none = scoring.head_accuracy_by_split({"a": collected["a"]},
                                          np.ones(5, bool))
    self.assertIsNone(none["a"]["unseen"])
    self.assertIsNone(none["a"]["gap"])


class TagScoresTest(tf.test.TestCase):

  def test_tags_are_binary_attributes_across_heads(self):
    heads = (heads_lib.HeadSpec("b", ("no", "yes")),
             heads_lib.HeadSpec("t", ("x", "y"), kind=heads_lib.TAGS,
                                thresholds=(0.5, 0.5)))
    collected = {
        "b": (_onehot(np.array([1, 0, 0]), 2), np.array([1, 0, 1]),
              np.array([1, 1, 0], bool)),
        "t": (np.array([[0.9, 0.6], [0.9, 0.9], [0.2, 0.7]]),
              np.array([[1, 0], [1, 1], [0, 1]]), np.array([1, 0, 1], bool))}
    r = scoring.across_heads(collected, heads, {"b": 1.0})
    # 0 {b,x}/{b,x,y}  1 {}/{} (t masked)  2 {y}/{y} (b masked).
    inst = r["instance"]
    self.assertEqual(inst["images"], 3)
    self.assertAllClose(inst["accuracy"], (2 / 3 + 0 + 1) / 3)
    self.assertAllClose(inst["precision"], (2 / 3 + 0 + 1) / 3)
    self.assertAllClose(inst["recall"], (1 + 0 + 1) / 3)
    # Image 0's extra tag y makes it wrong; image 1's tags are masked.
    self.assertAllClose(r["all_heads_right"], 2 / 3)

  def test_map_cf1_of1_by_hand_and_masked_rows_do_not_count(self):
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.2], [0.3, 0.8, 0.4],
                      [0.9, 0.9, 0.9]])
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]])
    # Row 3 is unlabelled: had it counted, tag c would have a positive.
    mask = np.array([True, True, True, False])
    got = scoring.tag_scores(probs, truth, mask, ("a", "b", "c"),
                             (0.5, 0.75, 0.5))
    # a: ranked 0.9+, 0.6-, 0.3+ -> AP = 1/2 * 1 + 1/2 * 2/3; b: AP 1.
    self.assertAlmostEqual(got["per_tag"]["a"]["ap"], 5 / 6)
    self.assertAlmostEqual(got["per_tag"]["b"]["ap"], 1.0)
    self.assertIsNone(got["per_tag"]["c"]["ap"])
    self.assertIn("ap:c", got["not_defined"])
    self.assertAlmostEqual(got["mAP"], (5 / 6 + 1) / 2)
    # Decisions: a [1,1,0] (P 1/2, R 1/2), b at 0.75 [0,0,1] (P 1, R 1/2);
    # c has no positive and stays out of CP / CR.
    self.assertAlmostEqual(got["CP"], 0.75)
    self.assertAlmostEqual(got["CR"], 0.5)
    self.assertAlmostEqual(got["CF1"], 0.6)
    # Pooled: 2 hits of 3 predicted and 4 actual positives.
    self.assertAlmostEqual(got["OP"], 2 / 3)
    self.assertAlmostEqual(got["OR"], 0.5)
    self.assertAlmostEqual(got["OF1"], 4 / 7)
    self.assertAlmostEqual(got["label_accuracy"], 6 / 9)
    self.assertEqual(got["labelled"], 3)

  def test_no_positive_or_no_label_is_not_defined_never_nan(self):
    none = scoring.tag_scores(np.full((2, 2), 0.7), np.zeros((2, 2)),
                              np.ones(2, bool), ("a", "b"), (0.5, 0.5))
    self.assertIsNone(none["mAP"])
    self.assertIsNone(none["CF1"])
    self.assertIn("mAP", none["not_defined"])
    # Every decision is a false positive: OP 0, not NaN.
    self.assertEqual(none["OP"], 0.0)
    empty = scoring.tag_scores(np.zeros((2, 2)), np.zeros((2, 2)),
                               np.zeros(2, bool), ("a", "b"), (0.5, 0.5))
    self.assertEqual(empty["not_defined"], {"mAP": scoring.NO_LABELS})


if __name__ == "__main__":
  tf.test.main()
