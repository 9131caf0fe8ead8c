"""Tests of faml_jax.preprocess: normalisation and the index-keyed random flip."""

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax.preprocess import MEAN_RGB, STD_RGB, normalize, random_flip


def test_normalize_by_hand():
    images = np.zeros((1, 1, 2, 3), np.uint8)
    images[0, 0, 1] = (255, 128, 0)
    out = np.asarray(normalize(images))
    np.testing.assert_allclose(out[0, 0, 0], [-m / s for m, s in zip(MEAN_RGB, STD_RGB)], rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 1, 0], (255 - 0.485 * 255) / (0.229 * 255), rtol=1e-6)
    assert out.dtype == np.float32


def test_flip_probability_extremes_and_content():
    images = jnp.arange(4 * 2 * 3 * 1).reshape(4, 2, 3, 1)
    key = jax.random.key(0)
    np.testing.assert_array_equal(random_flip(key, images, p=0.0), images)
    np.testing.assert_array_equal(random_flip(key, images, p=1.0), images[:, :, ::-1])


def test_flip_rate_and_split_invariance():
    images = jnp.broadcast_to(jnp.arange(2)[None, None, :, None], (1000, 1, 2, 1))
    key = jax.random.key(1)
    whole = np.asarray(random_flip(key, images))
    flipped = whole[:, 0, 0, 0] == 1
    assert 0.45 < flipped.mean() < 0.55
    # The same batch processed in four parts (as on four devices) flips the same images.
    parts = [np.asarray(random_flip(key, images[i * 250 : (i + 1) * 250], i * 250)) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
