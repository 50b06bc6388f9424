"""The Python API (mlc_keras/api.py): settings, the model builder, datasets,
fit with an injected model, and the label schema inside a .keras file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import tensorflow as tf

import mlc_keras
from mlc_keras.core import config as config_lib
from mlc_keras.modeling import saving
from mlc_keras.training import setup
from tests import testutil


def tiny_backbone(size: int) -> keras.Model:
  image = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(image)
  return keras.Model(image, x, name="tiny")


def tiny_model(schema, size):
  return mlc_keras.build_model(schema, tiny_backbone(size), image_size=size,
                               compile=False)


class ConfigTest(tf.test.TestCase):

  def test_settings_go_to_their_section_in_their_shape(self):
    cfg = mlc_keras.make_config("tiny", epochs=3, image_size=40,
                                augment="flip,crop", loss_weights={"a": 2},
                                dropout=0.1)
    self.assertEqual(cfg.train.epochs, 3)
    self.assertEqual(cfg.data.image_size, 40)
    self.assertEqual(cfg.data.augment, ("flip", "crop"))
    self.assertEqual(cfg.train.loss_weights, (("a", 2.0),))
    self.assertEqual(cfg.model.dropout, 0.1)
    # What the preset chose and the call did not change stays.
    self.assertEqual(cfg.train.batch_size, config_lib.tiny().train.batch_size)
    # A Config round-trips through its dict.
    self.assertEqual(config_lib.Config.from_dict(cfg.to_dict()), cfg)

  def test_unknown_setting_or_preset_is_a_type_error(self):
    with self.assertRaisesRegex(TypeError, "learning_rte"):
      mlc_keras.make_config(learning_rte=1e-3)
    with self.assertRaisesRegex(TypeError, "preset 'huge'"):
      mlc_keras.make_config("huge")

  def test_import_loads_no_tensorflow(self):
    code = ("import sys, mlc_keras; mlc_keras.make_config(epochs=2); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    self.assertEqual(out.stdout.strip(), "False")


class BuildModelTest(tf.test.TestCase):

  def test_own_backbone_gets_named_heads_and_masked_losses(self):
    schema = mlc_keras.as_schema({"shape": ["a", "b", "c"], "colour": ["r", "g"]})
    keras.utils.set_random_seed(0)
    model = mlc_keras.build_model(schema, tiny_backbone(16), image_size=16,
                                  weight_decay=0.0, learning_rate=1e-2)
    self.assertEqual(sorted(model.output_names), ["colour", "shape"])
    self.assertEqual(model.get_layer("backbone").count_params(), 8 * 27 + 8)
    self.assertEqual(model.get_layer("colour").units, 2)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
    y = {"shape": np.array([0, 1, 2, 0]), "colour": np.zeros(4, np.int64)}
    # Every colour label missing: weight 0, so nothing reaches its head.
    w = {"shape": np.ones(4, np.float32), "colour": np.zeros(4, np.float32)}
    before = [v.numpy().copy() for v in model.get_layer("colour").weights]
    shape_before = model.get_layer("shape").weights[0].numpy().copy()
    logs = model.train_on_batch(images, y, w, return_dict=True)
    for b, v in zip(before, model.get_layer("colour").weights):
      self.assertAllEqual(b, v.numpy())
    self.assertNotAllClose(shape_before, model.get_layer("shape").weights[0])
    self.assertEqual(logs["colour_loss"], 0.0)
    self.assertGreater(logs["shape_loss"], 0.5)

  def test_own_backbone_with_attention_pooling_starts_as_the_average(self):
    schema = mlc_keras.as_schema({"shape": ["a", "b", "c"], "colour": ["r", "g"]})
    keras.utils.set_random_seed(0)
    avg = mlc_keras.build_model(schema, tiny_backbone(16), image_size=16,
                                compile=False)
    attn = mlc_keras.build_model(schema, tiny_backbone(16), image_size=16,
                                 compile=False, head_pooling="attention")
    self.assertIn("shape_attention", [l.name for l in attn.layers])
    for layer in ("backbone", "shape", "colour"):
      attn.get_layer(layer).set_weights(avg.get_layer(layer).get_weights())
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
    # Zero-initialised attention weighs every location equally.
    a, b = avg.predict_on_batch(images), attn.predict_on_batch(images)
    for head in ("shape", "colour"):
      self.assertAllClose(a[head], b[head], atol=1e-6)

  def test_known_application_name_builds_the_package_model(self):
    model = mlc_keras.build_model(testutil.SCHEMA, "MobileNetV2",
                                  image_size=32, compile=False)
    self.assertEqual(model.get_layer("backbone").name, "backbone")
    self.assertEqual(model.input.dtype, "uint8")

  def test_unknown_backbone_name_says_what_exists(self):
    with self.assertRaisesRegex(ValueError, "ResNet50V2"):
      mlc_keras.build_model(testutil.SCHEMA, "NoSuchNet", image_size=32)


class MakeDatasetTest(tf.test.TestCase):

  def test_own_dataset_masks_missing_labels_and_resizes(self):
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 30, 3), np.uint8)
    labels = {"shape": np.array([0, 1, 2, -1, 1, 0]),
              "colour": np.array([1, -1, 0, 1, 0, 1])}
    user = tf.data.Dataset.from_tensor_slices((images, labels))
    ds, schema = mlc_keras.make_dataset(user, testutil.SCHEMA, image_size=24,
                                        batch_size=4)
    (x, y, w), (x2, _, w2) = list(ds)
    self.assertEqual(schema, testutil.SCHEMA)
    self.assertEqual(x.dtype, tf.uint8)
    self.assertEqual(x.shape, (4, 24, 24, 3))
    self.assertEqual(x2.shape[0], 2)  # the last batch is kept
    self.assertAllEqual(y["shape"], [0, 1, 2, 0])
    self.assertAllEqual(w["shape"], [1, 1, 1, 0])
    self.assertAllEqual(w["colour"], [1, 0, 1, 1])
    self.assertAllEqual(w2["colour"], [1, 1])

  def test_training_dataset_has_a_length_and_reshuffles_per_pass(self):
    folder = self.get_temp_dir()
    manifest = testutil.write_manifest(folder, testutil.simple_rows(24))
    ds, schema = mlc_keras.make_dataset(manifest, image_size=16, batch_size=4,
                                        training=True, seed=3)
    self.assertEqual(schema.names, ("shape", "colour"))
    self.assertEqual(int(ds.cardinality()), 6)
    order = lambda d: np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in d])
    first, second = order(ds), order(ds)
    self.assertLen(first, 24)
    self.assertAllEqual(sorted(first), sorted(second))  # the same images
    # in another order: a fixed order would match in all 24 places (a
    # parallel map may still swap neighbours, so not an exact check).
    self.assertLess(np.mean(first == second), 0.5)


class FitTest(tf.test.TestCase):

  def test_fit_with_own_model_leaves_a_model_that_names_its_classes(self):
    folder = self.get_temp_dir()
    train = testutil.write_manifest(folder, testutil.simple_rows(16))
    run_dir = os.path.join(folder, "run")
    run = mlc_keras.fit(run_dir, manifest=train, val_fraction=0.25,
                        image_size=32, epochs=2, batch_size=4, verbose=0,
                        model=tiny_model)
    self.assertEqual(run.results["epochs"], 2)
    self.assertEqual(sorted(h["head"] for h in run.results["heads"]),
                     ["colour", "shape"])
    path = os.path.join(run_dir, "model.keras")
    self.assertIn(saving.SCHEMA_MEMBER, zipfile.ZipFile(path).namelist())
    # Plain Keras still loads the file.
    plain = keras.models.load_model(path, compile=False)
    self.assertEqual(sorted(plain.output_names), ["colour", "shape"])
    # Copied alone, it still knows its heads and classes.
    alone = os.path.join(folder, "alone", "copy.keras")
    os.makedirs(os.path.dirname(alone))
    shutil.copy(path, alone)
    model = mlc_keras.load_model(alone)
    self.assertEqual(model.label_schema, run.schema)
    predictor = mlc_keras.load_predictor(alone)
    image = os.path.join(folder, "img", "001.png")
    (row,) = mlc_keras.predict_files(predictor, [image])
    self.assertIn(row["shape"]["class"], testutil.SCHEMA.head("shape").classes)

  def test_a_model_that_does_not_fit_the_heads_is_refused(self):
    folder = self.get_temp_dir()
    train = testutil.write_manifest(folder, testutil.simple_rows(8))

    def wrong(schema, size):
      image = keras.Input((size, size, 3), dtype="uint8")
      x = keras.layers.GlobalAveragePooling2D()(
          keras.layers.Rescaling(1 / 255)(image))
      return keras.Model(image, {"shape": keras.layers.Dense(3, name="shape")(x)})
    with self.assertRaisesRegex(setup.ModelError, "no output named 'colour'"):
      mlc_keras.fit(os.path.join(folder, "run"), manifest=train,
                    val_fraction=0.0, image_size=32, epochs=1, batch_size=4,
                    verbose=0, model=wrong)


if __name__ == "__main__":
  tf.test.main()
