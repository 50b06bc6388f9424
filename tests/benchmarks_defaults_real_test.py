"""benchmarks/defaults_real.py's calibrated stacking over every pair of two
heads (stacked_scores) on hand-made probabilities, checked against a hand
computation, and its column in the table. No model, no training."""

import math
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import defaults_real  # pylint: disable=wrong-import-position

# Heads a: x, y and b: p, q; classes x+p, x+q, y+p, y+q. Training labels
# x+p and y+q together; the row with a blank b makes no pair seen.
CLASSES = {"a": ["x", "y"], "b": ["p", "q"]}
TRAIN = [{"a": "x", "b": "p"}, {"a": "y", "b": "q"}, {"a": "y", "b": ""}]


def _split(rows):
  """(manifest rows, {head: probs}) from (a, b, p(a), p(b)) tuples."""
  return ([{"a": a, "b": b} for a, b, _, _ in rows],
          {"a": [pa for _, _, pa, _ in rows], "b": [pb for _, _, _, pb in rows]})


# Validation: class scores are log p(a) + log p(b). Row 2's best seen class
# (x+p, .48) beats its true unseen x+q (.32) by log(.48 / .32) = log 1.5;
# row 0's seen x+p beats x+q by log 4. The smallest gamma that makes H
# largest flips row 2 only: just above log 1.5 (fit_stacking's candidate
# log 1.5 + 1e-6). Before: S = 1, U = 1/2; after: S = U = 1. The blank row
# has no class.
VAL = _split([("x", "p", [.9, .1], [.8, .2]),
              ("x", "q", [.9, .1], [.4, .6]),
              ("x", "q", [.8, .2], [.6, .4]),
              ("x", "", [.5, .5], [.5, .5])])
# Test (its unseen class, y+p, is not val's: stacking_report refuses a gamma
# fitted on the reported unseen classes): row 1 (seen y+q, .385 vs unseen
# y+p .315, margin log 1.22 < gamma) flips to a wrong unseen class; row 2
# (unseen y+p, .36 vs seen y+q .44) flips to its right class. Per class
# before: x+p 1, y+q 1 | y+p 0; after: x+p 1, y+q 0 | y+p 1.
TEST = _split([("x", "p", [.9, .1], [.9, .1]),
               ("y", "q", [.3, .7], [.45, .55]),
               ("y", "p", [.2, .8], [.45, .55])])


class StackedScoresTest(unittest.TestCase):

  def test_gamma_and_scores_match_the_hand_computation(self):
    out = defaults_real.stacked_scores(CLASSES, ("a", "b"), TRAIN, VAL, TEST)
    self.assertAlmostEqual(out["gamma"], math.log(1.5), places=5)
    self.assertGreater(out["gamma"], math.log(1.5))
    self.assertAlmostEqual(out["S"], 0.5)
    self.assertAlmostEqual(out["U"], 1.0)
    self.assertAlmostEqual(out["H"], 2 * 0.5 * 1.0 / 1.5)
    self.assertAlmostEqual(out["without_bias"]["S"], 1.0)
    self.assertAlmostEqual(out["without_bias"]["U"], 0.0)
    self.assertAlmostEqual(out["without_bias"]["H"], 0.0)
    self.assertAlmostEqual(out["val_H"]["without_bias"], 2 / 3)
    self.assertAlmostEqual(out["val_H"]["stacked"], 1.0)
    self.assertEqual(out["val_unseen_pairs"], 1)
    self.assertNotIn("not_defined", out)

  def test_not_defined_when_val_and_test_share_an_unseen_pair(self):
    test = _split([("x", "p", [.9, .1], [.9, .1]),
                   ("x", "q", [.6, .4], [.3, .7])])
    out = defaults_real.stacked_scores(CLASSES, ("a", "b"), TRAIN, VAL, test)
    self.assertIsNone(out["gamma"])
    self.assertIn("x+q", out["not_defined"])

  def test_not_defined_without_unseen_validation_rows(self):
    seen_only = _split([("x", "p", [.9, .1], [.8, .2]),
                        ("y", "q", [.2, .8], [.3, .7])])
    out = defaults_real.stacked_scores(CLASSES, ("a", "b"), TRAIN, seen_only,
                                       TEST)
    self.assertEqual({k: out[k] for k in ("S", "U", "H", "gamma")},
                     {"S": None, "U": None, "H": None, "gamma": None})
    self.assertIn("unseen in training", out["not_defined"])

  def test_table_shows_stacked_column(self):
    heads = {h: {"seen": 1.0, "unseen": 0.5, "all": 0.8} for h in "ab"}
    base = {"set": "toy", "epochs": 1, "arm": "after", "heads": heads,
            "composed": {"S": 1.0, "U": 0.5, "H": 2 / 3}}
    results = [dict(base, seed=0,
                    stacked={"S": 0.5, "U": 1.0, "H": 2 / 3, "gamma": 0.4}),
               dict(base, seed=1)]  # scored before stacking existed
    text = defaults_real.table(results, {"toy": ("a", "b")})
    header, _, row = text.splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    column = [c.strip() for c in header.strip("|").split("|")].index(
        "stacked S / U / H")
    self.assertEqual(cells[column],
                     "0.500 (n=1) / 1.000 (n=1) / 0.667 (n=1)")


if __name__ == "__main__":
  unittest.main()
