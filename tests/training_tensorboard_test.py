"""training/tensorboard.py: per-head scalar tags, the HParams session and
the per-epoch confusion images and tag F1s, read back from the event files
of tiny fits; the confusion matrix and tag F1 on hand-built numbers."""

import dataclasses
import glob
import os

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.evaluation import plots
from mlc_keras.training import distributed
from mlc_keras.training import selection
from mlc_keras.training import setup
from mlc_keras.training import tensorboard
from tests import testutil
from tests import training_distributed_test


def _events(folder, images=None):
  """{tag: [(step, value)]} of the scalars, and the hparams plugin data,
  in the event files directly inside ``folder``; with a dict ``images``,
  also {tag: [(step, [width, height, png bytes], description)]} there."""
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
        elif plugin == "images" and images is not None:
          images.setdefault(v.tag, []).append(
              (event.step, list(v.tensor.string_val), v.metadata.summary_description))
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



class ValidationPicturesTest(tf.test.TestCase):

  def test_confusion_counts_leave_missing_labels_out(self):
    labels = np.array([0, 0, 1, 1, 1, 2, -1, -1])
    predicted = np.array([0, 1, 1, 1, 0, 2, 3, 0])
    probs = np.eye(4)[predicted] * 0.7 + 0.075  # argmax = predicted
    counts = tensorboard.confusion_counts(labels, probs, 4)
    # The two unlabelled rows (predicted 3 and 0) count nowhere; class 3
    # has no labelled sample, so its row stays zeros.
    self.assertAllEqual(counts, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0],
                                 [0, 0, 0, 0]])
    self.assertAllClose(plots.normalise_confusion(counts),
                        [[0.5, 0.5, 0, 0], [1 / 3, 2 / 3, 0, 0],
                         [0, 0, 1, 0], [0, 0, 0, 0]])

  def test_tag_f1(self):
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.1], [0.1, 0.4, 0.1],
                      [0.8, 0.9, 0.9]])
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    labelled = np.array([True, True, True, False])
    # bar: on in rows 0-1, present in 0 and 2: 2*1 / (2 + 2). dot: one hit,
    # nothing else. none: neither present nor predicted in a labelled row.
    self.assertAllClose(
        tensorboard.tag_f1(probs, truth, labelled, (0.5, 0.5, 0.5)),
        [0.5, 1.0, 0.0])
    # At dot's own threshold 0.75 its one hit is lost.
    self.assertAllClose(
        tensorboard.tag_f1(probs, truth, labelled, (0.5, 0.75, 0.5)),
        [0.5, 0.0, 0.0])

  def test_confusion_image_size(self):
    image = tensorboard.confusion_image(np.eye(3, dtype=np.int64) * 4,
                                        ("a", "b", "c"), "shape")
    # plots.confusion_figure's 5.7 x 4.5 inches at 100 dpi.
    self.assertEqual(image.shape, (1, 450, 570, 3))
    self.assertEqual(image.dtype, np.uint8)
    many = tensorboard.confusion_image(
        np.eye(60, dtype=np.int64), [f"c{i}" for i in range(60)], "many")
    self.assertEqual(max(many.shape[1:3]), tensorboard.IMAGE_MAX_PIXELS)

  def test_the_confusion_figure_keeps_its_labels_inside(self):
    for classes in (("circle", "square", "triangle"), ("blue", "red"),
                    tuple(f"class_{i}" for i in range(20))):
      fig = plots.confusion_figure(
          np.ones((len(classes),) * 2, np.int64), classes, "head")
      fig.canvas.draw()
      renderer = fig.canvas.get_renderer()
      for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        self.assertGreaterEqual(box.x0, 0, classes)
        self.assertGreaterEqual(box.y0, 0, classes)
        self.assertLessEqual(box.x1, fig.bbox.width, classes)
        self.assertLessEqual(box.y1, fig.bbox.height, classes)
      plots.pyplot().close(fig)

  def test_a_confusion_image_per_epoch_from_the_validation_data(self):
    schema = heads_lib.LabelSchema((
        *testutil.SCHEMA.heads,
        heads_lib.HeadSpec("marks", ("bar", "dot"), kind=heads_lib.TAGS)))
    inputs = keras.Input((4,), name="image")
    model = keras.Model(inputs, {
        h.name: keras.layers.Dense(
            h.num_classes, activation="sigmoid" if h.is_tags else "softmax",
            name=h.name)(inputs) for h in schema.heads})
    setup.compile_model(model, schema, keras.optimizers.SGD(0.05))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = {h.name: rng.integers(0, h.num_classes, 16) for h in schema.heads
         if not h.is_tags}
    y["marks"] = rng.integers(0, 2, (16, 2)).astype("float32")
    w = {h.name: np.ones(16, "float32") for h in schema.heads}
    w["shape"][[2, 5]] = 0  # missing shape labels: in no count
    log_dir = os.path.join(self.get_temp_dir(), "tensorboard")
    validation = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    # 12 of the 16 validation images: the whole first batch, 4 of the second.
    callback = tensorboard.HeadTensorBoard(
        log_dir, schema, validation_data=validation, confusion_images=12)
    model.fit(x, y, sample_weight=w, validation_data=validation, epochs=2,
              batch_size=8, verbose=0, callbacks=[callback])

    images = {}
    scalars, _ = _events(os.path.join(log_dir, "validation"), images)
    self.assertEqual(set(images), {"shape/confusion", "colour/confusion"})
    for tag in images:
      self.assertEqual([step for step, _, _ in images[tag]], [1, 2])
      for _, (width, height, _), _ in images[tag]:
        self.assertEqual((int(width), int(height)), (570, 450))
    self.assertIn("the first 12 validation images, 10 labelled",
                  images["shape/confusion"][0][2])
    # The last epoch's picture is the final model's matrix on those rows,
    # pixel for pixel.
    probs = model.predict(x[:12], verbose=0)
    for head in testutil.SCHEMA.heads:
      labels = np.where(w[head.name][:12] > 0, y[head.name][:12], -1)
      counts = tensorboard.confusion_counts(labels, probs[head.name],
                                            head.num_classes)
      self.assertEqual(counts.sum(), 10 if head.name == "shape" else 12)
      drawn = tf.io.decode_png(images[f"{head.name}/confusion"][1][1][2])
      self.assertAllEqual(drawn[tf.newaxis], tensorboard.confusion_image(
          counts, head.classes, f"{head.name}, epoch 2"))
    f1 = tensorboard.tag_f1(probs["marks"], y["marks"][:12],
                            np.ones(12, bool), (0.5, 0.5))
    for tag, value in zip(("bar", "dot"), f1):
      self.assertEqual([s for s, _ in scalars[f"marks/f1/{tag}"]], [1, 2])
      self.assertAllClose(scalars[f"marks/f1/{tag}"][1][1], value)

  def test_validation_data_needs_the_schema(self):
    with self.assertRaisesRegex(ValueError, "LabelSchema"):
      tensorboard.HeadTensorBoard(
          self.get_temp_dir(), testutil.SCHEMA.names,
          validation_data=tf.data.Dataset.range(1))



class DistributedTest(tf.test.TestCase):

  def test_the_custom_loop_writes_the_training_scalars_and_hparams(self):
    root = self.get_temp_dir()
    base = config_lib.tiny()
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data, manifest=testutil.write_manifest(
                root, testutil.simple_rows(16)), val_fraction=0.0),
        train=dataclasses.replace(base.train, epochs=2, steps_per_epoch=2,
                                  optimizer="sgd", learning_rate=0.05,
                                  strategy="mirrored"))
    model_dir = os.path.join(root, "run")
    distributed.train_and_evaluate(
        cfg, model_dir, build_model=training_distributed_test.tiny_model)

    log_dir = os.path.join(model_dir, "tensorboard")
    train, _ = _events(os.path.join(log_dir, "train"))
    with open(os.path.join(model_dir, "history.csv"), encoding="utf-8") as f:
      header = f.readline().strip().split(",")
      rows = np.loadtxt(f, delimiter=",", ndmin=2)
    history = dict(zip(header, rows.T))
    self.assertAllClose(train["overall/loss"],
                        list(zip([1, 2], history["loss"])))
    for head in testutil.SCHEMA.names:
      self.assertAllClose(train[f"{head}/acc"],
                          list(zip([1, 2], history[f"{head}_acc"])))
    self.assertEqual([s for s, _ in train["overall/learning_rate"]], [1, 2])
    self.assertNotIn("overall/epoch", train)
    # No validation during training: no validation run.
    self.assertFalse(os.path.exists(os.path.join(log_dir, "validation")))
    _, hparams = _events(log_dir)
    self.assertLen(hparams, 1)
    self.assertEqual(
        hparams[0].session_start_info.hparams["train.strategy"].string_value,
        "mirrored")


if __name__ == "__main__":
  tf.test.main()
