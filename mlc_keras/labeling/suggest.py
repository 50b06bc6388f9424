"""What to label next, and pseudo-labels: the library under the suggest CLI.

Every blank cell of a pool manifest is an (image, head) pair a label could
fill. Each is scored by how unsure the model's (calibrated) head is on that
image -- uncertainty sampling, the baseline query strategy of active
learning (B. Settles, "Active Learning Literature Survey", University of
Wisconsin-Madison CS Technical Report 1648, 2009, section 3.1):

  margin   1 - (p1 - p2), p1 and p2 the two highest class probabilities
           (margin sampling, Scheffer et al. 2001). Default: it looks at the
           decision the label would settle, and does not grow with the number
           of classes, so heads of different widths compare on one scale.
  entropy  -sum p log p / log k, the Shannon entropy normalised by its
           maximum for the head's k classes (also in [0, 1]).

Cells are ranked by score, highest first (ties: manifest order, then head
order), and the top ``budget`` are suggested. A labelled cell is never
scored. The probabilities should be calibrated (evaluate with ``calibrate``
writes calibrated.keras, which the CLI uses when current): temperature
scaling changes margins and entropies, and so the ranking across heads.

Pseudo-labels: a blank cell whose top calibrated probability is at least
``threshold`` gets that class, for a second round of training. They are
told apart from human labels by a sidecar file (PSEUDO_SUFFIX) that lists
every filled cell: line, image, head, class, confidence; the manifest itself
stays a plain manifest that train reads as it is.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib

RULES = ("margin", "entropy")
# <manifest stem> + this: the cells of a pseudo-labelled manifest that the
# model, not a person, filled.
PSEUDO_SUFFIX = ".pseudo_cells.csv"
# <suggestions stem> + this: the ranked list of cells to fill.
CELLS_SUFFIX = ".cells.csv"


def uncertainty(probs: np.ndarray, rule: str = "margin") -> np.ndarray:
  """[N, k] class probabilities -> [N] scores in [0, 1], higher = less sure
  (see the module docstring)."""
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"expected [N, k>=2] probabilities, got {p.shape}")
  if rule == "margin":
    top2 = -np.sort(-p, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])
  if rule == "entropy":
    safe = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(safe)).sum(axis=1) / np.log(p.shape[1])
  raise errors.SettingError(f"`rule` must be one of {RULES}, got {rule!r}")


@dataclasses.dataclass(frozen=True)
class Cell:
  row: int  # index into the pool's records
  head: str
  score: float


def rank_cells(probs: Mapping[str, np.ndarray], labels: np.ndarray,
               schema: heads_lib.LabelSchema, budget: int,
               rule: str = "margin",
               heads: Optional[Sequence[str]] = None) -> list[Cell]:
  """The ``budget`` most uncertain blank cells. ``labels``: [N, heads]
  (MISSING = blank) in schema order; ``probs``: {head: [N, k]};
  ``heads``: only these heads (default: all)."""
  if budget < 1:
    raise errors.SettingError(f"`budget` must be >= 1, got {budget}")
  names = list(heads) if heads else list(schema.names)
  for n in names:
    schema.head(n)
  cells = []
  for name in names:
    j = schema.names.index(name)
    scores = uncertainty(probs[name], rule)
    blank = np.flatnonzero(labels[:, j] == heads_lib.MISSING)
    cells += [(-scores[i], int(i), names.index(name)) for i in blank]
  # Sorted on (-score, row, head position): a stable, documented tie order.
  cells.sort()
  return [Cell(row, names[h], -neg) for neg, row, h in cells[:budget]]


def pseudo_labels(probs: Mapping[str, np.ndarray], labels: np.ndarray,
                  schema: heads_lib.LabelSchema, threshold: float
                  ) -> list[tuple[int, str, int, float]]:
  """(row, head, class index, confidence) for every blank cell whose top
  probability is >= threshold; labelled cells are never touched."""
  if not 0.0 < threshold <= 1.0:
    raise errors.SettingError(
        f"`pseudo_label_threshold` must be in (0, 1], got {threshold}")
  out = []
  for j, h in enumerate(schema.heads):
    p = np.asarray(probs[h.name])
    top, conf = p.argmax(axis=1), p.max(axis=1)
    for i in np.flatnonzero((labels[:, j] == heads_lib.MISSING)
                            & (conf >= threshold)):
      out.append((int(i), h.name, int(top[i]), float(conf[i])))
  out.sort(key=lambda t: (t[0], schema.names.index(t[1])))
  return out


def pseudo_label_accuracy(probs: np.ndarray, labels: np.ndarray,
                          threshold: float) -> dict:
  """How pseudo-labels at ``threshold`` would fare on cells a person did
  label (held-out data): the share of labelled cells that would be filled
  (coverage) and how many of those the model gets right (accuracy; None
  when no cell reaches the threshold)."""
  labels = np.asarray(labels)
  mask = labels != heads_lib.MISSING
  p = np.asarray(probs)[mask]
  y = labels[mask]
  chosen = p.max(axis=1) >= threshold if len(y) else np.zeros(0, bool)
  right = int((p.argmax(axis=1)[chosen] == y[chosen]).sum()) if len(y) else 0
  n = int(chosen.sum())
  return {"threshold": float(threshold), "labelled": int(len(y)),
          "pseudo_labelled": n,
          "coverage": n / len(y) if len(y) else None,
          "accuracy": right / n if n else None}


# --- the pool manifest as rows of text ------------------------------------------


def read_rows(path: str) -> tuple[list[str], dict[int, list[str]]]:
  """(header, {file line: cells}) of a manifest, as manifest.read_images
  numbers its lines, so records map back to their raw cells (paths written
  back as the pool has them, other columns kept)."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = list(csv.reader(f))
  return [c.strip() for c in rows[0]], {i + 1: r for i, r in enumerate(rows)}


def _write_csv(path: str, header: Sequence[str], rows) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  os.replace(tmp, path)


def stem(path: str) -> str:
  return path[:-4] if path.lower().endswith(".csv") else path


def write_suggestions(path: str, pool: str, lines: Sequence[int],
                      image_column: str, cells: Sequence[Cell],
                      rule: str) -> str:
  """Writes the annotators' manifest and its cell list; returns the list's
  path.

  ``path``: the pool's header and, for each image with a suggested cell (in
  the order of its most uncertain cell), the pool's row as it is: its
  labelled cells filled, the suggested ones blank to fill. Filled in, it is
  a manifest train reads. ``<stem>.cells.csv``: rank, line, image, head,
  score and rule of each suggested cell, most uncertain first.
  """
  header, raw = read_rows(pool)
  col = {n: i for i, n in enumerate(header)}
  order = list(dict.fromkeys(c.row for c in cells))
  _write_csv(path, header, [raw[lines[r]] for r in order])
  cells_path = stem(path) + CELLS_SUFFIX
  _write_csv(cells_path, ["rank", "line", image_column, "head", "score", "rule"],
             [[k + 1, lines[c.row], raw[lines[c.row]][col[image_column]],
               c.head, f"{c.score:.6f}", rule] for k, c in enumerate(cells)])
  return cells_path


def write_pseudo(path: str, pool: str, lines: Sequence[int],
                 image_column: str, schema: heads_lib.LabelSchema,
                 filled: Sequence[tuple[int, str, int, float]]) -> str:
  """Writes the pool with the ``filled`` cells (pseudo_labels) set to their
  class, and the sidecar listing each of them by its line in the new file;
  returns the sidecar's path."""
  header, raw = read_rows(pool)
  col = {n: i for i, n in enumerate(header)}
  rows = {line: list(r) for line, r in raw.items() if line > 1}
  marks = []
  for row, head, cls, conf in filled:
    line = lines[row]
    value = schema.head(head).classes[cls]
    rows[line][col[head]] = value
    marks.append([line, rows[line][col[image_column]], head, value,
                  f"{conf:.6f}"])
  kept = [line for line, r in sorted(rows.items()) if any(c.strip() for c in r)]
  # Blank rows are dropped, so the sidecar names the new file's own lines.
  new_line = {line: k + 2 for k, line in enumerate(kept)}
  for m in marks:
    m[0] = new_line[m[0]]
  _write_csv(path, header, [rows[line] for line in kept])
  marks_path = stem(path) + PSEUDO_SUFFIX
  _write_csv(marks_path, ["line", image_column, "head", "class", "confidence"],
             marks)
  return marks_path


def read_pseudo_marks(path: str) -> set[tuple[int, str]]:
  """{(line, head)} of the cells a pseudo-labelled manifest's sidecar says
  the model filled (the manifest's own line numbers)."""
  with open(stem(path) + PSEUDO_SUFFIX, newline="", encoding="utf-8") as f:
    return {(int(r["line"]), r["head"]) for r in csv.DictReader(f)}


# --- the CLI's whole job ----------------------------------------------------------


@dataclasses.dataclass
class Outcome:
  model: str  # the .keras file used
  calibrated: bool
  blank_cells: int
  suggested: list  # [Cell]
  suggestions: Optional[str] = None
  cells: Optional[str] = None
  pseudo: Optional[str] = None
  pseudo_cells: Optional[str] = None
  pseudo_count: int = 0


def suggest(model_dir: str, manifest: str, budget: int, output: str, *,
            rule: str = "margin", heads: Sequence[str] = (),
            pseudo_label_threshold: Optional[float] = None,
            pseudo_output: Optional[str] = None, image_column: str = "image",
            batch_size: int = 32, chunk: int = 512) -> Outcome:
  """Scores every blank cell of the pool ``manifest`` with the model of
  ``model_dir`` (calibrated.keras when current, as export picks it), writes
  the ``budget`` most uncertain to ``output`` (write_suggestions) and, with
  a threshold, the pseudo-labelled pool to ``pseudo_output``."""
  from mlc_keras.inference import files as predict_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.inference import predictors  # pylint: disable=g-import-not-at-top
  from mlc_keras.runs import folder as run_dir  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import sources  # pylint: disable=g-import-not-at-top
  if rule not in RULES:
    raise errors.SettingError(f"`rule` must be one of {RULES}, got {rule!r}")
  if pseudo_label_threshold is not None and not pseudo_output:
    raise errors.SettingError("`pseudo_label_threshold` needs `pseudo_output`")
  model_path, _ = run_dir.choose_model_file(model_dir)
  predictor = predictors.KerasPredictor(model_path)
  schema = run_dir.load_schema(model_path)
  records = manifest_lib.read_images(manifest, image_column, schema)
  # Training's image check with the run's cap, before any model call: a bad
  # file is named with its manifest line, every one at once.
  run = run_dir.run_data(model_dir) if os.path.isdir(model_dir) else None
  sources.check_images(records, level="header", max_pixels=(run or {}).get(
      "max_image_pixels", sources.MAX_IMAGE_PIXELS))
  probs = {h: [] for h in schema.names}
  for start in range(0, len(records), chunk):
    images = predict_lib.load_images(records.paths[start:start + chunk],
                                     predictor.image_size)
    out = predictor.predict(images, batch_size)
    for h in schema.names:
      probs[h].append(out[h])
  probs = {h: np.concatenate(v) for h, v in probs.items()}
  cells = rank_cells(probs, records.labels, schema, budget, rule, heads)
  result = Outcome(model_path, os.path.basename(model_path) ==
                   run_dir.CALIBRATED_FILE,
                   int((records.labels == heads_lib.MISSING).sum()), cells)
  if cells:
    result.suggestions = output
    result.cells = write_suggestions(output, manifest, records.lines,
                                     image_column, cells, rule)
  if pseudo_label_threshold is not None:
    filled = pseudo_labels(probs, records.labels, schema, pseudo_label_threshold)
    result.pseudo, result.pseudo_count = pseudo_output, len(filled)
    result.pseudo_cells = write_pseudo(pseudo_output, manifest, records.lines,
                                       image_column, schema, filled)
  return result

