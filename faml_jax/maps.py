"""Where a network looks (docs/method.md 6, paper Fig. 8): Grad-CAM on the last residual stage for every
model, the gradient-weighted attention relevancy of Chefer et al. (CVPR 2021) for models with
attention blocks, and an ensemble's map weighted by its members' T2V votes (Eq. 12).

Every function is pure and jit-able: images (N, S, S, 3) uint8 in, maps (N, S, S) in [0, 1] out
(each map divided by its maximum; an all-zero map stays zero). The gradients are taken with
respect to zero "perturbations" that the model adds to its stages and to its attention
probabilities (``flax.linen.Module.perturb``), so the model itself is unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax import ensemble
from faml_jax.errors import ConfigError
from faml_jax.preprocess import normalize

KINDS = ("gradcam", "relevancy")
# **[choice]** Grad-CAM reads the deepest stage whose map is at least 7 x 7: Grad-CAM's usual
# resolution (ResNet's last stage at 224 px). At 64 px ResNet's last stage is 2 x 2 and at 32 px
# 1 x 1, a map of one value (docs/method.md 6).
MIN_SIDE = 7
_STAGE = re.compile(r"stage(\d+)")
logger = logging.getLogger(__name__)


def _first(tree):
    """Sown values are tuples of one value per call: the value."""
    return jax.tree.map(lambda t: t[0], tree, is_leaf=lambda t: isinstance(t, tuple))


def _probe(model, variables: dict, images: jax.Array, targets: jax.Array | None):
    """``(logits, activations, gradients)``: the sown intermediates of one forward pass and the
    gradient of the target class's logit (default: the predicted class) with respect to each."""
    model = model.clone(axis_name=None)
    x = normalize(images)
    base = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    logits, state = model.apply(base, x, train=False, mutable=["intermediates"])
    activations = _first(state["intermediates"])
    probed = {k: v for k, v in activations.items() if _STAGE.fullmatch(k) or k.startswith("attn")}
    zeros = jax.tree.map(jnp.zeros_like, probed)
    targets = jnp.argmax(logits, axis=-1) if targets is None else targets

    def chosen_logit(perturbations):
        out = model.apply({**base, "perturbations": perturbations}, x, train=False)
        return jnp.take_along_axis(out, targets[:, None], axis=-1).sum()  # images are independent

    return logits, activations, jax.grad(chosen_logit)(zeros), targets


def _upsample(maps: jax.Array, size: int) -> jax.Array:
    """(N, h, w) -> (N, size, size), bilinear, each map divided by its maximum."""
    maps = jax.image.resize(maps, (maps.shape[0], size, size), "bilinear")
    peak = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def grad_cam(activation: jax.Array, gradient: jax.Array, size: int) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_c mean_xy(dy/dA_c) A_c)`` of a stage's map
    ``activation`` (N, h, w, C), upsampled to ``size``."""
    weights = gradient.astype(jnp.float32).mean(axis=(1, 2), keepdims=True)
    return _upsample(jax.nn.relu((weights * activation.astype(jnp.float32)).sum(-1)), size)


def attention_relevancy(probs: list[jax.Array], gradients: list[jax.Array], size: int) -> jax.Array:
    """Chefer et al.'s relevancy of one attention block's tokens, its layers' attention
    probabilities ``probs`` and their gradients (each (N, heads, n, n), first layer first):
    ``R = I``, then ``R += mean_heads(relu(grad * A)) @ R`` per layer. **[choice]** The blocks
    have no class token, so a token's relevance is its column of ``R - I`` averaged over the
    queries (how much the gated output draws on it); shown on the block's grid of patches."""
    n = probs[0].shape[-1]
    relevance = jnp.broadcast_to(jnp.eye(n), (probs[0].shape[0], n, n))
    for a, g in zip(probs, gradients):
        weighted = jax.nn.relu(a * g).mean(axis=1)  # (N, n, n)
        relevance = relevance + weighted @ relevance
    tokens = (relevance - jnp.eye(n)).mean(axis=1)  # (N, n)
    side = int(round(np.sqrt(n)))
    return _upsample(tokens.reshape(-1, side, side), size)


def stage_for(shapes: dict, size: int) -> str:
    """The stage Grad-CAM reads: of ``shapes`` (a stage's name ``stage<i>`` -> its map's shape
    (N, h, w, C)), the deepest with h and w at least ``MIN_SIDE``; refused in one line
    (``ConfigError``) naming the input size needed when even the shallowest is smaller."""
    stages = sorted((int(m.group(1)), k) for k in shapes if (m := _STAGE.fullmatch(k)))
    if not stages:
        raise ConfigError("Grad-CAM needs a network that sows its stages' maps (stage1, stage2, ...)")
    large = [name for _, name in stages if min(shapes[name][1:3]) >= MIN_SIDE]
    if large:
        return large[-1]
    first = shapes[stages[0][1]][1:3]
    needed = -(-size * MIN_SIDE // min(first))
    raise ConfigError(
        f"Grad-CAM needs a stage map of at least {MIN_SIDE}x{MIN_SIDE}, and at {size} px this network's "
        f"shallowest stage is {first[0]}x{first[1]}: use an input size of at least {needed} px"
    )


def gradcam_stage(model, size: int) -> str:
    """The stage ``stage_for`` chooses for ``model`` at ``size`` px (shapes only: nothing is
    computed), so that a program can refuse before it writes anything."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    _, state = jax.eval_shape(
        lambda v, x: model.clone(axis_name=None).apply(v, x, train=False, mutable=["intermediates"]), variables, x
    )
    activations = _first(state["intermediates"])
    return stage_for({k: v.shape for k, v in activations.items() if _STAGE.fullmatch(k)}, size)


def network_maps(model, variables: dict, images: jax.Array, targets: jax.Array | None = None) -> dict:
    """One network's maps for ``images`` (N, S, S, 3) uint8 and ``targets`` (N,) classes (default:
    its prediction): ``{"logits", "gradcam"}`` (on the stage ``stage_for`` chooses) and, with attention blocks, ``"relevancy"`` (the
    mean of the blocks' relevancy maps)."""
    size = images.shape[1]
    logits, activations, gradients, _ = _probe(model, variables, images, targets)
    stage = stage_for({k: v.shape for k, v in activations.items() if _STAGE.fullmatch(k)}, size)
    logger.debug("Grad-CAM at %d px on %s (%dx%d)", size, stage, *activations[stage].shape[1:3])
    out = {"logits": logits, "gradcam": grad_cam(activations[stage], gradients[stage], size)}
    blocks = sorted(k for k in activations if k.startswith("attn"))
    if blocks:
        maps = []
        for block in blocks:
            layers = sorted(activations[block], key=lambda name: int(name.removeprefix("layer")))  # in depth order
            probs = [activations[block][layer]["attn"]["probs"] for layer in layers]
            grads = [gradients[block][layer]["attn"]["probs"] for layer in layers]
            maps.append(attention_relevancy(probs, grads, size))
        out["relevancy"] = _upsample(sum(maps), size)
    return out


@jax.jit
def vote_weighted(
    maps: jax.Array, logits: jax.Array, decision: jax.Array, alpha: float = ensemble.ALPHA, beta: float = ensemble.BETA
) -> jax.Array:
    """The ensemble's map (docs/method.md 6 [choice]): ``sum_l V^l_k map_l / sum_l V^l_k`` for the decided
    class k of each image, ``V^l_k`` member l's T2V vote for k (alpha for its top-1, beta for its
    top-2, else 0: Eq. 10-12), divided by its maximum; a class without votes takes the plain
    mean. ``maps`` (M, N, S, S), ``logits`` (M, N, C), ``decision`` (N,)."""
    votes = ensemble.vote_vectors(logits, alpha, beta)  # (M, N, C)
    weights = jnp.take_along_axis(votes, decision[None, :, None], axis=-1)[..., 0]  # (M, N)
    # A class no member voted for (an NOI decision can be one) takes the members' plain mean.
    weights = jnp.where(weights.sum(0) > 0, weights, 1.0)
    combined = jnp.einsum("mn,mnxy->nxy", weights, maps) / weights.sum(0)[:, None, None]
    peak = combined.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, combined / jnp.where(peak > 0, peak, 1.0), 0.0)  # peak 1, as every map


def make_explainer(model, kind: str = "gradcam") -> Callable:
    """Jitted ``explain(stacked_variables, images, decision) -> (maps (M, N, S, S), logits (M, N, C))``:
    every member's ``kind`` map ("gradcam", or "relevancy" for models with attention blocks) of
    the ensemble's decided class ``decision`` (N,), members one after another (``lax.map``)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown map {kind!r}; expected one of {KINDS}")

    @jax.jit
    def explain(stacked, images, decision):
        def one(variables):
            out = network_maps(model, variables, images, decision)
            if kind not in out:
                raise ConfigError("relevancy maps need a model with attention blocks (r18_faml, r18_fa)")
            return out[kind], out["logits"]

        return jax.lax.map(one, stacked)

    return explain


def jet(values: np.ndarray) -> np.ndarray:
    """The JET colour map: values in [0, 1] (..., ) -> uint8 RGB (..., 3), blue to red."""
    v = np.clip(np.asarray(values, np.float64), 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (255 * rgb).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 blended with the JET colours of ``heat`` (H, W) in [0, 1]."""
    blended = (1 - weight) * image.astype(np.float64) + weight * jet(heat).astype(np.float64)
    return blended.round().astype(np.uint8)
