"""labels.json inside an exported file, so a file copied alone still names
its heads and classes (labels.json beside it stays: it is what other tools
read, and it wins when both are present). What is the same in every format
is here: the key the text is stored under and the words describing the
heads. How a file holds the text is its format module's (writing it in
the format's conversion, reading it in its predictor's _embedded_labels).
"""

from __future__ import annotations

import json
from typing import Sequence

from mlc_keras.core.kinds import registry as kinds
from mlc_keras.exporters import artefacts

# The key of the embedded labels.json in every format.
LABELS_KEY = "mlc_keras/" + artefacts.LABELS_FILE


def head_lines(labels_text: str, outputs: Sequence[str] = ()) -> list[str]:
  """One line per head of labels.json (its kind's words, its classes) and
  one for the composed "class" output when ``outputs`` has it, for a reader
  of the file who has no labels.json."""
  lines = []
  for head in json.loads(labels_text).get("heads", []):
    what = kinds.get(head.get("kind", "softmax"), head.get("name")).description
    lines.append(f"  {head['name']}: {what} over "
                 + ", ".join(str(c) for c in head["classes"]))
  if "class" in outputs:
    lines.append("  class: the class table's classes (classes.csv), composed "
                 "from the heads")
  return lines
