"""Max pooling as strided slices, with PyTorch's gradient rule.

``flax.linen.max_pool`` lowers to ``reduce_window``; its gradient is a ``select_and_scatter``,
which XLA's CPU backend expands into iotas, a variadic reduce-window and a scatter, a large share
of the CPU train step (profiled; BENCHMARKS.md). Here the window
maximum is an elementwise maximum over the window's strided slices, and the gradient goes, per
window, to the first position holding the maximum (row-major within the window, as in PyTorch's
``max_pool2d``), written back with interior-padded ``lax.pad``. All of it is elementwise work
that XLA fuses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _out_size(size: int, window: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - window) // stride + 1


def _windows(xp, window: int, stride: int, out_h: int, out_w: int):
    """The strided slices of padded ``xp``: one per window offset, each (batch, out_h, out_w, C)."""
    return [
        jax.lax.slice(
            xp,
            (0, a, b, 0),
            (xp.shape[0], a + stride * (out_h - 1) + 1, b + stride * (out_w - 1) + 1, xp.shape[3]),
            (1, stride, stride, 1),
        )
        for a in range(window)
        for b in range(window)
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """Square max pooling of NHWC ``x`` with -inf padding (``nn.max_pool(x, (window, window),
    (stride, stride), ((padding, padding),) * 2)``, ResNet's 3x3/2 pool by default).

    x: (batch, H, W, C) -> (batch, H_out, W_out, C), H_out = (H + 2 padding - window) // stride + 1.
    """
    return _max_pool_fwd(x, window, stride, padding)[0]


def _pad(x, padding: int):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)


def _max_pool_fwd(x, window, stride, padding):
    out_h = _out_size(x.shape[1], window, stride, padding)
    out_w = _out_size(x.shape[2], window, stride, padding)
    y = functools.reduce(jnp.maximum, _windows(_pad(x, padding), window, stride, out_h, out_w))
    return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, dy):
    x, y = residuals
    xp = _pad(x, padding)
    out_h, out_w = y.shape[1], y.shape[2]
    taken = jnp.zeros(y.shape, bool)
    dxp = jnp.zeros(xp.shape, dy.dtype)
    offsets = [(a, b) for a in range(window) for b in range(window)]
    for (a, b), values in zip(offsets, _windows(xp, window, stride, out_h, out_w)):
        first = (values == y) & ~taken  # the first position of the window holding its maximum
        taken = taken | first
        grad = jnp.where(first, dy, jnp.zeros_like(dy))
        # Back to padded-input positions a + stride*i, b + stride*j; zeros in between.
        dxp = dxp + jax.lax.pad(
            grad,
            jnp.zeros((), dy.dtype),
            (
                (0, 0, 0),
                (a, xp.shape[1] - a - stride * (out_h - 1) - 1, stride - 1),
                (b, xp.shape[2] - b - stride * (out_w - 1) - 1, stride - 1),
                (0, 0, 0),
            ),
        )
    dx = dxp[:, padding : padding + x.shape[1], padding : padding + x.shape[2], :]
    return (dx,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
