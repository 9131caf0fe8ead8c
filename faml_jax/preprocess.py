"""On-device image preprocessing: uint8 -> normalised float, the random horizontal flip, and the
optional augmentations of the PyTorch code bases (rotation + padded crop, colour jitter, random
erasing; ``augment`` composes them).

Batches travel from the host as uint8 NHWC (4x less traffic than float32); these functions run
inside the compiled train and eval steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ImageNet statistics in 0..255 units: what torchvision's (and MS-Celeb-1M) ResNet18 weights expect.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(images: jax.Array) -> jax.Array:
    """images: (..., H, W, 3) uint8 -> float32, per channel ``(x - mean) / std``."""
    x = images.astype(jnp.float32)
    return (x - jnp.asarray(MEAN_RGB, jnp.float32)) / jnp.asarray(STD_RGB, jnp.float32)


def _image_keys(key: jax.Array, count: int, first_index) -> jax.Array:
    """One key per image: ``fold_in(key, global index)``, the same whichever device holds it."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first_index + jnp.arange(count))


def random_flip(key: jax.Array, images: jax.Array, first_index: jax.Array | int = 0, p: float = 0.5):
    """Flip each image left-right with probability ``p`` (docs/method.md 1: p = 0.5).

    The decision for an image depends only on ``key`` and its index in the *global* batch
    (``first_index`` + position), so a batch split across devices is flipped exactly as the same
    batch on one device.

    Args:
      key: PRNG key of this step's augmentation.
      images: (batch, H, W, C).
      first_index: global index of ``images[0]``.
      p: flip probability.
    """
    keys = _image_keys(key, images.shape[0], first_index)
    flip = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


# ---------------------------------------------------------------------------------------------
# Augmentations of the PyTorch code bases (docs/method.md 1 [choice]: options, off in the paper presets).
# Each is a pure function of (key, image, parameters); ``augment`` draws every image's parameters
# from ``fold_in(key, global index)``, so a batch split over devices is augmented exactly as on one
# device. Parameters are drawn as torchvision draws them, and applying given parameters matches
# torchvision's functional transform (tests/test_preprocess.py).


def _per_image(fn, key: jax.Array, images: jax.Array, first_index) -> jax.Array:
    """``fn(image_key, image)`` for every image of the batch, each image's key from its global
    index (``_image_keys``)."""
    return jax.vmap(fn)(_image_keys(key, images.shape[0], first_index), images)


def rotate_crop_params(key: jax.Array, degrees: float, padding: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DAN's rotation + padded crop parameters of one image: ``angle`` uniform in +-degrees
    (``RandomRotation``), crop offsets ``top, left`` uniform in 0..2*padding (``RandomCrop(size,
    padding)`` on the padded image)."""
    k_angle, k_top, k_left = jax.random.split(key, 3)
    angle = jax.random.uniform(k_angle, (), jnp.float32, -degrees, degrees)
    top = jax.random.randint(k_top, (), 0, 2 * padding + 1)
    left = jax.random.randint(k_left, (), 0, 2 * padding + 1)
    return angle, top, left


def rotate_crop(image: jax.Array, angle, top, left, padding: int) -> jax.Array:
    """Rotate one (H, W, C) image by ``angle`` degrees about its centre (nearest neighbour, zero
    fill: torchvision's ``rotate(img, angle)``), then pad it by ``padding`` zeros on every side and
    cut out the H x W window at (``top``, ``left``) of the padded image (``crop(pad(img, padding),
    top, left, H, W)``). Works on any dtype (uint8 stays uint8: a gather, no arithmetic).

    The source pixel of each output pixel follows torchvision's affine grid exactly (pixel
    centres at +0.5, the inverse rotation matrix of ``_get_inverse_affine_matrix``, grid_sample's
    unnormalisation with ``align_corners=False``, rounding half to even), in float32 as there."""
    h, w = image.shape[0], image.shape[1]
    rot = jnp.deg2rad(-jnp.asarray(angle, jnp.float32))  # torchvision passes -angle to the inverse matrix
    cos, sin = jnp.cos(rot), jnp.sin(rot)
    # Output pixel (r, c) of the crop is pixel (r + top - padding, c + left - padding) of the rotated image.
    rows = jnp.arange(h, dtype=jnp.int32) + top - padding
    cols = jnp.arange(w, dtype=jnp.int32) + left - padding
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    x = (cols.astype(jnp.float32) - w * 0.5 + 0.5)[None, :]  # centred base grid of _gen_affine_grid
    y = (rows.astype(jnp.float32) - h * 0.5 + 0.5)[:, None]
    # theta = [[cos, sin, 0], [-sin, cos, 0]], rescaled by (0.5 w, 0.5 h), then unnormalised.
    gx = x * (cos / (0.5 * w)) + y * (sin / (0.5 * w))
    gy = x * (-sin / (0.5 * h)) + y * (cos / (0.5 * h))
    src_x = jnp.round(((gx + 1.0) * w - 1.0) / 2.0).astype(jnp.int32)
    src_y = jnp.round(((gy + 1.0) * h - 1.0) / 2.0).astype(jnp.int32)
    valid = inside & (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    out = image[jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)]
    return jnp.where(valid[..., None], out, jnp.zeros((), image.dtype))


def grayscale(image: jax.Array) -> jax.Array:
    """ITU-R 601-2 luma of (..., 3) RGB, keeping a channel axis of 1 (torchvision's weights)."""
    return (0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2])[..., None]


def color_jitter_params(key: jax.Array, brightness: float, contrast: float, saturation: float):
    """One image's colour jitter draw (torchvision's ``ColorJitter.get_params`` without hue): the
    order of the three adjustments (a permutation of 0, 1, 2) and each factor, uniform in
    [max(0, 1 - s), 1 + s] (factor 1 where s = 0: that adjustment is the identity)."""
    k_order, k_b, k_c, k_s = jax.random.split(key, 4)

    def factor(k, s):
        return jax.random.uniform(k, (), jnp.float32, max(0.0, 1.0 - s), 1.0 + s)

    order = jax.random.permutation(k_order, 3)
    return order, jnp.stack([factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation)])


def color_jitter(image: jax.Array, order: jax.Array, factors: jax.Array, max_value: float = 255.0) -> jax.Array:
    """Apply brightness, contrast and saturation (``factors`` in that order) to one float (H, W, 3)
    image with values in [0, max_value], in the order ``order`` (torchvision's
    ``adjust_brightness``: ``f * x``; ``adjust_contrast``: blend with the mean grey level;
    ``adjust_saturation``: blend with the grey image; each clamped to [0, max_value])."""

    def blend(x, other, f):
        return jnp.clip(f * x + (1.0 - f) * other, 0.0, max_value)

    adjustments = (
        lambda x, f: blend(x, jnp.zeros_like(x), f),
        lambda x, f: blend(x, jnp.mean(grayscale(x)), f),
        lambda x, f: blend(x, grayscale(x), f),
    )
    for position in range(3):
        which = order[position]
        image = jax.lax.switch(which, adjustments, image, factors[which])
    return image


def erasing_params(
    key: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10
):
    """One image's random erasing rectangle as torchvision's ``RandomErasing.get_params`` draws it:
    up to ``attempts`` tries of an area uniform in ``scale`` x H x W and an aspect ratio
    log-uniform in ``ratio`` (h = round(sqrt(area * r)), w = round(sqrt(area / r))); the first that
    fits strictly inside the image is placed at a uniform (top, left). Returns ``(top, left, h,
    w)`` int32; (0, 0, 0, 0) (nothing erased) when no try fits, as torchvision then returns the
    image unchanged."""
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(k_area, (attempts,), jnp.float32, scale[0], scale[1])
    log_ratio = jax.random.uniform(k_ratio, (attempts,), jnp.float32, float(np.log(ratio[0])), float(np.log(ratio[1])))
    aspect = jnp.exp(log_ratio)
    hs = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ws = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (hs < height) & (ws < width)
    first = jnp.argmax(fits)
    any_fits = jnp.any(fits)
    h = jnp.where(any_fits, hs[first], 0)
    w = jnp.where(any_fits, ws[first], 0)
    top = jnp.floor(jax.random.uniform(k_top, ()) * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, ()) * (width - w + 1)).astype(jnp.int32)
    return jnp.where(any_fits, top, 0), jnp.where(any_fits, left, 0), h, w


def erase(image: jax.Array, top, left, h, w, value: float = 0.0) -> jax.Array:
    """Set the (h, w) rectangle at (top, left) of one (H, W, C) image to ``value``
    (torchvision's ``erase``)."""
    rows = jnp.arange(image.shape[0])[:, None]
    cols = jnp.arange(image.shape[1])[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return jnp.where(inside[..., None], jnp.asarray(value, image.dtype), image)


def augment(
    flip_key: jax.Array, extra_key: jax.Array, images: jax.Array, config, first_index: jax.Array | int = 0
) -> jax.Array:
    """The training view of a uint8 batch (batch, H, W, 3) under ``config`` (an ``AugmentConfig``):
    flip, then (with probability ``rotate_p``) rotation + padded crop, then colour jitter, then
    normalisation, then (with probability ``erasing_p``) random erasing; returns the normalised
    float32 batch. The order is DAN's (flip and rotation/crop on the image, erasing after
    ``Normalize``). The flip draws from ``flip_key`` as ``random_flip`` does (so a run without the
    other augmentations is unchanged by them); the others from ``extra_key``, each its own key, per
    image by its global index (``first_index`` + position)."""
    if config.flip:
        images = random_flip(flip_key, images, first_index, config.flip)
    h, w = images.shape[1], images.shape[2]
    rotate_key, color_key, erase_key = jax.random.split(extra_key, 3)
    if config.rotate_p:
        padding = config.padding_pixels(h)

        def one(k, image):
            k_apply, k_params = jax.random.split(k)
            angle, top, left = rotate_crop_params(k_params, config.rotate_degrees, padding)
            moved = rotate_crop(image, angle, top, left, padding)
            return jnp.where(jax.random.bernoulli(k_apply, config.rotate_p), moved, image)

        images = _per_image(one, rotate_key, images, first_index)
    x = images.astype(jnp.float32)
    if config.color:

        def jitter(k, image):
            order, factors = color_jitter_params(k, config.brightness, config.contrast, config.saturation)
            return color_jitter(image, order, factors)

        x = _per_image(jitter, color_key, x, first_index)
    x = normalize(x)
    if config.erasing_p:

        def erase_one(k, image):
            k_apply, k_params = jax.random.split(k)
            top, left, eh, ew = erasing_params(k_params, h, w, config.erasing_scale, config.erasing_ratio)
            return jnp.where(jax.random.bernoulli(k_apply, config.erasing_p), erase(image, top, left, eh, ew), image)

        x = _per_image(erase_one, erase_key, x, first_index)
    return x
