"""imageio.decoded_extent: what decoding an image allocates, GIF frames
included, and the serving pixel cap built on it."""

import io
import struct

import numpy as np
from PIL import Image
import tensorflow as tf

from mlc_keras.exporters import saved_model as saved_model_lib
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import imageio
from mlc_keras.modeling import model as model_lib
from tests import testutil

SCHEMA = heads_lib.LabelSchema((heads_lib.HeadSpec("colour", ("red", "blue")),))


def gif(frames, screen=None) -> bytes:
  """A GIF of noisy RGB frames of the given (width, height) sizes (Pillow
  crops later frames to the first one's size); ``screen`` patches the
  logical screen size in the header."""
  rs = np.random.RandomState(0)
  images = [Image.fromarray(rs.randint(0, 255, (h, w, 3), dtype=np.uint8))
            for w, h in frames]
  buf = io.BytesIO()
  images[0].save(buf, "GIF", save_all=True, append_images=images[1:])
  data = bytearray(buf.getvalue())
  if screen:
    data[6:10] = struct.pack("<HH", *screen)
  return bytes(data)


def crafted_gif(sub_block_sizes, repeat, frame=(9000, 9000)) -> bytes:
  """A GIF whose one frame claims ``frame`` and whose image data is
  ``repeat`` times the sub-blocks of ``sub_block_sizes`` bytes."""
  header = b"GIF89a" + struct.pack("<HH", 8, 8) + b"\0\0\0"
  descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, *frame) + b"\0" + b"\x02"
  data = b"".join(bytes([n]) + b"\x01" * n for n in sub_block_sizes) * repeat
  return header + descriptor + data + b"\0\x3b"


class DecodedExtentTest(tf.test.TestCase):

  def extent(self, encoded: bytes) -> list[int]:
    fn = tf.function(imageio.decoded_extent,
                     input_signature=[tf.TensorSpec([], tf.string)])
    return fn(tf.constant(encoded)).numpy().tolist()

  def test_gif_extent_bounds_what_tf_decodes(self):
    cases = {
        # The header claims 8x8; TF decodes the 300x200 frame.
        "frame larger than the screen": (gif([(300, 200)], (8, 8)),
                                         [300, 200, 1]),
        "screen larger than the frame": (gif([(40, 30)], (100, 100)),
                                         [100, 100, 1]),
        "5 frames": (gif([(80, 60)] * 5), [80, 60, 5]),
        "one 1000x700 frame, 255-byte sub-blocks": (gif([(1000, 700)]),
                                                    [1000, 700, 1]),
    }
    for name, (encoded, expected) in cases.items():
      with self.subTest(name):
        extent = self.extent(encoded)
        self.assertEqual(extent, expected)
        frames, height, width, _ = tf.io.decode_gif(encoded).shape
        # What TF allocates is within the extent.
        self.assertLessEqual(width, extent[0])
        self.assertLessEqual(height, extent[1])
        self.assertEqual(frames, extent[2])
    # The header alone says 8x8 (why header_size is not enough for GIF).
    self.assertEqual(imageio.header_size(tf.constant(
        cases["frame larger than the screen"][0])).numpy().tolist(), [8, 8])

  def test_other_formats_are_one_frame_of_the_header_size(self):
    image = np.zeros((21, 37, 3), np.uint8)
    self.assertEqual(self.extent(tf.io.encode_png(image).numpy()), [37, 21, 1])
    self.assertEqual(self.extent(tf.io.encode_jpeg(image).numpy()),
                     [37, 21, 1])
    self.assertEqual(self.extent(b"definitely not an image"), [-1, -1, -1])
    self.assertEqual(self.extent(b"GIF89a"), [-1, -1, -1])

  def test_gif_walk_is_bounded(self):
    # Runs of equal sub-blocks are skipped together, whatever their size:
    # 500,000 one-byte sub-blocks (1 MB) are walked.
    self.assertEqual(self.extent(crafted_gif([1], 500_000)), [9000, 9000, 1])
    # Sub-blocks of alternating sizes defeat that; past _MAX_GIF_STEPS loop
    # iterations the GIF is unreadable (refused), not walked for seconds.
    self.assertEqual(self.extent(crafted_gif([1, 2], 5_000)), [9000, 9000, 1])
    self.assertEqual(
        self.extent(crafted_gif([1, 2], imageio._MAX_GIF_STEPS)),  # pylint: disable=protected-access
        [-1, -1, -1])


class ServingGifCapTest(tf.test.TestCase):
  """The bytes signature caps width x height x frames."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.module = saved_model_lib.build_serving_module(
        model_lib.small_cnn(SCHEMA, 16), SCHEMA, max_image_pixels=1000)

  def test_gif_frames_count_against_the_pixel_cap(self):
    # Checked to fail with header_size (the logical screen, one frame) in
    # place of decoded_extent in decode_checked: both GIFs are served.
    small = gif([(10, 10)] * 5)  # 500 pixels decoded
    self.assertEqual(
        self.module.serve_bytes(tf.constant([small]))["colour"].shape, (1, 2))
    over = {"frame larger than the 8x8 screen": gif([(40, 30)], (8, 8)),
            "12 frames of 10x10": gif([(10, 10)] * 12)}
    for name, encoded in over.items():
      with self.subTest(name):
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    r"too large.* 1000 pixels"):
          self.module.serve_bytes(tf.constant([small, encoded]))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                "not a JPEG, PNG, GIF, BMP or WebP image"):
      self.module.serve_bytes(tf.constant(
          [crafted_gif([1, 2], imageio._MAX_GIF_STEPS, frame=(10, 10))]))  # pylint: disable=protected-access


if __name__ == "__main__":
  tf.test.main()
