"""Tests of the evaluation numbers on constructed predictions, and of the
evaluate() artefacts on a tiny untrained model."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.evaluation import calibrate
from mlc_keras.labeling import compose
from mlc_keras.core import config as config_lib
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.evaluation import report as evaluate_lib
from mlc_keras.evaluation import composed as composed_lib
from mlc_keras.evaluation import markdown as evaluation_md
from mlc_keras.evaluation import plots as plots_lib
from mlc_keras.evaluation import scoring
from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.runs import folder as run_dir
from tests import testutil

SHAPE = heads_lib.HeadSpec("shape", ("circle", "square", "triangle"))


class NumbersTest(tf.test.TestCase):

  def test_confusion_precision_recall_f1(self):
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    cm = scoring.confusion_matrix(y, pred, 3)
    self.assertAllEqual(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    precision, recall, f1 = scoring.precision_recall_f1(cm)
    self.assertAllClose(precision, [0.5, 2 / 3, 0.0])
    self.assertAllClose(recall, [0.5, 1.0, 0.0])
    self.assertAllClose(f1, [0.5, 0.8, 0.0])
    self.assertAllClose(scoring.macro_f1(cm), 1.3 / 3)

  def test_macro_f1_skips_absent_classes(self):
    cm = scoring.confusion_matrix([0, 1], [0, 1], 3)
    self.assertEqual(scoring.macro_f1(cm), 1.0)

  def test_ece_perfectly_calibrated_is_zero(self):
    # Confidence 0.8 with 8 of 10 right, confidence 0.6 with 3 of 5 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    self.assertAllClose(scoring.expected_calibration_error(probs, labels),
                        0.0, atol=1e-12)

  def test_ece_overconfident(self):
    probs = np.array([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 4)
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    # Bin (0.867, 0.933]: conf .9, acc .5; bin (0.667, 0.733]: conf .7, acc 1.
    self.assertAllClose(scoring.expected_calibration_error(probs, labels),
                        0.5 * 0.4 + 0.5 * 0.3)

  def test_head_report(self):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5],
                      [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([0, 1, 1, 0, 2])
    mask = np.array([True, True, True, True, False])
    r = evaluate_lib.head_report(SHAPE, probs, labels, mask, top_k=2)
    self.assertEqual(r["labelled"], 4)
    self.assertEqual(r["total"], 5)
    self.assertEqual(r["confusion"], [[2, 0, 0], [0, 1, 1], [0, 0, 0]])
    self.assertAllClose(r["accuracy"], 0.75)
    self.assertAllClose(r["top2"], 1.0)
    # F1: circle 1, square 2/3, triangle 0 (predicted once, never true).
    self.assertAllClose(r["macro_f1"], (1 + 2 / 3 + 0) / 3)
    self.assertAllClose(r["per_class"]["square"]["recall"], 0.5)
    self.assertAllClose(r["per_class"]["triangle"]["precision"], 0.0)
    self.assertAllClose(
        r["nll"], -np.mean(np.log([0.7, 0.6, 0.3, 0.5])))

  def test_no_labelled_samples(self):
    r = evaluate_lib.head_report(SHAPE, np.full((3, 3), 1 / 3),
                                 np.zeros(3, int), np.zeros(3, bool))
    self.assertEqual(r["note"], scoring.NO_LABELS)
    self.assertNotIn("accuracy", r)
    text = json.dumps(r)
    self.assertNotIn("NaN", text)
    md = evaluation_md.markdown({"model": "m", "data": "d", "samples": 3,
                                 "heads": [r]})
    self.assertIn("no labelled samples", md)
    self.assertNotIn("nan", md.lower())

  def test_composed_report(self):
    schema = heads_lib.LabelSchema(
        (SHAPE, heads_lib.HeadSpec("colour", ("blue", "red"))))
    table = compose.from_dict({"blue_triangle": {"shape": "triangle",
                                                 "colour": "blue"},
                               "red_circle": {"shape": "circle",
                                              "colour": "red"}}, schema)
    collected = {
        "shape": (np.array([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8],
                            [0.4, 0.2, 0.4], [0.1, 0.8, 0.1]]),
                  np.array([2, 0, 2, 0, 1]), np.array([1, 1, 1, 1, 1], bool)),
        "colour": (np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.5, 0.5],
                             [0.5, 0.5]]),
                   np.array([0, 1, 0, 0, 0]), np.array([1, 1, 1, 0, 1], bool)),
    }
    r = composed_lib.composed_report(collected, table, threshold=0.5)
    # Row 3 lacks a colour label; row 4 (square) matches no class.
    self.assertEqual(r["heads_labelled"], 4)
    self.assertEqual(r["no_matching_class"], 1)
    self.assertEqual(r["evaluated"], 3)
    # Row 2: .8*.1 = .08 vs .1*.9 = .09 -> red_circle, wrong.
    self.assertAllClose(r["accuracy"], 2 / 3)
    self.assertEqual(r["confusion"], [[1, 1], [0, 1]])
    self.assertAllClose(r["per_class"]["blue_triangle"]["recall"], 0.5)
    self.assertAllClose(r["chance"], 0.5)
    # Row 2's best is .09/.17 = .53: kept at threshold .5, unknown at .6.
    r6 = composed_lib.composed_report(collected, table, threshold=0.6)
    self.assertAllClose(r6["unknown_rate"], 1 / 3)
    self.assertAllClose(r6["accuracy_with_unknown"], 2 / 3)


class ReadHistoryTest(tf.test.TestCase):

  def test_columns_and_a_damaged_row_named_by_line(self):
    path = os.path.join(self.get_temp_dir(), "history.csv")
    with open(path, "w", encoding="utf-8") as f:
      f.write("epoch,loss,val_loss\n0,1.5,2.0\n1,1.0,\n\n")
    got = plots_lib.read_history(path)
    self.assertEqual(got["epoch"], [0.0, 1.0])
    self.assertEqual(got["loss"], [1.5, 1.0])
    self.assertTrue(np.isnan(got["val_loss"][1]))
    # Two trainings appending to one file: a row of 6 fields on line 3.
    with open(path, "w", encoding="utf-8") as f:
      f.write("epoch,loss,val_loss\n0,1.5,2.0\n1,1.0,1.1,0,1.4,2.1\n")
    with self.assertRaisesRegex(ValueError, r"history\.csv line 3: 6 fields "
                                r"where the header has 3"):
      plots_lib.read_history(path)


class FieldMetricsInReportTest(tf.test.TestCase):
  """evaluate's report carries scoring's numbers: mA per head and across
  heads, and seen / unseen S, U, H against the run's training manifest."""

  def _collected(self):
    return {
        "shape": (np.array([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8],
                            [0.4, 0.2, 0.4], [0.1, 0.8, 0.1]]),
                  np.array([2, 0, 2, 0, 1]), np.array([1, 1, 1, 1, 1], bool)),
        "colour": (np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.5, 0.5],
                             [0.5, 0.5]]),
                   np.array([0, 1, 0, 0, 0]), np.array([1, 1, 1, 0, 1], bool)),
    }

  def test_seen_unseen_from_the_training_manifest(self):
    root = self.get_temp_dir()
    schema = testutil.SCHEMA
    # The triangle's colour is missing: blue_triangle is never seen whole.
    train = testutil.write_manifest(root, [
        {"image": "t0.png", "shape": "triangle", "colour": ""},
        {"image": "t1.png", "shape": "square", "colour": "blue"},
        {"image": "t2.png", "shape": "circle", "colour": "red"}])
    with open(os.path.join(root, "config.json"), "w") as f:
      f.write(config_lib.Config(data=config_lib.DataConfig(
          manifest=train, val_manifest=train)).to_json())
    training = composed_lib.training_labels(root, schema, "image")
    self.assertEqual(training[1], train)
    self.assertEqual(training[0]["colour"].tolist(), [-1, 0, 1])
    table = compose.from_dict({"blue_triangle": {"shape": "triangle",
                                                 "colour": "blue"},
                               "red_circle": {"shape": "circle",
                                              "colour": "red"}}, schema)
    report = evaluate_lib.report_from_collected(
        self._collected(), schema, top_k=2, table=table, training=training)
    su = report["composed"]["seen_unseen"]
    # Rows 0-2: blue_triangle right, red_circle right, blue_triangle wrong.
    self.assertEqual(su["seen_classes"], ["red_circle"])
    self.assertAllClose([su["seen"], su["unseen"], su["harmonic"]],
                        [1.0, 0.5, 2 / 3])
    self.assertAllClose(su["mean_per_class"], 0.75)
    # shape: every row right (row 3's tie goes to circle, its label).
    by_head = {r["head"]: r for r in report["heads"]}
    self.assertAllClose(by_head["shape"]["balanced_accuracy"], 1.0)
    # colour (blue/red): labels 0 1 0 0 on rows 0 1 2 4 (row 3 masked),
    # predicted 0 1 1 0: blue 2/3, red 1/1.
    self.assertAllClose(by_head["colour"]["balanced_accuracy"], (2 / 3 + 1) / 2)
    # p(red) .8 on the red row against .1, .9, .5 on the blue ones.
    self.assertAllClose(by_head["colour"]["roc_auc"], 2 / 3)
    across = report["across_heads"]
    self.assertAllClose(across["mean_balanced_accuracy"], (1 + 5 / 6) / 2)
    # Only row 2 has a wrong labelled head.
    self.assertAllClose(across["all_heads_right"], 4 / 5)
    md = evaluation_md.markdown({"model": "m", "data": "d", "samples": 5,
                                 **report})
    self.assertIn("## Across heads", md)
    self.assertIn("| 1.000 | 0.500 | 0.667 | 0.750 |", md)
    # Rows 0 and 2 are blue_triangle (unseen), row 1 red_circle (seen):
    # colour is right on rows 0 and 1, wrong on row 2.
    self.assertAllClose([su["heads"]["colour"][k] for k in
                         ("seen", "unseen", "gap")], [1.0, 0.5, 0.5])
    self.assertIn("| colour | 1.000 (1) | 0.500 (2) | 0.500 |", md)

  def test_seen_unseen_not_defined_without_a_training_manifest(self):
    root = self.get_temp_dir()
    with open(os.path.join(root, "config.json"), "w") as f:
      f.write(config_lib.Config(data=config_lib.DataConfig(
          tfrecord="train-*.tfrecord")).to_json())
    training = composed_lib.training_labels(root, testutil.SCHEMA, "image")
    self.assertIsNone(training[0])
    table = compose.from_dict({"red_circle": {"shape": "circle",
                                              "colour": "red"}},
                              testutil.SCHEMA)
    report = evaluate_lib.report_from_collected(
        self._collected(), testutil.SCHEMA, table=table, training=training)
    su = report["composed"]["seen_unseen"]
    self.assertIsNone(su["harmonic"])
    self.assertIn("TFRecord", su["not_defined"]["seen_unseen"])
    md = evaluation_md.markdown({"model": "m", "data": "d", "samples": 5,
                                 **report})
    self.assertIn("Seen / unseen: not defined (the run trained on TFRecord", md)


class EvaluateTest(tf.test.TestCase):

  def test_artefacts(self):
    root = self.get_temp_dir()
    schema = heads_lib.LabelSchema((
        testutil.SCHEMA.head("shape"), testutil.SCHEMA.head("colour"),
        heads_lib.HeadSpec("size", ("large", "small"))))
    rows = testutil.simple_rows(10)
    manifest = testutil.write_manifest(
        root, rows, columns=("image", "shape", "colour", "size"))
    # The run's image column is "filename": evaluate reads it from
    # config.json (checked to fail with the old default of "image").
    with open(manifest) as f:
      text = f.read()
    with open(manifest, "w") as f:
      f.write(text.replace("image,", " filename ,", 1))
    model_dir = os.path.join(root, "run")
    os.makedirs(model_dir)
    schema.save(model_dir)
    model = model_lib.build_model(schema, 32, "MobileNetV2", None)
    model.save(os.path.join(model_dir, "model.keras"))
    cfg = config_lib.Config(data=config_lib.DataConfig(
        val_manifest=manifest, image_column="filename"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      f.write(cfg.to_json())
    self.assertEqual(run_dir.run_image_column(model_dir), "filename")
    with self.assertRaisesRegex(run_dir.RunDirError, "config.json: no such"):
      run_dir.run_image_column(root)
    with open(os.path.join(model_dir, "history.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["epoch", "loss", "shape_acc", "val_loss", "val_shape_acc"])
      w.writerow([0, 2.0, 0.4, 2.1, 0.3])
      w.writerow([1, 1.5, 0.6, 1.7, 0.5])
    table = os.path.join(root, "classes.csv")
    with open(table, "w") as f:
      f.write("class,shape,colour\nblue_circle,circle,blue\n"
              "red_square,square,red\nany_triangle,triangle,\n")

    report = evaluate_lib.evaluate(model_dir, class_table=table,
                                   calibrate=True, batch_size=4)
    self.assertEqual(report["data"], manifest)
    by_head = {r["head"]: r for r in report["heads"]}
    self.assertEqual(by_head["shape"]["labelled"], 10)
    self.assertEqual(by_head["colour"]["labelled"], 7)
    self.assertEqual(by_head["size"]["note"], scoring.NO_LABELS)
    self.assertEqual(np.sum(by_head["colour"]["confusion"]), 7)
    # Rows with shape and colour labelled: 7; rows 0..9 with i % 3 != 2.
    self.assertEqual(report["composed"]["heads_labelled"], 7)
    for name in ("evaluation.json", "evaluation.md", "confusion_shape.png",
                 "confusion_colour.png", "curves.png", "calibrated.keras"):
      self.assertTrue(os.path.exists(os.path.join(model_dir, name)), name)
    self.assertFalse(os.path.exists(os.path.join(model_dir, "confusion_size.png")))
    with open(os.path.join(model_dir, "evaluation.json")) as f:
      text = f.read()
    self.assertNotIn("NaN", text)
    cal = report["calibration"]["heads"]
    self.assertEqual(cal["size"], {"temperature": 1.0})
    # Fitted on one seeded half, reported on the other half.
    fit = evaluate_lib.calibration_split(10)
    self.assertEqual(int(fit.sum()), 5)
    self.assertIn("seeded half: 5 rows", report["calibration"]["fitted_on"])
    records, _ = manifest_lib.read_manifest(manifest, schema, "filename")
    collected = metrics.collect(model, pipeline.eval_dataset(
        sources.records_source(records), schema, image_size=32, batch_size=4),
        schema)
    probs, y, m = collected["shape"]
    self.assertAllClose(cal["shape"]["temperature"],
                        calibrate.fit_temperature(probs[fit & m], y[fit & m]))
    shown = ~fit & m
    self.assertAllClose(cal["shape"]["ece_before"],
                        scoring.expected_calibration_error(probs[shown], y[shown]))
    calibrated = saving.load_model(report["calibration"]["model"])
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    before = model(images, training=False)
    after = calibrated(images, training=False)
    self.assertEqual(set(after), {"shape", "colour", "size", "class"})
    for h in schema.names:
      self.assertAllEqual(np.argmax(before[h], 1), np.argmax(after[h], 1))

  def test_every_image_is_checked_before_any_is_decoded(self):
    root = self.get_temp_dir()
    rows = testutil.simple_rows(4)
    manifest = testutil.write_manifest(root, rows, name="val.csv")
    model_dir = os.path.join(root, "checked_run")
    os.makedirs(model_dir)
    testutil.SCHEMA.save(model_dir)
    model_lib.small_cnn(testutil.SCHEMA, 32).save(
        os.path.join(model_dir, "model.keras"))
    # The run's own cap: its 32x32 images pass, a 40x30 one does not.
    cfg = config_lib.Config(data=config_lib.DataConfig(
        val_manifest=manifest, max_image_pixels=1100))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      f.write(cfg.to_json())
    paths = [os.path.join(root, r["image"]) for r in rows]
    os.remove(paths[1])
    with self.assertRaisesRegex(
        manifest_lib.DataError,
        f"^1 image file\\(s\\) not found:\n  {manifest}:3: {paths[1]}$"):
      evaluate_lib.evaluate(model_dir, plots=False)
    testutil.write_image(paths[1])
    jpeg = open(paths[0], "rb").read()
    with open(paths[0], "wb") as f:
      f.write(jpeg[:len(jpeg) - 40])  # cut short
    with open(paths[2], "wb") as f:
      f.write(tf.io.encode_jpeg(np.zeros((30, 40, 3), np.uint8)).numpy())
    with self.assertRaisesRegex(
        manifest_lib.DataError,
        f"^2 image\\(s\\) could not be decoded:\n"
        f"  {manifest}:2: {paths[0]} \\(cannot decode: cut short \\(no "
        f"JPEG end-of-image marker\\)\\)\n"
        f"  {manifest}:4: {paths[2]} \\(40x30 = 1,200 pixels is over the "
        f"limit of 1,100 \\(max_image_pixels\\)\\)$"):
      evaluate_lib.evaluate(model_dir, plots=False)
    self.assertFalse(os.path.exists(os.path.join(model_dir,
                                                 "evaluation.json")))
    # labels.json must fit the model: a class added after it was saved.
    heads_lib.LabelSchema((
        testutil.SCHEMA.head("shape"),
        heads_lib.HeadSpec("colour", ("blue", "green", "red")))).save(
            model_dir)
    with self.assertRaisesRegex(artefacts.ExportError,
                                "head 'colour' has 3 classes in labels.json "
                                "but the model outputs 2 columns"):
      evaluate_lib.evaluate(model_dir, plots=False)

  def test_a_val_fraction_run_is_evaluated_on_the_rows_it_held_out(self):
    root = self.get_temp_dir()
    rows = testutil.simple_rows(8)
    manifest = testutil.write_manifest(root, rows)
    model_dir = os.path.join(root, "split_run")
    os.makedirs(model_dir)
    testutil.SCHEMA.save(model_dir)
    model_lib.small_cnn(testutil.SCHEMA, 32).save(
        os.path.join(model_dir, "model.keras"))
    cfg = config_lib.Config(
        data=config_lib.DataConfig(manifest=manifest, val_fraction=0.5),
        train=config_lib.TrainConfig(seed=3))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      f.write(cfg.to_json())
    path = evaluate_lib.default_manifest(model_dir)  # was "give manifest"
    self.assertEqual(path, os.path.join(model_dir,
                                        evaluate_lib.VALIDATION_SPLIT_FILE))
    records, _ = manifest_lib.read_manifest(manifest, testutil.SCHEMA)
    _, held_out = sources.split_records(records, 0.5, seed=3)
    self.assertNotEmpty(held_out.paths)
    written, _ = manifest_lib.read_manifest(path, testutil.SCHEMA)
    self.assertEqual(written.paths, held_out.paths)
    self.assertAllEqual(written.labels, held_out.labels)
    report = evaluate_lib.evaluate(model_dir, plots=False)
    self.assertEqual((report["data"], report["samples"]),
                     (path, len(held_out.paths)))

  def test_default_manifest_errors(self):
    model_dir = self.get_temp_dir()
    cfg = config_lib.Config(data=config_lib.DataConfig(manifest="x.csv"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      f.write(cfg.to_json())
    with self.assertRaisesRegex(ValueError, "give manifest"):
      evaluate_lib.default_manifest(model_dir)

  def test_relative_val_manifest_of_an_older_config_is_named(self):
    model_dir = self.get_temp_dir()
    cfg = config_lib.Config(data=config_lib.DataConfig(
        manifest="data/train.csv", val_manifest="data/val.csv"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      f.write(cfg.to_json())
    cwd = os.getcwd()
    self.addCleanup(os.chdir, cwd)
    os.chdir(model_dir)
    with self.assertRaisesRegex(ValueError, "'data/val.csv', relative to the "
                                "folder training ran in and not found from"):
      evaluate_lib.default_manifest(model_dir)
    os.makedirs("data")
    open("data/val.csv", "w").close()
    # From the folder training ran in, it works as it did.
    self.assertEqual(evaluate_lib.default_manifest(model_dir), "data/val.csv")


class ReportsAgreeTest(tf.test.TestCase):
  """results.json (metrics.head_table) and evaluation.json
  (evaluate_lib.head_report) on the same head give the same top-k key and
  value and the same majority baseline."""

  def test_same_head_same_top_k_and_majority(self):
    rng = np.random.default_rng(0)
    for n_classes, top_k in ((4, 5), (5, 5), (6, 5), (3, 2), (2, 2)):
      spec = heads_lib.HeadSpec("h", tuple(f"c{i}" for i in range(n_classes)))
      schema = heads_lib.LabelSchema((spec,))
      probs = rng.dirichlet(np.ones(n_classes), size=40)
      labels = rng.integers(0, n_classes, size=40)
      mask = rng.random(40) < 0.8
      results = metrics.head_table({"h": (probs, labels, mask)}, schema,
                                   top_k=top_k)[0]
      evaluation = evaluate_lib.head_report(spec, probs, labels, mask,
                                            top_k=top_k)
      top_r = {k: v for k, v in results.items() if k.startswith("top")}
      top_e = {k: v for k, v in evaluation.items() if k.startswith("top")}
      self.assertEqual(list(top_r), list(top_e), (n_classes, top_k))
      for k in top_r:
        self.assertAllClose(top_r[k], top_e[k])
      keras_names = [m.name for m in
                     metrics.weighted_metrics(schema, top_k)["h"]][1:]
      self.assertEqual(keras_names, list(top_r))
      self.assertAllClose(results["majority"], evaluation["majority"])
      self.assertEqual(n_classes > top_k, bool(top_r))


if __name__ == "__main__":
  tf.test.main()
