"""The recipe's seeded augmentations: RandAugment and random
erasing on one image, MixUp and CutMix on a batch with missing labels.

Every op is stateless, keyed by the seed the pipeline derives from (run seed,
epoch, position), so the same seed gives the same pixels and a resumed run
sees what an uninterrupted one would. Keras 3's RandAugment / RandomErasing /
MixUp / CutMix layers are not used: their randomness comes from a stateful
SeedGenerator (RandAugment.get_random_transformation ignores its ``seed``
argument, and keras.random's draw_seed refuses a seed tensor), so in a
parallel tf.data map the pixels an image gets depend on the order elements
arrive and on where a resumed run restarted the generator; and their mixing
layers know nothing of missing labels.

**Mixing with missing labels.** A mixed sample takes share ``lam`` of image a
and 1 - lam of its partner b (the batch reversed). Per head: where both are
labelled, the target is lam * onehot(a) + (1 - lam) * onehot(b) (tag heads:
the multi-hot vectors mixed) and the weight lam * w_a + (1 - lam) * w_b (class
weights mixed by share); where either is unlabelled the head's weight is 0 for
that sample. Why not keep the labelled share (target a with weight lam): that
is the MixUp loss with the unknown term dropped, lam * CE(a, p), whose
minimiser is p = onehot(a), full confidence in a on an image that is 1 - lam
somebody else's: it teaches overconfidence, the opposite of what mixing is
for. Why not renormalise to a: the same target, on the same half-foreign
image. The cost: a head labelled on a share q of the samples keeps about q^2
of its mixed samples (0.72 at 15% blanks).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from mlc_keras.core import errors
from mlc_keras.core import heads as heads_lib

# RandAugment's ops (Cubuk et al. 2020), the subset that makes sense on a
# small photo: identity, brightness, contrast, solarize, posterize,
# autocontrast, rotate, shear, translate.
RANDAUGMENT_OPS = 9
# Random erasing (Zhong et al. 2017; timm's defaults): area share and aspect.
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 3.3)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The recipe's augmentation settings (DataConfig's fields of the same
  names)."""
  randaugment_ops: int = 2
  randaugment_magnitude: float = 0.5
  erasing_prob: float = 0.25
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0

  @classmethod
  def of(cls, data) -> "Recipe":
    """The settings of a config.DataConfig."""
    return cls(*(getattr(data, f.name) for f in dataclasses.fields(cls)))

  @property
  def mixes(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  def check(self) -> None:
    """Raises ValueError naming the flag of a value out of range."""
    if not (isinstance(self.randaugment_ops, int) and self.randaugment_ops >= 1):
      raise errors.SettingError(f"`randaugment_ops` must be an integer >= 1, got "
                                f"{self.randaugment_ops}")
    for name in ("randaugment_magnitude", "erasing_prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"--{name} must be in [0, 1], got "
                         f"{getattr(self, name)}")
    for name in ("mixup_alpha", "cutmix_alpha"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"--{name} must be >= 0 (0: off), got {value}")


# Which heads an augmentation can change the label of, for the warning at the
# start of a run (a guess from the class names: the user knows better).
_SIDES = ("left", "right")


def flip_sensitive_heads(schema) -> list[str]:
  """Single-label heads a horizontal flip may change the label of: classes
  that look like characters (most are one letter or digit: a mirrored 'b' is
  a 'd', most glyphs mirrored are no glyph at all) or name a side."""
  out = []
  for h in schema.heads:
    if not h.kind_impl.single_label:
      continue
    names = [c.lower() for c in h.classes]
    chars = sum(len(c) == 1 and c.isalnum() for c in names)
    if chars * 2 > len(names) or any(
        side in c for c in names for side in _SIDES):
      out.append(h.name)
  return out


def _uniform(seed, low=0.0, high=1.0, shape=()):
  return tf.random.stateless_uniform(shape, seed, low, high)


def _affine(x, a0, a1, a2, b0, b1, b2):
  """x [H, W, C] float sampled at (a0 u + a1 v + a2, b0 u + b1 v + b2) for
  each output pixel (u, v); reflected at the borders like the crop's pad."""
  transform = tf.cast(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]),
                      tf.float32)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform, output_shape=tf.shape(x)[:2],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
  return out[0]


def _op(x, index, sign, m, seed):
  """RandAugment op ``index`` at magnitude m in [0, 1] (``sign`` +-1)."""
  side = tf.cast(tf.shape(x)[0], tf.float32)
  c = (side - 1) / 2
  angle = sign * m * math.radians(30)
  cos, sin = tf.cos(angle), tf.sin(angle)
  bits = 8.0 - tf.round(4.0 * m)
  step = tf.pow(2.0, 8.0 - bits)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  shift = sign * 0.3 * m * side * tf.sign(_uniform(seed, -1.0, 1.0, (2,)))
  branches = [
      lambda: x,
      lambda: x + sign * 0.4 * m * 255.0,
      lambda: tf.reduce_mean(x) + (x - tf.reduce_mean(x)) * (1 + 0.8 * m * sign),
      lambda: tf.where(x >= 255.0 * (1 - 0.5 * m), 255.0 - x, x),
      lambda: tf.floor(x / step) * step,
      lambda: (x - lo) / tf.maximum(hi - lo, 1.0) * 255.0,
      lambda: _affine(x, cos, sin, c - cos * c - sin * c,
                      -sin, cos, c + sin * c - cos * c),
      lambda: _affine(x, 1.0, sign * 0.3 * m, -sign * 0.3 * m * c,
                      0.0, 1.0, 0.0),
      lambda: _affine(x, 1.0, 0.0, -shift[0], 0.0, 1.0, -shift[1]),
  ]
  return tf.switch_case(index, branches)


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_ops: int = 2,
                magnitude: float = 0.5) -> tf.Tensor:
  """``num_ops`` ops drawn uniformly (with repeats) from RANDAUGMENT_OPS,
  each at ``magnitude`` with a random sign; uint8 in, uint8 out."""
  x = tf.cast(image, tf.float32)
  seeds = tf.random.split(seed, 3 * num_ops)
  for i in range(num_ops):
    index = tf.random.stateless_uniform((), seeds[3 * i], 0, RANDAUGMENT_OPS,
                                        dtype=tf.int32)
    sign = tf.where(_uniform(seeds[3 * i + 1]) < 0.5, -1.0, 1.0)
    x = tf.clip_by_value(_op(x, index, sign, float(magnitude),
                             seeds[3 * i + 2]), 0.0, 255.0)
  x.set_shape(image.shape)
  return tf.cast(tf.round(x), tf.uint8)


def random_erasing(image: tf.Tensor, seed: tf.Tensor,
                   prob: float = 0.25) -> tf.Tensor:
  """With probability ``prob`` one rectangle (ERASE_AREA of the area,
  aspect in ERASE_ASPECT, inside the image) becomes uniform noise."""
  s = tf.random.split(seed, 6)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  area = tf.cast(h * w, tf.float32) * _uniform(s[0], *ERASE_AREA)
  aspect = tf.exp(_uniform(s[1], math.log(ERASE_ASPECT[0]),
                           math.log(ERASE_ASPECT[1])))
  eh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, h)
  ew = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, w)
  top = tf.cast(_uniform(s[2]) * tf.cast(h - eh + 1, tf.float32), tf.int32)
  left = tf.cast(_uniform(s[3]) * tf.cast(w - ew + 1, tf.float32), tf.int32)
  rows = tf.range(h)[:, None]
  cols = tf.range(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  box = box & (_uniform(s[4]) < prob)
  noise = tf.random.stateless_uniform(tf.shape(image), s[5], 0, 256,
                                      dtype=tf.int32)
  return tf.where(box[..., None], tf.cast(noise, image.dtype), image)


def _beta(seed, alpha: float, n):
  a = tf.random.stateless_gamma((n,), seed, alpha)
  b = tf.random.stateless_gamma((n,), tf.random.experimental.stateless_fold_in(
      seed, 1), alpha)
  return a / tf.maximum(a + b, 1e-12)


def _cutmix_boxes(seed, lam, side_h, side_w):
  """Per sample a box of about 1 - lam of the area ([B, H, W] bool) and the
  share lam actually left to image a."""
  n = tf.shape(lam)[0]
  s = tf.random.split(seed, 2)
  cut = tf.sqrt(1.0 - lam)
  hf, wf = tf.cast(side_h, tf.float32), tf.cast(side_w, tf.float32)
  cy = _uniform(s[0], 0.0, 1.0, (n,)) * hf
  cx = _uniform(s[1], 0.0, 1.0, (n,)) * wf
  y0 = tf.clip_by_value(tf.round(cy - cut * hf / 2), 0, hf)
  y1 = tf.clip_by_value(tf.round(cy + cut * hf / 2), 0, hf)
  x0 = tf.clip_by_value(tf.round(cx - cut * wf / 2), 0, wf)
  x1 = tf.clip_by_value(tf.round(cx + cut * wf / 2), 0, wf)
  rows = tf.range(hf)[None, :, None]
  cols = tf.range(wf)[None, None, :]
  box = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None])
         & (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
  kept = 1.0 - (y1 - y0) * (x1 - x0) / (hf * wf)
  return box, kept


def mix_targets(ys: dict, ws: dict, lam: tf.Tensor,
                schema: heads_lib.LabelSchema) -> tuple[dict, dict]:
  """The rule of the module docstring on a batch whose partner is the batch
  reversed: {head: soft target [B, k]}, {head: weight [B]}."""
  out_y, out_w = {}, {}
  for head in schema.heads:
    y, w = ys[head.name], ws[head.name]
    soft = head.kind_impl.mix_target(head, y)
    lam_col = lam[:, None]
    out_y[head.name] = lam_col * soft + (1 - lam_col) * tf.reverse(soft, [0])
    w_b = tf.reverse(w, [0])
    both = tf.logical_and(w > 0, w_b > 0)
    out_w[head.name] = tf.where(both, lam * w + (1 - lam) * w_b,
                                tf.zeros_like(w))
  return out_y, out_w


def mix_batch(images: tf.Tensor, ys: dict, ws: dict, seed: tf.Tensor,
              schema: heads_lib.LabelSchema, recipe: Recipe):
  """MixUp or CutMix (each batch one of them, 50/50 when both are on) of a
  uint8 batch with its targets and weights (see mix_targets)."""
  s = tf.random.split(seed, 3)
  n = tf.shape(images)[0]
  partner = tf.reverse(images, [0])

  def mixup():
    lam = _beta(s[1], recipe.mixup_alpha, n)
    x = (lam[:, None, None, None] * tf.cast(images, tf.float32)
         + (1 - lam[:, None, None, None]) * tf.cast(partner, tf.float32))
    return tf.cast(tf.round(x), images.dtype), lam

  def cutmix():
    lam = _beta(s[1], recipe.cutmix_alpha, n)
    box, kept = _cutmix_boxes(s[2], lam, tf.shape(images)[1],
                              tf.shape(images)[2])
    return tf.where(box[..., None], partner, images), kept

  if recipe.mixup_alpha > 0 and recipe.cutmix_alpha > 0:
    mixed, lam = tf.cond(_uniform(s[0]) < 0.5, mixup, cutmix)
  else:
    mixed, lam = mixup() if recipe.mixup_alpha > 0 else cutmix()
  mixed.set_shape(images.shape)
  return (mixed, *mix_targets(ys, ws, lam, schema))
