"""Attribute composition: recognise classes described by their head values.

A class table is a CSV whose first column names a class and whose other
columns are heads of the schema; a cell is the class's value for that head,
blank when the head does not matter for it::

  class,shape,colour
  blue_triangle,triangle,blue
  red_circle,circle,red
  anything_blue,,blue

A class's score is the sum, over the heads it specifies, of
log p(head = value); the scores are softmax-normalised over the table's
classes. A cell of a tag head names one tag of its vocabulary and adds
log p(tag present) (its sigmoid score); blank still means "any". The classes need not appear in the training data: that is the point
(fur + bill + tail = platypus). When the best class's normalised probability
is below a threshold, the answer is "unknown".

This module is the numpy maths and the one "unknown below the threshold" rule
(``predict_classes``); its graph form, the ``ComposeClasses`` layer that lets a
model carry a "class" output into every export, is in modeling/layers.py.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib

# The output name of the composed classes (reserved as a head name in heads.py).
CLASS_OUTPUT = "class"
UNKNOWN = "unknown"
DEFAULT_THRESHOLD = 0.5
# Probabilities are clipped before the log so that a head that is certain a
# value is impossible (p = 0 in float32) gives a large finite penalty, not -inf
# (which would make every class -inf and the softmax NaN).
EPS = 1e-7


class ClassTableError(errors.MlcError):
  """A class table that does not fit the schema; the message names the file,
  row and column."""


@dataclasses.dataclass(frozen=True)
class ClassTable:
  """Classes described by head values.

  ``values[c][j]`` is the class index of head ``heads[j]`` for class
  ``classes[c]``, or -1 where the head does not matter.
  """

  classes: tuple[str, ...]
  heads: tuple[str, ...]
  values: tuple[tuple[int, ...], ...]
  source: str = "<table>"

  def __len__(self) -> int:
    return len(self.classes)

  def index(self, name: str) -> int:
    try:
      return self.classes.index(name)
    except ValueError:
      raise ClassTableError(
          f"{self.source}: no class {name!r} (classes: "
          f"{', '.join(self.classes)})") from None

  def matrices(self, num_classes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per head, a [head classes, table classes] 0/1 matrix: column c selects
    the value class c asks for (all zeros where the head does not matter)."""
    out = {}
    for j, h in enumerate(self.heads):
      m = np.zeros((num_classes[h], len(self.classes)), np.float32)
      for c, row in enumerate(self.values):
        if row[j] >= 0:
          m[row[j], c] = 1.0
      out[h] = m
    return out

  def to_rows(self, schema: heads_lib.LabelSchema) -> list[list[str]]:
    """The table as CSV rows (header first), values as class names."""
    rows = [["class", *self.heads]]
    for name, row in zip(self.classes, self.values):
      rows.append([name, *(schema.head(h).classes[v] if v >= 0 else ""
                           for h, v in zip(self.heads, row))])
    return rows


def from_dict(classes: Mapping[str, Mapping[str, str]],
              schema: heads_lib.LabelSchema,
              source: str = "<dict>") -> ClassTable:
  """{class name: {head: value}} -> ClassTable (heads in schema order)."""
  used = [h for h in schema.names if any(h in v for v in classes.values())]
  rows = [["class", *used]]
  for name, values in classes.items():
    unknown = sorted(set(values) - set(schema.names))
    if unknown:
      raise ClassTableError(
          f"{source}: class {name!r}: {unknown} are not heads of the schema "
          f"(heads: {', '.join(schema.names)})")
    rows.append([name, *(values.get(h, "") for h in used)])
  return _parse(rows, schema, source, first_line=1)


def load(path: str, schema: heads_lib.LabelSchema) -> ClassTable:
  """Reads a class table CSV and checks it against ``schema``.

  Raises:
    ClassTableError: naming the file, line and column of the first problem.
  """
  if not os.path.isfile(path):
    raise ClassTableError(f"{path}: class table not found")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except UnicodeDecodeError as e:
    raise ClassTableError(f"{path}: not UTF-8 text ({e.reason})") from None
  return _parse(rows, schema, path, first_line=1)


def _parse(rows: Sequence[Sequence[str]], schema: heads_lib.LabelSchema,
           source: str, first_line: int) -> ClassTable:
  if not rows or not any(c.strip() for c in rows[0]):
    raise ClassTableError(f"{source}: empty class table (no header row)")
  header = [c.strip() for c in rows[0]]
  heads = header[1:]
  if not heads:
    raise ClassTableError(
        f"{source}:{first_line}: the header needs a class-name column and at "
        "least one head column")
  for h in heads:
    if h not in schema.names:
      raise ClassTableError(
          f"{source}:{first_line}: column {h!r} is not a head of the schema "
          f"(heads: {', '.join(schema.names)})")
  dupes = sorted({h for h in heads if heads.count(h) > 1})
  if dupes:
    raise ClassTableError(f"{source}:{first_line}: column(s) {dupes} appear twice")
  specs = [schema.head(h) for h in heads]
  names, values, seen = [], [], {}
  for i, r in enumerate(rows[1:]):
    line = first_line + 1 + i
    if not any(c.strip() for c in r):
      continue
    if len(r) != len(header):
      raise ClassTableError(
          f"{source}:{line}: {len(r)} cells, the header has {len(header)}")
    name = r[0].strip()
    if not name:
      raise ClassTableError(f"{source}:{line}: blank class name")
    if name == UNKNOWN:
      raise ClassTableError(
          f"{source}:{line}: {UNKNOWN!r} is reserved for answers below the "
          "threshold; rename the class")
    if name in seen:
      raise ClassTableError(
          f"{source}:{line}: class {name!r} is listed twice (first on line "
          f"{seen[name]})")
    seen[name] = line
    row = []
    for spec, cell in zip(specs, r[1:]):
      cell = cell.strip()
      if not cell:
        row.append(-1)
        continue
      try:
        row.append(spec.index(cell))
      except heads_lib.SchemaError as e:
        raise ClassTableError(
            f"{source}:{line}: column {spec.name!r}: {e}") from None
    if all(v < 0 for v in row):
      raise ClassTableError(
          f"{source}:{line}: class {name!r} specifies no head; give at least "
          "one value")
    names.append(name)
    values.append(tuple(row))
  if not names:
    raise ClassTableError(f"{source}: the class table has a header but no rows")
  return ClassTable(tuple(names), tuple(heads), tuple(values), source)


def save(table: ClassTable, schema: heads_lib.LabelSchema, path: str) -> None:
  """Writes ``table`` as a class table CSV."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(table.to_rows(schema))


# --- the math -------------------------------------------------------------------


def compose_probs(head_probs: Mapping[str, np.ndarray],
                  table: ClassTable,
                  bias: Optional[Sequence[float]] = None) -> np.ndarray:
  """{head: probs [N, k]} -> class probabilities [N, len(table)].

  Heads not in the table are ignored. A single row ([k] per head) gives [C].
  ``bias`` [C]: subtracted from each class's score before the softmax
  (calibrated stacking: gamma on the classes seen in training, see
  stacking_bias).
  """
  single = np.ndim(next(iter(head_probs.values()))) == 1
  scores = compose_scores(head_probs, table)
  if bias is not None:
    scores = scores - np.asarray(bias, np.float64)[None, :]
  scores -= scores.max(axis=1, keepdims=True)
  out = np.exp(scores)
  out /= out.sum(axis=1, keepdims=True)
  return out[0] if single else out


def stacking_bias(seen: Sequence[bool], gamma: float) -> np.ndarray:
  """[C] bias of calibrated stacking (Chao et al., ECCV 2016): ``gamma`` on
  the classes seen in training, 0 on the others."""
  return np.where(np.asarray(seen, bool), float(gamma), 0.0)


def compose_scores(head_probs: Mapping[str, np.ndarray],
                   table: ClassTable) -> np.ndarray:
  """{head: probs [N, k]} -> [N, C] unnormalised class scores: the sum of
  log p(head = value) over the heads each class specifies."""
  probs = {h: np.atleast_2d(np.asarray(p, np.float64))
           for h, p in head_probs.items()}
  missing = [h for h in table.heads if h not in probs]
  if missing:
    raise ClassTableError(
        f"{table.source}: head(s) {missing} of the class table are not among "
        f"the outputs ({', '.join(sorted(probs))})")
  mats = table.matrices({h: probs[h].shape[-1] for h in table.heads})
  n = probs[table.heads[0]].shape[0]
  scores = np.zeros((n, len(table)), np.float64)
  for h in table.heads:
    scores += np.log(np.clip(probs[h], EPS, 1.0)) @ mats[h]
  return scores


def predict_classes(class_probs: np.ndarray, table: ClassTable,
                    threshold: float = DEFAULT_THRESHOLD) -> list[str]:
  """Class names per row of [N, C] class probabilities; UNKNOWN where the best
  probability is below ``threshold``."""
  p = np.atleast_2d(class_probs)
  best = np.argmax(p, axis=1)
  return [table.classes[b] if p[i, b] >= threshold else UNKNOWN
          for i, b in enumerate(best)]


def classes_of(labels_by_head: Mapping[str, np.ndarray],
               mask_by_head: Mapping[str, np.ndarray],
               table: ClassTable) -> tuple[np.ndarray, np.ndarray]:
  """True table class per row, from per-head labels.

  Returns (target [N] int, -1 where no table class matches the labels,
  usable [N] bool: the row's labels cover every head the table uses). A row
  matches a class when every head the class specifies has that value;
  a row matching several classes takes the most specific one (most heads
  specified, then the first in the table).
  """
  n = len(next(iter(labels_by_head.values())))
  usable = np.ones(n, bool)
  for h in table.heads:
    usable &= np.asarray(mask_by_head[h], bool)
  specificity = np.array([sum(v >= 0 for v in row) for row in table.values])
  # Written least specific first, so the most specific (then the earliest in
  # the table) is written last and wins.
  order = sorted(range(len(table)), key=lambda c: (specificity[c], -c))
  target = np.full(n, -1, np.int64)
  for c in order:
    ok = usable.copy()
    for j, h in enumerate(table.heads):
      v = table.values[c][j]
      if v >= 0:
        labels = np.asarray(labels_by_head[h])
        # A tag head's labels are 0/1 rows: the class asks for tag v.
        ok &= labels[:, v] > 0.5 if labels.ndim == 2 else labels == v
    target[ok] = c
  return target, usable


# --- the demo table -------------------------------------------------------------


def demo_classes() -> dict[str, dict[str, str]]:
  """Every combination of the demo's four attributes as a class, named like
  "large_outline_blue_triangle" (the held-out one among them)."""
  from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
  heads = [h for h in demo.SCHEMA.heads if h.kind_impl.single_label]
  classes = {}
  for combo in itertools.product(*(h.classes for h in heads)):
    values = dict(zip((h.name for h in heads), combo))
    name = "_".join(values[k] for k in ("size", "fill", "colour", "shape"))
    classes[name] = values
  return classes


def write_demo_table(path: str,
                     schema: Optional[heads_lib.LabelSchema] = None) -> str:
  """Writes the demo class table (the 36 attribute combinations, among them
  large_outline_blue_triangle, which is never in training). ``path`` may be a
  folder (then ``classes.csv`` in it). Returns the file path."""
  from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
  schema = schema or demo.SCHEMA
  if os.path.isdir(path):
    path = os.path.join(path, "classes.csv")
  save(from_dict(demo_classes(), schema, "demo classes"), schema, path)
  return path
