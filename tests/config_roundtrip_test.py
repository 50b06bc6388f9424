"""config.json loads back as the Config that wrote it, and train's --config
starts from one: what a run recorded is what a new run can be given."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

from mlc_keras.core import config as config_lib
from mlc_keras.core import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints the Config train builds from the flags given (no TensorFlow).
_PRINT_CONFIG = ("import sys; from absl import flags; "
                 "from mlc_keras import train; flags.FLAGS(sys.argv); "
                 "print(train.config_from_flags().to_json())")


def _tempdir(test) -> str:
  # absltest's create_tempdir needs parsed flags, which pytest does not give.
  path = tempfile.mkdtemp(prefix="config_roundtrip_")
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _train_flags(*args, script=_PRINT_CONFIG):
  return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=REPO))


class RoundTripTest(parameterized.TestCase):

  @parameterized.parameters(*config_lib.PRESETS)
  def test_every_preset_round_trips(self, preset):
    cfg = getattr(config_lib, preset)()
    self.assertEqual(config_lib.Config.from_dict(json.loads(cfg.to_json())),
                     cfg)
    path = os.path.join(_tempdir(self), "config.json")
    with open(path, "w") as f:
      f.write(cfg.to_json())
    loaded = config_lib.load(path)
    self.assertEqual(loaded, cfg)
    # Tuples come back as tuples (a list would not equal, nor hash).
    self.assertIsInstance(loaded.data.crop_ratio, tuple)
    self.assertEqual(config_lib.load(os.path.dirname(path)), cfg)  # a folder

  def test_nested_tuples(self):
    cfg = dataclasses.replace(config_lib.tiny(), train=dataclasses.replace(
        config_lib.tiny().train, loss_weights=(("shape", 2.0),),
        label_smoothing=(("*", 0.1),), factor_heads=("a", "b")))
    loaded = config_lib.Config.from_dict(json.loads(cfg.to_json()))
    self.assertEqual(loaded, cfg)
    self.assertEqual(loaded.train.loss_weights, (("shape", 2.0),))
    hash(loaded)

  def test_an_older_file_missing_keys_takes_the_defaults(self):
    loaded = config_lib.Config.from_dict({"data": {"image_size": 64}})
    self.assertEqual(loaded, config_lib.Config(
        data=config_lib.DataConfig(image_size=64)))

  def test_unknown_keys_are_one_error_naming_file_and_key(self):
    folder = _tempdir(self)
    path = os.path.join(folder, "config.json")
    d = config_lib.tiny().to_dict()
    d["train"]["learning_rat"] = 0.1
    with open(path, "w") as f:
      json.dump(d, f)
    with self.assertRaisesRegex(
        errors.SettingError,
        f"^{re.escape(path)}: unknown config key 'train.learning_rat' "):
      config_lib.load(path)
    d["extra"] = {}
    with self.assertRaisesRegex(errors.SettingError,
                                "unknown config keys 'extra', "
                                "'train.learning_rat'"):
      config_lib.Config.from_dict(d, source=path)

  def test_unreadable_files(self):
    folder = _tempdir(self)
    with self.assertRaisesRegex(errors.SettingError,
                                re.escape(f"{folder}/config.json: cannot read")):
      config_lib.load(folder)
    path = os.path.join(folder, "bad.json")
    with open(path, "w") as f:
      f.write("{not json")
    with self.assertRaisesRegex(errors.SettingError,
                                re.escape(f"{path}: not a JSON config")):
      config_lib.load(path)
    with open(path, "w") as f:
      f.write('{"data": [1]}')
    with self.assertRaisesRegex(errors.SettingError,
                                "config key 'data' must be an object"):
      config_lib.load(path)


class ConfigFlagTest(absltest.TestCase):
  """train --config=<config.json or run folder> plus flags."""

  def setUp(self):
    super().setUp()
    self.folder = _tempdir(self)
    data = dataclasses.replace(
        config_lib.scratch_small().data, manifest="/data/train.csv",
        tfds_val_split=None, data_service="grpc://d:5000",
        label_columns=("shape", "colour"))
    train = dataclasses.replace(config_lib.scratch_small().train,
                                optimizer="sgd", epochs=7,
                                loss_weights=(("shape", 2.0),))
    self.recorded = dataclasses.replace(config_lib.scratch_small(),
                                        data=data, train=train)
    self.path = os.path.join(self.folder, "config.json")
    with open(self.path, "w") as f:
      f.write(self.recorded.to_json())

  def config(self, *args):
    proc = _train_flags(*args)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    return config_lib.Config.from_dict(json.loads(proc.stdout))

  def test_the_file_alone_is_the_recorded_config(self):
    self.assertEqual(self.config(f"--config={self.path}"), self.recorded)
    self.assertEqual(self.config(f"--config={self.folder}"), self.recorded)

  def test_flags_given_override_the_file(self):
    # A flag given wins even when it equals the flag's default (adamw).
    got = self.config(f"--config={self.path}", "--epochs=3",
                      "--optimizer=adamw", "--label_columns=shape",
                      "--weights=none", "--crop_scale=0.5,1")
    expected = dataclasses.replace(
        self.recorded,
        data=dataclasses.replace(self.recorded.data, label_columns=("shape",),
                                 crop_scale=(0.5, 1.0)),
        train=dataclasses.replace(self.recorded.train, epochs=3,
                                  optimizer="adamw"))
    self.assertEqual(got, expected)

  def test_mistakes_are_one_line_and_exit_2(self):
    d = self.recorded.to_dict()
    d["data"]["imagesize"] = 32
    bad = os.path.join(self.folder, "bad.json")
    with open(bad, "w") as f:
      json.dump(d, f)
    for args, message in (
        ([f"--config={bad}"],
         f"error: {bad}: unknown config key 'data.imagesize'"),
        ([f"--config={self.folder}/none.json"],
         f"error: {self.folder}/none.json: cannot read the config"),
        ([f"--config={self.path}", "--preset=tiny"],
         "error: give --config or --preset, not both")):
      with self.subTest(args=args):
        proc = subprocess.run(
            [sys.executable, "-m", "mlc_keras.train", *args], cwd=REPO,
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=REPO))
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        self.assertLen(lines, 1, proc.stderr)
        self.assertStartsWith(lines[0], message)


if __name__ == "__main__":
  absltest.main()
