"""evaluation.md: an evaluate_lib report's numbers as readable tables.

One function per section, in the order they appear: the per-head table, the
across-head numbers, each head's classes and confusion matrix, temperature
scaling, composed classes (with seen / unseen), training curves.
"""

from __future__ import annotations

from typing import Optional


def _fmt(v) -> str:
  return "-" if v is None else f"{v:.3f}"


def _or_why(entry: dict, key: str) -> str:
  """The number, or "not defined (why)"."""
  v = entry.get(key)
  if v is not None:
    return f"{v:.3f}"
  why = entry.get("not_defined", {}).get(key)
  return f"not defined ({why})" if why else "-"


def _header(report: dict) -> list[str]:
  return [f"# Evaluation of {report['model']}", "",
          f"Data: `{report['data']}` ({report['samples']} images, inference "
          "mode, labelled samples only).", ""]


def _head_table(heads: list) -> list[str]:
  lines = ["| head | labelled | accuracy | mA (bal. acc.) | top-k | macro-F1 "
           "| AP | ROC-AUC | ECE | majority |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in heads:
    if "note" in r:
      lines.append(f"| {r['head']} | 0/{r['total']} | {r['note']} "
                   "| | | | | | | |")
      continue
    topk = next((f"{v:.3f} ({k})" for k, v in r.items()
                 if k.startswith("top")), "-")
    undefined = r.get("not_defined", {})
    cells = [("not defined" if k in undefined else _fmt(r.get(k)))
             for k in ("balanced_accuracy", "average_precision", "roc_auc")]
    lines.append(
        f"| {r['head']} | {r['labelled']}/{r['total']} | {_fmt(r['accuracy'])} "
        f"| {cells[0]} | {topk} | {_fmt(r['macro_f1'])} | {cells[1]} "
        f"| {cells[2]} | {_fmt(r['ece'])} | {_fmt(r['majority'])} |")
  reasons = [f"- {r['head']}: {k} not defined: {why}"
             for r in heads if "note" not in r
             for k, why in r.get("not_defined", {}).items()]
  return lines + ([""] + reasons if reasons else [])


def _across(across: Optional[dict]) -> list[str]:
  if not across:
    return []
  inst = across["instance"]
  lines = ["", "## Across heads", "",
           f"- mean balanced accuracy (mA) over "
           f"{len(across['heads_in_mean'])} head(s): "
           f"{_or_why(across, 'mean_balanced_accuracy')}",
           f"- instance-based, {inst['images']} image(s) with a labelled head "
           "(two-class head = one attribute, its second class; k-class head = "
           "k one-hot attributes):"]
  if inst.get("accuracy") is None:
    lines.append(f"  not defined ({inst['not_defined']['instance']})")
  else:
    lines.append(f"  accuracy {inst['accuracy']:.3f}, precision "
                 f"{inst['precision']:.3f}, recall {inst['recall']:.3f}, "
                 f"F1 {inst['f1']:.3f}")
  lines.append(f"- every labelled head right: "
               f"{_or_why(across, 'all_heads_right')}")
  return lines


def _head_detail(r: dict) -> list[str]:
  lines = ["", f"## {r['head']}", "",
           "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
  for c, v in r["per_class"].items():
    lines.append(f"| {c} | {v['support']} | {_fmt(v['precision'])} "
                 f"| {_fmt(v['recall'])} | {_fmt(v.get('f1'))} |")
  lines += ["", f"Confusion matrix (rows true, columns predicted): "
            f"![{r['head']}](confusion_{r['head']}.png)", "",
            "| true \\ predicted | " + " | ".join(r["classes"]) + " |",
            "|---|" + "---|" * len(r["classes"])]
  for c, counts in zip(r["classes"], r["confusion"]):
    lines.append(f"| {c} | " + " | ".join(str(n) for n in counts) + " |")
  return lines


def _calibration(cal: Optional[dict]) -> list[str]:
  if not cal:
    return []
  lines = ["", "## Temperature scaling", "",
           f"Fitted on {cal['fitted_on']}; before/after measured on "
           f"{cal['reported_on']}.", "",
           "| head | T | ECE before | ECE after | NLL before | NLL after |",
           "|---|---|---|---|---|---|"]
  for h, v in cal["heads"].items():
    lines.append(f"| {h} | {v['temperature']:.3f} | {_fmt(v.get('ece_before'))} "
                 f"| {_fmt(v.get('ece_after'))} | {_fmt(v.get('nll_before'))} "
                 f"| {_fmt(v.get('nll_after'))} |")
  return lines


def _seen_unseen(su: Optional[dict]) -> list[str]:
  if not su:
    return []
  if "training_data" not in su:
    return ["", f"Seen / unseen: not defined ({su['not_defined']['seen_unseen']})."]
  unseen = su["unseen_classes"]
  shown = ", ".join(unseen[:10]) + (" ..." if len(unseen) > 10 else "")
  return ["", f"Seen / unseen (generalised zero-shot; seen = carried by some "
          f"image of `{su['training_data']}`): {len(su['seen_classes'])} seen, "
          f"{len(unseen)} unseen ({shown or 'none'}).", "",
          "| S (seen) | U (unseen) | H | mean per-class |", "|---|---|---|---|",
          f"| {_or_why(su, 'seen')} | {_or_why(su, 'unseen')} "
          f"| {_or_why(su, 'harmonic')} | {_or_why(su, 'mean_per_class')} |"
          ] + _split_heads(su.get("heads"))


def _split_heads(heads: Optional[dict]) -> list[str]:
  """Each head's accuracy on rows of seen vs unseen classes, and the gap."""
  if not heads:
    return []
  lines = ["", "Per head, on the evaluated rows of seen vs unseen classes "
           "(gap = seen - unseen):", "",
           "| head | seen (rows) | unseen (rows) | gap |", "|---|---|---|---|"]
  for h, v in heads.items():
    lines.append(f"| {h} | {_fmt(v['seen'])} ({v['seen_rows']}) | "
                 f"{_fmt(v['unseen'])} ({v['unseen_rows']}) | {_fmt(v['gap'])} |")
  return lines


def _stacking(st: Optional[dict]) -> list[str]:
  """Calibrated stacking: gamma, where it was fitted, S / U / H with it."""
  if not st:
    return []
  fit = st["fit"]
  return ["", f"Calibrated stacking: gamma {st['gamma']:.3f} subtracted from "
          f"the seen classes' scores, fitted for the best H on "
          f"`{st['fitted_on']}` (unseen there: "
          f"{', '.join(st['fit_unseen_classes'])}; H {_fmt(fit['before']['harmonic'])}"
          f" -> {_fmt(fit['after']['harmonic'])}).", "",
          "| with stacking | S (seen) | U (unseen) | H | accuracy |",
          "|---|---|---|---|---|",
          f"| `{st['reported_on']}` | {_or_why(st, 'seen')} | "
          f"{_or_why(st, 'unseen')} | {_or_why(st, 'harmonic')} | "
          f"{_fmt(st['accuracy'])} |"]


def _composed(comp: Optional[dict]) -> list[str]:
  if not comp:
    return []
  lines = ["", "## Composed classes", "",
           f"Table `{comp['table']}`: {len(comp['classes'])} classes "
           f"(chance {comp['chance']:.3f}); {comp['evaluated']} rows "
           f"evaluated ({comp['heads_labelled']} with every table head "
           f"labelled, {comp['no_matching_class']} of them matching no "
           "class)."]
  if "note" in comp:
    return lines + ["", comp["note"]]
  lines += ["", f"Accuracy {comp['accuracy']:.3f}; with 'unknown' below "
            f"{comp['threshold']}: {comp['accuracy_with_unknown']:.3f} "
            f"(unknown rate {comp['unknown_rate']:.3f}); macro-F1 "
            f"{comp['macro_f1']:.3f}."]
  lines += _seen_unseen(comp.get("seen_unseen"))
  lines += _stacking(comp.get("stacking"))
  lines += ["", "| class | support | recall |", "|---|---|---|"]
  for c, v in comp["per_class"].items():
    lines.append(f"| {c} | {v['support']} | {_fmt(v['recall'])} |")
  return lines


def _tags(rows: list) -> list[str]:
  """evaluation.md's tag-head tables: mAP, CF1, OF1, then per tag."""
  if not rows:
    return []
  lines = ["", "## Tag heads", "",
           "| head | labelled | mAP | CP | CR | CF1 | OP | OR | OF1 |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['head']} | {r['labelled']}/{r['total']} | "
        + " | ".join(_fmt(r.get(k)) for k in
                     ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")) + " |")
  for r in rows:
    if "per_tag" not in r:
      continue
    lines += ["", f"### {r['head']}", "",
              "| tag | support | AP | threshold | precision | recall | F1 |",
              "|---|---|---|---|---|---|---|"]
    for tag, v in r["per_tag"].items():
      ap = _fmt(v["ap"]) if v["ap"] is not None else "not defined"
      lines.append(f"| {tag} | {v['support']} | {ap} | {v['threshold']:.3f} "
                   f"| {_fmt(v['precision'])} | {_fmt(v['recall'])} "
                   f"| {_fmt(v['f1'])} |")
  return lines


def markdown(report: dict) -> str:
  """evaluation.md: the report's numbers as tables."""
  # A head's row carries per-tag numbers or a confusion matrix, by kind.
  tag_rows = [r for r in report["heads"] if "per_tag" in r]
  heads = [r for r in report["heads"] if "per_tag" not in r]
  lines = _header(report) + _head_table(heads)
  lines += _across(report.get("across_heads"))
  lines += _tags(tag_rows)
  for r in heads:
    if "note" not in r:
      lines += _head_detail(r)
  lines += _calibration(report.get("calibration"))
  lines += _composed(report.get("composed"))
  if report.get("curves"):
    lines += ["", "## Training curves", "", f"![curves]({report['curves']})"]
  return "\n".join(lines) + "\n"


def pseudo_labels(section: dict) -> str:
  """The pseudo-label section evaluate --pseudo_label_threshold appends."""
  lines = ["", f"## Pseudo-labels at confidence >= {section['threshold']:g}",
           "", f"Temperatures from `{section['temperatures_from']}`; on "
           "labelled cells: the share the rule would fill, and how many of "
           "those it gets right.", "",
           "| head | labelled | would fill | coverage | accuracy |",
           "| --- | --- | --- | --- | --- |"]
  for name, r in section["heads"].items():
    lines.append(f"| {name} | {r['labelled']} | {r['pseudo_labelled']} | "
                 f"{_fmt(r['coverage'])} | {_fmt(r['accuracy'])} |")
  return "\n".join(lines) + "\n"
