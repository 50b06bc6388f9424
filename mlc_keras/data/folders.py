"""Image folders read as manifests, wherever a manifest path is accepted
(--manifest, --val_manifest, evaluate --manifest, suggest --manifest):

  Hugging Face ``imagefolder`` with metadata: a folder holding metadata.csv,
      whose ``file_name`` column is the image path (relative to the folder)
      and whose other columns are heads. It is read as that manifest, with
      ``file_name`` as the image column unless the CSV has the configured
      image column itself.
  Class sub-folders (``imagefolder`` without metadata, Keras'
      image_dataset_from_directory layout): <folder>/<class>/**/<image>, one
      head named ``label`` whose classes are the sub-folder names.

Rows come back as CSV rows (header first), so the manifest reader applies
its usual checks to them.
"""

from __future__ import annotations

import csv
import os

from mlc_keras.core import errors

METADATA_FILE = "metadata.csv"
FILE_NAME_COLUMN = "file_name"
CLASS_HEAD = "label"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


class FolderError(errors.MlcError):
  """A folder that is neither layout; the message says what was found."""


def as_rows(folder: str, image_column: str) -> tuple[str, list[list[str]]]:
  """(the path errors should name, CSV rows with the header first) of an
  image folder in either layout (see the module docstring)."""
  metadata = os.path.join(folder, METADATA_FILE)
  if os.path.isfile(metadata):
    with open(metadata, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
    if rows:
      header = [c.strip() for c in rows[0]]
      if image_column not in header and FILE_NAME_COLUMN in header:
        rows[0] = [image_column if c == FILE_NAME_COLUMN else c
                   for c in header]
    return metadata, rows
  return folder.rstrip(os.sep) + os.sep, _class_rows(folder, image_column)


def _images_under(folder: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files)
              if f.lower().endswith(IMAGE_EXTENSIONS)]
  return found


def _class_rows(folder: str, image_column: str) -> list[list[str]]:
  entries = sorted(os.listdir(folder))
  loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)
           and os.path.isfile(os.path.join(folder, e))]
  if loose:
    raise FolderError(
        f"{folder}: images directly in the folder ({loose[0]}, ...) belong to "
        f"no class; put each in a sub-folder named after its class, or add a "
        f"{METADATA_FILE} with a {FILE_NAME_COLUMN} column")
  rows = [[image_column, CLASS_HEAD]]
  for name in entries:
    sub = os.path.join(folder, name)
    if os.path.isdir(sub) and not name.startswith("."):
      rows += [[os.path.abspath(p), name] for p in _images_under(sub)]
  if len(rows) == 1:
    raise FolderError(
        f"{folder}: neither a {METADATA_FILE} (Hugging Face imagefolder) nor "
        f"class sub-folders holding {'/'.join(IMAGE_EXTENSIONS)} images")
  return rows
