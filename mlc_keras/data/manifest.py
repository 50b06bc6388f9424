"""Manifest CSVs: an image path column and one column per head -> Records.

The first stage of the data flow, and the one every entry point shares:
training and evaluation read labelled manifests with read_manifest, export
and predict read the image column (labels optional) with read_images. Both
apply the same rules, so a manifest training accepts is read the same way
everywhere: UTF-8 (a BOM is fine), stripped, uniquely named header cells,
every row as wide as the header, blank rows skipped, relative paths against
the manifest's folder. Errors name the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import folders


class DataError(errors.MlcError):
  """Input data that cannot be used; the message names the file and row."""


@dataclasses.dataclass(frozen=True)
class Records:
  """Image paths and their labels, int32 [N, schema.label_width]: a softmax
  head's column holds its class index, a tag head's columns (see
  LabelSchema.label_slices) its 0/1 tags; -1 = missing (every column of a
  tag head at once)."""

  paths: tuple[str, ...]
  labels: np.ndarray
  # The manifest line of each record, for error messages.
  lines: tuple[int, ...]
  origin: str

  def __len__(self) -> int:
    return len(self.paths)

  def take(self, mask: np.ndarray) -> "Records":
    idx = np.flatnonzero(mask)
    return Records(tuple(self.paths[i] for i in idx), self.labels[idx],
                   tuple(self.lines[i] for i in idx), self.origin)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One unusable manifest row: where it is and why."""

  origin: str
  line: int
  path: str
  reason: str


@dataclasses.dataclass(frozen=True)
class _Table:
  path: str
  header: list[str]
  column: dict[str, int]
  # (1-based file line, cells) of every non-blank row after the header.
  body: list[tuple[int, list[str]]]

  def cells(self, name: str) -> list[str]:
    return [r[self.column[name]].strip() for _, r in self.body]


def read_manifest(path: str,
                  schema: Optional[heads_lib.LabelSchema] = None,
                  image_column: str = "image",
                  label_columns: Optional[Sequence[str]] = None,
                  image_root: Optional[str] = None,
                  quarantine: Optional[list] = None,
                  tag_columns: Sequence[str] = (),
                  ) -> tuple[Records, heads_lib.LabelSchema]:
  """Reads a labelled CSV manifest: an image path column and one column per head.

  Relative image paths resolve against the manifest's folder. A blank cell is
  a missing label. Without a ``schema`` one is inferred (sorted distinct
  values of each label column); with one, its heads must all be columns and
  every non-blank value must be one of its classes.

  Args:
    path: the CSV file.
    schema: the heads to read, or None to infer them.
    image_column: name of the image path column.
    label_columns: columns to use as heads when inferring (default: all
      columns but the image column).
    image_root: if given, every image path must resolve (symlinks followed)
      inside this folder.
    quarantine: if a list, rows whose image path escapes ``image_root`` or
      repeats an earlier row are appended to it as ``Problem``s and left out,
      instead of raising.
    tag_columns: columns to infer as tag heads (cells "a|b", "(none)" or
      blank); only without a ``schema``, whose heads say their own kind.

  Returns:
    (records, schema).

  Raises:
    DataError: naming the file, line and column of the first problem.
  """
  table = _read_table(path, image_column)
  if schema is None:
    schema = _infer_schema(table, image_column, label_columns, tag_columns)
  elif tag_columns:
    raise DataError(
        f"{path}: --tag_columns {list(tag_columns)} with a heads file: say "
        "each head's kind there instead (\"kind\": \"tags\")")
  records = _records(table, image_column, schema.heads)
  keep = _screen_rows(table, image_column, records, image_root, quarantine)
  return records.take(keep), schema


def read_images(path: str, image_column: str = "image",
                schema: Optional[heads_lib.LabelSchema] = None) -> Records:
  """Reads the image paths (and, given a ``schema``, the labels) of a manifest.

  For callers that need the images of a manifest rather than a training set
  (export's calibration and parity images, predict's inputs): the same
  parsing rules as read_manifest, but no label column is required, and rows
  are neither deduplicated nor confined to an image root.

  Args:
    path: the CSV file.
    image_column: name of the image path column.
    schema: if given, its heads must be columns and their cells valid
      classes; the records then carry those labels. Without it the labels
      are an [N, 0] array.

  Returns:
    Records in file order; ``paths`` are absolute or relative to the current
    folder (relative cells resolve against the manifest's folder).

  Raises:
    DataError: naming the file (and line) of the first problem: missing or
      non-UTF-8 file, bad header, no ``image_column``, no rows, a row of the
      wrong width, a blank image cell or an unknown class.
  """
  table = _read_table(path, image_column)
  return _records(table, image_column, schema.heads if schema is not None else ())


def write_records(path: str, records: Records,
                  schema: heads_lib.LabelSchema,
                  image_column: str = "image") -> None:
  """Writes ``records`` as a manifest read_manifest reads back to the same
  paths (absolute, as records hold them) and labels: one column per head
  of ``schema`` (the schema the labels were read with), a blank cell where
  a label is missing, a tag head's tags joined by TAG_SEPARATOR."""
  slices = schema.label_slices()
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow([image_column, *schema.names])
    for p, labels in zip(records.paths, records.labels):
      row = [os.path.abspath(p)]
      for h in schema.heads:
        y = labels[slices[h.name]]
        if (y < 0).any():
          row.append("")
        else:
          row.append(h.kind_impl.cell(h, y))
      writer.writerow(row)


# --- the steps ----------------------------------------------------------------


def _read_table(path: str, image_column: str) -> _Table:
  if os.path.isdir(path):
    # An image folder (data/folders.py) stands for a manifest.
    try:
      path, rows = folders.as_rows(path, image_column)
    except folders.FolderError as e:
      raise DataError(*e.args) from None
  else:
    rows = _read_rows(path)
  header = _parse_header(path, rows)
  if image_column not in header:
    raise DataError(
        f"{path}: no image column {image_column!r}; columns are {header} "
        "(set --image_column)")
  body = [(i + 2, r) for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
  if not body:
    raise DataError(f"{path}: the manifest has a header but no rows")
  for line, r in body:
    if len(r) != len(header):
      raise DataError(
          f"{path}:{line}: {len(r)} cells, the header has {len(header)}")
  return _Table(path, header, {n: i for i, n in enumerate(header)}, body)


def _read_rows(path: str) -> list[list[str]]:
  if not os.path.isfile(path):
    raise DataError(f"{path}: manifest not found")
  try:
    # utf-8-sig: spreadsheets often save a BOM that would stick to the first
    # column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
      return list(csv.reader(f))
  except UnicodeDecodeError as e:
    with open(path, "rb") as f:
      line = f.read(e.start).count(b"\n") + 1
    raise DataError(
        f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save "
        "the manifest as UTF-8") from None


def _parse_header(path: str, rows: list[list[str]]) -> list[str]:
  if not rows or not any(cell.strip() for cell in rows[0]):
    raise DataError(f"{path}: empty manifest (no header row)")
  header = [c.strip() for c in rows[0]]
  for i, name in enumerate(header):
    if not name:
      raise DataError(
          f"{path}:1: column {i + 1} has no name (columns are {header}); name "
          "it or delete it")
    if header.index(name) != i:
      raise DataError(
          f"{path}:1: columns {header.index(name) + 1} and {i + 1} are both "
          f"named {name!r}; rename one")
  return header


def _infer_schema(table: _Table, image_column: str,
                  label_columns: Optional[Sequence[str]],
                  tag_columns: Sequence[str] = ()) -> heads_lib.LabelSchema:
  names = list(label_columns) if label_columns else [
      c for c in table.header if c != image_column]
  outside = [t for t in tag_columns if t not in names]
  if outside:
    raise DataError(
        f"{table.path}: --tag_columns {outside} are not among the label "
        f"columns {names}")
  for n in names:
    if n not in table.column:
      raise DataError(
          f"{table.path}: no column {n!r}; columns are {table.header}")
  if not names:
    raise DataError(f"{table.path}: no label columns besides {image_column!r}")
  try:
    return heads_lib.LabelSchema.infer({n: table.cells(n) for n in names},
                                       tag_columns)
  except heads_lib.SchemaError as e:
    raise DataError(f"{table.path}: {e}") from None


def _records(table: _Table, image_column: str,
             heads: Sequence[heads_lib.HeadSpec]) -> Records:
  missing = [h.name for h in heads if h.name not in table.column]
  if missing:
    raise DataError(
        f"{table.path}: head(s) {missing} from the heads file are not columns "
        f"of the manifest (columns: {table.header})")
  root = os.path.dirname(os.path.abspath(table.path))
  starts = np.cumsum([0] + [h.width for h in heads])
  labels = np.full((len(table.body), starts[-1]), heads_lib.MISSING, np.int32)
  paths = []
  for j, (line, r) in enumerate(table.body):
    cell = r[table.column[image_column]].strip()
    if not cell:
      raise DataError(f"{table.path}:{line}: blank {image_column!r} cell")
    paths.append(cell if os.path.isabs(cell) else os.path.join(root, cell))
    for k, head in enumerate(heads):
      value = r[table.column[head.name]].strip()
      if value:
        labels[j, starts[k]:starts[k + 1]] = _label(table.path, line, head,
                                                    value)
  return Records(tuple(paths), labels, tuple(l for l, _ in table.body),
                 table.path)


def _label(path: str, line: int, head: heads_lib.HeadSpec,
           value: str) -> int | list[int]:
  try:
    return head.parse(value)
  except heads_lib.SchemaError as e:
    raise DataError(
        f"{path}:{line}: column {head.name!r}: {e}. The classes come "
        "from --heads_file or the training manifest: fix the cell, or "
        "list the class in a --heads_file and train again") from None


def _screen_rows(table: _Table, image_column: str, records: Records,
                 image_root: Optional[str],
                 quarantine: Optional[list]) -> np.ndarray:
  """Which rows to keep: an image outside ``image_root`` or seen on an
  earlier row either raises or, with a quarantine list, is left out."""
  real_root = os.path.realpath(image_root) if image_root else None
  cells = table.cells(image_column)
  first_line, keep = {}, []
  for cell, full, line in zip(cells, records.paths, records.lines):
    real = os.path.realpath(full)
    problem = None
    if real_root and os.path.commonpath([real_root, real]) != real_root:
      problem = f"resolves to {real}, outside --image_root {real_root}"
    elif real in first_line:
      problem = f"same image as line {first_line[real]}"
    else:
      first_line[real] = line
    if problem:
      if quarantine is None:
        raise DataError(f"{table.path}:{line}: {cell}: {problem}")
      quarantine.append(Problem(table.path, line, full, problem))
    keep.append(problem is None)
  return np.array(keep, bool)
