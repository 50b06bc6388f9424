"""Export formats as plug-ins: one module per format, one interface.

A format module defines ``FORMAT``, an ExportFormat that knows where the
format's files go under an export's base folder, how to write them (in this
process from the Keras model, or in worker processes from another format's
staged files), which parity checks gate them, how to open one as a
predictor and what the export CLI lists. The export (publish.py), the
predictor loading (inference/predictors.py) and the CLIs loop over the
registry here and name no format.

The built-in formats are the modules listed in BUILT_IN, imported on first
use (importing this module loads neither TensorFlow nor a format).
register() adds another format for this process, explicitly: nothing
registers itself by being imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from mlc_keras.exporters.artefacts import ExportError

# The built-in formats, in the order they are built, checked, published and
# listed; each module defines FORMAT.
BUILT_IN = ("mlc_keras.exporters.serving",   # saved_model (TF Serving)
            "mlc_keras.exporters.tflite",    # tflite (LiteRT)
            "mlc_keras.exporters.onnx")      # onnx (ONNX Runtime)
# Names an export writes besides the formats' own: the parity report's key
# and folder.
PARITY = "parity"


@dataclasses.dataclass(frozen=True)
class Conversion:
  """One worker-process call (isolated.run_all) that writes one artefact."""

  label: str  # in the export's log: "converting <label>, ..."
  variant: Optional[str]  # None for a format without variants
  fn: Callable[..., str]  # picklable; returns the path written
  args: tuple


@dataclasses.dataclass
class Candidate:
  """One artefact the parity check compares with the Keras model."""

  artefact: str  # its name in the parity report ("tflite_fp16")
  predictor: Any  # a predictors.Predictor
  tolerance: Any  # a parity.Tolerance
  # A lossy variant the user may leave out to publish the rest: a failure
  # of only such candidates says so.
  optional_variant: bool = False


@dataclasses.dataclass
class Job:
  """What the formats of one export write from, and what they wrote."""

  model: Any  # the Keras model
  schema: Any  # its heads.LabelSchema
  table: Any  # its compose.ClassTable, or None
  request: Any  # the publish.Request
  images: Any  # the publish.Images (parity and calibration)
  folders: Mapping[str, str]  # each format's staging folder, by name
  log: Callable[[str], None] = print
  # What each format wrote so far (its staged value), by name.
  staged: dict = dataclasses.field(default_factory=dict)

  def variants(self, fmt: "ExportFormat") -> tuple[str, ...]:
    """The requested variants (`quantizations`) that ``fmt`` builds."""
    return tuple(q for q in self.request.quantizations if q in fmt.variants)


class ExportFormat:
  """One export format. Override what the format does; the defaults do
  nothing (no in-process write, no conversion, no check, no candidate).

  A format's staged and published value is the path it wrote, or
  {variant: path} for a format with variants.
  """

  name: str = ""  # its key in `formats`, ExportResult and Request.paths
  title: str = ""  # in the export CLI's "Written:" list and help
  # Folder under the export's base: <base>/<tree>/<model_name>/<version>;
  # None: <base>/<model_name>/<version>. A model may not be named ``tree``.
  tree: Optional[str] = None
  variants: tuple[str, ...] = ()  # the `quantizations` it can build
  default_variants: tuple[str, ...] = ()  # the export CLI's default
  calibrated_variants: frozenset = frozenset()  # need calibration images
  # Formats whose staged files this one converts from: built (and checked)
  # whenever this one is, published only when asked for.
  requires: tuple[str, ...] = ()
  # Worker-process conversions of costlier formats start first, so the
  # workers finish together.
  conversion_cost: int = 0
  suffix: Optional[str] = None  # a file format's extension (".tflite")
  folder_kind: Optional[str] = None  # a folder format: what opens
  # Predictor classes, also reachable as inference.predictors.<class name>.
  predictor_types: tuple = ()

  def folder(self, base: str, model_name: str, version: int) -> str:
    """Where the format's files go under ``base``."""
    parts = ([self.tree] if self.tree else []) + [model_name, str(version)]
    return os.path.join(base, *parts)

  def write(self, job: Job):
    """Writes the format in this process (with job.model) into
    job.folders[name]; returns its staged value, or None to convert in
    worker processes (conversions) instead."""
    del job
    return None

  def check(self, job: Job, value) -> Optional[tuple[dict, str]]:
    """A check of what write() wrote, run in a thread while the
    conversions run: (report, log line), or None."""
    del job, value
    return None

  def conversions(self, job: Job) -> list[Conversion]:
    """The worker-process calls that write the format into
    job.folders[name] (files they need beside, e.g. labels.json, written
    here)."""
    del job
    return []

  def converted(self, paths: Mapping[Optional[str], str]):
    """The staged value from the conversions' {variant: path}."""
    return dict(paths) if self.variants else paths[None]

  def candidates(self, value) -> list[Candidate]:
    """What the parity check compares with the Keras model."""
    del value
    return []

  def published(self, value, staged_folder: str, final_folder: str):
    """``value`` with its paths moved from ``staged_folder`` to
    ``final_folder``."""
    def move(path):
      return os.path.normpath(os.path.join(
          final_folder, os.path.relpath(path, staged_folder)))
    if isinstance(value, Mapping):
      return {k: move(p) for k, p in value.items()}
    return move(value)

  def listing(self, value) -> list[tuple[str, str]]:
    """(label, path) lines for the export CLI's "Written:" list."""
    if isinstance(value, Mapping):
      return [(f"{self.title} {k}", p) for k, p in value.items()]
    return [(self.title, value)]

  def empty(self):
    """ExportResult's value for the format when it was not exported."""
    return {} if self.variants else None

  def card_input(self, max_image_bytes: int,
                 max_image_pixels: int) -> Optional[str]:
    """The model card's words for what the format takes besides the uint8
    pixels of the tensor signature ("encoded JPEG ... bytes"): "" for the
    pixels alone, None to leave the format out of the card."""
    del max_image_bytes, max_image_pixels
    return None

  def open(self, path: str, bytes_signature: bool = False):
    """``path`` as a Predictor if it is this format's, else None."""
    del bytes_signature
    if (self.suffix and self.predictor_types and os.path.isfile(path)
        and path.lower().endswith(self.suffix)):
      return self.predictor_types[0](path)
    return None


_registry: dict[str, ExportFormat] = {}
_built_in: set[str] = set()
_loaded = False


def _load_built_in() -> None:
  global _loaded
  if _loaded:
    return
  for module in BUILT_IN:
    fmt = importlib.import_module(module).FORMAT
    _registry[fmt.name] = fmt
    _built_in.add(fmt.name)
  _loaded = True


def register(fmt: ExportFormat) -> ExportFormat:
  """Adds ``fmt`` for this process, after the built-ins; returns it.
  Raises ExportError on a name or folder already taken."""
  _load_built_in()
  taken = {f.tree for f in _registry.values() if f.tree} | {PARITY}
  if not fmt.name or fmt.name in _registry or fmt.name == PARITY:
    raise ExportError(f"export format name {fmt.name!r} is empty or taken")
  if fmt.tree in taken:
    raise ExportError(f"export format folder {fmt.tree!r} is taken")
  _registry[fmt.name] = fmt
  return fmt


def unregister(name: str) -> None:
  """Removes a format added with register()."""
  _load_built_in()
  if name in _built_in:
    raise ExportError(f"{name!r} is a built-in export format")
  _registry.pop(name, None)


def registered() -> list[ExportFormat]:
  """Every format, built-ins first."""
  _load_built_in()
  return list(_registry.values())


def names() -> tuple[str, ...]:
  return tuple(f.name for f in registered())


def get(name: str) -> ExportFormat:
  _load_built_in()
  try:
    return _registry[name]
  except KeyError:
    raise ExportError(f"unknown export format {name!r}; choose from: "
                      f"{', '.join(_registry)}") from None


def build_order(requested: Sequence[str]) -> list[ExportFormat]:
  """The requested formats and those they require, in registry order."""
  needed, todo = set(), list(requested)
  while todo:
    name = todo.pop()
    if name not in needed:
      needed.add(name)
      todo.extend(get(name).requires)
  return [f for f in registered() if f.name in needed]


def variants_of(requested: Sequence[str]) -> tuple[str, ...]:
  """Every variant the requested formats can build, in their order."""
  return tuple(dict.fromkeys(v for n in requested for v in get(n).variants))


def default_variants(requested: Sequence[str]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(v for n in requested
                             for v in get(n).default_variants))


def reserved_folders() -> frozenset:
  """Folder names under an export's base that belong to a format or the
  parity report."""
  return frozenset({f.tree for f in registered() if f.tree} | {PARITY})
