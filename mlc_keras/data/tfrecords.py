"""Manifest records as sharded tf.Example TFRecords, and those shards as a Source.

An example holds ``image/encoded`` (the file's bytes as stored),
``image/path`` and one int64 ``label/<head>`` per head, -1 where missing (a
tag head's is its 0/1 vector over the tags, all -1 where missing);
labels.json beside the shards is the schema that reads them back.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import threading
from typing import Optional, TextIO

import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.data import imagecheck
from mlc_keras.data import manifest
from mlc_keras.data import sources


def _example_spec(schema: heads_lib.LabelSchema) -> dict:
  # Each head's kind says its feature (a tag head's: its 0/1 vector).
  spec = {f"label/{h.name}": h.kind_impl.tfrecord_feature(h)
          for h in schema.heads}
  spec["image/encoded"] = tf.io.FixedLenFeature([], tf.string)
  return spec


def tfrecord_source(pattern: str,
                    schema: heads_lib.LabelSchema) -> sources.Source:
  """The shards matching ``pattern`` as a Source of (bytes, labels)."""
  files = sorted(glob.glob(pattern))
  if not files:
    raise manifest.DataError(f"{pattern}: no TFRecord files match")
  spec = _example_spec(schema)

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    labels = tf.concat([tf.reshape(tf.cast(ex[f"label/{h}"], tf.int32), [-1])
                        for h in schema.names], axis=0)
    return ex["image/encoded"], labels

  def make():
    return tf.data.TFRecordDataset(
        files, num_parallel_reads=tf.data.AUTOTUNE).map(
            parse, num_parallel_calls=tf.data.AUTOTUNE)
  return sources.Source(make, None, True, pattern)


def _example(path: str, labels, schema: heads_lib.LabelSchema) -> tf.train.Example:
  with open(path, "rb") as f:
    encoded = f.read()
  feature = {
      "image/encoded": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[encoded])),
      "image/path": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[path.encode()])),
  }
  for h, cols in schema.label_slices().items():
    feature[f"label/{h}"] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[int(v) for v in labels[cols]]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(records: manifest.Records, schema: heads_lib.LabelSchema,
                    output_prefix: str, num_shards: int = 1,
                    workers: Optional[int] = None,
                    progress: Optional[TextIO] = None) -> list[str]:
  """Writes records as tf.Example shards ``<prefix>-00000-of-0000N.tfrecord``
  (encoded bytes as stored, labels as int64 with -1 = missing) and
  labels.json beside them. Returns the shard paths.

  Record i goes to shard i % num_shards; the shards are written in parallel
  (``workers`` threads, default the CPU count; file reads and writes release
  the GIL), with a progress line on ``progress``."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  folder = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(folder, exist_ok=True)
  names = [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"
           for i in range(num_shards)]
  meter = imagecheck.Progress(progress, len(records), "writing examples")
  lock, done = threading.Lock(), [0]

  def write_shard(shard: int) -> None:
    with tf.io.TFRecordWriter(names[shard]) as writer:
      for i in range(shard, len(records), num_shards):
        writer.write(_example(records.paths[i], records.labels[i],
                              schema).SerializeToString())
        with lock:
          done[0] += 1
          meter.update(done[0])

  workers = min(workers or os.cpu_count() or 1, num_shards)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(write_shard, range(num_shards)))
  meter.update(len(records), final=True)
  schema.save(os.path.join(folder, "labels.json"))
  return names
