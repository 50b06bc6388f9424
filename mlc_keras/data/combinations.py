"""Held-out combinations of head values: a split of their own.

``holdout_combinations`` names combinations of values (``shape=triangle+
colour=blue``) that no training or validation image may carry, so that an
evaluation on a test set holding them measures composition on combinations
the model never saw, while every value on its own is still trained on with
other partners. ``calibration_combinations`` names others that leave
training only: validation keeps them, so calibrated stacking
(evaluate stacking) can fit its bias on unseen combinations that are not
the test's.

A spec is ``head=value+head=value;head=value+...`` or the path of a text file
with one combination per line (same syntax, ``#`` starts a comment).

A record is removed when it *may* carry a combination: on every head of the
combination it is labelled with that value or its label is missing. A blank
cell may hide the held-out value (an image of the held-out pair with one label
left blank is still an image of that pair), so it is removed too; the count of
such rows is reported apart.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib

HOLDOUT_FILE = "holdout.json"


class CombinationError(errors.MlcError):
  """A combination spec that does not fit the schema; names the flag or file,
  the entry and the value."""


@dataclasses.dataclass(frozen=True)
class Combination:
  """Head values that go together: ((head, class index), ...)."""

  values: tuple[tuple[str, int], ...]

  def name(self, schema: heads_lib.LabelSchema) -> str:
    return "+".join(f"{h}={schema.head(h).classes[v]}" for h, v in self.values)


def _entries(spec: str, origin: str) -> list[tuple[str, str]]:
  """(where, text) of each combination in ``spec`` (a path or inline)."""
  if os.path.isfile(spec):
    with open(spec, encoding="utf-8") as f:
      lines = f.read().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
      text = line.split("#", 1)[0].strip()
      if text:
        out.append((f"{origin}={spec}:{i}", text))
    return out
  if os.sep in spec or spec.endswith((".txt", ".csv")):
    raise CombinationError(f"{origin}={spec}: no such file")
  return [(f"{origin}: entry {i} {text.strip()!r}", text.strip())
          for i, text in enumerate(spec.split(";"), 1) if text.strip()]


def parse(spec: Optional[str], schema: heads_lib.LabelSchema,
          origin: str = "`holdout_combinations`") -> tuple[Combination, ...]:
  """The combinations of ``spec`` (see the module docstring); () for none.

  Raises:
    CombinationError: naming ``origin`` (and the file line), the entry and
      what is wrong with it.
  """
  if not spec or not spec.strip():
    return ()
  combos = []
  entries = _entries(spec, origin)
  if not entries:
    raise CombinationError(f"{origin}={spec}: no combination given")
  for where, text in entries:
    values = []
    for part in text.split("+"):
      head, sep, value = (s.strip() for s in part.partition("="))
      if not sep or not head or not value:
        raise CombinationError(
            f"{where}: {part.strip()!r} is not head=value (a combination is "
            "head=value+head=value)")
      if head not in schema.names:
        raise CombinationError(
            f"{where}: {head!r} is not a head (heads: {', '.join(schema.names)})")
      spec_h = schema.head(head)
      if not spec_h.kind_impl.single_label:
        raise CombinationError(
            f"{where}: {head!r} is a {spec_h.kind_impl.noun}; combinations "
            "are of single-label heads' values")
      if any(h == head for h, _ in values):
        raise CombinationError(f"{where}: head {head!r} appears twice")
      try:
        values.append((head, spec_h.index(value)))
      except heads_lib.SchemaError as e:
        raise CombinationError(f"{where}: {e}") from None
    if len(values) < 2:
      raise CombinationError(
          f"{where}: a combination needs values of at least two heads (one "
          "value alone would leave that value untrained)")
    # In schema order, so that one combination written two ways is equal.
    values.sort(key=lambda hv: schema.names.index(hv[0]))
    combos.append(Combination(tuple(values)))
  return tuple(combos)


def head_labels(records, schema: heads_lib.LabelSchema) -> dict[str, np.ndarray]:
  """{single-label head: [N] class index, -1 = missing} of manifest
  records."""
  slices = schema.label_slices()
  return {h.name: np.asarray(records.labels[:, slices[h.name].start])
          for h in schema.heads if h.kind_impl.single_label}


def carries(labels: Mapping[str, np.ndarray],
            combos: Sequence[Combination]) -> tuple[np.ndarray, np.ndarray]:
  """([N] bool: labelled with every value of some combination, [N] bool: may
  carry one, i.e. labelled with it or missing on each of its heads)."""
  n = len(next(iter(labels.values())))
  sure, maybe = np.zeros(n, bool), np.zeros(n, bool)
  for combo in combos:
    all_on, all_possible = np.ones(n, bool), np.ones(n, bool)
    for head, v in combo.values:
      y = np.asarray(labels[head])
      all_on &= y == v
      all_possible &= (y == v) | (y == heads_lib.MISSING)
    sure |= all_on
    maybe |= all_possible
  return sure, maybe


def remove(records, schema: heads_lib.LabelSchema,
           combos: Sequence[Combination]) -> tuple[object, dict]:
  """(``records`` without any row that may carry one of ``combos``,
  {"labelled": rows removed labelled with a combination, "blank": rows
  removed because a blank label may hide one})."""
  if not combos or records is None or not len(records):
    return records, {"labelled": 0, "blank": 0}
  sure, maybe = carries(head_labels(records, schema), combos)
  return records.take(~maybe), {"labelled": int(sure.sum()),
                                "blank": int((maybe & ~sure).sum())}


def check_absent(records, schema: heads_lib.LabelSchema,
                 combos: Sequence[Combination], where: str) -> None:
  """Raises AssertionError naming the first row of ``records`` (its manifest
  line) that may carry one of ``combos``: the guarantee the split gives,
  checked on the records that are fed, not assumed from the filter."""
  if not combos or records is None or not len(records):
    return
  _, maybe = carries(head_labels(records, schema), combos)
  if maybe.any():
    i = int(np.flatnonzero(maybe)[0])
    raise AssertionError(
        f"{where}: {records.origin}:{records.lines[i]} may carry a held-out "
        f"combination ({int(maybe.sum())} rows)")


def split(train, val, schema: heads_lib.LabelSchema,
          holdout: Sequence[Combination],
          calibration: Sequence[Combination]) -> tuple[object, object, dict]:
  """(train, val, report): ``holdout`` removed from both, ``calibration``
  from training only, each checked on the result. ``report`` is what the
  run records in holdout.json."""
  train, from_train = remove(train, schema, tuple(holdout) + tuple(calibration))
  val, from_val = remove(val, schema, holdout)
  check_absent(train, schema, tuple(holdout) + tuple(calibration),
               "training data")
  check_absent(val, schema, holdout, "validation data")
  report = {"holdout": [c.name(schema) for c in holdout],
            "calibration": [c.name(schema) for c in calibration],
            "removed": {"train": from_train, "val": from_val},
            "kept": {"train": len(train) if train is not None else 0,
                     "val": len(val) if val is not None else 0}}
  return train, val, report


# --calibration_combinations=auto: the share of the training data's
# combinations left out of training for the stacking fit.
AUTO = "auto"
AUTO_SHARE = 0.05


def auto_calibration(train, val, schema: heads_lib.LabelSchema,
                     heads: Sequence[str], seed: int,
                     exclude: Sequence[Combination] = (),
                     share: float = AUTO_SHARE) -> tuple[Combination, ...]:
  """Calibration combinations of ``heads`` picked from the data itself:
  about ``share`` of the combinations labelled in ``train`` (at least one),
  each also labelled in ``val`` (the stacking fit needs its images) and
  none of ``exclude`` (the held-out ones). Drawn in a seeded order; a
  candidate is taken only if, with every combination taken so far removed
  (blank cells that may hide one included, as ``remove`` does), each value
  of each of ``heads`` keeps a training row labelled with it, so that no
  value leaves training. Deterministic in ``seed``.

  Raises:
    CombinationError: no combination qualifies (too few heads, no
      validation data, or every candidate would take a value's last row).
  """
  heads = list(dict.fromkeys(heads))
  if len(heads) < 2:
    raise CombinationError(
        "`calibration_combinations`=auto picks combinations of the "
        "`factor_heads`: declare at least two")
  if val is None or not len(val):
    raise CombinationError(
        "`calibration_combinations`=auto needs validation data (the "
        "stacking fit's images of the calibration combinations)")
  train_y, val_y = head_labels(train, schema), head_labels(val, schema)

  def present(labels):
    y = np.stack([labels[h] for h in heads], axis=1)
    return {tuple(r) for r in y[(y != heads_lib.MISSING).all(axis=1)]}

  excluded = {tuple(dict(c.values).get(h) for h in heads) for c in exclude}
  candidates = sorted((present(train_y) & present(val_y)) - excluded)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(candidates))
  want = max(1, int(round(share * len(present(train_y)))))
  chosen = []
  kept = np.ones(len(train), bool)
  for i in order:
    if len(chosen) == want:
      break
    combo = Combination(tuple(zip(heads, map(int, candidates[i]))))
    _, maybe = carries(train_y, [combo])
    left = kept & ~maybe
    if all(np.isin(np.arange(schema.head(h).num_classes),
                   train_y[h][left]).all() for h in heads):
      chosen.append(combo)
      kept = left
  if not chosen:
    raise CombinationError(
        "`calibration_combinations`=auto: no combination of "
        f"{'+'.join(heads)} can leave training without taking a value's "
        "last training row")
  chosen.sort(key=lambda c: c.values)
  return tuple(chosen)


# Combination-balanced oversampling repeats a row at most this many times: a
# pair seen on 5 images is not worth 150 copies of the same 5 pictures.
MAX_REPEAT = 10


def balance(records, schema: heads_lib.LabelSchema, heads: Sequence[str],
            origin: str = "`balance_combinations`") -> tuple[object, dict]:
  """(records, report): each row whose ``heads`` are all labelled repeated
  round(largest group / its group) times (at most MAX_REPEAT), a group being
  the rows of one combination of values of ``heads``, so that every
  combination present is drawn about equally often; rows with a blank on
  one of the heads are kept once. Deterministic (no draw): exact resume and
  the shuffle are untouched, an epoch is just longer.

  Raises:
    CombinationError: fewer than two heads, or one that is not a softmax
      head of ``schema``.
  """
  heads = list(dict.fromkeys(heads))
  for h in heads:
    if h not in schema.names or not schema.head(h).kind_impl.single_label:
      raise CombinationError(
          f"{origin}: {h!r} is not a single-label head (heads: "
          f"{', '.join(n for n in schema.names if schema.head(n).kind_impl.single_label)})")
  if len(heads) < 2:
    raise CombinationError(f"{origin}: name at least two heads, got {heads}")
  labels = head_labels(records, schema)
  y = np.stack([labels[h] for h in heads], axis=1)
  full = (y != heads_lib.MISSING).all(axis=1)
  groups, inverse, counts = np.unique(y[full], axis=0, return_inverse=True,
                                      return_counts=True)
  repeat = np.ones(len(records), np.int64)
  factor = np.minimum(np.rint(counts.max() / counts), MAX_REPEAT).astype(np.int64)
  repeat[full] = np.maximum(factor[inverse.reshape(-1)], 1)
  idx = np.repeat(np.arange(len(records)), repeat)
  balanced = type(records)(tuple(records.paths[i] for i in idx),
                           records.labels[idx],
                           tuple(records.lines[i] for i in idx), records.origin)
  return balanced, {"heads": heads, "groups": int(len(groups)),
                    "rows": len(records), "rows_balanced": int(len(idx)),
                    "max_repeat": int(repeat.max())}
