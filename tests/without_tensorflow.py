"""Runs a Python script as if TensorFlow were not installed: any import of
tensorflow (or a submodule) raises ImportError, as on a machine without it.

  python tests/without_tensorflow.py SCRIPT [ARGS...]

The tests use it to check that the benchmark and the modeling package need
no TensorFlow; it is also the quick check before carrying code to such a
machine.
"""

import importlib.abc
import runpy
import sys

BLOCKED = "tensorflow"


class _Absent(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path, target=None):
    del path, target
    if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
      raise ImportError(f"No module named {fullname!r} (blocked by "
                        "tests/without_tensorflow.py)", name=fullname)
    return None


def block() -> None:
  if any(m == BLOCKED or m.startswith(BLOCKED + ".") for m in sys.modules):
    raise RuntimeError("tensorflow was imported before it could be blocked")
  sys.meta_path.insert(0, _Absent())


if __name__ == "__main__":
  block()
  script = sys.argv[1]
  sys.argv = sys.argv[1:]
  runpy.run_path(script, run_name="__main__")
