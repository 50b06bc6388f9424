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

Keras' SwapEMAWeights swaps by adding and subtracting (a + b - b is not
bit-exact in float32), which would break the exact resume; here the values
are copied through numpy.
"""

from __future__ import annotations

import keras
import numpy as np


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
