"""Image headers read in plain Python: format by content, width, height and
frames, without decoding and without TensorFlow.

The same rules as imageio.header_size / imageio.decoded_extent (the graph
versions serving runs), in a few microseconds per file instead of ~150 eager
TF ops: formats are told apart by their magic bytes, as tf.io.decode_image
does, so a PNG named .jpg (or .dat) is a PNG; a GIF counts every frame at the
size of the largest. The training check (imagecheck) and predict's folder
listing use it.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO, Optional

from mlc_keras.core import errors

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_PREFIX = 64 * 1024  # one read covers nearly every header
# A JPEG's frame header can sit behind large EXIF/ICC segments; walking
# further than this without one is "cut short".
_MAX_JPEG_WALK = 16 * 1024 * 1024
_MAX_GIF_BLOCKS = 5_000_000  # bounds the CPU of a crafted GIF
_TAIL = 4096  # where a JPEG's end-of-image marker is looked for

NOT_AN_IMAGE = ("not a JPEG, PNG, GIF, BMP or WebP image (or its header is "
                "cut short)")
# imageio.decode refuses these by the same VP8X flag (TF's DecodeWebP crashes
# on some): saying so from the header keeps them out before training starts.
ANIMATED_WEBP = ("cannot decode: animated WebP is not supported; save a still "
                 "image (PNG, JPEG or still WebP)")


class HeaderError(errors.MlcError):
  """The file is not an image TF decodes, or its header is unreadable.
  ``header``: what the header said, when only the tail check failed."""

  def __init__(self, reason: str, header: Optional["Header"] = None):
    super().__init__(reason)
    self.header = header


@dataclasses.dataclass(frozen=True)
class Header:
  kind: str  # "jpeg", "png", "gif", "bmp" or "webp"
  width: int
  height: int
  frames: int = 1

  @property
  def pixels(self) -> int:
    return self.width * self.height * self.frames


def sniff(prefix: bytes) -> Optional[str]:
  """The format of encoded bytes by their magic (as tf.io.decode_image tells
  formats apart), or None."""
  if prefix.startswith(_JPEG):
    return "jpeg"
  if prefix.startswith(_PNG):
    return "png"
  if prefix.startswith(b"GIF8"):
    return "gif"
  if prefix.startswith(b"BM"):
    return "bmp"
  if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
    return "webp"
  return None


def read_header(f: BinaryIO, size: int, tail: bool = False) -> Header:
  """The header of the open file ``f`` of ``size`` bytes.

  ``tail``: also refuse a JPEG with no end-of-image marker in its last 4 KB
  and a PNG that does not end with its IEND chunk (a file cut short, the
  usual corruption of a copy or download), which a header alone misses.

  Raises HeaderError with the reason.
  """
  if size == 0:
    raise HeaderError("empty file")
  head = f.read(_PREFIX)
  kind = sniff(head)
  if kind is None:
    raise HeaderError(NOT_AN_IMAGE)
  if kind == "jpeg":
    header = _jpeg(f, head)
  elif kind == "gif":
    header = _gif(head + f.read())
  else:
    header = {"png": _png, "bmp": _bmp, "webp": _webp}[kind](head)
  if tail:
    try:
      _check_tail(f, kind, size, head)
    except HeaderError as e:
      raise HeaderError(str(e), header) from None
  return header


def _u(data: bytes, start: int, n: int, big: bool = False) -> int:
  return int.from_bytes(data[start:start + n], "big" if big else "little")


def _png(head: bytes) -> Header:
  if len(head) < 24 or head[12:16] != b"IHDR":
    raise HeaderError(NOT_AN_IMAGE)
  return Header("png", _u(head, 16, 4, True), _u(head, 20, 4, True))


def _bmp(head: bytes) -> Header:
  if len(head) < 26:
    raise HeaderError(NOT_AN_IMAGE)
  if _u(head, 14, 4) == 12:  # OS/2 BITMAPCOREHEADER: uint16 sizes
    return Header("bmp", _u(head, 18, 2), _u(head, 20, 2))
  width, height = struct.unpack_from("<ii", head, 18)
  return Header("bmp", abs(width), abs(height))


def _webp(head: bytes) -> Header:
  chunk = head[12:16]
  if chunk == b"VP8 " and len(head) >= 30:
    return Header("webp", _u(head, 26, 2) % 2 ** 14, _u(head, 28, 2) % 2 ** 14)
  if chunk == b"VP8L" and len(head) >= 25:
    bits = _u(head, 21, 4)
    return Header("webp", bits % 2 ** 14 + 1, bits // 2 ** 14 % 2 ** 14 + 1)
  if chunk == b"VP8X" and len(head) >= 30:
    header = Header("webp", _u(head, 24, 3) + 1, _u(head, 27, 3) + 1)
    if head[20] & 2:  # the animation flag, as libwebp reads it
      raise HeaderError(ANIMATED_WEBP, header)
    return header
  raise HeaderError(NOT_AN_IMAGE)


# SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC) carry a frame size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(f: BinaryIO, head: bytes) -> Header:
  """Walks the marker segments to the frame header, reading on (seeking
  past big segments) when it lies beyond the first read."""
  data, base, pos = head, 0, 2  # data holds file bytes [base, base+len)
  while pos < _MAX_JPEG_WALK:
    if pos + 9 > base + len(data):
      f.seek(pos)
      data, base = f.read(_PREFIX), pos
      if len(data) < 4:
        break
    i = pos - base
    if data[i] != 0xFF:
      break
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
      pos += 2
      continue
    if marker in (0xD9, 0xDA):  # end of image / scan data before a frame
      break
    if marker in _SOF:
      return Header("jpeg", _u(data, i + 7, 2, True), _u(data, i + 5, 2, True))
    pos += 2 + _u(data, i + 2, 2, True)
  raise HeaderError(NOT_AN_IMAGE)


def _colour_table(packed: int) -> int:
  return 3 * 2 ** (packed % 8 + 1) if packed >= 128 else 0


def _gif(data: bytes) -> Header:
  """The logical screen grown to the right/bottom edge of every frame, and
  the frame count: what TF's DecodeGif allocates (see
  imageio._gif_frames)."""
  if len(data) < 13:
    raise HeaderError(NOT_AN_IMAGE)
  right, bottom = _u(data, 6, 2), _u(data, 8, 2)
  frames, pos, steps = 0, 13 + _colour_table(data[10]), 0
  while pos < len(data) and steps < _MAX_GIF_BLOCKS:
    steps += 1
    block = data[pos]
    if block == 0x21:  # extension: label, then sub-blocks
      pos += 2
    elif block == 0x2C and pos + 10 <= len(data):
      left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
      right, bottom = max(right, left + w), max(bottom, top + h)
      frames += 1
      pos += 10 + _colour_table(data[pos + 9]) + 1  # +1: LZW code size
    else:  # the trailer, or anything else, ends the walk
      break
    while pos < len(data) and data[pos]:  # sub-blocks until a zero size
      pos += data[pos] + 1
      steps += 1
    pos += 1
  if steps >= _MAX_GIF_BLOCKS:
    raise HeaderError(NOT_AN_IMAGE)
  return Header("gif", right, bottom, max(frames, 1))


def _check_tail(f: BinaryIO, kind: str, size: int, head: bytes) -> None:
  if kind not in ("jpeg", "png"):
    return
  if size <= len(head):
    end = head[-_TAIL:]
  else:
    f.seek(max(size - _TAIL, 0))
    end = f.read(_TAIL)
  if kind == "jpeg" and b"\xff\xd9" not in end:
    raise HeaderError("cannot decode: cut short (no JPEG end-of-image marker)")
  if kind == "png" and b"IEND\xaeB`\x82" not in end:
    raise HeaderError("cannot decode: cut short (the PNG does not end with "
                      "its IEND chunk)")
