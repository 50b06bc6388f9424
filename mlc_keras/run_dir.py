"""What a training run folder holds, and how export, predict and evaluate
read it: the .keras files, labels.json, config.json (the run's settings) and
results.json.

  <run>/model.keras        written by train
  <run>/calibrated.keras   written by `evaluate --calibrate`; preferred by
                           export and predict while it is current
  <run>/labels.json        the heads and their classes
  <run>/config.json        the run's Config (config.Config.to_json)
  <run>/results.json       what train evaluated on, and the scores
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from mlc_keras import artefacts
from mlc_keras import config as config_lib
from mlc_keras import heads as heads_lib

MODEL_FILE = "model.keras"
# Written by `evaluate --calibrate`; preferred by export when it is current.
CALIBRATED_FILE = "calibrated.keras"
LABELS_FILE = artefacts.LABELS_FILE
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


class RunDirError(ValueError):
  """A run folder that lacks a file, or holds one that cannot be read."""


# --- config.json / results.json --------------------------------------------------


def run_data(model_dir: str) -> Optional[dict]:
  """The "data" section of the config.json a training run wrote to
  ``model_dir`` (as a dict), or None when there is no such file. Raises
  RunDirError naming the file when it is not a JSON object."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path}: cannot read the run's config ({e})") from None
  data = config.get("data", {}) if isinstance(config, dict) else None
  if not isinstance(data, dict):
    raise RunDirError(f"{path}: no \"data\" object in the run's config")
  return data


def run_image_column(model_dir: str) -> str:
  """The manifest image column of the run in ``model_dir`` (its config.json
  data.image_column), so evaluate and export read the run's manifests as
  training did.

  Raises RunDirError naming the file when there is no config.json or it
  cannot be read. A config.json without the key gets config's default
  ("image"), which is what training used before the key was recorded.
  """
  data = run_data(model_dir)
  if data is None:
    raise RunDirError(
        f"{os.path.join(model_dir, CONFIG_FILE)}: no such file; the image "
        "column of the run's manifests is read from it (give --image_column)")
  column = data.get("image_column", config_lib.DataConfig.image_column)
  if not isinstance(column, str) or not column:
    raise RunDirError(
        f"{os.path.join(model_dir, CONFIG_FILE)}: data.image_column is "
        f"{column!r}, not a column name")
  return column


def demo_dir(data: Mapping) -> Optional[str]:
  """The folder of the generated demo set when the run's config "data"
  section (run_data) shows it trained on the demo set, i.e. on no manifest,
  TFRecord or TFDS source; else None."""
  if any(data.get(k) for k in ("manifest", "tfrecord", "tfds")):
    return None
  return data.get("demo_dir") or config_lib.DataConfig.demo_dir


def example_manifest(model_dir: str) -> Optional[str]:
  """A manifest of images this run did not train on, for the predict command
  train prints: the demo set's heldout.csv for a demo run, else the
  manifest the run was evaluated on, else its validation manifest; None when
  none exists on this machine (train then prints a placeholder)."""
  data = run_data(model_dir) or {}
  candidates = []
  demo = demo_dir(data) if data else None
  if demo:
    candidates.append(os.path.join(demo, "heldout.csv"))
  results = os.path.join(model_dir, RESULTS_FILE)
  if os.path.isfile(results):
    with open(results, encoding="utf-8") as f:
      evaluated = json.load(f).get("evaluated_on")
    if isinstance(evaluated, str) and evaluated.endswith(".csv"):
      candidates.append(evaluated)
  candidates.append(data.get("val_manifest"))
  return next((c for c in candidates if c and os.path.isfile(c)), None)


def default_image_sources(model_dir: str) -> tuple[Optional[str], Optional[str]]:
  """(calibration, parity) manifests of real images for a trained model
  folder, used when neither --representative nor --parity_images is given.

  Calibration prefers the training manifest (what int8 ranges should cover),
  parity the set the run was evaluated on (results.json), else the
  validation manifest; each falls back to the other. Read from results.json
  and config.json; (None, None) if none exists on this machine.
  """
  train, held_out = [], []
  results = os.path.join(model_dir, RESULTS_FILE)
  if os.path.isfile(results):
    with open(results, encoding="utf-8") as f:
      evaluated = json.load(f).get("evaluated_on")
    if isinstance(evaluated, str) and evaluated.endswith(".csv"):
      held_out.append(evaluated)
  data = run_data(model_dir)
  if data is not None:
    held_out.append(data.get("val_manifest"))
    train.append(data.get("manifest"))
    demo = demo_dir(data)
    if demo:
      train.append(os.path.join(demo, "train.csv"))
      held_out.append(os.path.join(demo, "val.csv"))
  train = [c for c in train if c and os.path.isfile(c)]
  held_out = [c for c in held_out if c and os.path.isfile(c)]
  calibration = (train + held_out or [None])[0]
  parity_source = (held_out + train or [None])[0]
  return calibration, parity_source


# --- the trained model ----------------------------------------------------------


def model_outputs(model, images) -> dict:
  """Calls ``model`` in inference mode and returns its outputs keyed by name,
  whatever structure the model returns (dict, list or a single tensor)."""
  out = model(images, training=False)
  if isinstance(out, Mapping):
    return dict(out)
  if isinstance(out, (list, tuple)):
    return dict(zip(model.output_names, out))
  return {model.output_names[0]: out}


def image_size_of(model) -> int:
  """The side S of a Keras model's [N, S, S, 3] input."""
  shape = model.input_shape
  if isinstance(shape, list):
    shape = shape[0]
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise artefacts.ExportError(
        f"model input shape {shape} is not [N, S, S, 3]; only square RGB "
        "models are exported")
  return int(shape[1])


def check_outputs_match_schema(output_shapes: Mapping[str, Sequence[int]],
                               schema: heads_lib.LabelSchema,
                               origin: str) -> None:
  """Every head of the schema must be an output with one column per class.

  Outputs that are not heads (e.g. a composed "class" output) are allowed.
  """
  for h in schema.heads:
    if h.name not in output_shapes:
      raise artefacts.ExportError(
          f"{origin}: labels.json has head {h.name!r} but the model has no "
          f"such output (outputs: {', '.join(sorted(output_shapes))})")
    width = output_shapes[h.name][-1]
    if width is not None and width != h.num_classes:
      raise artefacts.ExportError(
          f"{origin}: head {h.name!r} has {h.num_classes} classes in "
          f"labels.json but the model outputs {width} columns")


def choose_model_file(model_dir: str, model_file: Optional[str] = None
                      ) -> tuple[str, str]:
  """Which .keras file of a model folder to export: (path, why).

  model_file: a file name inside ``model_dir``. None picks calibrated.keras
  (written by ``evaluate --calibrate``) when it exists and is not older than
  model.keras, else model.keras: a calibrated model is what the run's owner
  asked for, but one older than model.keras belongs to weights that have
  since been retrained, so exporting it would publish the old model.
  ``model_dir`` may also be a .keras file, which is then used as it is.
  """
  if os.path.isfile(model_dir) and model_dir.endswith(".keras"):
    if model_file:
      raise artefacts.ExportError(
          f"{model_dir} is a .keras file; --model_file only picks a file "
          "inside a model folder")
    return model_dir, "the .keras file given"
  if not os.path.isdir(model_dir):
    raise artefacts.ExportError(f"{model_dir}: no such model folder or .keras file")
  if model_file:
    if os.path.basename(model_file) != model_file:
      raise artefacts.ExportError(
          f"model file {model_file!r} must be a file name inside {model_dir} "
          "(to export a .keras file elsewhere, pass it as --model_dir)")
    path = os.path.join(model_dir, model_file)
    if not os.path.isfile(path):
      present = sorted(f for f in os.listdir(model_dir) if f.endswith(".keras"))
      raise artefacts.ExportError(
          f"{model_dir}: no {model_file} in this model folder (.keras files "
          f"there: {', '.join(present) or 'none'})")
    return path, f"--model_file={model_file}"
  plain = os.path.join(model_dir, MODEL_FILE)
  calibrated = os.path.join(model_dir, CALIBRATED_FILE)
  if os.path.isfile(calibrated):
    if not os.path.isfile(plain):
      return calibrated, f"{CALIBRATED_FILE} (no {MODEL_FILE} in the folder)"
    if os.path.getmtime(calibrated) >= os.path.getmtime(plain):
      return calibrated, (
          f"{CALIBRATED_FILE} (temperature-scaled by evaluate --calibrate; "
          f"--model_file={MODEL_FILE} exports the uncalibrated model)")
    return plain, (
        f"{MODEL_FILE}; warning: {CALIBRATED_FILE} is older than "
        f"{MODEL_FILE} (the model was retrained after evaluate --calibrate), "
        "so it is not used: re-run evaluate --calibrate, or pass "
        f"--model_file={CALIBRATED_FILE} to export it anyway")
  if not os.path.isfile(plain):
    raise artefacts.ExportError(f"{model_dir}: no {MODEL_FILE} in this model folder")
  return plain, MODEL_FILE


def load_schema(model_path: str) -> heads_lib.LabelSchema:
  """The labels.json beside a .keras file."""
  folder = os.path.dirname(os.path.abspath(model_path))
  labels = os.path.join(folder, LABELS_FILE)
  if not os.path.exists(labels):
    raise artefacts.ExportError(
        f"{folder}: no {LABELS_FILE} beside the model; the class names of "
        "each head come from it (train writes it into the model folder)")
  return heads_lib.LabelSchema.load(labels)


def load_trained(model_dir: str, model_file: Optional[str] = None):
  """Loads the model of ``model_dir`` (see choose_model_file; or a .keras
  file) and the labels.json beside it. Returns (keras model, LabelSchema)."""
  model_path, _ = choose_model_file(model_dir, model_file)
  schema = load_schema(model_path)
  return load_checked(model_path, schema), schema


def load_checked(model_path: str, schema: heads_lib.LabelSchema):
  """Loads a .keras file and checks its outputs against ``schema``."""
  from mlc_keras.modeling import saving  # keras import kept at the edge
  model = saving.load_model(model_path)
  shapes = {n: tuple(t.shape) for n, t in symbolic_outputs(model).items()}
  check_outputs_match_schema(shapes, schema, model_path)
  return model


def symbolic_outputs(model) -> dict:
  """The model's output tensors by name (no call made)."""
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.named_outputs(model)


