"""Tests of mlc_keras.cli.help: --help groups each verb's flags."""

import json
import os
import subprocess
import sys

from absl import flags
import tensorflow as tf

from mlc_keras.cli import help as cli_help

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The verb's console script (setup.cfg) called as pip's launcher calls it;
# stderr gets the names of every flag the verb's module defines.
_SCRIPT = ("import json, sys; from absl import flags; "
           "from mlc_keras import {verb} as m; "
           "print(json.dumps([f.name for f in "
           "flags.FLAGS.get_flags_for_module(m.__name__)]), file=sys.stderr); "
           "sys.argv = ['mlc-{verb}', '--help']; m.run()")

_HEADINGS = {
    "train": ["run folder:", "data:", "images and checks:", "augmentation:",
              "combinations:", "model:", "training:",
              "fine-tuning and growing a model:", "model selection:",
              "devices:"],
    "evaluate": ["run folder:", "data:", "calibration:", "composed classes:"],
    "export": ["run folder:", "export:", "parity and int8 images:",
               "composed classes:", "serving limits:"],
    "predict": ["model:", "data:", "composed classes:"],
    "tfrecord": ["data:", "output:"],
    "suggest": ["run folder:", "data:", "suggestions:", "pseudo-labels:"],
}


def _console_help(verb):
  out = subprocess.run([sys.executable, "-c", _SCRIPT.format(verb=verb)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  names = json.loads(out.stderr.strip().splitlines()[-1])
  return out.returncode, out.stdout, names


def _flag_lines(text):
  return [line.split(":")[0].strip().replace("--[no]", "--")
          for line in text.splitlines() if line.startswith("  --")]


class HelpTest(tf.test.TestCase):

  def test_every_verb_lists_its_flags_under_headings(self):
    for verb, headings in _HEADINGS.items():
      with self.subTest(verb=verb):
        rc, text, names = _console_help(verb)
        self.assertEqual(rc, 0, text)
        lines = text.splitlines()
        for heading in headings:
          self.assertIn(heading, lines)
        # Every flag of the verb once, none hidden (a flag no group names
        # shows under "other").
        self.assertCountEqual(_flag_lines(text), [f"--{n}" for n in names])
        self.assertIn("Try --helpfull", text)

  def test_train_core_flags_and_python_m(self):
    rc, console, _ = _console_help("train")
    self.assertEqual(rc, 0)
    out = subprocess.run([sys.executable, "-m", "mlc_keras.train", "--help"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(out.returncode, 0, out.stderr)
    # python -m names the module by its file path: the same text either way.
    self.assertEqual(out.stdout, console)
    flag_lines = _flag_lines(console)
    for name in ("--manifest", "--model_dir", "--epochs", "--image_size",
                 "--weights"):
      self.assertIn(name, flag_lines)
    self.assertLess(console.index("data:"), console.index("--manifest:"))
    self.assertLess(console.index("training:"), console.index("--epochs:"))
    self.assertIn("Trains a multi-head image classifier.", console)


class GroupedHelpTest(tf.test.TestCase):

  def test_ungrouped_flag_shows_under_other(self):
    fv = flags.FlagValues()
    a = flags.DEFINE_string("alpha", "x", "Alpha help.", flag_values=fv)
    flags.DEFINE_integer("beta", 3, "Beta help.", flag_values=fv)
    c = flags.DEFINE_bool("gamma", False, "Gamma help.", flag_values=fv)
    text = cli_help.grouped_help("Doc line.\n", {"first": (c, a)},
                                 flag_values=fv)
    self.assertTrue(text.startswith("Doc line.\n\nfirst:\n  --[no]gamma: "
                                    "Gamma help.\n"), text)
    self.assertLess(text.index("--[no]gamma"), text.index("--alpha"))
    self.assertIn("\nother:\n  --beta: Beta help.\n      (default: '3')",
                  text)

  def test_wants_help(self):
    self.assertTrue(cli_help.wants_help(["mlc-train", "--epochs=1", "--help"]))
    self.assertTrue(cli_help.wants_help(["mlc-train", "-?"]))
    self.assertFalse(cli_help.wants_help(["mlc-train", "--helpfull"]))
    self.assertFalse(cli_help.wants_help(["mlc-predict", "--", "--help"]))
    self.assertFalse(cli_help.wants_help(["mlc-train"]))


if __name__ == "__main__":
  tf.test.main()
