"""Label schema: the one source of head names and class order.

A head is one attribute of an image (``shape``, ``colour``...) with a fixed,
ordered list of classes. The schema is written beside every trained model and
every export as ``labels.json``; the class index a model outputs is the
position in that list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

from mlc_keras.core import errors
from mlc_keras.core.kinds import base as kinds_base
from mlc_keras.core.kinds import ordinal as ordinal_kind
from mlc_keras.core.kinds import registry as kinds
from mlc_keras.core.kinds import softmax as softmax_kind
from mlc_keras.core.kinds import tags as tags_kind

# A missing label is a blank cell in a manifest and -1 in tensors.
MISSING = kinds_base.MISSING

# Head names become Keras layer names, signature keys, ONNX output names and
# JSON keys: keep them to a portable identifier alphabet.
_HEAD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Names the model uses for itself; a head with one of these would collide.
_RESERVED = frozenset({"image", "image_bytes", "features", "backbone", "class"})

# Head kinds (core/kinds: one module each, and its registry): one class per
# image (softmax), any subset of a tag vocabulary (independent sigmoids), one
# of ordered classes (cumulative logits).
SOFTMAX = softmax_kind.KIND.name
TAGS = tags_kind.KIND.name
ORDINAL = ordinal_kind.KIND.name
# A tag-head manifest cell: tags joined by TAG_SEPARATOR, or NO_TAGS when none
# of the vocabulary applies (a blank cell stays "missing", as for softmax).
TAG_SEPARATOR = tags_kind.TAG_SEPARATOR
NO_TAGS = tags_kind.NO_TAGS
# The decision threshold of a tag that has none fitted (no validation data,
# or no positive example of it there).
DEFAULT_TAG_THRESHOLD = tags_kind.DEFAULT_TAG_THRESHOLD

SchemaError = errors.SchemaError


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """One attribute: its name, its ordered classes, its loss weight and its
  focal-loss gamma (0: plain cross-entropy).

  ``kind`` names the head's kind (core/kinds), which ``kind_impl`` returns.
  "tags": ``classes`` is a tag vocabulary, any subset of which may apply to
  an image; ``thresholds`` (one per tag, fitted on validation data after
  training) turn its sigmoid scores into decisions. "ordinal": ``classes``
  are in their order, lowest first.
  """

  name: str
  classes: tuple[str, ...]
  loss_weight: float = 1.0
  focal_gamma: float = 0.0
  kind: str = SOFTMAX
  thresholds: Optional[tuple[float, ...]] = None

  def __post_init__(self):
    if not _HEAD_NAME.match(self.name or ""):
      raise SchemaError(
          f"head name {self.name!r} must start with a letter and contain only "
          "letters, digits and '_' (it becomes a layer and output name); "
          "rename the column (or the head in the heads file)")
    if self.name in _RESERVED:
      raise SchemaError(f"head name {self.name!r} is reserved; rename it")
    kinds.get(self.kind, self.name).check(self)
    seen = set()
    for c in self.classes:
      if not isinstance(c, str) or not c.strip():
        raise SchemaError(f"head {self.name!r} has an empty class name")
      if c != c.strip():
        raise SchemaError(
            f"head {self.name!r}: class {c!r} starts or ends with white "
            "space; manifest cells are stripped, so no cell could match it")
      if c in seen:
        raise SchemaError(f"head {self.name!r} lists class {c!r} twice")
      seen.add(c)
    if not self.loss_weight >= 0:
      raise SchemaError(
          f"head {self.name!r} loss_weight must be >= 0, got {self.loss_weight}")
    if not self.focal_gamma >= 0:
      raise SchemaError(
          f"head {self.name!r} focal_gamma must be >= 0, got {self.focal_gamma}")

  @property
  def kind_impl(self) -> kinds.HeadKind:
    """The kind object (core/kinds) every stage asks about this head."""
    return kinds.KINDS[self.kind]

  @property
  def is_tags(self) -> bool:
    # Kept for callers outside the package; the package asks kind_impl.
    return self.kind == TAGS

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def width(self) -> int:
    """Label columns this head takes in a Records array: 1 (a class index),
    or one 0/1 column per tag."""
    return self.kind_impl.width(self)

  def tag_thresholds(self) -> tuple[float, ...]:
    """The fitted thresholds, or DEFAULT_TAG_THRESHOLD per tag when none are."""
    if self.thresholds is not None:
      return self.thresholds
    return (DEFAULT_TAG_THRESHOLD,) * len(self.classes)

  def parse(self, cell: str):
    """A non-blank manifest cell -> its label (the kind's parse): a class
    index, or a tag head's 0/1 vector. SchemaError naming the value."""
    return self.kind_impl.parse(self, cell)

  def parse_tags(self, cell: str) -> list[int]:
    """A non-blank tag-head cell -> its 0/1 vector over the vocabulary.

    "a|b" sets tags a and b; NO_TAGS sets none. Raises SchemaError naming the
    value for a tag outside the vocabulary, an empty item ("a||b") or
    NO_TAGS mixed with tags.
    """
    return tags_kind.KIND.parse(self, cell)

  def index(self, value: str) -> int:
    """Class index of ``value``; raises SchemaError naming the head if unknown."""
    return self.kind_impl.index(self, value)


@dataclasses.dataclass(frozen=True)
class LabelSchema:
  """The ordered heads of a model."""

  heads: tuple[HeadSpec, ...]

  def __post_init__(self):
    if not self.heads:
      raise SchemaError("a schema needs at least one head")
    names = [h.name for h in self.heads]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise SchemaError(f"head(s) defined twice: {', '.join(dupes)}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(h.name for h in self.heads)

  def __len__(self) -> int:
    return len(self.heads)

  def __iter__(self):
    return iter(self.heads)

  @property
  def label_width(self) -> int:
    """Columns of a Records label array: each head's ``width`` in order."""
    return sum(h.width for h in self.heads)

  def label_slices(self) -> dict[str, slice]:
    """{head: its columns in a Records label array}."""
    out, start = {}, 0
    for h in self.heads:
      out[h.name] = slice(start, start + h.width)
      start += h.width
    return out

  def with_thresholds(self, thresholds: Mapping[str, Sequence[float]]
                      ) -> "LabelSchema":
    """A copy with the named tag heads' thresholds replaced."""
    for name in thresholds:
      head = self.head(name)
      if head.kind_impl.thresholds(head) is None:
        raise SchemaError(f"head {name!r} is not a tag head")
    return LabelSchema(tuple(
        dataclasses.replace(h, thresholds=tuple(
            float(t) for t in thresholds[h.name]))
        if h.name in thresholds else h for h in self.heads))

  def tag_thresholds(self) -> dict[str, tuple[float, ...]]:
    """{head: its decision thresholds} of the heads whose kind decides at
    thresholds (tag heads; fitted ones or the default)."""
    out = {}
    for h in self.heads:
      t = h.kind_impl.thresholds(h)
      if t is not None:
        out[h.name] = tuple(t)
    return out

  def head(self, name: str) -> HeadSpec:
    for h in self.heads:
      if h.name == name:
        return h
    raise SchemaError(
        f"unknown head {name!r}; the schema has: {', '.join(self.names)}")

  def with_loss_weights(self, weights: Mapping[str, float]) -> "LabelSchema":
    """A copy with some heads' loss weights replaced (unknown heads raise)."""
    return self._with_per_head("loss_weight", weights)

  def with_focal_gammas(self, gammas: Mapping[str, float]) -> "LabelSchema":
    """A copy with some heads' focal-loss gammas replaced."""
    return self._with_per_head("focal_gamma", gammas)

  def _with_per_head(self, field: str, values: Mapping[str, float]):
    for name in values:
      self.head(name)
    return LabelSchema(tuple(
        dataclasses.replace(h, **{field: float(values.get(h.name, getattr(h, field)))})
        for h in self.heads))

  def select(self, names: Sequence[str]) -> "LabelSchema":
    """A schema with only the named heads, in the order given."""
    return LabelSchema(tuple(self.head(n) for n in names))

  # --- serialisation -------------------------------------------------------

  def to_dict(self) -> dict:
    heads = []
    for h in self.heads:
      d = {"name": h.name, "kind": h.kind, "classes": list(h.classes),
           "loss_weight": h.loss_weight, "focal_gamma": h.focal_gamma}
      if h.thresholds is not None:
        d["thresholds"] = list(h.thresholds)
      heads.append(d)
    return {"heads": heads}

  @classmethod
  def from_dict(cls, d: Mapping, source: str = "<dict>") -> "LabelSchema":
    if not isinstance(d, Mapping) or not isinstance(d.get("heads"), list):
      raise SchemaError(f"{source}: expected an object with a 'heads' list")
    heads = []
    for i, h in enumerate(d["heads"]):
      if not isinstance(h, Mapping) or "name" not in h or "classes" not in h:
        raise SchemaError(
            f"{source}: heads[{i}] needs 'name' and 'classes', got {h!r}")
      unknown = set(h) - {"name", "classes", "loss_weight", "focal_gamma",
                          "kind", "thresholds"}
      if unknown:
        raise SchemaError(
            f"{source}: heads[{i}] ({h['name']!r}) has unknown key(s) "
            f"{sorted(unknown)}")
      if not isinstance(h["classes"], list):
        raise SchemaError(f"{source}: heads[{i}].classes must be a list")
      numbers = {}
      for key, default in (("loss_weight", 1.0), ("focal_gamma", 0.0)):
        try:
          numbers[key] = float(h.get(key, default))
        except (TypeError, ValueError):
          raise SchemaError(
              f"{source}: heads[{i}] ({h['name']!r}) {key} must be a number, "
              f"got {h[key]!r}") from None
      try:
        heads.append(HeadSpec(
            name=h["name"], classes=tuple(str(c) for c in h["classes"]),
            kind=h.get("kind", SOFTMAX), thresholds=_thresholds(h), **numbers))
      except SchemaError as e:
        raise SchemaError(f"{source}: {e}") from None
    try:
      return cls(tuple(heads))
    except SchemaError as e:
      raise SchemaError(f"{source}: {e}") from None

  def save(self, path: str) -> None:
    """Writes labels.json (``path`` may be the file or its folder)."""
    if os.path.isdir(path):
      path = os.path.join(path, "labels.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.to_dict(), f, indent=2)
      f.write("\n")
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "LabelSchema":
    """Reads labels.json (``path`` may be the file or its folder)."""
    if os.path.isdir(path):
      path = os.path.join(path, "labels.json")
    if not os.path.exists(path):
      raise SchemaError(f"{path}: no such labels file")
    with open(path, encoding="utf-8") as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e})") from None
    return cls.from_dict(d, source=path)

  @classmethod
  def infer(cls, columns: Mapping[str, Iterable[str]],
            tag_columns: Sequence[str] = ()) -> "LabelSchema":
    """Infers a schema from label columns: classes are the distinct non-blank
    values of each column, sorted as numbers when every one is an integer
    (1, 2, 10; "01" and "1" stay two classes, "01" first) and as text
    otherwise; heads keep the column order. An ordinal head's order is
    declared in a heads file, never inferred. A column named in
    ``tag_columns`` becomes a tag head whose vocabulary is the distinct tags
    of its cells (split at TAG_SEPARATOR, NO_TAGS left out), sorted alike."""
    heads = []
    for name, values in columns.items():
      if name in tag_columns:
        heads.append(HeadSpec(name=name, kind=TAGS,
                              classes=kinds.get(TAGS).infer(name, values)))
        continue
      classes = kinds_base.sorted_values({v for v in values if v != ""})
      if len(classes) < 2:
        raise SchemaError(
            f"column {name!r} has {len(classes)} distinct label value(s) "
            f"({classes}); a head needs at least 2. Name the columns to train "
            "with `label_columns`, delete the column, or give a `heads_file` "
            "(columns it does not name are ignored; a head there may list "
            "classes no row has)")
      heads.append(HeadSpec(name=name, classes=tuple(classes)))
    return cls(tuple(heads))


def _thresholds(h: Mapping) -> Optional[tuple[float, ...]]:
  if "thresholds" not in h:
    return None
  t = h["thresholds"]
  if not isinstance(t, list) or not all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in t):
    raise SchemaError(
        f"head {h['name']!r}: thresholds must be a list of numbers, got {t!r}")
  return tuple(float(x) for x in t)
