"""Flags and environment checked before any data is read: each bad value is
named, nothing is read or written, and the CLI answers without a traceback."""

import dataclasses
import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import parameterized
import tensorflow as tf

from mlc_keras.core import config as config_lib
from mlc_keras.runs import preflight
from mlc_keras.runs import folder as run_dir
from mlc_keras.training import run as train_lib
from tests import testutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLUSTER = {"worker": ["a:1", "b:1"]}


def _cfg(section: str = "train", **values) -> config_lib.Config:
  cfg = config_lib.tiny()
  return dataclasses.replace(cfg, **{section: dataclasses.replace(
      getattr(cfg, section), **values)})


# (config section, fields, the message's start): each a user's mistake.
_BAD = [
    ("data", {"image_size": 0}, "image_size=0: must be >= 32"),
    ("data", {"image_size": 8192}, "image_size=8192: must be >= 32 and <= 4096"),
    ("data", {"val_fraction": 1.0}, "val_fraction=1.0: must be >= 0 and < 1"),
    ("data", {"augment": ("flip", "rotate")},
     "augment=flip,rotate: unknown augmentation 'rotate'"),
    ("data", {"manifest": "/no/such.csv"}, "manifest=/no/such.csv: no such file"),
    ("data", {"tfrecord": "/no/train-*"}, "tfrecord=/no/train-\\*: matches no file"),
    ("data", {"manifest": "m", "tfds": "cifar10"},
     "give one of manifest, tfrecord or tfds, not manifest and tfds"),
    ("data", {"image_root": "/no/such/folder"},
     "image_root=/no/such/folder: no such folder"),
    ("model", {"backbone": "ResNet50"},
     "backbone=ResNet50: unknown backbone; choose one of ResNet50V2"),
    ("model", {"weights": "/no/weights.h5"}, "weights=/no/weights.h5: no such file"),
    ("model", {"dropout": 1.5}, "dropout=1.5: must be >= 0 and < 1"),
    ("model", {"head_projection": -8}, "head_projection=-8: must be >= 0"),
    ("model", {"head_pooling": "max"},
     "head_pooling=max: choose one of avg, attention"),
    ("train", {"batch_size": 0}, "batch_size=0: must be >= 1"),
    ("train", {"epochs": 0}, "epochs=0: must be >= 1"),
    ("train", {"steps_per_epoch": 0}, "steps_per_epoch=0: must be >= 1"),
    ("train", {"learning_rate": -1.0}, "learning_rate=-1.0: must be > 0"),
    ("train", {"learning_rate": 0.0}, "learning_rate=0.0: must be > 0"),
    ("train", {"learning_rate": float("nan")}, "learning_rate=nan: must be a number"),
    ("train", {"backup_every_steps": 0}, "backup_every_steps=0: must be >= 1"),
    ("train", {"top_k": 0}, "top_k=0: must be >= 1"),
    ("train", {"finetune_lr_scale": 0.0}, "finetune_lr_scale=0.0: must be > 0"),
    ("train", {"loss_weights": (("shape", -1.0),)},
     "loss_weights=shape=-1.0: must be a number >= 0"),
    ("train", {"weight_decay": -1.0}, "^weight_decay=-1.0"),
    ("train", {"strategy": "mirrored", "precision": "mixed_float16"},
     "strategy=mirrored: supports float32 without jit_compile only"),
    ("train", {"strategy": "mirrored", "freeze_epochs": 1},
     "freeze_epochs=1: is not supported with strategy=mirrored"),
    ("train", {"label_smoothing": (("*", 1.0),)},
     "label_smoothing=\\*=1.0: must be in \\[0, 1\\)"),
    ("train", {"clip_global_norm": 0.0}, "clip_global_norm=0.0: must be > 0"),
    ("train", {"ema_decay": 1.0}, "ema_decay=1.0: must be in \\(0, 1\\)"),
    ("train", {"strategy": "mirrored", "ema_decay": 0.99},
     "ema_decay=0.99: is not supported with strategy=mirrored"),
    ("train", {"strategy": "multi_worker"},
     "strategy=multi_worker needs the TF_CONFIG environment variable"),
]


class PreflightTest(parameterized.TestCase, tf.test.TestCase):

  def test_names_match_what_implements_them(self):
    from mlc_keras.data import pipeline  # pylint: disable=g-import-not-at-top
    from mlc_keras.modeling import model  # pylint: disable=g-import-not-at-top
    from mlc_keras.training import distributed  # pylint: disable=g-import-not-at-top
    from mlc_keras.training import fit  # pylint: disable=g-import-not-at-top
    from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
    self.assertEqual(config_lib.BACKBONES, model.BACKBONES)
    self.assertEqual(config_lib.HEAD_POOLINGS, model.HEAD_POOLINGS)
    self.assertEqual(config_lib.AUGMENTATIONS, pipeline.AUGMENTATIONS)
    self.assertEqual(config_lib.STRATEGIES, setup.STRATEGIES)
    self.assertEqual(config_lib.PRECISIONS, setup.PRECISIONS)
    backups = [p.backup_dir for p in fit.phases(
        _cfg(epochs=3, freeze_epochs=1).train, "/m")]
    self.assertEqual(set(run_dir.FIT_RESUME_STATE),
                     {os.path.basename(b) for b in backups}
                     | {fit.FROZEN_PHASE_WEIGHTS})
    self.assertEqual(run_dir.CHECKPOINT_DIR, distributed.CHECKPOINT_DIR)

  @parameterized.parameters(*_BAD)
  def test_bad_value_is_named(self, section, values, message):
    with self.assertRaisesRegex(preflight.FlagError, "^" + message):
      preflight.check(_cfg(section, **values))

  def test_weights_file_that_is_not_weights_is_named(self):
    tmp = self.get_temp_dir()
    cases = {
        "notes.h5": (b"not weights", "its content is not an HDF5 file"),
        "model.keras": (b"\x89HDF\r\n\x1a\n", "its content is not a "
                        ".keras \\(zip\\) file"),
        "weights.bin": (b"\x89HDF\r\n\x1a\n", "Keras reads weights from a "
                        "file named \\*.weights.h5, \\*.h5, \\*.hdf5 or "
                        "\\*.keras$"),
    }
    for name, (content, why) in cases.items():
      path = os.path.join(tmp, name)
      with open(path, "wb") as f:
        f.write(content)
      with self.subTest(name):
        with self.assertRaisesRegex(
            preflight.FlagError,
            f"^weights={path}: not a Keras weights file: {why}"):
          preflight.check(_cfg("model", weights=path))
    # The containers Keras reads pass (their contents are read by Keras).
    for name, content in (("ok.weights.h5", b"\x89HDF\r\n\x1a\n"),
                          ("ok.keras", b"PK\x03\x04")):
      path = os.path.join(tmp, name)
      with open(path, "wb") as f:
        f.write(content + bytes(100))
      self.assertIsNone(preflight.weights_file_problem(path))

  def test_good_values_pass(self):
    self.assertEqual(preflight.check(config_lib.tiny()), preflight.Plan())
    self.assertEqual(preflight.check(config_lib.demo()), preflight.Plan())
    self.assertEqual(preflight.check(config_lib.default()), preflight.Plan())

  def test_recipe_presets_pass_the_checks(self):
    for preset in ("scratch_small", "finetune_imagenet"):
      cfg = getattr(config_lib, preset)()
      preflight.check_ranges(cfg)
      config_lib.check_feed(cfg.data)
      self.assertEqual(cfg.model.backbone, "ResNet50V2")
    self.assertEqual(config_lib.PRESETS[:3], ("default", "demo", "tiny"))
    for preset in config_lib.PRESETS:
      self.assertIsInstance(getattr(config_lib, preset)(), config_lib.Config)

  def test_tf_config(self):
    def plan(task, cluster=None):
      return preflight.parse_tf_config(json.dumps(
          {"cluster": cluster or _CLUSTER, "task": task}))
    self.assertEqual(plan({"type": "worker", "index": 0}),
                     preflight.Plan(chief=True, workers=2))
    self.assertEqual(plan({"type": "worker", "index": 1}),
                     preflight.Plan(chief=False, workers=2))
    with_chief = {"chief": ["c:1"], **_CLUSTER}
    self.assertEqual(plan({"type": "chief", "index": 0}, with_chief),
                     preflight.Plan(chief=True, workers=3))
    self.assertFalse(plan({"type": "worker", "index": 0}, with_chief).chief)
    for text, message in [
        ("{bad", "TF_CONFIG is not valid JSON"),
        ("[]", "TF_CONFIG needs a \"cluster\" and a \"task\""),
        (json.dumps({"cluster": {"worker": "a:1"}, "task": {}}),
         "TF_CONFIG cluster.worker must be a list of \"host:port\""),
        (json.dumps({"cluster": _CLUSTER, "task": {"type": "ps", "index": 0}}),
         "TF_CONFIG task.type is 'ps'"),
        (json.dumps({"cluster": _CLUSTER,
                     "task": {"type": "worker", "index": 2}}),
         "TF_CONFIG task.index is 2; cluster.worker has 2 address"),
    ]:
      with self.assertRaisesRegex(preflight.FlagError, "^" + message):
        preflight.check(_cfg(strategy="multi_worker"), tf_config=text)
    # Read only by multi_worker.
    self.assertEqual(preflight.check(_cfg(), tf_config="{bad"), preflight.Plan())

  def test_imagenet_from_the_cache_or_reachable(self):
    cfg = _cfg("model", weights="imagenet", backbone="MobileNetV2")
    home = self.get_temp_dir()
    probe = mock.Mock(return_value="[Errno -2] Name or service not known")
    with self.assertRaisesRegex(
        preflight.FlagError,
        "^weights=imagenet: the MobileNetV2 weights are not in the Keras "
        f"cache \\({home}/models/mobilenet_v2_weights_tf_dim_ordering_tf_"
        "kernels_1.0_224_no_top.h5\\) and cannot be downloaded from https://"
        "storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
        ".*Name or service not known.*pass weights=/path/to/mobilenet_v2_"):
      preflight.check(cfg, keras_home=home, probe=probe)
    # tiny()'s 32 px has no file of its own: Keras uses the 224 one.
    probe.assert_called_once_with(
        "https://storage.googleapis.com/tensorflow/keras-applications/"
        "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224"
        "_no_top.h5")
    self.assertEqual(preflight.check(cfg, keras_home=home,
                                     probe=lambda url: None), preflight.Plan())
    os.makedirs(os.path.join(home, "models"))
    open(os.path.join(home, "models", preflight.imagenet_file(
        "MobileNetV2", 32)[0]), "w").close()
    probe.reset_mock()
    preflight.check(cfg, keras_home=home, probe=probe)
    probe.assert_not_called()  # cached: no network
    self.assertEqual(preflight.imagenet_file("ResNet101V2", 224)[0],
                     "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
    # Built under their Keras names (modeling/model.py), EfficientNetV2 and
    # ConvNeXt take ImageNet weights too: their files are looked up alike
    # (tests/modeling_backbones_test.py checks the names against Keras).
    self.assertEqual(preflight.imagenet_file("ConvNeXtTiny", 32), (
        "convnext_tiny_notop.h5", "https://storage.googleapis.com/tensorflow/"
        "keras-applications/convnext/convnext_tiny_notop.h5"))
    self.assertEqual(preflight.imagenet_file("EfficientNetV2S", 32)[0],
                     "efficientnetv2-s_notop.h5")
    with self.assertRaisesRegex(preflight.FlagError, "^weights=imagenet: "
                                "the ConvNeXtTiny weights are not in the "
                                "Keras cache"):
      preflight.check(_cfg("model", weights="imagenet", backbone="ConvNeXtTiny"),
                      keras_home=home, probe=probe)

  def test_unreachable_url_is_answered_quickly(self):
    # A refused local port: an error string, not an exception.
    self.assertIn("refused", preflight.probe_url("http://127.0.0.1:9/x", 1.0))

  def test_paths_become_absolute(self):
    cfg = preflight.absolute_paths(_cfg(
        "data", manifest="d/train.csv", tfrecord="t/train-*",
        demo_dir="demo"))
    self.assertEqual(cfg.data.manifest, os.path.abspath("d/train.csv"))
    self.assertEqual(cfg.data.tfrecord, os.path.abspath("t/train-*"))
    self.assertEqual(cfg.data.demo_dir, os.path.abspath("demo"))
    self.assertIsNone(cfg.data.val_manifest)
    self.assertEqual(preflight.absolute_paths(
        _cfg("model", weights="imagenet")).model.weights, "imagenet")


class NothingReadTest(tf.test.TestCase):
  """A bad flag stops train_and_evaluate before any data is read."""

  def test_bad_flags_read_no_manifest_and_write_nothing(self):
    from mlc_keras.data import manifest  # pylint: disable=g-import-not-at-top
    from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
    tmp = self.get_temp_dir()
    path = testutil.write_manifest(tmp, testutil.simple_rows(4))
    good = dataclasses.replace(
        config_lib.tiny(), data=dataclasses.replace(
            config_lib.tiny().data, manifest=path, val_fraction=0.0))
    bad = [dataclasses.replace(good, **{s: dataclasses.replace(
        getattr(good, s), **v)}) for s, v, _ in _BAD
           if "manifest" not in v and "tfds" not in v]
    reader = mock.Mock(side_effect=RuntimeError("manifest read"))
    with mock.patch.object(manifest, "read_manifest", reader), \
        mock.patch.object(setup.manifest_lib, "read_manifest", reader):
      for i, cfg in enumerate(bad):
        model_dir = os.path.join(tmp, f"run{i}")
        with self.assertRaises(preflight.FlagError):
          train_lib.train_and_evaluate(cfg, model_dir)
        self.assertFalse(os.path.exists(model_dir))
      reader.assert_not_called()
      # The reader is on the path: good flags reach it.
      with self.assertRaisesRegex(RuntimeError, "manifest read"):
        train_lib.train_and_evaluate(good, os.path.join(tmp, "good"))
    self.assertEqual(reader.call_count, 1)
    self.assertEqual(reader.call_args.args[0], path)


class CliTest(tf.test.TestCase):

  def _train(self, *args, env=None):
    extra, env = env or {}, dict(os.environ, PYTHONPATH=REPO,
                                 TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "mlc_keras.train", *args],
                          cwd=self.get_temp_dir(), env=env, capture_output=True,
                          text=True, timeout=120)

  def test_cluster_mistakes_exit_2_without_traceback(self):
    # The images of this manifest do not exist: reading them would fail
    # with another message.
    manifest = os.path.join(self.get_temp_dir(), "train.csv")
    with open(manifest, "w") as f:
      f.write("image,shape\nmissing.png,circle\nother.png,square\n")
    common = (f"--manifest={manifest}", "--strategy=multi_worker",
              "--model_dir=run")
    for env, message in [
        ({}, "error: --strategy=multi_worker needs the TF_CONFIG environment"),
        ({"TF_CONFIG": "{'cluster': 1}"}, "error: TF_CONFIG is not valid JSON"),
    ]:
      with self.subTest(message):
        proc = self._train(*common, env=env)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertStartsWith(proc.stderr, message)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(),
                                                     "run")))

  def test_tfds_without_the_extra_exits_2_naming_it(self):
    # sys.modules[name] = None: the import fails as if it were not installed.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; "
         "sys.modules['tensorflow_datasets'] = None; "
         "sys.argv = ['mlc-train', '--tfds=mnist', '--model_dir=run']; "
         "from mlc_keras import train; train.run()"],
        cwd=self.get_temp_dir(), env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True, text=True, timeout=120)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertEqual(
        proc.stderr, "error: --tfds=mnist: needs tensorflow-datasets, which is "
        "not installed: pip install -e '.[tfds]' (or pip install "
        "tensorflow-datasets==4.9.10)\n")
    self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(), "run")))


if __name__ == "__main__":
  tf.test.main()
