"""One declaration per setting: each config field says, beside its default,
how a user sets it and what it may hold.

A field of core/config.py's dataclasses is declared with ``setting(...)``:
its group, its flag (the field's own name unless said), its range or
choices, whether it names a file and whether it may change when an
interrupted run resumes. What used to be listed by hand elsewhere is read
from here: the resume table (runs/folder.py), the paths made absolute and
the plain range checks (runs/preflight.py), the field -> flag names of the
one-line errors (cli/help.py), and train's flags: each field with a help
text is defined from its declaration, and every flag sets its field.

Pure Python: importing it loads neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Union

# The groups a command line shows the settings in.
GROUPS = ("data", "model", "training", "recipe", "run folder")
# Values of a path setting that name no file (ImageNet weights).
KEYWORDS = ("imagenet",)
_KEY = "mlc_keras.setting"


@dataclasses.dataclass(frozen=True)
class Setting:
  """What a config field declares (setting() builds it).

  flag: the command-line flag that sets it; None: none (a preset or a
    config.json sets it).
  lo, hi: its range (None: open), ``lo_open`` / ``hi_open`` whether an end
    is excluded; ``integer``: a whole number; ``optional``: None allowed.
  choices: the values it may take (None: any).
  path: True for a file or folder path (made absolute before a run
    records it), "file" for a path or inline text (absolute when it names
    an existing file).
  resumable: may change when an interrupted run resumes (it changes how
    the run goes or what it checks, not what its backup means).
  help: the flag's help; given, the command line defines the flag from this
    declaration (type and default from the field, ``choices`` as an enum,
    ``lo`` / ``hi`` as the flag's bounds with ``flag_bounds``); a setting
    named in backquotes (`field`) is shown as its flag.
  """
  group: str
  flag: Optional[str]
  help: str = ""
  lo: Optional[float] = None
  hi: Optional[float] = None
  lo_open: bool = False
  hi_open: bool = True
  integer: bool = False
  optional: bool = False
  choices: Optional[tuple] = None
  path: Union[bool, str] = False
  resumable: bool = False
  flag_bounds: bool = False


def setting(default, group: str, *, flag: Optional[str] = "",
            optional: Optional[bool] = None, **kw) -> Any:
  """A dataclass field with default ``default`` and its Setting (see
  Setting; ``flag`` "" means the field's own name, ``optional`` defaults to
  whether the default is None)."""
  if group not in GROUPS:
    raise ValueError(f"group {group!r} is not one of {GROUPS}")
  if optional is None:
    optional = default is None
  return dataclasses.field(default=default, metadata={
      _KEY: Setting(group, flag, optional=optional, **kw)})


@dataclasses.dataclass(frozen=True)
class Declared:
  """One config field and its Setting (``flag`` resolved)."""
  section: str
  name: str
  setting: Setting
  default: Any = None
  type: str = ""  # the field's annotation, e.g. "Optional[int]"

  @property
  def key(self) -> str:
    return f"{self.section}.{self.name}"


def declared(config_cls) -> tuple[Declared, ...]:
  """Every field of the config dataclass ``config_cls`` (whose fields are
  the sections), in declaration order. Raises TypeError for a field
  declared without setting()."""
  out = []
  for section in dataclasses.fields(config_cls):
    for f in dataclasses.fields(section.default):
      s = f.metadata.get(_KEY)
      if s is None:
        raise TypeError(f"config field {section.name}.{f.name} is not "
                        "declared with settings.setting(...)")
      if s.flag == "":
        s = dataclasses.replace(s, flag=f.name)
      out.append(Declared(section.name, f.name, s, f.default,
                          f.type if isinstance(f.type, str)
                          else f.type.__name__))
  return tuple(out)


def problem(value, s: Setting) -> Optional[str]:
  """Why ``value`` does not fit Setting ``s`` ("must be >= 1", "choose one
  of a, b"), or None."""
  if value is None and s.optional:
    return None
  if s.choices is not None:
    if value not in s.choices:
      return f"choose one of {', '.join(map(str, s.choices))}"
    return None
  if s.lo is None and s.hi is None and not s.integer:
    return None
  kind = "an integer" if s.integer else "a number"
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      s.integer and not float(value).is_integer()) or not math.isfinite(value):
    return f"must be {kind}"
  below = s.lo is not None and (value <= s.lo if s.lo_open else value < s.lo)
  above = s.hi is not None and (value >= s.hi if s.hi_open else value > s.hi)
  if not (below or above):
    return None
  parts = []
  if s.lo is not None:
    parts.append(f"> {s.lo}" if s.lo_open else f">= {s.lo}")
  if s.hi is not None:
    parts.append(f"{'<' if s.hi_open else '<='} {s.hi}")
  return "must be " + " and ".join(parts)


def problems(cfg) -> list[tuple[str, Any, str]]:
  """(field, value, why) of each value of config ``cfg`` out of its declared
  range or choices, in declaration order."""
  out = []
  for d in declared(type(cfg)):
    value = getattr(getattr(cfg, d.section), d.name)
    why = problem(value, d.setting)
    if why:
      out.append((d.name, value, why))
  return out


def absolute_paths(cfg):
  """``cfg`` (a config) with every path setting made absolute (a "file"
  one only when it names an existing file; KEYWORDS and empty values
  left alone)."""
  changes: dict[str, dict] = {}
  for d in declared(type(cfg)):
    value = getattr(getattr(cfg, d.section), d.name)
    if not d.setting.path or not value or value in KEYWORDS:
      continue
    if d.setting.path == "file" and not os.path.isfile(value):
      continue
    changes.setdefault(d.section, {})[d.name] = os.path.abspath(value)
  return dataclasses.replace(cfg, **{
      section: dataclasses.replace(getattr(cfg, section), **values)
      for section, values in changes.items()})
