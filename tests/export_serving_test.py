"""The TF Serving side beyond models.config: the batching parameters, the
version-label config and the client's metadata call and labels, checked
against the protos of tensorflow-serving-api and the fixture's SavedModel."""

from __future__ import annotations

import importlib.util
import os
import re

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


if __name__ == "__main__":
  tf.test.main()
