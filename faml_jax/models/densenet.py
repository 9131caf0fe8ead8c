"""DenseNet-121 as torchvision defines it, for the paper's Table 6 (docs/method.md 7)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from faml_jax.models.fa_stem import STEM_KERNEL, STEM_PADDING, STEM_STRIDE
from faml_jax.models.layers import batch_norm
from faml_jax.models.network import Network
from faml_jax.models.pooling import max_pool


def densenet_conv_init():
    """torchvision's DenseNet initialisation of its convolutions: kaiming normal (fan_in)."""
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def avg_pool_2x2(x):
    """2x2 average pooling with stride 2 (PyTorch's ``AvgPool2d(2, 2)``: an odd last row or
    column is dropped), as a reshape and a mean: no ``reduce_window`` (which the ONNX converter
    and XLA's CPU backend handle less well)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DenseNet(Network):
    """DenseNet: a 7x7/2 convolution of ``widths[0]`` channels, BatchNorm, ReLU, 3x3/2 max
    pooling; dense blocks of ``stage_depths[i]`` layers (BatchNorm-ReLU-1x1 convolution to
    ``bn_size * growth_rate`` channels, BatchNorm-ReLU-3x3 convolution to ``growth_rate``, the
    output concatenated to the input), a transition between blocks (BatchNorm-ReLU-1x1 convolution
    halving the channels, 2x2 average pooling), a final BatchNorm and ReLU, global average
    pooling and the C-class head (initialised like R18's). torchvision's ``densenet121``: 64
    initial channels, growth 32, blocks 6-12-24-16, bottleneck 4.

    Each dense block's map (before its transition; the last one after the final BatchNorm and
    ReLU) is sown and perturbable as ``stage<i>``, for Grad-CAM (docs/method.md 6)."""

    def forward(self, x, train: bool):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        norm = batch_norm(train, dtype, self.axis_name, self.bn_momentum)

        def conv(features, kernel, name, strides=1, padding=0):
            return nn.Conv(
                features,
                (kernel, kernel),
                strides=(strides, strides),
                padding=((padding, padding),) * 2,
                use_bias=False,
                dtype=dtype,
                kernel_init=densenet_conv_init(),
                name=name,
            )

        x = conv(cfg.widths[0], STEM_KERNEL, "conv0", STEM_STRIDE, STEM_PADDING[0][0])(x.astype(dtype))
        x = nn.relu(norm(name="norm0")(x))
        x = max_pool(x, window=3, stride=2, padding=1)
        for block, layers in enumerate(cfg.stage_depths, 1):
            for layer in range(1, layers + 1):
                name = f"denseblock{block}_layer{layer}"
                y = nn.relu(norm(name=f"{name}_norm1")(x))
                y = conv(cfg.bn_size * cfg.growth_rate, 1, f"{name}_conv1")(y)
                y = nn.relu(norm(name=f"{name}_norm2")(y))
                y = conv(cfg.growth_rate, 3, f"{name}_conv2", padding=1)(y)
                x = jnp.concatenate([x, y], axis=-1)
            if block < len(cfg.stage_depths):
                x = self.stage(block, x)  # the dense block's map, before its transition
                x = nn.relu(norm(name=f"transition{block}_norm")(x))
                x = conv(x.shape[-1] // 2, 1, f"transition{block}_conv")(x)
                x = avg_pool_2x2(x)
        x = self.stage(len(cfg.stage_depths), nn.relu(norm(name="norm5")(x)))
        return self.head(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
