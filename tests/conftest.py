"""Test-session setup: which test files share a pytest-xdist worker.

Under ``--dist loadfile`` (setup.cfg) each file runs whole on one worker,
and a worker builds tests/export_fixture.py's exported models the first
time one of its files asks (once per process: lru_cache). Files spread over
both workers built them twice, minutes of CPU each time; here every file
that uses the shared export fixture is one scheduling unit, so one worker
builds them once.
"""

from __future__ import annotations

import functools
import os

_FIXTURE_SCOPE = "tests/export_fixture.py (shared exports)"


@functools.lru_cache(maxsize=None)
def _uses_export_fixture(path: str) -> bool:
  try:
    with open(path, encoding="utf-8") as f:
      return "export_fixture." in f.read()
  except OSError:
    return False


def pytest_xdist_make_scheduler(config, log):
  if config.getoption("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top
  root = str(config.rootpath)

  class SharedFixtureScheduling(LoadFileScheduling):
    """loadfile, with the export fixture's users kept together."""

    def _split_scope(self, nodeid: str) -> str:
      scope = super()._split_scope(nodeid)
      if _uses_export_fixture(os.path.join(root, scope)):
        return _FIXTURE_SCOPE
      return scope

  return SharedFixtureScheduling(config, log)
