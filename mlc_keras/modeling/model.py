"""The multi-head model: uint8 image -> preprocessing -> backbone -> one
named softmax per head (sigmoids for a tag head).

Preprocessing lives inside the model so that Keras, the SavedModel, TFLite and
ONNX all see the same pixels: every artefact takes raw 0-255 RGB.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from mlc_keras import heads as heads_lib

BACKBONE_LAYER = "backbone"
FEATURES_LAYER = "features"
PROJECTION_SUFFIX = "_projection"


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
                head_projection: int = 0) -> keras.Model:
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
  clash = [h for h in schema.names
           if head_projection and projection_name(h) in schema.names]
  if clash:
    raise ValueError(
        f"head_projection: the projection of head {clash[0]!r} would be named "
        f"{projection_name(clash[0])!r}, which is another head; rename it")
  image = keras.Input(shape=(image_size, image_size, 3), dtype="uint8",
                      name="image")
  scale, offset = _PIXELS[spec.pixels]
  x = keras.layers.Rescaling(scale, offset=offset, name="preprocess")(image)
  net = _wrapped(spec, image_size, weights)
  if bn_momentum is not None:
    for layer in backbone_layers(net):
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = float(bn_momentum)
  features = net(x)
  features = keras.layers.Identity(name=FEATURES_LAYER)(features)
  if dropout:
    features = keras.layers.Dropout(dropout, name="dropout")(features)
  outputs = {}
  for h in schema.heads:
    x = features
    if head_projection:
      x = keras.layers.Dense(head_projection, activation="relu",
                             name=projection_name(h.name))(x)
    outputs[h.name] = head_layer(h, dtype="float32")(x)
  return keras.Model(image, outputs, name="mlc_" + backbone.lower())


def projection_name(head: str) -> str:
  return head + PROJECTION_SUFFIX


def projection_width(model: keras.Model, head: str) -> int:
  """Units of ``head``'s private projection in ``model``; 0 without one."""
  try:
    return model.get_layer(projection_name(head)).units
  except ValueError:
    return 0


def _wrapped(spec: _Backbone, image_size: int,
             weights: Optional[str]) -> keras.Model:
  """The keras.applications network built under its own Keras name, then
  re-wrapped (same layers, same weights) as a model named "backbone".
  Keras reads the name: EfficientNetV2 looks up its block table by it and
  ConvNeXt accepts ImageNet weights only under its variant's name, so
  building it as "backbone" directly fails for both."""
  own = {"include_preprocessing": False} if spec.own_preprocessing else {}
  inner = spec.build(include_top=False, weights=weights,
                     input_shape=(image_size, image_size, 3), pooling="avg",
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


def head_layer(head: heads_lib.HeadSpec, **kwargs) -> keras.layers.Dense:
  """The output layer of one head, named after it: a softmax over its
  classes, or independent sigmoids over a tag head's tags."""
  activation = "sigmoid" if head.is_tags else "softmax"
  return keras.layers.Dense(head.num_classes, activation=activation,
                            name=head.name, **kwargs)


def set_backbone_trainable(model: keras.Model, trainable: bool,
                           top_layers: int = 0,
                           train_batchnorm: bool = True) -> None:
  """Freezes the backbone, or unfreezes all of it (``top_layers`` 0) or its
  last ``top_layers`` layers. ``train_batchnorm=False`` keeps every
  BatchNormalization layer frozen, which in Keras 3 also runs it in inference
  mode (its moving statistics stay as loaded), as fine-tuning a pretrained
  backbone wants. Recompile the model afterwards."""
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


def small_cnn(schema: heads_lib.LabelSchema, size: int) -> keras.Model:
  """A model with build_model's contract (uint8 "image" in, one softmax per
  head named after it) over three conv blocks, for CPU-sized runs: it learns
  the demo shapes at 32 px in about a minute, where ResNet50V2 at 32 px stays
  at chance on "shape" after 80 steps (measured 0.33). Tests and the
  benchmarks' sharing/masking claims use it; they are not about the backbone."""
  image = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
  for filters in (32, 64, 128):
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(image, {h.name: head_layer(h)(x) for h in schema.heads})
