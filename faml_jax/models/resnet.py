"""ResNet18 with the FA stem and attention blocks: R18, R18+FA and R18+FAML (docs/method.md 2)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from faml_jax.config import ModelConfig
from faml_jax.models.attention import AttentionBlock
from faml_jax.models.fa_stem import FAStem
from faml_jax.models.layers import BN_MOMENTUM, batch_norm, conv_init, precision_of
from faml_jax.models.pooling import max_pool


def head_inits(kind: str, fan_in: int) -> dict:
    """Initialisers of the dense head: "flax" (``nn.Dense``'s defaults: LeCun normal weights,
    zero bias) or "torch" (``torch.nn.Linear``'s: weights and bias uniform in +-1/sqrt(fan_in))."""
    if kind == "flax":
        return {}
    bound = 1.0 / fan_in**0.5

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    # kaiming_uniform(a=sqrt(5)): gain^2 = 2 / (1 + 5) = 1/3, limit sqrt(3 * (1/3) / fan_in).
    return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), "bias_init": bias_init}


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


class ResNet(nn.Module):
    """ResNet18 (widths and depths from ``config``) with the optional FA stem (docs/method.md 2.1) and
    attention blocks after stages 1-3 (docs/method.md 2.2); global average pooling and a dense head.

    ``axis_name`` names the pmap axis over which BatchNorm statistics are synchronised in
    training (None: no synchronisation). ``bn_momentum`` is the running statistics' decay
    (PyTorch's default; 0 makes them the last batch's statistics, used by
    ``fga.recompute_batch_stats``). The penultimate features are sown into the
    ``intermediates`` collection as ``features``.
    """

    config: ModelConfig
    axis_name: str | None = None
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: (batch, H, W, 3) normalised float image -> logits (batch, num_classes) float32.

        Convolutions and attention compute in ``config.dtype``; float32 products use
        ``config.matmul_precision``. The global average pooling, the head (last dense layer) and
        the logits are float32 in every dtype (docs/method.md 2.4 [choice])."""
        with precision_of(self.config):
            return self._forward(x, train)

    def _forward(self, x, train: bool):
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
        # The last stage's map, for Grad-CAM (docs/method.md 6): sown, and perturbable (a no-op unless a
        # "perturbations" collection is given).
        self.sow("intermediates", "last_stage", x)
        x = self.perturb("last_stage", x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        self.sow("intermediates", "features", features)
        head = nn.Dense(cfg.num_classes, dtype=jnp.float32, name="fc", **head_inits(cfg.head_init, features.shape[-1]))
        return head(features)
