"""Held-out combinations (data/combinations.py): the spec, the rule for
blank labels, and the guarantee that a held-out combination never reaches
training or validation, checked on what load_data feeds."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.evaluation import composed as composed_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import combinations
from mlc_keras.data import manifest
from mlc_keras.training import setup
from tests import testutil

SCHEMA = testutil.SCHEMA  # shape: circle square triangle; colour: blue red


def _rows(pairs, prefix):
  return [{"image": f"img/{prefix}{i:02d}.png", "shape": s, "colour": c}
          for i, (s, c) in enumerate(pairs)]


# Training rows: (shape, colour); "" is a blank label.
TRAIN = [("triangle", "blue"), ("triangle", "red"), ("circle", "blue"),
         ("circle", "red"), ("square", "blue"), ("square", "red"),
         ("triangle", ""), ("", "blue"), ("", ""), ("circle", "red"),
         ("square", "blue"), ("triangle", "blue")]
VAL = [("triangle", "blue"), ("square", "red"), ("triangle", ""),
       ("circle", "red"), ("square", "blue")]


class ParseTest(tf.test.TestCase):

  def test_inline_and_file_give_the_same_combinations(self):
    inline = combinations.parse(
        "shape=triangle+colour=blue; colour=red+shape=square", SCHEMA)
    path = os.path.join(self.get_temp_dir(), "held.txt")
    with open(path, "w") as f:
      f.write("# held out of training\nshape=triangle+colour=blue\n\n"
              "colour=red+shape=square  # order of heads is free\n")
    self.assertEqual(combinations.parse(path, SCHEMA), inline)
    self.assertEqual(inline[0].values, (("shape", 2), ("colour", 0)))
    self.assertEqual([c.name(SCHEMA) for c in inline],
                     ["shape=triangle+colour=blue", "shape=square+colour=red"])
    self.assertEqual(combinations.parse(None, SCHEMA), ())

  def test_bad_entries_are_named(self):
    cases = {
        "shape=triangle+size=big": "entry 1 .*'size' is not a head",
        "shape=oval+colour=red": "entry 1 .*oval",
        "shape=circle": "at least two heads",
        "shape=circle+shape=square": "'shape' appears twice",
        "shape=circle+colour=red;shape triangle": "entry 2 .*not head=value",
        "missing/file.txt": "no such file",
    }
    for spec, message in cases.items():
      with self.assertRaisesRegex(combinations.CombinationError,
                                  "holdout_combinations.*" + message):
        combinations.parse(spec, SCHEMA)
    path = os.path.join(self.get_temp_dir(), "bad.txt")
    with open(path, "w") as f:
      f.write("shape=circle+colour=blue\nshape=circle+colour=pink\n")
    with self.assertRaisesRegex(combinations.CombinationError,
                                r"bad.txt:2: .*pink"):
      combinations.parse(path, SCHEMA)
    tags = heads_lib.LabelSchema((
        heads_lib.HeadSpec("shape", ("circle", "square")),
        heads_lib.HeadSpec("marks", ("bar", "edge"), kind=heads_lib.TAGS)))
    with self.assertRaisesRegex(combinations.CombinationError, "tag head"):
      combinations.parse("shape=circle+marks=bar", tags)

  def test_a_blank_label_may_hide_the_combination(self):
    labels = {"shape": np.array([2, 2, 2, -1, -1, 0]),
              "colour": np.array([0, 1, -1, 0, -1, 0])}
    combo = combinations.parse("shape=triangle+colour=blue", SCHEMA)
    sure, maybe = combinations.carries(labels, combo)
    self.assertEqual(sure.tolist(), [True, False, False, False, False, False])
    self.assertEqual(maybe.tolist(), [True, False, True, True, True, False])


class SplitTest(tf.test.TestCase):
  """--holdout_combinations leaves training and validation; the
  calibration combinations leave training only."""

  def _config(self, root, **kwargs):
    train = testutil.write_manifest(root, _rows(TRAIN, "t"))
    val = testutil.write_manifest(root, _rows(VAL, "v"), name="val.csv")
    return config_lib.DataConfig(
        manifest=train, val_manifest=val, validate_images=False,
        holdout_combinations="shape=triangle+colour=blue",
        calibration_combinations="shape=square+colour=red", **kwargs)

  def _fed(self, source):
    """(shape, colour) of every element the source yields."""
    return [tuple(int(v) for v in labels.numpy())
            for _, labels in source.make()]

  def test_no_held_out_combination_is_fed(self):
    root = self.get_temp_dir()
    bundle = setup.load_data(self._config(root), seed=0)
    train, val = self._fed(bundle.train), self._fed(bundle.val)
    # triangle=2 blue=0, square=1 red=1; -1 blank.
    for s, c in train:
      self.assertFalse(s in (2, -1) and c in (0, -1), (s, c))
      self.assertFalse(s in (1, -1) and c in (1, -1), (s, c))
    for s, c in val:
      self.assertFalse(s in (2, -1) and c in (0, -1), (s, c))
    # Kept, by hand: training rows 1, 2, 3, 4, 9, 10 (0 and 11 are
    # triangle+blue, 5 square+red; 6, 7, 8 have a blank that may hide
    # triangle+blue). Validation keeps square+red (the calibration pair).
    self.assertEqual(sorted(train), sorted([(2, 1), (0, 0), (0, 1), (1, 0),
                                            (0, 1), (1, 0)]))
    self.assertEqual(sorted(val), sorted([(1, 1), (0, 1), (1, 0)]))
    self.assertEqual(bundle.train_size, 6)
    self.assertEqual(bundle.holdout["removed"], {
        "train": {"labelled": 3, "blank": 3},
        "val": {"labelled": 1, "blank": 1}})
    self.assertEqual(bundle.holdout["holdout"], ["shape=triangle+colour=blue"])
    self.assertEqual(bundle.holdout["calibration"], ["shape=square+colour=red"])

  def test_the_check_names_a_leaking_row(self):
    records, _ = manifest.read_manifest(
        testutil.write_manifest(self.get_temp_dir(), _rows(TRAIN, "t")),
        SCHEMA)
    combo = combinations.parse("shape=circle+colour=red", SCHEMA)
    with self.assertRaisesRegex(AssertionError,
                                r"training data: .*train.csv:5 may carry"):
      combinations.check_absent(records, SCHEMA, combo, "training data")

  def test_an_overlap_and_a_bad_spec_are_refused(self):
    root = self.get_temp_dir()
    cfg = dataclasses.replace(self._config(root),
                              calibration_combinations="colour=blue+"
                              "shape=triangle")
    with self.assertRaisesRegex(manifest.DataError,
                                "both name shape=triangle\\+colour=blue"):
      setup.load_data(cfg, seed=0)
    cfg = dataclasses.replace(self._config(root), holdout_combinations="x=1+y=2")
    with self.assertRaisesRegex(manifest.DataError,
                                "holdout_combinations: entry 1 'x=1\\+y=2'"):
      setup.load_data(cfg, seed=0)

  def test_the_run_records_it_and_evaluate_counts_it_unseen(self):
    root = self.get_temp_dir()
    data = self._config(root)
    cfg = config_lib.Config(data=data, train=dataclasses.replace(
        config_lib.TrainConfig(), batch_size=2))
    run_dir = os.path.join(root, "run")
    os.makedirs(run_dir)
    setup.prepare_run(cfg, run_dir)
    with open(os.path.join(run_dir, combinations.HOLDOUT_FILE)) as f:
      held = json.load(f)
    self.assertEqual(held["kept"], {"train": 6, "val": 3})
    labels, source = composed_lib.training_labels(run_dir, SCHEMA, "image")
    self.assertIn("holdout.json", source)
    # The 6 rows training kept, not the manifest's 12.
    self.assertEqual(len(labels["shape"]), 6)
    self.assertNotIn(2, labels["shape"][labels["colour"] == 0].tolist())


class BalanceTest(tf.test.TestCase):
  """--balance_combinations repeats rows of rare combinations."""

  def _records(self, pairs):
    path = testutil.write_manifest(self.get_temp_dir(), _rows(pairs, "b"))
    return manifest.read_manifest(path, SCHEMA)[0]

  def test_rare_combinations_are_repeated_to_the_largest(self):
    pairs = ([("circle", "blue")] * 4 + [("circle", "red")] * 2 +
             [("square", "blue"), ("triangle", "red"), ("square", "")])
    balanced, report = combinations.balance(self._records(pairs), SCHEMA,
                                            ["shape", "colour"])
    got = {}
    for s, c in balanced.labels.tolist():
      got[(s, c)] = got.get((s, c), 0) + 1
    # Largest group 4: x1, x2, x4, x4; the blank-colour row once.
    self.assertEqual(got, {(0, 0): 4, (0, 1): 4, (1, 0): 4, (2, 1): 4,
                           (1, -1): 1})
    self.assertEqual(report, {"heads": ["shape", "colour"], "groups": 4,
                              "rows": 9, "rows_balanced": 17, "max_repeat": 4})

  def test_repeats_are_capped_and_heads_checked(self):
    pairs = [("circle", "blue")] * 40 + [("square", "red")]
    balanced, report = combinations.balance(self._records(pairs), SCHEMA,
                                            ["shape", "colour"])
    self.assertEqual(len(balanced), 40 + combinations.MAX_REPEAT)
    self.assertEqual(report["max_repeat"], combinations.MAX_REPEAT)
    with self.assertRaisesRegex(combinations.CombinationError,
                                "balance_combinations: 'size' is not"):
      combinations.balance(balanced, SCHEMA, ["shape", "size"])
    with self.assertRaisesRegex(combinations.CombinationError, "at least two"):
      combinations.balance(balanced, SCHEMA, ["shape"])

  def test_load_data_feeds_the_balanced_rows(self):
    root = self.get_temp_dir()
    train = testutil.write_manifest(root, _rows(
        [("circle", "blue")] * 3 + [("square", "red")], "l"))
    cfg = config_lib.DataConfig(manifest=train, val_manifest=train,
                                validate_images=False,
                                balance_combinations=("shape", "colour"))
    bundle = setup.load_data(cfg, seed=0)
    self.assertEqual(bundle.train_size, 6)
    self.assertEqual(sum(1 for _ in bundle.train.make()), 6)
    self.assertEqual(len(bundle.val.records), 4)  # validation untouched


def _records(labels):
  labels = np.asarray(labels, np.int32)
  return manifest.Records(tuple(f"{i}.png" for i in range(len(labels))),
                          labels, tuple(range(2, len(labels) + 2)), "t.csv")


class AutoCalibrationTest(tf.test.TestCase):
  """--calibration_combinations=auto: picked from the data, never a held-out
  combination, never a value's last training row."""

  def test_never_held_out_never_a_values_last_row(self):
    rng = np.random.default_rng(0)
    # 6 x 5 values; (a, b) with a == b is rare: one row each, plus blanks.
    rows = [(a, b) for a in range(6) for b in range(5) if a != b] * 3
    rows += [(a, a) for a in range(5)] + [(a, -1) for a in range(6)]
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("a", tuple("a%d" % i for i in range(6))),
        heads_lib.HeadSpec("b", tuple("b%d" % i for i in range(5)))))
    train, val = _records(rows), _records(rng.permutation(rows)[:60])
    held = combinations.parse("a=a0+b=b1;a=a2+b=b3", schema)
    train_kept = combinations.remove(train, schema, held)[0]
    for seed in range(20):
      chosen = combinations.auto_calibration(
          train_kept, val, schema, ["a", "b"], seed, exclude=held,
          share=0.3)
      self.assertNotEmpty(chosen)
      self.assertEmpty(set(chosen) & set(held))
      left = combinations.remove(train_kept, schema, chosen)[0]
      for k, h in enumerate(("a", "b")):
        labelled = set(left.labels[:, k][left.labels[:, k] >= 0])
        self.assertEqual(labelled, set(range(schema.head(h).num_classes)),
                         f"seed {seed}: a value of {h} left training")
      # Every chosen combination has validation images to fit on.
      _, in_val = combinations.carries(combinations.head_labels(val, schema),
                                       chosen)
      self.assertGreater(in_val.sum(), 0)
    # At most 30% of the 33 combinations labelled in training (35 less the
    # two held out); fewer where candidates lack validation rows.
    for seed in range(5):
      n = len(combinations.auto_calibration(
          train_kept, val, schema, ["a", "b"], seed, exclude=held, share=0.3))
      self.assertBetween(n, 1, 10)
    self.assertEqual(
        combinations.auto_calibration(train_kept, val, schema, ["a", "b"], 3,
                                      exclude=held),
        combinations.auto_calibration(train_kept, val, schema, ["a", "b"], 3,
                                      exclude=held))

  def test_a_value_only_in_one_combination_is_never_taken(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("a", ("x", "y")), heads_lib.HeadSpec("b", ("p", "q"))))
    # y only ever with q: (y, q) would take y's last row.
    rows = [(0, 0), (0, 1), (1, 1)] * 4
    chosen = combinations.auto_calibration(
        _records(rows), _records(rows), schema, ["a", "b"], 0, share=1.0)
    self.assertNotIn((("a", 1), ("b", 1)), [c.values for c in chosen])
    self.assertNotEmpty(chosen)

  def test_a_blank_that_may_hide_it_counts_as_removed(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("a", ("x", "y")), heads_lib.HeadSpec("b", ("p", "q"))))
    # (x, p) may be taken only if x keeps a row: x's other rows are (x, blank),
    # which taking (x, p) also removes. So x+p is never chosen.
    rows = [(0, 0), (0, -1), (1, 0), (1, 1)] * 3
    for seed in range(10):
      chosen = combinations.auto_calibration(
          _records(rows), _records(rows), schema, ["a", "b"], seed, share=1.0)
      self.assertNotIn((("a", 0), ("b", 0)), [c.values for c in chosen])
