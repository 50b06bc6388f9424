"""The README's "From Python" example, run as written, in a fresh folder."""

from __future__ import annotations

import contextlib
import io
import os

import markdown_it
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_example(path: str = os.path.join(REPO, "README.md")) -> str:
  """The first python code block after the "From Python" heading."""
  with open(path, encoding="utf-8") as f:
    tokens = markdown_it.MarkdownIt().parse(f.read())
  in_section = False
  for i, t in enumerate(tokens):
    if t.type == "heading_open" and t.tag == "h2":
      in_section = tokens[i + 1].content == "From Python"
    if in_section and t.type == "fence" and t.info.strip() == "python":
      return t.content
  raise AssertionError("README has no python block under '## From Python'")


class ReadmePythonTest(tf.test.TestCase):

  def test_example_is_short(self):
    self.assertLessEqual(len(python_example().strip().splitlines()), 25)

  def test_example_trains_evaluates_exports_and_predicts(self):
    code = python_example()
    folder = self.get_temp_dir()
    old = os.getcwd()
    os.chdir(folder)
    out = io.StringIO()
    try:
      with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (From Python)", "exec"), {})  # pylint: disable=exec-used
    finally:
      os.chdir(old)
    run = os.path.join(folder, "mlc_runs", "py")
    for name in ("model.keras", "results.json", "evaluation.json"):
      self.assertTrue(os.path.exists(os.path.join(run, name)), name)
    tflite = os.path.join(run, "export", "litert", "py", "1", "py_fp32.tflite")
    self.assertTrue(os.path.exists(tflite))
    self.assertTrue(os.path.exists(os.path.join(folder, "mlc_runs", "py_own.keras")))
    # The three prediction lines: an image, then a shape and a colour class.
    lines = [l.split() for l in out.getvalue().splitlines()
             if l.endswith(("red", "green", "blue"))]
    self.assertLen(lines, 3)
    for image, shape, colour in lines:
      self.assertTrue(os.path.exists(image))
      self.assertIn(shape, ("circle", "square", "triangle"))


if __name__ == "__main__":
  tf.test.main()
