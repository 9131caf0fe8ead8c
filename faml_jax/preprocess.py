"""On-device image preprocessing: uint8 -> normalised float, and the random horizontal flip.

Batches travel from the host as uint8 NHWC (4x less traffic than float32); these functions run
inside the compiled train and eval steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ImageNet statistics in 0..255 units: what torchvision's (and MS-Celeb-1M) ResNet18 weights expect.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(images: jax.Array) -> jax.Array:
    """images: (..., H, W, 3) uint8 -> float32, per channel ``(x - mean) / std``."""
    x = images.astype(jnp.float32)
    return (x - jnp.asarray(MEAN_RGB, jnp.float32)) / jnp.asarray(STD_RGB, jnp.float32)


def random_flip(key: jax.Array, images: jax.Array, first_index: jax.Array | int = 0, p: float = 0.5):
    """Flip each image left-right with probability ``p`` (METHOD 1: p = 0.5).

    The decision for an image depends only on ``key`` and its index in the *global* batch
    (``first_index`` + position), so a batch split across devices is flipped exactly as the same
    batch on one device.

    Args:
      key: PRNG key of this step's augmentation.
      images: (batch, H, W, C).
      first_index: global index of ``images[0]``.
      p: flip probability.
    """
    index = first_index + jnp.arange(images.shape[0])
    flip = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), p))(index)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
