"""Outputs added on top of a trained model: per-head temperatures and the
composed "class" output. Each returns the same model (shared weights) with
rewired outputs, and each can be read back from a model that carries it.
"""

from __future__ import annotations

from typing import Mapping, Optional

import keras

from mlc_keras.labeling import compose
from mlc_keras.modeling import layers
from mlc_keras.modeling import model as model_lib

_TEMPERATURE_SUFFIX = "_temperature"


def temperature_layer_name(head: str) -> str:
  return head + _TEMPERATURE_SUFFIX


def with_temperatures(model: keras.Model,
                      temperatures: Mapping[str, float]) -> keras.Model:
  """The same model (shared weights) with each named head's output passed
  through a Temperature layer; output keys are unchanged. Heads already
  scaled are re-scaled from their unscaled output, not stacked. Any other
  output (e.g. a composed "class" output) is kept as it is: re-apply
  with_class_output to compose the calibrated heads."""
  outputs = model_lib.named_outputs(model)
  unknown = sorted(set(temperatures) - set(outputs))
  if unknown:
    raise ValueError(f"no output(s) {unknown} to calibrate "
                     f"(outputs: {', '.join(sorted(outputs))})")
  new = {}
  for name, tensor in outputs.items():
    if name not in temperatures:
      new[name] = tensor
      continue
    try:
      # Already calibrated: start again from the head's own softmax.
      tensor = model.get_layer(temperature_layer_name(name)).input
    except ValueError:
      pass
    new[name] = layers.Temperature(
        temperatures[name], name=temperature_layer_name(name))(tensor)
  return keras.Model(model.inputs, new, name=model.name)


def temperatures_of(model: keras.Model) -> dict[str, float]:
  """{head: T} of the Temperature layers in ``model`` (empty if none)."""
  return {l.name[:-len(_TEMPERATURE_SUFFIX)]: l.temperature
          for l in model.layers if isinstance(l, layers.Temperature)}


def with_class_output(model: keras.Model, table: compose.ClassTable,
                      bias=None) -> keras.Model:
  """The same model (shared weights) with an extra "class" output: the
  table's class probabilities, ``bias`` [C] (calibrated stacking) subtracted
  from the class scores first. An existing "class" output is replaced."""
  outputs = {k: v for k, v in model_lib.named_outputs(model).items()
             if k != compose.CLASS_OUTPUT}
  missing = [h for h in table.heads if h not in outputs]
  if missing:
    raise compose.ClassTableError(
        f"{table.source}: head(s) {missing} are not outputs of the model "
        f"({', '.join(sorted(outputs))})")
  composed = layers.ComposeClasses.from_table(table, bias=bias)(
      {h: outputs[h] for h in table.heads})
  return keras.Model(model.inputs, {**outputs, compose.CLASS_OUTPUT: composed},
                     name=model.name)


def table_of(model: keras.Model) -> Optional[compose.ClassTable]:
  """The class table of ``model``'s "class" output (its ComposeClasses layer
  holds the class names and head values), or None when it has no such output.
  Lets export and predict name the classes of a model that was composed
  earlier (e.g. evaluate --calibrate --class_table)."""
  try:
    layer = model.get_layer(compose.CLASS_OUTPUT)
  except ValueError:
    return None
  if not isinstance(layer, layers.ComposeClasses):
    return None
  return layer.table(
      f"the {compose.CLASS_OUTPUT!r} layer of model {model.name!r}")


def stacking_bias_of(model: keras.Model) -> Optional[list]:
  """The calibrated-stacking bias [C] of ``model``'s "class" output, or None
  (no class output, or one without a bias)."""
  try:
    layer = model.get_layer(compose.CLASS_OUTPUT)
  except ValueError:
    return None
  return getattr(layer, "bias", None) if isinstance(
      layer, layers.ComposeClasses) else None


def stacking_bias_for(model: keras.Model, table: compose.ClassTable
                      ) -> tuple[Optional[list], Optional[str]]:
  """(bias, note): ``model``'s calibrated-stacking bias when ``table`` is the
  table it was fitted for (same classes and values), else None; the note
  says which (None when the model carries no bias)."""
  bias = stacking_bias_of(model)
  if bias is None:
    return None, None
  carried = table_of(model)
  if (carried.classes, carried.heads, carried.values) == (
      table.classes, table.heads, table.values):
    return bias, ("the class table is the one of the model's class output: "
                  "its calibrated-stacking bias is kept")
  return None, ("the model's calibrated-stacking bias was fitted for another "
                "class table: this one is composed without a bias (run "
                "evaluate --stacking with it to fit one)")
