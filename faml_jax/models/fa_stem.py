"""The FA stem: internal feature fusion in ResNet18's first layer (docs/method.md 2.1)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from faml_jax.models.layers import conv_init
from faml_jax.region import Region

STEM_KERNEL = 7
STEM_STRIDE = 2
STEM_PADDING = ((3, 3), (3, 3))  # torchvision's conv1 padding, so converted weights match.


def stem_conv(features: int, dtype: Any, name: str) -> nn.Conv:
    """A ResNet18 first-layer convolution: 7x7, stride 2, padding 3, no bias (BatchNorm follows)."""
    return nn.Conv(
        features,
        (STEM_KERNEL, STEM_KERNEL),
        strides=(STEM_STRIDE, STEM_STRIDE),
        padding=STEM_PADDING,
        use_bias=False,
        dtype=dtype,
        kernel_init=conv_init(),
        name=name,
    )


class FAStem(nn.Module):
    """ResNet18's 7x7/2 convolution, plus one auxiliary convolution per facial region.

    Each auxiliary convolution sees only its region of the input (the crop, zero-padded at the
    crop's border like the main convolution at the image's border), and its output is placed at
    the region's position in the main feature map, zero elsewhere. The maps are fused by weighted
    addition, ``F = F_main + w1 * F_r1 + w2 * F_r2`` (docs/method.md 2.1), with learnable weights
    ``fusion_weights`` initialised to ``fa_init`` ([choice]).

    With no regions this is exactly ResNet18's ``conv1``. The auxiliary maps are sown into the
    ``intermediates`` collection as ``region_<name>`` (already placed in the full map), so they
    can be inspected.

    Attributes:
      features: output channels.
      regions: facial regions, as fractions of the face box.
      fa_init: initial fusion weight of every region.
      dtype: compute dtype.
    """

    features: int = 64
    regions: tuple[Region, ...] = ()
    fa_init: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: (batch, H, W, 3) normalised image -> (batch, H/2, W/2, features)."""
        size = x.shape[1]
        if x.shape[2] != size or size % 2:
            raise ValueError(f"FAStem expects square inputs with an even side, got {x.shape}")
        fused = stem_conv(self.features, self.dtype, "conv_main")(x)
        if not self.regions:
            return fused
        weights = self.param(
            "fusion_weights", nn.initializers.constant(self.fa_init), (len(self.regions),), jnp.float32
        )
        fmap = fused.shape[1]
        for i, region in enumerate(self.regions):
            top, left, bottom, right = region.pixels(size)
            crop = x[:, top:bottom, left:right, :]
            aux = stem_conv(self.features, self.dtype, f"conv_region{i}")(crop)
            # Even pixel offsets: crop pixel (2i, 2j) is image pixel (top + 2i, left + 2j), which is
            # position (top/2 + i, left/2 + j) of the main feature map.
            dy, dx = top // 2, left // 2
            placed = jnp.pad(aux, ((0, 0), (dy, fmap - dy - aux.shape[1]), (dx, fmap - dx - aux.shape[2]), (0, 0)))
            self.sow("intermediates", f"region_{region.name}", placed)
            fused = fused + weights[i].astype(fused.dtype) * placed
        return fused
