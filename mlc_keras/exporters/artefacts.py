"""What an exported artefact exposes, for whoever writes or reads one.

Every artefact takes uint8 RGB pixels [N, S, S, 3] on its input "image" and
returns one float32 [N, k] output per head, named after it. The SavedModel
also has a bytes signature (the default one) whose outputs add
"<name>_class" / "<name>_score" for the softmax heads and the composed
"class" output, and "<name>_tags" (bool per tag, at the thresholds of
labels.json) for a tag head. labels.json (and classes.csv, with a class table) sits beside each
artefact, or in a SavedModel's assets/.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from mlc_keras.core import errors

SERVING_SIGNATURE = "serving_default"  # bytes in, probabilities + labels out
TENSOR_SIGNATURE = "serve_image"  # uint8 pixels in, probabilities out
BYTES_INPUT = "image_bytes"
# The tf.Example signature (batch inference, Predict with serialized
# examples): its input and the feature holding the encoded image, the key
# the TFRecord writer (data/tfrecords.py) writes.
EXAMPLE_SIGNATURE = "serve_examples"
EXAMPLES_INPUT = "examples"
IMAGE_FEATURE = "image/encoded"
# TF Serving's Classify API: one signature per head ("classify_<head>"), with
# the method name, input and output keys its classifier requires
# (tensorflow_serving/servables/tensorflow/classifier.cc): serialized
# tf.Examples on "inputs", every class name on "classes" [N, k] and its
# probability on "scores" [N, k].
CLASSIFY_PREFIX = "classify_"
CLASSIFY_METHOD = "tensorflow/serving/classify"
CLASSIFY_INPUT = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
IMAGE_INPUT = "image"
CLASS_SUFFIX = "_class"
SCORE_SUFFIX = "_score"
# A tag head's decisions in the bytes signature: bool [N, tags], on where the
# score reaches the tag's threshold in labels.json.
TAGS_SUFFIX = "_tags"
LABELS_FILE = "labels.json"
# The class table beside an artefact with a composed "class" output.
CLASSES_FILE = "classes.csv"
CLASS_OUTPUT = "class"  # compose.CLASS_OUTPUT, without importing keras here
UNKNOWN_CLASS = "unknown"  # compose.UNKNOWN
DEFAULT_THRESHOLD = 0.5
WARMUP_FILE = "tf_serving_warmup_requests"
INSTALL_HINT = "pip install -e .[export]"


class ExportError(errors.MlcError):
  """An artefact that cannot be made or read, or whose result is wrong."""


def missing_dependency(package: str) -> ExportError:
  return ExportError(
      f"{package} is not installed; it is needed for this export format. "
      f"Install the export extras: {INSTALL_HINT}")


def parse_choices(text: str | Sequence[str], allowed: Sequence[str],
                  what: str) -> tuple[str, ...]:
  """'a,b' (or a list) -> ('a', 'b'), each checked against ``allowed``.

  Raises ExportError naming the unknown value and the valid ones.
  """
  items = text.split(",") if isinstance(text, str) else list(text)
  items = [i.strip() for i in items if i.strip()]
  if not items:
    raise ExportError(f"no {what} given; choose from: {', '.join(allowed)}")
  for item in items:
    if item not in allowed:
      raise ExportError(
          f"unknown {what} {item!r}; choose from: {', '.join(allowed)}")
  return tuple(dict.fromkeys(items))


def check_threshold(threshold: float) -> float:
  """Raises ExportError unless 0 <= threshold <= 1."""
  if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
    raise ExportError(
        f"threshold must be a probability in [0, 1], got {threshold!r}")
  return float(threshold)


def find_labels(path: str) -> str:
  """labels.json for an artefact: beside a file; in a SavedModel's assets/,
  in the folder itself or beside it. Raises ExportError naming where it looked."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    candidates = [os.path.join(path, "assets", LABELS_FILE),
                  os.path.join(path, LABELS_FILE),
                  os.path.join(os.path.dirname(path), LABELS_FILE)]
  else:
    candidates = [os.path.join(os.path.dirname(path), LABELS_FILE)]
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise ExportError(
      f"{path}: no {LABELS_FILE} found (looked in: {', '.join(candidates)})")


def find_class_table(path: str) -> Optional[str]:
  """classes.csv for an artefact, where find_labels looks for labels.json;
  None if there is none."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    candidates = [os.path.join(path, "assets", CLASSES_FILE),
                  os.path.join(path, CLASSES_FILE)]
  else:
    candidates = [os.path.join(os.path.dirname(path), CLASSES_FILE)]
  return next((c for c in candidates if os.path.isfile(c)), None)
