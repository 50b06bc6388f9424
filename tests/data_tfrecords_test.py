"""Tests for TFRecord writing and reading."""

import io
import os

import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.data import manifest
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.data import tfrecords
from tests import testutil


class TFRecordTest(tf.test.TestCase):

  def test_round_trip_matches_manifest(self):
    folder = self.get_temp_dir()
    path = testutil.write_manifest(folder, testutil.simple_rows(6))
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    shards = tfrecords.write_tfrecords(records, schema, os.path.join(folder, "tfr", "train"), 2)
    self.assertLen(shards, 2)
    self.assertEqual(heads_lib.LabelSchema.load(os.path.join(folder, "tfr")), schema)
    source = tfrecords.tfrecord_source(os.path.join(folder, "tfr", "train-*"), schema)
    self.assertEqual(sources.count(source), 6)
    ds = pipeline.eval_dataset(source, schema, image_size=32, batch_size=6)
    _, labels, weights = next(iter(ds))
    # Shards interleave rows; compare as multisets of (shape, colour, weight).
    got = sorted(zip(labels["shape"].numpy(), labels["colour"].numpy(),
                     weights["colour"].numpy()))
    want = sorted(zip(records.labels[:, 0], np.maximum(records.labels[:, 1], 0),
                      (records.labels[:, 1] >= 0).astype(np.float32)))
    self.assertEqual([tuple(map(float, g)) for g in got],
                     [tuple(map(float, w)) for w in want])

  def test_tag_head_round_trip(self):
    folder = self.get_temp_dir()
    rows = [{"image": f"img/{i}.png", "shape": ("circle", "square")[i % 2],
             "marks": m}
            for i, m in enumerate(["edge|bar", "", "(none)"])]
    path = testutil.write_manifest(folder, rows, size=8,
                                   columns=("image", "shape", "marks"))
    records, schema = manifest.read_manifest(path, tag_columns=["marks"])
    tfrecords.write_tfrecords(records, schema, os.path.join(folder, "t", "x"))
    source = tfrecords.tfrecord_source(os.path.join(folder, "t", "x-*"),
                                       heads_lib.LabelSchema.load(
                                           os.path.join(folder, "t")))
    got = np.stack([y for _, y in source.make().as_numpy_iterator()])
    self.assertAllEqual(got, records.labels)
    self.assertAllEqual(got, [[0, 1, 1], [1, -1, -1], [0, 0, 0]])

  def test_parallel_shards_keep_the_row_assignment_and_report_progress(self):
    folder = self.get_temp_dir()
    path = testutil.write_manifest(folder, testutil.simple_rows(7), size=8)
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    out = io.StringIO()
    shards = tfrecords.write_tfrecords(
        records, schema, os.path.join(folder, "par", "train"), 3, workers=3,
        progress=out)
    for k, shard in enumerate(shards):
      got = [tf.train.Example.FromString(r.numpy()).features.feature[
          "image/path"].bytes_list.value[0].decode()
             for r in tf.data.TFRecordDataset(shard)]
      # Row i in shard i % 3, in manifest order, as the serial writer did.
      self.assertEqual(got, list(records.paths[k::3]))
    self.assertIn("writing examples: 7/7", out.getvalue())


if __name__ == "__main__":
  tf.test.main()
