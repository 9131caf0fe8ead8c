"""Tests of faml_jax.losses against numpy computations of docs/method.md 2.3's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import require_torch

from faml_jax import losses
from faml_jax.config import LossConfig


def np_log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def random_batch(seed, batch=32, classes=7):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (batch, classes)).astype(np.float32), rng.integers(0, classes, batch)


@pytest.mark.parametrize("classes", [7, 8])
def test_ce_matches_numpy(classes):
    logits, labels = random_batch(0, classes=classes)
    expected = -np.mean([np_log_softmax(row)[y] for row, y in zip(logits.astype(np.float64), labels)])
    np.testing.assert_allclose(losses.ce_loss(logits, labels), expected, rtol=1e-5)


@pytest.mark.parametrize("classes", [7, 8])
def test_lsr_matches_numpy_with_eps_over_c_minus_1(classes):
    eps = 0.1
    logits, labels = random_batch(1, classes=classes)
    total = 0.0
    for row, y in zip(logits.astype(np.float64), labels):
        target = np.full(classes, eps / (classes - 1))
        target[y] = 1 - eps
        total += -(target * np_log_softmax(row)).sum()
    np.testing.assert_allclose(losses.lsr_loss(logits, labels, eps), total / len(labels), rtol=1e-5)


def test_lsr_by_hand_on_one_example():
    # Three classes, logits (log 2, 0, 0): q = (1/2, 1/4, 1/4); eps = 0.2 -> p = (0.8, 0.1, 0.1).
    logits = np.array([[np.log(2.0), 0.0, 0.0]], np.float32)
    expected = -(0.8 * np.log(0.5) + 0.1 * np.log(0.25) + 0.1 * np.log(0.25))
    np.testing.assert_allclose(losses.lsr_loss(logits, np.array([0]), 0.2), expected, rtol=1e-6)
    # eps / C would give p = (0.8667, 0.0667, 0.0667) and another value.
    wrong = -(13 / 15 * np.log(0.5) + 2 / 30 * np.log(0.25) * 2)
    assert abs(float(losses.lsr_loss(logits, np.array([0]), 0.2)) - wrong) > 1e-3


def test_lsr_with_zero_eps_is_ce():
    logits, labels = random_batch(2)
    np.testing.assert_allclose(losses.lsr_loss(logits, labels, 0.0), losses.ce_loss(logits, labels), rtol=1e-6)


def test_class_weights_formula():
    counts = np.array([1290, 281, 717, 4772, 1982, 705, 2524])  # RAF-DB train counts
    w = losses.class_weights(counts)
    np.testing.assert_allclose(w, counts.sum() / (7 * counts), rtol=1e-6)
    # Balanced: sum over the training set of w_y equals N (each class contributes N / C).
    np.testing.assert_allclose((w * counts).sum(), counts.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"classes \[2\] have no training examples"):
        losses.class_weights([3, 4, 0])


@pytest.mark.parametrize("classes", [7, 8])
def test_wce_matches_numpy(classes):
    logits, labels = random_batch(3, classes=classes)
    weights = np.random.default_rng(4).uniform(0.2, 5.0, classes).astype(np.float32)
    nll = np.array([-np_log_softmax(row)[y] for row, y in zip(logits.astype(np.float64), labels)])
    expected = (weights[labels] * nll).sum() / weights[labels].sum()
    np.testing.assert_allclose(losses.wce_loss(logits, labels, weights), expected, rtol=1e-5)
    # Equal weights: WCE is CE.
    np.testing.assert_allclose(
        losses.wce_loss(logits, labels, np.full(classes, 3.0)), losses.ce_loss(logits, labels), rtol=1e-6
    )


def test_wce_under_pmap_averages_to_the_global_batch_loss(devices):
    logits, labels = random_batch(5, batch=16)
    weights = np.random.default_rng(6).uniform(0.2, 5.0, 7).astype(np.float32)
    n = len(devices)

    def local(lg, lb):
        loss = losses.wce_loss(lg, lb, weights, axis_name="d")
        return jax.lax.pmean(loss, "d")

    per_device = jax.pmap(local, axis_name="d", devices=devices)(logits.reshape(n, -1, 7), labels.reshape(n, -1))
    np.testing.assert_allclose(per_device, losses.wce_loss(logits, labels, weights), rtol=1e-5)


def test_ml_draw_frequency_matches_p():
    keys = jax.random.split(jax.random.key(0), 2000)
    share = float(jnp.mean(jax.vmap(lambda k: losses.draw_lsr(k, 0.8))(keys)))
    assert abs(share - 0.8) <= 0.03, share


def test_ml_loss_is_lsr_or_ce_as_drawn():
    logits, labels = random_batch(7)
    weights = np.random.default_rng(8).uniform(0.2, 5.0, 7).astype(np.float32)
    seen = set()
    for i in range(20):
        key = jax.random.key(i)
        for cw, other in ((None, losses.ce_loss(logits, labels)), (weights, losses.wce_loss(logits, labels, weights))):
            loss, used = losses.ml_loss(key, logits, labels, p_lsr=0.5, eps=0.1, class_weights=cw)
            assert bool(used) == bool(losses.draw_lsr(key, 0.5))
            expected = losses.lsr_loss(logits, labels, 0.1) if used else other
            np.testing.assert_allclose(loss, expected, rtol=1e-6)
            seen.add(bool(used))
    assert seen == {True, False}


def test_ml_draw_is_the_same_on_every_device(devices):
    """Each device gets its own data but the step's key: all take the same branch."""
    n = len(devices)
    logits, labels = random_batch(9, batch=4 * n)

    def branch(key, lg, lb):
        _, used = losses.ml_loss(key, lg, lb, p_lsr=0.5)
        return used

    pbranch = jax.pmap(branch, in_axes=(None, 0, 0), devices=devices)
    draws = np.stack(
        [np.asarray(pbranch(jax.random.key(i), logits.reshape(n, -1, 7), labels.reshape(n, -1))) for i in range(30)]
    )
    assert np.all(draws == draws[:, :1])  # identical across devices in every step
    assert 0 < draws[:, 0].mean() < 1  # and both branches occur


def test_make_loss_fn_kinds():
    logits, labels = random_batch(10)
    weights = losses.class_weights([5, 1, 2, 9, 3, 2, 4])
    key = jax.random.key(0)
    ce, lsr = losses.ce_loss(logits, labels), losses.lsr_loss(logits, labels, 0.1)
    wce = losses.wce_loss(logits, labels, weights)

    def run(**kw):
        loss, share = losses.make_loss_fn(LossConfig(**kw), weights)(key, logits, labels)
        return float(loss), float(share)

    np.testing.assert_allclose(run(kind="ce"), (ce, 0.0), rtol=1e-6)
    np.testing.assert_allclose(run(kind="lsr"), (lsr, 1.0), rtol=1e-6)
    np.testing.assert_allclose(run(kind="wce"), (wce, 0.0), rtol=1e-6)
    np.testing.assert_allclose(run(kind="mix", p_lsr=0.8), (0.8 * lsr + 0.2 * ce, 0.8), rtol=1e-6)
    np.testing.assert_allclose(run(kind="mix", p_lsr=0.8, weighted=True), (0.8 * lsr + 0.2 * wce, 0.8), rtol=1e-6)
    loss, share = run(kind="ml", p_lsr=0.5, weighted=True)
    np.testing.assert_allclose(loss, lsr if share == 1.0 else wce, rtol=1e-6)
    with pytest.raises(ValueError, match="needs class_weights"):
        losses.make_loss_fn(LossConfig(kind="wce"))
    with pytest.raises(ValueError, match="unknown loss kind"):
        LossConfig(kind="focal")


def test_losses_are_jittable_and_differentiable():
    logits, labels = random_batch(11)
    fn = losses.make_loss_fn(LossConfig(kind="ml", p_lsr=0.5))
    grad = jax.jit(jax.grad(lambda lg, k: fn(k, lg, labels)[0]))(logits, jax.random.key(3))
    # d CE / d logits = softmax - onehot (divided by batch); both losses have rows summing to zero.
    np.testing.assert_allclose(np.asarray(grad).sum(-1), 0.0, atol=1e-6)


@pytest.mark.parametrize("classes", [7, 8])
def test_lsr_equals_pytorch_label_smoothing_at_eps_times_c_over_c_minus_1(classes):
    """Comparing with PyTorch code bases (README): PyTorch's ``label_smoothing=e`` spreads e / C
    over all classes (target 1 - e + e/C on the label); Eq. 4 spreads eps / (C - 1) over the
    others (target 1 - eps). So LSR(eps) == torch CE(label_smoothing = eps C / (C - 1)), and
    torch's 0.1 is not Eq. 4's 0.1."""
    torch = require_torch()
    logits, labels = random_batch(5, classes=classes)
    ours = float(losses.lsr_loss(jnp.asarray(logits), jnp.asarray(labels), 0.1))

    def torch_ce(e):
        return float(
            torch.nn.functional.cross_entropy(
                torch.tensor(logits), torch.tensor(labels, dtype=torch.long), label_smoothing=e
            )
        )

    np.testing.assert_allclose(ours, torch_ce(0.1 * classes / (classes - 1)), rtol=1e-5)
    assert abs(ours - torch_ce(0.1)) > 1e-3  # the same nominal 0.1 is a different loss
