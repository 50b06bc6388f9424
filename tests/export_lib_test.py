"""Tests of export_lib: every artefact against the Keras model, the serving
signature as TF Serving would call it, the op-list check and bad input.

The tiny confident model and its exports come from export_fixture, built once
per test process and shared with predict_test (see its docstring).
"""

from __future__ import annotations

import base64
import json
import operator
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mlc_keras.exporters import artefacts
from mlc_keras.core import config as config_lib
from mlc_keras.exporters import publish as export_lib
from mlc_keras.exporters import isolated
from mlc_keras.exporters import onnx as onnx_lib
from mlc_keras.exporters import parity as parity_lib
from mlc_keras.exporters import saved_model as saved_model_lib
from mlc_keras.exporters import tflite as tflite_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.inference import files as predict_lib
from mlc_keras.inference import predictors
from mlc_keras.runs import folder as run_dir
from mlc_keras.data import imageio
from mlc_keras.data import sources
from tests import export_fixture
from tests import testutil
from tests.export_fixture import make_images
from tests.export_fixture import OLD_TABLE
from tests.export_fixture import SCHEMA
from tests.export_fixture import SIZE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A valid 1x1 GIF (logical screen at bytes 6-10).
GIF_1X1 = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00"
           b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def claim_size(encoded: bytes, width: int, height: int) -> bytes:
  """``encoded`` (PNG, JPEG or GIF) with its header patched to claim
  width x height: what a decompression bomb looks like before decoding."""
  data = bytearray(encoded)
  if data.startswith(b"\x89PNG"):
    data[16:24] = struct.pack(">II", width, height)
  elif data.startswith(b"GIF8"):
    data[6:10] = struct.pack("<HH", width, height)
  elif data.startswith(b"\xff\xd8"):
    sof = data.index(b"\xff\xc0")  # TF writes baseline JPEGs
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
  else:
    raise ValueError("not a PNG, JPEG or GIF")
  return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
  return (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
          + struct.pack("<IiiHH", 40, width, height, 1, 24) + bytes(24))


def webp_header(chunk: bytes, payload: bytes) -> bytes:
  body = b"WEBP" + chunk + struct.pack("<I", 64) + payload
  return b"RIFF" + struct.pack("<I", len(body) + 64) + body + bytes(8)


def load_client():
  """export/client.py, which is a script beside the package, not in it."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "mlc_export_client", os.path.join(REPO, "export", "client.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ExportLibTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    fixture = export_fixture.plain()  # shared, read-only
    cls.root = fixture.root
    cls.model_dir = fixture.model_dir
    cls.model = fixture.model
    cls.cal_dir = fixture.cal_dir
    cls.parity_dir = fixture.parity_dir
    # Held out from calibration and from export's own parity check.
    cls.images, cls.labels = make_images(48, seed=3)
    cls.reference = predictors.KerasPredictor(
        fixture.model_file, cls.model).predict(cls.images)
    cls.base = fixture.base
    cls.result = fixture.result
    cls.saved_model = cls.result.saved_model

  # --- layout ---------------------------------------------------------------

  def test_layout_is_versioned_with_labels_and_warmup(self):
    self.assertEqual(self.saved_model, os.path.join(self.base, "tiny", "3"))
    self.assertTrue(os.path.isfile(os.path.join(self.saved_model,
                                                "saved_model.pb")))
    self.assertEqual(
        heads_lib.LabelSchema.load(
            os.path.join(self.saved_model, "assets", "labels.json")), SCHEMA)
    self.assertEqual(sorted(self.result.tflite), sorted(tflite_lib.QUANTIZATIONS))
    for q, path in self.result.tflite.items():
      self.assertEqual(path, os.path.join(self.base, "litert", "tiny", "3",
                                          f"tiny_{q}.tflite"))
      self.assertEqual(heads_lib.LabelSchema.load(os.path.dirname(path)), SCHEMA)
    self.assertEqual(self.result.onnx,
                     os.path.join(self.base, "onnx", "tiny", "3", "tiny.onnx"))
    self.assertEqual(heads_lib.LabelSchema.load(
        os.path.dirname(self.result.onnx)), SCHEMA)
    self.assertFalse(os.path.exists(os.path.join(self.base, ".staging")))

    logs = saved_model_lib.read_warmup_requests(self.saved_model)
    self.assertLen(logs, 1)
    request = logs[0].predict_log.request
    self.assertEqual(request.model_spec.signature_name, "serving_default")
    self.assertEqual(list(request.inputs), ["image_bytes"])
    warm = tf.make_ndarray(request.inputs["image_bytes"])
    self.assertEqual(imageio.decode_and_resize(warm[0], SIZE).shape,
                     (SIZE, SIZE, 3))

    with open(self.result.parity_path) as f:
      report = json.load(f)
    self.assertEqual(report["parity_images"], self.parity_dir)
    self.assertEqual(report["max_image_pixels"], saved_model_lib.MAX_IMAGE_PIXELS)
    self.assertEqual(report["max_image_bytes"], saved_model_lib.MAX_IMAGE_BYTES)
    self.assertIsNone(report["class_table"])
    self.assertEqual(report["calibration_images"], self.cal_dir)
    self.assertEqual(
        sorted(r["artefact"] for r in report["reports"]),
        sorted(["saved_model", "saved_model_bytes", "saved_model_examples",
                "onnx",
                "tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8"]))
    for r in report["reports"]:
      self.assertTrue(r["passed"], r)
      self.assertEqual(r["images"], 40)
      self.assertEqual(sorted(r["outputs"]), ["colour", "tone"])

  def test_signatures(self):
    loaded = tf.saved_model.load(self.saved_model)
    serving = loaded.signatures["serving_default"]
    spec = serving.structured_input_signature[1]
    self.assertEqual(list(spec), ["image_bytes"])
    self.assertEqual(spec["image_bytes"].dtype, tf.string)
    self.assertEqual(spec["image_bytes"].shape.as_list(), [None])
    self.assertEqual(
        sorted(serving.structured_outputs),
        ["colour", "colour_class", "colour_score", "tone", "tone_class",
         "tone_score"])
    tensor = loaded.signatures["serve_image"]
    spec = tensor.structured_input_signature[1]["image"]
    self.assertEqual(spec.dtype, tf.uint8)
    self.assertEqual(spec.shape.as_list(), [None, SIZE, SIZE, 3])
    self.assertEqual(sorted(tensor.structured_outputs), ["colour", "tone"])
    # The ONNX file names its batch dimension, in and out.
    session = predictors.OnnxPredictor(self.result.onnx).session
    (image,) = session.get_inputs()
    self.assertEqual((image.name, image.shape),
                     ("image", ["batch", SIZE, SIZE, 3]))
    self.assertEqual({o.name: o.shape for o in session.get_outputs()},
                     {"colour": ["batch", 3], "tone": ["batch", 2]})

  # --- round trips ----------------------------------------------------------

  def test_model_is_confident(self):
    # The premise of the int8 test below.
    for head, probs in self.reference.items():
      top2 = np.sort(probs, axis=-1)[:, -2:]
      self.assertGreater((top2[:, 1] - top2[:, 0]).min(), 0.5, head)
      np.testing.assert_array_equal(probs.argmax(-1), self.labels[head])

  def test_every_artefact_matches_keras(self):
    candidates = [("saved_model", self.saved_model, False, "fp32"),
                 ("saved_model_bytes", self.saved_model, True, "fp32"),
                 ("onnx", self.result.onnx, False, "fp32")]
    candidates += [(f"tflite_{q}", p, False, q)
                  for q, p in self.result.tflite.items()]
    for name, path, use_bytes, variant in candidates:
      with self.subTest(name):
        predictor = predictors.load_predictor(path, bytes_signature=use_bytes)
        self.assertEqual(predictor.image_size, SIZE)
        report = parity_lib.parity(predictor, self.reference, self.images,
                                   parity_lib.TOLERANCES[variant], name)
        self.assertTrue(report["passed"], report["failures"])
        self.assertEqual(sorted(report["outputs"]), ["colour", "tone"])
        for head, stats in report["outputs"].items():
          if variant == "fp32":
            self.assertLessEqual(stats["max_abs_diff"], 1e-4, head)
          elif variant in ("fp16", "dynamic"):
            self.assertLessEqual(stats["max_abs_diff"],
                                 parity_lib.TOLERANCES[variant].max_abs_diff)
          # Every held-out image has a margin > 0.5, so no variant, int8
          # included, may flip a single one.
          self.assertEqual(stats["top1_agreement"], 1.0, head)

  def test_int8_is_really_int8(self):
    from ai_edge_litert import interpreter as litert
    sizes = {q: os.path.getsize(p) for q, p in self.result.tflite.items()}
    self.assertGreater(sizes["fp32"] / sizes["int8"], 3.5)
    self.assertGreater(sizes["fp32"] / sizes["fp16"], 1.9)
    interp = litert.Interpreter(model_path=self.result.tflite["int8"])
    dtypes = [d["dtype"] for d in interp.get_tensor_details()]
    floats = sum(1 for d in dtypes if d == np.float32)
    # Float only at the edges: the Cast after the uint8 input, the outputs.
    self.assertLessEqual(floats, 1 + len(SCHEMA))
    self.assertGreater(sum(1 for d in dtypes if d == np.int8), 100)
    self.assertEqual(interp.get_signature_list(),
                     {"serve_image": {"inputs": ["image"],
                                      "outputs": ["colour", "tone"]}})

  def encoded_and_expected(self):
    # JPEGs of another size so decoding and resizing both happen in-graph.
    images, _ = make_images(4, seed=4, size=45)
    encoded = [tf.io.encode_jpeg(i, quality=90).numpy() for i in images]
    pixels = np.stack([imageio.decode_and_resize(tf.constant(e), SIZE).numpy()
                       for e in encoded])
    expected = {k: v.numpy() for k, v in
                run_dir.model_outputs(self.model, pixels).items()}
    return encoded, expected

  def test_rest_body_with_b64_matches_keras_on_decoded_pixels(self):
    encoded, expected = self.encoded_and_expected()
    body = json.dumps(load_client().rest_body(encoded))  # what is POSTed
    # What TF Serving does with a row-format request: every {"b64": ...}
    # becomes the decoded bytes, the instances stack into the input tensor.
    request = json.loads(body)
    batch = tf.constant([base64.b64decode(inst["image_bytes"]["b64"])
                         for inst in request["instances"]])
    loaded = tf.saved_model.load(self.saved_model)
    out = loaded.signatures[request["signature_name"]](image_bytes=batch)
    for h in SCHEMA.heads:
      probs = out[h.name].numpy()
      self.assertAllClose(probs, expected[h.name], atol=1e-4, rtol=0)
      self.assertEqual([c.decode() for c in out[h.name + "_class"].numpy()],
                       [h.classes[i] for i in probs.argmax(-1)])
      self.assertAllClose(out[h.name + "_score"].numpy(), probs.max(-1))

    # TF Serving's row-format answer, parsed back by the client.
    response = {"predictions": [
        {k: (v[i].decode() if v.dtype == object else v[i].tolist())
         for k, v in ((k, t.numpy()) for k, t in out.items())}
        for i in range(len(encoded))]}
    parsed = load_client().parse_rest_response(json.loads(json.dumps(response)))
    self.check_client_results(parsed, expected)

  def test_grpc_request_and_response(self):
    from tensorflow_serving.apis import predict_pb2
    client = load_client()
    encoded, expected = self.encoded_and_expected()
    request = client.grpc_request(encoded, "tiny", version=3)
    self.assertEqual(request.model_spec.signature_name, "serving_default")
    batch = tf.make_ndarray(request.inputs["image_bytes"])
    self.assertEqual(list(batch), encoded)
    loaded = tf.saved_model.load(self.saved_model)
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(batch))
    response = predict_pb2.PredictResponse()
    for k, v in out.items():
      response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
    self.check_client_results(client.parse_grpc_response(response), expected)

  def check_client_results(self, parsed, expected):
    self.assertLen(parsed, 4)
    for i, result in enumerate(parsed):
      self.assertEqual(sorted(result), ["colour", "tone"])
      for h in SCHEMA.heads:
        self.assertEqual(result[h.name]["class"],
                         h.classes[expected[h.name][i].argmax()])
        self.assertAllClose(result[h.name]["scores"], expected[h.name][i],
                            atol=1e-4)
        self.assertAllClose(result[h.name]["score"], expected[h.name][i].max(),
                            atol=1e-4)

  def test_models_config_parses(self):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    with open(os.path.join(REPO, "export", "models.config")) as f:
      config = text_format.Parse(f.read(),
                                 model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    self.assertEqual(model.base_path, "/models/" + model.name)

  # --- the op check ----------------------------------------------------------

  def test_saved_model_loads_without_mlc_keras_and_has_only_standard_ops(self):
    # export() ran check_saved_model (a plain-TF subprocess) on what it wrote.
    report = self.result.saved_model_check
    self.assertFalse(report["mlc_keras_imported"])
    self.assertEqual(report["unregistered"], [])
    self.assertIn("DecodeImage", report["ops"])  # in-graph decoding is there
    self.assertIn("ExtractJpegShape", report["ops"])  # and the pixel cap
    self.assertIn("Conv2D", report["ops"])
    self.assertEmpty(set(report["ops"]) & saved_model_lib.PYTHON_OPS)
    self.assertEqual(report["ran"]["colour"], [2, 3])
    self.assertEqual(report["ran"]["tone_class"], [2])
    self.assertEqual(sorted(report["signatures"]),
                     ["classify_colour", "classify_tone", "serve_examples",
                      "serve_image", "serving_default"])

  def test_op_check_catches_py_function(self):
    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": tf.py_function(np.square, [x], tf.float32)},
        input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    path = os.path.join(self.get_temp_dir(), "py_function_model")
    tf.saved_model.save(module, path,
                        signatures={"serving_default": module.f.get_concrete_function()})
    with self.assertRaisesRegex(artefacts.ExportError, "EagerPyFunc"):
      saved_model_lib.check_saved_model(path)

  def test_forbidden_ops(self):
    self.assertEqual(saved_model_lib.forbidden_ops(["Conv2D", "DecodeImage"]), [])
    problems = saved_model_lib.forbidden_ops(["Conv2D", "PyFunc", "MyOp"],
                                        unregistered=["MyOp"])
    self.assertLen(problems, 2)
    self.assertIn("PyFunc", problems[0])
    self.assertIn("MyOp", problems[1])

  def test_onnx_unsupported_op_fails_loudly(self):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="b")])
    def decode_first_pixel(b):
      return {"p": tf.map_fn(
          lambda e: tf.cast(imageio.decode(e)[0, 0], tf.float32), b,
          fn_output_signature=tf.TensorSpec([3], tf.float32))}

    path = os.path.join(self.get_temp_dir(), "broken.onnx")
    with self.assertRaisesRegex(artefacts.ExportError, "DecodeImage"):
      onnx_lib.function_to_onnx(
          decode_first_pixel, [tf.TensorSpec([None], tf.string, name="b")], path)
    self.assertFalse(os.path.exists(path))

  # --- bad input --------------------------------------------------------------

  def test_corrupt_bytes_raise_invalid_argument(self):
    serving = tf.saved_model.load(self.saved_model).signatures["serving_default"]
    good = tf.io.encode_png(self.images[0]).numpy()
    for bad in (b"definitely not an image", b"", good[:len(good) // 2]):
      with self.subTest(size=len(bad)):
        with self.assertRaises(tf.errors.InvalidArgumentError):
          serving(image_bytes=tf.constant([good, bad]))
    # Still serving afterwards.
    out = serving(image_bytes=tf.constant([good]))
    self.assertEqual(out["colour"].shape, (1, 3))

  def test_oversized_image_is_rejected(self):
    module = saved_model_lib.build_serving_module(self.model, SCHEMA,
                                             max_image_bytes=500)
    small = tf.io.encode_png(np.zeros((SIZE, SIZE, 3), np.uint8)).numpy()
    large = tf.io.encode_png(self.images[0]).numpy()
    self.assertLess(len(small), 500)
    self.assertGreater(len(large), 500)
    self.assertEqual(module.serve_bytes(tf.constant([small]))["colour"].shape,
                     (1, 3))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "larger than 500"):
      module.serve_bytes(tf.constant([small, large]))

  def test_pixel_cap_refuses_before_decoding(self):
    module = saved_model_lib.build_serving_module(self.model, SCHEMA,
                                             max_image_pixels=100)
    png = tf.io.encode_png(self.images[0]).numpy()
    jpeg = tf.io.encode_jpeg(self.images[0]).numpy()
    small = tf.io.encode_png(self.images[1][:8, :8]).numpy()  # 64 pixels
    over = {
        "png": claim_size(png, 11, 10),
        "jpeg": claim_size(jpeg, 10, 11),
        "gif": claim_size(GIF_1X1, 11, 10),
        "bmp": bmp_header(11, -10),
        "webp": webp_header(b"VP8X", bytes(4) + struct.pack("<I", 10)[:3]
                            + struct.pack("<I", 9)[:3]),
        "real 32x32 png": png,
        # (2^32 - 1)^2 overflows int64 to a small number.
        "png 2^32-1 square": claim_size(png, 2 ** 32 - 1, 2 ** 32 - 1),
    }
    for name, encoded in over.items():
      with self.subTest(name):
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    "too large.* 100 pixels"):
          module.serve_bytes(tf.constant([small, encoded]))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                "not a JPEG, PNG, GIF, BMP or WebP image"):
      module.serve_bytes(tf.constant([small, b"definitely not an image"]))
    # Under the cap, decoded as before: the bytes signature equals the tensor
    # signature on the pixels decode_and_resize gives.
    encoded = [small, GIF_1X1, claim_size(GIF_1X1, 10, 10)]
    served = module.serve_bytes(tf.constant(encoded))
    pixels = tf.stack([imageio.decode_and_resize(e, SIZE) for e in encoded])
    expected = module.serve_image(pixels)
    for head in ("colour", "tone"):
      self.assertAllClose(served[head], expected[head], atol=1e-6)
    with self.assertRaisesRegex(artefacts.ExportError, "max_image_pixels"):
      saved_model_lib.build_serving_module(self.model, SCHEMA, max_image_pixels=0)
    # One limit for training's file screen, the library and the export CLI.
    self.assertEqual(saved_model_lib.MAX_IMAGE_PIXELS, sources.MAX_IMAGE_PIXELS)
    self.assertEqual(saved_model_lib.MAX_IMAGE_PIXELS,
                     config_lib.DataConfig.max_image_pixels)

  def test_saved_model_refuses_decompression_bombs(self):
    # 631 bytes of JPEG claiming 12000x12000 would decode to 432 MB.
    serving = tf.saved_model.load(self.saved_model).signatures["serving_default"]
    jpeg = tf.io.encode_jpeg(self.images[0]).numpy()
    png = tf.io.encode_png(self.images[0]).numpy()
    for bomb in (claim_size(jpeg, 12000, 12000),
                 claim_size(png, 50000, 50000)):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                  f"too large.* {saved_model_lib.MAX_IMAGE_PIXELS} "
                                  "pixels"):
        serving(image_bytes=tf.constant([bomb]))

  def test_bad_arguments_name_the_thing(self):
    with self.assertRaisesRegex(artefacts.ExportError, "format 'tfjs'"):
      export_lib.export(self.model_dir, formats="saved_model,tfjs")
    with self.assertRaisesRegex(artefacts.ExportError, "quantization 'int4'"):
      export_lib.export(self.model_dir, quantizations="fp32,int4")
    with self.assertRaisesRegex(artefacts.ExportError, "version"):
      export_lib.export(self.model_dir, version=0)
    with self.assertRaisesRegex(artefacts.ExportError, "max_image_pixels"):
      export_lib.export(self.model_dir, max_image_pixels=0)
    with self.assertRaisesRegex(artefacts.ExportError, "already exists"):
      export_lib.export(self.model_dir, output=self.base, version=3)
    with self.assertRaisesRegex(artefacts.ExportError,
                                r"'bad name' \(model_name\)"):
      export_lib.export(self.model_dir, model_name="bad name")
    badly_named = os.path.join(self.get_temp_dir(), "parity")
    os.makedirs(badly_named)
    os.symlink(os.path.join(self.model_dir, "model.keras"),
               os.path.join(badly_named, "model.keras"))
    # Once renamed to "mlc" in silence; now the name and the way out.
    with self.assertRaisesRegex(artefacts.ExportError,
                                "'parity' .the model folder's name; pass "
                                "model_name"):
      export_lib.export(badly_named)
    no_labels = os.path.join(self.get_temp_dir(), "no_labels")
    os.makedirs(no_labels)
    os.symlink(os.path.join(self.model_dir, "model.keras"),
               os.path.join(no_labels, "model.keras"))
    with self.assertRaisesRegex(artefacts.ExportError, "no labels.json"):
      export_lib.export(no_labels)
    with self.assertRaisesRegex(artefacts.ExportError, "unknown model format"):
      open(os.path.join(no_labels, "model.pt"), "w").close()
      predictors.load_predictor(os.path.join(no_labels, "model.pt"))

  def test_labels_must_match_model(self):
    other = os.path.join(self.get_temp_dir(), "wrong_labels")
    os.makedirs(other)
    os.symlink(os.path.join(self.model_dir, "model.keras"),
               os.path.join(other, "model.keras"))
    heads_lib.LabelSchema((heads_lib.HeadSpec("colour", ("a", "b")),)).save(other)
    with self.assertRaisesRegex(artefacts.ExportError, "'colour' has 2 classes"):
      run_dir.load_trained(other)

  def test_export_cli_reports_bad_flag_value(self):
    proc = subprocess.run(
        [sys.executable, "-m", "mlc_keras.export", f"--model_dir={self.model_dir}",
         "--quantization=fp32,fp8"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn("unknown quantization 'fp8'", proc.stderr)

  # --- parity and forward compatibility ----------------------------------------

  def test_parity_reports_failures(self):
    def shifted(images):
      out = {k: v.copy() for k, v in self.reference.items()}
      out["colour"] = out["colour"][:, [1, 2, 0]]  # every decision wrong
      return out

    report = parity_lib.parity(shifted, self.reference, self.images,
                               parity_lib.INT8_TOLERANCE, "shifted")
    self.assertFalse(report["passed"])
    self.assertEqual(report["outputs"]["colour"]["top1_agreement"], 0.0)
    self.assertEqual(report["outputs"]["tone"]["top1_agreement"], 1.0)
    self.assertEqual(report["outputs"]["colour"]["disagreements"], 48)
    self.assertEqual(report["outputs"]["colour"]["near_tie_disagreements"], 0)
    self.assertLen(report["failures"], 1)
    self.assertIn("colour", report["failures"][0])
    table = parity_lib.format_parity_table([report])
    self.assertIn("shifted", table)
    self.assertIn("NO", table)

  def test_extra_outputs_pass_through(self):
    # A later model may add outputs that are not heads (e.g. a composed
    # "class"); they must be exported unchanged and get no label output.
    outputs = dict(self.model.output)
    outputs["class"] = keras.layers.Concatenate(name="class")(
        [outputs["colour"], outputs["tone"]])
    extended = keras.Model(self.model.input, outputs)
    module = saved_model_lib.build_serving_module(extended, SCHEMA)
    encoded = tf.constant([tf.io.encode_png(i).numpy() for i in self.images[:3]])
    served = module.serve_bytes(encoded)
    self.assertEqual(sorted(served),
                     ["class", "colour", "colour_class", "colour_score", "tone",
                      "tone_class", "tone_score"])
    self.assertAllClose(served["class"][:, :3], served["colour"])
    tensors = module.serve_image(tf.constant(self.images[:3]))
    self.assertEqual(sorted(tensors), ["class", "colour", "tone"])
    self.assertAllClose(tensors["class"], served["class"], atol=1e-6)

  def test_run_isolated_uses_another_process(self):
    self.assertNotEqual(isolated.run(os.getpid), os.getpid())

  def test_run_all_keeps_call_order_and_raises_the_first_failure(self):
    # Two workers share three calls: results come back in call order.
    self.assertEqual(
        isolated.run_all([(operator.add, (1, 2)), (operator.mul, (3, 4)),
                          (operator.sub, (9, 5))], workers=2), [3, 12, 4])
    pids = isolated.run_all([(os.getpid, ()), (os.getpid, ())], workers=2)
    self.assertNotIn(os.getpid(), pids)
    with self.assertRaisesRegex(ValueError, "invalid literal"):
      isolated.run_all([(operator.add, (1, 2)), (int, ("x",))], workers=2)
    self.assertEqual(isolated.run_all([(operator.add, (1, 2))], isolate=False),
                     [3])

  def test_list_images_folder_and_manifest(self):
    folder = self.parity_dir
    paths = predict_lib.list_images(folder)
    self.assertLen(paths, 40)
    manifest = os.path.join(self.root, "list.csv")
    with open(manifest, "w") as f:
      f.write("image,colour\nparity/img_001.png,red\n"
              f"{os.path.join(folder, 'img_002.png')},blue\n")
    self.assertEqual(predict_lib.list_images(manifest),
                     [os.path.join(self.root, "parity", "img_001.png"),
                      os.path.join(folder, "img_002.png")])
    with self.assertRaisesRegex(artefacts.ExportError, "no such"):
      predict_lib.list_images(os.path.join(self.root, "missing"))


class OnnxTest(tf.test.TestCase):
  """function_to_onnx on a tiny function (no export fixture)."""

  def test_onnx_batch_dimension_is_named(self):
    spec = tf.TensorSpec([None, 4], tf.float32, name="x")

    @tf.function(input_signature=[spec])
    def double(x):
      return {"p": tf.reduce_sum(x * 2.0, axis=1, keepdims=True)}

    path = os.path.join(self.get_temp_dir(), "double.onnx")
    onnx_lib.function_to_onnx(double, [spec], path)
    import onnx  # pylint: disable=g-import-not-at-top
    graph = onnx.load(path).graph
    self.assertEqual([d.dim_param or d.dim_value
                      for d in graph.input[0].type.tensor_type.shape.dim],
                     ["batch", 4])
    self.assertEqual([d.dim_param or d.dim_value
                      for d in graph.output[0].type.tensor_type.shape.dim],
                     ["batch", 1])
    self.assertNotIn("unk__", str(graph.value_info))


class HeaderSizeTest(tf.test.TestCase):
  """imageio.header_size, in a graph as serving runs it."""

  def size(self, encoded: bytes) -> list[int]:
    fn = tf.function(imageio.header_size,
                     input_signature=[tf.TensorSpec([], tf.string)])
    return fn(tf.constant(encoded)).numpy().tolist()

  def test_formats(self):
    image = np.zeros((21, 37, 3), np.uint8)
    png = tf.io.encode_png(image).numpy()
    jpeg = tf.io.encode_jpeg(image).numpy()
    progressive = tf.io.encode_jpeg(image, progressive=True).numpy()
    cases = {
        "png": (png, [37, 21]),
        "jpeg": (jpeg, [37, 21]),
        "progressive jpeg": (progressive, [37, 21]),
        "gif": (claim_size(GIF_1X1, 37, 21), [37, 21]),
        "bmp": (bmp_header(37, 21), [37, 21]),
        "top-down bmp": (bmp_header(37, -21), [37, 21]),
        "webp lossy": (webp_header(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a"
                                   + struct.pack("<HH", 37, 21)), [37, 21]),
        "webp lossless": (webp_header(
            b"VP8L", b"\x2f" + struct.pack("<I", 36 | 20 << 14)), [37, 21]),
        "webp extended": (webp_header(
            b"VP8X", bytes(4) + struct.pack("<I", 36)[:3]
            + struct.pack("<I", 20)[:3]), [37, 21]),
        "not an image": (b"definitely not an image", [-1, -1]),
        "empty": (b"", [-1, -1]),
        "png cut short": (png[:20], [-1, -1]),
        "jpeg xl": (b"\xff\x0a" + bytes(30), [-1, -1]),
    }
    for name, (encoded, expected) in cases.items():
      with self.subTest(name):
        self.assertEqual(self.size(encoded), expected)


class ComposedExportTest(tf.test.TestCase):
  """A calibrated model with a class table, exported as a user would after
  `evaluate --calibrate`: export must pick calibrated.keras, and every
  artefact must carry the temperatures and the composed "class" output."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    fixture = export_fixture.composed()  # shared, read-only
    cls.model_dir = fixture.model_dir
    cls.plain = fixture.plain
    cls.calibrated = fixture.calibrated
    cls.table_path = fixture.table_path
    cls.table = fixture.table
    cls.cal_dir = fixture.cal_dir
    cls.base = fixture.base
    cls.log = fixture.log
    cls.result = fixture.result
    cls.images, cls.labels = make_images(24, seed=3)
    # This class's own exports go here, not into the shared fixture.
    cls.root = tempfile.mkdtemp(prefix="composed_export_test_")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def artefacts(self):
    return [("saved_model", self.result.saved_model, False),
            ("saved_model_bytes", self.result.saved_model, True),
            ("tflite_fp32", self.result.tflite["fp32"], False),
            ("tflite_int8", self.result.tflite["int8"], False),
            ("onnx", self.result.onnx, False)]

  def test_bytes_signature_and_compose_agree_at_the_threshold(self):
    # One rule, two writings: the serving graph's tf.where and
    # compose.predict_classes must both keep a best class scoring exactly
    # the threshold, and both answer "unknown" just below it.
    from mlc_keras.labeling import compose
    table = compose.from_dict(OLD_TABLE, SCHEMA)  # the model's class output
    png = tf.constant([saved_model_lib.encode_png(self.images[0])])
    probe = saved_model_lib.build_serving_module(self.calibrated, SCHEMA,
                                                 table=table)
    score = probe.serve_bytes(png)["class_score"].numpy()[0]
    above = float(np.nextafter(score, np.float32(1)))
    for name, threshold in (("at", float(score)), ("above", above)):
      with self.subTest(name):
        path = os.path.join(self.root, f"threshold_{name}")
        saved_model_lib.to_saved_model(self.calibrated, SCHEMA, path,
                                       table=table, threshold=threshold)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        served = serve(image_bytes=png)
        self.assertEqual(served["class_score"].numpy()[0], score)
        want = compose.predict_classes(served["class"].numpy(), table,
                                       threshold)[0]
        self.assertEqual(want == "unknown", name == "above")
        self.assertEqual(served["class_class"].numpy()[0].decode(), want)

  def test_export_picked_the_calibrated_model_and_said_so(self):
    with open(self.result.parity_path) as f:
      report = json.load(f)
    self.assertEqual(report["model_file"],
                     os.path.join(self.model_dir, "calibrated.keras"))
    self.assertEqual(report["class_table"], self.table_path)
    self.assertTrue(any("calibrated.keras" in line and "model_file" in line
                        for line in self.log), self.log)
    for r in report["reports"]:
      self.assertTrue(r["passed"], r)
      self.assertEqual(sorted(r["outputs"]), ["class", "colour", "tone"])

  def test_artefacts_apply_the_temperatures_and_compose(self):
    from mlc_keras.labeling import compose
    expected = {k: v.numpy() for k, v in run_dir.model_outputs(
        self.calibrated, self.images).items() if k != "class"}
    expected["class"] = compose.compose_probs(expected, self.table)
    uncalibrated = {k: v.numpy() for k, v in run_dir.model_outputs(
        self.plain, self.images).items()}
    for head in ("colour", "tone"):
      # The premise: the temperatures change the probabilities noticeably.
      self.assertGreater(
          np.abs(expected[head] - uncalibrated[head]).max(), 0.05, head)
    for name, path, use_bytes in self.artefacts():
      with self.subTest(name):
        got = predictors.load_predictor(path, use_bytes).predict(self.images)
        self.assertEqual(sorted(got), ["class", "colour", "tone"])
        self.assertEqual(got["class"].shape, (len(self.images), 4))
        if name == "tflite_int8":
          # Judged by decisions (INT8_TOLERANCE), the class output included.
          for k in expected:
            np.testing.assert_array_equal(got[k].argmax(-1),
                                          expected[k].argmax(-1), k)
          continue
        for k in expected:
          self.assertAllClose(got[k], expected[k], atol=1e-4, rtol=0, msg=k)

  def test_class_table_is_beside_every_artefact(self):
    from mlc_keras.labeling import compose
    folders = [os.path.join(self.result.saved_model, "assets"),
               os.path.dirname(self.result.tflite["fp32"]),
               os.path.dirname(self.result.onnx)]
    for folder in folders:
      table = compose.load(os.path.join(folder, "classes.csv"), SCHEMA)
      self.assertEqual((table.classes, table.heads, table.values),
                       (self.table.classes, self.table.heads, self.table.values))
    for name, path, use_bytes in self.artefacts():
      predictor = predictors.load_predictor(path, use_bytes)
      self.assertEqual(predictor.class_table.classes, self.table.classes, name)

  def test_bytes_signature_names_the_class(self):
    loaded = tf.saved_model.load(self.result.saved_model)
    serving = loaded.signatures["serving_default"]
    self.assertEqual(
        sorted(serving.structured_outputs),
        ["class", "class_class", "class_score", "colour", "colour_class",
         "colour_score", "tone", "tone_class", "tone_score"])
    encoded = tf.constant([encode for encode in map(saved_model_lib.encode_png,
                                                    self.images)])
    out = serving(image_bytes=encoded)
    probs = out["class"].numpy()
    self.assertAllClose(out["class_score"].numpy(), probs.max(-1))
    names = [c.decode() for c in out["class_class"].numpy()]
    self.assertEqual(names, [self.table.classes[i] if p >= 0.5 else "unknown"
                             for i, p in zip(probs.argmax(-1), probs.max(-1))])
    # The test images are dark/light red, green or blue: the table's classes.
    truth = [("dark_red", "light_red")[t] if c == 0 else ("green", "blue")[c - 1]
             for c, t in zip(self.labels["colour"], self.labels["tone"])]
    self.assertEqual(list(probs.argmax(-1)),
                     [self.table.classes.index(t) for t in truth])
    # export/client.py reads class_class / class_score like a head's.
    response = {"predictions": [
        {k: (v[i].decode() if v.dtype == object else v[i].tolist())
         for k, v in ((k, t.numpy()) for k, t in out.items())}
        for i in range(len(names))]}
    parsed = load_client().parse_rest_response(json.loads(json.dumps(response)))
    self.assertEqual([p["class"]["class"] for p in parsed], names)
    self.assertAllClose([p["class"]["scores"] for p in parsed], probs)

  def test_threshold_makes_weak_classes_unknown(self):
    from mlc_keras.labeling import compose
    old_table = compose_table(OLD_TABLE)
    heads = {k: v.numpy() for k, v in run_dir.model_outputs(
        self.calibrated, self.images).items() if k != "class"}
    # The median best-class probability: about half the images fall below.
    threshold = float(np.median(
        compose.compose_probs(heads, old_table).max(-1)))
    module = saved_model_lib.build_serving_module(
        self.calibrated, SCHEMA, table=old_table, threshold=threshold)
    encoded = tf.constant([saved_model_lib.encode_png(i) for i in self.images])
    out = module.serve_bytes(encoded)
    scores = out["class_score"].numpy()
    names = [c.decode() for c in out["class_class"].numpy()]
    self.assertIn("unknown", names)
    self.assertNotEqual(set(names), {"unknown"})
    for name, score, best in zip(names, scores, out["class"].numpy().argmax(-1)):
      self.assertEqual(name, ("reddish", "other")[best] if score >= threshold
                       else "unknown")
    with self.assertRaisesRegex(artefacts.ExportError, "threshold"):
      saved_model_lib.build_serving_module(self.calibrated, SCHEMA,
                                      table=compose_table(OLD_TABLE),
                                      threshold=1.5)
    with self.assertRaisesRegex(artefacts.ExportError, "4 classes"):
      saved_model_lib.build_serving_module(self.calibrated, SCHEMA, table=self.table)

  def test_carried_class_output_is_exported_with_its_table(self):
    # No --class_table: calibrated.keras's own "class" output (from evaluate
    # --calibrate --class_table) is kept and its table written beside it.
    from mlc_keras.labeling import compose
    # This folder names no images (no config.json): noise, asked for.
    result = export_lib.export(
        self.model_dir, output=os.path.join(self.root, "carried"),
        formats="saved_model", isolate=False, log=lambda _: None,
        parity_images=export_lib.RANDOM_PARITY)
    table = compose.load(os.path.join(result.saved_model, "assets",
                                      "classes.csv"), SCHEMA)
    self.assertEqual(table.classes, ("reddish", "other"))
    serving = tf.saved_model.load(result.saved_model).signatures[
        "serving_default"]
    self.assertIn("class_class", serving.structured_outputs)
    for r in result.parity:
      self.assertIn("class", r["outputs"])

  def test_bad_class_table_fails_before_loading_the_model(self):
    from mlc_keras.labeling import compose
    bad = os.path.join(self.get_temp_dir(), "bad.csv")
    with open(bad, "w") as f:
      f.write("class,colour,size\nx,red,big\n")
    with self.assertRaisesRegex(compose.ClassTableError,
                                "'size' is not a head of the schema"):
      export_lib.export(self.model_dir, output=os.path.join(self.root, "bad"),
                        class_table=bad, log=lambda _: None)
    self.assertFalse(os.path.exists(os.path.join(self.root, "bad")))
    proc = subprocess.run(
        [sys.executable, "-m", "mlc_keras.export",
         f"--model_dir={self.model_dir}", f"--class_table={bad}",
         f"--output={os.path.join(self.root, 'bad')}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn("error: " + bad, proc.stderr)
    self.assertIn("'size' is not a head", proc.stderr)


class ParityImagesTest(tf.test.TestCase):
  """Which images the parity check uses; noise only when asked for."""

  def _request(self, config=None):
    folder = os.path.join(self.get_temp_dir(), "run")
    os.makedirs(folder)
    open(os.path.join(folder, run_dir.MODEL_FILE), "w").close()  # not loaded
    if config is not None:
      with open(os.path.join(folder, run_dir.CONFIG_FILE), "w") as f:
        json.dump(config, f)
    return export_lib.resolve_request(folder, formats="saved_model")

  def test_no_images_is_an_error_unless_random_is_asked_for(self):
    request = self._request()
    with self.assertRaisesRegex(
        artefacts.ExportError,
        "no images for the parity check: the run's results.json and "
        "config.json name no manifest. Pass parity_images=<manifest.csv, "
        "image folder or image>, or parity_images=random"):
      export_lib.gather_images(request, SIZE, log=lambda _: None)
    images = export_lib.gather_images(request, SIZE,
                                      parity_images=export_lib.RANDOM_PARITY,
                                      log=lambda _: None)
    self.assertIsNone(images.parity_source)
    self.assertEqual(images.parity.shape, (32, SIZE, SIZE, 3))
    self.assertEqual(images.parity.dtype, np.uint8)

  def test_relative_path_of_an_older_config_is_named(self):
    cwd = os.getcwd()
    self.addCleanup(os.chdir, cwd)
    os.chdir(self.get_temp_dir())
    request = self._request({"data": {"manifest": "data/train.csv",
                                      "val_manifest": "data/val.csv"}})
    with self.assertRaisesRegex(
        artefacts.ExportError,
        "the run's files name data/train.csv, data/val.csv, not found from "
        f"{os.getcwd()} .a relative path in an older config.json is relative "
        "to the folder training ran in"):
      export_lib.gather_images(request, SIZE, log=lambda _: None)
    # From the folder training ran in, the same config.json still works.
    rows = [{"image": "img/a.png", "shape": "circle", "colour": "red"}]
    testutil.write_manifest(os.path.join(os.getcwd(), "data"), rows,
                            name="val.csv")
    images = export_lib.gather_images(request, SIZE, log=lambda _: None)
    self.assertEqual(images.parity_source, "data/val.csv")
    self.assertLen(images.parity, 1)


def compose_table(classes):
  from mlc_keras.labeling import compose
  return compose.from_dict(classes, SCHEMA)


class TagExportTest(tf.test.TestCase):
  """Tag thresholds travel with every artefact and give the same tags."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fx = export_fixture.tagged()
    cls.artefacts = {"saved_model": cls.fx.result.saved_model,
                     "tflite_fp32": cls.fx.result.tflite["fp32"],
                     "onnx": cls.fx.result.onnx}
    head = cls.fx.schema.head("marks")
    cls.expected = [[t for t, on in zip(head.classes, row) if on]
                    for row in cls.fx.keras_scores["marks"]
                    >= np.asarray(head.thresholds, np.float32)]

  def test_fixture_splits_every_tag_away_from_its_threshold(self):
    scores = self.fx.keras_scores["marks"]
    thresholds = np.asarray(self.fx.schema.head("marks").thresholds)
    self.assertAllEqual((scores >= thresholds).sum(axis=0), [12, 12, 12])
    self.assertGreater(np.abs(scores - thresholds).min(), 1e-4)

  def test_labels_json_with_thresholds_beside_every_artefact(self):
    for name, path in self.artefacts.items():
      with self.subTest(name):
        self.assertEqual(heads_lib.LabelSchema.load(
            artefacts.find_labels(path)), self.fx.schema)

  def test_parity_per_tag_within_fp32_tolerance(self):
    # Every signature of the SavedModel (tensor, bytes, tf.Example), TFLite
    # fp32 and ONNX.
    self.assertEqual([r["artefact"] for r in self.fx.result.parity],
                     ["saved_model", "saved_model_bytes", "saved_model_examples",
                      "tflite_fp32", "onnx"])
    for report in self.fx.result.parity:
      with self.subTest(report["artefact"]):
        self.assertTrue(report["passed"], report["failures"])
        marks = report["outputs"]["marks"]
        self.assertLen(marks["per_tag_max_abs_diff"], 3)
        for diff in marks["per_tag_max_abs_diff"]:
          self.assertLessEqual(diff, parity_lib.FP32_TOLERANCE.max_abs_diff)
        self.assertEqual(marks["top1_agreement"], 1.0)  # every tag decision

  def test_bytes_signature_gives_the_tags(self):
    pred = predictors.SavedModelBytesPredictor(self.fx.result.saved_model)
    encoded = []
    for path in self.fx.parity_paths:
      with open(path, "rb") as f:
        encoded.append(f.read())
    out = pred.predict_encoded(encoded, with_labels=True)
    self.assertEqual(out["marks_tags"].dtype, bool)
    head = self.fx.schema.head("marks")
    got = [[t for t, on in zip(head.classes, row) if on]
           for row in out["marks_tags"]]
    self.assertEqual(got, self.expected)
    self.assertNotIn("marks_class", out)
    self.assertIn("colour_class", out)

  def test_predict_json_is_the_same_for_every_artefact(self):
    for name, path in {"keras": self.fx.model_dir, **self.artefacts}.items():
      with self.subTest(name):
        lines = list(predict_lib.predict_files(
            predictors.load_predictor(path), self.fx.parity_paths))
        self.assertEqual([l["marks"]["tags"] for l in lines], self.expected)
        scores = np.array([[l["marks"]["scores"][t] for t in
                            ("bar", "corner", "edge")] for l in lines])
        self.assertAllClose(scores, self.fx.keras_scores["marks"], atol=1e-4,
                            rtol=0)
        self.assertEqual(list(lines[0]["colour"]), ["class", "score",
                                                    "scores"])


if __name__ == "__main__":
  tf.test.main()


class StackedExportTest(tf.test.TestCase):
  """calibrated.keras with a calibrated-stacking bias in its class output
  (evaluate --stacking): every artefact applies the bias (parity)."""

  def test_every_artefact_subtracts_the_bias(self):
    from mlc_keras.labeling import compose
    fixture = export_fixture.stacked()
    images, _ = make_images(24, seed=4)
    heads = {k: v.numpy() for k, v in run_dir.model_outputs(
        fixture.model, images).items() if k != "class"}
    want = compose.compose_probs(heads, fixture.table, fixture.bias)
    unbiased = compose.compose_probs(heads, fixture.table)
    # The premise: the bias moves the class probabilities noticeably.
    self.assertGreater(np.abs(want - unbiased).max(), 0.05)
    with open(fixture.result.parity_path) as f:
      report = json.load(f)
    self.assertGreaterEqual(len(report["reports"]), 3)
    for r in report["reports"]:
      self.assertTrue(r["passed"], r)
    for name, path, use_bytes in (
        ("saved_model", fixture.result.saved_model, False),
        ("saved_model_bytes", fixture.result.saved_model, True),
        ("tflite_fp32", fixture.result.tflite["fp32"], False),
        ("onnx", fixture.result.onnx, False)):
      with self.subTest(name):
        got = predictors.load_predictor(path, use_bytes).predict(images)
        self.assertAllClose(got["class"], want, atol=1e-4, rtol=0)
