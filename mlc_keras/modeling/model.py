"""The multi-head model: uint8 image -> preprocessing -> backbone -> one
named softmax per head (sigmoids for a tag head).

Preprocessing lives inside the model so that Keras, the SavedModel, TFLite and
ONNX all see the same pixels: every artefact takes raw 0-255 RGB.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from mlc_keras.core import heads as heads_lib

BACKBONE_LAYER = "backbone"
FEATURES_LAYER = "features"
PROJECTION_SUFFIX = "_projection"
ATTENTION_SUFFIX = "_attention"
# The flattened feature map every attention head pools (head_pooling
# "attention"): [N, H*W, C].
LOCATIONS_LAYER = "feature_locations"
# "avg": one global average pool shared by every head. "attention": each
# head pools the backbone's last feature map with its own spatial softmax.
HEAD_POOLINGS = ("avg", "attention")


# Pixel scalings (scale, offset), applied to 0-255 RGB by the model's
# "preprocess" layer. "torch": ImageNet mean / std per channel, what Keras'
# EfficientNetV2 B0-B3 and ConvNeXt do in their own first layers.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_PIXELS = {
    "tf": (1.0 / 127.5, -1.0),
    "v2": (1.0 / 128.0, -1.0),  # EfficientNetV2 S, M, L
    "torch": (tuple(1.0 / (255.0 * s) for s in _STD),
              tuple(-m / s for m, s in zip(_MEAN, _STD))),
}


@dataclasses.dataclass(frozen=True)
class _Backbone:
  build: Callable[..., keras.Model]
  pixels: str  # a key of _PIXELS
  # The network has its own preprocessing layers, which are turned off:
  # their Normalization keeps mean and variance as captured constants that
  # the ONNX converter turns into extra graph inputs; the "preprocess"
  # Rescaling computes the same pixels as constants of the graph.
  own_preprocessing: bool = False


def _backbones() -> dict[str, _Backbone]:
  apps = keras.applications
  table = {
      "ResNet50V2": _Backbone(apps.ResNet50V2, "tf"),
      "ResNet101V2": _Backbone(apps.ResNet101V2, "tf"),
      "ResNet152V2": _Backbone(apps.ResNet152V2, "tf"),
      "MobileNetV2": _Backbone(apps.MobileNetV2, "tf"),
  }
  for variant in ("B0", "B1", "B2", "B3", "S", "M", "L"):
    name = "EfficientNetV2" + variant
    table[name] = _Backbone(getattr(apps, name),
                            "torch" if variant.startswith("B") else "v2", True)
  for variant in ("Tiny", "Small", "Base", "Large", "XLarge"):
    name = "ConvNeXt" + variant
    table[name] = _Backbone(getattr(apps, name), "torch", True)
  return table


BACKBONES = tuple(_backbones())


def build_model(schema: heads_lib.LabelSchema,
                image_size: int,
                backbone: str = "ResNet50V2",
                weights: Optional[str] = None,
                dropout: float = 0.0,
                bn_momentum: Optional[float] = 0.9,
                head_projection: int = 0,
                head_pooling: str = "avg") -> keras.Model:
  """Builds the functional multi-head model.

  Args:
    schema: heads and their classes; one softmax output per head, named after it.
    image_size: side of the square uint8 RGB input.
    backbone: a name from BACKBONES (keras.applications, include_top=False,
      built under its Keras name and wrapped as the layer "backbone").
    weights: None, "imagenet" (downloaded by Keras on first use) or the path of
      a local no-top weights file.
    dropout: dropout rate on the pooled features (0 disables it).
    bn_momentum: momentum for every BatchNormalization layer of the backbone;
      None keeps the Keras default (0.99).
    head_projection: when > 0, each head reads the pooled features through a
      private Dense(head_projection, relu) layer named "<head>_projection"
      instead of reading them directly, so that what one head needs of the
      features is kept apart from what the others need.

  Returns:
    A keras.Model with input "image" and a dict of float32 outputs keyed by
    head name, even under a mixed-precision policy.
  """
  table = _backbones()
  if backbone not in table:
    raise ValueError(
        f"unknown backbone {backbone!r}; choose one of: {', '.join(table)}")
  spec = table[backbone]
  _check_pooling(head_pooling)
  clash = [h for h in schema.names
           if head_projection and projection_name(h) in schema.names]
  if clash:
    raise ValueError(
        f"head_projection: the projection of head {clash[0]!r} would be named "
        f"{projection_name(clash[0])!r}, which is another head; rename it")
  _check_attention_names(schema, head_pooling)
  image = keras.Input(shape=(image_size, image_size, 3), dtype="uint8",
                      name="image")
  scale, offset = _PIXELS[spec.pixels]
  x = keras.layers.Rescaling(scale, offset=offset, name="preprocess")(image)
  net = _wrapped(spec, image_size, weights,
                 pooling="avg" if head_pooling == "avg" else None)
  if bn_momentum is not None:
    for layer in backbone_layers(net):
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = float(bn_momentum)
  features = net(x)
  features = keras.layers.Identity(name=FEATURES_LAYER)(features)
  drop = keras.layers.Dropout(dropout, name="dropout") if dropout else None
  if drop is not None and head_pooling == "avg":
    features = drop(features)
  pooled = head_features(features, schema, head_pooling)
  outputs = {}
  for h in schema.heads:
    x = pooled[h.name]
    if drop is not None and head_pooling == "attention":
      # The same (weightless) layer on each head's own pooled vector: what a
      # head reads is dropped as in "avg", where it is the shared vector.
      x = drop(x)
    if head_projection:
      x = keras.layers.Dense(head_projection, activation="relu",
                             name=projection_name(h.name))(x)
    outputs[h.name] = head_layer(h, dtype="float32")(x)
  return keras.Model(image, outputs, name="mlc_" + backbone.lower())


def _check_pooling(head_pooling: str) -> None:
  if head_pooling not in HEAD_POOLINGS:
    raise ValueError(f"unknown head_pooling {head_pooling!r}; choose one of: "
                     f"{', '.join(HEAD_POOLINGS)}")


def attention_layer_names(head: str) -> tuple[str, ...]:
  """The layers head_pooling "attention" adds for ``head``: its 1x1 conv
  (the only one with weights), the logits flattened over locations, their
  softmax (the attention weights, [N, H*W, 1], float32) and the pooled
  features ([N, 1, C], then [N, C])."""
  base = head + ATTENTION_SUFFIX
  return (base, base + "_logits", base + "_weights", base + "_sum",
          base + "_pooled")


def attention_name(head: str) -> str:
  return attention_layer_names(head)[0]


def attention_weights_name(head: str) -> str:
  return attention_layer_names(head)[2]


def _check_attention_names(schema: heads_lib.LabelSchema,
                           head_pooling: str) -> None:
  if head_pooling != "attention":
    return
  if LOCATIONS_LAYER in schema.names:
    raise ValueError(f"head_pooling: {LOCATIONS_LAYER!r} names the feature "
                     "map that attention pooling flattens; rename the head")
  taken = set(schema.names)
  for h in schema.names:
    for name in attention_layer_names(h):
      if name in taken:
        raise ValueError(
            f"head_pooling: the attention of head {h!r} adds a layer named "
            f"{name!r}, which is already a head or layer name; rename the head")
      taken.add(name)


def head_features(features, schema: heads_lib.LabelSchema,
                  head_pooling: str = "avg") -> dict:
  """{head: the [N, C] features it reads}. "avg": ``features`` is already
  pooled and shared. "attention": ``features`` is an [N, H, W, C] map and
  each head pools it with its own attention (see build_model)."""
  _check_pooling(head_pooling)
  if head_pooling == "avg":
    return {h: features for h in schema.names}
  _check_attention_names(schema, head_pooling)
  height, width, channels = features.shape[1:]
  locations = keras.layers.Reshape((height * width, channels),
                                   name=LOCATIONS_LAYER)(features)
  out = {}
  for h in schema.names:
    conv, logits, weights, total, pooled = attention_layer_names(h)
    # Zero kernel and bias: uniform weights, i.e. the average pool, at
    # initialisation (a head grown from an "avg" parent starts as it was).
    x = keras.layers.Conv2D(1, 1, kernel_initializer="zeros",
                            bias_initializer="zeros", name=conv)(features)
    # float32 from the logits on: a softmax over H*W locations in float16
    # loses the small weights, and the weighted sum is done in float32 too.
    x = keras.layers.Reshape((height * width, 1), dtype="float32",
                             name=logits)(x)
    x = keras.layers.Softmax(axis=1, dtype="float32", name=weights)(x)
    x = keras.layers.Dot(axes=1, dtype="float32", name=total)([x, locations])
    out[h] = keras.layers.Reshape((channels,), dtype="float32",
                                  name=pooled)(x)
  return out


def head_pooling_of(model: keras.Model, head: str) -> str:
  """"attention" when ``head`` pools with its own attention in ``model``,
  else "avg"."""
  try:
    model.get_layer(attention_name(head))
  except ValueError:
    return "avg"
  return "attention"


def projection_name(head: str) -> str:
  return head + PROJECTION_SUFFIX


def projection_width(model: keras.Model, head: str) -> int:
  """Units of ``head``'s private projection in ``model``; 0 without one."""
  try:
    return model.get_layer(projection_name(head)).units
  except ValueError:
    return 0


def _wrapped(spec: _Backbone, image_size: int, weights: Optional[str],
             pooling: Optional[str] = "avg") -> keras.Model:
  """The keras.applications network built under its own Keras name, then
  re-wrapped (same layers, same weights) as a model named "backbone".
  Keras reads the name: EfficientNetV2 looks up its block table by it and
  ConvNeXt accepts ImageNet weights only under its variant's name, so
  building it as "backbone" directly fails for both. ``pooling`` None keeps
  the last feature map (head_pooling "attention"); the weights are the same
  either way, pooling has none."""
  own = {"include_preprocessing": False} if spec.own_preprocessing else {}
  inner = spec.build(include_top=False, weights=weights,
                     input_shape=(image_size, image_size, 3), pooling=pooling,
                     **own)
  return keras.Model(inner.input, inner.output, name=BACKBONE_LAYER)


def backbone_layers(net: keras.Model):
  """Every layer inside the backbone, nested ones included (ConvNeXt keeps
  its stem and downsampling layers in Sequential blocks)."""
  for layer in net.layers:
    if isinstance(layer, keras.Model):
      yield from backbone_layers(layer)
    else:
      yield layer


def head_layer(head: heads_lib.HeadSpec, **kwargs) -> keras.layers.Layer:
  """The output layer of one head, named after it (its kind's output_layer):
  a softmax over its classes, independent sigmoids over a tag head's tags,
  cumulative logits over an ordinal head's ordered classes."""
  return head.kind_impl.output_layer(head, **kwargs)


def set_backbone_trainable(model: keras.Model, trainable: bool,
                           top_layers: int = 0,
                           train_batchnorm: bool = True) -> None:
  """Freezes the backbone, or unfreezes all of it (``top_layers`` 0) or its
  last ``top_layers`` layers. ``train_batchnorm=False`` keeps every
  BatchNormalization layer frozen, which in Keras 3 also runs it in inference
  mode (its moving statistics stay as loaded), as fine-tuning a pretrained
  backbone wants. Recompile the model afterwards. A model with no layer
  named "backbone" (a train build_model's own, such as small_cnn) trains
  whole: nothing to unfreeze, and a request to freeze is refused."""
  if not any(layer.name == BACKBONE_LAYER for layer in model.layers):
    if trainable and not top_layers and train_batchnorm:
      return
    raise ValueError(f"the model has no layer named {BACKBONE_LAYER!r}: "
                     "there is no backbone to freeze (freeze_epochs, "
                     "unfreeze_layers)")
  net = model.get_layer(BACKBONE_LAYER)
  net.trainable = trainable
  if not trainable:
    return
  if top_layers:
    for layer in net.layers[:-top_layers]:
      layer.trainable = False
  if not train_batchnorm:
    for layer in backbone_layers(net):
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False


def named_outputs(model: keras.Model) -> dict:
  """A functional model's symbolic outputs keyed by name."""
  out = model.output
  if isinstance(out, dict):
    return dict(out)
  if isinstance(out, (list, tuple)):
    return dict(zip(model.output_names, out))
  return {model.output_names[0]: out}


def small_cnn(schema: heads_lib.LabelSchema, size: int,
              head_pooling: str = "avg") -> keras.Model:
  """A model with build_model's contract (uint8 "image" in, one softmax per
  head named after it) over three conv blocks, for CPU-sized runs: it learns
  the demo shapes at 32 px in about a minute, where ResNet50V2 at 32 px stays
  at chance on "shape" after 80 steps (measured 0.33). Tests and the
  benchmarks' sharing/masking claims use it; they are not about the backbone.
  head_pooling "attention" pools its last map (size / 8 on a side) per head
  as build_model does."""
  _check_pooling(head_pooling)
  image = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
  for filters in (32, 64, 128):
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
  if head_pooling == "avg":
    x = keras.layers.GlobalAveragePooling2D()(x)
  pooled = head_features(x, schema, head_pooling)
  return keras.Model(image, {h.name: head_layer(h)(pooled[h.name])
                             for h in schema.heads})
