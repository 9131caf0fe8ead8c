"""Ensemble decisions (docs/method.md 4): T2V, top-two voting (Eq. 10-12), and its baselines T1V (majority
vote) and NOI (summed softmax, Eq. 13); the rank statistics of paper Table 1; and the logits of all
members in one compiled call over their stacked variables.

Every decision function is pure and jit-able over a logits array of shape (members, batch,
classes), written ``(M, B, C)`` below. The vote counts, NOI and rank functions are compiled
(``jax.jit``: called on NumPy logits, as the report and the predictor do, each is one compiled
call, not dozens of small ones); T2V's weighting ``alpha * n1 + beta * n2`` is not, because XLA
fuses it into one multiply-add on the CPU, which rounds once and can turn an exact tie of two
classes' scores (e.g. alpha 0.7, beta 0.3: 6 and 0 votes against 3 and 7) into a win:

    >>> logits = ensemble_logits(model, fga.stack(members), images)      # (M, B, C)
    >>> predictions = t2v_predict(logits)                                   # (B,)

Ties. A member's top-1 and top-2 classes are its largest and second-largest logits, equal logits
going to the lower class index (as ``argmax`` does). Votes are counted as integers before they
are weighted, so members voting alike give bit-equal scores. A tie in T2V's or T1V's score is
broken by ``ties`` (docs/method.md 4 [choice]): "noi" (default) by NOI, then by the lowest class
index; "lowest" by the lowest class index alone. With an even number of voters T1V ties often
(3-3 of 6), so the rule moves T1V's (Bagging's) accuracy toward NOI's under "noi".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

from faml_jax.config import EnsembleConfig
from faml_jax.errors import ConfigError
from faml_jax.metrics import classification_metrics, decision_metrics, row_normalised
from faml_jax.preprocess import normalize

# T2V's weights (paper: 1.9 for a member's top-1 vote, 1.0 for its top-2 vote: two second places
# outweigh one first place); defined once, in EnsembleConfig.
ALPHA, BETA = EnsembleConfig.alpha, EnsembleConfig.beta
STRATEGIES = ("t1v", "noi", "t2v")
TIES = ("noi", "lowest")  # how a tie in T2V's or T1V's score is broken (docs/method.md 4)

Mapping = Literal["map", "vmap"]
# How members are mapped in ``ensemble_logits``, per backend, by measurement (``make bench``,
# BENCHMARKS.md): on the CPU ``vmap`` turns the convolutions into grouped convolutions and is
# slower than a loop over members, while ``lax.map`` matches the loop. Backends not measured yet
# get ``lax.map`` (it never does worse than the loop).
MAPPING_BY_BACKEND: dict[str, Mapping] = {"cpu": "map"}


def _check_logits(logits: jax.Array) -> None:
    chex.assert_rank(logits, 3)
    if logits.shape[-1] < 2:
        raise ConfigError(f"voting needs at least 2 classes, got logits of shape {logits.shape}")


@jax.jit
def top_two(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each member's top-1 and top-2 class: ``(M, B)`` int32 each (ties to the lower index)."""
    _check_logits(logits)
    first = jnp.argmax(logits, axis=-1)
    rest = jnp.where(jax.nn.one_hot(first, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return first.astype(jnp.int32), jnp.argmax(rest, axis=-1).astype(jnp.int32)


@jax.jit
def vote_vectors(logits: jax.Array, alpha: float = ALPHA, beta: float = BETA) -> jax.Array:
    """``V^l`` (Eq. 10-11): alpha at each member's top-1 class, beta at its top-2, 0 elsewhere:
    (M, B, C) float32."""
    first, second = top_two(logits)
    c = logits.shape[-1]
    return alpha * jax.nn.one_hot(first, c) + beta * jax.nn.one_hot(second, c)


@jax.jit
def vote_counts(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """How many members rank each class first, and second: ``(B, C)`` int32 each."""
    first, second = top_two(logits)
    c = logits.shape[-1]

    def count(classes):
        return jnp.sum(jax.nn.one_hot(classes, c, dtype=jnp.int32), axis=0)

    return count(first), count(second)


def t2v_scores(logits: jax.Array, alpha: float = ALPHA, beta: float = BETA) -> jax.Array:
    """``Out_T2V = sum_l V^l`` (Eq. 12): (B, C) float32, computed as ``alpha * n1 + beta * n2``
    from the integer vote counts (equal counts give bit-equal scores). Invariant to any positive
    rescaling or shift of a member's logits."""
    n1, n2 = vote_counts(logits)
    return alpha * n1.astype(jnp.float32) + beta * n2.astype(jnp.float32)


@jax.jit
def noi_scores(logits: jax.Array) -> jax.Array:
    """NOI (Eq. 13): the members' softmax probabilities summed, (B, C) float32."""
    _check_logits(logits)
    return jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)


@jax.jit
def t1v_scores(logits: jax.Array) -> jax.Array:
    """T1V (bagging): the number of members whose top-1 class each class is, (B, C) float32."""
    return vote_counts(logits)[0].astype(jnp.float32)


@jax.jit
def argmax_with_tiebreak(scores: jax.Array, tiebreak: jax.Array) -> jax.Array:
    """``argmax`` of ``scores`` (..., C); among equal maxima the largest ``tiebreak`` wins, then
    the lowest index."""
    best = scores == jnp.max(scores, axis=-1, keepdims=True)
    return jnp.argmax(jnp.where(best, tiebreak, -jnp.inf), axis=-1).astype(jnp.int32)


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ConfigError(f"unknown tie rule {ties!r}; expected one of {', '.join(TIES)}")


def _decide(scores: jax.Array, logits: jax.Array, ties: str) -> jax.Array:
    """argmax of ``scores``; equal maxima broken by NOI then the lowest class ("noi"), or by the
    lowest class alone ("lowest")."""
    _check_ties(ties)
    if ties == "lowest":
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return argmax_with_tiebreak(scores, noi_scores(logits))


def t2v_predict(logits: jax.Array, alpha: float = ALPHA, beta: float = BETA, ties: str = "noi") -> jax.Array:
    """T2V's decision: argmax of Eq. 12, ties broken by ``ties`` ("noi": NOI then the lowest
    class; "lowest": the lowest class): (B,) int32."""
    return _decide(t2v_scores(logits, alpha, beta), logits, ties)


def t1v_predict(logits: jax.Array, ties: str = "noi") -> jax.Array:
    """Majority vote of the members' top-1 classes, ties broken by ``ties`` (as ``t2v_predict``)."""
    return _decide(t1v_scores(logits), logits, ties)


@jax.jit
def noi_predict(logits: jax.Array) -> jax.Array:
    """argmax of the summed softmax (Eq. 13): (B,) int32."""
    return jnp.argmax(noi_scores(logits), axis=-1).astype(jnp.int32)


def predict(
    logits: jax.Array, strategy: str = "t2v", alpha: float = ALPHA, beta: float = BETA, ties: str = "noi"
) -> jax.Array:
    """The ensemble's decision by ``strategy`` ("t1v", "noi" or "t2v"; ``ties``: how T2V and T1V
    break a tie, ``TIES``): (B,) int32."""
    _check_ties(ties)
    if strategy == "t2v":
        return t2v_predict(logits, alpha, beta, ties)
    if strategy == "t1v":
        return t1v_predict(logits, ties)
    if strategy == "noi":
        return noi_predict(logits)
    raise ConfigError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


@jax.jit
def label_ranks(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The 0-based rank of the true label in each member's ordering of the classes (0 = its
    top-1; equal logits rank the lower class first, as ``argmax``): (M, B) int32."""
    _check_logits(logits)
    chex.assert_shape(labels, (logits.shape[1],))
    c = logits.shape[-1]
    label_logit = jnp.take_along_axis(logits, labels[None, :, None], axis=-1)
    ahead = (logits > label_logit) | ((logits == label_logit) & (jnp.arange(c) < labels[None, :, None]))
    return jnp.sum(ahead, axis=-1).astype(jnp.int32)


@jax.jit
def rank_distribution(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Paper Table 1: per member, the share of samples whose true label it ranks 1st, 2nd, ...,
    Cth: (M, C) float32, each row summing to 1."""
    ranks = label_ranks(logits, labels)
    return jnp.mean(jax.nn.one_hot(ranks, logits.shape[-1]), axis=1)


def ensemble_logits(model, stacked_variables: dict, images: jax.Array, mapping: Mapping = "map") -> jax.Array:
    """All members' logits for one batch in one call: (M, B, C) float32.

    Args:
      model: the members' ``ResNet`` (they share its configuration).
      stacked_variables: ``{"params", "batch_stats"}`` with a leading member axis on every leaf
        (``fga.stack``).
      images: (B, H, W, 3) uint8 (normalised here, as in the eval step).
      mapping: "map" runs the members one after another inside the compiled call
        (``jax.lax.map``); "vmap" batches them (``jax.vmap``: grouped convolutions). See
        ``MAPPING_BY_BACKEND``.
    """
    model = model.clone(axis_name=None)
    x = normalize(images)

    def one(variables):
        return model.apply({"params": variables["params"], "batch_stats": variables["batch_stats"]}, x, train=False)

    if mapping == "map":
        return jax.lax.map(one, stacked_variables)
    if mapping == "vmap":
        return jax.vmap(one)(stacked_variables)
    raise ConfigError(f"unknown mapping {mapping!r}; expected 'map' or 'vmap'")


def default_mapping(backend: str | None = None) -> Mapping:
    """The member mapping for ``backend`` (default: jax's default backend)."""
    return MAPPING_BY_BACKEND.get(backend or jax.default_backend(), "map")


def make_ensemble_step(model, mapping: Mapping | None = None) -> Callable[[dict, jax.Array], jax.Array]:
    """Jitted ``step(stacked_variables, images_uint8) -> logits (M, B, C)``."""
    mapping = mapping or default_mapping()
    return jax.jit(lambda variables, images: ensemble_logits(model, variables, images, mapping))


# ---------------------------------------------------------------------------------------------
# The analysis of an ensemble's test logits (what the ensemble report shows)


def analyse(
    logits: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    classes: tuple[str, ...],
    *,
    order: str = "given",
    alpha: float = ALPHA,
    beta: float = BETA,
    ties: str = "noi",
) -> dict:
    """Everything the report shows, from the members' test logits (M, N, C) and the labels (N,).

    ``order``: the order in which members join for the ensemble-size table: "given" (as listed)
    or "accuracy" (best single member first; chosen on the test split)."""
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels, np.int32)
    m, _, c = logits.shape
    if m < 1:
        raise ConfigError("no member's logits to analyse")
    singles = [classification_metrics(logits[i], labels) for i in range(m)]
    best = int(np.argmax([s["accuracy"] for s in singles]))  # first of equals

    def decide(subset: np.ndarray) -> dict:
        return {s: decision_metrics(np.asarray(predict(subset, s, alpha, beta, ties)), labels, c) for s in STRATEGIES}

    if order == "given":
        sequence = list(range(m))
    elif order == "accuracy":
        sequence = sorted(range(m), key=lambda i: (-singles[i]["accuracy"], i))
    else:
        raise ConfigError(f"unknown order {order!r}; expected 'given' or 'accuracy'")
    sizes = []
    decisions = decide(logits)  # the whole ensemble (one member: its own argmax, by every rule)
    for k in range(2, m + 1):
        subset = decisions if k == m else decide(logits[sequence[:k]])
        sizes.append({"size": k, "added": names[sequence[k - 1]], **{s: subset[s]["accuracy"] for s in STRATEGIES}})
    ranks = np.asarray(rank_distribution(logits, labels), np.float64)
    wrong = 1.0 - ranks[:, 0]
    second_of_wrong = np.divide(ranks[:, 1], wrong, out=np.zeros(m), where=wrong > 0)
    return {
        "num_test_images": int(len(labels)),
        "classes": list(classes),
        "alpha": alpha,
        "beta": beta,
        "ties": ties,
        "members": [
            {"name": n, "accuracy": s["accuracy"], "mean_class_accuracy": s["mean_class_accuracy"]}
            for n, s in zip(names, singles)
        ],
        "best_member": names[best],
        "mean_member_accuracy": float(np.mean([s["accuracy"] for s in singles])),
        "ensemble": {
            s: {"accuracy": d["accuracy"], "mean_class_accuracy": d["mean_class_accuracy"]}
            for s, d in decisions.items()
        },
        "order": order,
        "sizes": sizes,
        "ranks": {
            "members": {n: [round(float(r), 4) for r in row] for n, row in zip(names, ranks)},
            "mean": [round(float(r), 4) for r in ranks.mean(axis=0)],
            "second_among_wrong": {n: round(float(v), 4) for n, v in zip(names, second_of_wrong)},
        },
        "confusion_rates": {
            "best_member": row_normalised(singles[best]["confusion"]).tolist(),
            "t2v": row_normalised(decisions["t2v"]["confusion"]).tolist(),
        },
        "confusion_counts": {"best_member": singles[best]["confusion"], "t2v": decisions["t2v"]["confusion"]},
    }
