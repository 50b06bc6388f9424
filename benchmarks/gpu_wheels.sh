#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu.py needs on a machine that has
# CUDA, JAX (with numpy, ml_dtypes, scipy) and Python 3.12 but no TensorFlow,
# no keras and no network: keras and its small dependencies, at the versions
# tested together here. Writes them to wheels/ (git-ignored; 9.4 MiB here, under
# the 64 MiB that may travel with a working tree). On that machine:
#
#   pip install --no-index --no-deps --target /tmp/kw wheels/*.whl && \
#     PYTHONPATH=/tmp/kw KERAS_BACKEND=jax python benchmarks/gpu.py
#
# Usage: benchmarks/gpu_wheels.sh [FOLDER] (PYTHON_VERSION=3.12 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-wheels}"
py="${PYTHON_VERSION:-3.12}"
# numpy and ml_dtypes come with jax and must match its build: not carried.
# h5py and optree are compiled: --platform picks Linux x86-64 builds.
pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d "$out" \
  keras==3.15.1 absl-py==2.5.1 h5py==3.14.0 namex==0.1.0 optree==0.20.0 \
  packaging==26.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
  pygments==2.21.0 typing_extensions==4.16.0
ls -1 "$out"
du -sh "$out"
