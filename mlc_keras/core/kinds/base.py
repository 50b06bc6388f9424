"""What a head kind answers: the one interface every stage asks instead of
branching on ``HeadSpec.kind``.

A kind is a stateless object; every method takes the HeadSpec it speaks for
(``spec``: its name, classes, loss weight, focal gamma, thresholds). The
stages call these methods and never test which kind a head is:

  schema       check, width, parse, cell, thresholds          (pure Python)
  data         tfrecord_feature, targets, mix_target, counts  (TensorFlow /
               numpy, imported when called)
  model        output_layer, loss, metrics, selection_metrics, log_names,
               keras_objects                                  (Keras)
  decisions    describe (predict JSON), serving_outputs / serving_suffixes
               (the SavedModel's bytes signature), description (the ONNX
               doc string)
  evaluation   table_row (end-of-training table), scores (the field's
               numbers), report (evaluate's per-head row: its "confusion" or
               "per_tag" entry picks the figure drawn), across (a head's
               share of the across-head numbers)

``single_label``: the head's label is one class index per image and its
output a probability per class summing to 1 (a softmax or an ordinal head):
what combinations, factor priors, temperature scaling and class tables
need.

Pure Python at import: Keras and TensorFlow are imported inside the methods
that need them, so ``import mlc_keras`` stays free of TensorFlow.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from mlc_keras.core import errors

# A missing label is a blank cell in a manifest and -1 in tensors.
MISSING = -1

class HeadKind:
  """The interface of a head kind; see the module docstring. Subclasses
  set ``name`` (the "kind" of labels.json and of a heads file)."""

  name: str = ""
  # How a message names a head of this kind ("a tag head").
  noun: str = "head"
  single_label: bool = True
  # The fewest classes a head of this kind may declare.
  min_classes: int = 2

  # --- schema --------------------------------------------------------------

  def check(self, spec) -> None:
    """Raises SchemaError naming the head when ``spec`` cannot be this kind
    (after the checks every head gets: name, distinct classes, weights)."""
    if len(spec.classes) < self.min_classes:
      raise errors.SchemaError(
          f"{self.noun} {spec.name!r} needs at least {self.min_classes} "
          f"classes, got {list(spec.classes)}")
    if spec.thresholds is not None:
      raise errors.SchemaError(
          f"head {spec.name!r}: only a tag head has thresholds")

  def width(self, spec) -> int:
    """Columns this head takes in a Records label array."""
    return 1

  def parse(self, spec, cell: str):
    """A non-blank manifest cell -> its label (an int, or a list of ints
    ``width`` long); SchemaError naming the value when it does not fit."""
    return index(spec, cell)

  def index(self, spec, value: str) -> int:
    """Class index of one class name; SchemaError naming the head."""
    return index(spec, value)

  def cell(self, spec, y) -> str:
    """A labelled row's ``width`` label columns -> its manifest cell."""
    return spec.classes[int(y[0])]

  def thresholds(self, spec) -> Optional[tuple[float, ...]]:
    """The decision thresholds labels.json carries for this head, if its
    decisions are taken at thresholds (None: they are not)."""
    return None

  def infer(self, name: str, values: Iterable[str]) -> tuple[str, ...]:
    """The classes of a head of this kind inferred from a column's cells
    (LabelSchema.infer)."""
    raise errors.SchemaError(
        f"column {name!r}: a {self.name} head is only declared in a heads "
        "file, not inferred from the data")

  # --- data (tf / numpy) -----------------------------------------------------

  def tfrecord_feature(self, spec):
    raise NotImplementedError

  def targets(self, spec, y, class_weight=None):
    """(target, sample weight) of a batch's label columns ``y`` [..., width]
    (-1: missing); ``class_weight`` [k] or None."""
    raise NotImplementedError

  def mix_target(self, spec, y):
    """A batch's targets as float [B, k] rows that MixUp / CutMix can mix."""
    raise NotImplementedError

  def counts(self, spec, y):
    """Labelled examples per class of ``y`` [N, width] (labelled rows only)."""
    raise NotImplementedError

  # --- model (Keras) ---------------------------------------------------------

  def output_layer(self, spec, **kwargs):
    """The Keras layer that maps features to this head's output, named
    after the head (the output-name contract)."""
    raise NotImplementedError

  def loss(self, spec, label_smoothing: float = 0.0, soft: bool = False):
    raise NotImplementedError

  def metrics(self, spec, top_k: int = 5, soft: bool = False) -> list:
    """Weighted metrics compiled for this head (masked samples do not count)."""
    raise NotImplementedError

  def selection_metrics(self, spec) -> list:
    """The metrics model selection averages over heads (none: left out)."""
    return []

  def log_names(self, spec, top_k: int) -> list[str]:
    """The names the epoch logs carry for this head (without "val_")."""
    raise NotImplementedError

  def copy_weights(self, parent_spec, spec, src, dst) -> None:
    """Copies a trained head layer ``src`` (of ``parent_spec``) into the new
    model's ``dst`` (of ``spec``, whose classes include the parent's):
    modeling.grow. SchemaError when this kind cannot."""
    raise NotImplementedError

  def keras_objects(self) -> dict:
    """{registered name: class} of this kind's own Keras objects, which a
    saved model may carry (modeling.saving.load_model passes them on)."""
    return {}

  # --- decisions -------------------------------------------------------------

  # What the output holds, for a reader of an exported file.
  description: str = ""

  def describe(self, spec, row) -> dict[str, Any]:
    """One image's output row -> its entry in the predict JSON."""
    raise NotImplementedError

  # Outputs the SavedModel's bytes signature adds for this head: the suffix
  # of each, appended to the head's name.
  serving_suffixes: tuple[str, ...] = ()

  def serving_outputs(self, spec, probs) -> dict:
    """{suffix: tensor} of serving_suffixes, computed in the graph from the
    head's output ``probs`` [batch, k] (tf)."""
    raise NotImplementedError

  # --- evaluation (numpy) ----------------------------------------------------

  def table_row(self, spec, probs, y, top_k: int) -> dict:
    """The end-of-training table's numbers on the labelled rows."""
    raise NotImplementedError

  def scores(self, spec, probs, labels, mask, top_k: int) -> dict:
    """The field's numbers of this head (evaluation.scoring)."""
    raise NotImplementedError

  def report(self, spec, probs, labels, mask, top_k: int) -> dict:
    """evaluate's row for this head (scores, plus what the report shows)."""
    raise NotImplementedError

  def across(self, spec, probs, labels, mask):
    """(wrong [N] bool, true [N, a] 0/1, predicted [N, a] 0/1): where the
    head is wrong on a labelled row, and its attributes for the
    instance-based numbers (evaluation.scoring.across_heads)."""
    raise NotImplementedError


# Label values sorted as numbers when a whole column is made of these.
_INTEGER = re.compile(r"-?[0-9]+")


def sorted_values(values: Iterable[str]) -> list[str]:
  """Class names sorted as numbers when every one is an integer (1, 2, 10;
  "01" before "1"), as text otherwise."""
  classes = sorted(values)
  if classes and all(_INTEGER.fullmatch(c) for c in classes):
    classes.sort(key=lambda c: (int(c), c))
  return classes


def dense_copy(parent_spec, spec, src, dst) -> None:
  """A Dense head's kernel column and bias entry of each parent class, copied
  to that class's position in the new head (matched by class name)."""
  kernel, bias = src.get_weights()
  new_kernel, new_bias = dst.get_weights()
  if kernel.shape[0] != new_kernel.shape[0]:
    raise errors.SchemaError(
        f"head {spec.name!r} reads {kernel.shape[0]} features, the new model "
        f"{new_kernel.shape[0]}")
  for i, c in enumerate(parent_spec.classes):
    j = spec.classes.index(c)
    new_kernel[:, j] = kernel[:, i]
    new_bias[j] = bias[i]
  dst.set_weights([new_kernel, new_bias])


def index(spec, value: str) -> int:
  """Class index of ``value`` in ``spec``; SchemaError naming the head."""
  try:
    return spec.classes.index(value)
  except ValueError:
    raise errors.SchemaError(
        f"value {value!r} is not a class of head {spec.name!r} "
        f"(classes: {', '.join(spec.classes)})") from None
