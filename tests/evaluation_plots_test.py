"""evaluation/plots.py: the curves' panels, the normalised confusion matrix,
the tag heads' precision-recall curves and evaluate's files."""

import os

import numpy as np
from sklearn import metrics as skm
import tensorflow as tf

from mlc_keras.evaluation import report as evaluate_lib
from mlc_keras.evaluation import plots

# history.csv's header from a real five-head run (CSVLogger sorts columns).
GLYPHS_COLUMNS = (
    "epoch,case_acc,case_balanced_acc,case_loss,char_acc,char_balanced_acc,"
    "char_loss,char_top5,family_acc,family_balanced_acc,family_loss,"
    "family_top5,loss,mean_balanced_accuracy,slant_acc,slant_balanced_acc,"
    "slant_loss,val_case_acc,val_case_balanced_acc,val_case_loss,val_char_acc,"
    "val_char_balanced_acc,val_char_loss,val_char_top5,val_family_acc,"
    "val_family_balanced_acc,val_family_loss,val_family_top5,val_loss,"
    "val_mean_balanced_accuracy,val_slant_acc,val_slant_balanced_acc,"
    "val_slant_loss,val_weight_acc,val_weight_balanced_acc,val_weight_loss,"
    "weight_acc,weight_balanced_acc,weight_loss").split(",")


def _history(columns, epochs=3):
  rng = np.random.default_rng(0)
  out = {c: list(rng.random(epochs)) for c in columns}
  out["epoch"] = [float(e) for e in range(epochs)]
  return out


def _titled(fig):
  # Twin (loss) axes carry no title; the panels do.
  return [ax for ax in fig.axes if ax.get_title()]


class CurvesTest(tf.test.TestCase):

  def tearDown(self):
    plots.pyplot().close("all")
    super().tearDown()

  def test_heads_read_off_a_real_header(self):
    panels = plots.history_panels(GLYPHS_COLUMNS)
    self.assertEqual(list(panels),
                     ["overall", "case", "char", "family", "slant", "weight"])
    self.assertEqual(panels["char"]["top5"],
                     {"train": "char_top5", "validation": "val_char_top5"})
    self.assertEqual(panels["overall"]["mean_balanced_accuracy"],
                     {"train": "mean_balanced_accuracy",
                      "validation": "val_mean_balanced_accuracy"})
    # epoch belongs to no panel; every other column to exactly one.
    owned = [c for p in panels.values() for m in p.values() for c in m.values()]
    self.assertCountEqual(owned, GLYPHS_COLUMNS[1:])
    # A head seen only through its accuracy (no <head>_loss column).
    self.assertEqual(list(plots.history_panels(
        ["epoch", "loss", "shape_acc", "val_loss", "val_shape_acc"])),
                     ["overall", "shape"])
    # Given heads, the longest prefix owns a column.
    panels = plots.history_panels(["a_acc", "a_b_acc", "a_b_loss"],
                                  heads=["a", "a_b"])
    self.assertEqual(panels["a"], {"acc": {"train": "a_acc"}})
    self.assertEqual(panels["a_b"], {"acc": {"train": "a_b_acc"},
                                     "loss": {"train": "a_b_loss"}})

  def test_one_panel_per_head_plus_overall_integer_epochs(self):
    history = _history(GLYPHS_COLUMNS[1:], epochs=7)
    fig, panels = plots.curves_figure(history)
    self.assertLen(panels, 5 + 1)
    self.assertCountEqual(_titled(fig), panels.values())
    for name, ax in panels.items():
      ticks = ax.get_xticks()
      self.assertAllEqual(ticks, np.round(ticks), msg=name)
      # Nothing drawn over the data: one legend, the figure's.
      self.assertIsNone(ax.get_legend())
    self.assertLen(fig.legends, 1)
    # char: acc, balanced_acc, top5 on the left axis, train and validation.
    lines = {l.get_label(): l for l in panels["char"].get_lines()}
    self.assertLen(lines, 6)
    val = lines["top5 (validation)"]
    self.assertEqual(val.get_linestyle(), "--")
    self.assertEqual(lines["top5 (train)"].get_linestyle(), "-")
    self.assertAllClose(val.get_ydata(), history["val_char_top5"])
    self.assertAllEqual(val.get_xdata(), [1, 2, 3, 4, 5, 6, 7])
    # Train and validation of one metric share a colour; metrics differ.
    self.assertEqual(val.get_color(), lines["top5 (train)"].get_color())
    self.assertLen({l.get_color() for l in lines.values()}, 3)

  def test_writes_png_and_nothing_without_epochs(self):
    path = os.path.join(self.get_temp_dir(), "curves.png")
    self.assertTrue(plots.plot_history(_history(["loss", "shape_acc"]), path))
    with open(path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    self.assertFalse(plots.plot_history({"epoch": []}, path + "2"))
    self.assertFalse(os.path.exists(path + "2"))


class ConfusionTest(tf.test.TestCase):

  def tearDown(self):
    plots.pyplot().close("all")
    super().tearDown()

  def test_rows_are_shares_of_the_true_class(self):
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    share = plots.normalise_confusion(cm)
    self.assertAllClose(share, [[0.75, 0.25, 0], [0, 0, 0],
                                [0.25, 0.25, 0.5]])
    # A class with no labelled sample keeps zeros, not NaN.
    self.assertAllClose(share.sum(axis=1), [1, 0, 1])
    fig = plots.confusion_figure(cm, ["a", "b", "c"], "shape")
    ax = fig.axes[0]
    self.assertAllClose(ax.images[0].get_array(), share)
    texts = [t.get_text() for t in ax.texts]
    # Row by row; the empty row is not annotated.
    self.assertEqual(texts, ["0.75\n3", "0.25\n1", "0.00\n0",
                             "0.25\n2", "0.25\n2", "0.50\n4"])
    self.assertEqual([t.get_text() for t in ax.get_yticklabels()],
                     ["a (4)", "b (0)", "c (8)"])
    self.assertEqual([t.get_text() for t in ax.get_xticklabels()],
                     ["a", "b", "c"])
    self.assertLen(fig.axes, 2)  # the matrix and its colour bar

  def test_many_classes_no_annotations(self):
    n = plots.ANNOTATE_MAX_CLASSES + 1
    cm = np.eye(n, dtype=int) * 5 + 1
    fig = plots.confusion_figure(cm, [f"c{i}" for i in range(n)], "char")
    self.assertEmpty(fig.axes[0].texts)
    self.assertAllClose(fig.axes[0].images[0].get_array().sum(axis=1),
                        np.ones(n))
    self.assertLen(fig.axes, 2)


class PrecisionRecallTest(tf.test.TestCase):

  SCORES = np.array([[0.9, 0.1], [0.8, 0.6], [0.7, 0.2], [0.4, 0.3],
                     [0.3, 0.8], [0.2, 0.5], [0.5, 0.9]])
  TRUTH = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, 0], [0, 0]])
  # The last row is unlabelled: no curve may use it.
  MASK = np.array([True] * 6 + [False])

  def tearDown(self):
    plots.pyplot().close("all")
    super().tearDown()

  def _artists(self, fig):
    return {l.get_gid(): l for l in fig.axes[0].get_lines() if l.get_gid()}

  def test_curve_points_match_sklearn_and_marker_at_threshold(self):
    thresholds = [0.55, 0.7]
    fig = plots.pr_figure(self.SCORES, self.TRUTH, self.MASK, ["a", "b"],
                          thresholds, "tags")
    drawn = self._artists(fig)
    p, t = self.SCORES[:6], self.TRUTH[:6]
    for i, tag in enumerate(["a", "b"]):
      precision, recall, cuts = skm.precision_recall_curve(t[:, i], p[:, i])
      self.assertAllClose(drawn[f"curve:{tag}"].get_xdata(), recall)
      self.assertAllClose(drawn[f"curve:{tag}"].get_ydata(), precision)
      # The marker is the curve's point at the lowest cut >= the threshold.
      k = int(np.searchsorted(cuts, thresholds[i]))
      marker = drawn[f"threshold:{tag}"]
      self.assertAllClose([marker.get_xdata()[0], marker.get_ydata()[0]],
                          [recall[k], precision[k]])
    # By hand: a at 0.55 keeps 0.9, 0.8, 0.7 (two of three right, two of
    # three positives found); b at 0.7 keeps 0.8 only (right, one of two).
    self.assertAllClose(plots.threshold_point(p[:, 0], t[:, 0], 0.55),
                        (2 / 3, 2 / 3))
    self.assertAllClose(plots.threshold_point(p[:, 1], t[:, 1], 0.7),
                        (0.5, 1.0))
    # Pooled over both tags at their thresholds: 3 right of 4 kept, of 5.
    micro = drawn["threshold:micro"]
    self.assertAllClose([micro.get_xdata()[0], micro.get_ydata()[0]],
                        [3 / 5, 3 / 4])
    precision, recall, _ = skm.precision_recall_curve(t.ravel(), p.ravel())
    self.assertAllClose(drawn["curve:micro"].get_xdata(), recall)
    self.assertAllClose(drawn["curve:micro"].get_ydata(), precision)

  def test_tags_without_positive_and_the_cap(self):
    truth = self.TRUTH.copy()
    truth[:, 1] = 0
    fig = plots.pr_figure(self.SCORES, truth, self.MASK, ["a", "b"],
                          [0.5, 0.5], "tags")
    self.assertNotIn("curve:b", self._artists(fig))
    self.assertIsNone(plots.pr_figure(self.SCORES, truth * 0, self.MASK,
                                      ["a", "b"], [0.5, 0.5], "tags"))
    # More tags than PR_MAX_TAGS: the most frequent ones are drawn.
    n = plots.PR_MAX_TAGS + 2
    rng = np.random.default_rng(1)
    truth = np.zeros((40, n), int)
    for i in range(n):
      truth[: i + 1, i] = 1  # tag i has i + 1 positives
    fig = plots.pr_figure(rng.random((40, n)), truth, np.ones(40, bool),
                          [f"t{i}" for i in range(n)], [0.5] * n, "tags")
    curves = {g for g in self._artists(fig) if g.startswith("curve:t")}
    self.assertEqual(curves, {f"curve:t{i}" for i in range(2, n)})


class EvaluateFilesTest(tf.test.TestCase):

  def test_confusion_pr_and_curves_files(self):
    model_dir = self.get_temp_dir()
    with open(os.path.join(model_dir, "history.csv"), "w") as f:
      f.write("epoch,loss,shape_acc,val_loss,val_shape_acc\n"
              "0,2.0,0.4,2.1,0.3\n1,1.5,0.6,1.7,0.5\n")
    report = {"heads": [
        {"head": "shape", "classes": ["circle", "square"],
         "confusion": [[2, 1], [0, 3]]},
        {"head": "labels", "kind": "tags", "classes": ["a", "b"],
         "per_tag": {"a": {"threshold": 0.55}, "b": {"threshold": 0.7}}},
        {"head": "empty", "kind": "tags", "classes": ["a", "b"],
         "per_tag": {"a": {"threshold": 0.5}, "b": {"threshold": 0.5}}}]}
    scores, truth = PrecisionRecallTest.SCORES, PrecisionRecallTest.TRUTH
    collected = {"labels": (scores, truth, PrecisionRecallTest.MASK),
                 "empty": (scores, truth * 0, PrecisionRecallTest.MASK)}
    evaluate_lib._plot(report, model_dir, collected)  # pylint: disable=protected-access
    written = sorted(f for f in os.listdir(model_dir) if f.endswith(".png"))
    # No positive tag in "empty": no picture rather than an empty one.
    self.assertEqual(written, ["confusion_shape.png", "curves.png",
                               "pr_labels.png"])
    self.assertEqual(report["curves"], "curves.png")


if __name__ == "__main__":
  tf.test.main()
