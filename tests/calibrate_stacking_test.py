"""Calibrated stacking: the bias shifts exactly the seen classes' scores (in
numpy and in the ComposeClasses layer, through save / load), gamma is fitted
for the best H on hand-built scores, and evaluate's stacking report refuses
to fit on the unseen classes it reports on."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.evaluation import calibrate
from mlc_keras.labeling import compose
from mlc_keras.evaluation import report as evaluate_lib
from mlc_keras.evaluation import composed as composed_lib
from mlc_keras.evaluation import markdown as evaluation_md
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import layers
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square")),
    heads_lib.HeadSpec("colour", ("blue", "red")),
))
# Every (shape, colour) pair; circle_red and square_blue are "unseen".
TABLE = compose.from_dict({
    f"{s}_{c}": {"shape": s, "colour": c}
    for s in ("circle", "square") for c in ("blue", "red")}, SCHEMA)
SEEN = np.array([True, False, False, True])
PROBS = {"shape": np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]),
         "colour": np.array([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])}


class StackingBiasTest(tf.test.TestCase):

  def test_the_bias_shifts_exactly_the_seen_classes(self):
    gamma = 0.7
    bias = compose.stacking_bias(SEEN, gamma)
    self.assertAllEqual(bias, [0.7, 0.0, 0.0, 0.7])
    plain = compose.compose_probs(PROBS, TABLE)
    stacked = compose.compose_probs(PROBS, TABLE, bias)
    # log p changes by -gamma on the seen classes, 0 on the unseen ones, up
    # to one normalising constant per row.
    shift = np.log(stacked) - np.log(plain)
    shift -= shift[:, [1]]
    self.assertAllClose(shift, np.tile([-0.7, 0, 0, -0.7], (3, 1)), atol=1e-9)
    # Row 0 by hand: scores log(.7*.6), log(.7*.4), log(.3*.6), log(.3*.4).
    raw = np.array([.42, .28, .18, .12]) * np.exp(-bias)
    self.assertAllClose(stacked[0], raw / raw.sum())
    self.assertAllClose(compose.compose_probs(PROBS, TABLE, np.zeros(4)), plain)

  def test_the_layer_carries_the_bias_through_save_and_load(self):
    bias = compose.stacking_bias(SEEN, 1.3)
    inputs = {h: keras.Input((2,), name=h) for h in SCHEMA.names}
    model = keras.Model(inputs, layers.ComposeClasses.from_table(
        TABLE, bias=bias)(inputs))
    feed = {h: tf.constant(p, tf.float32) for h, p in PROBS.items()}
    want = compose.compose_probs(PROBS, TABLE, bias)
    self.assertAllClose(model(feed), want, atol=1e-6)
    path = os.path.join(self.get_temp_dir(), "stacked.keras")
    model.save(path)
    self.assertAllClose(saving.load_model(path)(feed), want, atol=1e-6)
    with self.assertRaisesRegex(ValueError, "bias must have 4 values"):
      layers.ComposeClasses.from_table(TABLE, bias=[1.0, 2.0])

  def test_a_class_table_keeps_the_bias_only_when_it_is_the_same(self):
    inputs = {h: keras.Input((2,), name=h) for h in SCHEMA.names}
    base = keras.Model(inputs, dict(inputs))
    model = outputs.with_class_output(base, TABLE, [0.5, 0, 0, 0.5])
    self.assertEqual(outputs.stacking_bias_of(model), [0.5, 0, 0, 0.5])
    bias, note = outputs.stacking_bias_for(model, TABLE)
    self.assertEqual((bias, "kept" in note), ([0.5, 0, 0, 0.5], True))
    other = compose.from_dict({"circle": {"shape": "circle"}}, SCHEMA)
    bias, note = outputs.stacking_bias_for(model, other)
    self.assertIsNone(bias)
    self.assertIn("another class table", note)
    self.assertEqual(outputs.stacking_bias_for(base, TABLE), (None, None))


class FitStackingTest(tf.test.TestCase):

  def test_gamma_maximises_h(self):
    # Classes 0, 3 seen; 1, 2 unseen. Rows: two of each seen class scored
    # right, two of each unseen class whose seen rival leads by 1 and 3.
    names = ["a", "b", "c", "d"]
    scores = np.array([
        [0, -5, -5, -5], [0, -5, -5, -4],      # a, right by 4+
        [-5, -5, -5, 0], [-5, -4, -5, 0],      # d, right by 4+
        [0, -1, -5, -5], [0, -3, -5, -5],      # b: behind a by 1 and 3
        [-5, -5, -1, 0], [-5, -5, -3, 0],      # c: behind d by 1 and 3
    ], float)
    target = np.array([0, 0, 3, 3, 1, 1, 2, 2])
    gamma, fit = calibrate.fit_stacking(scores, target, SEEN, names)
    # No bias: S 1, U 0, H 0. Past gamma 3 every unseen row is right and the
    # seen rows (margins >= 4) still are: H 1 for gamma in (3, 4).
    self.assertAllClose([fit["before"]["seen"], fit["before"]["unseen"],
                         fit["before"]["harmonic"]], [1, 0, 0])
    self.assertGreater(gamma, 3)
    self.assertLess(gamma, 4)
    self.assertAllClose([fit["after"]["seen"], fit["after"]["unseen"],
                         fit["after"]["harmonic"]], [1, 1, 1])

  def test_no_bias_when_nothing_beats_none(self):
    scores = np.array([[0, -2, -2, -2], [-2, 0, -2, -2]], float)
    gamma, fit = calibrate.fit_stacking(scores, np.array([0, 1]), SEEN,
                                        list("abcd"))
    self.assertEqual(gamma, 0.0)
    self.assertAllClose(fit["after"]["harmonic"], 1.0)

  def test_needs_seen_and_unseen_rows(self):
    with self.assertRaisesRegex(ValueError, "0 unseen classes"):
      calibrate.fit_stacking(np.zeros((2, 4)), np.array([0, 3]), SEEN,
                             list("abcd"))


class StackingReportTest(tf.test.TestCase):

  def _collected(self, shape, colour):
    shape, colour = np.array(shape), np.array(colour)
    onehot = lambda y: np.eye(2)[y] * 0.6 + 0.2
    return {"shape": (onehot(shape), shape, np.ones(len(shape), bool)),
            "colour": (onehot(colour), colour, np.ones(len(colour), bool))}

  def test_fit_on_other_unseen_classes_than_the_reported_ones(self):
    # Fitted on circle_red (unseen) and seen rows; reported on square_blue.
    fit = self._collected([0, 0, 1], [1, 0, 1])
    shown = self._collected([1, 0], [0, 0])
    bias, st = composed_lib.stacking_report(TABLE, SEEN, fit, shown,
                                            "val.csv", "test.csv")
    self.assertAllClose(bias, compose.stacking_bias(SEEN, st["gamma"]))
    self.assertEqual(st["fit_unseen_classes"], ["circle_red"])
    self.assertEqual((st["fitted_on"], st["reported_on"]),
                     ("val.csv", "test.csv"))
    # The heads are right on every row, so no bias is needed: gamma 0.
    self.assertEqual(st["gamma"], 0.0)
    self.assertAllClose([st["seen"], st["unseen"], st["harmonic"]], [1, 1, 1])
    report = evaluate_lib.report_from_collected(shown, SCHEMA,
                                                table=TABLE)
    report["composed"]["stacking"] = st
    md = evaluation_md.markdown({"model": "m", "data": "d", "samples": 2,
                                 **report})
    self.assertIn("Calibrated stacking: gamma 0.000", md)
    self.assertIn("| `test.csv` | 1.000 | 1.000 | 1.000 | 1.000 |", md)

  def test_refuses_to_fit_on_the_reported_unseen_classes(self):
    fit = self._collected([0, 0, 1], [1, 0, 1])
    with self.assertRaisesRegex(ValueError, "unseen class\\(es\\) circle_red "
                                "that are evaluated too"):
      composed_lib.stacking_report(TABLE, SEEN, fit, fit, "val.csv", "val.csv")


class HeldOutRowsTest(tf.test.TestCase):

  def test_the_fit_leaves_out_rows_of_the_runs_held_out_combinations(self):
    root = self.get_temp_dir()
    with open(os.path.join(root, "holdout.json"), "w") as f:
      f.write('{"holdout": ["shape=circle+colour=red"], '
              '"calibration": ["shape=square+colour=blue"]}')
    shape, colour = np.array([0, 0, 1, 1, 0]), np.array([1, 0, 0, 1, 1])
    mask_colour = np.array([1, 1, 1, 1, 0], bool)  # row 4: colour blank
    collected = {"shape": (np.zeros((5, 2)), shape, np.ones(5, bool)),
                 "colour": (np.zeros((5, 2)), colour, mask_colour)}
    # Row 0 is circle+red; row 4 a circle whose colour may be red. The
    # calibration pair (row 2) stays: it is what the bias is fitted on.
    self.assertEqual(
        composed_lib.held_out_rows(collected, root, SCHEMA).tolist(),
        [True, False, False, False, True])
    self.assertFalse(composed_lib.held_out_rows(
        collected, self.get_temp_dir() + "/none", SCHEMA).any())
