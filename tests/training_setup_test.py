"""Tests of training.setup's end-of-run report: without validation data it
scores a bounded sample of the training data and says so."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from unittest import mock

import numpy as np
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.data import manifest
from mlc_keras.data import sources
from mlc_keras.modeling import model as model_lib
from mlc_keras.training import setup
from tests import testutil


class ReportTest(tf.test.TestCase):

  def _run(self, with_val: bool):
    tmp = self.get_temp_dir()
    rows = testutil.simple_rows(10)
    path = testutil.write_manifest(tmp, rows)
    records, schema = manifest.read_manifest(path, testutil.SCHEMA)
    train = sources.records_source(records)
    val = sources.records_source(records.take(np.arange(10) < 6)) if with_val else None
    bundle = setup.DataBundle(schema, train, val, len(records))
    run = setup.Run(bundle, schema, 1, None, None)
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, batch_size=2))
    model = model_lib.small_cnn(schema, cfg.data.image_size)
    out = io.StringIO()
    # 3 examples asked: whole batches of 2, so the first 4 rows are scored.
    with mock.patch.object(setup, "REPORT_SAMPLE", 3), \
        contextlib.redirect_stdout(out):
      results = setup.write_results(model, run, cfg, tmp)
    with open(os.path.join(tmp, "results.json")) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    return results, out.getvalue(), path

  def test_no_validation_data_scores_a_bounded_sample_and_says_so(self):
    results, printed, path = self._run(with_val=False)
    counts = {r["head"]: (r["total"], r["labelled"]) for r in results["heads"]}
    # Rows 0-3: every shape labelled, colour blank on row 2.
    self.assertEqual(counts, {"shape": (4, 4), "colour": (4, 3)})
    self.assertEqual(results["evaluated_sample"], 4)
    self.assertEqual(results["sample_of"], "training data")
    self.assertIn(f"Per-head results on the first 4 of 10 training examples of "
                  f"{path} (no validation data: not held-out scores; inference "
                  "mode, labelled samples only):", printed)

  def test_validation_data_is_scored_whole(self):
    results, printed, _ = self._run(with_val=True)
    self.assertEqual({r["head"]: r["total"] for r in results["heads"]},
                     {"shape": 6, "colour": 6})
    self.assertNotIn("evaluated_sample", results)
    self.assertNotIn("first", printed)


if __name__ == "__main__":
  tf.test.main()
