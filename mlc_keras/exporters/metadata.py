"""labels.json inside the TFLite and ONNX files, so a file copied alone still
names its heads and classes (labels.json beside it stays: it is what other
tools read, and it wins when both are present).

ONNX: a ``metadata_props`` entry (the format's key/value strings).
TFLite: an entry of the flatbuffer's ``metadata`` list pointing at a buffer
holding the JSON, the slot TFLite metadata lives in (read by any flatbuffer
reader; LiteRT ignores entries it does not know).
"""

from __future__ import annotations

from typing import Optional, Sequence

from mlc_keras.core.kinds import registry as kinds
from mlc_keras.exporters import artefacts

# The key of the embedded labels.json in both formats.
LABELS_KEY = "mlc_keras/" + artefacts.LABELS_FILE


def onnx_description(labels_text: str, outputs: Sequence[str] = ()) -> str:
  """The ONNX model's doc_string: what goes in and what comes out, for a
  reader of the file (Netron, onnx.load) who has no labels.json."""
  import json  # pylint: disable=g-import-not-at-top
  lines = ["mlc_keras multi-head image classifier. Input 'image': uint8 "
           "[batch, S, S, 3] (RGB pixels, NHWC). One output per head, named "
           "after it, [batch, classes]:"]
  for head in json.loads(labels_text).get("heads", []):
    what = kinds.get(head.get("kind", "softmax"), head.get("name")).description
    lines.append(f"  {head['name']}: {what} over "
                 + ", ".join(str(c) for c in head["classes"]))
  if "class" in outputs:
    lines.append("  class: the class table's classes (classes.csv), composed "
                 "from the heads")
  lines.append(f"Labels: metadata_props[{LABELS_KEY!r}] (labels.json).")
  return "\n".join(lines)


def embed_onnx(path: str, labels_text: str) -> None:
  import onnx  # pylint: disable=g-import-not-at-top
  model = onnx.load(path)
  model.doc_string = onnx_description(
      labels_text, [o.name for o in model.graph.output])
  for prop in list(model.metadata_props):
    if prop.key == LABELS_KEY:
      model.metadata_props.remove(prop)
  entry = model.metadata_props.add()
  entry.key, entry.value = LABELS_KEY, labels_text
  onnx.save(model, path)


def read_onnx(session) -> Optional[str]:
  """The embedded labels.json of an onnxruntime InferenceSession, or None."""
  return session.get_modelmeta().custom_metadata_map.get(LABELS_KEY)


def _tflite_schema():
  from tensorflow.lite.python import schema_py_generated  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  return schema_py_generated, flatbuffer_utils


def embed_tflite(path: str, labels_text: str) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  schema, fb = _tflite_schema()
  model = fb.read_model(path)
  # Re-embedding replaces the entry (its old buffer stays, unreferenced).
  model.metadata = [m for m in (model.metadata or []) if _text(m.name) != LABELS_KEY]
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(labels_text.encode("utf-8"), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name = LABELS_KEY
  entry.buffer = len(model.buffers) - 1
  model.metadata.append(entry)
  fb.write_model(model, path)


def _text(name) -> str:
  return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def read_tflite(path: str) -> Optional[str]:
  """The embedded labels.json of a .tflite file, or None."""
  schema, _ = _tflite_schema()
  with open(path, "rb") as f:
    data = f.read()
  model = schema.Model.GetRootAsModel(data, 0)
  for i in range(model.MetadataLength()):
    entry = model.Metadata(i)
    if entry.Name().decode("utf-8") == LABELS_KEY:
      return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode(
          "utf-8")
  return None
