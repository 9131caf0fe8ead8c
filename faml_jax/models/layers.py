"""The layers every part of the network shares, defined once: BatchNorm with PyTorch's defaults
(so converted torchvision weights match) and torchvision's convolution initialisation."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

# PyTorch BatchNorm2d defaults (momentum 0.1 = flax 0.9, eps 1e-5), so converted weights match.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_init():
    """torchvision's ResNet initialisation: kaiming normal, fan_out, ReLU gain."""
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(train: bool, dtype: Any, axis_name: str | None = None, momentum: float = BN_MOMENTUM):
    """The network's BatchNorm as one ``partial`` (Flax's ResNet passes it down the same way):
    batch statistics in training (synchronised over ``axis_name``), running averages otherwise."""
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=momentum,
        epsilon=BN_EPSILON,
        dtype=dtype,
        axis_name=axis_name if train else None,
    )
