"""ResNet18 with the FA stem and attention blocks: R18, R18+FA and R18+FAML (docs/method.md 2)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from faml_jax.models.attention import AttentionBlock
from faml_jax.models.fa_stem import FAStem
from faml_jax.models.layers import batch_norm, conv_init
from faml_jax.models.network import Network
from faml_jax.models.pooling import max_pool


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 convolutions with BatchNorm (``norm``, the network's one
    ``layers.batch_norm`` partial), and a 1x1 projection shortcut when the stride or the width
    changes."""

    features: int
    norm: Any
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda kernel, strides, padding, name: nn.Conv(  # noqa: E731
            self.features,
            kernel,
            strides,
            padding=padding,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_init(),
            name=name,
        )
        s = (self.strides, self.strides)
        y = conv((3, 3), s, ((1, 1), (1, 1)), "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv((3, 3), (1, 1), ((1, 1), (1, 1)), "conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv((1, 1), s, "VALID", "downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(Network):
    """ResNet18 (widths and depths from ``config``; ResNet34 with 3-4-6-3 blocks) with the
    optional FA stem (docs/method.md 2.1) and attention blocks after stages 1-3 (docs/method.md
    2.2); global average pooling (float32) and the dense head (``Network``)."""

    def forward(self, x, train: bool):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        x = x.astype(dtype)
        norm = batch_norm(train, dtype, self.axis_name, self.bn_momentum)  # defined once, passed down
        x = FAStem(cfg.widths[0], cfg.fa_regions, cfg.fa_init, dtype, name="stem")(x)
        x = norm(name="bn1")(x)
        x = nn.relu(x)
        x = max_pool(x, window=3, stride=2, padding=1)
        for stage, (width, depth) in enumerate(zip(cfg.widths, cfg.stage_depths)):
            for block in range(depth):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, norm, strides, dtype, name=f"layer{stage + 1}_{block}")(x)
            if cfg.attention and stage < len(cfg.widths) - 1:
                x = AttentionBlock(
                    patch=cfg.attn_patch_sizes[stage],
                    dim=cfg.attn_dim,
                    depth=cfg.attn_depth,
                    heads=cfg.attn_heads,
                    mlp_ratio=cfg.attn_mlp_ratio,
                    dtype=dtype,
                    name=f"attn{stage + 1}",
                )(x)
            x = self.stage(stage + 1, x)
        return self.head(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
