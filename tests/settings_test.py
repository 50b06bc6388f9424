"""Each config field declares its flag, group, range, path-ness and
resumability once (core/settings.py); the flags, the range checks and the
resume table follow from it."""

import dataclasses
import json
import subprocess
import sys

from absl.testing import absltest

from mlc_keras.cli import help as cli_help
from mlc_keras.core import config as config_lib
from mlc_keras.core import settings
from mlc_keras.runs import folder as run_dir
from mlc_keras.runs import preflight


class DeclarationTest(absltest.TestCase):

  def test_every_field_is_declared_once(self):
    fields = [f"{s.name}.{f.name}"
              for s in dataclasses.fields(config_lib.Config)
              for f in dataclasses.fields(s.default)]
    self.assertEqual([d.key for d in config_lib.SETTINGS], fields)
    names = [d.name for d in config_lib.SETTINGS]
    # A message names a field without its section: names are unique.
    self.assertLen(set(names), len(names))
    for d in config_lib.SETTINGS:
      self.assertIn(d.setting.group, settings.GROUPS, d.key)

  def test_a_field_without_a_declaration_is_refused(self):
    @dataclasses.dataclass(frozen=True)
    class Section:
      a: int = settings.setting(1, "data")
      b: int = 2

    @dataclasses.dataclass(frozen=True)
    class Whole:
      s: Section = Section()

    with self.assertRaisesRegex(TypeError, "s.b is not declared"):
      settings.declared(Whole)

  # train defines its flags on absl's global FLAGS when imported, and a
  # test process (an xdist worker collects every test file) also imports
  # benchmark modules with flags of the same names: train's flags are read
  # in a process of their own, as the other tests of train do.
  _TRAIN_FLAGS = (
      "import json; from absl import flags; from mlc_keras import train\n"
      "out = {name: {'default': repr(f.default), 'help': f.help or '',\n"
      "              'upper': getattr(f.parser, 'upper_bound', None)}\n"
      "       for f in flags.FLAGS.get_flags_for_module(train.__name__)\n"
      "       for name in [f.name]}\n"
      "print(json.dumps({'flags': out, 'cli_only': list(train.CLI_ONLY_FLAGS),\n"
      "                  'parse': list(train._PARSE)}))\n")

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    done = subprocess.run([sys.executable, "-c", cls._TRAIN_FLAGS],
                          capture_output=True, text=True, check=False)
    if done.returncode:
      raise AssertionError(f"importing train failed:\n{done.stderr[-2000:]}")
    cls.train = json.loads(done.stdout.strip().splitlines()[-1])

  def test_every_train_flag_sets_a_field_or_is_cli_only(self):
    defined = set(self.train["flags"])
    cli_only = set(self.train["cli_only"])
    declared = {d.setting.flag for d in config_lib.SETTINGS
                if d.setting.flag is not None}
    self.assertEmpty(declared - defined, "declared flags train lacks")
    self.assertEmpty(defined - declared - cli_only,
                     "train flags no field declares (add them to the field, "
                     "or to CLI_ONLY_FLAGS)")
    self.assertEmpty(cli_only & declared)
    # Each parser belongs to a field set by a flag.
    flagged = {d.name for d in config_lib.SETTINGS if d.setting.flag}
    self.assertEmpty(set(self.train["parse"]) - flagged)

  def test_flags_defined_from_their_declaration(self):
    generated = [d for d in config_lib.SETTINGS if d.setting.help]
    self.assertNotEmpty(generated)
    flags = self.train["flags"]
    for d in generated:
      flag = flags[d.setting.flag]
      self.assertEqual(flag["default"], repr(d.default), d.key)
      self.assertNotIn("`", flag["help"], d.key)  # settings shown as flags
    self.assertIn("--strategy=mirrored", flags["xla"]["help"])
    self.assertEqual(flags["randaugment_magnitude"]["upper"], 1)

  def test_flag_names_in_errors(self):
    self.assertEqual(cli_help.flag_name("jit_compile"), "--xla")
    self.assertEqual(cli_help.flag_name("weight_decay"),
                     "--preset (weight_decay)")
    self.assertEqual(cli_help.flag_name("image_size"), "--image_size")
    self.assertEqual(cli_help.flag_name("model_dir"), "--model_dir")


class GeneratedTablesTest(absltest.TestCase):

  def test_resume_table(self):
    self.assertEqual(run_dir.RESUMABLE_CHANGES, {
        "data.cache", "data.deterministic", "data.validate_images",
        "data.image_root", "data.max_image_pixels", "data.quarantine",
        "data.data_service", "train.epochs", "train.learning_rate",
        "train.jit_compile", "train.top_k", "train.backup_every_steps"})

  def test_path_fields(self):
    self.assertEqual(set(run_dir._PATH_FIELDS), {  # pylint: disable=protected-access
        "data.manifest", "data.val_manifest", "data.tfrecord",
        "data.val_tfrecord", "data.heads_file", "data.image_root",
        "data.demo_dir", "data.tfds_data_dir", "model.weights",
        "train.init_from"})
    cfg = config_lib.Config(
        data=config_lib.DataConfig(manifest="m.csv",
                                   holdout_combinations="a=b+c=d"),
        model=config_lib.ModelConfig(weights="imagenet"),
        train=config_lib.TrainConfig(init_from="runs/a"))
    got = preflight.absolute_paths(cfg)
    self.assertTrue(got.data.manifest.startswith("/"))
    self.assertTrue(got.data.demo_dir.startswith("/"))
    self.assertTrue(got.train.init_from.startswith("/"))
    self.assertEqual(got.model.weights, "imagenet")  # a keyword, no file
    self.assertEqual(got.data.holdout_combinations, "a=b+c=d")  # inline

  def test_ranges(self):
    problem = settings.problem

    def declared(name):
      return next(d.setting for d in config_lib.SETTINGS if d.name == name)

    self.assertEqual(problem(16, declared("image_size")),
                     "must be >= 32 and <= 4096")
    self.assertIsNone(problem(4096, declared("image_size")))
    self.assertEqual(problem(2.5, declared("batch_size")),
                     "must be an integer")
    self.assertEqual(problem(True, declared("dropout")), "must be a number")
    self.assertEqual(problem(0, declared("learning_rate")), "must be > 0")
    self.assertIsNone(problem(None, declared("steps_per_epoch")))
    self.assertEqual(problem(None, declared("epochs")), "must be an integer")
    self.assertEqual(problem("rmsprop", declared("optimizer")),
                     "choose one of adamw, sgd")
    self.assertEqual(settings.problems(config_lib.tiny()), [])
    bad = dataclasses.replace(config_lib.tiny(), train=dataclasses.replace(
        config_lib.tiny().train, top_k=0, strategy="tpu"))
    self.assertEqual(settings.problems(bad), [
        ("strategy", "tpu", "choose one of default, mirrored, multi_worker"),
        ("top_k", 0, "must be >= 1")])


if __name__ == "__main__":
  absltest.main()
