"""What every network of the project shares (ResNet, VGG, DenseNet): its fields, the precision
its float32 products take, the stage maps Grad-CAM reads and the float32 head (docs/method.md 2.4, 6)."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from faml_jax.config import ModelConfig
from faml_jax.models.layers import BN_MOMENTUM


def precision_of(config: ModelConfig) -> contextlib.AbstractContextManager:
    """Where a network's compute dtype is float32, its products and convolutions take
    ``config.matmul_precision`` (traced inside this context); bfloat16 products are what they
    are (docs/method.md 2.4)."""
    if jnp.dtype(config.dtype) == jnp.float32:
        return jax.default_matmul_precision(config.matmul_precision)
    return contextlib.nullcontext()


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


class Network(nn.Module):
    """A network of ``config``: subclasses define ``forward``. ``axis_name`` names the pmap axis
    over which BatchNorm statistics are synchronised in training (None: no synchronisation);
    ``bn_momentum`` is the running statistics' decay (PyTorch's default; 0 makes them the last
    batch's statistics, used by ``fga.recompute_batch_stats``)."""

    config: ModelConfig
    axis_name: str | None = None
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: (batch, H, W, 3) normalised float image -> logits (batch, num_classes) float32.

        The network computes in ``config.dtype``; float32 products use
        ``config.matmul_precision`` (``precision_of``). The head (last dense layer) and the logits
        are float32 in every dtype (docs/method.md 2.4 [choice])."""
        with precision_of(self.config):
            return self.forward(x, train)

    def forward(self, x, train: bool):
        raise NotImplementedError

    def stage(self, index: int, x):
        """The output of stage ``index`` (1 = the shallowest), a map Grad-CAM may read
        (docs/method.md 6: the deepest stage of at least ``maps.MIN_SIDE`` pixels a side): sown
        into ``intermediates`` as ``stage<index>``, and perturbable (a no-op unless a
        "perturbations" collection is given)."""
        self.sow("intermediates", f"stage{index}", x)
        return self.perturb(f"stage{index}", x)

    def head(self, features):
        """The penultimate ``features`` (sown as ``features``, float32) -> the C-class logits of
        the dense head ``fc`` (float32; initialised as ``config.head_init`` says)."""
        features = features.astype(jnp.float32)
        self.sow("intermediates", "features", features)
        inits = head_inits(self.config.head_init, features.shape[-1])
        return nn.Dense(self.config.num_classes, dtype=jnp.float32, name="fc", **inits)(features)
