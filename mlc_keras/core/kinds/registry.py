"""The registry of every head kind a heads file may name.

A kind (base.HeadKind) is one module that answers everything that depends
on what a head's label is: how a manifest cell parses, how many label
columns it takes, its output layer, loss and metrics, how its scores become
decisions in the predict JSON and the SavedModel, and its evaluation
numbers. The rest of the package asks ``spec.kind_impl`` (a HeadSpec's
kind object) and never tests a kind's name.

Adding a kind: one module in core/kinds with a HeadKind subclass, and its
line in KINDS below (or ``register(kind)`` from a user's code, before a
schema names it).
"""

from __future__ import annotations

from mlc_keras.core import errors
from mlc_keras.core.kinds import base
from mlc_keras.core.kinds import ordinal
from mlc_keras.core.kinds import softmax
from mlc_keras.core.kinds import tags

HeadKind = base.HeadKind

KINDS: dict[str, base.HeadKind] = {
    k.name: k for k in (softmax.KIND, tags.KIND, ordinal.KIND)}


def register(kind: base.HeadKind) -> base.HeadKind:
  """Adds ``kind`` under ``kind.name``; a name already taken raises (a
  second kind of one name would make labels.json ambiguous)."""
  if not isinstance(kind, base.HeadKind) or not kind.name:
    raise TypeError(f"a head kind is a named HeadKind instance, got {kind!r}")
  if kind.name in KINDS and KINDS[kind.name] is not kind:
    raise errors.SchemaError(f"head kind {kind.name!r} is registered already")
  KINDS[kind.name] = kind
  return kind


def get(name: str, head: str = "") -> base.HeadKind:
  """The kind called ``name``; SchemaError naming ``head`` if there is none."""
  try:
    return KINDS[name]
  except (KeyError, TypeError):
    raise errors.SchemaError(
        f"head {head!r}: kind must be one of {tuple(KINDS)}, got {name!r}"
    ) from None


def keras_objects() -> dict:
  """{registered name: class} of every kind's own Keras objects (for
  loading a saved model)."""
  out = {}
  for kind in KINDS.values():
    out.update(kind.keras_objects())
  return out
