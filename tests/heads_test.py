"""Tests for the label schema."""

import json
import os

import tensorflow as tf

from mlc_keras.core import heads as heads_lib


class LabelSchemaTest(tf.test.TestCase):

  def test_infer_sorts_classes_and_keeps_column_order(self):
    schema = heads_lib.LabelSchema.infer(
        {"size": ["small", "", "large", "small"], "colour": ["red", "blue"]})
    self.assertEqual(schema.names, ("size", "colour"))
    self.assertEqual(schema.head("size").classes, ("large", "small"))
    self.assertEqual(schema.head("colour").index("red"), 1)

  def test_infer_sorts_integer_labels_as_numbers(self):
    schema = heads_lib.LabelSchema.infer({
        "count": ["10", "2", "", "1", "01", "-3", "2"],
        "mixed": ["10", "2", "b"]})
    # "01" and "1" are two classes (nothing merged), "01" first.
    self.assertEqual(schema.head("count").classes,
                     ("-3", "01", "1", "2", "10"))
    # One non-integer value: the whole column sorts as text.
    self.assertEqual(schema.head("mixed").classes, ("10", "2", "b"))

  def test_one_value_or_blank_column_says_what_to_do(self):
    for values in (["yes", "", "yes"], ["", ""]):
      with self.subTest(values), self.assertRaisesRegex(
          heads_lib.SchemaError, r"column 'mono' has [01] distinct .*label_"
          r"columns, delete the column, or give a heads_file .*columns it "
          r"does not name are ignored"):
        heads_lib.LabelSchema.infer({"colour": ["a", "b"], "mono": values})

  def test_save_load_round_trip(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("a", ("x", "y"), loss_weight=2.0, focal_gamma=1.5),
        heads_lib.HeadSpec("b", ("p", "q", "r"))))
    folder = self.get_temp_dir()
    schema.save(folder)
    self.assertEqual(heads_lib.LabelSchema.load(folder), schema)
    with open(os.path.join(folder, "labels.json")) as f:
      self.assertEqual(json.load(f)["heads"][0]["classes"], ["x", "y"])

  def test_unknown_value_names_head_and_classes(self):
    head = heads_lib.HeadSpec("colour", ("blue", "red"))
    with self.assertRaisesRegex(heads_lib.SchemaError, "'green'.*'colour'.*blue, red"):
      head.index("green")

  def test_bad_heads_files(self):
    cases = {
        "duplicate class": {"heads": [{"name": "a", "classes": ["x", "x"]}]},
        "single class": {"heads": [{"name": "a", "classes": ["x"]}]},
        "bad name": {"heads": [{"name": "a b", "classes": ["x", "y"]}]},
        "reserved": {"heads": [{"name": "image", "classes": ["x", "y"]}]},
        "unknown key": {"heads": [{"name": "a", "classes": ["x", "y"], "k": 1}]},
        "duplicate head": {"heads": [{"name": "a", "classes": ["x", "y"]},
                                     {"name": "a", "classes": ["x", "y"]}]},
        "no heads": {"heads": []},
        "negative gamma": {"heads": [{"name": "a", "classes": ["x", "y"],
                                      "focal_gamma": -1}]},
        "text weight": {"heads": [{"name": "a", "classes": ["x", "y"],
                                   "loss_weight": "heavy"}]},
        "class with spaces around": {"heads": [{"name": "a",
                                                "classes": ["x", " y"]}]},
    }
    for what, d in cases.items():
      path = os.path.join(self.get_temp_dir(), "heads.json")
      with open(path, "w") as f:
        json.dump(d, f)
      with self.subTest(what), self.assertRaisesRegex(heads_lib.SchemaError, "heads.json"):
        heads_lib.LabelSchema.load(path)

  def test_bad_names_and_classes_say_what_to_do(self):
    with self.assertRaisesRegex(
        heads_lib.SchemaError, r"head name 'Size Class' must start .*rename "
        r"the column"):
      heads_lib.HeadSpec("Size Class", ("S", "L"))
    # Manifest cells are stripped: " red" could never be matched.
    with self.assertRaisesRegex(
        heads_lib.SchemaError, r"class ' red' starts or ends with white space"):
      heads_lib.HeadSpec("colour", ("blue", " red"))

  def test_unknown_head_and_loss_weights(self):
    schema = heads_lib.LabelSchema((heads_lib.HeadSpec("a", ("x", "y")),))
    with self.assertRaisesRegex(heads_lib.SchemaError, "unknown head 'b'"):
      schema.head("b")
    self.assertEqual(schema.with_loss_weights({"a": 0.5}).head("a").loss_weight, 0.5)
    with self.assertRaises(heads_lib.SchemaError):
      schema.with_loss_weights({"b": 1.0})
    self.assertEqual(schema.with_focal_gammas({"a": 2}).head("a").focal_gamma, 2.0)
    with self.assertRaisesRegex(heads_lib.SchemaError, "unknown head 'b'"):
      schema.with_focal_gammas({"b": 2.0})

  def test_per_head_flag_values(self):
    from mlc_keras.core import config as config_lib  # pylint: disable=g-import-not-at-top
    self.assertEqual(
        config_lib.per_head_values("focal_loss", ["fill=2", "2.5"], bare=True),
        (("fill", 2.0), ("*", 2.5)))
    for bad, bare in ((["fill"], False), (["fill=x"], True), (["=2"], True)):
      with self.subTest(bad), self.assertRaisesRegex(ValueError, "w: expected"):
        config_lib.per_head_values("w", bad, bare=bare)


class TagHeadSchemaTest(tf.test.TestCase):

  def test_kind_and_thresholds_round_trip_through_labels_json(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("shape", ("circle", "square")),
        heads_lib.HeadSpec("marks", ("bar", "dot"), kind=heads_lib.TAGS,
                           thresholds=(0.25, 0.75))))
    folder = self.get_temp_dir()
    schema.save(folder)
    with open(os.path.join(folder, "labels.json")) as f:
      heads = json.load(f)["heads"]
    self.assertEqual([h["kind"] for h in heads], ["softmax", "tags"])
    self.assertEqual(heads[1]["thresholds"], [0.25, 0.75])
    self.assertNotIn("thresholds", heads[0])
    self.assertEqual(heads_lib.LabelSchema.load(folder), schema)
    # A labels.json written before kinds existed reads as softmax heads.
    old = heads_lib.LabelSchema.from_dict(
        {"heads": [{"name": "a", "classes": ["x", "y"]}]})
    self.assertEqual(old.heads[0].kind, heads_lib.SOFTMAX)

  def test_label_columns_and_defaults(self):
    schema = heads_lib.LabelSchema((
        heads_lib.HeadSpec("shape", ("circle", "square", "triangle")),
        heads_lib.HeadSpec("marks", ("bar", "corner", "edge"),
                           kind=heads_lib.TAGS),
        heads_lib.HeadSpec("size", ("large", "small"))))
    self.assertEqual(schema.label_width, 5)
    self.assertEqual(schema.label_slices(), {
        "shape": slice(0, 1), "marks": slice(1, 4), "size": slice(4, 5)})
    self.assertEqual(schema.head("marks").tag_thresholds(), (0.5, 0.5, 0.5))
    fitted = schema.with_thresholds({"marks": [0.1, 0.2, 0.3]})
    self.assertEqual(fitted.head("marks").thresholds, (0.1, 0.2, 0.3))
    with self.assertRaisesRegex(heads_lib.SchemaError, "'shape' is not a tag"):
      schema.with_thresholds({"shape": [0.5, 0.5, 0.5]})

  def test_parse_tags(self):
    head = heads_lib.HeadSpec("marks", ("bar", "corner", "edge"),
                              kind=heads_lib.TAGS)
    self.assertEqual(head.parse_tags("edge|bar"), [1, 0, 1])
    self.assertEqual(head.parse_tags("corner | edge"), [0, 1, 1])
    self.assertEqual(head.parse_tags("(none)"), [0, 0, 0])
    cases = {"dot": r"tag 'dot' is not in the vocabulary of tag head 'marks' "
                    r"\(tags: bar, corner, edge\)",
             "bar||edge": "empty tag between separators",
             "bar|(none)": "cannot be combined with tags"}
    for cell, pattern in cases.items():
      with self.subTest(cell), self.assertRaisesRegex(
          heads_lib.SchemaError, pattern):
        head.parse_tags(cell)

  def test_bad_tag_heads(self):
    cases = {
        "separator in a tag": (dict(classes=("a|b", "c")), "separator '\\|'"),
        "none token as a tag": (dict(classes=("(none)", "c")), "no-tags token"),
        "no tags": (dict(classes=()), "at least 1 tag"),
        "thresholds per tag": (dict(classes=("a", "b"), thresholds=(0.5,)),
                               "2 numbers in \\[0, 1\\]"),
        "threshold above 1": (dict(classes=("a",), thresholds=(1.5,)),
                              "1 numbers in"),
    }
    for name, (kwargs, pattern) in cases.items():
      with self.subTest(name), self.assertRaisesRegex(
          heads_lib.SchemaError, pattern):
        heads_lib.HeadSpec("t", kind=heads_lib.TAGS, **kwargs)
    with self.assertRaisesRegex(heads_lib.SchemaError, "only a tag head"):
      heads_lib.HeadSpec("s", ("a", "b"), thresholds=(0.5, 0.5))
    with self.assertRaisesRegex(heads_lib.SchemaError, "kind must be one of"):
      heads_lib.HeadSpec("s", ("a", "b"), kind="sigmoid")
    # One tag is a fine tag head ("has a logo"); a softmax head needs two.
    self.assertEqual(
        heads_lib.HeadSpec("logo", ("logo",), kind=heads_lib.TAGS).width, 1)

  def test_infer_tag_columns(self):
    schema = heads_lib.LabelSchema.infer(
        {"shape": ["circle", "a|b"], "marks": ["edge|bar", "", "(none)", "dot"]},
        tag_columns=["marks"])
    # Only the declared column is split; "a|b" stays a softmax class.
    self.assertEqual(schema.head("shape").classes, ("a|b", "circle"))
    self.assertEqual(schema.head("marks").kind, heads_lib.TAGS)
    self.assertEqual(schema.head("marks").classes, ("bar", "dot", "edge"))
    with self.assertRaisesRegex(heads_lib.SchemaError,
                                "tag column 'marks' names no tag"):
      heads_lib.LabelSchema.infer({"marks": ["", "(none)"]}, ["marks"])


if __name__ == "__main__":
  tf.test.main()
