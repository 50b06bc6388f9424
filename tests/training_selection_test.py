"""Model selection by mean balanced accuracy: the streaming per-head metric
under masking, the callbacks driven with fixed epoch logs (best.keras is the
best-mA epoch, not the best-val_loss one), state carried over a resume, and
the --monitor check."""

import csv
import os

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.evaluation import scoring
from mlc_keras.modeling import metrics
from mlc_keras.modeling import model as model_lib
from mlc_keras.training import selection
from mlc_keras.training import setup

SCHEMA = heads_lib.LabelSchema((
    heads_lib.HeadSpec("a", ("a0", "a1", "a2")),
    heads_lib.HeadSpec("b", ("no", "yes"))))


class BalancedAccuracyMetricTest(tf.test.TestCase):

  def test_masked_and_weighted_samples(self):
    m = metrics.BalancedAccuracy(3)
    y = np.array([0, 0, 1, 1, 2, 2, 0])
    pred = keras.ops.one_hot(np.array([0, 1, 1, 1, 0, 2, 1]), 3)
    # Two batches; the last two rows masked (weight 0) would make class 2's
    # recall 1/2 and class 0's 1/3.
    m.update_state(y[:4], pred[:4], np.array([1.0, 1.0, 1.0, 1.0]))
    m.update_state(y[4:], pred[4:], np.array([1.0, 0.0, 0.0]))
    # Recalls 1/2, 2/2, 0/1.
    self.assertAllClose(float(m.result()), 0.5)
    self.assertAllClose(
        float(m.result()),
        scoring.balanced_accuracy(y[:5], np.argmax(pred[:5], 1), "abc")[0])
    # Class weights constant within a class cancel out of each recall.
    m.reset_state()
    m.update_state(y[:5], pred[:5], np.array([0.3, 0.3, 2.0, 2.0, 5.0]))
    self.assertAllClose(float(m.result()), 0.5)
    m.reset_state()
    self.assertEqual(float(m.result()), 0.0)

  def test_in_fit_matches_scoring_on_the_same_predictions(self):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3)).astype("float32")
    labels = {"a": rng.integers(0, 3, 12), "b": rng.integers(0, 2, 12)}
    weights = {"a": (np.arange(12) % 4 != 0).astype("float32"),
               "b": (np.arange(12) % 3 != 0).astype("float32")}
    model = model_lib.small_cnn(SCHEMA, 16)
    setup.compile_model(model, SCHEMA, keras.optimizers.SGD(0.0), top_k=2)
    ds = tf.data.Dataset.from_tensor_slices(
        (images, labels, weights)).batch(5)
    hist = model.fit(ds, validation_data=ds, epochs=1, verbose=0,
                     callbacks=[selection.MeanOverHeads(SCHEMA)]).history
    out = model.predict(images, verbose=0)
    expected = []
    for h in SCHEMA.heads:
      mask = weights[h.name] > 0
      v, _ = scoring.balanced_accuracy(labels[h.name][mask],
                                       np.argmax(out[h.name], 1)[mask],
                                       h.classes)
      expected.append(v)
      self.assertAllClose(hist[f"val_{h.name}_balanced_acc"][0], v, atol=1e-6)
    self.assertAllClose(hist["val_mean_balanced_accuracy"][0],
                        np.mean(expected), atol=1e-6)


def _logs(val_loss, a, b):
  return {"loss": 1.0, "val_loss": val_loss, "val_a_balanced_acc": a,
          "val_b_balanced_acc": b, "a_balanced_acc": a, "b_balanced_acc": b}


# val_loss is best at epoch 0, the mean balanced accuracy (0.5, 0.7, 0.6)
# at epoch 1.
EPOCHS = [_logs(1.0, 0.5, 0.5), _logs(1.2, 0.9, 0.5), _logs(1.1, 0.6, 0.6)]


class SelectionTest(tf.test.TestCase):

  def _model(self):
    inp = keras.Input((2,))
    return keras.Model(inp, keras.layers.Dense(1, name="marker")(inp))

  def _drive(self, callbacks, model, epochs, first=0):
    cbs = keras.callbacks.CallbackList(callbacks, model=model)
    cbs.on_train_begin()
    for i, logs in enumerate(epochs):
      # The bias records the epoch, so best.keras says which one it holds.
      model.get_layer("marker").bias.assign([float(first + i)])
      cbs.on_epoch_end(first + i, dict(logs))
    return cbs

  def _saved_epoch(self, path):
    return float(keras.models.load_model(path).get_layer("marker").bias[0])

  def test_best_keras_is_the_best_mean_balanced_accuracy_epoch(self):
    path = os.path.join(self.get_temp_dir(), "best.keras")
    model = self._model()
    monitor, mode = selection.choose_monitor(None, SCHEMA, 2, has_val=True)
    self.assertEqual((monitor, mode), ("val_mean_balanced_accuracy", "max"))
    self._drive(selection.make_callbacks(SCHEMA, monitor, mode, path, 0),
                model, EPOCHS)
    self.assertEqual(self._saved_epoch(path), 1.0)
    # --monitor=val_loss on the same logs keeps epoch 0.
    monitor, mode = selection.choose_monitor("val_loss", SCHEMA, 2, True)
    self.assertEqual(mode, "min")
    self._drive(selection.make_callbacks(SCHEMA, monitor, mode, path, 0),
                model, EPOCHS)
    self.assertEqual(self._saved_epoch(path), 0.0)

  def _history(self, rows):
    path = os.path.join(self.get_temp_dir(), "history.csv")
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["epoch", "val_loss", "val_mean_balanced_accuracy"])
      w.writerows(rows)
    return path

  def test_resume_keeps_the_best_and_the_patience_count(self):
    folder = self.get_temp_dir()
    best = os.path.join(folder, "best.keras")
    model = self._model()
    model.get_layer("marker").bias.assign([0.0])
    model.save(best)  # epoch 0's, the best before the interruption
    history = self._history([[0, 1.0, 0.7], [1, 0.9, 0.6], [2, 0.8, 0.5]])
    self.assertEqual(selection.history_state(
        history, "val_mean_balanced_accuracy", "max", 2), (0.7, 1))
    self.assertEqual(selection.history_state(history, "val_loss", "min", 3),
                     (0.8, 0))
    cbs = selection.make_callbacks(SCHEMA, "val_mean_balanced_accuracy",
                                   "max", best, patience=2)
    # Resumed at epoch 2 (its history row is re-run): best 0.7, 1 epoch
    # without improvement.
    selection.restore_from_history(cbs, history, before_epoch=2)
    self._drive(cbs, model, [_logs(1.0, 0.65, 0.65)], first=2)
    # 0.65 < 0.7: best.keras still holds epoch 0, and the second epoch
    # without improvement reaches the patience.
    self.assertEqual(self._saved_epoch(best), 0.0)
    self.assertEqual(selection.stopped_early(cbs), 2)

  def test_fresh_callbacks_would_not_stop(self):
    cbs = selection.make_callbacks(
        SCHEMA, "val_mean_balanced_accuracy", "max",
        os.path.join(self.get_temp_dir(), "b.keras"), patience=2)
    selection.restore_from_history(
        cbs, os.path.join(self.get_temp_dir(), "none.csv"), 2)
    self._drive(cbs, self._model(), [_logs(1.0, 0.65, 0.65)], first=2)
    self.assertIsNone(selection.stopped_early(cbs))

  def test_monitor_errors_name_the_setting(self):
    with self.assertRaisesRegex(selection.MonitorError,
                                r"^monitor='val_acc'.*val_a_balanced_acc"):
      selection.choose_monitor("val_acc", SCHEMA, 2, has_val=True)
    with self.assertRaisesRegex(selection.MonitorError,
                                "no validation data"):
      selection.choose_monitor("val_loss", SCHEMA, 2, has_val=False)
    self.assertEqual(selection.choose_monitor(None, SCHEMA, 2, False),
                     ("mean_balanced_accuracy", "max"))
    self.assertEqual(selection.choose_monitor("a_top2", SCHEMA, 2, False)[1],
                     "max")


if __name__ == "__main__":
  tf.test.main()
