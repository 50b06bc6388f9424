"""One tiny confident model, exported once per test process and shared by
export_lib_test and predict_test (pytest runs every test file in the same
process, so the export costs once, not once per test class).

plain(): the model folder and export() of every format and quantization.
composed(): a calibrated copy of the same model (temperatures and an old
class table inside calibrated.keras), exported with another class table.

Both are built on first use and cached; their folders are removed at exit.
Tests must not change what is in them (their own outputs go in their own
temp dirs; a new file beside the fixture's is harmless).

The model is ResNet50V2 at 32x32 (weights=None). Training a ResNet from
scratch takes minutes here, so the heads are fitted on the frozen random
backbone's features: the model is then confident (every held-out image has a
top-1 margin > 0.5), which is what makes the int8 agreement assertions
meaningful rather than a coin flip on near-ties.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import types

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.exporters import publish as export_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import model as model_lib
from mlc_keras.runs import folder as run_dir

SIZE = 32
SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("colour", ("red", "green", "blue")),
    heads_lib.HeadSpec("tone", ("dark", "light")),
))
# Composed classes over (colour, tone); as a model folder's own file would be.
CLASS_TABLE = """class,colour,tone
dark_red,red,dark
light_red,red,light
green,green,
blue,blue,
"""
# What `evaluate --calibrate --class_table` put into calibrated.keras earlier:
# another table, which --class_table must replace.
OLD_TABLE = {"reddish": {"colour": "red"}, "other": {"colour": "green"}}
TEMPERATURES = {"colour": 2.5, "tone": 3.0}


def make_images(n: int, seed: int, size: int = SIZE):
  """Noisy flat images: colour = the boosted channel, tone = the base level."""
  rs = np.random.RandomState(seed)
  colour = rs.randint(0, 3, n)
  tone = rs.randint(0, 2, n)
  base = np.where(tone == 1, 150.0, 40.0)[:, None, None, None] * np.ones(
      (n, size, size, 3))
  base[np.arange(n), :, :, colour] += 90
  images = np.clip(base + rs.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
  return images, {"colour": colour, "tone": tone}


def confident_model(schema=SCHEMA, size=SIZE, seed=0):
  """build_model with its heads fitted on the frozen backbone's features.
  (A random MobileNetV2 at 32x32 gives the same features for every image, so
  the faster-converting backbone is no use here.)"""
  keras.utils.set_random_seed(seed)
  model = model_lib.build_model(schema, size)
  images, labels = make_images(128, seed, size)
  features_model = keras.Model(model.input,
                               model.get_layer(model_lib.FEATURES_LAYER).output)
  features = features_model.predict(images, verbose=0)
  inputs = keras.Input(features.shape[1:])
  heads = keras.Model(inputs, {
      h.name: keras.layers.Dense(h.num_classes, activation="softmax",
                                 name=h.name)(inputs) for h in schema.heads})
  heads.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss="sparse_categorical_crossentropy")
  heads.fit(features, labels, epochs=60, batch_size=32, verbose=0)
  for h in schema.heads:
    model.get_layer(h.name).set_weights(heads.get_layer(h.name).get_weights())
  return model


def write_images(folder: str, images, ext: str = ".png") -> list[str]:
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i, image in enumerate(images):
    path = os.path.join(folder, f"img_{i:03d}{ext}")
    data = (tf.io.encode_png(image) if ext == ".png"
            else tf.io.encode_jpeg(image, quality=95)).numpy()
    with open(path, "wb") as f:
      f.write(data)
    paths.append(path)
  return paths


def _temp_root(prefix: str) -> str:
  root = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  return root


@functools.lru_cache(maxsize=None)
def plain() -> types.SimpleNamespace:
  """The model folder <root>/tiny (model.keras, labels.json) and its export
  (version 3, every format and quantization) under <root>/export.

  Attributes: root, model_dir, model_file, model, cal_dir (48 images),
  parity_dir (30 PNG + 10 JPEG in jpeg/), base, result (ExportResult).
  """
  root = _temp_root("export_fixture_plain_")
  model_dir = os.path.join(root, "tiny")
  os.makedirs(model_dir)
  model = confident_model()
  model_file = os.path.join(model_dir, run_dir.MODEL_FILE)
  model.save(model_file)
  SCHEMA.save(model_dir)
  calibration, _ = make_images(48, seed=1)
  parity_images, _ = make_images(40, seed=2)
  cal_dir = os.path.join(root, "calibration")
  write_images(cal_dir, calibration)
  parity_dir = os.path.join(root, "parity")
  write_images(parity_dir, parity_images[:30])
  write_images(os.path.join(parity_dir, "jpeg"), parity_images[30:], ext=".jpg")
  base = os.path.join(root, "export")
  # In-process conversion keeps the tests fast; _run_isolated is tested alone.
  result = export_lib.export(
      model_dir, output=base, version=3, representative=cal_dir,
      parity_images=parity_dir, isolate=False, log=lambda _: None)
  return types.SimpleNamespace(
      root=root, model_dir=model_dir, model_file=model_file, model=model,
      cal_dir=cal_dir, parity_dir=parity_dir, base=base, result=result)


@functools.lru_cache(maxsize=None)
def composed() -> types.SimpleNamespace:
  """plain()'s model calibrated with a class table, exported as a user would
  after `evaluate --calibrate`.

  <root>/run holds model.keras, labels.json and a newer calibrated.keras
  (TEMPERATURES, and a "class" output over OLD_TABLE); it is exported with
  --class_table=<root>/classes.csv (CLASS_TABLE), fp32 and int8, calibrated
  on plain().cal_dir. <root>/carrying/model.keras is the calibrated model
  with CLASS_TABLE's "class" output: the .keras twin of the exports.

  Attributes: root, model_dir, plain (keras.Model), calibrated (keras.Model,
  OLD_TABLE's class output), table_path, table, carrying_keras, cal_dir,
  base, log (export's log lines), result (ExportResult).
  """
  from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import outputs  # pylint: disable=g-import-not-at-top
  source = plain()
  root = _temp_root("export_fixture_composed_")
  model_dir = os.path.join(root, "run")
  os.makedirs(model_dir)
  shutil.copyfile(source.model_file,
                  os.path.join(model_dir, run_dir.MODEL_FILE))
  SCHEMA.save(model_dir)
  calibrated_heads = outputs.with_temperatures(source.model, TEMPERATURES)
  calibrated = outputs.with_class_output(calibrated_heads,
                                         compose.from_dict(OLD_TABLE, SCHEMA))
  # Saved after model.keras: export picks it only when it is not older.
  calibrated.save(os.path.join(model_dir, run_dir.CALIBRATED_FILE))
  table_path = os.path.join(root, "classes.csv")
  with open(table_path, "w") as f:
    f.write(CLASS_TABLE)
  table = compose.load(table_path, SCHEMA)
  carrying_dir = os.path.join(root, "carrying")
  os.makedirs(carrying_dir)
  carrying_keras = os.path.join(carrying_dir, run_dir.MODEL_FILE)
  outputs.with_class_output(calibrated, table).save(carrying_keras)
  SCHEMA.save(carrying_dir)
  base = os.path.join(root, "export")
  log = []
  result = export_lib.export(
      model_dir, output=base, quantizations="fp32,int8",
      representative=source.cal_dir, class_table=table_path,
      isolate=False, log=log.append)
  return types.SimpleNamespace(
      root=root, model_dir=model_dir, plain=source.model,
      calibrated=calibrated, table_path=table_path, table=table,
      carrying_keras=carrying_keras, cal_dir=source.cal_dir, base=base,
      log=log, result=result)


# A softmax head beside a tag head, for tagged().
TAG_SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("colour", ("red", "green", "blue")),
    heads_lib.HeadSpec("marks", ("bar", "corner", "edge"),
                       kind=heads_lib.TAGS),
))


@functools.lru_cache(maxsize=None)
def tagged() -> types.SimpleNamespace:
  """A small_cnn (cheap to convert) with TAG_SCHEMA's heads and per-tag
  thresholds in its labels.json, exported to the SavedModel, fp32 TFLite
  and ONNX (version 1) and checked against Keras on 24 parity images.

  The thresholds sit halfway between two neighbouring Keras scores of each
  tag near its median, so about half the images carry each tag and no
  image's score is within a rounding error of a threshold.

  Attributes: root, model_dir, model, schema (with thresholds), parity_dir,
  parity_paths, images (uint8), keras_scores ({head: [N, k]}), base, result.
  """
  root = _temp_root("export_fixture_tagged_")
  model_dir = os.path.join(root, "tagged")
  os.makedirs(model_dir)
  keras.utils.set_random_seed(5)
  model = model_lib.small_cnn(TAG_SCHEMA, SIZE)
  # Spread the tag logits so the sigmoid scores are not all near 0.5.
  kernel, bias = model.get_layer("marks").get_weights()
  model.get_layer("marks").set_weights([kernel * 40.0, bias])
  images, _ = make_images(24, seed=4)
  scores = model.predict(images, verbose=0)
  ordered = np.sort(scores["marks"], axis=0)
  thresholds = (ordered[11] + ordered[12]) / 2
  schema = TAG_SCHEMA.with_thresholds({"marks": [float(t) for t in thresholds]})
  model.save(os.path.join(model_dir, run_dir.MODEL_FILE))
  schema.save(model_dir)
  parity_dir = os.path.join(root, "parity")
  parity_paths = write_images(parity_dir, images)
  base = os.path.join(root, "export")
  result = export_lib.export(
      model_dir, output=base, version=1, formats="saved_model,tflite,onnx",
      quantizations="fp32", parity_images=parity_dir, isolate=False,
      log=lambda _: None)
  return types.SimpleNamespace(
      root=root, model_dir=model_dir, model=model, schema=schema,
      parity_dir=parity_dir, parity_paths=parity_paths, images=images,
      keras_scores=scores, base=base, result=result)


# Calibrated stacking's bias in stacked(): on dark_red and green (the classes
# "seen in training" of the story), large enough to move decisions.
STACKING_BIAS = (1.5, 0.0, 1.5, 0.0)


@functools.lru_cache(maxsize=None)
def stacked() -> types.SimpleNamespace:
  """A small_cnn (cheap to convert: the export path, not the backbone, is
  under test) on SCHEMA with CLASS_TABLE's class output carrying a
  calibrated-stacking bias, saved as calibrated.keras (what `evaluate
  --stacking` writes) and exported fp32 without --class_table: the table and
  its bias come from the model.

  Attributes: model_dir, model (keras.Model with the biased class output),
  table, bias, result (ExportResult), log.
  """
  from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import outputs  # pylint: disable=g-import-not-at-top
  root = _temp_root("export_fixture_stacked_")
  model_dir = os.path.join(root, "run")
  os.makedirs(model_dir)
  keras.utils.set_random_seed(7)
  plain_model = model_lib.small_cnn(SCHEMA, SIZE)
  plain_model.save(os.path.join(model_dir, run_dir.MODEL_FILE))
  SCHEMA.save(model_dir)
  table_path = os.path.join(root, "classes.csv")
  with open(table_path, "w") as f:
    f.write(CLASS_TABLE)
  table = compose.load(table_path, SCHEMA)
  model = outputs.with_class_output(plain_model, table, list(STACKING_BIAS))
  model.save(os.path.join(model_dir, run_dir.CALIBRATED_FILE))
  parity_dir = os.path.join(root, "parity")
  write_images(parity_dir, make_images(20, seed=6)[0])
  log = []
  result = export_lib.export(
      model_dir, output=os.path.join(root, "export"), quantizations="fp32",
      parity_images=parity_dir, isolate=False, log=log.append)
  return types.SimpleNamespace(model_dir=model_dir, model=model, table=table,
                               bias=np.array(STACKING_BIAS), result=result,
                               log=log)
