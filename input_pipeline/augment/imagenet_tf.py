"""Per-example decode and resize ops of the streaming pipeline (TensorFlow).

Two preprocessings, chosen by `config.input.preprocess`:
  'imagenet': Inception-style random-resized crop (area 8 %..100 %, aspect
              3/4..4/3) + horizontal flip for training; resize + centre crop
              (crop fraction 0.875, as flax examples/imagenet) for eval; the
              ImageNet mean/std.
  'resize':   every image resized to a square `image_size` (or kept at its
              native size when that is 0), the same for train and eval; the
              augmentations of `config.input.augment` then run vectorised on
              whole batches (`augment_tf.augment_batch`).

Random ops are stateless, seeded by a [2] int seed derived from (data seed,
example position), so the output does not depend on tf.data's parallelism.

Importing this module imports TensorFlow (with GPUs hidden).
"""

from __future__ import annotations

from input_pipeline import lazy_tf

tf = lazy_tf.import_tensorflow()

PREPROCESSINGS = ('resize', 'imagenet')

# Per-channel statistics of ImageNet's train split on the 0..1 scale (the
# constants of torchvision and flax examples/imagenet, there x 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Eval: the centre crop keeps this fraction of the shorter side (224 / 256).
CROP_FRACTION = 0.875


def decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  """JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, channels]."""
  image = tf.io.decode_image(encoded, channels=channels,
                             expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, C] -> float32 [size, size, C] on the 0..255 scale,
  bilinear with antialiasing (downsampling does not alias)."""
  return tf.image.resize(image, [size, size], method='bilinear',
                         antialias=True)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int, *,
                        area_range=(0.08, 1.0),
                        aspect_ratio_range=(3 / 4, 4 / 3)) -> tf.Tensor:
  """Inception crop: a random box of 8-100 % of the area, resized.

  Args:
    image: uint8 [H, W, C].
    seed: [2] int seed (stateless).
    size: output side in pixels.

  Returns:
    float32 [size, size, C], 0..255 scale.
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=aspect_ratio_range,
      area_range=area_range, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  return resize(crop, size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors [H, W, C] left-right with probability 1/2 (stateless)."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def center_crop(image: tf.Tensor, size: int,
                crop_fraction: float = CROP_FRACTION) -> tf.Tensor:
  """Eval view: the central `crop_fraction` of the shorter side, resized.

  uint8 [H, W, C] -> float32 [size, size, C], 0..255 scale.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction,
                 tf.int32)
  top, left = (h - side + 1) // 2, (w - side + 1) // 2
  crop = tf.image.crop_to_bounding_box(image, top, left, side, side)
  return resize(crop, size)


def train_view(image: tf.Tensor, seed: tf.Tensor, preprocess: str,
               size: int) -> tf.Tensor:
  """One training example: uint8 [H, W, C] -> float32 [S, S, C] 0..1."""
  if preprocess == 'imagenet':
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    image = random_flip(random_resized_crop(image, crop_seed, size),
                        flip_seed)
    return image / 255.0
  return eval_view(image, preprocess, size)


def eval_view(image: tf.Tensor, preprocess: str, size: int) -> tf.Tensor:
  """One eval example: uint8 [H, W, C] -> float32 [S, S, C] 0..1 (native
  size when `size` is 0 and preprocess is 'resize')."""
  if preprocess == 'imagenet':
    return center_crop(image, size) / 255.0
  if size:
    image = resize(image, size)
  return tf.cast(image, tf.float32) / 255.0
