"""Image decoding and resizing shared by training, evaluation and serving.

Every path that turns encoded bytes into model input goes through
decode_and_resize, so the SavedModel's bytes signature sees exactly the pixels
training saw. header_size reads an image's dimensions in the graph without
decoding it, so serving can refuse a decompression bomb before decoding.
"""

from __future__ import annotations

import re

import tensorflow as tf


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [H, W, 3].

  The first frame of an animated GIF; an alpha channel is dropped (not
  composited), 16-bit PNGs are scaled to 8 bits, grayscale is repeated over R,
  G and B. EXIF orientation is not applied (no TF decoder reads it). Animated
  WebP is refused (see below).
  """
  # Zero padding keeps every substr below in range, however short the input.
  head = tf.strings.substr(tf.strings.join(
      [tf.strings.substr(encoded, 0, 21), tf.constant(b"\0" * 21)]), 0, 21)
  is_webp = (tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") &
             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))

  def webp():
    # DecodeImage refuses WebP with alpha at channels=3, so WebP goes to
    # DecodeWebP, which gives [frames, H, W, 3 or 4]. In TF 2.21 it corrupts
    # the heap (the process dies) on an animated WebP without alpha; libwebp
    # reads "animated" from the VP8X flags (byte 20, bit 1), so refuse those
    # files by the same bit before decoding.
    flags = tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0]
    animated = (tf.equal(tf.strings.substr(head, 12, 4), b"VP8X") &
                tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0))
    check = tf.debugging.assert_equal(
        animated, False, message="animated WebP is not supported; save a "
        "still image (PNG, JPEG or still WebP)")
    with tf.control_dependencies([check]):
      return tf.io.decode_webp(encoded)[0, :, :, :3]

  def other():
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)

  image = tf.cond(is_webp, webp, other)
  image.set_shape([None, None, 3])
  return image


# From this shrink factor on (either side), resize antialiases.
ANTIALIAS_FROM = 2


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3].

  Bilinear, rounded back to uint8 so cached and served pixels are identical.
  Antialiased only when a side shrinks by ANTIALIAS_FROM or more: plain
  bilinear reads the 2x2 input pixels around each sample, so under a 2x
  shrink every input pixel still contributes and there is little to alias,
  while the antialiasing kernel (ScaleAndTranslate) costs ~3x the plain
  resize (4.3-5.2 ms against 1.4-1.7 ms at 290x300 -> 224 here). Past 2x,
  plain bilinear skips pixels and aliases badly, so the kernel is worth it.
  After a reduced-scale JPEG decode the short side shrinks by under 2x; the
  long side of a photo may still shrink by more (4:3 at 224 decodes to
  433x578), and then the antialiased kernel runs.
  """
  shape = tf.shape(image)
  shrink = tf.maximum(shape[0], shape[1]) >= ANTIALIAS_FROM * image_size

  def resized(antialias):
    return lambda: tf.image.resize(image, [image_size, image_size],
                                   method="bilinear", antialias=antialias)
  out = tf.cond(shrink, resized(True), resized(False))
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


# libjpeg decodes a JPEG directly at 1/1, 1/2, 1/4 or 1/8 scale (scaled
# IDCT), skipping most of the work of pixels a resize would throw away.
JPEG_RATIOS = (1, 2, 4, 8)


def is_jpeg(encoded: tf.Tensor) -> tf.Tensor:
  return tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")


def jpeg_ratio(height: tf.Tensor, width: tf.Tensor,
               min_side: int) -> tf.Tensor:
  """Index into JPEG_RATIOS of the largest scale-down that leaves both sides
  of a height x width JPEG (or crop window) at least ``min_side`` pixels."""
  index = tf.constant(0, tf.int32)
  for k, r in enumerate(JPEG_RATIOS[1:], 1):
    fits = (tf.minimum(height, width) // r) >= min_side
    index = tf.where(fits, tf.constant(k, tf.int32), index)
  return index


def _decode_jpeg_at(encoded: tf.Tensor, index: tf.Tensor,
                    window: tf.Tensor | None = None) -> tf.Tensor:
  """A JPEG decoded at JPEG_RATIOS[index]; with ``window`` ([y, x, h, w] in
  full-size pixels) only that window, through decode_and_crop_jpeg (whose
  window is in scaled pixels)."""
  def at(ratio):
    def branch():
      if window is None:
        return tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
      full = tf.image.extract_jpeg_shape(encoded)
      # The scaled image is ceil(side / ratio) pixels; keep inside it.
      scaled = (full[:2] + ratio - 1) // ratio
      start = window[:2] // ratio
      extent = tf.maximum(tf.minimum(window[2:] // ratio, scaled - start), 1)
      return tf.image.decode_and_crop_jpeg(
          encoded, tf.concat([start, extent], 0), channels=3, ratio=ratio)
    return branch
  image = tf.switch_case(index, [at(r) for r in JPEG_RATIOS])
  image.set_shape([None, None, 3])
  return image


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  """Encoded bytes -> uint8 [image_size, image_size, 3]: the pixels every
  path (training without crops, evaluation, serving, predict) feeds.

  A JPEG at least twice the target on its short side is decoded at the
  largest DCT scale that keeps both sides >= image_size, then resized like
  any image; BUILD_NOTES.md (feeding a GPU) measures how far that is from a
  full decode + resize. Other formats are decoded in full.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    return _decode_jpeg_at(encoded, jpeg_ratio(shape[0], shape[1],
                                               image_size))

  image = tf.cond(is_jpeg(encoded), jpeg, lambda: decode(encoded))
  return resize(image, image_size)


def decode_full_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  """Full decode + resize: the reference decode_and_resize is measured
  against (and what it did before reduced-scale JPEG decoding)."""
  return resize(decode(encoded), image_size)


def crop_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                scale: tuple[float, float], ratio: tuple[float, float]
                ) -> tf.Tensor:
  """int32 [y, x, h, w]: a random window of a height x width image covering
  a share ``scale`` of its area with aspect (w / h) in ``ratio``, stateless
  in ``seed``. TF tries 10 draws and falls back to the whole image (as
  Inception's preprocessing did)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([height, width, 3]),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=0.0, aspect_ratio_range=list(ratio),
      area_range=list(scale), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.cast(tf.concat([begin[:2], size[:2]], 0), tf.int32)


def random_resized_crop(encoded: tf.Tensor, image_size: int, seed: tf.Tensor,
                        scale: tuple[float, float], ratio: tuple[float, float]
                        ) -> tf.Tensor:
  """Encoded bytes -> uint8 [image_size, image_size, 3] of a random window
  (crop_window) resized to the target: the ImageNet training crop. A JPEG
  decodes only the window (decode_and_crop_jpeg), at the largest DCT scale
  that keeps the window's sides >= image_size; other formats are decoded in
  full and cropped."""
  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    window = crop_window(shape[0], shape[1], seed, scale, ratio)
    return _decode_jpeg_at(encoded, jpeg_ratio(window[2], window[3],
                                               image_size), window)

  def other():
    return crop_pixels(decode(encoded), seed, scale, ratio)

  image = tf.cond(is_jpeg(encoded), jpeg, other)
  return resize(image, image_size)


def crop_pixels(image: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tf.Tensor:
  """The crop_window of already-decoded pixels (not resized)."""
  shape = tf.shape(image)
  window = crop_window(shape[0], shape[1], seed, scale, ratio)
  return tf.image.crop_to_bounding_box(image, window[0], window[1],
                                       window[2], window[3])


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


_RUN = 256  # equal-size sub-blocks skipped per loop iteration at most
_MAX_GIF_STEPS = 20_000  # a GIF needing more is refused (bounds the CPU)


def _colour_table(packed: tf.Tensor) -> tf.Tensor:
  # Present when bit 7 is set; 3 * 2^(size + 1) bytes.
  return tf.where(packed >= 128,
                  3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),
                                            packed % 8), 0)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _gif_frames(encoded: tf.Tensor) -> tf.Tensor:
  """int64 [width, height, frames] of a GIF as TF decodes it: the largest
  right and bottom edge of its logical screen and of every frame, and the
  number of frames. TF's DecodeGif decodes every frame (also under
  decode_image(expand_animations=False)) at the size of the frames, not of
  the logical screen, so the header alone understates the memory it takes.

  Walks the GIF blocks in the graph: extensions (0x21) and image descriptors
  (0x2C), each followed by length-prefixed sub-blocks, until the trailer or
  the end of the bytes. One loop iteration per block, or per run of up to
  _RUN sub-blocks of the same size (encoders write image data as 255-byte
  sub-blocks: a 5 MB GIF takes about 100 iterations). A GIF whose walk needs
  more than _MAX_GIF_STEPS iterations (crafted with sub-blocks of varying
  tiny sizes) gives [-1, -1, -1]: unreadable, refused.
  """
  length = tf.cast(tf.strings.length(encoded), tf.int64)
  # Zero padding keeps every read below in range; a zero ends any run.
  data = tf.io.decode_raw(tf.strings.join(
      [encoded, tf.constant(b"\0" * (256 * _RUN + 16))]), tf.uint8)

  def read(pos, size):
    return tf.cast(data[pos:pos + size], tf.int64)

  run = tf.range(_RUN, dtype=tf.int64)
  screen = read(6, 5)
  first_block = 13 + _colour_table(screen[4])

  def body(pos, in_blocks, right, bottom, frames, done):
    b = read(pos, 10)
    is_extension = tf.equal(b[0], 0x21) & ~in_blocks
    is_image = tf.equal(b[0], 0x2C) & ~in_blocks
    left, top = b[1] + 256 * b[2], b[3] + 256 * b[4]
    width, height = b[5] + 256 * b[6], b[7] + 256 * b[8]
    # Inside sub-blocks b[0] is the next sub-block's size (0 ends them):
    # skip the run of sub-blocks of that size at once.
    sizes = tf.cast(tf.gather(data, pos + (b[0] + 1) * run), tf.int64)
    same = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.equal(sizes, b[0]),
                                                 tf.int64)))
    next_pos = tf.where(
        in_blocks, pos + (b[0] + 1) * tf.maximum(same, 1),
        tf.where(is_extension, pos + 2,
                 pos + 10 + _colour_table(b[9]) + 1))  # +1: LZW code size
    return (next_pos,
            tf.where(in_blocks, b[0] > 0, is_extension | is_image),
            tf.where(is_image, tf.maximum(right, left + width), right),
            tf.where(is_image, tf.maximum(bottom, top + height), bottom),
            frames + tf.cast(is_image, tf.int64),
            # The trailer (0x3B) or anything else ends the walk.
            ~in_blocks & ~is_extension & ~is_image)

  def running(pos, in_blocks, right, bottom, frames, done):
    del in_blocks, right, bottom, frames
    return ~done & (pos < length)

  pos, _, right, bottom, frames, done = tf.while_loop(
      running, body,
      (first_block, tf.constant(False), screen[0] + 256 * screen[1],
       screen[2] + 256 * screen[3], tf.constant(0, tf.int64),
       tf.constant(False)), maximum_iterations=_MAX_GIF_STEPS)
  finished = done | (pos >= length)
  return tf.where(finished, tf.stack([right, bottom, frames]),
                  tf.constant([-1, -1, -1], tf.int64))


def decoded_extent(encoded: tf.Tensor) -> tf.Tensor:
  """int64 [width, height, frames] that decoding one encoded image allocates:
  header_size with 1 frame, and for GIF _gif_frames (every frame, at the size
  of the largest). [-1, -1, -1] when the size cannot be read. The pixel cap
  of training and serving is on width x height x frames."""
  size = header_size(encoded)
  is_gif = (tf.equal(tf.strings.substr(encoded, 0, 4, unit="BYTE"), _GIF)
            & tf.reduce_all(size >= 0))
  return tf.cond(
      is_gif, lambda: _gif_frames(encoded),
      lambda: tf.concat([size, tf.where(size[:1] >= 0, tf.constant([1], tf.int64),
                                        -1)], 0))


def op_reason(e: tf.errors.OpError) -> str:
  """TF's reason for a failed op, without its "{{function_node ...}}" and
  "[Op:...]" noise (first line, at most 160 characters)."""
  first = e.message.splitlines()[0] if e.message else type(e).__name__
  return re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", first).strip()[:160]



def decode_reason(path: str) -> str:
  """Why the file at ``path`` does not decode as training decodes it
  ("cannot read: ..." or "cannot decode: ..."), or "" when it does. Eager,
  for TF's own reason (a traced graph words some errors differently)."""
  try:
    with open(path, "rb") as f:
      encoded = f.read()
  except OSError as e:
    return f"cannot read: {e.strerror}"
  try:
    if encoded.startswith(_JPEG):
      # What the serving signature's header check runs (header_size):
      # libjpeg reads the tables up to the scan, not just the frame size.
      tf.image.extract_jpeg_shape(encoded)
    decode(tf.constant(encoded))
  except tf.errors.OpError as e:
    return "cannot decode: " + op_reason(e)
  return ""
