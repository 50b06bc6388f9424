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
