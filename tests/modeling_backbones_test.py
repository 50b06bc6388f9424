"""The backbones built under their own Keras name (EfficientNetV2, ConvNeXt):
pixels, ImageNet / local weights, BatchNorm momentum, freezing and every
export path, on the smallest member of each family at 32 px, weights=None
(ResNet50V2 and MobileNetV2 are covered by export_fixture and the training
tests). The two families cost about a minute here, most of it the
SavedModel and the conversions."""

import atexit
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import preflight
from mlc_keras.exporters import onnx
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import saved_model
from mlc_keras.exporters import tflite
from mlc_keras.modeling import model as model_lib
from tests import export_fixture

SIZE = export_fixture.SIZE
SCHEMA = export_fixture.SCHEMA
# The smallest member of each family that the name= argument used to break.
FAMILIES = ("EfficientNetV2B0", "ConvNeXtTiny")


def _backbone_weights(model):
  return model.get_layer(model_lib.BACKBONE_LAYER).get_weights()


class _Family:
  """Per family, built once per process: Keras' own network (``plain``),
  its weights in a file, and build_model with that file (``model``)."""
  _cache = {}

  @classmethod
  def get(cls, name):
    if name not in cls._cache:
      root = tempfile.mkdtemp(prefix=f"backbone_{name}_")
      atexit.register(shutil.rmtree, root, ignore_errors=True)
      keras.utils.set_random_seed(0)
      plain = getattr(keras.applications, name)(
          include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
          pooling="avg")
      weights = os.path.join(root, "backbone.weights.h5")
      plain.save_weights(weights)
      keras.utils.set_random_seed(1)  # another init, so loading shows
      model = model_lib.build_model(SCHEMA, SIZE, name, weights=weights,
                                    bn_momentum=0.5)
      cls._cache[name] = (root, plain, weights, model)
    return cls._cache[name]


class BackboneTest(parameterized.TestCase, tf.test.TestCase):

  def test_registry_is_every_family_member(self):
    self.assertEqual(model_lib.BACKBONES, config_lib.BACKBONES)
    self.assertEqual(config_lib.ModelConfig().backbone, "ResNet50V2")
    for family, count in (("EfficientNetV2", 7), ("ConvNeXt", 5)):
      self.assertLen([b for b in model_lib.BACKBONES
                      if b.startswith(family)], count)

  @parameterized.parameters(*FAMILIES)
  def test_raw_pixels_in_same_features_as_keras_own_network(self, name):
    _, plain, _, model = _Family.get(name)
    net = model.get_layer(model_lib.BACKBONE_LAYER)
    self.assertEqual(net.name, "backbone")
    for got, want in zip(net.get_weights(), plain.get_weights()):
      np.testing.assert_array_equal(got, want)
    images, _ = export_fixture.make_images(4, seed=3)
    features = keras.Model(model.input,
                           model.get_layer(model_lib.FEATURES_LAYER).output)
    # Keras' network normalises 0-255 itself; the model's uint8 input must
    # reach it unscaled, so both see the same pixels.
    self.assertAllClose(features(images), plain(images.astype(np.float32)),
                        atol=1e-5, rtol=1e-5)

  @parameterized.parameters(*FAMILIES)
  def test_imagenet_weights_are_the_file_preflight_names(self, name):
    _, _, weights, _ = _Family.get(name)
    fetched = []

    def get_file(fname=None, origin=None, **_):
      fetched.append((fname, origin))
      return weights
    # Keras fetches the file under the network's own name and checks that
    # name (ConvNeXt), so a model built as "backbone" could not load it.
    with mock.patch("keras.src.utils.file_utils.get_file", get_file):
      keras.utils.set_random_seed(2)
      model = model_lib.build_model(SCHEMA, SIZE, name, weights="imagenet")
    self.assertEqual(fetched, [preflight.imagenet_file(name, SIZE)])
    for got, want in zip(_backbone_weights(model),
                         _backbone_weights(_Family.get(name)[3])):
      np.testing.assert_array_equal(got, want)
    cache = os.path.join(self.get_temp_dir(), "models")
    os.makedirs(cache)
    open(os.path.join(cache, fetched[0][0]), "w").close()
    cfg = config_lib.Config(model=config_lib.ModelConfig(
        backbone=name, weights="imagenet"))
    preflight.check_weights(cfg.model, SIZE, os.path.dirname(cache),
                            probe=mock.Mock(side_effect=AssertionError))

  def test_batchnorm_momentum_and_freezing_reach_every_layer(self):
    model = _Family.get("EfficientNetV2B0")[3]
    net = model.get_layer(model_lib.BACKBONE_LAYER)
    bns = [l for l in model_lib.backbone_layers(net)
           if isinstance(l, keras.layers.BatchNormalization)]
    self.assertGreater(len(bns), 50)
    # Keras builds EfficientNetV2 with 0.9; the flag's 0.5 replaced it.
    self.assertEqual({l.momentum for l in bns}, {0.5})
    try:
      model_lib.set_backbone_trainable(model, True, top_layers=10,
                                       train_batchnorm=False)
      trainable = [l.name for l in net.layers if l.trainable]
      self.assertEqual(trainable, [l.name for l in net.layers[-10:]
                                   if not isinstance(
                                       l, keras.layers.BatchNormalization)])
      self.assertIn("top_conv", trainable)
      model_lib.set_backbone_trainable(model, False)
      self.assertEqual(net.trainable_weights, [])
    finally:
      model_lib.set_backbone_trainable(model, True)

  def test_convnext_nested_layers_freeze(self):
    model = _Family.get("ConvNeXtTiny")[3]
    net = model.get_layer(model_lib.BACKBONE_LAYER)
    nested = [l for l in net.layers if isinstance(l, keras.Model)]
    self.assertLen(nested, 4)  # the stem and three downsampling blocks
    try:
      model_lib.set_backbone_trainable(model, True, top_layers=4)
      # The last 4 layers: the final block's layer scale (1 weight) and
      # output activation, the pooling, the final LayerNormalization (2).
      self.assertLen(net.trainable_weights, 3)
      self.assertFalse(net.get_layer(
          "convnext_tiny_stage_3_block_2_pointwise_conv_2").trainable)
      self.assertFalse(any(l.trainable for l in nested))
    finally:
      model_lib.set_backbone_trainable(model, True)


class BackboneExportTest(parameterized.TestCase, tf.test.TestCase):
  """SavedModel, TFLite (fp32, built-in ops only) and ONNX of each family
  against Keras, through the exporters export_lib runs (without its
  SavedModel subprocess check, model card and int8 calibration, which do
  not depend on the backbone)."""

  @parameterized.parameters("EfficientNetV2B0", "ConvNeXtTiny")
  def test_every_format_matches_keras(self, name):
    root, _, _, model = _Family.get(name)
    images, _ = export_fixture.make_images(8, seed=5)
    reference = {k: np.asarray(v) for k, v in model(images).items()}
    folder = os.path.join(root, "export")
    os.makedirs(folder)
    SCHEMA.save(folder)  # predictors read labels.json beside the file
    saved = saved_model.to_saved_model(model, SCHEMA,
                                       os.path.join(folder, "saved_model"))
    artefacts = {"saved_model": saved,
                 "tflite": tflite.to_tflite(saved, os.path.join(
                     folder, "model.tflite")),
                 "onnx": onnx.to_onnx(saved, os.path.join(folder,
                                                          "model.onnx"))}
    for kind, path in artefacts.items():
      with self.subTest(kind):
        report = parity_lib.parity(predictors.load_predictor(path), reference,
                                   images, parity_lib.FP32_TOLERANCE, kind)
        self.assertTrue(report["passed"], report["failures"])
        for head, stats in report["outputs"].items():
          self.assertLessEqual(stats["max_abs_diff"], 1e-4, head)
          self.assertEqual(stats["top1_agreement"], 1.0, head)
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    ops = {op["op_name"] for op in litert.Interpreter(
        model_path=artefacts["tflite"])._get_ops_details()}  # pylint: disable=protected-access
    self.assertIn("CONV_2D", ops)
    self.assertEqual([op for op in ops if op.startswith("Flex")
                      or op == "CUSTOM"], [])
    if name.startswith("ConvNeXt"):
      # Its depthwise convolutions (grouped Conv2D under an XLA call in the
      # SavedModel) became ONNX Convs with group = channels, and its exact
      # GELU's Erfc became Erf: no call or Erfc node is left.
      import onnx as onnx_proto  # pylint: disable=g-import-not-at-top
      graph = onnx_proto.load(artefacts["onnx"]).graph
      groups = [a.i for n in graph.node if n.op_type == "Conv"
                for a in n.attribute if a.name == "group" and a.i > 1]
      self.assertLen(groups, 18)  # 3 + 3 + 9 + 3 blocks of ConvNeXt Tiny
      self.assertIn("Erf", {n.op_type for n in graph.node})


if __name__ == "__main__":
  tf.test.main()
