"""Tests for head kinds as plug-ins (core/kinds) and the ordinal kind."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.core.kinds import ordinal
from mlc_keras.core.kinds import registry
from mlc_keras.core.kinds import softmax
from mlc_keras.inference import files as predict_lib
from mlc_keras.modeling import losses
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving

AGE = heads_lib.HeadSpec("age", ("child", "teen", "adult"),
                         kind=heads_lib.ORDINAL)
SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("colour", ("red", "green")), AGE))


def ordinal_layer(features: int = 4, classes: int = 3, seed: int = 0):
  keras.utils.set_random_seed(seed)
  layer = ordinal.keras_classes()["mlc_keras>CumulativeLogits"](
      classes, name="age")
  layer.build((None, features))
  return layer


class RegistryTest(tf.test.TestCase):

  def test_every_kind_is_registered_under_its_name(self):
    self.assertEqual(set(registry.KINDS), {"softmax", "tags", "ordinal"})
    for name, kind in registry.KINDS.items():
      self.assertEqual(kind.name, name)
    self.assertIs(AGE.kind_impl, registry.KINDS["ordinal"])
    self.assertIs(heads_lib.HeadSpec("a", ("x", "y")).kind_impl,
                  registry.KINDS["softmax"])

  def test_unknown_kind_names_the_head(self):
    with self.assertRaisesRegex(heads_lib.SchemaError,
                                r"head 'age': kind must be one of .*ordinal"):
      heads_lib.HeadSpec("age", ("child", "adult"), kind="ordnial")

  def test_register_a_third_party_kind(self):
    class Binned(softmax.SoftmaxKind):
      name = "binned"
      noun = "binned head"

    kind = Binned()
    self.addCleanup(registry.KINDS.pop, "binned", None)
    self.assertIs(registry.register(kind), kind)
    head = heads_lib.HeadSpec("size", ("s", "m"), kind="binned")
    self.assertIs(head.kind_impl, kind)
    self.assertEqual(head.parse("m"), 1)
    with self.assertRaisesRegex(heads_lib.SchemaError, "registered already"):
      registry.register(Binned())
    with self.assertRaises(TypeError):
      registry.register(object())


class OrdinalSchemaTest(tf.test.TestCase):

  def test_parse_and_cells_use_the_declared_order(self):
    self.assertEqual([AGE.parse(c) for c in ("child", "teen", "adult")],
                     [0, 1, 2])
    self.assertEqual(AGE.width, 1)
    self.assertEqual(AGE.kind_impl.cell(AGE, [2]), "adult")
    with self.assertRaisesRegex(heads_lib.SchemaError,
                                r"'elder' is not a class of head 'age'"):
      AGE.parse("elder")

  def test_heads_file_keeps_the_order_and_round_trips(self):
    path = os.path.join(self.get_temp_dir(), "heads.json")
    with open(path, "w") as f:
      json.dump({"heads": [{"name": "quality", "kind": "ordinal",
                            "classes": ["low", "mid", "high"]}]}, f)
    schema = heads_lib.LabelSchema.load(path)
    # Never sorted: "high" < "low" < "mid" as text.
    self.assertEqual(schema.head("quality").classes, ("low", "mid", "high"))
    folder = self.get_temp_dir()
    schema.save(folder)
    self.assertEqual(heads_lib.LabelSchema.load(folder), schema)
    self.assertEqual(schema.tag_thresholds(), {})

  def test_bad_ordinal_heads_name_the_head(self):
    cases = {
        "one class": ({"name": "q", "kind": "ordinal", "classes": ["low"]},
                      r"ordinal head 'q' needs at least 2"),
        "thresholds": ({"name": "q", "kind": "ordinal",
                        "classes": ["low", "high"], "thresholds": [0.5, 0.5]},
                       r"head 'q': only a tag head has thresholds"),
        "unknown kind": ({"name": "q", "kind": "ranked",
                          "classes": ["low", "high"]},
                         r"head 'q': kind must be one of"),
    }
    for what, (head, message) in cases.items():
      with self.subTest(what), self.assertRaisesRegex(
          heads_lib.SchemaError, r"heads.json: " + message):
        heads_lib.LabelSchema.from_dict({"heads": [head]}, source="heads.json")

  def test_predict_json_names_the_class(self):
    row = np.array([0.1, 0.7, 0.2], np.float32)
    got = predict_lib.describe({"age": row[None]}, 0, SCHEMA.select(["age"]))
    self.assertEqual(got["age"]["class"], "teen")
    self.assertAlmostEqual(got["age"]["score"], 0.7, places=6)
    self.assertEqual(list(got["age"]["scores"]), ["child", "teen", "adult"])


class CumulativeLogitsTest(tf.test.TestCase):

  def test_probabilities_sum_to_one_and_match_the_model(self):
    layer = ordinal_layer(features=4, classes=4)
    x = np.random.RandomState(0).normal(0, 3, (16, 4)).astype(np.float32)
    p = np.asarray(layer(x))
    self.assertEqual(p.shape, (16, 4))
    self.assertAllClose(p.sum(axis=1), np.ones(16), atol=1e-6)
    self.assertTrue((p >= 0).all())
    # P(y <= k) = sigmoid(t_k - f), f = w.x.
    f = x @ np.asarray(layer.kernel)
    t = np.asarray(layer.thresholds())
    cdf = 1 / (1 + np.exp(-(t[None, :] - f)))
    self.assertAllClose(np.cumsum(p, axis=1)[:, :-1], cdf, atol=1e-5)

  def test_a_higher_score_moves_probability_up_the_order(self):
    layer = ordinal_layer(features=1, classes=5)
    layer.kernel.assign(np.ones((1, 1), np.float32))
    scores = np.linspace(-6, 6, 25, dtype=np.float32)[:, None]
    cdf = np.cumsum(np.asarray(layer(scores)), axis=1)[:, :-1]
    # Every cumulative probability falls as the score rises.
    self.assertTrue((np.diff(cdf, axis=0) <= 1e-7).all())
    self.assertTrue((np.diff(cdf, axis=1) >= -1e-7).all())
    expected = np.asarray(layer(scores)).argmax(axis=1)
    self.assertEqual(expected[0], 0)
    self.assertEqual(expected[-1], 4)
    self.assertTrue((np.diff(expected) >= 0).all())

  def test_thresholds_stay_ordered_whatever_the_weights(self):
    layer = ordinal_layer(features=2, classes=5)
    for gaps in ([-10.0, 3.0, -2.0], [5.0, -8.0, 0.0], [-3.0, -3.0, -3.0]):
      layer.gaps.assign(np.asarray(gaps, np.float32))
      layer.first.assign(np.asarray([-1.5], np.float32))
      t = np.asarray(layer.thresholds())
      self.assertLen(t, 4)
      self.assertTrue((np.diff(t) > 0).all(), t)
    two = ordinal_layer(features=2, classes=2)
    self.assertIsNone(two.gaps)
    self.assertLen(np.asarray(two.thresholds()), 1)

  def test_model_saves_and_loads_with_the_layer(self):
    keras.utils.set_random_seed(1)
    model = model_lib.small_cnn(SCHEMA, 32)
    self.assertEqual(type(model.get_layer("age")).__name__, "CumulativeLogits")
    images = np.random.RandomState(0).randint(0, 255, (3, 32, 32, 3), np.uint8)
    path = os.path.join(self.get_temp_dir(), "m.keras")
    model.save(path)
    loaded = saving.load_model(path)
    self.assertAllClose(loaded(images)["age"], model(images)["age"],
                        atol=1e-6)


class OrdinalLossAndMetricTest(tf.test.TestCase):

  def test_masked_rows_add_nothing_to_loss_or_gradient(self):
    labels = tf.constant([[2], [-1], [0], [-1]], tf.int64)
    y, w = AGE.kind_impl.targets(AGE, labels)
    self.assertAllEqual(y, [2, 0, 0, 0])
    self.assertAllEqual(w, [1, 0, 1, 0])
    layer = ordinal_layer(features=3, classes=3)
    x = tf.constant(np.random.RandomState(2).normal(size=(4, 3)), tf.float32)
    loss = losses.head_loss(AGE)
    with tf.GradientTape() as tape:
      full = loss(y, layer(x), sample_weight=w)
    kept = loss(tf.gather(y, [0, 2]), layer(tf.gather(x, [0, 2])))
    self.assertAllClose(full, kept, atol=1e-6)
    # A batch with no labelled row: exactly zero loss and gradient.
    with tf.GradientTape() as tape:
      none = loss(y, layer(x), sample_weight=tf.zeros(4))
    grads = tape.gradient(none, layer.trainable_weights)
    self.assertEqual(float(none), 0.0)
    for g in grads:
      self.assertAllEqual(g, tf.zeros_like(g))

  def test_rank_error_is_weighted_and_logged(self):
    ms = metrics.weighted_metrics(SCHEMA, top_k=5)["age"]
    self.assertEqual([m.name for m in ms], ["acc", "mae"])
    mae = ms[-1]
    probs = tf.constant([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    mae.update_state(tf.constant([2, 2, 0]), probs,
                     sample_weight=tf.constant([1.0, 1.0, 0.0]))
    # |0 - 2| and |2 - 2|; the third row is masked.
    self.assertAllClose(mae.result(), 1.0)
    self.assertIn("age_mae", AGE.kind_impl.log_names(AGE, 5))
    self.assertEqual(len(metrics.selection_metrics(SCHEMA)["age"]), 1)

  def test_report_has_the_confusion_matrix_and_rank_error(self):
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    row = AGE.kind_impl.report(AGE, probs, np.array([2, 2, 1]),
                               np.array([True, True, False]), 5)
    self.assertEqual(row["kind"], "ordinal")
    self.assertAlmostEqual(row["mae"], 1.0)
    self.assertEqual(row["confusion"], [[0, 0, 0], [0, 0, 0], [1, 0, 1]])


if __name__ == "__main__":
  tf.test.main()
