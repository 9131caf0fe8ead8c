"""Tests of faml_jax.preprocess: normalisation, the index-keyed random flip, and the optional
augmentations against torchvision's functional transforms (the same drawn parameters) and NumPy."""

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


# ---------------------------------------------------------------------------------------------
# Augmentations of the PyTorch code bases: given the same drawn parameters, each equals
# torchvision's functional transform (torch extra; `make test` requires it) or a NumPy reference.

import dataclasses  # noqa: E402

import pytest  # noqa: E402
from helpers import require_torch  # noqa: E402

from faml_jax import preprocess  # noqa: E402
from faml_jax.config import AugmentConfig  # noqa: E402
from faml_jax.presets import AUGMENT_PRESETS  # noqa: E402


def torchvision_functional():
    return require_torch("torch"), require_torch("torchvision.transforms.functional")


def chw(torch, image):
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def hwc(tensor):
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "angle,padding,top,left",
    [
        (13.7, 0, 0, 0),
        (-19.9, 0, 0, 0),
        (5.123, 6, 2, 9),
        (-7.5, 6, 12, 0),
        (0.0, 6, 6, 6),
        (20.0, 8, 16, 3),
    ],
)
def test_rotate_crop_equals_torchvision(angle, padding, top, left):
    """DAN's RandomRotation (nearest, zero fill) then RandomCrop(size, padding): same pixels as
    ``crop(pad(rotate(img, angle), padding), top, left, H, W)``, uint8 in, uint8 out."""
    torch, tf = torchvision_functional()
    from torchvision.transforms import InterpolationMode

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = tf.rotate(chw(torch, image), angle, interpolation=InterpolationMode.NEAREST, fill=[0.0] * 3)
    if padding:
        expected = tf.crop(tf.pad(expected, padding), top, left, 32, 32)
    ours = np.asarray(preprocess.rotate_crop(jnp.asarray(image), angle, top, left, padding))
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, hwc(expected))


def test_color_jitter_equals_torchvision():
    """Brightness, contrast, saturation in a drawn order, on a float image in [0, 255]: equal to
    torchvision's adjust_* in the same order on the image / 255."""
    torch, tf = torchvision_functional()
    image = np.random.default_rng(1).integers(0, 256, (16, 20, 3)).astype(np.float32)
    adjust = (tf.adjust_brightness, tf.adjust_contrast, tf.adjust_saturation)
    for seed in range(6):
        order, factors = preprocess.color_jitter_params(jax.random.key(seed), 0.4, 0.4, 0.4)
        order, factors = np.asarray(order), np.asarray(factors)
        assert sorted(order.tolist()) == [0, 1, 2] and np.all((factors >= 0.6) & (factors <= 1.4))
        expected = chw(torch, image / 255.0)
        for which in order:
            expected = adjust[which](expected, float(factors[which]))
        ours = np.asarray(preprocess.color_jitter(jnp.asarray(image), jnp.asarray(order), jnp.asarray(factors)))
        np.testing.assert_allclose(ours / 255.0, hwc(expected), atol=2e-6)


def test_erase_equals_torchvision_and_numpy():
    torch, tf = torchvision_functional()
    x = np.random.default_rng(2).standard_normal((24, 30, 3)).astype(np.float32)
    for top, left, h, w in [(0, 0, 5, 7), (10, 3, 14, 27), (23, 29, 1, 1), (0, 0, 0, 0)]:
        ours = np.asarray(preprocess.erase(jnp.asarray(x), top, left, h, w))
        expected = hwc(tf.erase(chw(torch, x), top, left, h, w, torch.tensor(0.0)))
        np.testing.assert_array_equal(ours, expected)
        by_hand = x.copy()
        by_hand[top : top + h, left : left + w] = 0.0
        np.testing.assert_array_equal(ours, by_hand)


def test_erasing_rectangles_follow_randomerasing_bounds():
    """Every drawn rectangle: area within scale x H x W up to rounding, aspect within the ratio
    range up to rounding, strictly smaller than the image (torchvision's rule h < H and w < W),
    inside it; nothing is erased when no try fits."""
    h_img, w_img, scale, ratio = 40, 40, (0.02, 0.25), (0.3, 3.3)
    draw = jax.jit(jax.vmap(lambda k: preprocess.erasing_params(k, h_img, w_img, scale, ratio)))
    top, left, h, w = map(np.asarray, draw(jax.random.split(jax.random.key(3), 4000)))
    assert np.all((h > 0) & (w > 0) & (h < h_img) & (w < w_img))
    assert np.all((top >= 0) & (left >= 0) & (top + h <= h_img) & (left + w <= w_img))
    # h = round(sqrt(a r)), w = round(sqrt(a / r)): each within half a pixel of its formula, so
    # (h - .5)(w - .5) <= a <= (h + .5)(w + .5) and (h - .5)/(w + .5) <= r <= (h + .5)/(w - .5).
    area = h_img * w_img
    assert np.all((h + 0.5) * (w + 0.5) >= scale[0] * area) and np.all((h - 0.5) * (w - 0.5) <= scale[1] * area)
    assert np.all((h + 0.5) / (w - 0.5) >= ratio[0]) and np.all((h - 0.5) / (w + 0.5) <= ratio[1])
    # Uniform placement: the mean relative top offset is about 1/2.
    assert 0.45 < np.mean(top / (h_img - h + 1)) < 0.55
    # No try fits: nothing erased (torchvision returns the image).
    never = preprocess.erasing_params(jax.random.key(0), 4, 4, (0.99, 1.0), (1.0, 1.0))
    assert tuple(int(v) for v in never) == (0, 0, 0, 0)


def test_augment_with_only_the_flip_is_the_papers_preprocessing():
    images = np.random.default_rng(4).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    flip_key, extra = jax.random.key(5), jax.random.key(6)
    ours = preprocess.augment(flip_key, extra, images, AugmentConfig())
    np.testing.assert_array_equal(ours, normalize(random_flip(flip_key, images)))
    np.testing.assert_array_equal(
        preprocess.augment(flip_key, extra, images, AugmentConfig(flip=0.0)), normalize(images)
    )


@pytest.mark.parametrize("name", ["dan", "posterpp", "jitter"])
def test_augment_is_deterministic_and_split_invariant(name):
    """The same key gives the same batch; a batch in four parts (as on four devices, each with its
    first global index) is augmented exactly as the whole; the augmentation changes images."""
    config = AUGMENT_PRESETS.get(name) or AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4)
    config = dataclasses.replace(config, rotate_p=min(1.0, config.rotate_p * 5), crop_padding=1 / 6)  # 4 px
    images = np.random.default_rng(7).integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    keys = (jax.random.key(8), jax.random.key(9))
    run = jax.jit(lambda x, first: preprocess.augment(*keys, x, config, first))
    whole = np.asarray(run(images, 0))
    np.testing.assert_array_equal(whole, np.asarray(run(images, 0)))
    parts = np.concatenate([np.asarray(run(images[i * 4 : (i + 1) * 4], i * 4)) for i in range(4)])
    # The same draws; float rounding of the colour arithmetic may differ with the compiled batch size.
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    plain = np.asarray(normalize(random_flip(keys[0], images)))
    changed = np.any(np.abs(whole - plain) > 1e-6, axis=(1, 2, 3)).sum()
    if name == "posterpp":  # erasing only, p = 0.5: Binomial(16, 0.5), mean 8, sd 2
        assert 2 <= changed <= 14
    else:  # every image rotated (p 1) or colour-jittered (factors != 1 almost surely)
        assert changed == 16


def test_augment_config_validation():
    for bad in (
        dict(erasing_p=1.5),
        dict(rotate_degrees=-1),
        dict(erasing_scale=(0.3, 0.1)),
        dict(crop_padding=1.5),
        dict(erasing_ratio=(2.0, 1.0)),
        dict(brightness=-0.1),
    ):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)
