"""Tests of the parity gates (exporters/parity.py) on made-up outputs: the
fp32 gate is numerical, the quantized ones are judged by decisions."""

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import parity as parity_lib

# 200 images, one 3-class head: Keras' top class wins by 0.3 on every image
# but the last 8, where the top two are within 0.02 (near-ties).
_N = 200


def _reference() -> dict:
  p = np.tile(np.float32([0.6, 0.3, 0.1]), (_N, 1))
  p[-8:] = [0.45, 0.44, 0.11]
  return {"shape": p}


def _moved(delta: float, flips: int = 0, confident_flips: int = 0) -> dict:
  """The reference with every probability moved by up to ``delta`` (the
  decisions kept), the last ``flips`` near-ties decided the other way, and
  the first ``confident_flips`` images (top class ahead by 0.3) too."""
  p = _reference()["shape"].copy()
  p[:, 1] -= delta  # class 0 stays on top
  p[:, 2] += delta
  for i in range(1, flips + 1):
    p[-i] = [0.43, 0.46, 0.11]
  p[:confident_flips] = [0.44, 0.46, 0.1]
  return {"shape": p}


class GateTest(tf.test.TestCase):

  def _gate(self, got, variant):
    return parity_lib.parity(lambda _: got, _reference(),
                             np.zeros((_N, 8, 8, 3), np.uint8),
                             parity_lib.TOLERANCES[variant], variant)

  def test_dynamic_passes_a_demo_sized_error_that_keeps_the_decisions(self):
    # max |diff| 0.056: what failed the old 0.05 bound on a demo model.
    report = self._gate(_moved(0.056), "dynamic")
    self.assertTrue(report["passed"], report["failures"])
    self.assertAllClose(report["outputs"]["shape"]["max_abs_diff"], 0.056,
                        atol=1e-6)
    self.assertEqual(report["outputs"]["shape"]["top1_agreement"], 1.0)
    self.assertEqual(report["tolerance"],
                     {"max_abs_diff": 0.25, "min_top1_agreement": 0.97,
                      "excuse_near_ties": True})
    # The same error fails fp32, whose gate stays numerical.
    report = self._gate(_moved(0.056), "fp32")
    self.assertEqual(report["failures"], ["shape: max |diff| 0.056 > 0.0001"])

  def test_dynamic_agreement_floor_is_97_percent_per_head(self):
    # 6 of 200 confident decisions flipped: 97.0%, on the floor; 7: 96.5%.
    report = self._gate(_moved(0.0, confident_flips=6), "dynamic")
    self.assertTrue(report["passed"], report["failures"])
    self.assertAllClose(report["outputs"]["shape"]["top1_agreement"], 0.97)
    report = self._gate(_moved(0.0, flips=1, confident_flips=7), "dynamic")
    self.assertFalse(report["passed"])
    self.assertEqual(report["failures"], [
        "shape: top-1 agreement beyond near-ties 96.5% < 97% (1 of 8 "
        "disagreements are near-ties: the reference's top two within 0.05)"])

  def test_dynamic_excuses_near_ties_on_a_small_parity_set(self):
    # 32 images, one near-tie flipped: 96.9% raw (what stopped the default
    # export of a two-step model), 100% beyond near-ties.
    ref = _reference()["shape"][-32:]
    got = ref.copy()
    got[-1] = [0.43, 0.46, 0.11]
    report = parity_lib.parity(lambda _: {"shape": got}, {"shape": ref},
                               np.zeros((32, 8, 8, 3), np.uint8),
                               parity_lib.TOLERANCES["dynamic"], "dynamic")
    self.assertTrue(report["passed"], report["failures"])
    self.assertAllClose(report["outputs"]["shape"]["top1_agreement"],
                        31 / 32)
    # int8 does not excuse them.
    report = parity_lib.parity(lambda _: {"shape": got}, {"shape": ref},
                               np.zeros((32, 8, 8, 3), np.uint8),
                               parity_lib.TOLERANCES["int8"], "int8")
    self.assertFalse(report["passed"])

  def test_int8_floor_is_99_percent_without_a_bound_on_probabilities(self):
    self.assertTrue(self._gate(_moved(0.0, flips=2), "int8")["passed"])
    self.assertEqual(self._gate(_moved(0.0, flips=3), "int8")["failures"], [
        "shape: top-1 agreement 98.5% < 99% (3 of 3 disagreements are "
        "near-ties: the reference's top two within 0.05)"])
    self.assertTrue(self._gate(_moved(0.29), "int8")["passed"])

  def test_dynamic_sanity_bound_catches_a_broken_artefact(self):
    # Decisions kept but probabilities off by 0.29: not quantization error.
    report = self._gate(_moved(0.29), "dynamic")
    self.assertEqual(report["outputs"]["shape"]["top1_agreement"], 1.0)
    self.assertEqual(report["failures"], ["shape: max |diff| 0.29 > 0.25"])

  def test_table_states_both_limits(self):
    table = parity_lib.format_parity_table([self._gate(_moved(0.056),
                                                       "dynamic")])
    self.assertIn("diff<=0.25 agree>=97% (near-ties excused)", table)


if __name__ == "__main__":
  tf.test.main()
