"""Image decoding and resizing shared by training, evaluation and serving.

Every path that turns encoded bytes into model input goes through
decode_and_resize, so the SavedModel's bytes signature sees exactly the pixels
training saw. header_size reads an image's dimensions in the graph without
decoding it, so serving can refuse a decompression bomb before decoding.
"""

from __future__ import annotations

import tensorflow as tf


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (first frame of a GIF)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3].

  Bilinear with antialiasing (shrinking without it aliases badly), rounded
  back to uint8 so cached and served pixels are identical.
  """
  resized = tf.image.resize(image, [image_size, image_size],
                            method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  return resize(decode(encoded), image_size)


# Magic bytes as tf.io.decode_image classifies formats (decode_image_op.cc),
# so every byte string it would decode as one of these is sized as that one.
_PNG = b"\x89PNG\r\n\x1a\n"
_GIF = b"GIF8"
_BMP = b"BM"
_JPEG = b"\xff\xd8\xff"
_HEADER_BYTES = 32  # the furthest field read below ends at byte 30


def _uint(head: tf.Tensor, start: int, size: int, little_endian: bool
          ) -> tf.Tensor:
  digits = tf.cast(tf.io.decode_raw(tf.strings.substr(head, start, size),
                                    tf.uint8), tf.int64)
  weights = [256 ** i for i in range(size)]
  if not little_endian:
    weights.reverse()
  return tf.reduce_sum(digits * tf.constant(weights, tf.int64))


def header_size(encoded: tf.Tensor) -> tf.Tensor:
  """int64 [width, height] of one encoded image (scalar string), read in the
  graph from its header without decoding it; [-1, -1] when the size cannot be
  read (not PNG/GIF/BMP/WebP/JPEG, or a header cut short).

  GIF: the logical screen. JPEG: the frame header, through
  tf.image.extract_jpeg_shape, which only ever sees JPEG bytes. Standard ops
  only, so TF Serving can run it.
  """
  length = tf.strings.length(encoded)
  # Zero padding makes every read below in range, whatever the length.
  head = tf.strings.substr(
      tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES),
                       tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)

  def starts(pos, magic):
    return tf.equal(tf.strings.substr(head, pos, len(magic)), magic)

  def u(start, size, little_endian=True):
    return _uint(head, start, size, little_endian)

  png = starts(0, _PNG) & starts(12, b"IHDR") & (length >= 24)
  png_size = tf.stack([u(16, 4, False), u(20, 4, False)])
  gif = starts(0, _GIF) & (length >= 10)
  gif_size = tf.stack([u(6, 2), u(8, 2)])
  bmp = starts(0, _BMP) & (length >= 26)
  core = tf.equal(u(14, 4), 12)  # OS/2 BITMAPCOREHEADER: uint16 sizes
  signed = tf.stack([u(18, 4), u(22, 4)])
  signed = tf.abs(tf.where(signed >= 2 ** 31, signed - 2 ** 32, signed))
  bmp_size = tf.where(core, tf.stack([u(18, 2), u(20, 2)]), signed)
  # WebP (RIFF....WEBP), by its first chunk: lossy VP8 has 14-bit sizes,
  # lossless VP8L 14-bit sizes minus one packed in 28 bits, extended VP8X
  # 24-bit canvas sizes minus one.
  webp = starts(0, b"RIFF") & starts(8, b"WEBP")
  vp8l = u(21, 4)
  vp8 = webp & starts(12, b"VP8 ") & (length >= 30)
  vp8_size = tf.stack([u(26, 2), u(28, 2)]) % 2 ** 14
  lossless = webp & starts(12, b"VP8L") & (length >= 25)
  lossless_size = tf.stack([vp8l % 2 ** 14, vp8l // 2 ** 14 % 2 ** 14]) + 1
  extended = webp & starts(12, b"VP8X") & (length >= 30)
  extended_size = tf.stack([u(24, 3), u(27, 3)]) + 1
  size = tf.constant([-1, -1], tf.int64)
  for known, known_size in ((png, png_size), (gif, gif_size),
                            (bmp, bmp_size), (vp8, vp8_size),
                            (lossless, lossless_size),
                            (extended, extended_size)):
    size = tf.where(known, known_size, size)

  def jpeg_size():
    shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
    return tf.stack([shape[1], shape[0]])

  return tf.cond(starts(0, _JPEG), jpeg_size, lambda: size)
