"""The model card: label coverage counted from the training manifest, the
sections rendered from a run's files, and the card every export writes."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from mlc_keras.core import heads as heads_lib
from mlc_keras.exporters import model_card
from tests import export_fixture
from tests import testutil


class CoverageTest(tf.test.TestCase):

  def test_counts_labelled_cells_per_class(self):
    folder = self.get_temp_dir()
    rows = testutil.simple_rows(8)  # every third colour blank
    manifest = testutil.write_manifest(folder, rows)
    run = os.path.join(folder, "run")
    os.makedirs(run)
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"data": {"manifest": manifest}}, f)
    source, coverage = model_card.label_coverage(run, testutil.SCHEMA)
    self.assertEqual(source, manifest)
    self.assertEqual(coverage["shape"], {
        "labelled": 8, "rows": 8,
        "classes": {"circle": 3, "square": 3, "triangle": 2}})
    # Rows 2 and 5 are blank; of 0,1,3,4,6,7: blue at even i, red at odd.
    self.assertEqual(coverage["colour"], {
        "labelled": 6, "rows": 8, "classes": {"blue": 3, "red": 3}})
    why, none = model_card.label_coverage(folder, testutil.SCHEMA)
    self.assertIsNone(none)
    self.assertIn("no config.json", why)

  def test_render_sections(self):
    schema = heads_lib.LabelSchema((heads_lib.HeadSpec("tone", ("dark", "light")),))
    text = model_card.render(
        model_name="m", version=2, model_file="/r/calibrated.keras",
        schema=schema, image_size=32, temperatures={"tone": 1.5},
        reports=[{"artefact": "onnx", "images": 40, "passed": True,
                  "outputs": {"tone": {"max_abs_diff": 2e-6,
                                       "top1_agreement": 1.0}}}],
        results={"evaluated_on": "val.csv", "heads": [
            {"head": "tone", "labelled": 12, "accuracy": 0.75}]},
        evaluation=None, coverage={"tone": {"labelled": 30, "rows": 40,
                                            "classes": {"dark": 10,
                                                        "light": 20}}},
        coverage_source="train.csv", max_image_bytes=100,
        max_image_pixels=1000)
    self.assertIn("# Model card: m, version 2", text)
    self.assertIn("| tone | dark, light | 30 of 40 rows (75%): dark 10, "
                  "light 20 |", text)
    self.assertIn("| tone | 12 | 0.750 | fewer than 50 labelled", text)
    self.assertIn("tone T=1.500", text)
    self.assertIn("| onnx | 40 | yes | 0.000 | 1.000 |", text)
    self.assertIn("uint8 pixels [N, 32, 32, 3]", text)
    self.assertIn("## Known limits", text)


class ExportWritesCardTest(tf.test.TestCase):

  def test_every_export_writes_one(self):
    source = export_fixture.plain()
    path = source.result.model_card
    self.assertEqual(path, os.path.join(source.base, "model_card", "tiny",
                                        "3.md"))
    with open(path, encoding="utf-8") as f:
      text = f.read()
    self.assertIn("| colour | red, green, blue |", text)
    self.assertIn("Not calibrated", text)
    for report in source.result.parity:
      self.assertIn(f"| {report['artefact']} | 40 | yes |", text)


if __name__ == "__main__":
  tf.test.main()
