"""The image check before training: every manifest row's file, in parallel,
with a progress line, its results cached in the model_dir.

Two levels. "header" (the default): the file exists, is a regular file, is a
JPEG/PNG/GIF/BMP/WebP by its content, its header gives a size within the
pixel cap, and a JPEG/PNG is not cut short (end marker present); headers.py
reads it in plain Python, tens of microseconds of CPU per file. "decode":
the header check, then a full decode through imageio.decode (what training
does), for corruption inside the pixel data.

The cache (``image_check.csv`` in the model_dir) holds one row per file,
keyed by path, size and mtime: a resumed run re-checks only the files that
changed. A file that failed to decode during training is recorded there too
(record_failure), so the next run names it before training.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import os
import re
import stat
import sys
import time
from typing import Iterable, Optional, Sequence, TextIO

from mlc_keras.data import headers
from mlc_keras.data import manifest

LEVELS = ("header", "decode")
CACHE_FILE = "image_check.csv"
_FIELDS = ["path", "size", "mtime_ns", "level", "width", "height", "frames",
           "reason"]
_CHUNK = 2000  # files per task: a progress tick, little pickling overhead


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
  """What is known of one file of a given size and mtime (slots: one per
  manifest row, ~100 bytes instead of ~300 with a __dict__)."""
  size: int
  mtime_ns: int
  level: str
  width: int = -1
  height: int = -1
  frames: int = -1
  reason: str = ""  # empty: usable at ``level``

  def satisfies(self, level: str, size: int, mtime_ns: int) -> bool:
    if (self.size, self.mtime_ns) != (size, mtime_ns):
      return False
    return bool(self.reason) or self.level == "decode" or level == "header"


def _header_entry(path: str, size: int, mtime_ns: int, tail: bool) -> Entry:
  try:
    with open(path, "rb") as f:
      h = headers.read_header(f, size, tail=tail)
  except headers.HeaderError as e:
    h = e.header or headers.Header("", -1, -1, -1)
    return Entry(size, mtime_ns, "header", h.width, h.height, h.frames,
                 reason=str(e))
  except OSError as e:
    return Entry(size, mtime_ns, "header", reason=f"cannot read: {e.strerror}")
  return Entry(size, mtime_ns, "header", h.width, h.height, h.frames)


def _header_chunk(items: Sequence[tuple[str, int, int]], tail: bool
                  ) -> list[Entry]:
  return [_header_entry(p, s, m, tail) for p, s, m in items]


def _stat(path: str):
  """(size, mtime_ns) of a regular file, or the reason it is unusable."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return "file not found"
  except OSError as e:
    return f"cannot read: {e.strerror}"
  if stat.S_ISDIR(st.st_mode):
    return "a directory, not an image file"
  if not stat.S_ISREG(st.st_mode):
    return "not a regular file"
  return st.st_size, st.st_mtime_ns


class Progress:
  """"checking images: n/total (rate/s)" on ``out``: rewritten in place on
  a terminal, else one line every ~10 s and one at the end."""

  def __init__(self, out: Optional[TextIO], total: int, what: str):
    self.out, self.total, self.what = out, total, what
    self.start = self.last = time.monotonic()
    self.tty = bool(out) and getattr(out, "isatty", lambda: False)()

  def update(self, done: int, final: bool = False) -> None:
    if self.out is None or not self.total:
      return
    now = time.monotonic()
    if not final and now - self.last < (0.5 if self.tty else 10.0):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    line = (f"{self.what}: {done:,}/{self.total:,} ({rate:,.0f}/s)")
    end = "\n" if final or not self.tty else ""
    self.out.write(("\r" if self.tty else "") + line + end)
    self.out.flush()


def load_cache(path: Optional[str]) -> dict[str, Entry]:
  """The cache file's entries by path ({} when there is none or it is not
  ours: it is rebuilt)."""
  if not path or not os.path.isfile(path):
    return {}
  entries = {}
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      if next(reader, None) != _FIELDS:
        return {}
      for p, size, mtime, level, w, h, n, reason in reader:
        entries[p] = Entry(int(size), int(mtime), level, int(w), int(h),
                           int(n), reason)
  except (ValueError, UnicodeDecodeError):
    return {}
  return entries


def save_cache(path: str, entries: dict[str, Entry]) -> None:
  """Writes the cache atomically (a temporary file renamed over it)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(_FIELDS)
    for p, e in entries.items():
      writer.writerow([p, e.size, e.mtime_ns, e.level, e.width, e.height,
                       e.frames, e.reason])
  os.replace(tmp, path)


def record_failure(cache_path: str, path: str, reason: str) -> None:
  """Marks ``path`` (as it is now) unusable in the cache, so the next run's
  check refuses (or quarantines) it before training."""
  found = _stat(path)
  if isinstance(found, str):
    return  # gone: the next check finds it missing anyway
  entries = load_cache(cache_path)
  entries[path] = Entry(*found, "decode", reason=reason)
  save_cache(cache_path, entries)


def _run_pool(todo: list[tuple[str, int, int]], workers: int,
              progress: Progress, done: int, tail: bool) -> list[Entry]:
  # Threads, not processes: measured on 20k tiny files (2 cores), a thread
  # pool checked 26k files/s, a spawn process pool 12k/s (start-up and
  # pickling cost more than the GIL: most of the time is in syscalls).
  chunks = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
  out = []
  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    for entries in pool.map(functools.partial(_header_chunk, tail=tail),
                            chunks):
      out += entries
      done += len(entries)
      progress.update(done)
  return out


def check(records: manifest.Records, level: str = "header",
          max_pixels: Optional[int] = None, cache_path: Optional[str] = None,
          workers: Optional[int] = None,
          progress: Optional[TextIO] = sys.stderr) -> list[manifest.Problem]:
  """The records whose image is unusable, as Problems naming manifest and
  line (see the module docstring for what each level checks).

  Args:
    records: the rows to check.
    level: "header" or "decode".
    max_pixels: width * height * frames above which a file is refused
      (None or 0: no cap).
    cache_path: the cache file (read, then rewritten with what was learnt),
      or None.
    workers: parallel threads (default: twice the CPU count; the work is
      mostly syscalls).
    progress: where the progress line goes (None: nowhere).
  """
  if level not in LEVELS:
    raise ValueError(f"image check level must be one of {LEVELS}, got "
                     f"{level!r}")
  workers = workers or 2 * (os.cpu_count() or 1)
  cache = load_cache(cache_path)
  meter = Progress(progress, len(records), f"checking images ({level})")
  known: dict[str, object] = {}
  todo = []
  for p in records.paths:
    found = _stat(p)
    if isinstance(found, str):
      known[p] = found
    elif p in cache and cache[p].satisfies(level, *found):
      known[p] = cache[p]
    else:
      todo.append((p, *found))
  # The header level also looks for the end marker, standing in for the
  # decode that would find a file cut short; the decode level lets the
  # decoder say what is wrong.
  learnt = _run_pool(todo, workers, meter, len(records) - len(todo),
                     tail=level == "header")
  if level == "decode":
    learnt = _decode_all(learnt, [t[0] for t in todo], workers, max_pixels)
  meter.update(len(records), final=True)
  for (p, _, _), e in zip(todo, learnt):
    known[p] = cache[p] = e
  if cache_path and todo:
    save_cache(cache_path, cache)
  return list(_problems(records, known, max_pixels))


def check_file(path: str, max_pixels: Optional[int]) -> str:
  """Why the header check refuses the file at ``path`` (what check() says
  of a manifest row, for one file: predict's), or "" when it passes."""
  found = _stat(path)
  if isinstance(found, str):
    return found
  e = _header_entry(path, *found, tail=True)
  return _over_cap(e, max_pixels) or e.reason


def _problems(records: manifest.Records, known: dict,
              max_pixels: Optional[int]) -> Iterable[manifest.Problem]:
  for line, p in zip(records.lines, records.paths):
    e = known[p]
    # The cap first: a bomb's header is all there is of it.
    reason = e if isinstance(e, str) else _over_cap(e, max_pixels) or e.reason
    if reason:
      yield manifest.Problem(records.origin, line, p, reason)


def _over_cap(e: Entry, max_pixels: Optional[int]) -> str:
  pixels = e.width * e.height * e.frames
  if not max_pixels or pixels <= max_pixels:
    return ""
  size = f"{e.width}x{e.height}" + (f" x {e.frames} frames" if e.frames > 1
                                    else "")
  return (f"{size} = {pixels:,} pixels is over the limit of {max_pixels:,} "
          "(max_image_pixels)")


def _decode_all(entries: list[Entry], paths: list[str], workers: int,
                max_pixels: Optional[int]) -> list[Entry]:
  """Entries that passed the header check, decoded (TensorFlow's decoders
  release the GIL, so threads run them in parallel)."""
  def one(item):
    p, e = item
    if e.reason or _over_cap(e, max_pixels):
      return e  # never decode what the cap refuses
    reason = _decode_reason(p)
    return dataclasses.replace(e, level="decode", reason=reason)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(one, zip(paths, entries)))


def explain(message: str, records: Sequence[manifest.Records],
            workers: Optional[int] = None,
            progress: Optional[TextIO] = sys.stderr
            ) -> Optional[manifest.Problem]:
  """The row whose image made a tf.data error (``message``) during
  training, or None when no image is to blame.

  A read error names the file (a path of ``records``); a decoder's does
  not, so the images are decoded until one fails, first those of the byte
  size the message quotes ("Invalid PNG data, size 832"), then the rest.
  """
  for rec in records:
    for line, p in zip(rec.lines, rec.paths):
      if p in message:
        found = _stat(p)
        reason = (found + " (during training)" if isinstance(found, str)
                  else _decode_reason(p) or "cannot read during training")
        return manifest.Problem(rec.origin, line, p, reason)
  if not re.search(r"JPEG|PNG|GIF|BMP|WebP|image", message, re.IGNORECASE):
    return None  # not a decoder's error: decoding every file would not help
  size = re.search(r"\bsize (\d+)\b", message)
  rows = [(rec.origin, line, p) for rec in records
          for line, p in zip(rec.lines, rec.paths)]
  if size:
    hint = int(size.group(1))
    rows.sort(key=lambda r: _file_size(r[2]) != hint)
  meter = Progress(progress, len(rows), "finding the image that failed")
  workers = workers or 2 * (os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(rows), _CHUNK):
      chunk = rows[start:start + _CHUNK]
      reasons = list(pool.map(lambda r: _decode_reason(r[2]), chunk))
      meter.update(start + len(chunk))
      for (origin, line, p), reason in zip(chunk, reasons):
        if reason:
          meter.update(start + len(chunk), final=True)
          return manifest.Problem(origin, line, p, reason)
  return None


def _file_size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError:
    return -1


def _decode_reason(path: str) -> str:
  from mlc_keras.data import imageio  # pylint: disable=g-import-not-at-top
  return imageio.decode_reason(path)


def upscale_note(cache_path: str, paths: Sequence[str], image_size: int,
                 factor: float = 4.0) -> Optional[str]:
  """A line for the training log when every checked image is much smaller
  than the training size: each is scaled up at least ``factor`` times, which
  adds compute and no information (cost grows with image_size squared).
  None when the images are not that small or their sizes are unknown (no
  check ran, or some entry lacks a size)."""
  cache = load_cache(cache_path)
  sides = [max(cache[p].width, cache[p].height) for p in paths if p in cache]
  if not sides or len(sides) < len(paths) or min(sides) <= 0:
    return None
  largest = max(sides)
  if largest * factor > image_size:
    return None
  # keras.applications' backbones take 32 px and up; round to a multiple of
  # 16 so stride-32 networks keep whole feature cells.
  suggested = max(32, -(-largest // 16) * 16)
  return (f"every training image is at most {largest}x{largest} px, and "
          f"image_size={image_size} scales each up {image_size / largest:.0f}x "
          f"or more: the cost grows with image_size squared, so "
          f"image_size={suggested} trains about "
          f"{(image_size / suggested) ** 2:.0f}x cheaper on the same pixels "
          "(a pretrained backbone may still like larger inputs)")
