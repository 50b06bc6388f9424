r"""Minimal TF Serving client for an exported mlc_keras model (REST or gRPC).

Stand-alone on purpose: it does not import mlc_keras. REST needs only the
standard library; gRPC needs tensorflow-serving-api and grpcio (the protos
pull in tensorflow). Copy it next to any application.

  python export/client.py --model=demo photo.jpg other.png
  python export/client.py --model=demo --grpc=localhost:8500 photo.jpg
  python export/client.py --model=demo --rest=http://host:8501 --version=3 a.jpg
  python export/client.py --model=demo --label=canary a.jpg
  python export/client.py --model=demo --metadata       # the signatures
  python export/client.py --model=demo --classify=shape a.jpg   # Classify API, one head

Prints one JSON line per image: {"image": ..., "<head>": {"class": ...,
"score": ..., "scores": [...]}} (scores in labels.json class order), and
"class" the same way for a model exported with a class table (scores in
classes.csv row order; "class" is "unknown" below the export's threshold).
With --classify=<head>, TF Serving's Classify API on that head's
"classify_<head>" signature (the image sent as a tf.Example, image/encoded):
one line per image, {"image": ..., "<head>": {"class", "score", "scores":
{class: score}}}.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Optional, Sequence

SIGNATURE = "serving_default"
INPUT = "image_bytes"
CLASS_SUFFIX = "_class"
SCORE_SUFFIX = "_score"


def read_files(paths: Sequence[str]) -> list[bytes]:
  out = []
  for p in paths:
    with open(p, "rb") as f:
      out.append(f.read())
  return out


# --- REST ---------------------------------------------------------------------


def rest_body(images: Sequence[bytes]) -> dict:
  """The JSON body of a REST predict call: row format, one instance per
  image, bytes base64-encoded under "b64" as TF Serving requires."""
  return {"signature_name": SIGNATURE,
          "instances": [{INPUT: {"b64": base64.b64encode(b).decode("ascii")}}
                        for b in images]}


def rest_url(server: str, model: str, version: Optional[int] = None,
             label: Optional[str] = None, verb: str = ":predict") -> str:
  """/v1/models/<model>[/versions/<v> | /labels/<label>]<verb>; verb
  ":predict", or "/metadata" for the signature."""
  if version and label:
    raise ValueError("give a version or a label, not both")
  part = (f"/versions/{version}" if version else
          f"/labels/{label}" if label else "")
  return f"{server.rstrip('/')}/v1/models/{model}{part}{verb}"


def parse_rest_response(response: dict) -> list[dict]:
  """Row-format response -> one {head: {class, score, scores}} per image."""
  if "error" in response:
    raise RuntimeError(f"TF Serving error: {response['error']}")
  return [_per_head(row) for row in response["predictions"]]


def predict_rest(server: str, model: str, images: Sequence[bytes],
                 version: Optional[int] = None, timeout: float = 30,
                 label: Optional[str] = None) -> list[dict]:
  request = urllib.request.Request(
      rest_url(server, model, version, label),
      data=json.dumps(rest_body(images)).encode("utf-8"),
      headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as r:
      return parse_rest_response(json.load(r))
  except urllib.error.HTTPError as e:
    # TF Serving puts the reason (e.g. "Unknown image file format") in the body.
    detail = e.read().decode("utf-8", "replace")
    raise RuntimeError(f"HTTP {e.code} from TF Serving: {detail}") from None


# --- gRPC ---------------------------------------------------------------------


def _model_spec(spec, model: str, version: Optional[int],
                label: Optional[str]) -> None:
  if version and label:
    raise ValueError("give a version or a label, not both")
  spec.name = model
  if version:
    spec.version.value = version
  elif label:
    spec.version_label = label


def grpc_request(images: Sequence[bytes], model: str,
                 version: Optional[int] = None, label: Optional[str] = None):
  """A PredictRequest for the bytes signature (a 1-D DT_STRING tensor)."""
  from tensorflow_serving.apis import predict_pb2  # pip install tensorflow-serving-api
  from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
  request = predict_pb2.PredictRequest()
  _model_spec(request.model_spec, model, version, label)
  request.model_spec.signature_name = SIGNATURE
  request.inputs[INPUT].CopyFrom(tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      tensor_shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))]),
      string_val=list(images)))
  return request


def _tensor_values(proto) -> tuple[list[int], list]:
  """TensorProto -> (shape, flat values) for the float and string outputs
  this model has (TF Serving fills float_val/string_val, or tensor_content)."""
  import struct
  shape = [d.size for d in proto.tensor_shape.dim]
  if proto.string_val:
    return shape, [s.decode("utf-8") for s in proto.string_val]
  if proto.float_val:
    return shape, list(proto.float_val)
  count = 1
  for d in shape:
    count *= d
  return shape, list(struct.unpack(f"<{count}f", proto.tensor_content))


def parse_grpc_response(response) -> list[dict]:
  """PredictResponse -> one {head: {class, score, scores}} per image."""
  columns = {}
  for name, proto in response.outputs.items():
    shape, flat = _tensor_values(proto)
    width = shape[1] if len(shape) > 1 else 1
    rows = [flat[i * width:(i + 1) * width] if len(shape) > 1 else flat[i]
            for i in range(shape[0])]
    columns[name] = rows
  n = len(next(iter(columns.values()))) if columns else 0
  return [_per_head({k: v[i] for k, v in columns.items()}) for i in range(n)]


def predict_grpc(target: str, model: str, images: Sequence[bytes],
                 version: Optional[int] = None, timeout: float = 30,
                 label: Optional[str] = None) -> list[dict]:
  response = _grpc_call(target, "Predict",
                        grpc_request(images, model, version, label), timeout)
  return parse_grpc_response(response)


def _grpc_call(target: str, method: str, request, timeout: float):
  """One PredictionService call (Predict, Classify, GetModelMetadata)."""
  import grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  # Images can be MBs: raise gRPC's 4 MB default message cap.
  options = [("grpc.max_send_message_length", 64 << 20),
             ("grpc.max_receive_message_length", 64 << 20)]
  with grpc.insecure_channel(target, options=options) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return getattr(stub, method)(request, timeout=timeout)


# --- the Classify API: one head per call, tf.Examples in --------------------


CLASSIFY_PREFIX = "classify_"
IMAGE_FEATURE = "image/encoded"


def classify_request(images: Sequence[bytes], model: str, head: str,
                     version: Optional[int] = None,
                     label: Optional[str] = None):
  """A ClassificationRequest for head ``head``: each image as a tf.Example
  whose image/encoded feature holds the encoded bytes."""
  from tensorflow_serving.apis import classification_pb2  # pip install tensorflow-serving-api
  request = classification_pb2.ClassificationRequest()
  _model_spec(request.model_spec, model, version, label)
  request.model_spec.signature_name = CLASSIFY_PREFIX + head
  for b in images:
    example = request.input.example_list.examples.add()
    example.features.feature[IMAGE_FEATURE].bytes_list.value.append(b)
  return request


def _classify_row(pairs) -> dict:
  scores = {label: score for label, score in pairs}
  best = max(scores, key=scores.get)
  return {"class": best, "score": scores[best], "scores": scores}


def parse_classify_grpc(response, head: str) -> list[dict]:
  """ClassificationResponse -> one {head: {class, score, scores}} per image."""
  return [{head: _classify_row((c.label, c.score) for c in row.classes)}
          for row in response.result.classifications]


def parse_classify_rest(response: dict, head: str) -> list[dict]:
  """REST :classify response ({"results": [[[label, score], ...], ...]})."""
  if "error" in response:
    raise RuntimeError(f"TF Serving error: {response['error']}")
  return [{head: _classify_row(row)} for row in response["results"]]


def classify_grpc(target: str, model: str, head: str, images: Sequence[bytes],
                  version: Optional[int] = None, timeout: float = 30,
                  label: Optional[str] = None) -> list[dict]:
  response = _grpc_call(
      target, "Classify",
      classify_request(images, model, head, version, label), timeout)
  return parse_classify_grpc(response, head)


def classify_rest(server: str, model: str, head: str, images: Sequence[bytes],
                  version: Optional[int] = None, timeout: float = 30,
                  label: Optional[str] = None) -> list[dict]:
  # REST's tf.Example JSON: a bytes feature is {"b64": ...}.
  body = {"signature_name": CLASSIFY_PREFIX + head,
          "examples": [{IMAGE_FEATURE: {"b64": base64.b64encode(b).decode("ascii")}}
                       for b in images]}
  request = urllib.request.Request(
      rest_url(server, model, version, label, verb=":classify"),
      data=json.dumps(body).encode("utf-8"),
      headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as r:
      return parse_classify_rest(json.load(r), head)
  except urllib.error.HTTPError as e:
    detail = e.read().decode("utf-8", "replace")
    raise RuntimeError(f"HTTP {e.code} from TF Serving: {detail}") from None


# --- metadata: what a client reads before its first call ----------------------


def metadata_request(model: str, version: Optional[int] = None,
                     label: Optional[str] = None):
  """A GetModelMetadataRequest for the signatures (the only metadata field
  TF Serving serves)."""
  from tensorflow_serving.apis import get_model_metadata_pb2
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  _model_spec(request.model_spec, model, version, label)
  request.metadata_field.append("signature_def")
  return request


def parse_metadata_grpc(response) -> dict:
  """GetModelMetadataResponse -> {signature: {"inputs": {name: [dtype,
  shape]}, "outputs": {...}}}."""
  from tensorflow_serving.apis import get_model_metadata_pb2
  from tensorflow.core.framework import types_pb2
  sig_map = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(sig_map)

  def side(tensors):
    return {k: [types_pb2.DataType.Name(t.dtype),
                [d.size for d in t.tensor_shape.dim]]
            for k, t in sorted(tensors.items())}
  return {name: {"inputs": side(sig.inputs), "outputs": side(sig.outputs)}
          for name, sig in sorted(sig_map.signature_def.items())}


def parse_metadata_rest(response: dict) -> dict:
  """The JSON of GET /v1/models/<model>/metadata -> the same structure as
  parse_metadata_grpc."""
  sigs = response["metadata"]["signature_def"]["signature_def"]

  def side(tensors):
    return {k: [t["dtype"], [int(d["size"]) for d in
                             t.get("tensor_shape", {}).get("dim", [])]]
            for k, t in sorted(tensors.items())}
  return {name: {"inputs": side(s.get("inputs", {})),
                 "outputs": side(s.get("outputs", {}))}
          for name, s in sorted(sigs.items())}


def metadata_rest(server: str, model: str, version: Optional[int] = None,
                  label: Optional[str] = None, timeout: float = 30) -> dict:
  url = rest_url(server, model, version, label, verb="/metadata")
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return parse_metadata_rest(json.load(r))


def metadata_grpc(target: str, model: str, version: Optional[int] = None,
                  label: Optional[str] = None, timeout: float = 30) -> dict:
  response = _grpc_call(target, "GetModelMetadata",
                        metadata_request(model, version, label), timeout)
  return parse_metadata_grpc(response)


# --- shared -------------------------------------------------------------------


def _per_head(row: dict) -> dict:
  """One image's outputs -> {head: {class, score, scores}}; outputs that are
  not heads (no "<name>_class" beside them) pass through unchanged."""
  result = {}
  for name, value in row.items():
    if name.endswith((CLASS_SUFFIX, SCORE_SUFFIX)) and name.rsplit("_", 1)[0] in row:
      continue
    if name + CLASS_SUFFIX in row:
      result[name] = {"class": row[name + CLASS_SUFFIX],
                      "score": row.get(name + SCORE_SUFFIX, max(value)),
                      "scores": value}
    else:
      result[name] = value
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("images", nargs="*", help="JPEG/PNG files")
  parser.add_argument("--model", default="demo", help="model name in TF Serving")
  parser.add_argument("--version", type=int, default=None,
                      help="model version (default: the one TF Serving serves)")
  parser.add_argument("--label", default=None,
                      help="version label, e.g. stable or canary (models_canary.config)")
  parser.add_argument("--metadata", action="store_true",
                      help="print the model's signatures (inputs, outputs) and exit")
  parser.add_argument("--classify", default=None, metavar="HEAD",
                      help="use the Classify API on this head's classify_<head> signature")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--rest", default="http://localhost:8501",
                     help="REST server URL (default)")
  group.add_argument("--grpc", default=None, help="gRPC host:port, e.g. localhost:8500")
  args = parser.parse_args(argv)
  if args.metadata:
    if args.grpc:
      sigs = metadata_grpc(args.grpc, args.model, args.version, args.label)
    else:
      sigs = metadata_rest(args.rest, args.model, args.version, args.label)
    print(json.dumps(sigs, indent=1))
    return 0
  if not args.images:
    parser.error("give image files (or --metadata)")
  images = read_files(args.images)
  if args.classify:
    call = classify_grpc if args.grpc else classify_rest
    results = call(args.grpc or args.rest, args.model, args.classify, images,
                   args.version, label=args.label)
  elif args.grpc:
    results = predict_grpc(args.grpc, args.model, images, args.version,
                           label=args.label)
  else:
    results = predict_rest(args.rest, args.model, images, args.version,
                           label=args.label)
  for path, result in zip(args.images, results):
    print(json.dumps({"image": path, **result}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
