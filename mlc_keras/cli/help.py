"""--help for the CLIs: the verb's own flags under group headings.

absl's --help lists the key flags of the module named by sys.argv[0]. For a
console script (mlc-train) that is the launcher file, which defines no flag,
so absl prints "Try --helpfull" and nothing else; key flags
(flags.declare_key_flag, adopt_module_key_flags) are registered under the
declaring module's name, so they do not reach it either. And under
python -m, absl prints one alphabetical list, and --helpfull one list per
module, absl's and its logging's included. Each CLI declares its groups
instead: --helpfull lists every flag of the verb under them; --help the
same, or, for a verb that names a core set (train), only that set and how
many more there are.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping, NoReturn, Sequence

from absl import app
from absl import flags

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors


def _spellings(*names: str) -> frozenset[str]:
  return frozenset(f"{dash}{name}{value}" for dash in ("-", "--")
                   for name in names for value in ("", "=true", "=1"))


# What absl's HelpFlag / HelpshortFlag and HelpfullFlag answer to.
_HELP_ARGS = _spellings("help", "helpshort") | {"-?"}
_HELPFULL_ARGS = _spellings("helpfull")

# What --helpfull ends with: the flags absl adds to every verb.
ABSL_LINE = ("Also absl's own flags: --flagfile=FILE (flags "
             "read from a file), --undefok, logging (-v, --logtostderr, ...) "
             "and debugging (--pdb, --run_with_profiling, ...); --helpxml "
             "lists them all.")

Groups = Mapping[str, Sequence[flags.FlagHolder]]

# Config field -> its flag (None: no flag of its own, only a preset or a
# config.json sets it), as config.py declares them.
_FLAGS = {d.name: d.setting.flag for d in config_lib.SETTINGS}


def flag_name(field: str) -> str:
  """How a user sets config field ``field``: '--flag' or '--preset (field)'
  (a name that is no config field: '--field', a flag of the CLI's own)."""
  flag = _FLAGS.get(field, field)
  if flag is None:
    return f"--preset ({field})"
  return "--" + flag


def flag_text(text: str) -> str:
  """``text`` (a setting's help) with each setting it names in backquotes
  shown as its flag, as error_line shows an error."""
  return errors.MlcError(text).render(flag_name)


def wants_help(argv: Sequence[str]) -> str | None:
  """What help argv asks for first (before a '--' that ends the flags):
  "help" (--help, --helpshort, -?), "helpfull" or None."""
  for arg in argv[1:]:
    if arg == "--":
      return None
    if arg in _HELP_ARGS:
      return "help"
    if arg in _HELPFULL_ARGS:
      return "helpfull"
  return None


def _module_flags(groups: Groups, fv: flags.FlagValues) -> list[flags.Flag]:
  """Every flag defined in the module that defined the grouped flags, in
  definition order."""
  modules = dict.fromkeys(fv.find_module_defining_flag(h.name)
                          for holders in groups.values() for h in holders)
  seen, out = set(), []
  for module in modules:
    for flag in fv.get_flags_for_module(module):
      if flag.name not in seen:
        seen.add(flag.name)
        out.append(flag)
  return out


def _render(flag: flags.Flag) -> str:
  name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
  text = flags.text_wrap(f"{name}: {flag.help or ''}", indent="      ",
                         firstline_indent="  ")
  if flag.default_as_str:
    text += "\n" + flags.text_wrap(f"(default: {flag.default_as_str})",
                                   indent="      ")
  if flag.parser.syntactic_help:
    text += "\n" + flags.text_wrap(f"({flag.parser.syntactic_help})",
                                   indent="      ")
  return text


def _listing(groups: Groups, fv: flags.FlagValues,
             parts: list[str]) -> set[str]:
  """Appends each group's flags to ``parts`` in the order given; returns
  the names listed."""
  listed = set()
  for heading, holders in groups.items():
    lines = []
    for holder in holders:
      if holder.name in listed:
        continue
      listed.add(holder.name)
      lines.append(_render(fv[holder.name]))
    if lines:
      parts.append(f"\n{heading}:\n" + "\n".join(lines))
  return listed


def grouped_help(doc: str | None, groups: Groups,
                 flag_values: flags.FlagValues | None = None) -> str:
  """The full help text: ``doc``, then each group's flags in the order
  given; a flag of the same module that no group names is listed under
  "other", so a new flag is never hidden; then ABSL_LINE."""
  fv = flags.FLAGS if flag_values is None else flag_values
  parts = [(doc or "").rstrip("\n")]
  listed = _listing(groups, fv, parts)
  rest = [f for f in _module_flags(groups, fv) if f.name not in listed]
  if rest:
    parts.append("\nother:\n" + "\n".join(_render(f) for f in rest))
  parts.append("\n" + flags.text_wrap(ABSL_LINE) + "\n")
  return "\n".join(parts)


def core_help(doc: str | None, core: Groups, groups: Groups,
              flag_values: flags.FlagValues | None = None) -> str:
  """The short help text: ``doc``, then the ``core`` flags under their
  headings, then how many more flags of the module ``groups`` covers (every
  one of them is in grouped_help, which --helpfull prints)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  parts = [(doc or "").rstrip("\n")]
  listed = _listing(core, fv, parts)
  every = _module_flags(groups, fv)
  more = sum(f.name not in listed for f in every)
  parts.append("\n" + flags.text_wrap(
      f"{more} more flags: --helpfull lists all {len(every)} under their "
      "groups.") + "\n")
  return "\n".join(parts)


def error_line(e: errors.MlcError) -> str:
  """``e``'s message as a command line says it: each setting it names shown
  as the flag that sets it (flag_name)."""
  return e.render(flag_name)


def fail(e: errors.MlcError) -> NoReturn:
  """The user's mistake ``e`` as one "error: ..." line on stderr; exit 2."""
  print(f"error: {error_line(e)}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable, doc: str | None, groups: Groups,
        argv: Sequence[str] | None = None, core: Groups | None = None) -> None:
  """app.run(main), except that --helpfull prints grouped_help and --help
  core_help (grouped_help where the verb names no ``core`` set), each
  exiting 0."""
  argv = sys.argv if argv is None else argv
  asked = wants_help(argv)
  if asked == "help" and core is not None:
    sys.stdout.write(core_help(doc, core, groups))
    sys.exit(0)
  if asked:
    sys.stdout.write(grouped_help(doc, groups))
    sys.exit(0)
  app.run(main, argv=list(argv))
