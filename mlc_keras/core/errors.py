"""The one parent of the errors that are the user's mistake, not a bug.

A bad setting, bad data, a run folder that does not fit, a failed export
gate, a locked run: each raises a subclass of MlcError, a ValueError. The
command lines catch MlcError alone (one line, exit 2); any other exception
is a bug and keeps its traceback.

A message names a setting by its config field (or keyword argument) in
backquotes: "`image_size`=16: must be >= 32". ``str(e)`` drops the quotes,
which is what a Python caller reads; ``e.render(name)`` puts ``name(field)``
in their place, which is how a command line shows its flags (with
cli/help.flag_name, the message above reads --image_size=16: must be >= 32).
The library thus never speaks in flags, and the mapping from field to flag
lives in one place.

Pure Python: importing it loads neither TensorFlow nor Keras.
"""

from __future__ import annotations

import re
from typing import Callable

# A setting's name in a message: `field`, lower case (no other backquoted
# text is touched).
_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def setting(name: str) -> str:
  """``name`` marked as a setting for a message: "`name`"."""
  return f"`{name}`"


class MlcError(ValueError):
  """A user's mistake: a setting, data, folder or artefact that cannot work.

  A ValueError, so code that caught ValueError before still catches it."""

  def __str__(self) -> str:
    return _SETTING.sub(r"\1", super().__str__())

  @property
  def fields(self) -> tuple[str, ...]:
    """The settings the message names, in order, once each."""
    return tuple(dict.fromkeys(_SETTING.findall(super().__str__())))

  def render(self, name: Callable[[str], str]) -> str:
    """The message with each setting shown as ``name(field)``."""
    return _SETTING.sub(lambda m: name(m.group(1)), super().__str__())


class SettingError(MlcError):
  """A setting's value (or a combination of settings) that cannot work; the
  message names the setting and its value."""


class SchemaError(MlcError):
  """A heads file, manifest or label value that does not fit the schema
  (core.heads re-exports it; it lives here so that the head kinds, which
  core.heads imports, can raise it too)."""
