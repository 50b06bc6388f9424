"""Conversions in worker processes: one process per call (run) or a few
worker processes shared by a batch of calls, run in parallel (run_all)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any, Callable, Optional, Sequence

from mlc_keras.exporters.artefacts import ExportError

# Each worker holds a converter's working memory (about 1-2 GB for
# ResNet50V2); past four, memory runs out before cores on common machines.
MAX_WORKERS = 4


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def workers_for(calls: int) -> int:
  """How many worker processes run_all starts for ``calls`` calls."""
  return max(1, min(calls, _cores(), MAX_WORKERS))


def run(fn: Callable, *args):
  """fn(*args) in a fresh spawned process; fn and args must pickle."""
  return run_all([(fn, args)])[0]


def run_all(calls: Sequence[tuple[Callable, tuple]], isolate: bool = True,
            workers: Optional[int] = None) -> list[Any]:
  """[fn(*args) for fn, args in calls], in that order.

  With ``isolate``, the calls run in parallel in spawned worker processes
  (``workers``, default workers_for(len(calls))), each reused for several
  calls: the TFLite converter and tf2onnx keep a model's worth of memory
  after every conversion, which a worker returns to the system when the batch
  ends, and each worker pays TensorFlow's import (~8 CPU-seconds) once, not
  once per conversion. The first failure is raised after every call ended.
  """
  if not isolate:
    return [fn(*args) for fn, args in calls]
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=workers or workers_for(len(calls)), mp_context=ctx) as pool:
    futures = [(fn, pool.submit(fn, *args)) for fn, args in calls]
    concurrent.futures.wait([f for _, f in futures])
  results = []
  for fn, future in futures:
    try:
      results.append(future.result())
    except concurrent.futures.process.BrokenProcessPool as e:
      raise ExportError(
          f"the converter process died ({fn.__name__}); out of memory?") from e
  return results
