"""Tests of mlc_keras.training.distributed: the custom step equals fit's masked loss
(also with factor heads' prior-adjusted targets),
two local workers under MultiWorkerMirroredStrategy end with identical
weights equal to a one-process run, MirroredStrategy over 2 logical CPUs
matches too, and a damaged checkpoint falls back to the previous one.

The model here is a small conv net without BatchNormalization: BN normalises
each replica's slice, so with a BN backbone (ResNet50V2) replicas agree with
one device only in expectation. Runs use SGD because Adam's g/sqrt(v)
amplifies float summation-order noise in near-zero gradients.

Duration: ~1-2 minutes on 2 busy cores (4 subprocesses of tiny runs).

Run as a script (``python tests/training_distributed_test.py --run CFG_JSON DIR OUT
[--logical_cpus N]``) it is one training process of the tests below.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32 summation order differs between 1 and 2 replicas, so weights agree
# to ~1e-7 (3.4e-8 measured after 4 SGD steps), not bit for bit.
ATOL = 1e-6


def tiny_model(schema, image_size):
  import keras  # pylint: disable=g-import-not-at-top
  image = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
  # Named like the package's backbone, so --init_from can copy it.
  backbone = keras.Sequential([
      keras.Input((image_size, image_size, 3)),
      keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
      keras.layers.Conv2D(16, 3, strides=2, activation="relu")],
                              name="backbone")
  x = keras.layers.GlobalAveragePooling2D()(backbone(x))
  x = keras.layers.Identity(name="features")(x)
  outputs = {h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                        name=h.name)(x) for h in schema.heads}
  return keras.Model(image, outputs)


def _run(cfg_json, model_dir, out, logical_cpus=0):
  """One training process (a worker, the mirrored run or the reference)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if logical_cpus:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
  from mlc_keras.core import config as config_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.training import distributed  # pylint: disable=g-import-not-at-top
  cfg = config_lib.Config.from_dict(json.loads(cfg_json))
  built = []

  def build(schema, image_size):
    built.append(tiny_model(schema, image_size))
    np.savez(out + ".init.npz", *built[-1].get_weights())
    return built[-1]
  results = distributed.train_and_evaluate(cfg, model_dir, build_model=build)
  np.savez(out, *[np.asarray(w) for w in built[0].get_weights()])
  with open(out + ".json", "w", encoding="utf-8") as f:
    json.dump(results, f)


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


if __name__ == "__main__" and "--run" in sys.argv:
  i = sys.argv.index("--run")
  cpus = 0
  if "--logical_cpus" in sys.argv:
    cpus = int(sys.argv[sys.argv.index("--logical_cpus") + 1])
  _run(*sys.argv[i + 1:i + 4], logical_cpus=cpus)
  sys.exit(0)

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses

import keras
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.modeling import factors
from mlc_keras.modeling import saving
from mlc_keras.training import distributed
from mlc_keras.training import setup
from tests import testutil


def _rows(n):
  """Labels missing unevenly, so replicas hold different label counts."""
  rows = testutil.simple_rows(n)
  for i in (0, 1, 4, 5, 9):
    rows[i]["shape"] = ""
  return rows


def _config(manifest, strategy="default", epochs=2):
  base = config_lib.tiny()
  return dataclasses.replace(
      base,
      data=dataclasses.replace(base.data, manifest=manifest, val_fraction=0.0,
                               deterministic=True, augment=("flip", "crop")),
      train=dataclasses.replace(base.train, batch_size=8, epochs=epochs,
                                steps_per_epoch=2, optimizer="sgd",
                                learning_rate=0.05, strategy=strategy))


def _history(model_dir):
  with open(os.path.join(model_dir, "history.csv"), encoding="utf-8") as f:
    return np.loadtxt(f, delimiter=",", skiprows=1)


def _weights(path):
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def _write_parent(root):
  """A run folder trained on 'shape' only (untrained weights suffice: what is
  tested is that they arrive unchanged)."""
  folder = os.path.join(root, "parent")
  os.makedirs(folder)
  schema = testutil.SCHEMA.select(["shape"])
  keras.utils.set_random_seed(7)
  saving.save_for_inference(tiny_model(schema, 32),
                            os.path.join(folder, "model.keras"))
  schema.save(os.path.join(folder, "labels.json"))
  return folder


class DistributedTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="mlc_dist_")
    cls.manifest = testutil.write_manifest(cls.root, _rows(16))
    env = dict(os.environ, PYTHONPATH=REPO, MLC_QUIET="1",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    me = os.path.abspath(__file__)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    jobs = {}

    def start(name, strategy, extra=(), tf_config=None, train=None):
      cfg = _config(cls.manifest, strategy)
      cfg = dataclasses.replace(
          cfg, train=dataclasses.replace(cfg.train, **(train or {}))).to_json()
      e = dict(env)
      if tf_config:
        e["TF_CONFIG"] = json.dumps(tf_config)
      out = os.path.join(cls.root, name + ".npz")
      log = open(os.path.join(cls.root, name + ".log"), "w")
      jobs[name] = (subprocess.Popen(
          [sys.executable, me, "--run", cfg, os.path.join(cls.root, name),
           out, *extra], env=e, cwd=REPO, stdout=log, stderr=log), log)

    cls.parent = _write_parent(cls.root)
    start("single", "default")
    start("mirrored", "mirrored", ("--logical_cpus", "2"))
    start("grown", "mirrored", ("--logical_cpus", "2"),
          train={"init_from": cls.parent, "train_heads": ("colour",)})
    for i in range(2):
      start(f"worker{i}", "multi_worker",
            tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}})
    cls.failed = {}
    for name, (proc, log) in jobs.items():
      try:
        proc.wait(timeout=600)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      log.close()
      if proc.returncode:
        with open(log.name, encoding="utf-8") as f:
          cls.failed[name] = f.read()[-3000:]

  @classmethod
  def tearDownClass(cls):
    # shutil.rmtree does not follow symlinks (the folder holds none anyway).
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _ok(self, *names):
    for n in names:
      self.assertNotIn(n, self.failed, self.failed.get(n))

  def test_two_workers_end_identical_and_match_one_process(self):
    self._ok("worker0", "worker1", "single")
    w0 = _weights(os.path.join(self.root, "worker0.npz"))
    w1 = _weights(os.path.join(self.root, "worker1.npz"))
    ref = _weights(os.path.join(self.root, "single.npz"))
    init = _weights(os.path.join(self.root, "single.npz.init.npz"))
    for a, b, r in zip(w0, w1, ref):
      self.assertAllEqual(a, b)  # one all-reduce: bit-identical replicas
      self.assertAllClose(a, r, atol=ATOL, rtol=0)
    # Training moved every kernel far more than the tolerance.
    for r, i in zip(ref, init):
      if r.ndim > 1:
        self.assertGreater(np.abs(r - i).max(), 50 * ATOL)
    # Only the chief wrote into its model_dir.
    chief = os.path.join(self.root, "worker0")
    self.assertTrue(os.path.exists(os.path.join(chief, "model.keras")))
    self.assertFalse(os.path.exists(os.path.join(self.root, "worker1")))
    self.assertEqual(distributed.checkpoint_epoch(chief), 2)
    with open(os.path.join(self.root, "worker0.npz.json")) as f:
      self.assertEqual(json.load(f)["replicas"], 2)
    # Losses and metrics are over the global batch, as in one process.
    for a, r in zip(_history(chief), _history(os.path.join(self.root, "single"))):
      self.assertAllClose(a, r, atol=1e-6)

  def test_mirrored_two_logical_cpus_matches_default(self):
    self._ok("mirrored", "single")
    with open(os.path.join(self.root, "mirrored.npz.json")) as f:
      self.assertEqual(json.load(f)["replicas"], 2)
    for a, r in zip(_weights(os.path.join(self.root, "mirrored.npz")),
                    _weights(os.path.join(self.root, "single.npz"))):
      self.assertAllClose(a, r, atol=ATOL, rtol=0)

  def test_mirrored_grows_a_parent_with_only_the_new_head_trained(self):
    """--init_from + --train_heads under MirroredStrategy (2 logical CPUs):
    the backbone and the copied head arrive and stay bit-identical to the
    parent's; the new head trains."""
    self._ok("grown")
    parent = saving.load_model(os.path.join(self.parent, "model.keras"))
    schema = heads_lib.LabelSchema.load(
        os.path.join(self.root, "grown", "labels.json"))
    grown, init = tiny_model(schema, 32), tiny_model(schema, 32)
    grown.set_weights(_weights(os.path.join(self.root, "grown.npz")))
    init.set_weights(_weights(os.path.join(self.root, "grown.npz.init.npz")))
    for layer in ("backbone", "shape"):
      for a, b in zip(grown.get_layer(layer).get_weights(),
                      parent.get_layer(layer).get_weights()):
        self.assertAllEqual(a, b)
    for a, b in zip(grown.get_layer("colour").get_weights(),
                    init.get_layer("colour").get_weights()):
      self.assertGreater(np.abs(a - b).max(), 50 * ATOL)
    with open(os.path.join(self.root, "grown.npz.json")) as f:
      heads = json.load(f)["init_from"]["heads"]
    self.assertEqual({h: v["status"] for h, v in heads.items()},
                     {"shape": "copied", "colour": "new"})

  def test_custom_step_matches_fit(self):
    cfg = _config(self.manifest)
    tc, dc = cfg.train, cfg.data
    rec, schema = manifest_lib.read_manifest(self.manifest)
    ds = pipeline.train_dataset(sources.records_source(rec), schema, image_size=32,
                            batch_size=8, seed=0, end_epoch=1,
                            steps_per_epoch=2, augmentations=dc.augment,
                            deterministic=True)
    keras.utils.set_random_seed(1)
    fitted = tiny_model(schema, 32)
    custom = tiny_model(schema, 32)
    custom.set_weights(fitted.get_weights())
    setup.compile_model(fitted, schema, setup.optimizer(tc, 2), top_k=2)
    fitted.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    strategy = tf.distribute.get_strategy()
    optimizer = setup.optimizer(tc, 2)
    step = distributed.make_train_step(strategy, custom, optimizer, schema)
    it = iter(distributed.distribute(strategy, lambda: ds, 8))
    total, head, _ = step(it)
    step(it)
    for a, b in zip(custom.get_weights(), fitted.get_weights()):
      self.assertAllClose(a, b, atol=1e-6, rtol=0)
    self.assertAllClose(float(total), sum(
        float(v) * schema.head(h).loss_weight for h, v in head.items()))


  def test_damaged_checkpoint_falls_back_then_fails_clearly(self):
    folder = os.path.join(self.get_temp_dir(), "ckpt")
    model = tiny_model(testutil.SCHEMA, 32)
    epoch = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, epoch=epoch)
    manager = tf.train.CheckpointManager(ckpt, folder, max_to_keep=2)
    for e in (1, 2):
      epoch.assign(e)
      manager.save(checkpoint_number=e)
    # Truncate every data file of the newest checkpoint.
    for name in os.listdir(folder):
      if name.startswith("ckpt-2.data"):
        with open(os.path.join(folder, name), "r+b") as f:
          f.truncate(10)
    epoch.assign(0)
    self.assertEqual(distributed._restore(ckpt, folder), 1)
    for name in os.listdir(folder):
      if name.startswith("ckpt-1.data"):
        with open(os.path.join(folder, name), "r+b") as f:
          f.truncate(10)
    with self.assertRaisesRegex(RuntimeError, "refusing to start from scratch"):
      distributed._restore(ckpt, folder)



class FactorStepTest(tf.test.TestCase):
  """The custom step with factor heads (in process, no subprocesses)."""

  def setUp(self):
    super().setUp()
    self.manifest = testutil.write_manifest(self.get_temp_dir(), _rows(16))

  def test_custom_step_with_factor_priors_matches_fit(self):
    """Factor heads (their targets carry the log co-occurrence prior, the
    losses read the adjusted logits): the tf.distribute step and fit take
    the same targets and end with the same weights, and the prior really
    moved the loss (not a no-op on both paths)."""
    cfg = _config(self.manifest)
    tc, dc = cfg.train, cfg.data
    rec, schema = manifest_lib.read_manifest(self.manifest)
    priors = factors.priors(sources.all_labels(sources.records_source(rec),
                                               schema),
                            schema, ["shape", "colour"])

    def data(with_priors):
      return pipeline.train_dataset(
          sources.records_source(rec), schema, image_size=32, batch_size=8,
          seed=0, end_epoch=1, steps_per_epoch=2, augmentations=dc.augment,
          deterministic=True, factor_priors=priors if with_priors else None)
    keras.utils.set_random_seed(1)
    fitted = tiny_model(schema, 32)
    custom, plain = tiny_model(schema, 32), tiny_model(schema, 32)
    custom.set_weights(fitted.get_weights())
    plain.set_weights(fitted.get_weights())
    setup.compile_model(fitted, schema, setup.optimizer(tc, 2), top_k=2,
                        soft=True)
    fitted.fit(data(True), epochs=1, steps_per_epoch=2, verbose=0,
               shuffle=False)
    strategy = tf.distribute.get_strategy()
    step = distributed.make_train_step(strategy, custom,
                                       setup.optimizer(tc, 2), schema,
                                       soft=True)
    it = iter(distributed.distribute(strategy, lambda: data(True), 8))
    adjusted, _, _ = step(it)
    step(it)
    for a, b in zip(custom.get_weights(), fitted.get_weights()):
      self.assertAllClose(a, b, atol=1e-6, rtol=0)
    # The same first batch without the prior gives another loss.
    unadjusted = distributed.make_train_step(
        strategy, plain, setup.optimizer(tc, 2), schema)
    total, _, _ = unadjusted(iter(distributed.distribute(
        strategy, lambda: data(False), 8)))
    self.assertGreater(abs(float(total) - float(adjusted)), 1e-3)


if __name__ == "__main__":
  tf.test.main()
