"""The TFLite (LiteRT) export format: files converted from the SavedModel's
tensor signature with built-in ops only (never Flex), in fp32, fp16,
dynamic-range or full int8 variants, labels.json beside and inside each;
read through LiteRT's signature runner (TFLitePredictor).

Layout: <base>/litert/<model_name>/<version>/<model_name>_<quantization>.tflite
and labels.json (+ classes.csv) beside them.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from mlc_keras.exporters import artefacts
from mlc_keras.exporters import formats
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import serving
from mlc_keras.inference import predictors
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.exporters import isolated
from mlc_keras.exporters import metadata

QUANTIZATIONS = ("fp32", "fp16", "dynamic", "int8")
# int8 only on request: its 99% top-1 gate fails on a model that is unsure
# of many images (the 5-epoch demo: 98.8% on `shape`, near-ties), and a
# default that exits 2 on the demo is a broken first step.
DEFAULT_QUANTIZATIONS = ("fp32", "fp16", "dynamic")
# The variants whose activations are calibrated on images.
CALIBRATED = frozenset({"int8"})


def to_tflite(saved_model_dir: str, output_path: str, quantization: str = "fp32",
              calibration_images: Optional[np.ndarray] = None) -> str:
  """Converts the SavedModel's tensor signature to a TFLite file with
  built-in ops only (never Flex) and checks it loads in LiteRT with one
  signature whose outputs are the signature's output names.

  quantization: fp32 | fp16 (fp16 weights) | dynamic (int8 weights, dynamic
  activations) | int8 (weights and activations int8, calibrated on
  ``calibration_images``, uint8 [N, S, S, 3]; float32 probabilities out).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  artefacts.parse_choices(quantization, QUANTIZATIONS, "quantization")
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[artefacts.TENSOR_SIGNATURE])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantization != "fp32":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "fp16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == "int8":
    if calibration_images is None or not len(calibration_images):
      raise ExportError(
          "int8 needs calibration images (a representative manifest or folder)")
    images = np.asarray(calibration_images, np.uint8)

    def representative():
      for i in range(len(images)):
        yield {artefacts.IMAGE_INPUT: images[i:i + 1]}

    converter.representative_dataset = representative
    # Builtins only, int8 kernels: conversion fails rather than silently
    # leaving float ops in a model called "int8".
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  try:
    flatbuffer = converter.convert()
  except Exception as e:  # the converter raises many types; name the variant
    raise ExportError(
        f"TFLite {quantization} conversion of {saved_model_dir} failed: {e}"
    ) from e
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, "wb") as f:
    f.write(flatbuffer)
  expected = _signature_output_names(saved_model_dir)
  predictor = TFLitePredictor(output_path)
  if set(predictor.output_names) != set(expected):
    raise ExportError(
        f"{output_path}: TFLite signature outputs {predictor.output_names} "
        f"are not the model outputs {expected}")
  return output_path


def _signature_output_names(saved_model_dir: str) -> list[str]:
  # Read from the proto: loading the whole SavedModel again is seconds.
  from tensorflow.core.protobuf import saved_model_pb2
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return sorted(proto.meta_graphs[0].signature_def[artefacts.TENSOR_SIGNATURE].outputs)


def tflite_path(folder: str, model_name: str, quantization: str) -> str:
  """Where to_tflite_variants writes a variant."""
  return os.path.join(folder, f"{model_name}_{quantization}.tflite")


def _labels_text(saved_model_dir: str) -> str:
  with open(os.path.join(saved_model_dir, "assets", artefacts.LABELS_FILE),
            encoding="utf-8") as f:
    return f.read()


def to_labelled_tflite(saved_model_dir: str, output_path: str,
                       quantization: str = "fp32",
                       calibration_images: Optional[np.ndarray] = None) -> str:
  """to_tflite, then labels.json embedded in the file as TFLite metadata."""
  to_tflite(saved_model_dir, output_path, quantization, calibration_images)
  embed_labels(output_path, _labels_text(saved_model_dir))
  return output_path


def _flatbuffer_schema():
  from tensorflow.lite.python import schema_py_generated  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  return schema_py_generated, flatbuffer_utils


def embed_labels(path: str, labels_text: str) -> None:
  """labels.json into the .tflite at ``path``: an entry of the flatbuffer's
  ``metadata`` list pointing at a buffer holding the JSON, the slot TFLite
  metadata lives in (read by any flatbuffer reader; LiteRT ignores entries
  it does not know)."""
  schema, fb = _flatbuffer_schema()
  model = fb.read_model(path)
  # Re-embedding replaces the entry (its old buffer stays, unreferenced).
  model.metadata = [m for m in (model.metadata or [])
                    if _text(m.name) != metadata.LABELS_KEY]
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(labels_text.encode("utf-8"), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name = metadata.LABELS_KEY
  entry.buffer = len(model.buffers) - 1
  model.metadata.append(entry)
  fb.write_model(model, path)


def _text(name) -> str:
  return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def read_labels(path: str) -> Optional[str]:
  """The embedded labels.json of a .tflite file, or None."""
  schema, _ = _flatbuffer_schema()
  with open(path, "rb") as f:
    data = f.read()
  model = schema.Model.GetRootAsModel(data, 0)
  for i in range(model.MetadataLength()):
    entry = model.Metadata(i)
    if entry.Name().decode("utf-8") == metadata.LABELS_KEY:
      return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode(
          "utf-8")
  return None


def variant_calls(saved_model_dir: str, folder: str, model_name: str,
                  quantizations: Sequence[str] = QUANTIZATIONS,
                  calibration_images: Optional[np.ndarray] = None
                  ) -> dict[str, tuple]:
  """The to_tflite call of every requested variant, for isolated.run_all:
  {quantization: (to_tflite, args)}. Checks the request and writes
  labels.json into ``folder``."""
  quantizations = artefacts.parse_choices(quantizations, QUANTIZATIONS, "quantization")
  if "int8" in quantizations and (calibration_images is None
                                  or not len(calibration_images)):
    raise ExportError(
        "int8 needs calibration images: pass `representative`=<manifest.csv "
        "or image folder>, or leave int8 out of `quantization`")
  os.makedirs(folder, exist_ok=True)
  serving.copy_labels(saved_model_dir, folder)
  return {q: (to_labelled_tflite, (saved_model_dir, tflite_path(folder, model_name, q), q,
                          calibration_images if q == "int8" else None))
          for q in quantizations}


def to_tflite_variants(saved_model_dir: str, folder: str, model_name: str,
                       quantizations: Sequence[str] = QUANTIZATIONS,
                       calibration_images: Optional[np.ndarray] = None,
                       isolate: bool = True,
                       log: Callable[[str], None] = print) -> dict[str, str]:
  """Converts every requested variant into ``folder`` (labels.json beside),
  in parallel worker processes with ``isolate``. Returns {quantization: path}."""
  calls = variant_calls(saved_model_dir, folder, model_name, quantizations,
                        calibration_images)
  log(f"converting TFLite {', '.join(calls)} -> {folder}")
  return dict(zip(calls, isolated.run_all(list(calls.values()), isolate)))


class TFLitePredictor(predictors.Predictor):
  """A .tflite file through LiteRT's signature runner (outputs by name)."""

  kind = "tflite"

  def __init__(self, path: str, num_threads: Optional[int] = None):
    super().__init__(path)
    try:
      from ai_edge_litert import interpreter as litert
    except ImportError:
      raise artefacts.missing_dependency("ai-edge-litert") from None
    self.interpreter = litert.Interpreter(
        model_path=path, num_threads=num_threads or os.cpu_count())
    signatures = self.interpreter.get_signature_list()
    if len(signatures) != 1:
      raise ExportError(
          f"{path}: expected one signature, found {sorted(signatures)}")
    key, io = next(iter(signatures.items()))
    self._runner = self.interpreter.get_signature_runner(key)
    details = self._runner.get_input_details()
    if list(details) != [artefacts.IMAGE_INPUT]:
      raise ExportError(f"{path}: signature inputs {list(details)}, "
                        f"expected [{artefacts.IMAGE_INPUT!r}]")
    shape = details[artefacts.IMAGE_INPUT]["shape_signature"]
    self.image_size = int(shape[1])
    self.output_names = sorted(io["outputs"])

  def _embedded_labels(self):
    return read_labels(self.path)

  def _run(self, images):
    out = self._runner(**{artefacts.IMAGE_INPUT: images})
    # The runner hands back views of interpreter buffers: copy them.
    return {k: np.array(v) for k, v in out.items()}


class TFLiteFormat(formats.ExportFormat):
  """One .tflite per requested quantization, converted in worker processes
  from the SavedModel; fp32 and fp16 are held to probability differences,
  dynamic and int8 to decisions (parity.TOLERANCES)."""

  name = "tflite"
  title = "TFLite"
  tree = "litert"
  variants = QUANTIZATIONS
  default_variants = DEFAULT_QUANTIZATIONS
  calibrated_variants = CALIBRATED
  requires = (serving.NAME,)
  conversion_cost = 1
  suffix = ".tflite"
  predictor_types = (TFLitePredictor,)

  def card_input(self, max_image_bytes, max_image_pixels):
    del max_image_bytes, max_image_pixels
    return ""  # the uint8 pixels alone

  def conversions(self, job):
    calls = variant_calls(job.staged[serving.NAME], job.folders[self.name],
                          job.request.model_name, job.variants(self),
                          job.images.calibration)
    return [formats.Conversion(f"{self.title} {q}", q, fn, args)
            for q, (fn, args) in calls.items()]

  def candidates(self, value):
    # A failing lossy variant can be left out to publish the rest; fp32 is
    # the conversion itself, so its failure is no variant's.
    return [formats.Candidate(f"{self.name}_{q}", TFLitePredictor(p),
                              parity_lib.TOLERANCES[q],
                              optional_variant=q != "fp32")
            for q, p in value.items()]


FORMAT = TFLiteFormat()
