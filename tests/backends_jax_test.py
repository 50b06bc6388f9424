"""Training on the JAX backend, end to end: --strategy=mirrored over two
devices (keras.distribution.DataParallel) matches one device, masked
per-head means included; a JAX-trained model exports under TensorFlow with
its parity checks passing; and a run SIGKILLed mid-epoch resumes to the
uninterrupted run's weights.

The JAX runs are subprocesses under KERAS_BACKEND=jax with two virtual CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=2); this process
stays on TensorFlow, which runs the export.
"""

import csv
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

from tests import keras_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_JAX = importlib.util.find_spec("jax") is not None
SIZE, BATCH = 32, 8
# A batch of 8 split over 2 devices: rows 0-3 on one, 4-7 on the other.
# "fill" is labelled on rows 0-2 only (none on the second device) and
# "shape" on rows 0-3 and 4: an average of per-device masked means would
# give fill half its global mean and shape another weighting.
LABELLED = {"fill": [0, 1, 2], "shape": [0, 1, 2, 3, 4]}
# The runs: 2 epochs of 3 steps, a backup every 2 steps (a kill can land
# mid-epoch), 13 validation images (a last batch of 5: uneven on 2 devices).
EPOCHS, STEPS, VAL = 2, 3, 13


def _env(cache_dir):
  # One XLA compilation cache for the processes: the resumed run and the
  # reference compile what the killed run did (measured here: a run's CPU
  # time 26 s -> 12 s; the weights came out bit-identical).
  return dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
              CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
              XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
              MLC_QUIET="1", PYTHONPATH=ROOT)


def _worker(*args):
  return [sys.executable, os.path.abspath(__file__), *args]


# --- what the subprocesses run (under KERAS_BACKEND=jax) ----------------------


def run_config(demo_dir, strategy="default", jit_compile=None):
  from mlc_keras.core import config as config_lib
  return config_lib.Config(
      data=config_lib.DataConfig(
          image_size=SIZE, demo_dir=demo_dir, demo_train_size=48,
          demo_val_size=VAL, shuffle_buffer=64, augment=("flip", "crop"),
          deterministic=True),
      # build_model replaces the backbone; no weights to look for.
      model=config_lib.ModelConfig(weights=None),
      train=config_lib.TrainConfig(
          batch_size=BATCH, epochs=EPOCHS, steps_per_epoch=STEPS, top_k=2,
          optimizer="sgd", learning_rate=0.05, backup_every_steps=2,
          strategy=strategy, jit_compile=jit_compile))


def _small_cnn(schema, size):
  from mlc_keras.modeling import model as model_lib
  return model_lib.small_cnn(schema, size)


def train(model_dir, demo_dir, strategy="default", jit_compile=False):
  """A run of run_config; its steps are not jitted (the default on JAX is
  jitted): one jitted program per device count sums in its own order, and
  over 6 SGD steps at 0.05 that drifts to ~1e-4 (seen), which would hide the
  plumbing the mirrored run is compared on at 1e-5. The killed run resumes
  against the default run, so it is the same command. The jitted step is
  checked on one_step's batch, at 1e-6."""
  from mlc_keras.training import run as train_lib
  train_lib.train_and_evaluate(run_config(demo_dir, strategy, jit_compile),
                               model_dir, verbose=0, build_model=_small_cnn)


def _hand_batch(schema):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  y, w = {}, {}
  for h in schema.heads:
    if h.is_tags:
      y[h.name] = (rng.random((BATCH, h.num_classes)) < 0.4).astype("float32")
    else:
      y[h.name] = rng.integers(0, h.num_classes, BATCH).astype("int32")
    w[h.name] = np.ones(BATCH, "float32")
  for name, rows in LABELLED.items():
    w[name][:] = 0
    w[name][rows] = 1
  return x, y, w


def one_step(distributed):
  """One SGD step's logs, the outputs before it and the weights after it,
  on one device or split across all of them (setup.data_parallel)."""
  import contextlib
  import keras
  from mlc_keras.data import demo
  from mlc_keras.training import setup
  x, y, w = _hand_batch(demo.SCHEMA)
  scope = (setup.data_parallel("mirrored", BATCH) if distributed
           else contextlib.nullcontext(1))
  with scope as devices:
    keras.utils.set_random_seed(0)
    model = _small_cnn(demo.SCHEMA, SIZE)
    setup.compile_model(model, demo.SCHEMA, keras.optimizers.SGD(0.1),
                        top_k=2)
    layout = keras.distribution.distribution()
    layout = None if layout is None else str(
        layout.get_data_layout(x.shape).axes)
    probs = {k: np.asarray(v) for k, v in model(x).items()}
    # The logs of the step's forward pass, before its update.
    logs = model.train_on_batch(x, y, w, return_dict=True)
    after = [np.asarray(v) for v in model.get_weights()]
  return devices, layout, {k: float(v) for k, v in logs.items()}, probs, after


def data_parallel_main(out_dir, demo_dir):
  """The hand-checked step on one device and on two, then train()'s
  default and mirrored runs."""
  import jax
  import keras
  from mlc_keras.data import demo
  report = {"backend": keras.backend.backend(),
            "devices": jax.device_count()}
  x, y, w = _hand_batch(demo.SCHEMA)
  del x
  for name, distributed in (("one", False), ("two", True)):
    devices, layout, logs, probs, after = one_step(distributed)
    report[name] = {"devices": devices, "layout": layout, "logs": logs}
    np.savez(os.path.join(out_dir, f"{name}.npz"),
             **{f"w{i}": a for i, a in enumerate(after)})
    if not distributed:
      # The per-sample cross-entropies of the model that test_on_batch saw,
      # for the two means computed by hand in the test.
      report["per_sample"] = {
          h: (-np.log(probs[h][np.arange(BATCH), y[h]])).tolist()
          for h in LABELLED}
      report["weights"] = {h: w[h].tolist() for h in LABELLED}
  with open(os.path.join(out_dir, "step.json"), "w") as f:
    json.dump(report, f)
  for strategy in ("default", "mirrored"):
    train(os.path.join(out_dir, strategy), demo_dir, strategy)


# --- the tests -----------------------------------------------------------------


_model_weights = keras_files.model_weights


def _history(model_dir):
  with open(os.path.join(model_dir, "history.csv")) as f:
    return list(csv.DictReader(f))


def _backup_meta(model_dir):
  try:
    with open(os.path.join(model_dir, "backup",
                           "training_metadata.json")) as f:
      return json.load(f)
  except (OSError, ValueError):  # not written yet, or mid-rename
    return None


def _log(path):
  with open(path) as f:
    return f.read()[-3000:]


@unittest.skipUnless(HAS_JAX, "jax is not installed: pip install -e .[jax]")
class JaxTrainingTest(unittest.TestCase):
  """One subprocess (two devices) does the step and both runs; a second
  pair of processes is killed and resumed meanwhile."""

  @classmethod
  def setUpClass(cls):
    cls._folder = tempfile.TemporaryDirectory()
    cls.tmp = cls._folder.name
    cls.demo_dir = os.path.join(cls.tmp, "demo")
    from mlc_keras.data import demo
    # Once, before the runs, so they do not race writing it.
    demo.generate(cls.demo_dir, 48, VAL)
    cls.env = _env(os.path.join(cls.tmp, "xla_cache"))
    cls.killed_dir = os.path.join(cls.tmp, "killed")
    # The run to kill starts first: it is killed as soon as its first
    # mid-epoch backup exists, while the other process still runs.
    victim = subprocess.Popen(
        _worker("train", cls.killed_dir, cls.demo_dir), env=cls.env,
        stdout=open(cls.killed_dir + ".log", "w"), stderr=subprocess.STDOUT,
        cwd=ROOT)
    main = subprocess.Popen(
        _worker("data_parallel", cls.tmp, cls.demo_dir), env=cls.env,
        stdout=open(os.path.join(cls.tmp, "main.log"), "w"),
        stderr=subprocess.STDOUT, cwd=ROOT)
    cls.killed_at = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and victim.poll() is None:
      meta = _backup_meta(cls.killed_dir)
      if meta and meta["epoch"] >= 1 and meta.get("batches_done", 0) > 0:
        victim.send_signal(signal.SIGKILL)
        cls.killed_at = meta
        break
      time.sleep(0.02)
    victim.kill()
    cls.victim_rc = victim.wait()
    cls.resumed_rc = None
    if cls.killed_at is not None:
      cls.killed_model_exists = os.path.exists(
          os.path.join(cls.killed_dir, "model.keras"))
      cls.resumed_rc = subprocess.run(
          _worker("train", cls.killed_dir, cls.demo_dir), env=cls.env,
          stdout=open(cls.killed_dir + ".resumed.log", "w"),
          stderr=subprocess.STDOUT, cwd=ROOT, timeout=600).returncode
    cls.main_rc = main.wait(timeout=600)

  @classmethod
  def tearDownClass(cls):
    cls._folder.cleanup()

  def setUp(self):
    self.assertEqual(self.main_rc, 0,
                     _log(os.path.join(self.tmp, "main.log")))

  def test_masked_means_are_global_over_two_devices(self):
    with open(os.path.join(self.tmp, "step.json")) as f:
      report = json.load(f)
    self.assertEqual((report["backend"], report["devices"]), ("jax", 2))
    one, two = report["one"], report["two"]
    self.assertEqual((one["devices"], one["layout"]), (1, None))
    # The batch's first axis is split over the mesh's "batch" axis.
    self.assertEqual((two["devices"], two["layout"]),
                     (2, "('batch', None, None, None)"))
    for head in LABELLED:
      loss = np.array(report["per_sample"][head])
      w = np.array(report["weights"][head])
      global_mean = float((loss * w).sum() / w.sum())
      halves = [(loss[s] * w[s]).sum() / w[s].sum() if w[s].sum() else 0.0
                for s in (slice(0, 4), slice(4, 8))]
      per_device = float(np.mean(halves))
      if head == "fill":  # no label on the second device: half the mean
        self.assertAlmostEqual(per_device, global_mean / 2, places=6)
        self.assertGreater(global_mean - per_device, 0.2)
      # Both runs compute the global one.
      self.assertAlmostEqual(one["logs"][f"{head}_loss"], global_mean,
                             delta=1e-5, msg=head)
      self.assertAlmostEqual(two["logs"][f"{head}_loss"], global_mean,
                             delta=1e-5, msg=head)
    for key, value in one["logs"].items():
      self.assertAlmostEqual(two["logs"][key], value, delta=1e-5, msg=key)
    with np.load(os.path.join(self.tmp, "one.npz")) as a, \
        np.load(os.path.join(self.tmp, "two.npz")) as b:
      self.assertEqual(sorted(a.files), sorted(b.files))
      for name in a.files:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)

  def test_mirrored_run_matches_the_default_run(self):
    default = os.path.join(self.tmp, "default")
    mirrored = os.path.join(self.tmp, "mirrored")
    log = _log(os.path.join(self.tmp, "main.log"))
    self.assertIn("each batch of 8 split across 2 devices", log)
    expected = _model_weights(os.path.join(default, "model.keras"))
    actual = _model_weights(os.path.join(mirrored, "model.keras"))
    self.assertEqual(sorted(expected), sorted(actual))
    for name, value in expected.items():
      np.testing.assert_allclose(actual[name], value, atol=1e-5,
                                 err_msg=name)
    # Validation ran on 13 images (a last batch of 5, padded to 6 with a
    # weight-0 row): the weighted metrics ignore the pad.
    rows = [_history(d) for d in (default, mirrored)]
    self.assertEqual(len(rows[0]), EPOCHS)
    for a, b in zip(*rows):
      for key, value in a.items():
        if key.startswith("val_") and not key.endswith("loss"):
          self.assertAlmostEqual(float(b[key]), float(value), delta=1e-6,
                                 msg=key)
    results = []
    for d in (default, mirrored):
      with open(os.path.join(d, "results.json")) as f:
        results.append(json.load(f)["heads"])
    for a, b in zip(*results):
      self.assertEqual(a["total"], VAL)
      self.assertEqual((b["head"], b["total"], b["labelled"]),
                       (a["head"], a["total"], a["labelled"]))
      if a.get("accuracy") is not None:
        self.assertAlmostEqual(b["accuracy"], a["accuracy"], delta=1e-9)

  def test_killed_run_resumes_to_the_uninterrupted_weights(self):
    self.assertIsNotNone(self.killed_at, _log(self.killed_dir + ".log"))
    self.assertEqual(self.victim_rc, -signal.SIGKILL)
    self.assertFalse(self.killed_model_exists)
    self.assertGreater(self.killed_at["batches_done"], 0)
    self.assertEqual(self.resumed_rc, 0, _log(self.killed_dir + ".resumed.log"))
    self.assertIn("resuming from the backup",
                  _log(self.killed_dir + ".resumed.log"))
    self.assertEqual([int(r["epoch"]) for r in _history(self.killed_dir)],
                     list(range(EPOCHS)))
    self.assertFalse(os.path.exists(os.path.join(self.killed_dir, "backup")))
    # The reference is the main process's default run: the same command,
    # never interrupted.
    expected = _model_weights(os.path.join(self.tmp, "default", "model.keras"))
    actual = _model_weights(os.path.join(self.killed_dir, "model.keras"))
    self.assertEqual(sorted(expected), sorted(actual))
    for name, value in expected.items():
      np.testing.assert_array_equal(actual[name], value, err_msg=name)

  def test_jax_trained_model_exports_with_parity(self):
    # This process is TensorFlow: the export reads the JAX run's .keras.
    import keras
    from mlc_keras.exporters import publish as export_lib
    self.assertEqual(keras.backend.backend(), "tensorflow")
    result = export_lib.export(
        os.path.join(self.tmp, "default"),
        output=os.path.join(self.tmp, "export"),
        formats=("saved_model", "tflite", "onnx"), quantizations="fp32",
        isolate=False, log=lambda _: None)
    with open(result.parity_path) as f:
      report = json.load(f)
    reports = {r["artefact"]: r for r in report["reports"]}
    self.assertEqual(sorted(reports), sorted(r["artefact"]
                                             for r in result.parity))
    for name in ("saved_model", "tflite_fp32", "onnx"):
      self.assertIn(name, reports)
    for name, r in reports.items():
      self.assertTrue(r["passed"], r)
      self.assertGreater(r["images"], 0)
      limit = r["tolerance"]["max_abs_diff"] if r["tolerance"] else None
      for head, numbers in r["outputs"].items():
        diff = numbers.get("max_abs_diff")
        if diff is not None:
          self.assertLessEqual(diff, limit if limit is not None else 1e-4,
                               (name, head))


class BackendChecksTest(unittest.TestCase):
  """What train's checks refuse or allow per backend (no JAX needed)."""

  def _cfg(self, **train):
    import dataclasses
    from mlc_keras.core import config as config_lib
    cfg = config_lib.tiny()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                              **train))

  def test_multi_worker_is_refused_on_jax_in_one_line(self):
    from mlc_keras.runs import preflight
    with self.assertRaises(preflight.FlagError) as caught:
      preflight.check(self._cfg(strategy="multi_worker"), backend="jax")
    message = str(caught.exception)
    self.assertRegex(message, r"^(--)?strategy=multi_worker: is TensorFlow only")
    self.assertIn("use mirrored", message)
    self.assertNotIn("\n", message)

  def test_mirrored_on_jax_is_fit_with_all_its_options(self):
    # The TensorFlow custom step's limits (float32, no EMA, no frozen
    # phase) are not fit's: on JAX, mirrored trains through fit.
    from mlc_keras.runs import preflight
    cfg = self._cfg(strategy="mirrored", ema_decay=0.9,
                    precision="mixed_bfloat16", freeze_epochs=1, epochs=2)
    self.assertEqual(preflight.check(cfg, backend="jax"), preflight.Plan())
    with self.assertRaisesRegex(preflight.FlagError, "strategy=mirrored"):
      preflight.check(cfg, backend="tensorflow")

  def test_backend_is_read_as_keras_reads_it(self):
    from unittest import mock
    from mlc_keras.training import run as train_lib
    home = tempfile.mkdtemp()
    self.addCleanup(__import__("shutil").rmtree, home)
    with mock.patch.dict(sys.modules), mock.patch.dict(os.environ):
      sys.modules.pop("keras", None)  # not imported yet: no TF loaded
      os.environ.pop("KERAS_BACKEND", None)
      self.assertEqual(train_lib.keras_backend(home), "tensorflow")
      with open(os.path.join(home, "keras.json"), "w") as f:
        json.dump({"backend": "jax"}, f)
      self.assertEqual(train_lib.keras_backend(home), "jax")
      os.environ["KERAS_BACKEND"] = "torch"
      self.assertEqual(train_lib.keras_backend(home), "torch")
    import keras  # imported: its own answer
    self.assertEqual(train_lib.keras_backend(home), keras.backend.backend())


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  if sys.argv[1] == "train":
    train(sys.argv[2], sys.argv[3], *sys.argv[4:])
  elif sys.argv[1] == "data_parallel":
    data_parallel_main(sys.argv[2], sys.argv[3])
  else:
    raise SystemExit(f"unknown mode {sys.argv[1]!r}")
