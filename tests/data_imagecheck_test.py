"""The header-level image check: each bad file kind named with its manifest
line, the pure-Python header sizes against the graph's (imageio), and the
cache in the model_dir (hit on a second run, invalidated by a change)."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import tensorflow as tf

from mlc_keras.data import headers
from mlc_keras.data import imagecheck
from mlc_keras.data import imageio
from mlc_keras.data import manifest
from tests import data_imageio_test
from tests import testutil


def _png(w, h) -> bytes:
  return tf.io.encode_png(np.zeros((h, w, 3), np.uint8)).numpy()


def _header(encoded: bytes) -> headers.Header:
  return headers.read_header(io.BytesIO(encoded), len(encoded))


class HeadersTest(tf.test.TestCase):

  def test_sizes_match_the_graph_reader(self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    pixels = np.zeros((30, 50, 3), np.uint8)
    cases = {"png": _png(50, 30),
             "jpeg": tf.io.encode_jpeg(pixels).numpy(),
             "progressive jpeg": tf.io.encode_jpeg(pixels,
                                                   progressive=True).numpy(),
             "gif": data_imageio_test.gif([(50, 30)] * 3)}
    for kind, fmt in (("bmp", "BMP"), ("webp", "WEBP")):
      buf = io.BytesIO()
      Image.fromarray(pixels).save(buf, fmt)
      cases[kind] = buf.getvalue()
    for name, encoded in cases.items():
      with self.subTest(name):
        h = _header(encoded)
        graph = imageio.decoded_extent(tf.constant(encoded)).numpy().tolist()
        self.assertEqual([h.width, h.height, h.frames], graph)
        self.assertEqual((h.width, h.height), (50, 30))
    self.assertEqual(_header(cases["gif"]).frames, 3)

  def test_format_is_told_by_content(self):
    self.assertEqual(headers.sniff(_png(4, 4)), "png")
    self.assertEqual(headers.sniff(b"GIF89a..."), "gif")
    self.assertIsNone(headers.sniff(b"hello, world"))
    with self.assertRaisesRegex(headers.HeaderError, "not a JPEG, PNG"):
      _header(b"hello, world")


class CheckTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.rows = testutil.simple_rows(4)
    self.manifest = testutil.write_manifest(self.dir, self.rows)

  def _records(self):
    records, _ = manifest.read_manifest(self.manifest, testutil.SCHEMA)
    return records

  def _bad(self, payload, **kwargs):
    """Row 3 (manifest line 4) replaced by ``payload``: bytes or a folder."""
    path = os.path.join(self.dir, self.rows[2]["image"])
    os.remove(path)
    if payload == "folder":
      os.makedirs(path)
    elif payload is not None:
      with open(path, "wb") as f:
        f.write(payload)
    problems = imagecheck.check(self._records(), progress=None, **kwargs)
    self.assertLen(problems, 1)
    self.assertEqual((problems[0].line, problems[0].path), (4, path))
    self.assertEndsWith(problems[0].origin, "train.csv")
    return problems[0].reason

  def test_missing(self):
    self.assertEqual(self._bad(None), "file not found")

  def test_directory(self):
    self.assertEqual(self._bad("folder"), "a directory, not an image file")

  def test_wrong_content(self):
    self.assertIn("not a JPEG, PNG, GIF, BMP or WebP", self._bad(b"a,b\n1,2\n"))

  def test_over_the_pixel_cap(self):
    # The good rows are 32x32 = 1,024 pixels.
    self.assertEqual(self._bad(_png(40, 30), max_pixels=1100),
                     "40x30 = 1,200 pixels is over the limit of 1,100 "
                     "(max_image_pixels)")

  def test_animated_webp_is_refused_from_its_header(self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8))
              for v in (0, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    animated = buf.getvalue()
    self.assertTrue(animated[20] & 2)  # VP8X's animation flag
    # Exactly the reason a decode gives (imageio.decode), before any decode.
    self.assertEqual(self._bad(animated), headers.ANIMATED_WEBP)
    self.assertStartsWith(
        headers.ANIMATED_WEBP,
        "cannot decode: animated WebP is not supported; save a still")
    # A still extended WebP (VP8X with alpha only) passes.
    still = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(
        still, "WEBP")
    self.assertEqual(still.getvalue()[12:16], b"VP8X")
    self.assertEqual(_header(still.getvalue()).width, 16)

  def test_truncated_header(self):
    self.assertIn("cut short", self._bad(_png(8, 8)[:20]))

  def test_cut_short_body_caught_by_its_end_marker(self):
    jpeg = tf.io.encode_jpeg(np.full((64, 64, 3), 90, np.uint8)).numpy()
    self.assertEqual(self._bad(jpeg[:len(jpeg) - 40]),
                     "cannot decode: cut short (no JPEG end-of-image marker)")
    # The header alone is fine: only the decode level can say more.
    self.assertEqual(_header(jpeg[:len(jpeg) - 40]).width, 64)

  def test_good_rows_pass_and_the_check_is_parallel_and_reported(self):
    out = io.StringIO()
    self.assertEqual(imagecheck.check(self._records(), workers=3,
                                      progress=out), [])
    self.assertIn("checking images (header): 4/4", out.getvalue())

  def test_upscale_note_names_the_largest_side_and_a_cheaper_size(self):
    cache = os.path.join(self.dir, "image_check.csv")
    records = self._records()  # four 32x32 images
    self.assertIsNone(imagecheck.upscale_note(cache, records.paths, 224))
    imagecheck.check(records, cache_path=cache, progress=None)
    note = imagecheck.upscale_note(cache, records.paths, 224)
    self.assertIn("at most 32x32 px", note)
    self.assertIn("scales each up 7x", note)
    # (224 / 32)^2 = 49.
    self.assertIn("image_size=32 trains about 49x cheaper", note)
    # Scaled up less than 4x: nothing to say.
    self.assertIsNone(imagecheck.upscale_note(cache, records.paths, 127))
    self.assertIsNotNone(imagecheck.upscale_note(cache, records.paths, 128))
    # One image of unknown size: no claim about "every" image.
    self.assertIsNone(imagecheck.upscale_note(
        cache, list(records.paths) + ["elsewhere.png"], 224))

  def test_cache_hit_on_a_second_run_and_invalidated_by_a_change(self):
    cache = os.path.join(self.dir, "image_check.csv")
    records = self._records()
    self.assertEqual(imagecheck.check(records, cache_path=cache,
                                      progress=None), [])
    with open(cache, newline="") as f:
      self.assertLen(list(csv.reader(f)), 1 + 4)
    # A hit reads nothing: an entry that says "bad" for the same size and
    # mtime is believed, so poison one entry to see the cache answer.
    entries = imagecheck.load_cache(cache)
    target = records.paths[1]
    entries[target] = imagecheck.Entry(
        entries[target].size, entries[target].mtime_ns, "header",
        reason="poisoned")
    imagecheck.save_cache(cache, entries)
    problems = imagecheck.check(records, cache_path=cache, progress=None)
    self.assertEqual([(p.line, p.reason) for p in problems], [(3, "poisoned")])
    # A new mtime (same bytes) is a miss: the file is read again.
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    self.assertEqual(imagecheck.check(records, cache_path=cache,
                                      progress=None), [])
    # So is a new size with the mtime put back.
    imagecheck.record_failure(cache, target, "poisoned again")
    with open(target, "ab") as f:
      f.write(b"\0")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    self.assertEqual(imagecheck.check(records, cache_path=cache,
                                      progress=None), [])
    # A header entry does not stand for a decode check; a decode one does.
    self.assertEqual(imagecheck.load_cache(cache)[target].level, "header")
    imagecheck.check(records, level="decode", cache_path=cache, progress=None)
    self.assertEqual(imagecheck.load_cache(cache)[target].level, "decode")

  def test_decode_level_finds_what_the_header_cannot(self):
    png = _png(16, 16)
    # Pixel data corrupted inside, the IEND chunk intact.
    broken = png[:40] + b"\xff" * 20 + png[60:]
    path = os.path.join(self.dir, self.rows[0]["image"])
    with open(path, "wb") as f:
      f.write(broken)
    self.assertEqual(imagecheck.check(self._records(), progress=None), [])
    problems = imagecheck.check(self._records(), level="decode", progress=None)
    self.assertEqual([p.line for p in problems], [2])
    self.assertStartsWith(problems[0].reason, "cannot decode: ")


if __name__ == "__main__":
  tf.test.main()
