"""mlc_keras: multi-head image classification in Keras."""

from importlib import metadata as _metadata

__version__ = "0.1.0"

# Keras 3 releases before 3.13.2 let a crafted .keras file run code despite
# safe_mode; refuse to run on them rather than load models unsafely.
_MIN_KERAS = (3, 13, 2)


def _check_keras(version: str) -> None:
  parts = []
  for piece in version.split(".")[:3]:
    digits = "".join(ch for ch in piece if ch.isdigit())
    parts.append(int(digits) if digits else 0)
  if tuple(parts) < _MIN_KERAS:
    raise ImportError(
        f"mlc_keras needs keras >= {'.'.join(map(str, _MIN_KERAS))} (older "
        f"releases have safe_mode bypasses); found keras {version}. Run: "
        "pip install -U 'keras>=3.13.2'")


try:
  _check_keras(_metadata.version("keras"))
except _metadata.PackageNotFoundError:
  raise ImportError("mlc_keras needs keras >= 3.13.2: pip install -e .") from None


# The public API (mlc_keras/api.py), loaded on first use so that importing
# the package (every command line does) stays free of TensorFlow.
_API = ("fit", "Run", "load_predictor", "predict_files", "build_model",
        "make_dataset", "make_config", "load_model", "load_schema",
        "as_schema", "demo_data")
_CONFIG = ("Config", "DataConfig", "ModelConfig", "TrainConfig", "PRESETS")
_HEADS = ("LabelSchema", "HeadSpec")
# The parent of every error that is the user's mistake (errors.py).
_ERRORS = ("MlcError",)
__all__ = list(_API + _CONFIG + _HEADS + _ERRORS) + ["__version__"]


def __getattr__(name):
  import importlib  # pylint: disable=g-import-not-at-top
  for names, module in ((_API, "api"), (_CONFIG, "core.config"),
                        (_HEADS, "core.heads"), (_ERRORS, "core.errors")):
    if name in names:
      return getattr(importlib.import_module(f"mlc_keras.{module}"), name)
  raise AttributeError(f"module 'mlc_keras' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
