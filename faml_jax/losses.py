"""Losses of R18+FAML (docs/method.md 2.3): CE, LSR, WCE and the per-batch random choice ML.

All losses take ``logits: (batch, C)`` and integer ``labels: (batch,)`` and return a scalar mean
over the batch. Under ``pmap`` each device computes its local batch's loss; gradients averaged
over devices then equal the gradient of the global batch's loss (``wce_loss`` needs
``axis_name`` for that, because it normalises by the weight sum of the whole batch).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax.config import LossConfig

LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def ce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with a one-hot target (Eq. 1-2): mean of ``-log q_label``, q = softmax."""
    logq = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logq, labels[:, None], axis=-1))


def lsr_loss(logits: jax.Array, labels: jax.Array, eps: float = 0.1) -> jax.Array:
    """Label-smoothing regularisation (Eq. 4-5): target ``1 - eps`` on the label and
    ``eps / (C - 1)`` on every other class (not ``eps / C``); mean of ``-sum_i p_i log q_i``."""
    c = logits.shape[-1]
    logq = jax.nn.log_softmax(logits.astype(jnp.float32))
    target = jax.nn.one_hot(labels, c) * (1.0 - eps - eps / (c - 1)) + eps / (c - 1)
    return -jnp.mean(jnp.sum(target * logq, axis=-1))


def wce_loss(logits: jax.Array, labels: jax.Array, class_weights: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Weighted cross-entropy (docs/method.md 1, [choice]): ``sum_b w_{y_b} CE_b / sum_b w_{y_b}``.

    With ``axis_name`` (inside pmap), the weight sum runs over the global batch and the local
    value is scaled so that its mean over devices is the global batch's loss.
    """
    logq = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logq, labels[:, None], axis=-1)[:, 0]
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    numerator, denominator = jnp.sum(w * nll), jnp.sum(w)
    if axis_name is not None:
        denominator = jax.lax.psum(denominator, axis_name) / jax.lax.psum(1.0, axis_name)
    return numerator / denominator


def class_weights(counts) -> np.ndarray:
    """Class weights ``N / (C * n_c)`` from per-class training counts (docs/method.md 1, [choice]).

    A class with no training example has no defined weight: that is an error, not an infinity.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"counts must be a vector of per-class counts, got shape {counts.shape}")
    if np.any(counts <= 0):
        missing = np.flatnonzero(counts <= 0).tolist()
        raise ValueError(f"classes {missing} have no training examples; cannot weight them")
    return (counts.sum() / (counts.size * counts)).astype(np.float32)


def ce_or_wce(class_weights=None, axis_name: str | None = None):
    """The non-LSR loss of ML and mix: CE, or WCE when ``class_weights`` is given."""
    if class_weights is None:
        return ce_loss
    weights = jnp.asarray(class_weights, jnp.float32)
    return lambda logits, labels: wce_loss(logits, labels, weights, axis_name)


def draw_lsr(key: jax.Array, p_lsr: float) -> jax.Array:
    """The ML draw: True (use LSR) with probability ``p_lsr``. Same key, same draw: pass every
    device the same key and all take the same branch."""
    return jax.random.bernoulli(key, p_lsr)


def ml_loss(
    key: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    p_lsr: float = 0.8,
    eps: float = 0.1,
    class_weights: jax.Array | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Multiple losses, one per batch (docs/method.md 2.3): LSR with probability ``p_lsr``, else CE (or
    WCE when ``class_weights`` is given), chosen by ``jax.lax.cond`` so only one is computed.

    Returns ``(loss, used_lsr)``, ``used_lsr`` a bool scalar.
    """
    use_lsr = draw_lsr(key, p_lsr)
    other = ce_or_wce(class_weights, axis_name)
    loss = jax.lax.cond(use_lsr, lambda lg, lb: lsr_loss(lg, lb, eps), other, logits, labels)
    return loss, use_lsr


def make_loss_fn(config: LossConfig, class_weights=None, axis_name: str | None = None) -> LossFn:
    """The training loss of ``config`` as ``loss_fn(key, logits, labels) -> (loss, lsr_share)``.

    ``lsr_share`` is the weight LSR had in this batch's loss (1 or 0 for "ml", ``p_lsr`` for
    "mix"), a float32 scalar for the step's metrics. ``class_weights`` (from ``class_weights``)
    is required when the config uses WCE.
    """
    if config.needs_class_weights and class_weights is None:
        raise ValueError(f"loss {config.kind!r} (weighted={config.weighted}) needs class_weights")
    weights = class_weights if config.needs_class_weights else None
    other = ce_or_wce(weights, axis_name)

    def loss_fn(key, logits, labels):
        if config.kind == "ml":
            loss, used = ml_loss(key, logits, labels, config.p_lsr, config.eps, weights, axis_name)
            return loss, used.astype(jnp.float32)
        if config.kind == "mix":
            lsr = lsr_loss(logits, labels, config.eps)
            return config.p_lsr * lsr + (1.0 - config.p_lsr) * other(logits, labels), jnp.float32(config.p_lsr)
        if config.kind == "lsr":
            return lsr_loss(logits, labels, config.eps), jnp.float32(1.0)
        return other(logits, labels), jnp.float32(0.0)  # "ce" or "wce"

    return loss_fn
