"""One conversion per process."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Callable

from mlc_keras.artefacts import ExportError


def run(fn: Callable, *args):
  """fn(*args) in a fresh spawned process; fn and args must pickle."""
  # The TFLite converter and tf2onnx
  # each keep a model's worth of memory after every conversion; a process per
  # conversion returns it to the system.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=1,
                                              mp_context=ctx) as pool:
    try:
      return pool.submit(fn, *args).result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise ExportError(
          f"the converter process died ({fn.__name__}); out of memory?") from e
