"""Growing a trained model: --init_from copies, --train_heads freezes.

The parent is export_fixture.plain() (ResNet50V2 at 32 px, heads colour and
tone, already exported): the child adds a head and trains only it, and the
parent's heads must come out bit-identical, in Keras and through a
SavedModel export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import zipfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.inference import predictors
from mlc_keras.exporters import saved_model
from mlc_keras.modeling import grow
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.training import fit
from tests import export_fixture

H = heads_lib.HeadSpec
PARENT = heads_lib.LabelSchema((H("colour", ("red", "green", "blue")),
                                H("tone", ("dark", "light"))))


def _saved_groups(path: str) -> list[str]:
  """Top-level groups of a .keras file's weights (an "optimizer" group holds
  the optimizer's state)."""
  with zipfile.ZipFile(path) as z:
    data = z.read("model.weights.h5")
  with h5py.File(io.BytesIO(data), "r") as f:
    return sorted(k for k in f.keys() if len(f[k]))


class PlanTest(tf.test.TestCase):

  def test_statuses(self):
    child = heads_lib.LabelSchema((
        H("colour", ("red", "green", "blue")),       # same
        H("tone", ("dark", "light", "mid")),         # gained a class
        H("size", ("small", "big"))))                # new
    plans = {p.name: p for p in grow.plan_heads(PARENT, child)}
    self.assertEqual(plans["colour"].status, grow.COPIED)
    self.assertEqual(plans["tone"].status, grow.EXTENDED)
    self.assertEqual(plans["tone"].added, ("mid",))
    self.assertEqual(plans["size"].status, grow.NEW)

  def test_changed_classes_refused_without_flag(self):
    child = heads_lib.LabelSchema((H("colour", ("red", "green", "cyan")),
                                   H("tone", ("dark", "light"))))
    with self.assertRaisesRegex(grow.GrowError,
                                r"'colour' lost \['blue'\] and gained "
                                r"\['cyan'\].*reinit_heads=colour"):
      grow.plan_heads(PARENT, child)
    plans = {p.name: p for p in grow.plan_heads(PARENT, child, ["colour"])}
    self.assertEqual(plans["colour"].status, grow.CHANGED)
    self.assertEqual(plans["colour"].removed, ("blue",))
    with self.assertRaisesRegex(grow.GrowError, r"reinit_heads: \['tone'\]"):
      grow.plan_heads(PARENT, child, ["colour", "tone"])

  def test_train_heads_must_be_heads(self):
    with self.assertRaisesRegex(grow.GrowError, r"\['shade'\] are not heads"):
      grow.check_train_heads(PARENT, ["tone", "shade"])


class CopyTest(tf.test.TestCase):

  def test_copied_heads_identical_and_gained_class_keeps_rows(self):
    parent = export_fixture.plain().model
    # blue moves to the front and a class is added in the middle: columns
    # are matched by class name, not by position.
    child_schema = heads_lib.LabelSchema((
        H("colour", ("blue", "red", "violet", "green")),
        H("tone", ("dark", "light")), H("size", ("small", "big"))))
    child = model_lib.build_model(child_schema, export_fixture.SIZE)
    fresh_violet = child.get_layer("colour").get_weights()[0][:, 2].copy()
    plans = grow.copy_from(parent, PARENT, child, child_schema)
    self.assertEqual([p.status for p in plans],
                     [grow.EXTENDED, grow.COPIED, grow.NEW])
    images, _ = export_fixture.make_images(8, seed=3)
    want = parent(images, training=False)
    got = child(images, training=False)
    self.assertAllEqual(got["tone"], want["tone"])
    k_old, b_old = parent.get_layer("colour").get_weights()
    k_new, b_new = child.get_layer("colour").get_weights()
    for old_i, new_i in ((0, 1), (1, 3), (2, 0)):  # red, green, blue
      self.assertAllEqual(k_new[:, new_i], k_old[:, old_i])
      self.assertEqual(b_new[new_i], b_old[old_i])
    self.assertAllEqual(k_new[:, 2], fresh_violet)
    self.assertEqual(b_new[2], 0.0)
    # The old classes' logits are unchanged, so their probability ratios are
    # the parent's.
    ratio = lambda p, i, j: np.log(p[:, i]) - np.log(p[:, j])
    self.assertAllClose(ratio(got["colour"].numpy(), 1, 3),
                        ratio(want["colour"].numpy(), 0, 1), atol=1e-4)

  def test_other_backbone_refused(self):
    parent = export_fixture.plain().model
    child = model_lib.build_model(PARENT, export_fixture.SIZE, "MobileNetV2")
    with self.assertRaisesRegex(grow.GrowError, r"does not match.*backbone"):
      grow.copy_from(parent, PARENT, child, PARENT, origin="parent.keras")


class TrainHeadsTest(tf.test.TestCase):
  """The whole --init_from --train_heads path through fit and export."""

  def test_new_head_trains_others_bit_identical_through_export(self):
    source = export_fixture.plain()
    root = self.get_temp_dir()
    images, truth = export_fixture.make_images(16, seed=7)
    paths = export_fixture.write_images(os.path.join(root, "img"), images)
    with open(os.path.join(root, "train.csv"), "w") as f:
      f.write("image,colour,tone,bright\n")
      for p, t in zip(paths, truth["tone"]):
        f.write(f"{os.path.basename(os.path.dirname(p))}/"
                f"{os.path.basename(p)},,,{'yes' if t else 'no'}\n")
    child_schema = heads_lib.LabelSchema(
        PARENT.heads + (H("bright", ("no", "yes")),))
    child_schema.save(os.path.join(root, "heads.json"))
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data, manifest=os.path.join(root, "train.csv"),
            heads_file=os.path.join(root, "heads.json"), val_fraction=0.0,
            image_size=export_fixture.SIZE),
        train=dataclasses.replace(
            cfg.train, epochs=2, steps_per_epoch=1, learning_rate=1e-2,
            init_from=source.model_dir, train_heads=("bright",)))
    run = os.path.join(root, "child")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      results = fit.train_and_evaluate(cfg, run, verbose=2)
    self.assertEqual(
        {k: v["status"] for k, v in results["init_from"]["heads"].items()},
        {"colour": "copied", "tone": "copied", "bright": "new"})
    # verbose=2: one line per epoch holding every head's numbers.
    epoch_lines = [l for l in out.getvalue().splitlines() if " - loss:" in l]
    self.assertLen(epoch_lines, 2)
    for head in ("colour", "tone", "bright"):
      self.assertIn(f"{head}_acc: ", epoch_lines[0])

    child = saving.load_model(os.path.join(run, "model.keras"))
    for name in ("backbone", "colour", "tone"):
      for a, b in zip(child.get_layer(name).get_weights(),
                      source.model.get_layer(name).get_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # The new head was trained: Dense biases start at exactly zero.
    self.assertGreater(np.abs(child.get_layer("bright").get_weights()[1]).max(),
                       0.0)
    # best.keras and model.keras carry no optimizer state.
    for name in ("best.keras", "model.keras"):
      self.assertEqual(_saved_groups(os.path.join(run, name)), ["layers"])

    exported = saved_model.to_saved_model(
        child, heads_lib.LabelSchema.load(run), os.path.join(root, "sm"))
    test_images, _ = export_fixture.make_images(12, seed=11)
    old = predictors.load_predictor(source.result.saved_model)(test_images)
    new = predictors.load_predictor(exported)(test_images)
    for head in ("colour", "tone"):
      np.testing.assert_array_equal(new[head], old[head], err_msg=head)
    self.assertEqual(new["bright"].shape, (12, 2))


if __name__ == "__main__":
  tf.test.main()
