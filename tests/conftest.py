"""How the suite splits over pytest-xdist workers (setup.cfg: -n 2
--dist loadgroup).

Every test file is one group, so a class's setUpClass (often a short
training run) happens once, on one worker. The files that share the export
fixture (tests/export_fixture.py: trained and exported once per process,
then read-only) form one group, so that fixture is built once too, not once
per worker.
"""

from __future__ import annotations

import os
import re

import pytest

# A call of one of export_fixture's cached builders.
_SHARED = re.compile(r"export_fixture\.(plain|composed|tagged|stacked)\(")


def _uses_export_fixture(path: str) -> bool:
  with open(path, encoding="utf-8") as f:
    return bool(_SHARED.search(f.read()))


def pytest_collection_modifyitems(config, items):
  del config
  shared = {}
  for item in items:
    path = str(item.fspath)
    if path not in shared:
      shared[path] = _uses_export_fixture(path)
    group = "export_fixture" if shared[path] else os.path.basename(path)
    item.add_marker(pytest.mark.xdist_group(group))
