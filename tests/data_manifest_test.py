"""Tests for manifest reading: the training reader and the image-list reader."""

import os

import tensorflow as tf

from mlc_keras.data import manifest
from mlc_keras.data import sources
from tests import testutil


class ManifestTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()

  def test_reads_relative_paths_and_blank_labels(self):
    path = testutil.write_manifest(self.dir, testutil.simple_rows(6))
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    self.assertLen(records, 6)
    self.assertEqual(records.paths[0], os.path.join(self.dir, "img/000.jpg"))
    self.assertEqual(records.lines, (2, 3, 4, 5, 6, 7))
    # shape cycles 0,1,2; colour is blank (-1) on every third row.
    self.assertAllEqual(records.labels[:, 0], [0, 1, 2, 0, 1, 2])
    self.assertAllEqual(records.labels[:, 1], [0, 1, -1, 1, 0, -1])
    self.assertEqual(schema, testutil.SCHEMA)

  def test_infers_schema_from_columns(self):
    path = testutil.write_manifest(self.dir, testutil.simple_rows(6))
    _, schema = manifest.read_manifest(path)
    self.assertEqual(schema.names, ("shape", "colour"))
    self.assertEqual(schema.head("colour").classes, ("blue", "red"))

  def test_bad_manifests_name_file_line_and_column(self):
    good = testutil.simple_rows(4)
    cases = [
        ("no image column", dict(columns=("path", "shape", "colour")),
         good, r"no image column 'image'"),
        ("unknown label", {}, good[:2] + [dict(good[2], shape="hexagon")],
         r"train.csv:4: column 'shape': value 'hexagon'"),
        ("blank image cell", {}, good[:1] + [dict(good[1], image="")],
         r"train.csv:3: blank 'image' cell"),
    ]
    for what, kwargs, rows, pattern in cases:
      with self.subTest(what):
        folder = os.path.join(self.dir, what.replace(" ", "_"))
        for r in rows:
          if r.get("image"):
            testutil.write_image(os.path.join(folder, r["image"]))
        path = testutil.write_manifest(folder, [r for r in rows], **kwargs) \
            if what != "no image column" else self._raw(folder, "path,shape,colour\na.png,circle,red\n")
        with self.assertRaisesRegex(manifest.DataError, pattern):
          manifest.read_manifest(path, testutil.SCHEMA)

  def _raw(self, folder, text, name="train.csv"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    return path

  def test_spreadsheet_export_with_bom_crlf_quotes_and_spaces(self):
    # What Excel or pandas writes: a UTF-8 BOM, CRLF, quoted cells holding
    # commas, stray spaces; image paths with spaces and non-ASCII letters in
    # nested folders.
    names = ["photos/sub dir/a 1.JPG", "photos/été/café.png", "b.png",
             "c.png"]
    for i, name in enumerate(names):
      testutil.write_image(os.path.join(self.dir, name), seed=i)
    text = ("\ufeff filename ,Colour,count,style\r\n"
            f"{names[0]}, red ,10,\"matte, dark\"\r\n"
            f"\"{names[1]}\",blue,2,glossy\r\n"
            f"{names[2]},red ,01,\r\n"
            f" {names[3]} ,,1,glossy\r\n")
    path = os.path.join(self.dir, "export.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    records, schema = manifest.read_manifest(path, image_column="filename")
    self.assertEqual(schema.names, ("Colour", "count", "style"))
    # Cells are stripped; integers sort as numbers; "01" is not "1".
    self.assertEqual(schema.head("Colour").classes, ("blue", "red"))
    self.assertEqual(schema.head("count").classes, ("01", "1", "2", "10"))
    self.assertEqual(schema.head("style").classes, ("glossy", "matte, dark"))
    self.assertAllEqual(records.labels,
                        [[1, 3, 1], [0, 2, 0], [1, 0, -1], [-1, 1, 0]])
    self.assertEqual(records.paths[1], os.path.join(self.dir, names[1]))
    self.assertEqual(records.paths[3], os.path.join(self.dir, names[3]))
    sources.check_images(records)
    # The same manifest read against the schema (as evaluate does) agrees.
    again, _ = manifest.read_manifest(path, schema, image_column="filename")
    self.assertAllEqual(again.labels, records.labels)

  def test_duplicate_or_unnamed_columns(self):
    # A repeated name used to be read as one head (the last column), silently.
    with self.assertRaisesRegex(
        manifest.DataError, r"dup\.csv:1: columns 2 and 3 are both named 'colour'; "
        "rename one"):
      manifest.read_manifest(self._raw(self.dir, "image,colour,colour\n"
                                   "a.png,red,blue\n", "dup.csv"))
    with self.assertRaisesRegex(
        manifest.DataError, r"trail\.csv:1: column 3 has no name"):
      manifest.read_manifest(self._raw(self.dir, "image,colour,\na.png,red,\n",
                                   "trail.csv"))

  def test_class_only_in_validation_says_what_to_do(self):
    _, schema = manifest.read_manifest(self._raw(
        self.dir, "image,rare\na.png,x\nb.png,y\n"))
    with self.assertRaisesRegex(
        manifest.DataError, r"val\.csv:3: column 'rare': value 'z' is not a class "
        r"of head 'rare' \(classes: x, y\)\. .*list the class in a "
        r"--heads_file"):
      manifest.read_manifest(self._raw(self.dir, "image,rare\nc.png,x\nd.png,z\n",
                                   "val.csv"), schema)

  def test_header_only_and_empty_manifest(self):
    with self.assertRaisesRegex(manifest.DataError, "header but no rows"):
      manifest.read_manifest(self._raw(self.dir, "image,shape\n"))
    with self.assertRaisesRegex(manifest.DataError, "empty manifest"):
      manifest.read_manifest(self._raw(self.dir, "", "empty.csv"))

  def test_heads_file_head_missing_from_manifest(self):
    path = self._raw(self.dir, "image,shape\na.png,circle\n")
    with self.assertRaisesRegex(manifest.DataError, r"\['colour'\].*not columns"):
      manifest.read_manifest(path, testutil.SCHEMA)


class ReadImagesTest(tf.test.TestCase):
  """read_images: the reader export and predict share with training."""

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()

  def _raw(self, text, name="list.csv"):
    path = os.path.join(self.dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    return path

  def test_image_column_only_gives_paths_in_file_order(self):
    sub = os.path.join(self.dir, "sub")
    os.makedirs(sub)
    path = self._raw(f" file \nb.png\n\n{sub}/a.png\nb.png\n")
    records = manifest.read_images(path, image_column="file")
    # Blank rows are skipped, repeats kept, absolute paths left as they are.
    self.assertEqual(records.paths, (os.path.join(self.dir, "b.png"),
                                     os.path.join(sub, "a.png"),
                                     os.path.join(self.dir, "b.png")))
    self.assertEqual(records.lines, (2, 4, 5))
    self.assertEqual(records.labels.shape, (3, 0))

  def test_labels_with_a_schema_match_read_manifest(self):
    path = testutil.write_manifest(self.dir, testutil.simple_rows(6))
    records = manifest.read_images(path, schema=testutil.SCHEMA)
    want, _ = manifest.read_manifest(path, testutil.SCHEMA)
    self.assertEqual(records.paths, want.paths)
    self.assertAllEqual(records.labels, want.labels)

  def test_same_rules_as_training(self):
    for text, pattern in [
        ("image,x\n", r"list\.csv: the manifest has a header but no rows"),
        ("file\na.png\n", r"list\.csv: no image column 'image'; columns are \['file'\]"),
        ("image,x\na.png\nb.png,1\n", r"list\.csv:2: 1 cells, the header has 2"),
        ("image,x\n,1\n", r"list\.csv:2: blank 'image' cell"),
        ("image,image\na.png,b.png\n", r"list\.csv:1: columns 1 and 2 are both named"),
    ]:
      with self.subTest(text=text):
        with self.assertRaisesRegex(manifest.DataError, pattern):
          manifest.read_images(self._raw(text))
    with self.assertRaisesRegex(manifest.DataError, r"nope\.csv: manifest not found"):
      manifest.read_images(os.path.join(self.dir, "nope.csv"))


class TagColumnTest(tf.test.TestCase):

  def _manifest(self, marks):
    rows = [{"image": f"img/{i}.png", "shape": "circle" if i % 2 else "square",
             "marks": m} for i, m in enumerate(marks)]
    return testutil.write_manifest(self.get_temp_dir(), rows,
                                   columns=("image", "shape", "marks"), size=8)

  def test_tag_cells_become_multi_hot_columns(self):
    path = self._manifest(["edge|bar", "", "(none)", "corner"])
    records, schema = manifest.read_manifest(path, tag_columns=["marks"])
    self.assertEqual(schema.head("marks").classes, ("bar", "corner", "edge"))
    # shape (1 column), then marks (3): blank = missing in every column,
    # "(none)" = labelled with no tag.
    self.assertAllEqual(records.labels, [[1, 1, 0, 1],
                                         [0, -1, -1, -1],
                                         [1, 0, 0, 0],
                                         [0, 0, 1, 0]])

  def test_written_records_read_back_the_same(self):
    path = self._manifest(["edge|bar", "", "(none)", "corner"])
    records, schema = manifest.read_manifest(path, tag_columns=["marks"])
    out = os.path.join(self.get_temp_dir(), "elsewhere", "copy.csv")
    os.makedirs(os.path.dirname(out))
    manifest.write_records(out, records, schema, image_column="file")
    with open(out) as f:
      self.assertEqual(f.readline().strip(), "file,shape,marks")
      # Tags in vocabulary order; "(none)" and the blank kept apart.
      self.assertEqual([l.strip().split(",", 1)[1] for l in f],
                       ["square,bar|edge", "circle,", "square,(none)",
                        "circle,corner"])
    again, _ = manifest.read_manifest(out, schema, "file")
    self.assertEqual(again.paths, records.paths)
    self.assertAllEqual(again.labels, records.labels)

  def test_tag_outside_the_vocabulary_names_file_line_column_value(self):
    train = self._manifest(["bar", "edge"])
    _, schema = manifest.read_manifest(train, tag_columns=["marks"])
    bad = self._manifest(["bar", "bar|dot"])
    with self.assertRaisesRegex(
        manifest.DataError,
        r"train\.csv:3: column 'marks': tag 'dot' is not in the vocabulary "
        r"of tag head 'marks' \(tags: bar, edge\)"):
      manifest.read_manifest(bad, schema)

  def test_tag_columns_need_a_label_column_and_no_heads_file(self):
    path = self._manifest(["bar", "edge"])
    with self.assertRaisesRegex(manifest.DataError,
                                r"--tag_columns \['marks'\] are not among"):
      manifest.read_manifest(path, label_columns=["shape"],
                             tag_columns=["marks"])
    _, schema = manifest.read_manifest(path, tag_columns=["marks"])
    with self.assertRaisesRegex(manifest.DataError, "say each head's kind"):
      manifest.read_manifest(path, schema, tag_columns=["marks"])


if __name__ == "__main__":
  tf.test.main()
