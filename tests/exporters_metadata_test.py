"""Artefacts that carry their own labels (ONNX metadata_props, TFLite
metadata) and the SavedModel's tf.Example signature, on the shared export
fixture (export_fixture.plain(), built once per test process)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.inference import predictors
from mlc_keras.data import manifest as manifest_lib
from mlc_keras.data import tfrecords
from mlc_keras.exporters import onnx as onnx_format
from mlc_keras.exporters import tflite as tflite_format
from tests import export_fixture


class EmbeddedLabelsTest(tf.test.TestCase):

  def test_file_alone_names_its_heads(self):
    source = export_fixture.plain()
    images, _ = export_fixture.make_images(5, seed=31)
    for path in (source.result.tflite["fp32"], source.result.onnx):
      alone_dir = os.path.join(self.get_temp_dir(), os.path.basename(path))
      os.makedirs(alone_dir)
      alone = shutil.copy(path, alone_dir)
      with self.assertRaises(artefacts.ExportError):
        artefacts.find_labels(alone)  # nothing beside it
      predictor = predictors.load_predictor(alone)
      self.assertEqual(predictor.schema, export_fixture.SCHEMA)
      beside = predictors.load_predictor(path)
      got, want = predictor(images), beside(images)
      for head in export_fixture.SCHEMA.names:
        np.testing.assert_array_equal(got[head], want[head], err_msg=path)

  def test_embedded_text_is_labels_json(self):
    source = export_fixture.plain()
    tflite = source.result.tflite["int8"]
    with open(os.path.join(os.path.dirname(tflite),
                           artefacts.LABELS_FILE)) as f:
      beside = json.load(f)
    self.assertEqual(json.loads(tflite_format.read_labels(tflite)), beside)
    onnx_predictor = predictors.OnnxPredictor(source.result.onnx)
    self.assertEqual(json.loads(onnx_format.read_labels(onnx_predictor.session)),
                     beside)


class OnnxDescriptionTest(tf.test.TestCase):

  def test_doc_string_describes_input_and_heads(self):
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import helper  # pylint: disable=g-import-not-at-top
    out = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 2])
           for n in ("tone", "class")]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], [n]) for n in ("tone", "class")],
        "g", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                            ["batch", 2])], out)
    path = os.path.join(self.get_temp_dir(), "m.onnx")
    onnx.save(helper.make_model(graph), path)
    labels = json.dumps({"heads": [
        {"name": "tone", "kind": "softmax", "classes": ["dark", "light"]},
        {"name": "marks", "kind": "tags", "classes": ["bar", "edge"]}]})
    onnx_format.embed_labels(path, labels)
    model = onnx.load(path)
    self.assertEqual(model.doc_string.splitlines()[1:], [
        "  tone: class probabilities (softmax) over dark, light",
        "  marks: independent tag probabilities (sigmoid) over bar, edge",
        "  class: the class table's classes (classes.csv), composed from the "
        "heads",
        "Labels: metadata_props['mlc_keras/labels.json'] (labels.json)."])
    self.assertIn("uint8 [batch, S, S, 3]", model.doc_string)
    self.assertEqual({p.key: p.value for p in model.metadata_props},
                     {"mlc_keras/labels.json": labels})


class ExampleSignatureTest(tf.test.TestCase):

  def test_tfrecord_examples_score_as_the_bytes_signature(self):
    source = export_fixture.plain()
    images, _ = export_fixture.make_images(4, seed=41)
    folder = self.get_temp_dir()
    paths = export_fixture.write_images(os.path.join(folder, "img"), images[:2])
    paths += export_fixture.write_images(os.path.join(folder, "jpg"),
                                         images[2:], ext=".jpg")
    records = manifest_lib.Records(
        tuple(paths), np.full((4, 2), -1, np.int32), (2, 3, 4, 5), "m.csv")
    shard, = tfrecords.write_tfrecords(records, export_fixture.SCHEMA,
                                       os.path.join(folder, "tfr", "pool"))
    examples = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    loaded = tf.saved_model.load(source.result.saved_model)
    by_example = loaded.signatures[artefacts.EXAMPLE_SIGNATURE](
        examples=tf.constant(examples))
    encoded = []
    for p in paths:
      with open(p, "rb") as f:
        encoded.append(f.read())
    by_bytes = loaded.signatures[artefacts.SERVING_SIGNATURE](
        image_bytes=tf.constant(encoded))
    self.assertEqual(sorted(by_example), sorted(by_bytes))
    for key in by_bytes:
      self.assertAllEqual(by_example[key], by_bytes[key], msg=key)
    # The export's parity report checked the signature like the others.
    with open(source.result.parity_path) as f:
      reports = {r["artefact"]: r for r in json.load(f)["reports"]}
    self.assertTrue(reports["saved_model_examples"]["passed"])
    self.assertEqual(reports["saved_model_examples"]["images"], 40)


if __name__ == "__main__":
  tf.test.main()
