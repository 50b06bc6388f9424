"""The pictures evaluate writes into a run folder (matplotlib, Agg backend).

  curves.png          one panel per head (its accuracies on the left axis,
                      its loss on the right; train solid, validation dashed)
                      and one "overall" panel (total loss, mean balanced
                      accuracy), from history.csv
  confusion_<head>.png each row (true class) as shares summing to 1, with the
                      counts where the cells have room, and a colour bar
  pr_<head>.png       a tag head's precision-recall curves (micro-average and
                      the most frequent tags), each tag's chosen threshold
                      marked on its curve

Each picture has a ``*_figure`` function that returns the matplotlib figure
(for notebooks and tests) and a ``plot_*`` function that writes it.
"""

from __future__ import annotations

import csv
import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

# history.csv's whole-model columns (train side; "val_" + these too).
TOTAL_LOSS = "loss"
MEAN_BALANCED_ACC = "mean_balanced_accuracy"
OVERALL = "overall"

# Up to this many classes a confusion cell shows its share and its count;
# above it the cells are too small to read and only the colour bar remains.
ANNOTATE_MAX_CLASSES = 12
# A tag head's PR picture draws at most this many tags (the most frequent)
# beside the micro-average: more lines than tab10 has colours blur together.
PR_MAX_TAGS = 8

# One colour per metric, the same in every panel, so one legend serves all.
_METRIC_COLOURS = {"loss": "tab:red", "acc": "tab:blue",
                   "balanced_acc": "tab:green", MEAN_BALANCED_ACC: "tab:green"}
_SPARE_COLOURS = ("tab:purple", "tab:orange", "tab:brown", "tab:pink",
                  "tab:olive", "tab:cyan")
# A per-head column without a known head list: <head>_<one of these>.
_HEAD_METRIC = re.compile(r"^(.+?)_(loss|acc|balanced_acc|top\d+)$")


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only: servers and CI have
  no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> None:
  fig.savefig(path, dpi=100)
  pyplot().close(fig)


# --- training curves ----------------------------------------------------------


def read_history(path: str) -> dict[str, list[float]]:
  """history.csv (Keras CSVLogger) -> {column: values}. A row with more or
  fewer fields than the header (two writers on one file, a cut write) is a
  ValueError naming the file and line, not a crash in the plot."""
  with open(path, newline="", encoding="utf-8") as f:
    lines = list(csv.reader(f))
  header, rows = (lines[0], lines[1:]) if lines else ([], [])
  for n, row in enumerate(rows, start=2):
    if row and len(row) != len(header):
      raise ValueError(
          f"{path} line {n}: {len(row)} fields where the header has "
          f"{len(header)}; the file is damaged (two trainings writing one "
          f"model_dir?)")
  rows = [dict(zip(header, row)) for row in rows if row]
  cols = {}
  for r in rows:
    for k, v in r.items():
      try:
        cols.setdefault(k, []).append(float(v))
      except (TypeError, ValueError):
        cols.setdefault(k, []).append(float("nan"))
  return cols


def history_panels(columns: Sequence[str],
                   heads: Optional[Sequence[str]] = None
                   ) -> dict[str, dict[str, dict[str, str]]]:
  """Groups history.csv's columns into panels: {"overall" or head: {metric:
  {"train" and/or "validation": column}}}, "overall" first, then the heads
  in ``heads`` order. Without ``heads`` they are read off the columns
  (``<head>_loss``, ``<head>_acc``, ``<head>_balanced_acc``,
  ``<head>_top<k>``) in the order they first appear. Columns that belong to
  no panel (epoch, learning_rate) are left out."""
  def split(column):
    if column.startswith("val_"):
      return "validation", column[len("val_"):]
    return "train", column

  if heads is None:
    found = {}
    # <head>_loss names a head unambiguously; the other suffixes only when
    # no such loss column claims the column.
    for c in columns:
      name = split(c)[1]
      if name.endswith("_loss"):
        found.setdefault(name[:-len("_loss")], None)
    for c in columns:
      name = split(c)[1]
      m = _HEAD_METRIC.match(name)
      if m and not any(name.startswith(h + "_") for h in found):
        found.setdefault(m.group(1), None)
    heads = list(found)
  panels = {OVERALL: {}, **{h: {} for h in heads}}
  # The longest head that prefixes a column owns it ("a_b_acc": head "a_b"
  # before head "a").
  by_length = sorted(heads, key=len, reverse=True)
  for c in columns:
    split_name, name = split(c)
    if name in (TOTAL_LOSS, MEAN_BALANCED_ACC):
      panels[OVERALL].setdefault(name, {})[split_name] = c
      continue
    head = next((h for h in by_length if name.startswith(h + "_")), None)
    if head is not None:
      metric = name[len(head) + 1:]
      panels[head].setdefault(metric, {})[split_name] = c
  return {k: v for k, v in panels.items() if v or k != OVERALL}


def _metric_colour(metric: str, spare: dict) -> str:
  if metric in _METRIC_COLOURS:
    return _METRIC_COLOURS[metric]
  if metric not in spare:
    spare[metric] = _SPARE_COLOURS[len(spare) % len(_SPARE_COLOURS)]
  return spare[metric]


def curves_figure(history: Mapping[str, Sequence[float]],
                  heads: Optional[Sequence[str]] = None):
  """(figure, {panel name: its axes}) for history_panels' panels, or
  (None, {}) when the history has no epoch. Each panel: accuracies on the
  left axis (0 to 1), the loss on a right-hand axis; train solid, validation
  dashed; epochs counted from 1 on integer ticks; one legend for the whole
  figure, below the panels."""
  epochs = history.get("epoch")
  if not epochs:
    return None, {}
  plt = pyplot()
  from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  x = np.asarray(epochs, np.float64) + 1
  panels = history_panels(list(history), heads)
  ncols = min(3, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig, grid = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                           figsize=(4.6 * ncols, 3.3 * nrows + 0.7))
  cells = list(grid.ravel())
  for ax in cells[len(panels):]:
    fig.delaxes(ax)
  marker = "o" if len(x) <= 30 else None
  spare, shown = {}, {}
  out = {}
  for ax, (name, metrics) in zip(cells, panels.items()):
    out[name] = ax
    loss_ax = None
    for metric, columns in metrics.items():
      if metric.endswith("loss"):
        loss_ax = loss_ax or ax.twinx()
        target = loss_ax
      else:
        target = ax
      colour = _metric_colour(metric, spare)
      shown[metric.replace("_", " ")
            + (" (right axis)" if target is not ax else "")] = colour
      for split_name, column in sorted(columns.items()):
        target.plot(x, history[column], color=colour, marker=marker,
                    markersize=3,
                    linestyle="--" if split_name == "validation" else "-",
                    label=f"{metric} ({split_name})")
    ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if loss_ax is not None:
      loss_ax.set_ylabel("loss")
      loss_ax.set_ylim(bottom=0)
  handles = [mlines.Line2D([], [], color=c, label=m) for m, c in shown.items()]
  handles += [mlines.Line2D([], [], color="grey", linestyle="-", label="train"),
              mlines.Line2D([], [], color="grey", linestyle="--",
                            label="validation")]
  fig.legend(handles=handles, loc="outside lower center",
             ncol=min(len(handles), 7), fontsize=8, frameon=False)
  return fig, out


def plot_history(history: Mapping[str, Sequence[float]], path: str,
                 heads: Optional[Sequence[str]] = None) -> bool:
  """Writes curves_figure to ``path``; returns False (and writes nothing)
  when there is nothing to plot (no epochs)."""
  fig, _ = curves_figure(history, heads)
  if fig is None:
    return False
  _save(fig, path)
  return True


# --- confusion matrices ---------------------------------------------------------


def normalise_confusion(cm: np.ndarray) -> np.ndarray:
  """Each row (a true class) divided by its count, so a labelled class's row
  sums to 1; a class with no labelled sample keeps a row of zeros."""
  cm = np.asarray(cm, np.float64)
  support = cm.sum(axis=1, keepdims=True)
  return np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str):
  """The figure of plot_confusion."""
  plt = pyplot()
  cm = np.asarray(cm)
  share = normalise_confusion(cm)
  n = len(classes)
  side = float(np.clip(2.5 + 0.4 * n, 4.5, 24))
  # "compressed", not "constrained": constrained layout places the axes
  # before imshow's fixed aspect narrows it, and cut the y label off the
  # figure's left edge (3 short class names, measured).
  fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="compressed")
  image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
  font = float(np.clip(300 / max(n, 1), 6, 10))
  support = cm.sum(axis=1).astype(int)
  ax.set_xticks(range(n), classes, rotation=45 if n > 3 else 0,
                ha="right" if n > 3 else "center", fontsize=font)
  # The row counts: the shares alone hide how few samples a row holds.
  ax.set_yticks(range(n), [f"{c} ({s})" for c, s in zip(classes, support)],
                fontsize=font)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true (labelled samples)")
  ax.set_title(f"{title}: rows are shares of each true class "
               f"(n={int(cm.sum())})", fontsize=10)
  if n <= ANNOTATE_MAX_CLASSES:
    for i in range(n):
      for j in range(n):
        if support[i]:
          ax.text(j, i, f"{share[i, j]:.2f}\n{int(cm[i, j])}", ha="center",
                  va="center", fontsize=font,
                  color="white" if share[i, j] > 0.5 else "black")
  return fig


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str,
                   path: str) -> None:
  """Writes a confusion matrix PNG (rows: true class, columns: predicted),
  normalised per true class (normalise_confusion), each cell annotated with
  its share and count when there are at most ANNOTATE_MAX_CLASSES classes."""
  _save(confusion_figure(cm, classes, title), path)


# --- tag heads' precision-recall curves -------------------------------------------


def threshold_point(scores: np.ndarray, truth: np.ndarray,
                    threshold: float) -> tuple[float, float]:
  """(recall, precision) of the decisions score >= threshold (compared in
  float32, as tagging.decide and scoring.tag_scores compare). It is the
  point of sklearn's precision_recall_curve at the lowest cut >= threshold;
  with no tag on, precision is 1 as at that curve's end."""
  on = np.asarray(scores, np.float32) >= np.float32(threshold)
  truth = np.asarray(truth) > 0.5
  hits, predicted, actual = int((on & truth).sum()), int(on.sum()), int(truth.sum())
  precision = hits / predicted if predicted else 1.0
  recall = hits / actual if actual else 0.0
  return float(recall), float(precision)


def pr_figure(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray,
              tags: Sequence[str], thresholds: Sequence[float], title: str):
  """The figure of plot_pr, or None when no labelled row has a positive tag.

  Lines carry ``gid`` "curve:<tag>" (and "curve:micro"); the threshold
  markers "threshold:<tag>" (and "threshold:micro", the pooled decisions at
  every tag's own threshold)."""
  mask = np.asarray(mask, bool)
  p = np.asarray(probs, np.float64)[mask]
  t = (np.asarray(truth)[mask] > 0.5).astype(np.int64)
  if not t.size or not t.any():
    return None
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7.8, 5), layout="constrained")
  precision, recall, _ = skm.precision_recall_curve(t.ravel(), p.ravel())
  ap = skm.average_precision_score(t.ravel(), p.ravel())
  ax.plot(recall, precision, color="black", linewidth=2.2, gid="curve:micro",
          label=f"micro-average (AP {ap:.2f})")
  on = (np.asarray(p, np.float32)
        >= np.asarray(thresholds, np.float32)).astype(np.int64)
  hits, predicted = int((on & t).sum()), int(on.sum())
  ax.plot([hits / t.sum()], [hits / predicted if predicted else 1.0], "D",
          color="black", markersize=8, gid="threshold:micro",
          label="each tag at its threshold (pooled)")
  support = t.sum(axis=0)
  frequent = [i for i in np.argsort(-support, kind="stable") if support[i]]
  drawn = frequent[:PR_MAX_TAGS]
  colours = plt.get_cmap("tab10").colors
  for k, i in enumerate(drawn):
    colour = colours[k % len(colours)]
    precision, recall, _ = skm.precision_recall_curve(t[:, i], p[:, i])
    ap = skm.average_precision_score(t[:, i], p[:, i])
    ax.plot(recall, precision, color=colour, linewidth=1.2,
            gid=f"curve:{tags[i]}",
            label=f"{tags[i]} (AP {ap:.2f}, n={int(support[i])}, "
                  f"threshold {thresholds[i]:.3g})")
    r, pr = threshold_point(p[:, i], t[:, i], thresholds[i])
    ax.plot([r], [pr], "o", color=colour, markeredgecolor="black",
            markersize=7, gid=f"threshold:{tags[i]}", label="_nolegend_")
  ax.plot([], [], "o", color="white", markeredgecolor="black",
          label="a tag at its threshold")
  shown = ("" if len(drawn) == len(tags) else
           f"\nthe {len(drawn)} most frequent of {len(tags)} tags and the "
           f"micro-average over all")
  ax.set_title(f"{title}: precision-recall, {int(mask.sum())} labelled "
               f"images{shown}", fontsize=10)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1.02)
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  fig.legend(loc="outside right upper", fontsize=7, frameon=False)
  return fig


def plot_pr(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray,
            tags: Sequence[str], thresholds: Sequence[float], title: str,
            path: str) -> bool:
  """Writes pr_figure to ``path``; returns False (and writes nothing) when
  no labelled row has a positive tag."""
  fig = pr_figure(probs, truth, mask, tags, thresholds, title)
  if fig is None:
    return False
  _save(fig, path)
  return True
