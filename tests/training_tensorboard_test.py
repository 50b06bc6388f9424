"""training/tensorboard.py: per-head scalar tags and the HParams session,
read back from the event files of a tiny fit."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from mlc_keras.core import config as config_lib
from mlc_keras.training import selection
from mlc_keras.training import setup
from mlc_keras.training import tensorboard
from tests import testutil


def _events(folder):
  """{tag: [(step, value)]} of the scalars, and the hparams plugin data,
  in the event files directly inside ``folder``."""
  scalars, hparams = {}, []
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        plugin = v.metadata.plugin_data.plugin_name
        if plugin == "hparams":
          hparams.append(plugin_data_pb2.HParamsPluginData.FromString(
              v.metadata.plugin_data.content))
        elif plugin == "scalars":
          scalars.setdefault(v.tag, []).append(
              (event.step, float(tf.make_ndarray(v.tensor))))
  return scalars, hparams


class TagsTest(tf.test.TestCase):

  def test_scalar_tag(self):
    heads = ["shape", "shape_x"]
    self.assertEqual(tensorboard.scalar_tag("val_shape_acc", heads),
                     ("validation", "shape/acc"))
    self.assertEqual(tensorboard.scalar_tag("shape_x_balanced_acc", heads),
                     ("train", "shape_x/balanced_acc"))
    self.assertEqual(tensorboard.scalar_tag("loss", heads),
                     ("train", "overall/loss"))
    self.assertEqual(
        tensorboard.scalar_tag("val_mean_balanced_accuracy", heads),
        ("validation", "overall/mean_balanced_accuracy"))
    self.assertEqual(tensorboard.scalar_tag("learning_rate", heads),
                     ("train", "overall/learning_rate"))

  def test_flatten_config(self):
    cfg = config_lib.Config(train=config_lib.TrainConfig(
        learning_rate=0.003, loss_weights=(("shape", 2.0),)))
    flat = tensorboard.flatten_config(cfg.to_dict())
    self.assertEqual(flat["train.learning_rate"], 0.003)
    self.assertEqual(flat["data.image_size"], cfg.data.image_size)
    self.assertEqual(flat["train.loss_weights"], "shape:2.0")
    self.assertEqual(flat["data.augment"], ", ".join(cfg.data.augment))
    self.assertNotIn("data.manifest", flat)  # None: no HParams value
    for value in flat.values():
      self.assertIsInstance(value, (bool, int, float, str))


class FitTest(tf.test.TestCase):

  def test_event_files_after_a_tiny_fit(self):
    schema = testutil.SCHEMA
    inputs = keras.Input((4,), name="image")
    model = keras.Model(inputs, {
        h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                   name=h.name)(inputs)
        for h in schema.heads})
    setup.compile_model(model, schema, keras.optimizers.SGD(0.05))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = {h.name: rng.integers(0, h.num_classes, 16) for h in schema.heads}
    w = {h.name: np.ones(16, "float32") for h in schema.heads}
    log_dir = os.path.join(self.get_temp_dir(), "tensorboard")
    cfg = config_lib.Config(train=config_lib.TrainConfig(learning_rate=0.05))
    callback = tensorboard.HeadTensorBoard(log_dir, schema.names,
                                           cfg.to_dict())
    history = model.fit(
        x, y, sample_weight=w, validation_data=(x, y, w), epochs=2,
        batch_size=8, verbose=0,
        callbacks=[selection.MeanOverHeads(schema), callback])

    train, _ = _events(os.path.join(log_dir, "train"))
    validation, _ = _events(os.path.join(log_dir, "validation"))
    for head in schema.names:
      for metric in ("loss", "acc", "balanced_acc"):
        self.assertIn(f"{head}/{metric}", train)
        self.assertIn(f"{head}/{metric}", validation)
    self.assertIn("overall/loss", train)
    self.assertIn("overall/mean_balanced_accuracy", validation)
    self.assertAllClose(train["overall/learning_rate"], [(1, 0.05), (2, 0.05)])
    # Steps are epochs completed; values are the epoch logs.
    self.assertEqual([s for s, _ in train["shape/acc"]], [1, 2])
    self.assertAllClose([v for _, v in train["shape/acc"]],
                        history.history["shape_acc"])
    self.assertAllClose([v for _, v in validation["colour/loss"]],
                        history.history["val_colour_loss"])
    self.assertAllClose(
        [v for _, v in validation["overall/mean_balanced_accuracy"]],
        history.history["val_mean_balanced_accuracy"])
    # No flat Keras-style tag is left.
    self.assertEmpty([t for t in train if "/" not in t])

    _, hparams = _events(log_dir)
    self.assertLen(hparams, 1)
    values = hparams[0].session_start_info.hparams
    self.assertAllClose(values["train.learning_rate"].number_value, 0.05)
    self.assertEqual(values["model.backbone"].string_value,
                     cfg.model.backbone)
    self.assertEqual(values["data.cache"].bool_value, cfg.data.cache)
    self.assertEqual(set(values),
                     set(tensorboard.flatten_config(cfg.to_dict())))


if __name__ == "__main__":
  tf.test.main()
