"""Image folders as manifests: Hugging Face imagefolder (metadata.csv with
file_name) and class sub-folders (one head, "label")."""

from __future__ import annotations

import os

import tensorflow as tf

from mlc_keras.data import folders
from mlc_keras.data import manifest as manifest_lib
from tests import testutil


class FoldersTest(tf.test.TestCase):

  def test_imagefolder_metadata_is_a_manifest(self):
    root = self.get_temp_dir()
    for name in ("a.png", "sub/b.jpg", "c.png"):
      testutil.write_image(os.path.join(root, "hf", name), size=8)
    with open(os.path.join(root, "hf", "metadata.csv"), "w") as f:
      f.write("file_name,colour,shape\na.png,red,\nsub/b.jpg,blue,circle\n"
              "c.png,,square\n")
    records, schema = manifest_lib.read_manifest(os.path.join(root, "hf"))
    self.assertEqual(schema.names, ("colour", "shape"))
    self.assertEqual(records.paths, tuple(os.path.join(root, "hf", n) for n in
                                          ("a.png", "sub/b.jpg", "c.png")))
    # colour: blue, red; shape: circle, square (sorted); blank = -1.
    self.assertAllEqual(records.labels, [[1, -1], [0, 0], [-1, 1]])
    self.assertEqual(records.origin, os.path.join(root, "hf", "metadata.csv"))

  def test_class_subfolders_are_one_head(self):
    root = os.path.join(self.get_temp_dir(), "classes")
    for name in ("cat/1.png", "cat/deep/2.jpg", "dog/3.png", "dog/notes.txt"):
      path = os.path.join(root, name)
      if name.endswith(".txt"):
        with open(path, "w") as f:
          f.write("not an image")
      else:
        testutil.write_image(path, size=8)
    records, schema = manifest_lib.read_manifest(root)
    self.assertEqual(schema.names, (folders.CLASS_HEAD,))
    self.assertEqual(schema.heads[0].classes, ("cat", "dog"))
    self.assertEqual([os.path.relpath(p, root) for p in records.paths],
                     ["cat/1.png", "cat/deep/2.jpg", "dog/3.png"])
    self.assertAllEqual(records.labels[:, 0], [0, 0, 1])
    # predict and export read the same folder's images through read_images.
    self.assertLen(manifest_lib.read_images(root).paths, 3)

  def test_unusable_folders_are_named(self):
    root = self.get_temp_dir()
    testutil.write_image(os.path.join(root, "loose", "x.png"), size=8)
    with self.assertRaisesRegex(manifest_lib.DataError,
                                r"loose: images directly in the folder "
                                r"\(x\.png"):
      manifest_lib.read_manifest(os.path.join(root, "loose"))
    os.makedirs(os.path.join(root, "empty", "sub"))
    with self.assertRaisesRegex(manifest_lib.DataError,
                                "neither a metadata.csv"):
      manifest_lib.read_manifest(os.path.join(root, "empty"))


if __name__ == "__main__":
  tf.test.main()
