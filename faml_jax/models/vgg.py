"""VGG16 (and VGG16 with BatchNorm) as torchvision defines it, for the paper's Table 6 (docs/method.md 7)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from faml_jax.models.layers import batch_norm, conv_init
from faml_jax.models.network import Network
from faml_jax.models.pooling import max_pool

POOLED = 7  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier


def adaptive_avg_pool(x, size: int):
    """PyTorch's ``adaptive_avg_pool2d`` of NHWC ``x`` to ``size`` x ``size``: output cell i
    averages input rows floor(i H / size) .. ceil((i + 1) H / size) - 1 (and the same for columns),
    which repeats rows when H < size."""
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return x
    rows = [(i * h // size, -(-(i + 1) * h // size)) for i in range(size)]
    cols = [(j * w // size, -(-(j + 1) * w // size)) for j in range(size)]
    return jnp.stack(
        [jnp.stack([jnp.mean(x[:, a:b, c:d, :], axis=(1, 2)) for c, d in cols], axis=1) for a, b in rows], axis=1
    )


def linear_init():
    """torchvision's VGG initialisation of its linear layers: normal, standard deviation 0.01."""
    return nn.initializers.normal(0.01)


class VGG(Network):
    """VGG: ``stage_depths[i]`` 3x3 convolutions (with bias; with BatchNorm when
    ``config.batch_norm``) of ``widths[i]`` channels and ReLU per stage, 2x2 max pooling after each
    stage, adaptive average pooling to 7x7, then the classifier: two dense layers of
    ``classifier_width`` with ReLU and dropout (active in training only), and the C-class head
    (initialised like R18's, ``config.head_init``). torchvision's ``vgg16``: widths 64-128-256-512-512,
    depths 2-2-3-3-3, classifier 4096.

    Each stage's map (before its pooling) is sown and perturbable as ``stage<i>``, for Grad-CAM
    (docs/method.md 6)."""

    def forward(self, x, train: bool):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        x = x.astype(dtype)
        norm = batch_norm(train, dtype, self.axis_name, self.bn_momentum)
        for stage, (width, depth) in enumerate(zip(cfg.widths, cfg.stage_depths), 1):
            for i in range(1, depth + 1):
                conv = nn.Conv(
                    width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=dtype,
                    kernel_init=conv_init(),
                    name=f"conv{stage}_{i}",
                )
                x = conv(x)
                if cfg.batch_norm:
                    x = norm(name=f"bn{stage}_{i}")(x)
                x = nn.relu(x)
            x = self.stage(stage, x)
            x = max_pool(x, window=2, stride=2, padding=0)
        x = adaptive_avg_pool(x, POOLED)
        x = x.reshape(x.shape[0], -1)  # NHWC order (the converter permutes torchvision's NCHW weights)
        for i in (1, 2):
            x = nn.Dense(cfg.classifier_width, dtype=dtype, kernel_init=linear_init(), name=f"fc{i}")(x)
            x = nn.Dropout(cfg.dropout, deterministic=not train)(nn.relu(x))
        return self.head(x)
