"""The TF Serving side beyond models.config: the batching parameters, the
version-label config and the client's metadata call and labels, checked
against the protos of tensorflow-serving-api and the fixture's SavedModel."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from google.protobuf import text_format

from tests import export_fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fields of TF Serving's BatchingParameters proto
# (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros",
                   "max_enqueued_batches", "num_batch_threads",
                   "thread_pool_name", "allowed_batch_sizes",
                   "pad_variable_length_inputs", "enable_large_batch_splitting",
                   "max_execution_batch_size"}


def load_client():
  spec = importlib.util.spec_from_file_location(
      "mlc_export_client", os.path.join(REPO, "export", "client.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ServingConfigTest(tf.test.TestCase):

  def test_batching_parameters(self):
    with open(os.path.join(REPO, "export", "batching_parameters.txt")) as f:
      text = "\n".join(l.split("#")[0] for l in f)
    fields = re.findall(r"(\w+)\s*(?:\{\s*value:\s*(\d+)\s*\}|:\s*(\d+))", text)
    self.assertTrue(fields)
    self.assertEmpty({name for name, _, _ in fields} - BATCHING_FIELDS)
    values = {n: int(a or b) for n, a, b in fields if n != "allowed_batch_sizes"}
    allowed = [int(b) for n, _, b in fields if n == "allowed_batch_sizes"]
    self.assertEqual(values["max_batch_size"], 32)
    # TF Serving refuses a file whose last allowed size is not max_batch_size.
    self.assertEqual(allowed, sorted(allowed))
    self.assertEqual(allowed[-1], values["max_batch_size"])
    self.assertGreaterEqual(values["num_batch_threads"], 1)

  def test_version_labels_config(self):
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=g-import-not-at-top
    for name in ("models.config", "models_canary.config"):
      with open(os.path.join(REPO, "export", name)) as f:
        config = text_format.Parse(f.read(),
                                   model_server_config_pb2.ModelServerConfig())
      self.assertLen(config.model_config_list.config, 1)
    model = config.model_config_list.config[0]
    self.assertEqual(dict(model.version_labels), {"stable": 1, "canary": 2})
    # A label may only name a loaded version.
    self.assertEqual(list(model.model_version_policy.specific.versions), [1, 2])


class ClientMetadataTest(tf.test.TestCase):

  def _signature_map(self):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=g-import-not-at-top
    proto = saved_model_pb2.SavedModel()
    path = export_fixture.plain().result.saved_model
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
      proto.ParseFromString(f.read())
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for k, v in proto.meta_graphs[0].signature_def.items():
      if not k.startswith("__"):
        sig_map.signature_def[k].CopyFrom(v)
    return sig_map

  def test_grpc_and_rest_metadata_read_the_signatures(self):
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=g-import-not-at-top
    client = load_client()
    request = client.metadata_request("tiny", label="canary")
    self.assertEqual(request.model_spec.version_label, "canary")
    self.assertEqual(list(request.metadata_field), ["signature_def"])
    sig_map = self._signature_map()
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(sig_map)
    grpc_view = client.parse_metadata_grpc(response)
    self.assertEqual(grpc_view["serving_default"]["inputs"],
                     {"image_bytes": ["DT_STRING", [-1]]})
    self.assertEqual(grpc_view["serve_examples"]["inputs"],
                     {"examples": ["DT_STRING", [-1]]})
    self.assertEqual(grpc_view["serve_image"]["inputs"],
                     {"image": ["DT_UINT8", [-1, 32, 32, 3]]})
    self.assertEqual(grpc_view["serving_default"]["outputs"]["colour"],
                     ["DT_FLOAT", [-1, 3]])
    # REST's GET .../metadata is the same proto as JSON (TF Serving keeps
    # the proto's snake_case field names).
    rest = {"model_spec": {"name": "tiny"},
            "metadata": {"signature_def": json_format.MessageToDict(
                sig_map, preserving_proto_field_name=True)}}
    self.assertEqual(client.parse_metadata_rest(rest), grpc_view)

  def test_labels_and_versions_in_requests(self):
    client = load_client()
    self.assertEqual(client.rest_url("http://h:8501", "demo", label="canary"),
                     "http://h:8501/v1/models/demo/labels/canary:predict")
    self.assertEqual(
        client.rest_url("http://h:8501", "demo", 2, verb="/metadata"),
        "http://h:8501/v1/models/demo/versions/2/metadata")
    self.assertEqual(client.grpc_request([b"x"], "demo", label="stable")
                     .model_spec.version_label, "stable")
    with self.assertRaisesRegex(ValueError, "not both"):
      client.grpc_request([b"x"], "demo", version=1, label="stable")


class ClassifyApiTest(tf.test.TestCase):
  """The classify_<head> signatures as TF Serving's classifier uses them
  (tensorflow_serving/servables/tensorflow/classifier.cc): method name,
  "inputs" (serialized tf.Examples), "classes" / "scores" [N, k]; the
  serving side below does what the classifier does with them (serialize the
  request's examples, run the signature, pair row i's classes with its
  scores in a ClassificationResponse)."""

  def _proto(self, path):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
      proto.ParseFromString(f.read())
    return proto.meta_graphs[0].signature_def

  def test_signatures_have_the_classify_contract(self):
    from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top
    sigs = self._proto(export_fixture.plain().result.saved_model)
    heads = export_fixture.SCHEMA.names
    for h in heads:
      sig = sigs["classify_" + h]
      self.assertEqual(sig.method_name, "tensorflow/serving/classify")
      self.assertEqual(dict((k, v.dtype) for k, v in sig.inputs.items()),
                       {"inputs": types_pb2.DT_STRING})
      self.assertEqual(dict((k, v.dtype) for k, v in sig.outputs.items()),
                       {"classes": types_pb2.DT_STRING,
                        "scores": types_pb2.DT_FLOAT})
    others = {k: v.method_name for k, v in sigs.items()
              if not k.startswith(("classify_", "__"))}
    self.assertEqual(others, dict.fromkeys(
        ["serve_examples", "serve_image", "serving_default"],
        "tensorflow/serving/predict"))

  def test_fingerprint_matches_the_rewritten_graph(self):
    from tensorflow.python.saved_model import fingerprinting_utils  # pylint: disable=g-import-not-at-top
    path = export_fixture.plain().result.saved_model
    copy = os.path.join(self.get_temp_dir(), "copy")
    tf.io.gfile.makedirs(os.path.join(copy, "variables"))
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
      tf.io.gfile.copy(os.path.join(path, name), os.path.join(copy, name))
    before = tf.saved_model.experimental.read_fingerprint(path)
    fingerprinting_utils.write_fingerprint(copy)
    again = tf.saved_model.experimental.read_fingerprint(copy)
    self.assertEqual(before.saved_model_checksum, again.saved_model_checksum)

  def test_classify_round_trip_matches_keras(self):
    from tensorflow_serving.apis import classification_pb2  # pylint: disable=g-import-not-at-top
    fixture = export_fixture.plain()
    client = load_client()
    images, _ = export_fixture.make_images(5, seed=43)
    paths = export_fixture.write_images(self.get_temp_dir(), images)
    encoded = client.read_files(paths)
    expected = fixture.model.predict(images, verbose=0)
    loaded = tf.saved_model.load(fixture.result.saved_model)
    for head in export_fixture.SCHEMA.names:
      request = client.classify_request(encoded, "tiny", head, label="stable")
      self.assertEqual(request.model_spec.signature_name, "classify_" + head)
      serialized = [e.SerializeToString()
                    for e in request.input.example_list.examples]
      out = loaded.signatures[request.model_spec.signature_name](
          inputs=tf.constant(serialized))
      response = classification_pb2.ClassificationResponse()
      for labels, scores in zip(out["classes"].numpy(), out["scores"].numpy()):
        row = response.result.classifications.add()
        for label, score in zip(labels, scores):
          row.classes.add(label=label.decode(), score=float(score))
      rows = client.parse_classify_grpc(response, head)
      classes = list(export_fixture.SCHEMA.head(head).classes)
      self.assertLen(rows, 5)
      for i, row in enumerate(rows):
        self.assertEqual(list(row[head]["scores"]), classes)
        # PNG bytes decode to the pixels the model saw: same probabilities
        # up to float32 rounding.
        self.assertAllClose([row[head]["scores"][c] for c in classes],
                            expected[head][i], atol=1e-5)
        self.assertEqual(row[head]["class"],
                         classes[int(np.argmax(expected[head][i]))])
      # The REST form of the same answer parses to the same rows.
      rest = {"results": [[[c.label, c.score] for c in r.classes]
                          for r in response.result.classifications]}
      self.assertEqual(client.parse_classify_rest(rest, head), rows)


if __name__ == "__main__":
  tf.test.main()
