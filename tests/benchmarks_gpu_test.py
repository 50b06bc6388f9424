"""benchmarks/gpu.py --tiny on the CPU: the one command a GPU owner runs
keeps working (structure and sanity of its JSON line, not its timings)."""

import json
import math
import os
import subprocess
import sys

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GpuBenchmarkTest(tf.test.TestCase):

  def test_tiny_mode_reports_every_arm(self):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--tiny"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    self.assertLen(lines, 1)
    report = json.loads(lines[0])
    self.assertEqual(report["benchmark"], "gpu")
    self.assertEqual((report["device"], report["tiny"], report["image_size"]),
                     ("CPU", True, 32))
    self.assertEqual([(r["precision"], r["xla"]) for r in report["rows"]],
                     [("float32", False), ("mixed_float16", False),
                      ("mixed_float16", True)])
    for row in report["rows"]:
      self.assertEqual(row["batch"], 4)
      for key in ("synthetic_img_s", "pipeline_img_s"):
        self.assertTrue(math.isfinite(row[key]) and row[key] > 0, (key, row))
      self.assertAllClose(row["pipeline_over_synthetic"],
                          row["pipeline_img_s"] / row["synthetic_img_s"])
    ratio = report["heads_vs_models"]
    self.assertEqual(ratio["heads"], 2)
    for key in ("one_model_ms", "n_models_ms", "ratio"):
      self.assertTrue(math.isfinite(ratio[key]) and ratio[key] > 0, key)
    self.assertAllClose(ratio["ratio"],
                        ratio["one_model_ms"] / ratio["n_models_ms"])
    # The ratio is printed last.
    self.assertRegex(proc.stdout.strip().splitlines()[-1],
                     r"^N heads / N models train-step time: \d")


if __name__ == "__main__":
  tf.test.main()
