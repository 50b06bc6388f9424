"""Image decoding and resizing shared by training, evaluation and serving.

Every path that turns encoded bytes into model input goes through
decode_and_resize, so the SavedModel's bytes signature sees exactly the pixels
training saw.
"""

from __future__ import annotations

import tensorflow as tf


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (first frame of a GIF)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3].

  Bilinear with antialiasing (shrinking without it aliases badly), rounded
  back to uint8 so cached and served pixels are identical.
  """
  resized = tf.image.resize(image, [image_size, image_size],
                            method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
  return resize(decode(encoded), image_size)
