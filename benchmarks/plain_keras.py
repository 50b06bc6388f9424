"""The baseline that keeps the defaults honest: the simplest correct Keras
training a user would write for a multi-head manifest, with none of
mlc_keras' machinery.

  python benchmarks/plain_keras.py --train=train.csv --val=val.csv \
      --out=plain.keras [--image_size=64 --epochs=6 --seed=0]

The manifest is a CSV with an image column and one column per head; a blank
cell is a missing label. ResNet50V2 from scratch (BatchNorm momentum 0.9, as a
short run needs), one named softmax per head, missing labels masked through
sample_weight, AdamW with a linear warm-up and cosine decay, no augmentation,
the final weights saved (and each head's class order beside them,
<out>.classes.json). The model takes uint8 pixels like mlc_keras' models,
so benchmarks/defaults_real.py scores both with the same code.
"""

import argparse
import csv
import json
import os

import keras
import numpy as np
import tensorflow as tf


def read_manifest(path, heads=None):
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  heads = heads or [c for c in rows[0] if c != "image"]
  folder = os.path.dirname(os.path.abspath(path))
  images = [os.path.join(folder, r["image"]) for r in rows]
  return images, {h: [r[h] for r in rows] for h in heads}


def dataset(images, labels, classes, size, batch, shuffle_seed=None):
  ids = {h: np.array([classes[h].index(v) if v else -1 for v in labels[h]],
                     "int32") for h in classes}
  def load(path, y):
    img = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
    img = tf.cast(tf.image.resize(img, (size, size)), tf.uint8)
    # A missing label (-1) gets weight 0 and a valid placeholder class.
    weight = {h: tf.cast(v >= 0, tf.float32) for h, v in y.items()}
    return img, {h: tf.maximum(v, 0) for h, v in y.items()}, weight
  ds = tf.data.Dataset.from_tensor_slices((images, ids))
  if shuffle_seed is not None:
    ds = ds.shuffle(len(images), seed=shuffle_seed)
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(
      batch).prefetch(tf.data.AUTOTUNE)


def build(classes, size):
  image = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1)(image)
  net = keras.applications.ResNet50V2(include_top=False, weights=None,
                                      input_shape=(size, size, 3),
                                      pooling="avg")
  for layer in net.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.9
  features = net(x)
  return keras.Model(image, {h: keras.layers.Dense(len(c), "softmax", name=h)(
      features) for h, c in classes.items()})


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--train", required=True)
  ap.add_argument("--val", required=True)
  ap.add_argument("--out", required=True, help="the .keras file to write")
  ap.add_argument("--heads", default="", help="comma list (default: all)")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--epochs", type=int, default=6)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--learning_rate", type=float, default=1e-3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--weight_decay", type=float, default=None,
                  help="AdamW's decoupled weight decay (default: Keras' own, "
                       "0.004, as a user gets it)")
  ap.add_argument("--jit_compile", default="auto",
                  choices=("auto", "true", "false"),
                  help="Keras' compile(jit_compile=): 'auto' (Keras' default, "
                       "XLA on TensorFlow) as a user gets it")
  args = ap.parse_args()
  keras.utils.set_random_seed(args.seed)
  heads = [h for h in args.heads.split(",") if h] or None
  train_images, train_labels = read_manifest(args.train, heads)
  val_images, val_labels = read_manifest(args.val, heads)
  classes = {h: sorted({v for v in vs + val_labels[h] if v})
             for h, vs in train_labels.items()}
  train = dataset(train_images, train_labels, classes, args.image_size,
                  args.batch_size, shuffle_seed=args.seed)
  val = dataset(val_images, val_labels, classes, args.image_size,
                args.batch_size)
  steps = args.epochs * -(-len(train_images) // args.batch_size)
  warmup = max(steps // 10, 1)
  schedule = keras.optimizers.schedules.CosineDecay(
      args.learning_rate / 10, steps - warmup, warmup_target=args.learning_rate,
      warmup_steps=warmup)
  model = build(classes, args.image_size)
  model.compile(
      optimizer=keras.optimizers.AdamW(schedule, **(
          {} if args.weight_decay is None else
          {"weight_decay": args.weight_decay})),
      loss={h: "sparse_categorical_crossentropy" for h in classes},
      weighted_metrics={h: ["accuracy"] for h in classes},
      jit_compile={"auto": "auto", "true": True,
                   "false": False}[args.jit_compile])
  model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
  model.save(args.out)
  with open(os.path.splitext(args.out)[0] + ".classes.json", "w") as f:
    json.dump(classes, f)


if __name__ == "__main__":
  main()
