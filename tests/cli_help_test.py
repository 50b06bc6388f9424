"""Tests of mlc_keras.cli.help: --helpfull groups each verb's flags; train's
--help is its short core set."""

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
           "sys.argv = ['mlc-{verb}', '{arg}']; m.run()")

# train --help: the flags a first run needs, under these headings, in order.
_TRAIN_CORE = {
    "data:": ["--manifest", "--val_manifest", "--label_columns",
              "--heads_file", "--tfrecord", "--tfds", "--image_size"],
    "model:": ["--backbone", "--weights"],
    "training:": ["--epochs", "--batch_size", "--learning_rate"],
    "recipe:": ["--preset", "--augment", "--label_smoothing"],
    "run folder:": ["--model_dir", "--config", "--overwrite"],
}
# Measured: 80 lines with the 18 flags above (doc included); a flag's help
# growing a line is fine, a group of flags moving back into --help is not.
_TRAIN_HELP_MAX_LINES = 100

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


def _console_help(verb, arg="--helpfull"):
  out = subprocess.run([sys.executable, "-c",
                        _SCRIPT.format(verb=verb, arg=arg)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  names = json.loads(out.stderr.strip().splitlines()[-1])
  return out.returncode, out.stdout, names


def _flag_lines(text):
  return [line.split(":")[0].strip().replace("--[no]", "--")
          for line in text.splitlines() if line.startswith("  --")]


class HelpTest(tf.test.TestCase):

  def test_helpfull_lists_every_flag_under_headings(self):
    for verb, headings in _HEADINGS.items():
      with self.subTest(verb=verb):
        rc, text, names = _console_help(verb)
        self.assertEqual(rc, 0, text)
        lines = text.splitlines()
        for heading in headings:
          self.assertIn(heading, lines)
        # Every flag of the verb once, none hidden (a flag no group names
        # shows under "other"), and not absl's ungrouped dump.
        self.assertCountEqual(_flag_lines(text), [f"--{n}" for n in names])
        self.assertIn("Also absl's own flags: --flagfile", text)
        self.assertNotIn("absl.flags:", text)

  def test_other_verbs_help_is_their_helpfull(self):
    for verb in _HEADINGS:
      if verb == "train":
        continue
      with self.subTest(verb=verb):
        rc, text, _ = _console_help(verb, "--help")
        self.assertEqual(rc, 0, text)
        self.assertEqual(text, _console_help(verb)[1])

  def test_train_help_is_the_core_set(self):
    rc, text, names = _console_help("train", "--help")
    self.assertEqual(rc, 0, text)
    self.assertIn("Trains a multi-head image classifier.", text)
    core = [f for flags_ in _TRAIN_CORE.values() for f in flags_]
    self.assertCountEqual(_flag_lines(text), core)
    # Each flag under its heading, the headings in the order given.
    under, heading = {}, None
    for line in text.splitlines():
      if line in _TRAIN_CORE:
        heading = line
        under[heading] = []
      elif line.startswith("  --"):
        under[heading] += _flag_lines(line)
    self.assertEqual(under, _TRAIN_CORE)
    self.assertEqual(list(under), list(_TRAIN_CORE))
    self.assertIn(f"{len(names) - len(core)} more flags: --helpfull lists all "
                  f"{len(names)} under their groups.", text)
    self.assertLess(len(text.splitlines()), _TRAIN_HELP_MAX_LINES)

  def test_train_python_m_matches_console_script(self):
    for arg in ("--help", "--helpfull"):
      with self.subTest(arg=arg):
        _, console, _ = _console_help("train", arg)
        out = subprocess.run([sys.executable, "-m", "mlc_keras.train", arg],
                             cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        # python -m names the module by its file path: the same text either
        # way.
        self.assertEqual(out.stdout, console)


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

  def test_core_help_counts_the_rest(self):
    fv = flags.FlagValues()
    a = flags.DEFINE_string("alpha", "x", "Alpha help.", flag_values=fv)
    b = flags.DEFINE_integer("beta", 3, "Beta help.", flag_values=fv)
    c = flags.DEFINE_bool("gamma", False, "Gamma help.", flag_values=fv)
    text = cli_help.core_help("Doc line.\n", {"core": (b,)},
                              {"first": (a, b, c)}, flag_values=fv)
    self.assertEqual(text, "Doc line.\n\ncore:\n  --beta: Beta help.\n"
                     "      (default: '3')\n      (an integer)\n\n"
                     "2 more flags: --helpfull lists all 3 under their "
                     "groups.\n")

  def test_wants_help(self):
    self.assertEqual(cli_help.wants_help(["mlc-train", "--epochs=1", "--help"]),
                     "help")
    self.assertEqual(cli_help.wants_help(["mlc-train", "-?"]), "help")
    self.assertEqual(cli_help.wants_help(["mlc-train", "--helpshort"]), "help")
    for arg in ("--helpfull", "-helpfull", "--helpfull=true"):
      self.assertEqual(cli_help.wants_help(["mlc-train", arg]), "helpfull")
    # The first one asked for wins, as in absl.
    self.assertEqual(cli_help.wants_help(["mlc-train", "--helpfull",
                                          "--help"]), "helpfull")
    self.assertIsNone(cli_help.wants_help(["mlc-train", "--nohelpfull"]))
    self.assertIsNone(cli_help.wants_help(["mlc-predict", "--", "--help"]))
    self.assertIsNone(cli_help.wants_help(["mlc-train"]))


if __name__ == "__main__":
  tf.test.main()
