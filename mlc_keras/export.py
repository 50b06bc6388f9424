r"""Exports a trained model for TF Serving, LiteRT and ONNX Runtime, and fails
unless every artefact matches the Keras model (see exporters/parity.py for tolerances).

  python -m mlc_keras.export --model_dir=mlc_runs/demo
  python -m mlc_keras.export --model_dir=runs/logos --output=/srv/models \
      --model_name=logos --version=3 --formats=saved_model,tflite \
      --quantization=fp32,int8 --representative=data/val.csv
  python -m mlc_keras.export --model_dir=mlc_runs/demo --class_table=classes.csv

Writes <output>/<model_name>/<version>/ (SavedModel for TF Serving),
<output>/litert/<model_name>/<version>/*.tflite,
<output>/onnx/<model_name>/<version>/<model_name>.onnx and the parity report
<output>/parity/<model_name>/<version>.json. See export/README.md.

The model exported is <model_dir>/calibrated.keras when `evaluate --calibrate`
wrote one after the last training (so the exports carry its temperatures),
else <model_dir>/model.keras; the choice is printed, and --model_file
overrides it.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from mlc_keras.cli import help as cli_help
# No TensorFlow in either: --help stays fast.
from mlc_keras.core import config as config_lib
from mlc_keras.core import errors
from mlc_keras.exporters import formats as formats_lib

_ALL_FORMATS = formats_lib.names()
_VARIANTS = formats_lib.variants_of(_ALL_FORMATS)
_DEFAULT_VARIANTS = formats_lib.default_variants(_ALL_FORMATS)

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Trained model folder (model.keras + labels.json), as "
    "written by mlc_keras.train, or a .keras file with labels.json beside "
    "it.", required=True)
_MODEL_FILE = flags.DEFINE_string(
    "model_file", None, "Which .keras file in --model_dir to export, e.g. "
    "model.keras. Default: calibrated.keras (written by evaluate "
    "--calibrate) if it is not older than model.keras, else model.keras; "
    "the choice is printed.")
_CLASS_TABLE = flags.DEFINE_string(
    "class_table", None, "Class table CSV (class name, then one column per "
    "head; blank = does not matter): every artefact gets a \"class\" output "
    "(the table's class probabilities, composed from the heads) and "
    "classes.csv beside it.")
_THRESHOLD = flags.DEFINE_float(
    "threshold", 0.5, "With a class table: the SavedModel's bytes signature "
    "answers class_class='unknown' below this probability.",
    lower_bound=0.0, upper_bound=1.0)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Base folder of the export. Default: <model_dir>/export.")
_FORMATS = flags.DEFINE_string(
    "formats", ",".join(_ALL_FORMATS),
    f"Comma list of {', '.join(_ALL_FORMATS)}.")
_VERSION = flags.DEFINE_integer(
    "version", 1, "Model version: TF Serving serves the highest integer.",
    lower_bound=1)
_MODEL_NAME = flags.DEFINE_string(
    "model_name", None,
    "Name in TF Serving and in file names. Default: the model_dir's name.")
_OFF_BY_DEFAULT = ", ".join(v for v in _VARIANTS if v not in _DEFAULT_VARIANTS)
_QUANTIZATION = flags.DEFINE_string(
    # Each format's module says why a variant is off by default.
    "quantization", ",".join(_DEFAULT_VARIANTS),
    "Comma list of "
    + " and ".join(f.title for f in formats_lib.registered() if f.variants)
    + f" variants: {', '.join(_VARIANTS)}."
    + (f" {_OFF_BY_DEFAULT} is off by default; add it for a well-trained "
       "model, ideally with --representative." if _OFF_BY_DEFAULT else ""))
_REPRESENTATIVE = flags.DEFINE_string(
    "representative", None,
    "Manifest CSV (image column), image folder or image used to calibrate "
    "int8 (up to 300 images). Default: --parity_images, else the run's "
    "training manifest (config.json).")
_PARITY_IMAGES = flags.DEFINE_string(
    "parity_images", None,
    "Manifest CSV, image folder or image for the parity check (up to 400 "
    "images), or 'random' for 32 seeded random images. Default: "
    "--representative, else the manifest the run was evaluated on "
    "(results.json); none found is an error.")
_MAX_IMAGE_BYTES = flags.DEFINE_integer(
    "max_image_bytes", 20 * 1024 * 1024,
    "Per-image size cap of the SavedModel's bytes signature.", lower_bound=1)
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", config_lib.DataConfig.max_image_pixels,
    "Per-image width x height cap of the SavedModel's bytes signature, read "
    "from the image header before decoding (default: the limit training "
    "applies to its files).", lower_bound=1)
_IMAGE_COLUMN = flags.DEFINE_string(
    "image_column", None, "Image path column of the manifest CSVs given to "
    "--representative/--parity_images or read from the run (default: the "
    "run's --image_column, from its config.json).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing export of the same version.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF's INFO lines (renamed captures, asset writes) bury the parity table.
  logging.set_verbosity(logging.WARNING)
  # Imported here so --help answers without loading TensorFlow.
  from mlc_keras.exporters import publish as export_lib  # pylint: disable=g-import-not-at-top
  try:
    result = export_lib.export(
        _MODEL_DIR.value,
        output=_OUTPUT.value,
        formats=_FORMATS.value,
        version=_VERSION.value,
        model_name=_MODEL_NAME.value,
        quantizations=_QUANTIZATION.value,
        representative=_REPRESENTATIVE.value,
        parity_images=_PARITY_IMAGES.value,
        max_image_bytes=_MAX_IMAGE_BYTES.value,
        max_image_pixels=_MAX_IMAGE_PIXELS.value,
        image_column=_IMAGE_COLUMN.value,
        overwrite=_OVERWRITE.value,
        model_file=_MODEL_FILE.value,
        class_table=_CLASS_TABLE.value,
        threshold=_THRESHOLD.value)
  except errors.MlcError as e:
    cli_help.fail(e)
  print("\nWritten:")
  for label, path in result.listing() + [("parity report",
                                          result.parity_path)]:
    print(f"  {label:<15} {path}")


# --help lists every flag of this module under these headings (cli_help).
_HELP_GROUPS = {
    "run folder": (_MODEL_DIR, _MODEL_FILE),
    "export": (_OUTPUT, _MODEL_NAME, _VERSION, _FORMATS, _QUANTIZATION,
               _OVERWRITE),
    "parity and int8 images": (_PARITY_IMAGES, _REPRESENTATIVE, _IMAGE_COLUMN),
    "composed classes": (_CLASS_TABLE, _THRESHOLD),
    "serving limits": (_MAX_IMAGE_BYTES, _MAX_IMAGE_PIXELS),
}


def run():
  """The mlc-export console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
