"""suggest_lib: uncertainty ranking of blank cells, pseudo-labels and their
marks; the mlc-suggest console script end to end on the export fixture."""

from __future__ import annotations

import configparser
import csv
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.labeling import suggest as suggest_lib
from mlc_keras.data import manifest as manifest_lib

H = heads_lib.HeadSpec
SCHEMA = heads_lib.LabelSchema((H("colour", ("red", "green", "blue")),
                                H("tone", ("dark", "light"))))
M = heads_lib.MISSING
# Hand-built: margins colour 0.9, 0.15, 0.99 and tone 0.8, 0.02, 1.0.
PROBS = {"colour": np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05],
                             [0.34, 0.33, 0.33]]),
         "tone": np.array([[0.6, 0.4], [0.99, 0.01], [0.5, 0.5]])}
# Row 2's colour is labelled: the most uncertain cell of all, never suggested.
LABELS = np.array([[M, M], [M, M], [2, M]], np.int32)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UncertaintyTest(tf.test.TestCase):

  def test_margin_and_entropy_by_hand(self):
    self.assertAllClose(suggest_lib.uncertainty(PROBS["colour"]),
                        [0.9, 0.15, 0.99])
    ent = suggest_lib.uncertainty(np.array([[0.5, 0.5], [1.0, 0.0],
                                            [0.9, 0.1]]), "entropy")
    h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    self.assertAllClose(ent, [1.0, 0.0, h])
    with self.assertRaisesRegex(ValueError, "rule"):
      suggest_lib.uncertainty(PROBS["tone"], "random")

  def test_ranks_hand_built_case_and_skips_labelled(self):
    cells = suggest_lib.rank_cells(PROBS, LABELS, SCHEMA, budget=3)
    self.assertEqual([(c.row, c.head) for c in cells],
                     [(2, "tone"), (0, "colour"), (0, "tone")])
    self.assertAllClose([c.score for c in cells], [1.0, 0.9, 0.8])
    every = suggest_lib.rank_cells(PROBS, LABELS, SCHEMA, budget=100)
    self.assertLen(every, 5)  # the 5 blank cells, no more
    self.assertNotIn((2, "colour"), [(c.row, c.head) for c in every])
    only_tone = suggest_lib.rank_cells(PROBS, LABELS, SCHEMA, 10,
                                       heads=["tone"])
    self.assertEqual([c.row for c in only_tone], [2, 0, 1])

  def test_pseudo_labels_fill_only_confident_blank_cells(self):
    filled = suggest_lib.pseudo_labels(PROBS, LABELS, SCHEMA, 0.9)
    self.assertEqual([(r, h, k) for r, h, k, _ in filled],
                     [(1, "colour", 0), (1, "tone", 0)])

  def test_pseudo_label_accuracy_on_labelled_cells(self):
    probs = np.array([[0.95, 0.05], [0.96, 0.04], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 1, 0, M])  # the blank one is not counted
    report = suggest_lib.pseudo_label_accuracy(probs, labels, 0.9)
    self.assertEqual(report["labelled"], 3)
    self.assertEqual(report["pseudo_labelled"], 2)
    self.assertAllClose(report["coverage"], 2 / 3)
    self.assertAllClose(report["accuracy"], 0.5)
    self.assertIsNone(
        suggest_lib.pseudo_label_accuracy(probs, labels, 0.99)["accuracy"])


class EvaluateReportTest(tf.test.TestCase):

  def test_pseudo_label_report_uses_the_calibrated_confidence(self):
    from mlc_keras.evaluation import report as evaluate_lib  # pylint: disable=g-import-not-at-top
    from mlc_keras.evaluation import markdown as evaluation_md  # pylint: disable=g-import-not-at-top
    schema = heads_lib.LabelSchema((H("tone", ("dark", "light")),))
    collected = {"tone": (np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05]]),
                          np.array([0, 1, 0]), np.array([True, True, False]))}
    raw = evaluate_lib.pseudo_label_report(collected, schema, 0.85, {}, "m")
    self.assertEqual(raw["heads"]["tone"],
                     {"threshold": 0.85, "labelled": 2, "pseudo_labelled": 1,
                      "coverage": 0.5, "accuracy": 1.0})
    # T=2 turns 0.9 into 0.75: below the threshold, nothing would be filled.
    scaled = evaluate_lib.pseudo_label_report(collected, schema, 0.85,
                                              {"tone": 2.0}, "m")
    self.assertEqual(scaled["heads"]["tone"]["pseudo_labelled"], 0)
    self.assertIsNone(scaled["heads"]["tone"]["accuracy"])
    self.assertIn("| tone | 2 | 0 | 0.000 | - |",
                  evaluation_md.pseudo_labels(scaled))


class FilesTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.pool = os.path.join(self.dir, "pool.csv")
    with open(self.pool, "w", encoding="utf-8") as f:
      # A blank row and a notes column: both must survive.
      f.write('image,colour,tone,notes\na.png,,,x\n\nb.png,,,\n'
              'c.png,blue,,"see, me"\n')
    self.records = manifest_lib.read_images(self.pool, "image", SCHEMA)

  def test_suggestions_are_a_manifest_with_the_cells_blank(self):
    cells = suggest_lib.rank_cells(PROBS, self.records.labels, SCHEMA, 3)
    out = os.path.join(self.dir, "ask.csv")
    cells_path = suggest_lib.write_suggestions(
        out, self.pool, self.records.lines, "image", cells, "margin")
    with open(out, encoding="utf-8") as f:
      self.assertEqual(f.read().splitlines(),
                       ["image,colour,tone,notes", 'c.png,blue,,"see, me"',
                        "a.png,,,x"])
    with open(cells_path, encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([(r["rank"], r["image"], r["head"]) for r in rows],
                     [("1", "c.png", "tone"), ("2", "a.png", "colour"),
                      ("3", "a.png", "tone")])

  def test_pseudo_labels_marked_apart_from_human_ones(self):
    filled = suggest_lib.pseudo_labels(PROBS, self.records.labels, SCHEMA, 0.9)
    out = os.path.join(self.dir, "pseudo.csv")
    suggest_lib.write_pseudo(out, self.pool, self.records.lines, "image",
                             SCHEMA, filled)
    records, _ = manifest_lib.read_manifest(out, SCHEMA, "image")
    # b.png got both heads from the model; c.png's blue is a person's.
    self.assertAllEqual(records.labels, [[M, M], [0, 0], [2, M]])
    marks = suggest_lib.read_pseudo_marks(out)
    self.assertEqual(marks, {(3, "colour"), (3, "tone")})
    human = {(line, h) for line, row in zip(records.lines, records.labels)
             for h, v in zip(SCHEMA.names, row) if v != M} - marks
    self.assertEqual(human, {(4, "colour")})


class ImageCheckTest(tf.test.TestCase):

  def test_pool_images_pass_training_check_before_any_model_call(self):
    from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
    root = self.get_temp_dir()
    model_dir = os.path.join(root, "run")
    os.makedirs(model_dir)
    model_lib.small_cnn(SCHEMA, 32).save(os.path.join(model_dir,
                                                      "model.keras"))
    SCHEMA.save(model_dir)
    good = os.path.join(root, "good.png")
    with open(good, "wb") as f:
      f.write(tf.io.encode_png(np.zeros((32, 32, 3), np.uint8)).numpy())
    big = os.path.join(root, "big.png")  # over the default cap by its header
    png = bytearray(tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy())
    png[16:24] = (10000).to_bytes(4, "big") * 2
    with open(big, "wb") as f:
      f.write(bytes(png))
    pool = os.path.join(root, "pool.csv")
    with open(pool, "w") as f:
      f.write(f"image,colour,tone\n{good},,\n{big},,\nmissing.png,,\n")
    with self.assertRaisesRegex(
        manifest_lib.DataError,
        f"^1 image file\\(s\\) not found:\n  {pool}:4: \\S*missing.png$"):
      suggest_lib.suggest(model_dir, pool, 1, os.path.join(root, "ask.csv"))
    with open(pool, "w") as f:
      f.write(f"image,colour,tone\n{good},,\n{big},,\n")
    with self.assertRaisesRegex(
        manifest_lib.DataError,
        f"^1 image\\(s\\) could not be decoded:\n  {pool}:3: {big} "
        "\\(10000x10000 = 100,000,000 pixels is over the limit of "
        "89,478,485 \\(max_image_pixels\\)\\)$"):
      suggest_lib.suggest(model_dir, pool, 1, os.path.join(root, "ask.csv"))
    self.assertFalse(os.path.exists(os.path.join(root, "ask.csv")))


class ConsoleScriptTest(tf.test.TestCase):

  def test_every_verb_has_a_script_with_a_run_function(self):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    scripts = dict(
        line.split(" = ") for line in
        cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    verbs = ("train", "evaluate", "export", "predict", "tfrecord", "suggest")
    self.assertEqual(scripts, {f"mlc-{v}": f"mlc_keras.{v}:run" for v in verbs})
    for v in verbs:  # read, not imported: the CLIs' flags share names
      with open(os.path.join(ROOT, "mlc_keras", f"{v}.py")) as f:
        self.assertIn("\ndef run():\n", f.read(), v)

  def test_mlc_suggest_entry_point_end_to_end(self):
    from tests import export_fixture  # pylint: disable=g-import-not-at-top
    source = export_fixture.plain()
    images, truth = export_fixture.make_images(6, seed=21)
    paths = export_fixture.write_images(os.path.join(self.get_temp_dir(), "p"),
                                        images)
    pool = os.path.join(self.get_temp_dir(), "pool.csv")
    with open(pool, "w") as f:
      f.write("image,colour,tone\n")
      for i, p in enumerate(paths):
        colour = SCHEMA.head("colour").classes[truth["colour"][i]]
        f.write(f"{p},{colour if i % 2 else ''},\n")
    out = os.path.join(self.get_temp_dir(), "ask.csv")
    code = ("import sys; from mlc_keras.suggest import run; "
            "sys.argv = ['mlc-suggest'] + sys.argv[1:]; run()")
    proc = subprocess.run(
        [sys.executable, "-c", code, f"--model_dir={source.model_dir}",
         f"--manifest={pool}", "--budget=4", f"--output={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn("9 blank cell(s)", proc.stdout)
    with open(suggest_lib.stem(out) + suggest_lib.CELLS_SUFFIX) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, 4)
    labelled = {paths[i] for i in range(1, 6, 2)}
    for r in rows:
      self.assertFalse(r["head"] == "colour" and r["image"] in labelled, r)
    scores = [float(r["score"]) for r in rows]
    self.assertEqual(scores, sorted(scores, reverse=True))


if __name__ == "__main__":
  tf.test.main()
