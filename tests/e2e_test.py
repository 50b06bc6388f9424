"""The real user path, through the command lines, on tiny settings:

  python -m mlc_keras.train --preset=tiny ...
  python -m mlc_keras.export --formats=saved_model,tflite,onnx \
      --quantization=fp32 --class_table=classes.csv ...
  python -m mlc_keras.predict --model=<each artefact> <images>

Each step runs in its own process, as a user runs it; what the steps do in
detail is tested in train_test, export_lib_test and predict_test. This test
asserts that they fit together: the exported artefacts give the .keras
model's answers, head by head and for the composed classes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from mlc_keras import compose
from mlc_keras import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 6


def run_cli(module: str, *args: str) -> str:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", f"mlc_keras.{module}", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=env)
  if proc.returncode != 0:
    raise AssertionError(
        f"python -m mlc_keras.{module} exited {proc.returncode}:\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc.stdout


class EndToEndTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="e2e_test_")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_train_export_predict(self):
    model_dir = os.path.join(self.root, "run")
    demo_dir = os.path.join(self.root, "demo_data")
    run_cli("train", "--preset=tiny", f"--model_dir={model_dir}",
            f"--demo_dir={demo_dir}")
    self.assertTrue(os.path.isfile(os.path.join(model_dir, "model.keras")))

    table_path = compose.write_demo_table(os.path.join(self.root, "classes.csv"))
    table = compose.load(table_path, demo.SCHEMA)
    base = os.path.join(self.root, "export")
    run_cli("export", f"--model_dir={model_dir}", f"--output={base}",
            "--formats=saved_model,tflite,onnx", "--quantization=fp32",
            f"--class_table={table_path}")
    with open(os.path.join(base, "parity", "run", "1.json")) as f:
      parity = json.load(f)
    for report in parity["reports"]:
      self.assertTrue(report["passed"], report)
      self.assertIn("class", report["outputs"])

    # A few held-out demo images, blue triangles (never in training) among them.
    with open(os.path.join(demo_dir, "heldout.csv"), newline="") as f:
      rows = list(csv.DictReader(f))[:NUM_IMAGES]
    images = [os.path.join(demo_dir, r["image"]) for r in rows]

    artefacts = {
        "keras": os.path.join(model_dir, "model.keras"),
        "saved_model": os.path.join(base, "run", "1"),
        "tflite": os.path.join(base, "litert", "run", "1", "run_fp32.tflite"),
        "onnx": os.path.join(base, "onnx", "run", "1", "run.onnx"),
    }
    answers = {}
    for name, path in artefacts.items():
      # A model trained for 2 steps is unsure of everything: --threshold=0
      # makes the class answer the best class rather than "unknown", so that
      # artefacts are compared on a real decision. The .keras model has no
      # "class" output and needs the table; the exports carry it.
      flags = ["--threshold=0"]
      if name == "keras":
        flags.append(f"--class_table={table_path}")
      out = run_cli("predict", f"--model={path}", *flags, *images)
      lines = [json.loads(l) for l in out.splitlines()]
      with self.subTest(name):
        self.assertEqual([l["image"] for l in lines], images)
        for line in lines:
          self.assertEqual(list(line), ["image", *demo.SCHEMA.names, "class"])
          for h in demo.SCHEMA.heads:
            self.assertEqual(list(line[h.name]["scores"]), list(h.classes))
            self.assertAlmostEqual(sum(line[h.name]["scores"].values()), 1.0,
                                   delta=1e-5)
          self.assertEqual(list(line["class"]["scores"]), list(table.classes))
          self.assertAlmostEqual(sum(line["class"]["scores"].values()), 1.0,
                                 delta=1e-5)
          self.assertIn(line["class"]["class"], table.classes)
      answers[name] = [{k: l[k]["class"] for k in l if k != "image"}
                       for l in lines]
    for name in artefacts:
      self.assertEqual(answers[name], answers["keras"], name)


if __name__ == "__main__":
  tf.test.main()
