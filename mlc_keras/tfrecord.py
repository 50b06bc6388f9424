r"""Writes a CSV manifest as sharded tf.Example TFRecords plus labels.json.

  python -m mlc_keras.tfrecord --manifest=data/train.csv \
      --output=data/tfr/train --num_shards=8
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from mlc_keras.cli import help as cli_help
from mlc_keras.core import errors

_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest.", required=True)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output prefix; shards are <prefix>-00000-of-0000N.tfrecord.",
    required=True)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 1, "Number of shards (written in parallel).", lower_bound=1)
_HEADS_FILE = flags.DEFINE_string("heads_file", None,
                                  "Heads file (default: inferred).")
_IMAGE_COLUMN = flags.DEFINE_string("image_column", "image", "Image column.")
_IMAGE_CHECK = flags.DEFINE_enum(
    "image_check", "decode", ["header", "decode"],
    "How every image is checked before writing: decode (each file decoded "
    "once: shards are written once and read every epoch) or header (format "
    "by content, size, pixel cap, end marker; ~0.1 ms per file).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mlc_keras.core import heads  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import manifest  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import sources  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import tfrecords  # pylint: disable=g-import-not-at-top
  try:
    schema = heads.LabelSchema.load(_HEADS_FILE.value) if _HEADS_FILE.value else None
    records, schema = manifest.read_manifest(_MANIFEST.value, schema,
                                         _IMAGE_COLUMN.value)
    sources.check_images(records, level=_IMAGE_CHECK.value,
                         progress=sys.stderr)
  except errors.MlcError as e:
    cli_help.fail(e)
  shards = tfrecords.write_tfrecords(records, schema, _OUTPUT.value,
                                     _NUM_SHARDS.value, progress=sys.stderr)
  print(f"wrote {len(records)} examples to {len(shards)} shard(s): {shards[0]} ...")


# --help lists every flag of this module under these headings (cli_help).
_HELP_GROUPS = {
    "data": (_MANIFEST, _IMAGE_COLUMN, _HEADS_FILE, _IMAGE_CHECK),
    "output": (_OUTPUT, _NUM_SHARDS),
}


def run():
  """The mlc-tfrecord console script (setup.cfg): the same flags as python -m."""
  cli_help.run(main, __doc__, _HELP_GROUPS)


if __name__ == "__main__":
  run()
