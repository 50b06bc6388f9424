"""The package's own Keras layers: what a saved model may carry beyond the
stock layers, so modeling.saving.load_model must know each of them.

The maths they compute is written once, in numpy, in calibrate.py and
compose.py; these layers are its graph form, so every export applies it.
"""

from __future__ import annotations

import keras

from mlc_keras.evaluation import calibrate
from mlc_keras.labeling import compose


@keras.saving.register_keras_serializable(package="mlc_keras")
class Temperature(keras.layers.Layer):
  """Probabilities p -> softmax(log p / temperature) (calibrate.scale).

  Args:
    temperature: a positive float.
  """

  def __init__(self, temperature: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    self.temperature = float(temperature)

  def call(self, probs):
    ops = keras.ops
    p = ops.clip(ops.cast(probs, "float32"), calibrate.EPS, 1.0)
    return ops.softmax(ops.log(p) / self.temperature, axis=-1)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(temperature=self.temperature)
    return config


@keras.saving.register_keras_serializable(package="mlc_keras")
class ComposeClasses(keras.layers.Layer):
  """{head: probs} -> class probabilities over a class table's classes
  (compose.compose_probs).

  Args:
    classes: the table's class names (the output's column order).
    heads: the heads the table uses.
    values: per class, per head, the class index asked for or -1.
    bias: per class, subtracted from its score before the softmax
      (calibrated stacking, compose.stacking_bias); None: no bias.
  """

  def __init__(self, classes, heads, values, bias=None, **kwargs):
    super().__init__(**kwargs)
    self.classes = [str(c) for c in classes]
    self.heads = [str(h) for h in heads]
    self.values = [[int(v) for v in row] for row in values]
    if len(self.values) != len(self.classes) or any(
        len(r) != len(self.heads) for r in self.values):
      raise ValueError(
          f"values must be [{len(self.classes)} classes][{len(self.heads)} "
          "heads]")
    self.bias = None if bias is None else [float(b) for b in bias]
    if self.bias is not None and len(self.bias) != len(self.classes):
      raise ValueError(f"bias must have {len(self.classes)} values (one per "
                       f"class), got {len(self.bias)}")
    self._table = compose.ClassTable(tuple(self.classes), tuple(self.heads),
                                     tuple(tuple(r) for r in self.values))
    self._mats = None

  @classmethod
  def from_table(cls, table: compose.ClassTable,
                 name: str = compose.CLASS_OUTPUT, bias=None,
                 **kwargs) -> "ComposeClasses":
    return cls(table.classes, table.heads, table.values, bias=bias, name=name,
               **kwargs)

  def build(self, input_shape):
    widths = {h: int(input_shape[h][-1]) for h in self.heads}
    for j, h in enumerate(self.heads):
      top = max(r[j] for r in self.values)
      if top >= widths[h]:
        raise ValueError(
            f"class table asks head {h!r} for class index {top} but the head "
            f"has {widths[h]} classes")
    self._mats = self._table.matrices(widths)
    self.built = True

  def call(self, inputs):
    ops = keras.ops
    scores = None
    for h in self.heads:
      p = ops.cast(inputs[h], "float32")
      logp = ops.log(ops.clip(p, compose.EPS, 1.0))
      term = ops.matmul(logp, ops.convert_to_tensor(self._mats[h], "float32"))
      scores = term if scores is None else scores + term
    if self.bias is not None:
      scores = scores - ops.convert_to_tensor([self.bias], "float32")
    return ops.softmax(scores, axis=-1)

  def compute_output_shape(self, input_shape):
    return (input_shape[self.heads[0]][0], len(self.classes))

  def get_config(self):
    config = super().get_config()
    config.update(classes=list(self.classes), heads=list(self.heads),
                  values=[list(r) for r in self.values], bias=self.bias)
    return config

  def table(self, source: str) -> compose.ClassTable:
    """The class table this layer composes, its errors naming ``source``."""
    return compose.ClassTable(self._table.classes, self._table.heads,
                              self._table.values, source)
