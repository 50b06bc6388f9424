"""Tests of attribute composition: exact math on constructed probabilities,
clear errors for bad class tables, the Keras layer (save/load, parity with
numpy), and one end-to-end check that a briefly trained model recognises the
demo's held-out combination (large outlined blue triangles, never in
training) through the class table."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.labeling import compose
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import layers
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import outputs
from mlc_keras.modeling import saving
from mlc_keras.data import demo
from tests import testutil

# The end-to-end check: a short from-scratch training at 32x32.
E2E_SIZE = 32
E2E_STEPS = 900
E2E_TRAIN_SIZE = 1000

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("shape", ("circle", "square", "triangle")),
    heads_lib.HeadSpec("colour", ("blue", "red")),
    heads_lib.HeadSpec("size", ("large", "small")),
))


def _write(folder: str, text: str, name: str = "classes.csv") -> str:
  path = os.path.join(folder, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


class ClassTableTest(tf.test.TestCase):

  def test_load(self):
    path = _write(self.get_temp_dir(),
                  "class,shape,colour\nblue_triangle,triangle,blue\n"
                  "anything_red,,red\n\n")
    table = compose.load(path, SCHEMA)
    self.assertEqual(table.classes, ("blue_triangle", "anything_red"))
    self.assertEqual(table.heads, ("shape", "colour"))
    self.assertEqual(table.values, ((2, 0), (-1, 1)))

  def test_round_trip(self):
    table = compose.from_dict({"a": {"shape": "circle", "size": "small"},
                               "b": {"colour": "red"}}, SCHEMA)
    path = os.path.join(self.get_temp_dir(), "t.csv")
    compose.save(table, SCHEMA, path)
    again = compose.load(path, SCHEMA)
    self.assertEqual(again.classes, table.classes)
    self.assertEqual(again.heads, ("shape", "colour", "size"))
    self.assertEqual(again.values, table.values)

  def test_errors_name_file_line_and_column(self):
    d = self.get_temp_dir()
    cases = {
        "not_head": ("class,shape,weight\na,circle,heavy\n",
                     ["not_head.csv:1", "'weight'", "not a head"]),
        "bad_value": ("class,shape,colour\na,circle,blue\nb,hexagon,red\n",
                      ["bad_value.csv:3", "column 'shape'", "'hexagon'"]),
        "dupe": ("class,shape\na,circle\nb,square\na,triangle\n",
                 ["dupe.csv:4", "'a' is listed twice", "line 2"]),
        "empty_class": ("class,shape,colour\na,circle,\nb,,\n",
                        ["empty_class.csv:3", "'b' specifies no head"]),
        "ragged": ("class,shape\na,circle,red\n", ["ragged.csv:2", "3 cells"]),
        "no_heads": ("class\na\n", ["no_heads.csv:1", "head column"]),
        "no_rows": ("class,shape\n", ["no_rows.csv", "no rows"]),
        "unknown": ("class,shape\nunknown,circle\n",
                    ["unknown.csv:2", "reserved"]),
    }
    for name, (text, expected) in cases.items():
      path = _write(d, text, name + ".csv")
      with self.assertRaises(compose.ClassTableError) as ctx:
        compose.load(path, SCHEMA)
      for piece in expected:
        self.assertIn(piece, str(ctx.exception), msg=name)
    with self.assertRaisesRegex(compose.ClassTableError, "not found"):
      compose.load(os.path.join(d, "nope.csv"), SCHEMA)


class ComposeMathTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.table = compose.from_dict({
        "blue_triangle": {"shape": "triangle", "colour": "blue"},
        "red_circle": {"shape": "circle", "colour": "red"},
        "anything_small": {"size": "small"},
    }, SCHEMA)
    self.probs = {
        "shape": np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]),
        "colour": np.array([[0.8, 0.2], [0.5, 0.5]]),
        "size": np.array([[0.9, 0.1], [0.25, 0.75]]),
    }

  def _expected(self):
    p = self.probs
    scores = np.stack([
        np.log(p["shape"][:, 2]) + np.log(p["colour"][:, 0]),
        np.log(p["shape"][:, 0]) + np.log(p["colour"][:, 1]),
        np.log(p["size"][:, 1]),
    ], axis=1)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)

  def test_numpy_matches_hand_computation(self):
    got = compose.compose_probs(self.probs, self.table)
    # Row 0: scores are log .56, log .02, log .1 -> .56/.68, .02/.68, .1/.68.
    self.assertAllClose(got[0], [0.56 / 0.68, 0.02 / 0.68, 0.1 / 0.68])
    self.assertAllClose(got, self._expected())
    self.assertAllClose(got.sum(axis=1), [1.0, 1.0])
    single = compose.compose_probs({h: p[0] for h, p in self.probs.items()},
                                   self.table)
    self.assertAllClose(single, got[0])

  def test_unknown_below_threshold(self):
    p = compose.compose_probs(self.probs, self.table)
    # Row 1: .25*.5=.125, .5*.5=.25, .75 -> best anything_small at .75/1.125.
    self.assertAllClose(p[1], [0.125 / 1.125, 0.25 / 1.125, 0.75 / 1.125])
    self.assertEqual(compose.predict_classes(p, self.table, 0.5),
                     ["blue_triangle", "anything_small"])
    self.assertEqual(compose.predict_classes(p, self.table, 0.7),
                     ["blue_triangle", compose.UNKNOWN])
    # predict's per-row answer is this rule over these probabilities.
    self.assertAllClose(np.max(p[1]), 0.75 / 1.125)
    self.assertAllClose(p[0][self.table.index("red_circle")], 0.02 / 0.68)

  def test_zero_probability_is_finite(self):
    probs = {"shape": np.array([[0.0, 0.0, 1.0]]),
             "colour": np.array([[0.0, 1.0]]),
             "size": np.array([[1.0, 0.0]])}
    got = compose.compose_probs(probs, self.table)
    self.assertTrue(np.all(np.isfinite(got)))
    self.assertAllClose(got.sum(), 1.0)

  def test_layer_matches_numpy(self):
    inputs = {h: keras.Input((SCHEMA.head(h).num_classes,), name=h)
              for h in SCHEMA.names}
    out = layers.ComposeClasses.from_table(self.table)(inputs)
    m = keras.Model(inputs, out)
    got = m({h: tf.constant(p, tf.float32) for h, p in self.probs.items()})
    self.assertAllClose(got, self._expected(), atol=1e-6)
    config = layers.ComposeClasses.from_table(self.table).get_config()
    again = layers.ComposeClasses.from_config(config)
    self.assertEqual(again.classes, list(self.table.classes))
    self.assertEqual(again.values, [list(r) for r in self.table.values])

  def test_class_targets(self):
    labels = {"shape": np.array([2, 0, 0, 2]), "colour": np.array([0, 1, 1, 1]),
              "size": np.array([0, 1, 0, 0])}
    mask = {"shape": np.array([1, 1, 1, 0], bool),
            "colour": np.ones(4, bool), "size": np.ones(4, bool)}
    target, usable = compose.classes_of(labels, mask, self.table)
    # Row 1 matches red_circle and anything_small: the more specific wins.
    self.assertAllEqual(target, [0, 1, 1, -1])
    self.assertAllEqual(usable, [True, True, True, False])


class ModelOutputTest(tf.test.TestCase):

  def test_model_with_class_output_saves_and_loads(self):
    schema = demo.SCHEMA
    model = model_lib.build_model(schema, 32, "MobileNetV2", None)
    table = compose.from_dict(compose.demo_classes(), schema)
    composed = outputs.with_class_output(model, table)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    out = composed(images, training=False)
    self.assertEqual(set(out), {*schema.names, "class"})
    self.assertEqual(out["class"].shape, (2, len(table)))
    expected = compose.compose_probs(
        {h: np.asarray(out[h]) for h in schema.names}, table)
    self.assertAllClose(out["class"], expected, atol=1e-5)
    path = os.path.join(self.get_temp_dir(), "m.keras")
    composed.save(path)
    loaded = saving.load_model(path)
    self.assertAllClose(loaded(images, training=False)["class"], out["class"],
                        atol=1e-6)

  def test_missing_head(self):
    schema = heads_lib.LabelSchema((SCHEMA.head("shape"), SCHEMA.head("size")))
    model = model_lib.build_model(schema, 32, "MobileNetV2", None)
    table = compose.from_dict({"a": {"colour": "red"}}, SCHEMA, "t.csv")
    with self.assertRaisesRegex(compose.ClassTableError, "t.csv.*'colour'"):
      outputs.with_class_output(model, table)

  def test_demo_table(self):
    path = compose.write_demo_table(self.get_temp_dir())
    table = compose.load(path, demo.SCHEMA)
    self.assertLen(table, 36)
    held_out = table.values[table.index("large_outline_blue_triangle")]
    self.assertEqual(
        held_out, tuple(demo.SCHEMA.head(h).index(demo.HELD_OUT[h])
                        for h in table.heads))


class HeldOutCombinationTest(tf.test.TestCase):
  """Large outlined blue triangles are never in training; the heads learn
  each of those values from other combinations and the table composes them.
  Plain training, no augmentation that could fake the held-out pixels."""

  def test_recognises_unseen_combination(self):
    from mlc_keras.modeling import losses  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import metrics  # pylint: disable=g-import-not-at-top
    from mlc_keras.data import manifest  # pylint: disable=g-import-not-at-top
    from mlc_keras.data import pipeline  # pylint: disable=g-import-not-at-top
    from mlc_keras.data import sources  # pylint: disable=g-import-not-at-top
    root = self.get_temp_dir()
    schema = demo.SCHEMA
    paths = demo.generate(os.path.join(root, "demo"), E2E_TRAIN_SIZE, 100)
    keras.utils.set_random_seed(0)
    records, _ = manifest.read_manifest(paths["train"], schema)
    # No training row is labelled with the held-out combination.
    cols = [schema.names.index(h) for h in demo.HELD_OUT]
    held_values = [schema.head(h).index(v) for h, v in demo.HELD_OUT.items()]
    self.assertFalse(np.all(records.labels[:, cols] == held_values, axis=1).any())
    train_ds = pipeline.train_dataset(
        sources.records_source(records), schema, image_size=E2E_SIZE,
        batch_size=32, seed=0, end_epoch=1, steps_per_epoch=E2E_STEPS,
        cache=True)
    model = model_lib.small_cnn(schema, E2E_SIZE)
    model.compile(keras.optimizers.Adam(3e-3), loss=losses.head_losses(schema))
    model.fit(train_ds, epochs=1, steps_per_epoch=E2E_STEPS, verbose=0)

    table = compose.load(compose.write_demo_table(root), schema)
    held, _ = manifest.read_manifest(paths["heldout"], schema)
    held_ds = pipeline.eval_dataset(sources.records_source(held), schema,
                                image_size=E2E_SIZE, batch_size=50)
    collected = metrics.collect(model, held_ds, schema)
    probs = compose.compose_probs({h: collected[h][0] for h in table.heads},
                                  table)
    target = table.index("large_outline_blue_triangle")
    accuracy = np.mean(probs.argmax(axis=1) == target)
    chance = 1.0 / len(table)
    print(f"held-out combination accuracy {accuracy:.3f} (chance {chance:.3f})")
    # Measured 0.92 on 100 images (seed 0); 0.3 is over 10x chance.
    self.assertGreater(accuracy, 0.3)
    # The model's own "class" output gives the same probabilities.
    composed = outputs.with_class_output(model, table)
    images = next(iter(held_ds))[0]
    self.assertAllClose(composed(images, training=False)["class"],
                        probs[:len(images)], atol=1e-4)


class TagCompositionTest(tf.test.TestCase):

  SCHEMA = heads_lib.LabelSchema((
      heads_lib.HeadSpec("shape", ("circle", "square")),
      heads_lib.HeadSpec("marks", ("bar", "dot"), kind=heads_lib.TAGS)))

  def test_a_cell_names_a_tag_and_adds_its_log_score(self):
    table = compose.from_dict({"barred_circle": {"shape": "circle",
                                                 "marks": "bar"},
                               "square": {"shape": "square"}}, self.SCHEMA)
    self.assertEqual(table.values, ((0, 0), (1, -1)))
    probs = compose.compose_probs(
        {"shape": np.array([[0.6, 0.4]]), "marks": np.array([[0.5, 0.9]])},
        table)
    # Scores: log 0.6 + log 0.5 = log 0.3, and log 0.4 (marks: any).
    self.assertAllClose(probs, [[0.3 / 0.7, 0.4 / 0.7]])
    # Ground truth: a row matches when it carries the tag.
    target, usable = compose.classes_of(
        {"shape": np.array([0, 0, 1]),
         "marks": np.array([[1, 0], [0, 1], [0, 0]], np.float32)},
        {"shape": np.ones(3, bool), "marks": np.array([True, True, False])},
        table)
    self.assertAllEqual(target, [0, -1, -1])
    self.assertAllEqual(usable, [True, True, False])

  def test_unknown_tag_names_the_table_row(self):
    path = os.path.join(self.get_temp_dir(), "classes.csv")
    with open(path, "w") as f:
      f.write("class,shape,marks\nbarred,circle,bar\nstarred,,star\n")
    with self.assertRaisesRegex(
        compose.ClassTableError,
        r"classes\.csv:3: column 'marks': tag 'star' is not in the "
        r"vocabulary of tag head 'marks'"):
      compose.load(path, self.SCHEMA)


if __name__ == "__main__":
  tf.test.main()
