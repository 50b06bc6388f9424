"""--data_service: the training input decoded on tf.data service workers
(a dispatcher and workers started in this process, on localhost)."""

import csv
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.data import manifest
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.modeling import model as model_lib
from mlc_keras.training import distributed
from tests import testutil

service = tf.data.experimental.service


def start_service(workers: int):
  """(dispatcher, workers, "grpc://localhost:port"), ports picked free."""
  dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
  address = dispatcher.target.split("://")[1]
  started = [service.WorkerServer(service.WorkerConfig(
      dispatcher_address=address, port=0)) for _ in range(workers)]
  return dispatcher, started, dispatcher.target


class DataServiceTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.servers = start_service(1)
    cls.address = cls.servers[2]

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.manifest = testutil.write_manifest(
        self.dir, testutil.simple_rows(12), size=32)
    records, self.schema = manifest.read_manifest(self.manifest)
    self.source = sources.records_source(records)

  def batches(self, data_service=None, start_epoch=0):
    return list(pipeline.train_dataset(
        self.source, self.schema, image_size=16, batch_size=4, seed=1,
        start_epoch=start_epoch, end_epoch=2,
        augmentations=("resized_crop", "flip"), deterministic=True,
        data_service=data_service).as_numpy_iterator())

  def assertSameBatches(self, want, got):
    self.assertLen(got, len(want))
    for (wi, wy, ww), (gi, gy, gw) in zip(want, got):
      self.assertAllEqual(wi, gi)
      for head in ("shape", "colour"):
        self.assertAllEqual(wy[head], gy[head])
        self.assertAllEqual(ww[head], gw[head])

  def test_one_worker_gives_the_local_batches_and_masks(self):
    local = self.batches()
    self.assertLen(local, 6)  # 2 epochs x 12 // 4
    self.assertSameBatches(local, self.batches(self.address))
    # Resuming at epoch 1 starts a new service job at that epoch: the same
    # batches as the uninterrupted run from there on.
    self.assertSameBatches(local[3:], self.batches(self.address, 1))
    # Blank colour cells keep weight 0 through the service.
    weights = np.concatenate([w["colour"] for _, _, w in local])
    self.assertEqual(int((weights == 0).sum()), 8)  # 4 rows x 2 epochs

  def test_two_workers_give_each_batch_once(self):
    dispatcher, workers, address = start_service(2)
    key = lambda b: b[0].tobytes() + b[1]["shape"].tobytes()
    local = sorted(map(key, self.batches()))
    self.assertEqual(sorted(map(key, self.batches(address))), local)
    for server in workers + [dispatcher]:
      server.stop()

  def test_bad_address_names_the_flag(self):
    with self.assertRaisesRegex(ValueError, "data_service .*'localhost:1'"):
      self.batches("localhost:1")

  def test_trains_a_tiny_model_like_local_input(self):
    # The mirrored trainer (one CPU replica) takes a model builder: a small
    # CNN keeps this end-to-end run to seconds.
    losses, weights = {}, {}
    for name, address in (("local", None), ("service", self.address)):
      cfg = config_lib.tiny()
      cfg = dataclasses.replace(
          cfg, data=dataclasses.replace(
              cfg.data, manifest=self.manifest, image_size=16,
              augment=("resized_crop", "flip"), deterministic=True,
              data_service=address),
          train=dataclasses.replace(cfg.train, batch_size=4, epochs=2,
                                    steps_per_epoch=2, strategy="mirrored"))
      model_dir = os.path.join(self.dir, name)
      built = []

      def build(schema, size):
        built.append(model_lib.small_cnn(schema, size))
        return built[-1]
      distributed.train_and_evaluate(cfg, model_dir, build_model=build)
      weights[name] = built[0].get_weights()
      with open(os.path.join(model_dir, "history.csv")) as f:
        losses[name] = [float(r["loss"]) for r in csv.DictReader(f)]
      with open(os.path.join(model_dir, "config.json")) as f:
        self.assertEqual(json.load(f)["data"]["data_service"], address)
    self.assertLen(losses["service"], 2)
    # Same batches in the same order: the same training, up to the float
    # rounding of op scheduling.
    self.assertAllClose(losses["service"], losses["local"], rtol=1e-5)
    for a, b in zip(weights["service"], weights["local"]):
      self.assertAllClose(a, b, atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
