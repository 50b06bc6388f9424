"""Outputs added on top of a trained model: per-head temperatures and the
composed "class" output. Each returns the same model (shared weights) with
rewired outputs, and each can be read back from a model that carries it.
"""

from __future__ import annotations

from typing import Mapping, Optional

import keras

from mlc_keras import compose
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


def with_class_output(model: keras.Model,
                      table: compose.ClassTable) -> keras.Model:
  """The same model (shared weights) with an extra "class" output: the
  table's class probabilities. An existing "class" output is replaced."""
  outputs = {k: v for k, v in model_lib.named_outputs(model).items()
             if k != compose.CLASS_OUTPUT}
  missing = [h for h in table.heads if h not in outputs]
  if missing:
    raise compose.ClassTableError(
        f"{table.source}: head(s) {missing} are not outputs of the model "
        f"({', '.join(sorted(outputs))})")
  composed = layers.ComposeClasses.from_table(table)(
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
