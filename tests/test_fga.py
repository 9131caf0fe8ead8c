"""Tests of faml_jax.fga: roulette selection, kernel fusion (Eq. 9), survivors, BatchNorm
recomputation, checked against numpy and hand-computed values."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL
from scipy import stats

from faml_jax import fga, models

# ResNet18's two blocks per stage: the genes (the conv kernels) are counted against its layout.
SMALL = {**TINY_MODEL, "stage_depths": (2, 2, 2, 2)}


@pytest.fixture(scope="module")
def model():
    return models.build("r18_faml", 7, **SMALL)


@pytest.fixture(scope="module")
def members(model):
    """Four networks with distinct weights (one initialisation, each value scaled by a random
    factor per member) and randomised BatchNorm statistics."""
    base = jax.device_get(models.init(model, jax.random.key(0)))
    out = []
    for i in range(4):
        rng = np.random.default_rng(i)
        out.append(
            {
                "params": jax.tree_util.tree_map(
                    lambda x: (x * rng.uniform(0.5, 1.5, x.shape)).astype(x.dtype), base["params"]
                ),
                "batch_stats": jax.tree_util.tree_map(
                    lambda x: rng.uniform(0.5, 1.5, x.shape).astype(x.dtype), base["batch_stats"]
                ),
            }
        )
    return out


def leaves_by_name(tree):
    return {"/".join(fga.path_names(p)): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_genes_are_exactly_the_convolution_kernels(members):
    genes = sorted(
        name
        for name, x in leaves_by_name(members[0]).items()
        if fga.conv_kernels(tuple(jax.tree_util.DictKey(k) for k in name.split("/")), x)
    )
    expected = ["params/stem/conv_main/kernel", "params/stem/conv_region0/kernel", "params/stem/conv_region1/kernel"]
    expected += [f"params/attn{i}/embed/kernel" for i in (1, 2, 3)]
    for stage, block in itertools.product(range(1, 5), range(2)):
        expected += [f"params/layer{stage}_{block}/conv1/kernel", f"params/layer{stage}_{block}/conv2/kernel"]
    expected += [f"params/layer{stage}_0/downsample_conv/kernel" for stage in (2, 3, 4)]
    assert genes == sorted(expected)


@pytest.mark.parametrize("parents", [[2, 0], [3, 1, 0]], ids=["k2", "k3"])
def test_fuse_averages_conv_kernels_and_copies_the_fittest_parent(members, parents):
    population = fga.stack(members)
    child = leaves_by_name(jax.jit(fga.fuse)(population, jnp.asarray(parents)))
    fittest = leaves_by_name(members[parents[0]])
    by_member = [leaves_by_name(m) for m in members]
    fused = 0
    for name, value in child.items():
        if name.endswith("kernel") and value.ndim == 4:
            expected = np.mean(np.stack([by_member[p][name] for p in parents]), axis=0)
            if len(parents) == 2:  # (a + b) / 2 has one correctly rounded result
                np.testing.assert_array_equal(value, expected, err_msg=name)
            else:
                np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
            fused += 1
        else:  # dense kernels, biases, BatchNorm, fusion weights, statistics: the fittest parent's
            np.testing.assert_array_equal(value, fittest[name], err_msg=name)
    assert fused == 25


def test_fusing_identical_parents_returns_the_parent(members):
    child = fga.fuse(fga.stack([members[1], members[1]]), jnp.array([0, 1]))
    chex.assert_trees_all_equal(child, members[1])


def test_a_custom_predicate_chooses_the_genes(members):
    everything = lambda path, leaf: True  # noqa: E731
    child = fga.fuse(fga.stack(members[:2]), jnp.array([0, 1]), is_fused=everything)
    a, b = leaves_by_name(members[0]), leaves_by_name(members[1])
    for name, value in leaves_by_name(child).items():
        np.testing.assert_array_equal(value, (a[name] + b[name]) / 2, err_msg=name)


def test_stack_and_unstack_round_trip(members):
    population = fga.stack(members)
    assert fga.population_size(population) == 4
    for original, back in zip(members, fga.unstack(population), strict=True):
        chex.assert_trees_all_equal(original, back)
    with pytest.raises(ValueError, match="empty population"):
        fga.stack([])


def test_selection_probabilities_are_inverse_loss_roulette():
    np.testing.assert_allclose(fga.selection_probs([1.0, 2.0, 4.0]), [4 / 7, 2 / 7, 1 / 7], rtol=1e-6)
    np.testing.assert_allclose(fga.selection_probs([0.3, 0.3]), [0.5, 0.5])
    np.testing.assert_allclose(jax.jit(fga.selection_probs)(jnp.array([1.0, 3.0])), [0.75, 0.25], rtol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1.0, 0.0], "member 1 has 0.0"),
        ([-2.0, 1.0], "member 0 has -2.0"),
        ([1.0, float("nan")], "member 1 has nan"),
        ([float("inf"), 1.0], "member 0 has inf"),
        ([], "non-empty"),
    ],
)
def test_invalid_losses_are_rejected_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        fga.selection_probs(bad)


def test_single_draws_follow_the_roulette_probabilities():
    losses = jnp.array([0.5, 1.0, 2.0, 4.0, 0.8])
    p = np.asarray(fga.selection_probs(losses), np.float64)
    keys = jax.random.split(jax.random.key(0), 20_000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: fga.select_parents(k, losses, 1)))(keys))[:, 0]
    counts = np.bincount(draws, minlength=5)
    assert stats.chisquare(counts, p * len(draws)).pvalue > 1e-3, (counts / len(draws), p)


def test_pairs_are_drawn_without_replacement_with_the_sequential_probabilities():
    """P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j): first i then j, or first j then i."""
    losses = jnp.array([0.5, 1.0, 2.0, 4.0])
    p = np.asarray(fga.selection_probs(losses), np.float64)
    pairs = list(itertools.combinations(range(4), 2))
    expected = np.array([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
    assert np.isclose(expected.sum(), 1.0)
    expected /= expected.sum()  # exactly 1 for the chi-square test (p comes from float32)
    keys = jax.random.split(jax.random.key(1), 20_000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: fga.select_parents(k, losses, 2)))(keys))
    assert np.all(draws[:, 0] != draws[:, 1])
    assert np.all(losses[draws[:, 0]] <= losses[draws[:, 1]])  # fittest parent first
    counts = np.array([np.sum((draws.min(1) == i) & (draws.max(1) == j)) for i, j in pairs])
    assert stats.chisquare(counts, expected * len(draws)).pvalue > 1e-3, (counts / len(draws), expected)


def test_select_parents_rejects_impossible_k():
    with pytest.raises(ValueError, match="cannot draw 3 distinct parents from a population of 2"):
        fga.select_parents(jax.random.key(0), [1.0, 2.0], 3)


def test_breed_makes_each_child_from_the_parents_it_reports(members):
    population = fga.stack(members)
    losses = jnp.array([0.9, 0.4, 1.3, 0.7])
    children, parents = jax.jit(fga.breed, static_argnums=(3, 4))(jax.random.key(3), population, losses, 3, 2)
    assert parents.shape == (3, 2)
    for child, chosen in zip(fga.unstack(children), np.asarray(parents)):
        assert losses[chosen[0]] <= losses[chosen[1]]
        expected = fga.fuse(population, jnp.asarray(chosen))
        chex.assert_trees_all_equal(child, expected)


def test_survivors_are_the_lowest_losses_in_order():
    np.testing.assert_array_equal(fga.survivors([0.9, 0.2, 0.5, 0.2, 1.0], 3), [1, 3, 2])
    with pytest.raises(ValueError, match="cannot keep 3 survivors of 2"):
        fga.survivors([1.0, 2.0], 3)


def test_recomputed_batch_stats_pool_every_batch(model, members):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    result = jax.jit(lambda v, x: fga.recompute_batch_stats(model, v, x))(members[0], images)
    # Only batch_stats change.
    chex.assert_trees_all_equal(result["params"], members[0]["params"])

    # The first BatchNorm's input (the stem output) does not depend on any BatchNorm: its pooled
    # statistics are the mean and (biased) variance over all 24 images and positions.
    from faml_jax.preprocess import normalize

    _, inter = model.apply(
        members[0],
        normalize(images.reshape(24, 32, 32, 3)),
        train=False,
        capture_intermediates=lambda mdl, name: mdl.name == "stem",
        mutable=["intermediates"],
    )
    stem = np.asarray(inter["intermediates"]["stem"]["__call__"][0], np.float64)
    np.testing.assert_allclose(result["batch_stats"]["bn1"]["mean"], stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result["batch_stats"]["bn1"]["var"], stem.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)

    # The same batch three times pools to that batch's own statistics (no between-batch term).
    once = fga.recompute_batch_stats(model, members[0], images[:1])
    thrice = fga.recompute_batch_stats(model, members[0], np.repeat(images[:1], 3, axis=0))
    chex.assert_trees_all_close(once, thrice, rtol=1e-5, atol=1e-6)
    # ... and they differ from the inherited (randomised) statistics.
    assert not np.allclose(
        once["batch_stats"]["layer2_0"]["bn1"]["var"], members[0]["batch_stats"]["layer2_0"]["bn1"]["var"]
    )
