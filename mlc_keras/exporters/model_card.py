"""The model card written with every export (Markdown): what the model
answers, on what it was trained, how well, how its artefacts agree, and what
it does not do. Everything in it is read from the run folder (labels.json,
config.json, results.json, evaluation.json when evaluate ran) and the export
(the model's temperatures, the parity reports); a missing source is said,
never guessed.

Written to <export base>/model_card/<model name>/<version>.md.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import formats as formats_lib
from mlc_keras.runs import folder as run_dir

FOLDER = "model_card"
# A head validated on fewer labelled samples than this is flagged.
FEW_LABELS = 50

_LIMITS = [
    "Images are resized to the input size without keeping their aspect ratio; "
    "EXIF orientation is not applied; an alpha channel is dropped, not "
    "composited; a GIF gives its first frame; animated WebP is refused.",
    "Each head only knows its listed classes: an image of anything else still "
    "gets one of them (look at the score, or compose with a threshold).",
    "The numbers below are on the run's validation data; they hold for images "
    "like it, not for a different camera, domain or class balance.",
    "Labels were partial: a head is only as good as the images labelled for "
    "it (see the coverage table).",
]


def _read_json(path: str) -> Optional[dict]:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def label_coverage(model_dir: str, schema: heads_lib.LabelSchema
                   ) -> tuple[Optional[str], Optional[dict]]:
  """(training manifest, {head: {"labelled": n, "rows": N, "classes":
  {class: n}}}) from the run's config.json, or (why not, None) for a
  TFRecord / TFDS run or a manifest no longer on this machine."""
  from mlc_keras.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  data = run_dir.run_data(model_dir)
  if data is None:
    return f"no {run_dir.CONFIG_FILE} in {model_dir}", None
  path = data.get("manifest")
  demo = run_dir.demo_dir(data)
  if not path and demo:
    path = os.path.join(demo, "train.csv")
  if not path or not os.path.isfile(path):
    return ("the training data is not a manifest on this machine "
            f"({path or 'TFRecord / TFDS source'})"), None
  try:
    records = manifest_lib.read_images(
        path, data.get("image_column", "image"), schema)
  except manifest_lib.DataError as e:
    return f"the training manifest cannot be read for coverage: {e}", None
  coverage = {}
  for h, cols in zip(schema.heads, schema.label_slices().values()):
    col = records.labels[:, cols.start]
    # Rows of each class (a tag head: carrying each tag), labelled ones only.
    counts = h.kind_impl.counts(h, records.labels[:, cols])
    coverage[h.name] = {"labelled": int((col >= 0).sum()),
                        "rows": int(len(col)),
                        "classes": dict(zip(h.classes, map(int, counts)))}
  return path, coverage


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.3f}"
  return str(v)


def _heads_section(schema, coverage, source) -> list[str]:
  lines = ["## Heads and classes", "",
           "| head | classes (output order) | labelled in training |",
           "| --- | --- | --- |"]
  for h in schema.heads:
    if coverage:
      c = coverage[h.name]
      share = f"{c['labelled']} of {c['rows']} rows ({c['labelled'] / max(c['rows'], 1):.0%}): " + ", ".join(
          f"{k} {n}" for k, n in c["classes"].items())
    else:
      share = "-"
    lines.append(f"| {h.name} | {', '.join(h.classes)} | {share} |")
  lines += ["", f"Training data: `{source}` (rows before any validation "
            "split)." if coverage else
            f"Label coverage: not available ({source})."]
  return lines


def _validation_section(results, evaluation) -> list[str]:
  lines = ["", "## Validation"]
  if not results:
    return lines + ["", "No results.json in the run folder."]
  lines += ["", f"On `{results.get('evaluated_on')}` (inference mode, labelled "
            "samples only), from results.json:", "",
            "| head | labelled | accuracy | note |", "| --- | --- | --- | --- |"]
  for r in results.get("heads", []):
    note = r.get("note") or ""
    if isinstance(r.get("labelled"), int) and r["labelled"] < FEW_LABELS:
      note = (note + "; " if note else "") + (
          f"fewer than {FEW_LABELS} labelled: the accuracy is noisy")
    lines.append(f"| {r.get('head')} | {_fmt(r.get('labelled'))} | "
                 f"{_fmt(r.get('accuracy'))} | {note} |")
  if evaluation:
    lines += ["", f"`evaluate` also reported on `{evaluation.get('data')}` "
              "(evaluation.md in the run folder has every number):", ""]
    for r in evaluation.get("heads", []):
      extras = {k: v for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
      lines.append(f"- {r.get('head', r.get('name'))}: " + ", ".join(
          f"{k} {_fmt(v)}" for k, v in sorted(extras.items())))
  grown = results.get("init_from")
  if grown:
    lines += ["", f"Initialised from `{grown['model']}`: " + ", ".join(
        f"{k} {v['status']}" for k, v in grown["heads"].items()) + "."]
  return lines


def _calibration_section(temperatures: Mapping[str, float],
                         evaluation) -> list[str]:
  lines = ["", "## Calibration", ""]
  if not temperatures:
    lines.append("Not calibrated: scores are the raw softmax (calibrate the "
                 "run with evaluate, then export again).")
  else:
    lines.append("Temperature-scaled per head (inside every artefact): " +
                 ", ".join(f"{k} T={v:.3f}" for k, v in sorted(
                     temperatures.items())) + ".")
  cal = (evaluation or {}).get("calibration")
  if isinstance(cal, dict):
    lines.append("")
    lines.append("From evaluate --calibrate: `" + json.dumps(
        {k: v for k, v in cal.items() if not isinstance(v, (dict, list))})
                 + "`.")
  return lines


def _parity_section(reports: Sequence[dict]) -> list[str]:
  lines = ["", "## Parity of the artefacts with the Keras model", "",
           "| artefact | images | passed | worst max abs diff | lowest top-1 "
           "agreement |", "| --- | --- | --- | --- | --- |"]
  for r in reports:
    outs = r.get("outputs", {}).values()
    diffs = [o["max_abs_diff"] for o in outs if o.get("max_abs_diff") is not None]
    agree = [o["top1_agreement"] for o in outs
             if o.get("top1_agreement") is not None]
    lines.append(f"| {r['artefact']} | {r['images']} | "
                 f"{'yes' if r['passed'] else 'NO'} | "
                 f"{_fmt(max(diffs) if diffs else None)} | "
                 f"{_fmt(min(agree) if agree else None)} |")
  return lines


def _input_text(image_size: int, max_image_bytes: int,
                max_image_pixels: int) -> str:
  """What each format takes, in the words of the format (card_input)."""
  said = [(f.title, f.card_input(max_image_bytes, max_image_pixels))
          for f in formats_lib.registered()]
  pixels = [title for title, words in said if words == ""]
  if len(pixels) > 1:
    subject = ", ".join(pixels[:-1]) + " and " + pixels[-1] + " take"
  else:
    subject = (pixels[0] if pixels else "Every format") + " takes"
  return (f"RGB images. {subject} uint8 pixels [N, {image_size}, "
          f"{image_size}, 3] (0-255, preprocessing inside)"
          + "".join(f"; the {title} also takes {words}"
                    for title, words in said if words) + ".")


def render(*, model_name: str, version: int, model_file: str,
           schema: heads_lib.LabelSchema, image_size: int,
           temperatures: Mapping[str, float], reports: Sequence[dict],
           results: Optional[dict], evaluation: Optional[dict],
           coverage: Optional[dict], coverage_source: Optional[str],
           max_image_bytes: int, max_image_pixels: int) -> str:
  """The card's Markdown text."""
  lines = [f"# Model card: {model_name}, version {version}", "",
           f"Exported from `{model_file}`. One image in, one answer per head "
           f"({len(schema)} heads), each a softmax over its classes (a tag head: "
           "independent sigmoids over its tags).", "",
           "## Intended input", "",
           _input_text(image_size, max_image_bytes, max_image_pixels), ""]
  lines += _heads_section(schema, coverage, coverage_source)
  lines += _validation_section(results, evaluation)
  lines += _calibration_section(temperatures, evaluation)
  lines += _parity_section(reports)
  lines += ["", "## Known limits", ""] + [f"- {l}" for l in _LIMITS]
  return "\n".join(lines) + "\n"


def write(path: str, folder: str, *, model, schema, model_name: str,
          version: int, model_file: str, reports: Sequence[dict],
          max_image_bytes: int, max_image_pixels: int) -> str:
  """Gathers the card's sources from the run ``folder`` and ``model`` and
  writes it to ``path``."""
  from mlc_keras.modeling import outputs  # pylint: disable=g-import-not-at-top
  source, coverage = label_coverage(folder, schema)
  text = render(
      model_name=model_name, version=version, model_file=model_file,
      schema=schema, image_size=run_dir.image_size_of(model),
      temperatures=outputs.temperatures_of(model), reports=reports,
      results=_read_json(os.path.join(folder, run_dir.RESULTS_FILE)),
      evaluation=_read_json(os.path.join(folder, "evaluation.json")),
      coverage=coverage, coverage_source=source,
      max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path
