"""Tests of the fine-tuning schedule: a frozen backbone does not move (not
even its BatchNorm statistics), unfreezing the top N layers moves only those,
a run interrupted between the phases resumes at the fine-tuning phase, and a
NaN loss stops the fit trainer with its own exception type."""

from __future__ import annotations

import csv
import dataclasses
import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving
from mlc_keras.training import fit
from mlc_keras.training import setup
from tests import testutil


def _fit(model, steps=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (8 * steps, 32, 32, 3), dtype=np.uint8)
  y = {"shape": rng.integers(0, 3, 8 * steps), "colour": rng.integers(0, 2, 8 * steps)}
  setup.compile_model(model, testutil.SCHEMA, keras.optimizers.Adam(1e-2),
                          top_k=2)
  model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def _weights(layer):
  return [np.array(w) for w in layer.weights]


def _changed(before, after):
  return [not np.array_equal(b, a) for b, a in zip(before, after)]


class FreezeTest(tf.test.TestCase):

  def test_frozen_backbone_and_batchnorm_do_not_move(self):
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(testutil.SCHEMA, 32, "MobileNetV2")
    net = model.get_layer(model_lib.BACKBONE_LAYER)
    backbone0, head0 = _weights(net), _weights(model.get_layer("shape"))
    model_lib.set_backbone_trainable(model, False)
    self.assertEmpty(net.trainable_weights)
    _fit(model)
    # Exactly equal, moving means and variances included (inference mode).
    self.assertNotIn(True, _changed(backbone0, _weights(net)))
    self.assertTrue(all(_changed(head0, _weights(model.get_layer("shape")))))

  def test_unfreeze_top_layers_keeps_the_rest_and_batchnorm(self):
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(testutil.SCHEMA, 32, "MobileNetV2")
    net = model.get_layer(model_lib.BACKBONE_LAYER)
    top = 6
    model_lib.set_backbone_trainable(model, True, top_layers=top,
                                     train_batchnorm=False)
    before = {l.name: _weights(l) for l in net.layers}
    _fit(model)
    for i, layer in enumerate(net.layers):
      moved = any(_changed(before[layer.name], _weights(layer)))
      is_bn = isinstance(layer, keras.layers.BatchNormalization)
      should_move = i >= len(net.layers) - top and not is_bn and layer.weights
      self.assertEqual(moved, bool(should_move), layer.name)
    # Something in the top layers really trained.
    self.assertTrue(any(l.trainable_weights for l in net.layers[-top:]))


class NonFiniteLossTest(tf.test.TestCase):

  def test_nan_loss_raises_its_own_type_before_later_callbacks(self):
    # train.py tells this stop from other errors by its type (exit code 3).
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.full((8, 4), np.inf, np.float32)
    later = []
    after = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: later.append(batch))
    with self.assertRaisesRegex(setup.NonFiniteLossError,
                                "NaN or Inf loss encountered at batch 0"):
      model.fit(x, np.zeros((8, 2), np.float32), batch_size=4, verbose=0,
                callbacks=[fit.StopOnNonFiniteLoss(), after])
    self.assertEmpty(later)


class PhasesTest(tf.test.TestCase):

  def test_phases(self):
    tc = config_lib.TrainConfig(epochs=5, freeze_epochs=2, finetune_lr_scale=0.1)
    first, second = fit.phases(tc, "/m")
    self.assertEqual((first.first_epoch, first.end_epoch, first.frozen), (0, 2, True))
    self.assertEqual((second.first_epoch, second.end_epoch, second.frozen,
                      second.lr_scale), (2, 5, False, 0.1))
    self.assertNotEqual(first.backup_dir, second.backup_dir)
    # The frozen phase hands its end state to the fine-tuning phase.
    self.assertEqual(first.hands_over, os.path.join("/m", fit.FROZEN_PHASE_WEIGHTS))
    self.assertEqual(second.starts_from, first.hands_over)
    self.assertIsNone(second.hands_over)
    self.assertFalse(second.train_batchnorm)
    self.assertLen(fit.phases(dataclasses.replace(tc, freeze_epochs=0), "/m"), 1)
    only = fit.phases(dataclasses.replace(tc, freeze_epochs=9), "/m")
    self.assertEqual([(p.end_epoch, p.frozen) for p in only], [(5, True)])
    self.assertIsNone(only[0].hands_over)

  def test_run_killed_between_phases_resumes_at_fine_tuning(self):
    tmp = self.get_temp_dir()
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, demo_dir=os.path.join(tmp, "demo")),
        model=dataclasses.replace(cfg.model, backbone="MobileNetV2"),
        train=dataclasses.replace(cfg.train, epochs=2, freeze_epochs=1))
    model_dir = os.path.join(tmp, "run")
    marker = os.path.join(model_dir, fit.FROZEN_PHASE_WEIGHTS)
    real_save = fit.save_weights_npz

    def save_then_crash(model, path):
      real_save(model, path)
      raise KeyboardInterrupt("killed after the frozen phase")

    with mock.patch.object(fit, "save_weights_npz", save_then_crash):
      with self.assertRaises(KeyboardInterrupt):
        fit.train_and_evaluate(cfg, model_dir)
    self.assertTrue(os.path.exists(marker))
    with np.load(marker) as f:
      frozen_end = [f[k] for k in sorted(f.files, key=lambda k: int(k[4:]))]

    loads = []
    real_load = fit.load_weights_npz
    with mock.patch.object(fit, "load_weights_npz",
                           lambda m, p: (loads.append(p), real_load(m, p))):
      fit.train_and_evaluate(cfg, model_dir)
    # The frozen phase was not re-run: the fine-tuning phase started from its
    # saved end state and only epoch 2 was trained again.
    self.assertEqual(loads, [marker])
    with open(os.path.join(model_dir, "history.csv")) as f:
      epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    self.assertEqual(epochs, [0, 1])
    self.assertFalse(os.path.exists(marker))
    for name in ("backup", "backup_finetune"):
      self.assertFalse(os.path.exists(os.path.join(model_dir, name)), name)
    # Fine-tuning moved the backbone away from the frozen phase's end state.
    final = saving.load_model(os.path.join(model_dir, "model.keras"))
    paths = [w.path for w in final.weights]
    moved = [p for p, a, b in zip(paths, final.get_weights(), frozen_end)
             if not np.array_equal(a, b)]
    self.assertIn("Conv1/kernel", moved)
    self.assertIn("shape/kernel", moved)
    # BatchNorm stays frozen while fine-tuning: statistics and scales unchanged.
    bn = [p for p in paths if p.startswith("bn_Conv1/")]
    self.assertLen(bn, 4)
    self.assertEmpty(set(bn) & set(moved))


if __name__ == "__main__":
  tf.test.main()
