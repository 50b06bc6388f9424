"""Export a trained model for TF Serving (SavedModel), LiteRT (TFLite) and
ONNX Runtime, and prove each artefact computes what the Keras model computes.

Layout written by export() under a base folder:

  <base>/<model_name>/<version>/                 SavedModel (TF Serving base path:
                                                 <base>/<model_name>)
      assets/labels.json
      assets/classes.csv                         with a class table only
      assets.extra/tf_serving_warmup_requests
  <base>/litert/<model_name>/<version>/<model_name>_<quantization>.tflite
  <base>/litert/<model_name>/<version>/labels.json (+ classes.csv)
  <base>/onnx/<model_name>/<version>/<model_name>.onnx
  <base>/onnx/<model_name>/<version>/labels.json (+ classes.csv)
  <base>/parity/<model_name>/<version>.json      the parity report

Everything is written into <base>/.staging/ first and moved into place only
when every check has passed, so TF Serving (which polls <base>/<model_name>)
never sees a half-written or failing version.

export() runs five steps, each callable alone: resolve_request (check the
arguments, pick the .keras file), gather_images (calibration and parity
images), build_staged (write every artefact into staging), check_parity
(compare each with the Keras model, write the report) and publish.
The writers live in mlc_keras/exporters/, the readers in predictors.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
from typing import Callable, Optional, Sequence

import numpy as np

from mlc_keras.exporters import artefacts
from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import model_card
from mlc_keras.inference import files as predict_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import folder as run_dir
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.exporters import isolated
from mlc_keras.exporters import onnx as onnx_exporter
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import saved_model
from mlc_keras.exporters import tflite

FORMATS = ("saved_model", "tflite", "onnx")

# At 100 images a 99% agreement gate turns on a single image; 400 (the demo's
# validation set) measures agreement to about +-0.5%.
MAX_PARITY_IMAGES = 400
MAX_CALIBRATION_IMAGES = 300
# parity_images=RANDOM_PARITY: check on seeded noise, only when asked for.
RANDOM_PARITY = "random"
RANDOM_PARITY_COUNT = 32

# Names of the per-runtime trees under the base folder; a model may not use them.
_RESERVED_MODEL_NAMES = frozenset({"litert", "onnx", "parity",
                                   model_card.FOLDER})
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class ExportResult:
  saved_model: Optional[str] = None
  tflite: dict = dataclasses.field(default_factory=dict)
  onnx: Optional[str] = None
  parity_path: Optional[str] = None
  parity: list = dataclasses.field(default_factory=list)
  # check_saved_model's report: ops, signatures, the standalone test call.
  saved_model_check: dict = dataclasses.field(default_factory=dict)
  model_card: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Request:
  """A checked export request: what to build, from which file, and where."""

  model_dir: str
  folder: str  # the run folder (model_dir, or the folder of a .keras file)
  model_path: str
  why: str  # why model_path was chosen (run_dir.choose_model_file)
  model_name: str
  version: int
  base: str
  formats: tuple[str, ...]
  quantizations: tuple[str, ...]
  threshold: float
  max_image_bytes: int
  max_image_pixels: int

  def paths(self, base: Optional[str] = None) -> dict[str, str]:
    """Where each artefact goes under ``base`` (default: the final base)."""
    base = base or self.base
    v = str(self.version)
    return {
        "saved_model": os.path.join(base, self.model_name, v),
        "tflite": os.path.join(base, "litert", self.model_name, v),
        "onnx": os.path.join(base, "onnx", self.model_name, v),
        "parity": os.path.join(base, "parity", self.model_name, v + ".json"),
    }

  @property
  def staging(self) -> str:
    return os.path.join(self.base, ".staging",
                        f"{self.model_name}-{self.version}")


@dataclasses.dataclass(frozen=True)
class Images:
  """The images an export calibrates int8 on and checks parity on."""

  parity: np.ndarray
  parity_source: Optional[str]  # None: seeded random images
  calibration: Optional[np.ndarray] = None
  calibration_source: Optional[str] = None


def check_model_name(name: str, origin: str = "`model_name`") -> str:
  """Raises ExportError naming ``name`` and where it came from unless it is
  usable as a TF Serving model name and a folder name."""
  if not _MODEL_NAME.match(name) or name in _RESERVED_MODEL_NAMES:
    raise ExportError(
        f"model name {name!r} ({origin}) must be letters, digits, '_', '-', "
        f"'.' and not one of {sorted(_RESERVED_MODEL_NAMES)}")
  return name


def _check_positive(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ExportError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def resolve_request(model_dir: str, output: Optional[str] = None,
                    formats: Sequence[str] | str = FORMATS, version: int = 1,
                    model_name: Optional[str] = None,
                    quantizations: Sequence[str] | str = tflite.QUANTIZATIONS,
                    max_image_bytes: int = saved_model.MAX_IMAGE_BYTES,
                    max_image_pixels: int = saved_model.MAX_IMAGE_PIXELS,
                    threshold: float = artefacts.DEFAULT_THRESHOLD,
                    overwrite: bool = False,
                    model_file: Optional[str] = None) -> Request:
  """Checks export's arguments (see export) and picks the .keras file.
  Raises ExportError naming the bad value."""
  formats = artefacts.parse_choices(formats, FORMATS, "format")
  quantizations = (artefacts.parse_choices(quantizations, tflite.QUANTIZATIONS,
                                           "quantization")
                   if "tflite" in formats else ())
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ExportError(f"version must be a positive integer, got {version!r}")
  threshold = artefacts.check_threshold(threshold)
  max_image_bytes = _check_positive("max_image_bytes", max_image_bytes)
  max_image_pixels = _check_positive("max_image_pixels", max_image_pixels)
  model_dir = model_dir.rstrip("/") or model_dir
  # A .keras file is accepted too; its folder stands for the run.
  folder = model_dir if not os.path.isfile(model_dir) else (
      os.path.dirname(os.path.abspath(model_dir)))
  if model_name is None:
    model_name = check_model_name(
        os.path.basename(os.path.abspath(folder)),
        f"the model folder's name; pass `model_name` to choose another")
  else:
    check_model_name(model_name)
  model_path, why = run_dir.choose_model_file(model_dir, model_file)
  request = Request(
      model_dir=model_dir, folder=folder, model_path=model_path, why=why,
      model_name=model_name, version=version,
      base=output or os.path.join(folder, "export"), formats=formats,
      quantizations=quantizations, threshold=threshold,
      max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
  final = request.paths()
  existing = [final[f] for f in formats if os.path.exists(final[f])]
  if existing and not overwrite:
    raise ExportError(
        f"version {version} of {model_name!r} already exists ({existing[0]}); "
        "pick another `version` or pass `overwrite`")
  return request


def load_model(request: Request, class_table: Optional[str] = None,
               log: Callable[[str], None] = print):
  """The model to export, its labels.json and class table (the one given,
  else the one the model carries, else None): (model, schema, table)."""
  from mlc_keras.labeling import compose  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
  log(f"exporting {request.model_path}: {request.why}")
  schema = run_dir.load_schema(request.model_path)
  # Before loading the model: a bad table fails in a second, not after it.
  table = compose.load(class_table, schema) if class_table else None
  model = run_dir.load_checked(request.model_path, schema)
  if table is not None:
    bias, note = outputs_lib.stacking_bias_for(model, table)
    if note:
      log(note)
    return outputs_lib.with_class_output(model, table, bias), schema, table
  table = outputs_lib.table_of(model)
  if table is not None:
    log(f"the model has a {artefacts.CLASS_OUTPUT!r} output ({len(table)} "
        f"classes); it is exported with its table as {artefacts.CLASSES_FILE}")
  return model, schema, table


def _sample(paths: Sequence[str], limit: int, seed: int) -> list[str]:
  # Seeded sample, not the first N: a sorted folder may be one class first.
  order = np.random.default_rng(seed).permutation(len(paths))
  return [paths[i] for i in sorted(order[:limit])]


def _read_sample(source: str, folder: str, image_column: Optional[str],
                 limit: int, seed: int, size: int) -> np.ndarray:
  if image_column is None and source.lower().endswith(".csv"):
    # Only a manifest needs the column: a run without config.json can still
    # be exported with image folders.
    image_column = run_dir.run_image_column(folder)
  paths = predict_lib.list_images(source, image_column or "image")
  return predict_lib.load_images(_sample(paths, limit, seed), size)


def _no_parity_images(folder: str) -> str:
  missing = run_dir.missing_image_sources(folder)
  why = (f"the run's files name {', '.join(missing)}, not found from "
         f"{os.getcwd()} (a relative path in an older config.json is "
         "relative to the folder training ran in)" if missing else
         "the run's results.json and config.json name no manifest")
  return (f"no images for the parity check: {why}. Pass `parity_images`="
          "<manifest.csv, image folder or image>, or `parity_images`="
          f"{RANDOM_PARITY} to check on {RANDOM_PARITY_COUNT} seeded random "
          "images")


def gather_images(request: Request, image_size: int,
                  representative: Optional[str] = None,
                  parity_images: Optional[str] = None,
                  image_column: Optional[str] = None,
                  log: Callable[[str], None] = print) -> Images:
  """Calibration images (only with int8) and parity images, from the user
  or, with neither source given, from the run's own data
  (run_dir.default_image_sources). Seeded noise only when asked for
  (parity_images=RANDOM_PARITY); no images found is an ExportError."""
  random_parity = parity_images == RANDOM_PARITY
  if random_parity:
    parity_images = None
  default_cal = default_par = None
  if representative is None and parity_images is None:
    default_cal, default_par = run_dir.default_image_sources(request.folder)
    if default_par:
      calibrating = ("int8" in request.quantizations and default_cal)
      log("no representative/parity_images: "
          + (f"calibrating int8 on {default_cal}, " if calibrating else "")
          + f"checking parity on {default_par}")
  cal_source = representative or parity_images or default_cal
  par_source = None if random_parity else (
      parity_images or representative or default_par)
  calibration = None
  if "int8" in request.quantizations:
    if cal_source is None:
      raise ExportError(
          "int8 needs calibration images and none were found: pass "
          "`representative`=<manifest.csv or image folder>, or leave int8 "
          "out of `quantization`")
    calibration = _read_sample(cal_source, request.folder, image_column,
                               MAX_CALIBRATION_IMAGES, 1, image_size)
  if par_source is None:
    if not random_parity:
      raise ExportError(_no_parity_images(request.folder))
    # Asked for: the float variants' parity is numerical, so seeded noise
    # still exercises every weight (int8's gate needs real images).
    log(f"parity check on {RANDOM_PARITY_COUNT} seeded random images "
        f"(`parity_images`={RANDOM_PARITY})")
    noise = np.random.default_rng(0).integers(
        0, 256, (RANDOM_PARITY_COUNT, image_size, image_size, 3),
        dtype=np.uint8)
    return Images(noise, None, calibration,
                  cal_source if calibration is not None else None)
  par = _read_sample(par_source, request.folder, image_column,
                     MAX_PARITY_IMAGES, 0, image_size)
  return Images(par, par_source, calibration,
                cal_source if calibration is not None else None)


def build_staged(request: Request, model, schema, table, images: Images,
                 isolate: bool = True,
                 log: Callable[[str], None] = print) -> ExportResult:
  """Writes the SavedModel (checked in plain TensorFlow) and the requested
  conversions into request.staging. Returns their staged paths."""
  shutil.rmtree(request.staging, ignore_errors=True)
  staged = request.paths(request.staging)
  result = ExportResult(saved_model=staged["saved_model"])
  log(f"writing SavedModel -> {staged['saved_model']}")
  saved_model.to_saved_model(
      model, schema, staged["saved_model"], request.max_image_bytes,
      warmup_images=images.parity[:1], model_name=request.model_name,
      table=table, threshold=request.threshold,
      max_image_pixels=request.max_image_pixels)
  # The plain-TF load check is a subprocess of its own and every conversion
  # runs in a worker process: all of them run at once.
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as checker:
    check_future = checker.submit(saved_model.check_saved_model,
                                  staged["saved_model"])
    _convert(request, staged, images, result, isolate, log)
    check = result.saved_model_check = check_future.result()
  log(f"SavedModel loads in plain TensorFlow; {sum(check['ops'].values())} "
      f"nodes, {len(check['ops'])} op types, no Python or custom ops")
  return result


def _convert(request: Request, staged: dict, images: Images,
             result: ExportResult, isolate: bool, log) -> None:
  calls = {}
  # ONNX first: the longest conversion, so the workers finish together.
  if "onnx" in request.formats:
    calls["onnx"] = onnx_exporter.onnx_call(
        staged["saved_model"], staged["onnx"], request.model_name)
  if "tflite" in request.formats:
    calls.update({f"TFLite {q}": call for q, call in tflite.variant_calls(
        staged["saved_model"], staged["tflite"], request.model_name,
        request.quantizations, images.calibration).items()})
  if not calls:
    return
  workers = isolated.workers_for(len(calls)) if isolate else 1
  where = (f"{workers} worker process{'es' if workers > 1 else ''}"
           if isolate else "this process")
  log(f"converting {', '.join(calls)} (in {where})")
  paths = dict(zip(calls, isolated.run_all(list(calls.values()), isolate,
                                           workers)))
  result.onnx = paths.pop("onnx", None)
  result.tflite = {k.split()[1]: p for k, p in paths.items()}


def _candidates(staged: ExportResult) -> list:
  tensor_sig = predictors.SavedModelPredictor(staged.saved_model)
  bytes_sig = predictors.SavedModelBytesPredictor(staged.saved_model,
                                                  tensor_sig.loaded)
  examples_sig = predictors.SavedModelExamplePredictor(staged.saved_model,
                                                      tensor_sig.loaded)
  candidates = [("saved_model", tensor_sig, parity_lib.FP32_TOLERANCE),
                ("saved_model_bytes", bytes_sig, parity_lib.FP32_TOLERANCE),
                ("saved_model_examples", examples_sig,
                 parity_lib.FP32_TOLERANCE)]
  candidates += [(f"tflite_{q}", predictors.TFLitePredictor(p),
                  parity_lib.TOLERANCES[q]) for q, p in staged.tflite.items()]
  if staged.onnx:
    candidates.append(("onnx", predictors.OnnxPredictor(staged.onnx),
                       parity_lib.FP32_TOLERANCE))
  return candidates


def check_parity(request: Request, model, table, staged: ExportResult,
                 images: Images, class_table: Optional[str] = None,
                 log: Callable[[str], None] = print,
                 schema: Optional[heads_lib.LabelSchema] = None) -> list[dict]:
  """Compares every staged artefact with the Keras model on images.parity
  and writes the parity report into staging. Returns the reports; raises
  ParityError (nothing published) when any is outside its tolerance."""
  log(f"parity check on {len(images.parity)} images")
  reference = predictors.KerasPredictor(request.model_path, model=model
                                        ).predict(images.parity)
  # Tag heads are compared per tag, at the thresholds the artefacts carry.
  tag_thresholds = {h.name: h.tag_thresholds() for h in schema.heads
                    if h.is_tags} if schema is not None else None
  reports = [parity_lib.parity(pred, reference, images.parity, tol, name,
                               tag_thresholds=tag_thresholds)
             for name, pred, tol in _candidates(staged)]
  for rep in reports:  # staged paths are about to move
    rep["path"] = os.path.relpath(rep["path"], request.staging)
  log(parity_lib.format_parity_table(reports))
  _write_report(request, table, images, reports, class_table,
                request.paths(request.staging)["parity"])
  failed = [r for r in reports if not r["passed"]]
  if failed:
    hint = ""
    if all(r["artefact"].startswith("tflite_") and r["artefact"] != "tflite_fp32"
           for r in failed):
      hint = (" To publish the others, leave the failing variant(s) out of "
              "`quantization` (int8 needs a well-trained model and real "
              "`representative` images).")
    raise parity_lib.ParityError(
        "parity check failed for "
        + ", ".join(f"{r['artefact']} ({'; '.join(r['failures'])})"
                    for r in failed)
        + f". Nothing was published; artefacts and report are in "
        f"{request.staging}." + hint)
  return reports


def _write_report(request: Request, table, images: Images, reports, class_table,
                  path: str) -> None:
  payload = {"model_dir": os.path.abspath(request.model_dir),
             "model_name": request.model_name,
             "model_file": os.path.abspath(request.model_path),
             "class_table": (None if table is None else
                             os.path.abspath(class_table) if class_table
                             else "carried by the model"),
             "threshold": request.threshold if table is not None else None,
             "version": request.version,
             "image_size": int(images.parity.shape[1]),
             "max_image_bytes": request.max_image_bytes,
             "max_image_pixels": request.max_image_pixels,
             "parity_images": images.parity_source or "seeded random",
             "calibration_images": images.calibration_source,
             "reports": reports}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)


def publish(request: Request, staged: ExportResult, reports: list[dict],
            log: Callable[[str], None] = print) -> ExportResult:
  """Moves the requested artefacts and the parity report from staging into
  place, each folder in one rename. Returns the published paths."""
  final, src = request.paths(), request.paths(request.staging)
  for key in ("parity",) + request.formats:
    dst = final[key]
    if os.path.exists(dst):
      shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src[key], dst)
  shutil.rmtree(request.staging, ignore_errors=True)
  try:
    os.rmdir(os.path.dirname(request.staging))
  except OSError:
    pass  # another export is staging
  name = request.model_name
  result = ExportResult(
      saved_model=(final["saved_model"] if "saved_model" in request.formats
                   else None),
      tflite={q: tflite.tflite_path(final["tflite"], name, q)
              for q in staged.tflite},
      onnx=(os.path.join(final["onnx"], os.path.basename(staged.onnx))
            if staged.onnx else None),
      parity_path=final["parity"], parity=reports,
      saved_model_check=staged.saved_model_check)
  log(f"exported {name!r} version {request.version} under {request.base}")
  return result


def export(model_dir: str,
           output: Optional[str] = None,
           formats: Sequence[str] | str = FORMATS,
           version: int = 1,
           model_name: Optional[str] = None,
           quantizations: Sequence[str] | str = tflite.QUANTIZATIONS,
           representative: Optional[str] = None,
           parity_images: Optional[str] = None,
           max_image_bytes: int = saved_model.MAX_IMAGE_BYTES,
           overwrite: bool = False,
           isolate: bool = True,
           log: Callable[[str], None] = print,
           model_file: Optional[str] = None,
           class_table: Optional[str] = None,
           threshold: float = artefacts.DEFAULT_THRESHOLD,
           max_image_pixels: int = saved_model.MAX_IMAGE_PIXELS,
           image_column: Optional[str] = None) -> ExportResult:
  """Exports a trained model folder to every requested format, checks each
  artefact against the Keras model and publishes them only if all pass.

  Each argument is the export CLI's flag of the same name (see
  mlc_keras/export.py for what it means and its default), with these
  differences:
    model_dir: a run folder (model.keras + labels.json) or a .keras file with
      labels.json beside it; output defaults to <model_dir>/export.
    model_name: default the model folder's name; a name unusable as a TF
      Serving model name is an error naming it (pass model_name).
    quantizations: quantization; only read when "tflite" is in formats.
    isolate: convert TFLite/ONNX each in a fresh process (frees the memory
      the converters keep).
    log: progress sink.
    image_column: default the run's (its config.json), read only when a
      manifest CSV is an image source.

  Returns:
    ExportResult with the published paths and the parity reports.

  Raises:
    compose.ClassTableError: a class table that does not fit labels.json;
    ExportError: bad arguments, a failed conversion or check;
    run_dir.RunDirError: a config.json that is needed and unreadable;
    ParityError: an artefact outside its tolerance (nothing is published;
      the report stays in the staging folder named in the message).
  """
  request = resolve_request(model_dir, output, formats, version, model_name,
                            quantizations, max_image_bytes, max_image_pixels,
                            threshold, overwrite, model_file)
  model, schema, table = load_model(request, class_table, log)
  images = gather_images(request, run_dir.image_size_of(model), representative,
                         parity_images, image_column, log)
  staged = build_staged(request, model, schema, table, images, isolate, log)
  reports = check_parity(request, model, table, staged, images, class_table,
                         log, schema=schema)
  result = publish(request, staged, reports, log)
  result.model_card = model_card.write(
      os.path.join(request.base, model_card.FOLDER, request.model_name,
                   f"{request.version}.md"), request.folder, model=model,
      schema=schema, model_name=request.model_name, version=request.version,
      model_file=request.model_path, reports=reports,
      max_image_bytes=request.max_image_bytes,
      max_image_pixels=request.max_image_pixels)
  log(f"model card: {result.model_card}")
  return result
