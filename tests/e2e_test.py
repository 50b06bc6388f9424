"""The real user path, through the command lines, on tiny settings:

  python -m mlc_keras.train --preset=tiny ...
  python -m mlc_keras.export --formats=saved_model,tflite,onnx \
      --quantization=fp32 --class_table=classes.csv ...
  python -m mlc_keras.predict --model=<each artefact> <images>

Each step runs in its own process, as a user runs it; what the steps do in
detail is tested in train_test, export_lib_test and predict_test. This test
asserts that they fit together: the exported artefacts give the .keras
model's answers, head by head and for the composed classes. And a
newcomer's path: the commands train prints after a run work as printed,
for runs of two seeds (the default export publishes its quantized
variants only if each passes its parity gate, and a gate is met or missed
by the model at hand).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from mlc_keras.labeling import compose
from mlc_keras.core import heads as heads_lib
from mlc_keras.data import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 6
# The seed of the second newcomer run (the first has train's default, 0).
SECOND_SEED = 1
# What the default export publishes for a run folder named "run" (export's
# --formats and --quantization defaults: every format, the float TFLite
# variants), under <run>/export.
DEFAULT_PUBLISHED = ("run/1/saved_model.pb", "litert/run/1/run_fp32.tflite",
                     "litert/run/1/run_fp16.tflite",
                     "litert/run/1/run_dynamic.tflite", "onnx/run/1/run.onnx")


class Cli:
  """``python -m mlc_keras.<module> <args>`` started in its own process;
  output goes to files (a full pipe cannot block it while another runs)."""

  def __init__(self, folder: str, module: str, *args: str,
               cwd: str = REPO):
    self.module = module
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.out = tempfile.TemporaryFile("w+", dir=folder)
    self.err = tempfile.TemporaryFile("w+", dir=folder)
    self.proc = subprocess.Popen(
        [sys.executable, "-m", f"mlc_keras.{module}", *args], cwd=cwd,
        stdout=self.out, stderr=self.err, text=True, env=env)

  def result(self) -> str:
    """Waits for the process; its stdout, or AssertionError with its output."""
    try:
      code = self.proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise
    self.out.seek(0)
    self.err.seek(0)
    stdout, stderr = self.out.read(), self.err.read()
    self.out.close()
    self.err.close()
    if code != 0:
      raise AssertionError(
          f"python -m mlc_keras.{self.module} exited {code}:\n"
          f"{stdout[-3000:]}\n{stderr[-3000:]}")
    return stdout

  def stop(self) -> None:
    """Kills the process if it is still running (a failed test's cleanup)."""
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.out.close()
    self.err.close()


class EndToEndTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="e2e_test_")
    # One tiny training serves the first two tests, run as a newcomer runs
    # it: from the folder it writes into, relative paths, its "Next:" lines
    # kept. The second seed's run, for the last test, trains alongside.
    cls.work = os.path.join(cls.root, "newcomer")
    cls.second_work = os.path.join(cls.root, f"newcomer_seed{SECOND_SEED}")
    os.makedirs(cls.work)
    os.makedirs(cls.second_work)
    cls.second_training = Cli(
        cls.root, "train", "--preset=tiny", f"--seed={SECOND_SEED}",
        "--model_dir=run", "--demo_dir=demo_data", cwd=cls.second_work)
    cls.printed = Cli(cls.root, "train", "--preset=tiny", "--model_dir=run",
                      "--demo_dir=demo_data", cwd=cls.work).result()
    cls.model_dir = os.path.join(cls.work, "run")
    cls.demo_dir = os.path.join(cls.work, "demo_data")

  @classmethod
  def tearDownClass(cls):
    cls.second_training.stop()
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_train_export_predict(self):
    model_dir, demo_dir = self.model_dir, self.demo_dir
    self.assertTrue(os.path.isfile(os.path.join(model_dir, "model.keras")))

    table_path = compose.write_demo_table(os.path.join(self.root, "classes.csv"))
    table = compose.load(table_path, demo.SCHEMA)
    # The run's labels.json holds the tag thresholds fitted on validation.
    thresholds = {h.name: h.thresholds for h in heads_lib.LabelSchema.load(
        model_dir).heads if h.is_tags}
    self.assertEqual(set(thresholds), {"marks"})
    self.assertLen(thresholds["marks"], 3)
    # A few held-out demo images, blue triangles (never in training) among them.
    with open(os.path.join(demo_dir, "heldout.csv"), newline="") as f:
      rows = list(csv.DictReader(f))[:NUM_IMAGES]
    images = [os.path.join(demo_dir, r["image"]) for r in rows]

    # A model trained for 2 steps is unsure of everything: --threshold=0
    # makes the class answer the best class rather than "unknown", so that
    # artefacts are compared on a real decision. The .keras model has no
    # "class" output and needs the table; the exports carry it.
    # The processes that do not depend on each other run side by side (the
    # .keras prediction during the export, then one per artefact): each
    # spends seconds in single-threaded start-up, which overlaps.
    predictions = {}
    self.addCleanup(lambda: [cli.stop() for cli in predictions.values()])
    predictions["keras"] = Cli(
        self.root, "predict",
        f"--model={os.path.join(model_dir, 'model.keras')}", "--threshold=0",
        f"--class_table={table_path}", *images)
    base = os.path.join(self.root, "export")
    Cli(self.root, "export", f"--model_dir={model_dir}", f"--output={base}",
        "--formats=saved_model,tflite,onnx", "--quantization=fp32",
        f"--class_table={table_path}").result()
    with open(os.path.join(base, "parity", "run", "1.json")) as f:
      parity = json.load(f)
    for report in parity["reports"]:
      self.assertTrue(report["passed"], report)
      self.assertIn("class", report["outputs"])

    artefacts = {
        "saved_model": os.path.join(base, "run", "1"),
        "tflite": os.path.join(base, "litert", "run", "1", "run_fp32.tflite"),
        "onnx": os.path.join(base, "onnx", "run", "1", "run.onnx"),
    }
    for name, path in artefacts.items():
      predictions[name] = Cli(self.root, "predict", f"--model={path}",
                              "--threshold=0", *images)
    answers = {}
    for name, cli in predictions.items():
      lines = [json.loads(l) for l in cli.result().splitlines()]
      with self.subTest(name):
        self.assertEqual([l["image"] for l in lines], images)
        for line in lines:
          self.assertEqual(list(line), ["image", *demo.SCHEMA.names, "class"])
          for h in demo.SCHEMA.heads:
            self.assertEqual(list(line[h.name]["scores"]), list(h.classes))
            if h.is_tags:
              # Independent sigmoids: each tag on iff it reaches its threshold.
              self.assertEqual(list(line[h.name]), ["tags", "scores"])
              self.assertEqual(line[h.name]["tags"], [
                  t for t, th in zip(h.classes, thresholds[h.name])
                  if line[h.name]["scores"][t] >= th])
              continue
            self.assertAlmostEqual(sum(line[h.name]["scores"].values()), 1.0,
                                   delta=1e-5)
          self.assertEqual(list(line["class"]["scores"]), list(table.classes))
          self.assertAlmostEqual(sum(line["class"]["scores"].values()), 1.0,
                                 delta=1e-5)
          self.assertIn(line["class"]["class"], table.classes)
      answers[name] = [{k: l[k].get("class", l[k].get("tags"))
                        for k in l if k != "image"} for l in lines]
    self.assertLen(answers, 4)
    for name in answers:
      self.assertEqual(answers[name], answers["keras"], name)

  def test_printed_next_steps_succeed_as_printed(self):
    self._check_printed_next_steps(self.work, self.printed)

  def test_printed_next_steps_succeed_for_a_second_seed(self):
    # Another model of the same demo: the gates of the default export's
    # quantized variants are met by one model and may be missed by another.
    self._check_printed_next_steps(self.second_work,
                                  self.second_training.result())

  def _check_printed_next_steps(self, work: str, printed: str) -> None:
    """A newcomer copies train's "Next:" lines into the same shell: run each
    as printed, from the folder where train ran, with relative paths and
    every other flag at its default (export: all formats and its default
    TFLite variants, published only if every one passes parity)."""
    # Paths that travel: config.json names the demo set absolutely.
    with open(os.path.join(work, "run", "config.json")) as f:
      self.assertEqual(json.load(f)["data"]["demo_dir"],
                       os.path.join(work, "demo_data"))
    steps = [l.strip() for l in printed.split("Next:", 1)[1].splitlines()
             if l.strip().startswith("python -m mlc_keras.")]
    self.assertEqual([s.split()[2] for s in steps],
                     ["mlc_keras.evaluate", "mlc_keras.export",
                      "mlc_keras.predict"])
    # No placeholder to fill in: the demo run names its held-out images.
    # (config.json records absolute paths, so the line runs from anywhere.)
    self.assertEqual(
        os.path.realpath(os.path.join(work, steps[2].split()[-1])),
        os.path.realpath(os.path.join(work, "demo_data", "heldout.csv")))
    with open(os.path.join(work, "demo_data", "heldout.csv"), newline="") as f:
      heldout = [r["image"] for r in csv.DictReader(f)]
    # Split as the shell splits them (paths are printed shell-quoted).
    commands = [shlex.split(step) for step in steps]
    outputs = [Cli(self.root, command[2].split(".", 1)[1], *command[3:],
                   cwd=work).result() for command in commands]
    self.assertIn("shape", outputs[0])  # evaluate prints its report
    with open(os.path.join(work, "run", "export", "parity", "run",
                           "1.json")) as f:
      reports = json.load(f)["reports"]
    self.assertGreaterEqual(len(reports), 5)  # SavedModel, 3 TFLite, ONNX
    for report in reports:
      self.assertTrue(report["passed"], report)
    for path in DEFAULT_PUBLISHED:
      self.assertTrue(os.path.isfile(os.path.join(work, "run", "export", path)),
                      path)
    lines = [json.loads(l) for l in outputs[2].splitlines()
             if l.startswith("{")]
    self.assertLen(lines, len(heldout))
    self.assertEqual(list(lines[0]), ["image", *demo.SCHEMA.names])


if __name__ == "__main__":
  tf.test.main()
