"""Export a trained model in every requested format (exporters/formats.py:
one module per format) and prove each artefact computes what the Keras
model computes.

Layout written by export() under a base folder: each format's folder (its
module says what is in it; <base>/<model_name>/<version> for the SavedModel,
TF Serving's base path being <base>/<model_name>), and

  <base>/parity/<model_name>/<version>.json      the parity report
  <base>/model_card/<model_name>/<version>.md    the model card

Everything is written into <base>/.staging/ first and moved into place only
when every check has passed, so TF Serving (which polls <base>/<model_name>)
never sees a half-written or failing version.

export() runs five steps, each callable alone: resolve_request (check the
arguments, pick the .keras file), gather_images (calibration and parity
images), build_staged (write every artefact into staging), check_parity
(compare each with the Keras model, write the report) and publish.
Each step loops over the formats; none is named here.
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
from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import formats as formats_lib
from mlc_keras.exporters import model_card
from mlc_keras.inference import files as predict_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import folder as run_dir
from mlc_keras.exporters.artefacts import ExportError
from mlc_keras.exporters import isolated
from mlc_keras.exporters import parity as parity_lib

# The serving signatures' per-image caps (saved_model.py holds the same).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = config_lib.DataConfig.max_image_pixels

# At 100 images a 99% agreement gate turns on a single image; 400 (the demo's
# validation set) measures agreement to about +-0.5%.
MAX_PARITY_IMAGES = 400
MAX_CALIBRATION_IMAGES = 300
# parity_images=RANDOM_PARITY: check on seeded noise, only when asked for.
RANDOM_PARITY = "random"
RANDOM_PARITY_COUNT = 32

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class ExportResult:
  """What an export wrote. ``result.<format>`` (result.onnx, result.tflite)
  is that format's path, or {variant: path} for a format with variants,
  and ``result.<format>_check`` its check report (result.saved_model_check:
  ops, signatures, the standalone test call); a format not exported gives
  None or {}."""

  paths: dict = dataclasses.field(default_factory=dict)  # by format name
  parity_path: Optional[str] = None
  parity: list = dataclasses.field(default_factory=list)
  checks: dict = dataclasses.field(default_factory=dict)  # by format name
  model_card: Optional[str] = None

  def __getattr__(self, name: str):
    if not name.startswith("_"):
      values = self.__dict__
      for fmt in formats_lib.registered():
        if name == fmt.name:
          return values.get("paths", {}).get(name, fmt.empty())
        if name == fmt.name + "_check":
          return values.get("checks", {}).get(fmt.name, {})
    raise AttributeError(
        f"{type(self).__name__!r} object has no attribute {name!r}")

  def listing(self) -> list[tuple[str, str]]:
    """(label, path) of every artefact written, in the formats' order."""
    return [line for fmt in formats_lib.registered() if fmt.name in self.paths
            for line in fmt.listing(self.paths[fmt.name])]


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
    paths = {f.name: f.folder(base, self.model_name, self.version)
             for f in formats_lib.registered()}
    paths[formats_lib.PARITY] = os.path.join(
        base, formats_lib.PARITY, self.model_name, f"{self.version}.json")
    return paths

  @property
  def calibrated(self) -> tuple[str, ...]:
    """The requested variants that calibrate on images (int8)."""
    return tuple(q for q in self.quantizations if any(
        q in formats_lib.get(name).calibrated_variants
        for name in self.formats))

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
  # The folders beside the models' under the base folder.
  reserved = formats_lib.reserved_folders() | {model_card.FOLDER}
  if not _MODEL_NAME.match(name) or name in reserved:
    raise ExportError(
        f"model name {name!r} ({origin}) must be letters, digits, '_', '-', "
        f"'.' and not one of {sorted(reserved)}")
  return name


def _check_positive(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ExportError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def resolve_request(model_dir: str, output: Optional[str] = None,
                    formats: Sequence[str] | str | None = None,
                    version: int = 1,
                    model_name: Optional[str] = None,
                    quantizations: Sequence[str] | str | None = None,
                    max_image_bytes: int = MAX_IMAGE_BYTES,
                    max_image_pixels: int = MAX_IMAGE_PIXELS,
                    threshold: float = artefacts.DEFAULT_THRESHOLD,
                    overwrite: bool = False,
                    model_file: Optional[str] = None) -> Request:
  """Checks export's arguments (see export) and picks the .keras file.
  Raises ExportError naming the bad value."""
  formats = artefacts.parse_choices(
      formats_lib.names() if formats is None else formats,
      formats_lib.names(), "format")
  # Quantizations are the variants of the formats that have some.
  variants = formats_lib.variants_of(formats)
  quantizations = (artefacts.parse_choices(
      variants if quantizations is None else quantizations, variants,
      "quantization") if variants else ())
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
      calibrating = request.calibrated and default_cal
      log("no representative/parity_images: "
          + (f"calibrating {', '.join(request.calibrated)} on {default_cal}, "
             if calibrating else "")
          + f"checking parity on {default_par}")
  cal_source = representative or parity_images or default_cal
  par_source = None if random_parity else (
      parity_images or representative or default_par)
  calibration = None
  if request.calibrated:
    if cal_source is None:
      names = ", ".join(request.calibrated)
      raise ExportError(
          f"{names} needs calibration images and none were found: pass "
          "`representative`=<manifest.csv or image folder>, or leave "
          f"{names} out of `quantization`")
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
  """Writes every requested format (and those they convert from) into
  request.staging: in this process first, then the conversions in worker
  processes while each written format's check runs. Returns the staged
  paths."""
  shutil.rmtree(request.staging, ignore_errors=True)
  job = formats_lib.Job(model=model, schema=schema, table=table,
                        request=request, images=images,
                        folders=request.paths(request.staging), log=log)
  built = formats_lib.build_order(request.formats)
  for fmt in built:
    value = fmt.write(job)
    if value is not None:
      job.staged[fmt.name] = value
  result = ExportResult(paths=job.staged)
  # A check (the SavedModel's is a subprocess of its own) runs while the
  # conversions do, each in a worker process: all of them at once.
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as checker:
    checks = {f.name: checker.submit(f.check, job, job.staged[f.name])
              for f in built if f.name in job.staged}
    _convert(job, built, isolate, log)
    for name, future in checks.items():
      outcome = future.result()
      if outcome is not None:
        result.checks[name], line = outcome
        log(line)
  return result


def _convert(job: formats_lib.Job, built: Sequence[formats_lib.ExportFormat],
             isolate: bool, log) -> None:
  # Costliest first, so the workers finish together.
  calls = [(fmt, c) for fmt in sorted(built, key=lambda f: -f.conversion_cost)
           for c in fmt.conversions(job)]
  if not calls:
    return
  workers = isolated.workers_for(len(calls)) if isolate else 1
  where = (f"{workers} worker process{'es' if workers > 1 else ''}"
           if isolate else "this process")
  log(f"converting {', '.join(c.label for _, c in calls)} (in {where})")
  paths = isolated.run_all([(c.fn, c.args) for _, c in calls], isolate,
                           workers)
  converted = {}
  for (fmt, c), path in zip(calls, paths):
    converted.setdefault(fmt.name, {})[c.variant] = path
  for fmt in built:
    if fmt.name in converted:
      job.staged[fmt.name] = fmt.converted(converted[fmt.name])


def _candidates(staged: ExportResult) -> list[formats_lib.Candidate]:
  return [c for fmt in formats_lib.registered() if fmt.name in staged.paths
          for c in fmt.candidates(staged.paths[fmt.name])]


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
  tag_thresholds = (schema.tag_thresholds() if schema is not None
                    else None)
  candidates = _candidates(staged)
  reports = [parity_lib.parity(c.predictor, reference, images.parity,
                               c.tolerance, c.artefact,
                               tag_thresholds=tag_thresholds)
             for c in candidates]
  for rep in reports:  # staged paths are about to move
    rep["path"] = os.path.relpath(rep["path"], request.staging)
  log(parity_lib.format_parity_table(reports))
  _write_report(request, table, images, reports, class_table,
                request.paths(request.staging)[formats_lib.PARITY])
  failed = [r for r in reports if not r["passed"]]
  if failed:
    hint = ""
    if all(c.optional_variant for c, r in zip(candidates, reports)
           if not r["passed"]):
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
  for key in (formats_lib.PARITY,) + request.formats:
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
  result = ExportResult(
      paths={name: formats_lib.get(name).published(
          staged.paths[name], src[name], final[name])
             for name in request.formats if name in staged.paths},
      parity_path=final[formats_lib.PARITY], parity=reports,
      checks=dict(staged.checks))
  log(f"exported {request.model_name!r} version {request.version} under "
      f"{request.base}")
  return result


def export(model_dir: str,
           output: Optional[str] = None,
           formats: Sequence[str] | str | None = None,
           version: int = 1,
           model_name: Optional[str] = None,
           quantizations: Sequence[str] | str | None = None,
           representative: Optional[str] = None,
           parity_images: Optional[str] = None,
           max_image_bytes: int = MAX_IMAGE_BYTES,
           overwrite: bool = False,
           isolate: bool = True,
           log: Callable[[str], None] = print,
           model_file: Optional[str] = None,
           class_table: Optional[str] = None,
           threshold: float = artefacts.DEFAULT_THRESHOLD,
           max_image_pixels: int = MAX_IMAGE_PIXELS,
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
    formats, quantizations: default every format (formats.py) and variant.
    isolate: run the conversions in worker processes (frees the memory the
      converters keep).
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
