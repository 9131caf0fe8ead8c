"""Attention blocks: a small ViT that re-weights local regions of a feature map (docs/method.md 2.2)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def rows(layer, x, features_axes: int = 1):
    """``layer`` (a dense layer over the last ``features_axes`` axes) applied to ``x`` as one
    matrix of rows: (batch, tokens, ...) flattened to (batch * tokens, ...) and back. The same
    values and parameters; XLA's CPU backend took about 3x longer for the weight gradient of a
    (batch, tokens, features) product than of the flattened one (BENCHMARKS.md)."""
    lead = x.shape[:-features_axes]
    y = layer(x.reshape((-1,) + x.shape[-features_axes:]))
    return y.reshape(lead + y.shape[1:])


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``softmax(q k^T / sqrt(d)) v``, then an output projection.

    The key projection has no bias: softmax over the keys is invariant to it (``q . b`` is the
    same for every key of a query), so its gradient is zero up to rounding error, which Adam
    would normalise into parameter updates of size ``lr`` driven by noise.
    """

    dim: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        """tokens: (batch, n, dim) -> (batch, n, dim)."""
        head_dim = self.dim // self.heads

        def project(name, use_bias=True):
            return rows(nn.DenseGeneral((self.heads, head_dim), use_bias=use_bias, dtype=self.dtype, name=name), tokens)

        q, k, v = project("query"), project("key", use_bias=False), project("value")  # (b, n, h, d)
        # One batched product per head: XLA's CPU backend ran "bqhd,bkhd->bhqk" (the head axis
        # between the token axes) about 3x slower than this, forward and backward (BENCHMARKS.md).
        scale = jnp.sqrt(head_dim).astype(jnp.float32)
        probs = jnp.stack(
            [
                jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h]).astype(jnp.float32) / scale, axis=-1)
                for h in range(self.heads)
            ],
            axis=1,
        )  # (b, h, n, n), in float32 as jax.nn.dot_product_attention does
        # The attention maps' relevancy (docs/method.md 6, Chefer et al.) reads the probabilities and their
        # gradient: sown, and perturbable (a no-op unless a "perturbations" collection is given).
        self.sow("intermediates", "probs", probs)
        probs = self.perturb("probs", probs)
        y = jnp.stack(
            [jnp.einsum("bqk,bkd->bqd", probs[:, h].astype(v.dtype), v[:, :, h]) for h in range(self.heads)], axis=2
        )  # (b, n, h, d)
        return rows(nn.DenseGeneral(self.dim, axis=(-2, -1), dtype=self.dtype, name="out"), y, features_axes=2)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``."""

    dim: int
    heads: int
    mlp_ratio: float = 2.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        """tokens: (batch, n, dim) -> (batch, n, dim)."""
        y = nn.LayerNorm(dtype=self.dtype, name="norm1")(tokens)
        y = SelfAttention(self.dim, self.heads, self.dtype, name="attn")(y)
        tokens = tokens + y
        y = nn.LayerNorm(dtype=self.dtype, name="norm2")(tokens)
        y = rows(nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp_in"), y)
        y = nn.gelu(y)
        y = rows(nn.Dense(self.dim, dtype=self.dtype, name="mlp_out"), y)
        return tokens + y


class AttentionBlock(nn.Module):
    """Gate a stage's feature map by a ViT over its patches (docs/method.md 2.2).

    The map (H, W, Ch) is cut into ``patch`` x ``patch`` patches, each embedded as a token with a
    learned position embedding; ``depth`` pre-norm encoder layers mix the tokens; a linear
    back-projection turns every token into its patch of gate logits ``g`` (patch, patch, Ch), and
    the output is ``x * 2 * sigmoid(g)``. [choice] The back-projection is initialised to zero, so
    the block is the identity at initialisation and a pre-trained backbone starts unchanged.

    Attributes:
      patch: patch side in feature-map pixels (H and W must be divisible by it).
      dim, depth, heads, mlp_ratio: the ViT's width, layers, heads and MLP expansion.
      dtype: compute dtype.
    """

    patch: int
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: (batch, H, W, Ch) -> (batch, H, W, Ch)."""
        b, h, w, ch = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(
                f"AttentionBlock: feature map {h}x{w} is not divisible by patch size {p}; "
                "choose attn_patch_sizes (or input_size) so that it is"
            )
        tokens = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embed")(x)
        gh, gw = tokens.shape[1], tokens.shape[2]
        tokens = tokens.reshape(b, gh * gw, self.dim)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, gh * gw, self.dim), jnp.float32)
        tokens = tokens + pos.astype(tokens.dtype)
        for i in range(self.depth):
            tokens = EncoderLayer(self.dim, self.heads, self.mlp_ratio, self.dtype, name=f"layer{i}")(tokens)
        tokens = nn.LayerNorm(dtype=self.dtype, name="norm")(tokens)
        gate = rows(
            nn.Dense(
                p * p * ch,
                dtype=self.dtype,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                name="project",
            ),
            tokens,
        )
        # (b, gh*gw, p*p*ch) -> (b, gh, gw, p, p, ch) -> (b, gh, p, gw, p, ch) -> (b, h, w, ch)
        gate = gate.reshape(b, gh, gw, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ch)
        return x * (2.0 * nn.sigmoid(gate)).astype(x.dtype)
