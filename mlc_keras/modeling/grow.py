"""Growing a trained model: a new schema started from a parent run
(init_from) and training only some heads (train_heads).

What is copied from the parent, head by head (plan_heads):
  copied    same name, same classes in the same order: the Dense kernel and
            bias are copied as they are, so the head's output is the parent's.
  extended  same name, every parent class still there, new ones added: the
            kernel column and bias entry of each parent class are copied to
            that class's position in the new head (matched by class name, so
            a new class sorted into the middle is fine); the new classes keep
            their fresh initialisation (Glorot kernel column, zero bias).
  changed   a parent class is gone (renamed or dropped): there is no row to
            take it from, so this is an error unless the head is listed in
            ``reinit``, which starts it from a fresh initialisation.
  new       no head of that name in the parent: fresh initialisation.
Heads of the parent that the new schema does not name are dropped.
How a kept head's layer is copied is its kind's (core/kinds copy_weights):
the above for Dense heads (softmax, tags); an ordinal head only with its
classes unchanged and in the same order (its thresholds sit between
neighbouring classes). A head whose kind changed is refused.

The backbone (every layer of the keras.applications backbone, BatchNorm
statistics included) is always copied: it is what the heads were trained on.
The pooling (head_pooling) does not change it: pooling has no weights.

A kept head (copied or extended) keeps its private layers: its projection
(the widths must agree) and its attention (head_pooling=attention). A
parent that pooled with attention cannot seed that head in an "avg" child
(the head's weights were fitted to its own attention's features, not to the
average; an error names the flag). An "avg" parent can seed an "attention"
child: the new attention convolution starts at zero, i.e. uniform weights,
so the head reads the average pool its parent read and starts with the
parent's outputs (to float rounding), then learns where to look.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import keras

from mlc_keras.core import heads as heads_lib
from mlc_keras.modeling import model as model_lib
from mlc_keras.modeling import saving

COPIED, EXTENDED, CHANGED, NEW = "copied", "extended", "changed", "new"


class GrowError(heads_lib.SchemaError):
  """A parent model that cannot seed the new schema, or a bad head list."""


@dataclasses.dataclass(frozen=True)
class HeadPlan:
  name: str
  status: str  # COPIED, EXTENDED, CHANGED (re-initialised) or NEW
  added: tuple[str, ...] = ()  # classes the parent head did not have
  removed: tuple[str, ...] = ()  # parent classes the new head lacks


def plan_heads(parent: heads_lib.LabelSchema, child: heads_lib.LabelSchema,
               reinit: Iterable[str] = ()) -> list[HeadPlan]:
  """What happens to each head of ``child`` (see the module docstring).
  Raises GrowError for a changed head not in ``reinit``, or a ``reinit``
  name that is not a changed head."""
  reinit = set(reinit)
  old = {h.name: h for h in parent.heads}
  plans = []
  for h in child.heads:
    if h.name not in old:
      plans.append(HeadPlan(h.name, NEW))
      continue
    before = old[h.name].classes
    added = tuple(c for c in h.classes if c not in before)
    removed = tuple(c for c in before if c not in h.classes)
    if removed:
      status = CHANGED
    elif h.classes == before:
      status = COPIED
    else:
      # Gained classes, or the same ones in another order: either way each
      # parent class's column is copied to its new position by name.
      status = EXTENDED
    plans.append(HeadPlan(h.name, status, added, removed))
  refused = [p for p in plans if p.status == CHANGED and p.name not in reinit]
  if refused:
    lines = "; ".join(
        f"{p.name!r} lost {list(p.removed)}" + (f" and gained {list(p.added)}"
                                                if p.added else "")
        for p in refused)
    raise GrowError(
        f"`init_from`: head(s) whose classes changed: {lines}. A parent class "
        "that is gone leaves no weights to copy; list the head in "
        f"`reinit_heads`={','.join(p.name for p in refused)} to train it "
        "from scratch, or keep its classes (a heads file may list classes "
        "no row has)")
  stray = sorted(reinit - {p.name for p in plans if p.status == CHANGED})
  if stray:
    raise GrowError(
        f"`reinit_heads`: {stray} are not heads whose classes changed "
        f"(changed: {[p.name for p in plans if p.status == CHANGED] or 'none'})")
  return plans


def _check_backbone(parent: keras.Model, child: keras.Model,
                    origin: str) -> tuple[keras.Layer, keras.Layer]:
  try:
    src = parent.get_layer(model_lib.BACKBONE_LAYER)
  except ValueError:
    raise GrowError(f"{origin}: the model has no {model_lib.BACKBONE_LAYER!r} "
                    "layer; `init_from` needs a model built by mlc_keras "
                    "train") from None
  dst = child.get_layer(model_lib.BACKBONE_LAYER)
  src_shapes = [tuple(w.shape) for w in src.weights]
  dst_shapes = [tuple(w.shape) for w in dst.weights]
  if src_shapes != dst_shapes:
    raise GrowError(
        f"{origin}: its backbone ({parent.name}, {len(src_shapes)} weights) "
        f"does not match the one configured ({child.name}, {len(dst_shapes)} "
        "weights); give the parent's `backbone`")
  return src, dst


def copy_from(parent: keras.Model, parent_schema: heads_lib.LabelSchema,
              child: keras.Model, child_schema: heads_lib.LabelSchema,
              reinit: Iterable[str] = (), origin: str = "`init_from`"
              ) -> list[HeadPlan]:
  """Copies the backbone and the heads of ``parent`` into ``child`` as
  plan_heads says; returns the plan. The child keeps its own initialisation
  for new and re-initialised heads and for new classes."""
  plans = plan_heads(parent_schema, child_schema, reinit)
  src, dst = _check_backbone(parent, child, origin)
  dst.set_weights(src.get_weights())
  parent_heads = {h.name: h for h in parent_schema.heads}
  for plan, spec in zip(plans, child_schema.heads):
    if plan.status not in (COPIED, EXTENDED):
      continue
    _copy_projection(parent, child, spec.name, origin)
    _copy_attention(parent, child, spec.name, origin)
    parent_spec = parent_heads[spec.name]
    if parent_spec.kind != spec.kind:
      raise GrowError(f"{origin}: head {spec.name!r} is a {parent_spec.kind} "
                      f"head there, a {spec.kind} head in the new schema: "
                      "its weights mean something else; keep its kind, or "
                      "give the head another name to train it from scratch")
    try:
      spec.kind_impl.copy_weights(parent_spec, spec,
                                  parent.get_layer(spec.name),
                                  child.get_layer(spec.name))
    except heads_lib.SchemaError as e:
      raise GrowError(f"{origin}: {e}") from None
  return plans


def _copy_projection(parent: keras.Model, child: keras.Model, head: str,
                     origin: str) -> None:
  """A kept head keeps its private projection (head_projection): the two
  models must agree on its width, which the error names."""
  have = model_lib.projection_width(parent, head)
  want = model_lib.projection_width(child, head)
  if have != want:
    raise GrowError(
        f"{origin}: head {head!r} reads the features through a "
        f"{have or 'no'}-unit projection there, {want or 'no'} in the new "
        f"model; give `head_projection`={have}")
  if have:
    name = model_lib.projection_name(head)
    child.get_layer(name).set_weights(parent.get_layer(name).get_weights())


def _copy_attention(parent: keras.Model, child: keras.Model, head: str,
                    origin: str) -> None:
  """A kept head keeps its attention (head_pooling=attention); see the
  module docstring for a parent and child that pool differently."""
  have = model_lib.head_pooling_of(parent, head)
  want = model_lib.head_pooling_of(child, head)
  if have == "attention" and want != "attention":
    raise GrowError(
        f"{origin}: head {head!r} pools the features with its own attention "
        f"there, with the shared average in the new model; give "
        "`head_pooling`=attention")
  if have == "attention":
    name = model_lib.attention_name(head)
    child.get_layer(name).set_weights(parent.get_layer(name).get_weights())


def format_plan(plans: Sequence[HeadPlan], origin: str) -> str:
  """One line per head, for the training log."""
  lines = [f"initialised from {origin}:"]
  for p in plans:
    detail = ""
    if p.added:
      detail += f" (+ {', '.join(p.added)})"
    if p.removed:
      detail += f" (- {', '.join(p.removed)}; re-initialised)"
    lines.append(f"  {p.name}: {p.status}{detail}")
  return "\n".join(lines)


def check_train_heads(schema: heads_lib.LabelSchema,
                      names: Sequence[str]) -> None:
  """Raises GrowError naming a train_heads entry that is not a head."""
  unknown = [n for n in names if n not in schema.names]
  if unknown:
    raise GrowError(f"`train_heads`: {unknown} are not heads of the model "
                    f"(heads: {', '.join(schema.names)})")


def freeze_all_but(model: keras.Model, schema: heads_lib.LabelSchema,
                   train_heads: Sequence[str],
                   train_backbone: bool = False) -> None:
  """Makes only the ``train_heads`` Dense layers (and, with
  ``train_backbone``, the backbone as set_backbone_trainable left it)
  trainable. A frozen backbone is ``trainable=False``, which in Keras 3 also
  runs its BatchNorm layers in inference mode: their moving statistics do
  not move, so a frozen head sees exactly the parent's features and its
  output stays bit-identical. Recompile the model afterwards."""
  check_train_heads(schema, train_heads)
  for h in schema.heads:
    model.get_layer(h.name).trainable = h.name in train_heads
    if model_lib.projection_width(model, h.name):
      model.get_layer(model_lib.projection_name(h.name)).trainable = (
          h.name in train_heads)
    if model_lib.head_pooling_of(model, h.name) == "attention":
      model.get_layer(model_lib.attention_name(h.name)).trainable = (
          h.name in train_heads)
  if not train_backbone:
    model.get_layer(model_lib.BACKBONE_LAYER).trainable = False



def load_parent(path: str) -> tuple[keras.Model, heads_lib.LabelSchema, str]:
  """The parent of init_from: a run folder (its model.keras, the trained
  weights, not calibrated.keras: temperatures belong to the parent's heads
  and are re-fitted by evaluate calibrate on the child) or a .keras file,
  with the labels.json beside it. Returns (model, schema, model path)."""
  model_path = os.path.join(path, "model.keras") if os.path.isdir(path) else path
  if not model_path.endswith(".keras") or not os.path.isfile(model_path):
    raise GrowError(f"`init_from`={path}: no such run folder (with a "
                    "model.keras) or .keras file")
  labels = os.path.join(os.path.dirname(os.path.abspath(model_path)),
                        "labels.json")
  schema = heads_lib.LabelSchema.load(labels)
  model = saving.load_model(model_path)
  missing = [h.name for h in schema.heads
             if h.name not in model_lib.named_outputs(model)]
  if missing:
    raise GrowError(f"{model_path}: labels.json names head(s) {missing} the "
                    "model does not output")
  return model, schema, model_path
