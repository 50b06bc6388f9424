"""Weight EMA (--ema_decay): validation and the epoch-end callbacks see the
average, computed here by hand from the raw weights after each step; the
backup sees the raw weights; best.keras and model.keras hold the average.
(Exact resume with EMA on: tests/training_backup_test.py's SIGKILL test.)"""

from __future__ import annotations

import dataclasses
import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.modeling import saving
from mlc_keras.training import backup
from mlc_keras.training import ema
from mlc_keras.training import fit
from mlc_keras.training import setup


class _Record(keras.callbacks.Callback):
  """The model's weights after each batch and at epoch end."""

  def __init__(self):
    super().__init__()
    self.batches, self.epoch_end = [], []

  def on_train_batch_end(self, batch, logs=None):
    self.batches.append(self.model.get_weights())

  def on_epoch_end(self, epoch, logs=None):
    self.epoch_end.append(self.model.get_weights())


class SwapTest(tf.test.TestCase):

  def test_validation_and_epoch_end_see_the_hand_computed_average(self):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    decay = 0.5
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True,
                                                 ema_momentum=decay),
                  loss="mse")
    raw, seen, after = _Record(), _Record(), _Record()
    (swap_in,), (swap_out,) = ema.callbacks()
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False,
                        validation_data=(x, y), verbose=0,
                        callbacks=[raw, swap_in, seen, swap_out, after])
    # Keras' EMA: the first step copies the weights, then
    # average = decay * average + (1 - decay) * weights, after every step.
    average = raw.batches[0]
    for step in raw.batches[1:]:
      average = [decay * a + (1 - decay) * w for a, w in zip(average, step)]
    self.assertLen(raw.batches, 4)
    for got, want, last in zip(seen.epoch_end[0], average, raw.batches[-1]):
      self.assertAllClose(got, want, atol=1e-6)
      self.assertGreater(np.abs(got - last).max(), 1e-3)
    # Validation scored the average.
    kernel, bias = average
    val_mse = float(np.mean((x @ kernel + bias - y) ** 2))
    self.assertAllClose(history.history["val_loss"][0], val_mse, rtol=1e-5)
    # Callbacks after SwapOut (the backup) see the raw weights, and fit
    # ends with the average in the model (what model.keras saves).
    for got, last in zip(after.epoch_end[0], raw.batches[-1]):
      self.assertAllEqual(got, last)
    for got, want in zip(model.get_weights(), average):
      self.assertAllClose(got, want, atol=1e-6)


class WarmupTest(tf.test.TestCase):
  """setup.optimizer's average warms up: momentum min(d, (1 + n) / (10 + n))
  at step n, not Keras' full d from the second step (which left 30% of the
  random start in a 60-step run's average at d = 0.98)."""

  def test_average_follows_the_warmup_rule_and_forgets_the_start(self):
    self.assertEqual(ema.warmup_momentum(0.98, 0), 0.0)
    self.assertAlmostEqual(ema.warmup_momentum(0.98, 8), 0.5)
    self.assertEqual(ema.warmup_momentum(0.98, 1000), 0.98)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32") + 3.0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    decay, steps = 0.98, 30
    cfg = dataclasses.replace(config_lib.TrainConfig(), ema_decay=decay,
                              learning_rate=0.05, optimizer="sgd")
    opt = setup.optimizer(cfg, total_steps=steps)
    self.assertIsInstance(opt, ema.SGD)
    self.assertIsInstance(opt, keras.optimizers.SGD)
    model.compile(optimizer=opt, loss="mse")
    raw = _Record()
    model.fit(x, y, batch_size=64, epochs=steps, shuffle=False, verbose=0,
              callbacks=[raw])
    self.assertLen(raw.batches, steps)
    warm, keras_rule = raw.batches[0], raw.batches[0]
    for n, step in enumerate(raw.batches[1:], start=1):
      m = ema.warmup_momentum(decay, n)
      warm = [m * a + (1 - m) * w for a, w in zip(warm, step)]
      keras_rule = [decay * a + (1 - decay) * w
                    for a, w in zip(keras_rule, step)]
    # fit ends with the average in the model.
    for got, want, other in zip(model.get_weights(), warm, keras_rule):
      self.assertAllClose(got, want, atol=1e-5)
      self.assertGreater(np.abs(got - other).max(), 1e-2)
    # The first step's weights (one update from the random start) keep
    # prod(momenta) of the average: under 1% here, 0.98^29 = 56% without
    # the warm-up.
    share = np.prod([ema.warmup_momentum(decay, n) for n in range(1, steps)])
    self.assertLess(share, 0.01)
    self.assertGreater(decay ** (steps - 1), 0.5)


class _Interrupt(keras.callbacks.Callback):

  def __init__(self, epoch, batch):
    super().__init__()
    self.at, self.epoch = (epoch, batch), 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    if (self.epoch, batch) == self.at:
      raise KeyboardInterrupt


class ResumeTest(tf.test.TestCase):
  """The in-process half of the resume check (the CLI's SIGKILL test in
  training_backup_test.py runs with EMA on too)."""

  def _fit(self, backup_dir, interrupt=None):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = rng.normal(size=(40, 2)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.8),
                  "mse")
    start = backup.backup_epoch(backup_dir)
    xs = np.concatenate([np.roll(x, e, 0) for e in range(start, 3)])
    ys = np.concatenate([np.roll(y, e, 0) for e in range(start, 3)])
    (swap_in,), (swap_out,) = ema.callbacks()
    callbacks = [swap_in] + ([_Interrupt(*interrupt)] if interrupt else []) + [
        swap_out, backup.ResumableBackup(backup_dir, save_freq=3)]
    try:
      model.fit(tf.data.Dataset.from_tensor_slices((xs, ys)).batch(8),
                epochs=3, steps_per_epoch=5, validation_data=(x, y),
                verbose=0, shuffle=False, callbacks=callbacks)
    except KeyboardInterrupt:
      return None
    return model.get_weights()

  def test_interrupted_mid_epoch_resumes_to_the_same_average(self):
    # Checked to fail with the average left out of the backup (the
    # optimizer's "average" variables skipped in _state_variables): the
    # resumed run restarts its average from the restored raw weights.
    reference = self._fit(os.path.join(self.get_temp_dir(), "ref"))
    folder = os.path.join(self.get_temp_dir(), "backup")
    self.assertIsNone(self._fit(folder, interrupt=(1, 4)))
    for a, b in zip(reference, self._fit(folder)):
      np.testing.assert_array_equal(a, b)


class FitEmaTest(tf.test.TestCase):

  def test_best_and_final_model_hold_the_average_not_the_raw_weights(self):
    tmp = self.get_temp_dir()
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, demo_dir=os.path.join(tmp, "demo")),
        model=dataclasses.replace(cfg.model, backbone="MobileNetV2"),
        train=dataclasses.replace(cfg.train, epochs=1, steps_per_epoch=3,
                                  ema_decay=0.9, label_smoothing=(("*", 0.1),),
                                  clip_global_norm=1.0))
    model_dir = os.path.join(tmp, "run")
    raw = []
    real_swap = ema._State.swap  # pylint: disable=protected-access

    def swap(state, model, want_average):
      swapping_out = state.swapped and not want_average
      real_swap(state, model, want_average)
      if swapping_out:
        raw.append(model.get_weights())
    with mock.patch.object(ema._State, "swap", swap):  # pylint: disable=protected-access
      fit.train_and_evaluate(cfg, model_dir)
    self.assertLen(raw, 1)  # one epoch, swapped out once before the backup
    final = saving.load_model(os.path.join(model_dir, "model.keras"))
    best = saving.load_model(os.path.join(model_dir, "best.keras"))
    # One epoch: best.keras is that epoch, saved with the average swapped in.
    for a, b in zip(best.get_weights(), final.get_weights()):
      self.assertAllEqual(a, b)
    names = [w.path for w in final.weights]
    trainable = {w.path for w in final.trainable_weights}
    differ = [n for n, f, r in zip(names, final.get_weights(), raw[-1])
              if not np.array_equal(f, r)]
    self.assertIn("shape/kernel", differ)
    # Only trainable weights are averaged (BatchNorm statistics are not).
    self.assertEmpty(set(differ) - trainable)


if __name__ == "__main__":
  tf.test.main()
