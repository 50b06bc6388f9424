"""The same model, weights and batch give the same losses, metrics and
training step on the JAX backend as on TensorFlow: the package's compile
(masked per-head losses, weighted metrics) run once here (TensorFlow) and
once in a subprocess under KERAS_BACKEND=jax. And the weight average's
checks (training_ema_test: warm-up, swaps, exact mid-epoch resume) hold when
run under JAX."""

import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, BATCH = 32, 8
# Every label of this head is missing in the batch: its loss must be exactly
# 0 on both backends (not NaN), and it must not move the shared weights.
ALL_MISSING = "fill"


def _batch(schema):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  y, w = {}, {}
  for k, h in enumerate(schema.heads):
    if h.is_tags:
      y[h.name] = (rng.random((BATCH, h.num_classes)) < 0.4).astype("float32")
    else:
      y[h.name] = rng.integers(0, h.num_classes, BATCH).astype("int32")
    w[h.name] = (np.arange(BATCH) % 3 != k % 3).astype("float32")
  w[ALL_MISSING][:] = 0
  return x, y, w


def loss_and_step(weights):
  """Compiles the demo-heads small CNN with ``weights`` as the package does,
  then returns test_on_batch's logs and the weights after one SGD step."""
  import keras
  from mlc_keras.data import demo
  from mlc_keras.modeling import model as model_lib
  from mlc_keras.training import setup
  keras.utils.set_random_seed(0)
  model = model_lib.small_cnn(demo.SCHEMA, SIZE)
  if weights is not None:
    model.set_weights(weights)
  setup.compile_model(model, demo.SCHEMA, keras.optimizers.SGD(0.1), top_k=2)
  x, y, w = _batch(demo.SCHEMA)
  before = [np.array(v) for v in model.get_weights()]
  logs = model.test_on_batch(x, y, w, return_dict=True)
  model.train_on_batch(x, y, w)
  return ({k: float(v) for k, v in logs.items()}, before,
          [np.array(v) for v in model.get_weights()])


def _worker(in_path, out_path):
  """Under the backend the environment names: reads the weights, writes
  logs and stepped weights."""
  import keras
  with np.load(in_path) as f:
    weights = [f[f"w{i}"] for i in range(len(f.files))]
  logs, _, after = loss_and_step(weights)
  np.savez(out_path, backend=keras.backend.backend(),
           log_keys=np.array(sorted(logs)),
           log_values=np.array([logs[k] for k in sorted(logs)]),
           **{f"w{i}": a for i, a in enumerate(after)})


@unittest.skipUnless(importlib.util.find_spec("jax"),
                     "jax is not installed: pip install -e .[jax]")
class JaxMatchesTensorFlowTest(unittest.TestCase):

  def test_same_losses_metrics_and_step(self):
    import keras
    self.assertEqual(keras.backend.backend(), "tensorflow")
    logs, before, after = loss_and_step(None)
    with tempfile.TemporaryDirectory() as folder:
      in_path = os.path.join(folder, "in.npz")
      out_path = os.path.join(folder, "out.npz")
      np.savez(in_path, **{f"w{i}": a for i, a in enumerate(before)})
      env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                 CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
                 PYTHONPATH=ROOT)
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), in_path, out_path],
          capture_output=True, text=True, env=env, timeout=600, check=False)
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
      with np.load(out_path) as f:
        self.assertEqual(str(f["backend"]), "jax")
        jax_logs = dict(zip(f["log_keys"].tolist(),
                            f["log_values"].tolist()))
        jax_after = [f[f"w{i}"] for i in range(len(after))]
    self.assertEqual(sorted(jax_logs), sorted(logs))
    self.assertIn(f"{ALL_MISSING}_loss", logs)
    self.assertGreater(logs["loss"], 0.5)
    for key, value in logs.items():
      self.assertAlmostEqual(jax_logs[key], value, delta=1e-4, msg=key)
    self.assertEqual(logs[f"{ALL_MISSING}_loss"], 0.0)
    self.assertEqual(jax_logs[f"{ALL_MISSING}_loss"], 0.0)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(after, before))
    self.assertGreater(moved, 1e-3)  # the step did something to compare
    for i, (a, b) in enumerate(zip(jax_after, after)):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"weight {i}")

  def test_ema_and_exact_resume_hold_on_jax(self):
    # training_ema_test's in-process checks, written against the Keras API,
    # run again under the JAX backend: the warm-up average computed by hand,
    # the swap around validation and epoch end, and a run interrupted
    # mid-epoch that resumes from its backup to bit-identical weights.
    names = [
        "SwapTest.test_validation_and_epoch_end_see_the_hand_computed_average",
        "WarmupTest.test_average_follows_the_warmup_rule_and_forgets_the_"
        "start",
        "ResumeTest.test_interrupted_mid_epoch_resumes_to_the_same_average"]
    code = (
        "import sys, unittest\n"
        "import keras\n"
        "print('backend', keras.backend.backend())\n"
        "suite = unittest.defaultTestLoader.loadTestsFromNames(\n"
        f"    ['tests.training_ema_test.' + n for n in {names!r}])\n"
        "result = unittest.TextTestRunner(stream=sys.stdout).run(suite)\n"
        "print('ran', result.testsRun, 'skipped', len(result.skipped))\n"
        "sys.exit(0 if result.wasSuccessful() else 1)\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, timeout=600, check=False,
                          cwd=ROOT)
    self.assertEqual(proc.returncode, 0, proc.stdout[-3000:])
    self.assertIn("backend jax", proc.stdout)
    self.assertIn(f"ran {len(names)} skipped 0", proc.stdout)


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2])
