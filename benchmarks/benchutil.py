"""Shared by the benchmark scripts: a one-line description of the machine
(small_cnn, the fast backbone of the CPU-sized claims, is modeling.model.small_cnn)."""

import os
import platform


def machine() -> str:
  import tensorflow as tf
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    with open("/proc/loadavg", encoding="utf-8") as f:
      load = f.read().split()[0]
  except OSError:
    load = "?"
  return (f"{os.cpu_count()} CPU cores ({cpu}), TF {tf.__version__}, "
          f"load average {load}")

