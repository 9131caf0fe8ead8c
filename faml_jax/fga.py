"""FGA: feature fusion among networks by a genetic algorithm (docs/method.md 3, Algorithm 1).

Networks of one architecture are the population; their convolution kernels are the genes. A
child's kernels are the mean of its parents' kernels (Eq. 9: by the distributive law of
convolution, averaging kernels averages the feature maps the parents compute, Eq. 6-8), every
other parameter and BatchNorm statistic comes from its fittest parent.

Everything here is a pure function of pytrees and PRNG keys, jit-able:

* a *population* is one pytree whose leaves carry a leading member axis (``stack``/``unstack``
  convert from and to a list of member pytrees, e.g. ``{"params", "batch_stats"}``);
* ``selection_probs`` / ``select_parents``: roulette selection on inverse training loss;
* ``fuse``: one child from chosen parents; ``breed``: several children at once;
* ``survivors``: the population kept for the next generation (best by training loss);
* ``recompute_batch_stats``: optional exact BatchNorm statistics of a fused child on a few batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from faml_jax.preprocess import normalize

PyTree = Any
# Decides per leaf whether the child's value is the parents' mean: (key path, leaf) -> bool.
LeafPredicate = Callable[[tuple, jax.Array], bool]


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_names(path: tuple) -> tuple[str, ...]:
    """A ``jax.tree_util`` key path as plain names, e.g. ("params", "stem", "conv_main", "kernel")."""
    return tuple(_key_name(entry) for entry in path)


def conv_kernels(path: tuple, leaf) -> bool:
    """The default genes: every convolution kernel, i.e. every leaf named ``kernel`` with four
    axes (kh, kw, in, out). This covers the stem's main and region convs (FA), the blocks' 3x3
    convs, the downsample 1x1 convs and the attention blocks' patch-embedding convs; dense
    kernels (two axes), biases, BatchNorm scales, offsets and statistics and the FA fusion
    weights are not genes. ``leaf`` is one member's leaf (anything with ``.shape``)."""
    names = path_names(path)
    return bool(names) and names[-1] == "kernel" and len(leaf.shape) == 4


def stack(members: Sequence[PyTree]) -> PyTree:
    """Stack member pytrees of one structure into a population: every leaf gets a leading
    member axis of size ``len(members)``. Leaves that are numpy arrays on the host are stacked
    with numpy (no device round trip, no compilation per leaf shape); others with ``jnp``."""
    if not members:
        raise ValueError("cannot stack an empty population")

    def stack_leaf(*xs):
        return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)

    return jax.tree_util.tree_map(stack_leaf, *members)


def unstack(population: PyTree) -> list[PyTree]:
    """The inverse of ``stack``: a list of member pytrees."""
    leaves, treedef = jax.tree_util.tree_flatten(population)
    count = leaves[0].shape[0]
    return [treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(count)]


def population_size(population: PyTree) -> int:
    return jax.tree_util.tree_leaves(population)[0].shape[0]


def _check_losses(losses) -> None:
    """Raise ValueError for a non-positive or non-finite loss when the values are known (outside
    jit); under jit the check cannot raise and invalid losses give NaN probabilities instead."""
    try:
        values = np.asarray(losses, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"losses must be a non-empty vector (one per member), got shape {values.shape}")
    bad = [i for i, v in enumerate(values) if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(
            "selection needs a positive, finite training loss for every member; "
            + ", ".join(f"member {i} has {float(values[i])}" for i in bad)
        )


def selection_probs(losses) -> jax.Array:
    """Roulette probabilities on inverse training loss (docs/method.md 3, [choice]):
    ``p_m = (1 / L_m) / sum_k (1 / L_k)``; lower loss, more likely.

    losses: (members,) positive, finite. Returns (members,) float32 summing to 1.
    """
    _check_losses(losses)
    losses = jnp.asarray(losses, jnp.float32)
    inverse = jnp.where((losses > 0) & jnp.isfinite(losses), 1.0 / losses, jnp.nan)
    return inverse / jnp.sum(inverse)


def select_parents(key: jax.Array, losses, k: int) -> jax.Array:
    """Draw ``k`` distinct members by ``selection_probs(losses)``, without replacement (each draw
    proportional to the remaining members' probabilities). Returns int32 (k,) indices sorted
    fittest first (ascending loss), as ``fuse`` expects."""
    losses = jnp.asarray(losses, jnp.float32)
    n = losses.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct parents from a population of {n}")
    parents = jax.random.choice(key, n, (k,), replace=False, p=selection_probs(losses))
    return parents[jnp.argsort(losses[parents], stable=True)].astype(jnp.int32)


def fuse(population: PyTree, parents: jax.Array, is_fused: LeafPredicate = conv_kernels) -> PyTree:
    """One child from ``parents`` (Eq. 9).

    population: pytree with a leading member axis (e.g. ``{"params", "batch_stats"}`` stacked).
    parents: int (k,) member indices, the fittest first (``select_parents`` orders them so).
    is_fused: which leaves are genes (default ``conv_kernels``); called with the leaf's key path
      and a member leaf's shape and dtype (``jax.ShapeDtypeStruct``).

    Returns a member pytree (no member axis): gene leaves are the mean over the parents, every
    other leaf is the fittest parent's (``parents[0]``).
    """
    parents = jnp.asarray(parents)

    def child_leaf(path, leaf):
        if is_fused(path, jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)):
            return jnp.mean(leaf[parents].astype(jnp.float32), axis=0).astype(leaf.dtype)
        return leaf[parents[0]]

    return jax.tree_util.tree_map_with_path(child_leaf, population)


def breed(
    key: jax.Array, population: PyTree, losses, num_children: int, k: int, is_fused: LeafPredicate = conv_kernels
) -> tuple[PyTree, jax.Array]:
    """Algorithm 1, step 2, for ``num_children`` children at once: each child draws its own
    ``k`` parents with ``fold_in(key, child)`` and is fused from them.

    Returns ``(children, parents)``: the children stacked as a population, and the parents,
    int32 (num_children, k), fittest first.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_children))
    parents = jax.vmap(lambda kk: select_parents(kk, losses, k))(keys)
    children = jax.vmap(lambda p: fuse(population, p, is_fused))(parents)
    return children, parents


def survivors(losses, size: int) -> jax.Array:
    """Algorithm 1, step 5 ([choice]): indices of the ``size`` members with the lowest training
    loss (ties: the earlier member), best first."""
    losses = jnp.asarray(losses, jnp.float32)
    if size > losses.shape[0]:
        raise ValueError(f"cannot keep {size} survivors of {losses.shape[0]} members")
    return jnp.argsort(losses, stable=True)[:size].astype(jnp.int32)


def recompute_batch_stats(model, variables: PyTree, images: jax.Array) -> PyTree:
    """Exact BatchNorm statistics of ``variables`` on a few training batches.

    Averaging kernels changes every layer's activation statistics, so a fused child's inherited
    running statistics are stale (weight-averaging methods recompute them before evaluation).
    Each batch runs through the network in training mode (each layer normalised by its batch
    statistics, as in training); the result is every layer's mean and variance pooled over all
    batches: ``mean = avg(m_b)``, ``var = avg(v_b) + avg(m_b^2) - mean^2`` (equal batch sizes).

    model: the Flax model (its ``axis_name`` is ignored: one device).
    variables: ``{"params", "batch_stats"}`` of one member.
    images: uint8 (num_batches, batch, H, W, 3), un-normalised as the loader yields them.

    Returns ``variables`` with ``batch_stats`` replaced.
    """
    # momentum 0: the "running" statistics after one training-mode call are the batch's own.
    probe = model.clone(axis_name=None, bn_momentum=0.0)

    def batch_stats_of(x):
        # Dropout (VGG's classifier) does not reach the statistics, which all come before it.
        rngs = {"dropout": jax.random.key(0)}
        _, mutated = probe.apply(variables, normalize(x), train=True, mutable=["batch_stats"], rngs=rngs)
        return mutated.get("batch_stats", {})

    per_batch = jax.lax.map(batch_stats_of, jnp.asarray(images))  # leaves: (num_batches, ...)

    def pooled(stats):
        if set(stats) == {"mean", "var"}:
            m, v = stats["mean"], stats["var"]
            mean = jnp.mean(m, axis=0)
            return {"mean": mean, "var": jnp.mean(v, axis=0) + jnp.mean(m * m, axis=0) - mean * mean}
        return {key: pooled(value) for key, value in stats.items()}

    return {**variables, "batch_stats": pooled(per_batch)}
