"""Models: ResNet18 and R18+FAML (docs/method.md 2), and Table 6's other basic networks
(ResNet34, VGG16, VGG16-BN, DenseNet-121; docs/method.md 7), built by name or from a
``ModelConfig`` (``network``).

>>> model = build("r18_faml", num_classes=7)
>>> variables = init(model, jax.random.key(0))
>>> logits = model.apply(variables, images)          # (batch, 7)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from faml_jax.config import ModelConfig
from faml_jax.errors import ConfigError
from faml_jax.models.attention import AttentionBlock, EncoderLayer
from faml_jax.models.densenet import DenseNet
from faml_jax.models.fa_stem import FAStem
from faml_jax.models.resnet import BasicBlock, ResNet
from faml_jax.models.vgg import VGG
from faml_jax.presets import MODEL_PRESETS as PRESETS

MODULES = {"resnet": ResNet, "vgg": VGG, "densenet": DenseNet}


def network(config: ModelConfig, *, axis_name: str | None = None):
    """The Flax module of ``config``'s architecture (``ResNet``, ``VGG`` or ``DenseNet``)."""
    return MODULES[config.architecture](config, axis_name=axis_name)


def build(name: str, num_classes: int, *, axis_name: str | None = None, **overrides) -> ResNet:
    """Build a named model.

    Args:
      name: one of ``PRESETS`` ("r18", "r18_fa", "r18_faml", "resnet34", "vgg16", "vgg16_bn",
        "densenet121").
      num_classes: number of classes C.
      axis_name: pmap axis over which BatchNorm statistics are synchronised in training.
      **overrides: any ``ModelConfig`` field (``widths``, ``input_size``, ``attention``,
        ``fa_regions``, ``fa_init``, ``dtype``, ...), e.g. a small CPU preset with
        ``widths=(16, 32, 64, 128), input_size=64``.

    Returns:
      A Flax ``ResNet`` module; its ``config`` holds the resolved ``ModelConfig``.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(PRESETS))}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown model option(s) {unknown}; ModelConfig has {sorted(fields)}")
    config = ModelConfig(num_classes=num_classes, **{**PRESETS[name], **overrides})
    return network(config, axis_name=axis_name)


@functools.lru_cache(maxsize=32)
def _jitted_init(config: ModelConfig, batch_size: int):
    """One compiled initialiser per configuration (compiling it takes seconds; a population
    initialises many networks of one configuration)."""
    model = network(config)
    size = config.input_size

    @jax.jit
    def init_fn(key):
        variables = model.init(key, jnp.zeros((batch_size, size, size, 3), jnp.float32), train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    return init_fn


def init(model: ResNet, key: jax.Array, batch_size: int = 1) -> dict:
    """Initialise ``{"params", "batch_stats"}`` for ``model`` at its configured input size
    (the variables depend only on ``model.config`` and ``key``)."""
    return _jitted_init(model.config, batch_size)(key)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


__all__ = [
    "AttentionBlock",
    "BasicBlock",
    "EncoderLayer",
    "FAStem",
    "ModelConfig",
    "PRESETS",
    "ResNet",
    "build",
    "count_params",
    "init",
]
