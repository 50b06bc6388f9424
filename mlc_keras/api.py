"""The Python API: what the command lines do, as functions.

  import mlc_keras

  demo = mlc_keras.demo_data("mlc_runs/demo_data")
  run = mlc_keras.fit("mlc_runs/py", manifest=demo["train"],
                      val_manifest=demo["val"], image_size=48, epochs=5)
  run.evaluate()
  exported = run.export()
  print(run.predict_files([...], artefact=exported.onnx))

(``Run`` holds the verbs, so ``mlc_keras.evaluate`` and ``mlc_keras.export``
stay the command-line modules.)

``fit`` is what ``python -m mlc_keras.train`` runs (phases, EMA, backups
and resume, best-epoch selection, tag thresholds, results.json), with the
settings as keywords (each a field of DataConfig, ModelConfig or
TrainConfig) or a whole Config, and optionally your own model.
``build_model`` and ``make_dataset`` are the pieces for a plain Keras
loop: a compiled multi-head model (masked per-head losses and metrics) and
batches of (uint8 images, {head: label}, {head: sample weight}).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from mlc_keras.core import config as config_lib
from mlc_keras.core import heads as heads_lib

_SECTIONS = (("data", config_lib.DataConfig), ("model", config_lib.ModelConfig),
             ("train", config_lib.TrainConfig))


def _field_types() -> dict[str, tuple[str, Any]]:
  """{setting: (section, its type)} over the three config sections."""
  out = {}
  for section, kind in _SECTIONS:
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
      out[f.name] = (section, hints[f.name])
  return out


def _coerce(name: str, kind, value):
  """A keyword's value in the field's own shape: tuples from lists or
  comma-separated strings, (head, value) pairs from a mapping."""
  if typing.get_origin(kind) is not tuple or value is None:
    return value
  args = typing.get_args(kind)
  if args and typing.get_origin(args[0]) is tuple:  # ((head, value), ...)
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), float(v)) for k, v in items)
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(",") if v.strip())
  if isinstance(value, Mapping):
    raise TypeError(f"setting {name!r} takes a sequence, not a mapping")
  return tuple(value)


def make_config(preset: str = "default",
                config: Optional[config_lib.Config] = None,
                **settings) -> config_lib.Config:
  """A Config: ``config`` (or the preset named ``preset``: one of
  config.PRESETS) with ``settings`` replacing its fields, each named as in
  DataConfig, ModelConfig or TrainConfig (``manifest=``, ``image_size=``,
  ``epochs=``, ``learning_rate=``, ``augment=("crop",)``, ...). An unknown
  name raises TypeError, as an unknown keyword does."""
  if config is None:
    if preset not in config_lib.PRESETS:
      raise TypeError(f"unknown preset {preset!r}; choose one of "
                      f"{', '.join(config_lib.PRESETS)}")
    config = getattr(config_lib, preset)()
  types = _field_types()
  unknown = sorted(set(settings) - set(types))
  if unknown:
    raise TypeError(f"unknown setting(s) {', '.join(unknown)}; see the fields "
                    "of mlc_keras.DataConfig, ModelConfig and TrainConfig")
  changes: dict[str, dict] = {section: {} for section, _ in _SECTIONS}
  for name, value in settings.items():
    section, kind = types[name]
    changes[section][name] = _coerce(name, kind, value)
  return config_lib.Config(**{
      section: dataclasses.replace(getattr(config, section), **changes[section])
      for section, _ in _SECTIONS})


ModelBuilder = Callable[[heads_lib.LabelSchema, int], Any]


def fit(model_dir: str, config: Optional[config_lib.Config] = None, *,
        model: Union[None, ModelBuilder, Any] = None,
        overwrite: bool = False, verbose: int = 2, **settings) -> "Run":
  """Trains into ``model_dir`` as ``python -m mlc_keras.train`` does and
  returns the Run (its ``results``: the validation results, results.json).

  config: a Config (default: the default preset); ``settings`` replace its
    fields (see make_config). Without a data source the embedded demo set
    is generated and used.
  model: None (the configured backbone and heads), a function
    ``(schema, image_size) -> keras.Model`` (called in the distribution
    strategy's scope, again on each restart), or a built keras.Model (the
    default strategy only). The model takes uint8 [image_size, image_size, 3]
    images and has one output per head, named after it, one column per
    class: build_model makes one from any backbone.
  overwrite: start over in a folder holding a finished or different run
    (otherwise an unfinished run resumes from its last backup).
  verbose: Keras' progress output (2: one line per epoch).

  Raises what train_lib.train_and_evaluate raises (a bad setting, a folder
  owned by another run, bad data: each names what is wrong).
  """
  from mlc_keras.training import run as train_lib  # pylint: disable=g-import-not-at-top
  cfg = make_config(config=config, **settings) if (
      config is not None or settings) else config_lib.default()
  build = model
  if model is not None and not callable(model):
    raise TypeError("model must be a keras.Model or a function "
                    "(schema, image_size) -> keras.Model")
  if model is not None and _is_keras_model(model):
    if cfg.train.strategy != "default":
      raise TypeError("a built keras.Model trains with the default strategy "
                      "only; pass a function that builds it instead")
    built = model
    build = lambda schema, image_size: built
  train_lib.train_and_evaluate(cfg, model_dir, verbose=verbose,
                               overwrite=overwrite, build_model=build)
  return Run(model_dir)


def _is_keras_model(obj) -> bool:
  import keras  # pylint: disable=g-import-not-at-top
  return isinstance(obj, keras.Model)


def as_schema(schema) -> heads_lib.LabelSchema:
  """A LabelSchema from a LabelSchema, a labels.json path (or a run folder
  holding one), a .keras file that carries one, or {head: [classes]}."""
  if isinstance(schema, heads_lib.LabelSchema):
    return schema
  if isinstance(schema, Mapping):
    if "heads" in schema:
      return heads_lib.LabelSchema.from_dict(schema)
    return heads_lib.LabelSchema(tuple(
        heads_lib.HeadSpec(str(name), tuple(str(c) for c in classes))
        for name, classes in schema.items()))
  if isinstance(schema, str) and schema.endswith(".keras"):
    return load_schema(schema)
  if isinstance(schema, str):
    return heads_lib.LabelSchema.load(schema)
  raise TypeError(f"cannot make a label schema from {type(schema).__name__}")


def load_schema(path: str) -> heads_lib.LabelSchema:
  """The label schema a .keras file carries (or, for a file saved without
  one, the labels.json beside it); a labels.json path or run folder works
  too."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import saving  # pylint: disable=g-import-not-at-top
  if path.endswith(".keras"):
    text = saving.read_schema_text(path)
    if text is not None:
      return heads_lib.LabelSchema.from_dict(
          json.loads(text), source=f"{path} (embedded labels.json)")
    path = os.path.join(os.path.dirname(os.path.abspath(path)), "labels.json")
  return heads_lib.LabelSchema.load(path)


def load_model(path: str):
  """A saved .keras model (safe mode on), with ``model.label_schema`` set to
  the schema it carries (see load_schema). A run folder loads its
  model.keras."""
  import os  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import saving  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    path = os.path.join(path, "model.keras")
  model = saving.load_model(path)
  model.label_schema = load_schema(path)
  return model


def build_model(schema, backbone: Union[str, Any] = "ResNet50V2", *,
                image_size: int = 224, weights: Optional[str] = None,
                dropout: float = 0.0, bn_momentum: Optional[float] = 0.9,
                head_pooling: str = "avg",
                pixels: str = "tf", compile: bool = True,  # pylint: disable=redefined-builtin
                learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                top_k: int = 5):
  """A multi-head model: uint8 [image_size, image_size, 3] images in, one
  softmax (or, for a tag head, sigmoid) output per head, named after it.

  schema: see as_schema.
  backbone: a keras.applications name this package knows (config.BACKBONES;
    ``weights`` None, "imagenet" or a file), a keras-hub preset name where
    keras-hub is installed (``weights`` None: random, else the preset's), or
    your own keras.Model mapping float images to a feature map or vector
    (it is average-pooled when it returns a map).
  head_pooling: "avg" (one average pool shared by the heads) or "attention"
    (each head pools the feature map with its own spatial attention; needs
    a backbone that returns a map).
  pixels: how uint8 pixels are scaled for your own or a keras-hub backbone:
    "tf" ([-1, 1]), "unit" ([0, 1]), "torch" (ImageNet mean and std) or
    "raw" (0-255 floats). keras.applications names use their own.
  compile: compiled with AdamW at ``learning_rate`` and the package's masked
    per-head losses and metrics (a missing label has sample weight 0).
  """
  import keras  # pylint: disable=g-import-not-at-top
  from mlc_keras.modeling import model as model_lib  # pylint: disable=g-import-not-at-top
  schema = as_schema(schema)
  if isinstance(backbone, str) and backbone in config_lib.BACKBONES:
    model = model_lib.build_model(schema, image_size, backbone, weights,
                                  dropout, bn_momentum,
                                  head_pooling=head_pooling)
  else:
    net = backbone if isinstance(backbone, keras.Model) else _hub_backbone(
        backbone, weights)
    model = _wrap_backbone(net, schema, image_size, pixels, dropout,
                           head_pooling, model_lib)
  if compile:
    from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
    setup.compile_model(
        model, schema,
        keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        top_k=top_k)
  return model


_PIXEL_SCALES = {"tf": (1 / 127.5, -1.0), "unit": (1 / 255.0, 0.0),
                 "raw": (1.0, 0.0)}


def _hub_backbone(name, weights):
  if not isinstance(name, str):
    raise TypeError("backbone must be a name or a keras.Model, not "
                    f"{type(name).__name__}")
  try:
    import keras_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(
        f"unknown backbone {name!r}: not one of {', '.join(config_lib.BACKBONES)}"
        " (keras-hub presets need: pip install keras-hub)") from None
  return keras_hub.models.Backbone.from_preset(
      name, load_weights=weights is not None)


def _wrap_backbone(net, schema, image_size, pixels, dropout, head_pooling,
                   model_lib):
  import keras  # pylint: disable=g-import-not-at-top
  image = keras.Input((image_size, image_size, 3), dtype="uint8",
                      name="image")
  if pixels == "torch":
    scale, offset = model_lib._PIXELS["torch"]  # pylint: disable=protected-access
  elif pixels in _PIXEL_SCALES:
    scale, offset = _PIXEL_SCALES[pixels]
  else:
    raise ValueError(f"pixels must be one of tf, unit, torch, raw; got "
                     f"{pixels!r}")
  x = keras.layers.Rescaling(scale, offset=offset, name="preprocess")(image)
  # Named as the package's own backbones are, so freezing and fine-tuning
  # (--freeze_epochs, --unfreeze_layers) find it; a functional model keeps
  # its layers, any other is wrapped whole.
  try:
    (inp,), (out,) = net.inputs, net.outputs
    net = keras.Model(inp, out, name=model_lib.BACKBONE_LAYER)
  except (AttributeError, ValueError, TypeError):
    inner = keras.Input(tuple(x.shape[1:]))
    net = keras.Model(inner, net(inner), name=model_lib.BACKBONE_LAYER)
  features = net(x)
  if head_pooling == "attention" and len(features.shape) != 4:
    raise ValueError("head_pooling='attention' needs a backbone that returns "
                     f"a feature map; this one returns {features.shape}")
  if head_pooling != "attention" and len(features.shape) == 4:
    features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
  elif len(features.shape) == 3:
    features = keras.layers.GlobalAveragePooling1D(name="pool")(features)
  features = keras.layers.Identity(name=model_lib.FEATURES_LAYER)(features)
  per_head = model_lib.head_features(features, schema, head_pooling)
  outputs = {}
  for h in schema.heads:
    x = per_head[h.name]
    if dropout:
      x = keras.layers.Dropout(dropout, name=f"{h.name}_dropout")(x)
    outputs[h.name] = model_lib.head_layer(h, dtype="float32")(x)
  return keras.Model(image, outputs, name="mlc_model")


def make_dataset(source, schema=None, *, image_size: int = 224,
                 batch_size: int = 32, training: bool = False, seed: int = 0,
                 augment: Sequence[str] = (), image_column: str = "image",
                 check_images: bool = True, tfds_heads: str = "label",
                 tfds_split: str = "train"):
  """(dataset, schema): batches of (uint8 images, {head: label},
  {head: sample weight}) that a model from build_model trains on with
  ``model.fit(dataset, epochs=...)``; a missing label has weight 0.

  source: a manifest (CSV) path, an image folder (one sub-folder per class),
    "tfds:<name>" (TFDS; ``tfds_heads`` and ``tfds_split`` as the train CLI's
    flags), or your own tf.data.Dataset of (image, {head: class index or -1})
    unbatched, images uint8 [H, W, 3] of any size (``schema`` required).
  schema: see as_schema; default: inferred from a manifest or folder.
  training: shuffled (each pass a new order, drawn from ``seed``), full
    batches only, ``augment`` applied (config.AUGMENTATIONS); otherwise one
    ordered pass, the last batch kept.
  check_images: read every image's header first (a broken file is named
    now, not mid-training).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import pipeline  # pylint: disable=g-import-not-at-top
  schema = as_schema(schema) if schema is not None else None
  if isinstance(source, tf.data.Dataset):
    if schema is None:
      raise TypeError("a tf.data.Dataset source needs the schema")
    src = _dataset_source(source, schema)
  else:
    src, schema = _file_source(str(source), schema, image_column,
                               check_images, tfds_heads, tfds_split, seed)
  if training:
    ds = pipeline.train_dataset(
        src, schema, image_size=image_size, batch_size=batch_size, seed=seed,
        augmentations=tuple(augment), one_epoch_per_iteration=True)
  else:
    if augment:
      raise TypeError("augment applies to training=True datasets only")
    ds = pipeline.eval_dataset(src, schema, image_size=image_size,
                               batch_size=batch_size)
  return ds, schema


def _file_source(source, schema, image_column, check_images, tfds_heads,
                 tfds_split, seed):
  from mlc_keras.training import setup  # pylint: disable=g-import-not-at-top
  if source.startswith("tfds:"):
    dc = config_lib.DataConfig(tfds=source[len("tfds:"):],
                               tfds_heads=tfds_heads,
                               tfds_train_split=tfds_split,
                               tfds_val_split=None)
  else:
    dc = config_lib.DataConfig(manifest=source, val_fraction=0.0,
                               image_column=image_column,
                               validate_images=check_images)
  if schema is None:
    bundle = setup.load_data(dc, seed, check=check_images)
    return bundle.train, bundle.schema
  # load_data takes a schema as a heads file, read once at its start.
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="mlc_schema_") as folder:
    path = os.path.join(folder, "labels.json")
    schema.save(path)
    bundle = setup.load_data(dataclasses.replace(dc, heads_file=path), seed,
                             check=check_images)
  return bundle.train, bundle.schema


def _dataset_source(dataset, schema: heads_lib.LabelSchema):
  """A user's (image, {head: label}) dataset as the pipeline's Source:
  (uint8 image, int32 labels laid out as the schema's label columns)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mlc_keras.data import sources  # pylint: disable=g-import-not-at-top
  spec = dataset.element_spec
  if not (isinstance(spec, tuple) and len(spec) == 2
          and isinstance(spec[1], Mapping)):
    raise TypeError("the dataset must yield (image, {head: label}) pairs, "
                    f"got {spec}")
  missing = [h for h in schema.names if h not in spec[1]]
  if missing:
    raise TypeError(f"the dataset has no labels for head(s) "
                    f"{', '.join(missing)}")

  def columns(image, labels):
    parts = []
    for h in schema.heads:
      y = tf.cast(labels[h.name], tf.int32)
      parts.append(tf.reshape(y, [h.width]))
    return tf.image.convert_image_dtype(image, tf.uint8), tf.concat(parts, 0)

  size = int(dataset.cardinality())
  return sources.Source(lambda: dataset.map(columns), size if size >= 0 else None,
                        False, "dataset")


def demo_data(folder: str, train_size: int = 2000, val_size: int = 400,
              seed: int = 0) -> dict[str, str]:
  """Writes the embedded demo set (coloured shapes; heads shape, colour,
  size, marks) to ``folder`` and returns its paths: {"train", "val",
  "heldout", "labels"}."""
  from mlc_keras.data import demo  # pylint: disable=g-import-not-at-top
  return demo.generate(folder, train_size, val_size, seed=seed)


class Run:
  """A run folder (what fit or ``python -m mlc_keras.train`` wrote), with the
  other verbs as methods: evaluate, export, predictor, predict_files.

  ``Run("mlc_runs/demo")`` opens one trained earlier; fit returns one.
  """

  def __init__(self, model_dir: str):
    import os  # pylint: disable=g-import-not-at-top
    self.model_dir = os.path.abspath(model_dir)

  @property
  def results(self) -> dict:
    """results.json: per-head validation results of the training."""
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    with open(os.path.join(self.model_dir, "results.json"),
              encoding="utf-8") as f:
      return json.load(f)

  @property
  def schema(self) -> heads_lib.LabelSchema:
    return heads_lib.LabelSchema.load(self.model_dir)

  def load_model(self):
    """model.keras, with ``label_schema`` set (see load_model)."""
    return load_model(self.model_dir)

  def evaluate(self, manifest: Optional[str] = None, **options) -> dict:
    """As ``python -m mlc_keras.evaluate``: scores the model on ``manifest``
    (default: the run's validation data), writes evaluation.json/.md and
    plots into the folder, returns the report. ``options``:
    evaluate_lib.evaluate's keywords (calibrate, class_table, ...)."""
    from mlc_keras.evaluation import report as evaluate_lib  # pylint: disable=g-import-not-at-top
    return evaluate_lib.evaluate(self.model_dir, manifest, **options)

  def export(self, **options):
    """As ``python -m mlc_keras.export``: SavedModel, TFLite and ONNX, each
    checked against the Keras model, published under <folder>/export only
    if all pass. Returns the ExportResult (published paths). ``options``:
    export_lib.export's keywords (formats, quantizations, output, ...)."""
    from mlc_keras.exporters import publish as export_lib  # pylint: disable=g-import-not-at-top
    return export_lib.export(self.model_dir, **options)

  def predictor(self, artefact: Optional[str] = None):
    """load_predictor of ``artefact`` (default: the folder's model)."""
    return load_predictor(artefact or self.model_dir)

  def predict_files(self, paths: Sequence[str], artefact: Optional[str] = None,
                    batch_size: int = 32) -> list[dict]:
    """predict_files with the folder's model (or ``artefact``)."""
    return predict_files(self.predictor(artefact), paths, batch_size)

  def __repr__(self):
    return f"Run({self.model_dir!r})"


def load_predictor(path: str, bytes_signature: bool = False):
  """Any artefact (.keras, run folder, SavedModel, .tflite, .onnx) as a
  Predictor: ``predictor(uint8 images)`` -> {output: scores}, and
  ``predict_files(predictor, paths)`` for image files."""
  from mlc_keras.inference import predictors  # pylint: disable=g-import-not-at-top
  return predictors.load_predictor(path, bytes_signature)


def predict_files(predictor, paths: Sequence[str], batch_size: int = 32
                  ) -> list[dict]:
  """One dict per image: each head's class and score (a tag head's tags),
  as ``python -m mlc_keras.predict`` prints them as JSON lines.
  ``predictor``: a Predictor or anything load_predictor opens; ``paths``:
  image files, folders of them or manifests (their image column)."""
  from mlc_keras.inference import files as predict_lib  # pylint: disable=g-import-not-at-top
  if isinstance(predictor, str):
    predictor = load_predictor(predictor)
  if isinstance(paths, str):
    paths = [paths]
  images = predict_lib.expand_inputs(list(paths))
  return list(predict_lib.predict_files(predictor, images, batch_size))
