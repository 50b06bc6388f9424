"""benchmarks/gpu.py --tiny on the CPU under the JAX backend with TensorFlow
blocked, as on the lent GPU machines (CUDA + JAX, no TensorFlow): the JSON
line's fields and the sanity of its numbers, not its timings. Also checks
that the package's import and the modeling package need no TensorFlow.

Each check runs in a subprocess, so this process's Keras keeps its backend.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITHOUT_TF = os.path.join(ROOT, "tests", "without_tensorflow.py")
HAS_JAX = importlib.util.find_spec("jax") is not None


def _run_code(code: str):
  with tempfile.TemporaryDirectory() as folder:
    script = os.path.join(folder, "script.py")
    with open(script, "w", encoding="utf-8") as f:
      f.write(code)
    return _run([script])


def _run(args, timeout=600):
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, WITHOUT_TF] + args,
                        capture_output=True, text=True, env=env,
                        timeout=timeout, check=False, cwd=ROOT)


@unittest.skipUnless(HAS_JAX, "jax is not installed: pip install -e .[jax]")
class GpuBenchmarkTest(unittest.TestCase):

  def test_tiny_mode_on_jax_without_tensorflow(self):
    proc = _run([os.path.join(ROOT, "benchmarks", "gpu.py"), "--tiny"])
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    self.assertEqual(
        {k: report[k] for k in ("benchmark", "backend", "device_kind",
                                "precision", "jit", "tiny", "image_size",
                                "step_ratio_heads")},
        {"benchmark": "gpu", "backend": "jax", "device_kind": "cpu",
         "precision": "float32", "jit": True, "tiny": True, "image_size": 32,
         "step_ratio_heads": 8})
    rows = report["rows"]
    self.assertEqual([(r["arm"], r["heads"]) for r in rows],
                     [("1_head", 1), ("demo_5_heads", 5), ("8_heads", 8)])
    for row in rows:
      self.assertEqual(row["batch"], 2, row)
      self.assertEqual(row["memory"], "host_peak_rss", row)
      for key in ("train_img_s", "predict_img_s", "train_step_ms",
                  "peak_memory_mib"):
        self.assertTrue(math.isfinite(row[key]) and row[key] > 0, (key, row))
      self.assertAlmostEqual(row["train_step_ms"],
                             1e3 * row["batch"] / row["train_img_s"],
                             places=6)
    for key in ("step_ratio", "predict_ratio", "peak_memory_mib"):
      self.assertTrue(math.isfinite(report[key]) and report[key] > 0, key)
    self.assertAlmostEqual(
        report["step_ratio"],
        rows[0]["train_img_s"] / rows[-1]["train_img_s"], places=9)
    self.assertEqual(report["peak_memory_mib"],
                     max(r["peak_memory_mib"] for r in rows))

  def test_package_and_modeling_import_without_tensorflow(self):
    proc = _run_code(
        "import pkgutil, sys\n"
        "import mlc_keras, mlc_keras.modeling\n"
        "from mlc_keras.data import demo\n"
        "names = [m.name for m in pkgutil.iter_modules(\n"
        "    mlc_keras.modeling.__path__, 'mlc_keras.modeling.')]\n"
        "for name in names:\n"
        "  __import__(name)\n"
        "import keras\n"
        "print(keras.backend.backend(), len(names),\n"
        "      any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    backend, count, tf_loaded = proc.stdout.split()[-3:]
    self.assertEqual((backend, tf_loaded), ("jax", "False"))
    self.assertGreaterEqual(int(count), 7)  # model, losses, layers, ...

  def test_precision_follows_the_device(self):
    # In a subprocess: gpu.py's flags (--backbone, ...) would clash with
    # the CLIs' flags in this process.
    proc = _run_code(
        "import runpy\n"
        "g = runpy.run_path('benchmarks/gpu.py')\n"
        "choose = g['choose_precision']\n"
        "gpu = lambda cc: {'kind': 'gpu', 'compute_capability': cc}\n"
        "print(choose('auto', gpu('9.0')), choose('auto', gpu('10.0')),\n"
        "      choose('auto', gpu('8.0')), choose('auto', gpu(None)),\n"
        "      choose('auto', {'kind': 'cpu', 'compute_capability': None}),\n"
        "      choose('mixed_float16', gpu('9.0')))\n")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertEqual(proc.stdout.split(), [
        "mixed_bfloat16", "mixed_bfloat16", "mixed_float16", "mixed_float16",
        "float32", "mixed_float16"])

  def test_the_blocker_blocks(self):
    proc = _run_code("import tensorflow\n")
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("blocked by tests/without_tensorflow.py", proc.stderr)


if __name__ == "__main__":
  unittest.main()
