"""Weight EMA in the Keras fit loop: the optimizer keeps the average
(``use_ema``, see setup.optimizer); these callbacks swap it into the model
for what must see it, and back out before anything that must see the raw
weights.

In one epoch of fit:

  train steps (raw weights; the optimizer updates the average after each)
  -> validation: SwapIn.on_test_begin puts the average into the model
  -> on_epoch_end, in list order: SwapIn (average in, also without
     validation data), the selection callbacks (best.keras holds the
     average), the logs, SwapOut (raw weights back), the backup (raw
     weights as model variables, the average among the optimizer's
     variables: a backup holds both, and a resumed run goes on from
     exactly that state)
  -> after the last epoch fit's own finalize_variable_values copies the
     average into the model, so model.keras and every export hold it.

The average warms up (``warmup_momentum``): Keras' optimizer starts it at the
first step's weights and applies the full decay from the second step on, so a
short run's average is mostly its random start (decay 0.98 after 60 steps:
0.98^60 = 30% of every averaged weight is the initialisation, and the
from-scratch recipe run scored 0.30 mean mA against 0.72 without EMA). Here
the momentum of step n is min(decay, (1 + n) / (10 + n)), the ``num_updates``
rule of TF's ``tf.train.ExponentialMovingAverage``: 0.5 at step 8, 0.9 at
step 80, the full decay d from step (10 d - 1) / (1 - d) on (440 for 0.98,
~8,990 for 0.999). ``AdamW`` and ``SGD`` below are Keras' optimizers with only
that one method changed; setup.optimizer uses them when --ema_decay is set.

Keras' SwapEMAWeights swaps by adding and subtracting (a + b - b is not
bit-exact in float32), which would break the exact resume; here the values
are copied through numpy.
"""

from __future__ import annotations

import keras
from keras import ops
import numpy as np


def warmup_momentum(decay: float, step: int) -> float:
  """The averaging momentum at optimizer step ``step`` (0-based): 0 at the
  first step (the average becomes the weights), then
  min(decay, (1 + step) / (10 + step))."""
  return 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))


class _WarmupAverage:
  """Mixin over a Keras optimizer: the moving average with warm-up."""

  def _update_model_variables_moving_average(self, trainable_variables):
    step = ops.cast(self.iterations, "float32")
    momentum = ops.minimum(ops.cast(self.ema_momentum, "float32"),
                           (1.0 + step) / (10.0 + step))
    momentum = ops.where(ops.equal(self.iterations, 0), 0.0, momentum)
    for var, average in zip(trainable_variables,
                            self._model_variables_moving_average):
      if average is not None:
        m = ops.cast(momentum, var.dtype)
        average.assign(ops.add(ops.multiply(m, average),
                               ops.multiply(ops.subtract(1, m), var)))


@keras.saving.register_keras_serializable(package="mlc_keras")
class AdamW(_WarmupAverage, keras.optimizers.AdamW):
  """keras.optimizers.AdamW whose weight average warms up."""


@keras.saving.register_keras_serializable(package="mlc_keras")
class SGD(_WarmupAverage, keras.optimizers.SGD):
  """keras.optimizers.SGD whose weight average warms up."""


def _pairs(model: keras.Model):
  opt = model.optimizer
  opt = getattr(opt, "inner_optimizer", opt)  # a LossScaleOptimizer
  if not getattr(opt, "use_ema", False) or not opt.built:
    return []
  return [(v, a) for v, a in zip(opt._trainable_variables,  # pylint: disable=protected-access
                                 opt._model_variables_moving_average)  # pylint: disable=protected-access
          if a is not None]


class _State:
  def __init__(self):
    self.swapped = False

  def swap(self, model: keras.Model, want_average: bool) -> None:
    if self.swapped == want_average:
      return
    for var, average in _pairs(model):
      raw = np.array(var.numpy())
      var.assign(average.numpy())
      average.assign(raw)
    self.swapped = want_average


class SwapIn(keras.callbacks.Callback):
  """Puts the average into the model for validation and the epoch-end
  callbacks after it (place first)."""

  def __init__(self, state: _State):
    super().__init__()
    self.state = state

  def on_test_begin(self, logs=None):
    self.state.swap(self.model, True)

  def on_epoch_end(self, epoch, logs=None):
    self.state.swap(self.model, True)


class SwapOut(keras.callbacks.Callback):
  """Puts the raw weights back (place just before the backup)."""

  def __init__(self, state: _State):
    super().__init__()
    self.state = state

  def on_epoch_end(self, epoch, logs=None):
    self.state.swap(self.model, False)

  def on_train_end(self, logs=None):
    self.state.swap(self.model, False)


def callbacks() -> tuple[tuple[SwapIn], tuple[SwapOut]]:
  """((first callback,), (callback before the backup,)), sharing one
  state."""
  state = _State()
  return (SwapIn(state),), (SwapOut(state),)
