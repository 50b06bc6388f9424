"""Tests for sources: screening hostile inputs, splits and TFDS.

Hostile inputs: each unusable manifest row is an error naming the file and
line, or (with quarantine) a row of quarantine.csv; none is dropped silently.
Fast (seconds, no model)."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from unittest import mock

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.data import imageio
from mlc_keras.data import manifest
from mlc_keras.data import pipeline
from mlc_keras.data import sources
from mlc_keras.training import setup
from tests import testutil


def _write(path, payload: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(payload)


def _manifest(folder, images, name="train.csv"):
  path = os.path.join(folder, name)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "shape", "colour"])
    for i, img in enumerate(images):
      w.writerow([img, ("circle", "square", "triangle")[i % 3],
                  ("blue", "red")[i % 2]])
  return path


def _png_header(width, height):
  """A PNG signature and IHDR claiming width x height (no pixel data)."""
  ihdr = (width.to_bytes(4, "big") + height.to_bytes(4, "big") +
          bytes([8, 2, 0, 0, 0]))
  return (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr +
          b"\0\0\0\0")


def _header_size(encoded: bytes):
  """(width, height) as training's screen reads it (imageio.header_size,
  eagerly), or None when unreadable."""
  try:
    width, height = imageio.header_size(tf.constant(encoded)).numpy().tolist()
  except tf.errors.InvalidArgumentError:  # a JPEG without a readable frame
    return None
  return None if width < 0 else (width, height)

class HeaderTest(tf.test.TestCase):

  def test_sizes_from_headers(self):
    pixels = np.zeros((30, 50, 3), np.uint8)
    self.assertEqual(_header_size(
        tf.io.encode_png(pixels).numpy()), (50, 30))
    self.assertEqual(_header_size(
        tf.io.encode_jpeg(pixels).numpy()), (50, 30))
    self.assertEqual(_header_size(
        tf.io.encode_jpeg(pixels, progressive=True).numpy()), (50, 30))
    gif = b"GIF89a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little")
    self.assertEqual(_header_size(gif + b"\0" * 10), (640, 480))
    bmp = (b"BM" + b"\0" * 12 + (40).to_bytes(4, "little") +
           (70).to_bytes(4, "little") + (-20).to_bytes(4, "little", signed=True))
    self.assertEqual(_header_size(bmp + b"\0" * 30), (70, 20))
    self.assertEqual(_header_size(_png_header(10 ** 5, 10 ** 5)),
                     (10 ** 5, 10 ** 5))
    self.assertIsNone(_header_size(b"hello, world"))
    self.assertIsNone(_header_size(b"\xff\xd8\xff"))


class HostileDataTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.good = []
    for i in range(6):
      name = f"img/good{i}.png"
      testutil.write_image(os.path.join(self.dir, name), size=32, seed=i)
      self.good.append(name)

  def _check(self, bad_name, payload, pattern, **kwargs):
    _write(os.path.join(self.dir, bad_name), payload)
    path = _manifest(self.dir, self.good[:2] + [bad_name])
    records, _ = manifest.read_manifest(path)
    # Line 4: header, two good rows, then the bad one.
    with self.assertRaisesRegex(
        manifest.DataError, r"train\.csv:4: .*" + bad_name + r".*" + pattern):
      sources.check_images(records, **kwargs)
    return records

  def test_truncated_jpeg(self):
    jpeg = tf.io.encode_jpeg(np.full((64, 64, 3), 90, np.uint8)).numpy()
    self._check("img/cut.jpg", jpeg[:len(jpeg) // 2], "cannot decode")

  def test_zero_byte_file(self):
    self._check("img/empty.png", b"", "empty file")

  def test_text_file(self):
    self._check("img/notes.jpg", b"name,shape\nnot an image\n",
                r"not a JPEG, PNG, GIF, BMP or WebP image")

  def test_pixel_cap_is_read_from_the_header(self):
    # A real, decodable 64x64 PNG over a cap of 1000 pixels.
    pixels = np.zeros((64, 64, 3), np.uint8)
    self._check("img/big.png", tf.io.encode_png(pixels).numpy(),
                r"64x64 = 4,096 pixels is over the limit of 1,000",
                max_pixels=1000)
    # The default cap: a 100000x100000 header is refused before decoding
    # (decoding it would allocate 30 GB).
    self._check("img/bomb.png", _png_header(10 ** 5, 10 ** 5),
                "over the limit of 89,478,485")

  def test_gif_frames_count_against_the_pixel_cap(self):
    # TF decodes every frame of a GIF at the frames' size, whatever the
    # header's logical screen says. Checked to fail with header_size (the
    # screen, one frame) in screen_images: both GIFs passed.
    from tests import data_imageio_test  # pylint: disable=g-import-not-at-top
    self._check("img/frames.gif", data_imageio_test.gif([(10, 10)] * 12),
                r"10x10 x 12 frames = 1,200 pixels is over the limit of 1,000",
                max_pixels=1000)
    self._check("img/screen.gif", data_imageio_test.gif([(40, 30)], (8, 8)),
                r"40x30 = 1,200 pixels is over the limit of 1,000",
                max_pixels=1000)

  def test_png_with_jpg_extension_is_decoded_by_content(self):
    pixels = testutil.write_image(os.path.join(self.dir, "img/real.png"), seed=9)
    os.rename(os.path.join(self.dir, "img/real.png"),
              os.path.join(self.dir, "img/liar.jpg"))
    path = _manifest(self.dir, self.good[:2] + ["img/liar.jpg"])
    records, schema = manifest.read_manifest(path)
    sources.check_images(records)  # no error
    ds = pipeline.eval_dataset(sources.records_source(records), schema,
                           image_size=32, batch_size=3)
    images, _, _ = next(iter(ds))
    self.assertAllEqual(images[2], pixels)  # lossless: really read as PNG

  def test_webp_trains_as_serving_reads_it(self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (32, 32, 3), np.uint8)
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], -1)
    for name, pixels, mode in (("img/lossless.webp", rgb, "RGB"),
                               ("img/alpha.webp", rgba, "RGBA")):
      Image.fromarray(pixels, mode).save(os.path.join(self.dir, name),
                                         "WEBP", lossless=True)
    path = _manifest(self.dir, self.good[:1] + ["img/lossless.webp",
                                                "img/alpha.webp"])
    records, schema = manifest.read_manifest(path)
    sources.check_images(records)  # was "not a JPEG, PNG, GIF or BMP image"
    self.assertEqual(_header_size(
        open(records.paths[2], "rb").read()), (32, 32))
    images = next(iter(pipeline.eval_dataset(
        sources.records_source(records), schema, image_size=32, batch_size=3)))[0]
    # Lossless: exactly the pixels written; the (opaque) alpha is dropped.
    self.assertAllEqual(images[1], rgb)
    self.assertAllEqual(images[2], rgb)

  def test_animated_webp_is_refused_not_crashed_on(self):
    # TF 2.21's DecodeWebP corrupts the heap on an animated WebP without
    # alpha; decode must refuse it before that op runs.
    from PIL import Image  # pylint: disable=g-import-not-at-top
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8))
              for v in (0, 120, 240)]
    frames[0].save(os.path.join(self.dir, "img/anim.webp"), "WEBP",
                   save_all=True, append_images=frames[1:])
    with open(os.path.join(self.dir, "img/anim.webp"), "rb") as f:
      encoded = f.read()
    self.assertEqual(encoded[12:16], b"VP8X")
    self.assertTrue(encoded[20] & 2)  # the animation flag
    self._check("img/anim2.webp", encoded,
                r"cannot decode: animated WebP is not supported; save a still")
    # The same refusal inside tf.data (graph mode).
    ds = tf.data.Dataset.from_tensors(encoded).map(imageio.decode)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                "animated WebP is not supported"):
      ds.get_single_element()

  def test_jpeg_frame_header_after_64kb_of_metadata(self):
    pixels = np.full((24, 40, 3), 128, np.uint8)
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    app2 = b"\xff\xe2" + (65535).to_bytes(2, "big") + bytes(65533)
    # Two full APP2 segments (an ICC profile's size) before the frame header.
    big = jpeg[:2] + app2 + app2 + jpeg[2:]
    self.assertEqual(_header_size(big), (40, 24))
    _write(os.path.join(self.dir, "img/icc.jpg"), big)
    path = _manifest(self.dir, self.good[:2] + ["img/icc.jpg"])
    records, _ = manifest.read_manifest(path)
    sources.check_images(records)  # was "header is cut short"

  def test_decode_reasons_are_tf_messages_without_noise(self):
    jpeg = tf.io.encode_jpeg(np.full((64, 64, 3), 90, np.uint8)).numpy()
    # TF's reason, without "{{function_node ...}}" or "[Op:...]" around it.
    self._check("img/cut.jpg", jpeg[:200],
                r"\(cannot decode: Invalid JPEG data, size 200\)$")

  def test_path_escaping_image_root(self):
    path = _manifest(self.dir, self.good[:2] + ["../../etc/passwd"])
    with self.assertRaisesRegex(
        manifest.DataError, r"train\.csv:4: \.\./\.\./etc/passwd: resolves to "
        r"\S*/etc/passwd, outside --image_root"):
      manifest.read_manifest(path, image_root=self.dir)
    # Without a declared root, relative paths are the user's business.
    records, _ = manifest.read_manifest(path)
    self.assertLen(records, 3)

  def test_non_utf8_manifest(self):
    path = os.path.join(self.dir, "latin1.csv")
    with open(path, "wb") as f:
      f.write(b"image,shape,colour\nimg/good0.png,circle,blue\n"
              b"img/caf\xe9.png,square,red\n")
    with self.assertRaisesRegex(manifest.DataError, r"latin1\.csv:3: not UTF-8"):
      manifest.read_manifest(path)

  def test_duplicated_rows_name_both_lines(self):
    path = _manifest(self.dir, [self.good[0], self.good[1], "./" + self.good[0]])
    with self.assertRaisesRegex(
        manifest.DataError, r"train\.csv:4: \./img/good0\.png: same image as line 2"):
      manifest.read_manifest(path)

  def test_quarantine_lists_every_bad_row_and_trains_on_the_rest(self):
    jpeg = tf.io.encode_jpeg(np.full((64, 64, 3), 90, np.uint8)).numpy()
    _write(os.path.join(self.dir, "img/cut.jpg"), jpeg[:200])
    _write(os.path.join(self.dir, "img/empty.png"), b"")
    _write(os.path.join(self.dir, "img/notes.jpg"), b"hello")
    _write(os.path.join(self.dir, "img/bomb.png"), _png_header(10 ** 5, 10 ** 5))
    bad = ["img/cut.jpg", "img/empty.png", "img/notes.jpg", "img/bomb.png",
           "../../etc/passwd", self.good[0], "img/missing.png"]
    rows = self.good + bad
    path = _manifest(self.dir, rows)
    cfg = dataclasses.replace(
        config_lib.tiny().data, manifest=path, val_fraction=0.0,
        image_root=self.dir, quarantine=True)
    bundle = setup.load_data(cfg, seed=0)
    self.assertEqual(bundle.train_size, len(self.good))
    got = {q.line: q.reason for q in bundle.quarantined}
    # Lines: header is 1, good rows 2..7, bad rows from 8 on, in order.
    self.assertEqual(sorted(got), list(range(8, 8 + len(bad))))
    self.assertIn("cannot decode", got[8])
    self.assertEqual(got[9], "empty file")
    self.assertIn("not a JPEG", got[10])
    self.assertIn("over the limit", got[11])
    self.assertIn("outside --image_root", got[12])
    self.assertEqual(got[13], "same image as line 2")
    self.assertEqual(got[14], "file not found")
    model_dir = os.path.join(self.dir, "run")
    os.makedirs(model_dir)
    note = setup.write_quarantine(bundle, model_dir)
    self.assertStartsWith(note, "7 manifest row(s) quarantined")
    with open(os.path.join(model_dir, "quarantine.csv"), encoding="utf-8") as f:
      table = list(csv.DictReader(f))
    self.assertEqual([int(r["line"]) for r in table], sorted(got))
    self.assertEqual(table[4]["path"], os.path.join(self.dir, "../../etc/passwd"))
    # Without --quarantine the same manifest stops at its first problem.
    with self.assertRaisesRegex(manifest.DataError, r"train\.csv:12: "):
      setup.load_data(dataclasses.replace(cfg, quarantine=False), seed=0)


  def test_label_columns_choose_the_heads(self):
    # A notes column with one value would stop the run ("a head needs at
    # least 2"); --label_columns trains the named columns and ignores it.
    path = os.path.join(self.dir, "notes.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(["image", "notes", "shape", "colour"])
      for i, img in enumerate(self.good):
        w.writerow([img, "checked", ("circle", "square")[i % 2],
                    ("blue", "red")[i % 2]])
    cfg = dataclasses.replace(config_lib.tiny().data, manifest=path,
                              val_fraction=0.0)
    with self.assertRaisesRegex(manifest.DataError,
                                "'notes' has 1 .*label_columns"):
      setup.load_data(cfg, seed=0)
    bundle = setup.load_data(
        dataclasses.replace(cfg, label_columns=("colour", "shape")), seed=0)
    self.assertEqual(bundle.schema.names, ("colour", "shape"))
    self.assertEqual(bundle.train_size, len(self.good))
    with self.assertRaisesRegex(manifest.DataError, "no column 'size'"):
      setup.load_data(dataclasses.replace(cfg, label_columns=("size",)),
                          seed=0)
    heads_file = os.path.join(self.dir, "heads.json")
    bundle.schema.save(heads_file)
    with self.assertRaisesRegex(ValueError, "give one"):
      setup.load_data(dataclasses.replace(
          cfg, label_columns=("shape",), heads_file=heads_file), seed=0)


class SplitAndCheckTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()

  def test_missing_and_undecodable_images_are_listed(self):
    rows = testutil.simple_rows(4)
    path = testutil.write_manifest(self.dir, rows)
    os.remove(os.path.join(self.dir, rows[1]["image"]))
    records, _ = manifest.read_manifest(path, testutil.SCHEMA)
    with self.assertRaisesRegex(manifest.DataError, r"1 image file\(s\) not found:\n.*train.csv:3: .*001.png"):
      sources.check_images(records)
    with open(os.path.join(self.dir, rows[1]["image"]), "wb") as f:
      f.write(b"this is not an image")
    with self.assertRaisesRegex(manifest.DataError, r"1 image\(s\) could not be decoded:\n.*train.csv:3: .*001.png"):
      sources.check_images(records)

  def test_split_is_stable_and_disjoint(self):
    path = testutil.write_manifest(self.dir, testutil.simple_rows(40))
    records, _ = manifest.read_manifest(path, testutil.SCHEMA)
    train, val = sources.split_records(records, 0.25, seed=3)
    train2, val2 = sources.split_records(records, 0.25, seed=3)
    self.assertEqual(val.paths, val2.paths)
    self.assertEqual(len(train) + len(val), 40)
    self.assertEmpty(set(train.paths) & set(val.paths))
    self.assertBetween(len(val), 3, 20)


class TFDSTest(tf.test.TestCase):

  def test_classlabel_feature_becomes_head(self):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=10):
      source, schema = sources.tfds_source("mnist", "train", [("label", "digit")])
      self.assertEqual(schema.names, ("digit",))
      self.assertEqual(schema.head("digit").num_classes, 10)
      ds = pipeline.train_dataset(source, schema, image_size=16, batch_size=5,
                              seed=0, end_epoch=1)
      images, labels, weights = next(iter(ds))
    self.assertEqual(images.shape, (5, 16, 16, 3))
    self.assertAllEqual(weights["digit"], np.ones(5))
    with self.assertRaisesRegex(manifest.DataError, "no feature 'nope'"):
      sources.tfds_source("mnist", "train", [("nope", "x")])

  def test_missing_tfds_is_a_data_error_with_the_install_hint(self):
    with mock.patch.dict(sys.modules, {"tensorflow_datasets": None}):
      with self.assertRaisesRegex(manifest.DataError,
                                  r"pip install -e '\.\[tfds\]'"):
        sources.tfds_source("mnist", "train", [("label", "digit")])


if __name__ == "__main__":
  tf.test.main()
