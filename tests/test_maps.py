"""Tests of faml_jax.maps (docs/method.md 6): Grad-CAM puts the map where a network provably reads;
the attention relevancy equals a NumPy transcription of Chefer et al.'s rule; the ensemble's map
is the T2V-vote-weighted mean by hand; JET colours by hand; the maps of R18 and R18+FAML."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, jittered_variables

from faml_jax import ensemble, maps, models
from faml_jax.errors import ConfigError
from faml_jax.presets import preset


class PatchReader(nn.Module):
    """A network whose logits read only the image's patch rows 8-15, columns 16-23: its input
    is masked there, and a bias-free convolution keeps everything outside at zero."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        mask = jnp.zeros(x.shape[1:3]).at[8:16, 16:24].set(1.0)[None, :, :, None]
        h = nn.relu(nn.Conv(6, (3, 3), use_bias=False)(x * mask))
        self.sow("intermediates", "stage1", h)
        h = self.perturb("stage1", h)
        return nn.Dense(3)(h.mean(axis=(1, 2)))


def test_grad_cam_lies_where_the_decision_is_read():
    model = PatchReader()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = {"params": variables["params"], "batch_stats": {}}
    out = jax.jit(lambda v, x: maps.network_maps(model, v, x))(variables, images)
    cam = np.asarray(out["gradcam"])
    assert cam.shape == (4, 32, 32) and "relevancy" not in out
    inside = cam[:, 6:18, 14:26].sum(axis=(1, 2))  # the patch and the bilinear upsampling's halo
    assert np.all(inside >= 0.99 * cam.sum(axis=(1, 2))) and np.all(cam.max(axis=(1, 2)) == 1.0)


def numpy_relevancy(probs, grads):
    """Chefer et al. 2021, Eq. 13-14 without a class token: R = I; R += mean_h(relu(grad * A)) R."""
    b, _, n, _ = probs[0].shape
    out = []
    for i in range(b):
        r = np.eye(n)
        for a, g in zip(probs, grads):
            r = r + np.maximum(a[i] * g[i], 0).mean(0) @ r
        out.append((r - np.eye(n)).mean(0))
    return np.asarray(out)


def test_attention_relevancy_follows_chefers_rule():
    rng = np.random.default_rng(1)
    probs = [rng.dirichlet(np.ones(16), size=(2, 2, 16)) for _ in range(2)]  # 2 images, 2 heads, 16 tokens
    grads = [rng.standard_normal((2, 2, 16, 16)) for _ in range(2)]
    got = maps.attention_relevancy(
        [jnp.asarray(p, jnp.float32) for p in probs], [jnp.asarray(g, jnp.float32) for g in grads], size=4
    )
    tokens = numpy_relevancy(probs, grads).reshape(2, 4, 4)
    np.testing.assert_allclose(got, tokens / tokens.max(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)


def test_the_ensemble_map_is_weighted_by_the_votes_by_hand():
    rng = np.random.default_rng(2)
    member_maps = rng.uniform(size=(3, 2, 4, 4))
    logits = np.array(
        [
            [[3.0, 2.0, 0.0], [0.0, 1.0, 2.0]],  # member 0: top-1 0, top-2 1 | top-1 2, top-2 1
            [[2.0, 3.0, 0.0], [2.0, 1.0, 0.0]],  # member 1: top-1 1, top-2 0 | top-1 0, top-2 1
            [[0.0, 1.0, 3.0], [1.0, 2.0, 0.0]],
        ]
    )  # member 2: top-1 2, top-2 1 | top-1 1, top-2 0
    decision = np.array([0, 1])
    got = np.asarray(maps.vote_weighted(member_maps, logits, decision, alpha=1.9, beta=1.0))
    first = (1.9 * member_maps[0, 0] + 1.0 * member_maps[1, 0]) / 2.9  # member 2 gave class 0 no vote
    second = (1.0 * member_maps[0, 1] + 1.0 * member_maps[1, 1] + 1.9 * member_maps[2, 1]) / 3.9
    expected = np.stack([first, second])
    np.testing.assert_allclose(got, expected / expected.max(axis=(1, 2), keepdims=True), rtol=1e-5)
    assert int(ensemble.t2v_predict(jnp.asarray(logits))[1]) == 1
    # A decided class no member voted for (possible under NOI): the members' plain mean.
    unvoted = np.asarray(maps.vote_weighted(member_maps, logits, np.array([2, 2])))
    assert not np.allclose(unvoted[0], 0)  # member 2 voted for class 2 in image 0: its map alone
    np.testing.assert_allclose(unvoted[0], member_maps[2, 0] / member_maps[2, 0].max(), rtol=1e-5)
    logits_no_vote = np.array([[[3.0, 2.0, 0.0, -1.0]], [[2.0, 3.0, 0.0, -1.0]]])  # class 3: nobody's top two
    plain = np.asarray(maps.vote_weighted(member_maps[:2, :1], logits_no_vote, np.array([3])))
    mean = member_maps[:2, 0].mean(0)
    np.testing.assert_allclose(plain[0], mean / mean.max(), rtol=1e-5)


def test_jet_colours_and_overlay_by_hand():
    np.testing.assert_array_equal(maps.jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    image = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(maps.overlay(image, np.zeros((2, 2))), np.full((2, 2, 3), [50, 50, 114]))


@pytest.mark.parametrize("name", ["r18", "r18_faml"])
def test_maps_of_the_papers_models(name):
    config = preset("synthetic", name, model_options=TINY_MODEL)
    model = models.network(config.model)
    variables = jittered_variables(config, 0)
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    network_maps = jax.jit(lambda v, x, targets=None: maps.network_maps(model, v, x, targets))  # as a user would
    out = network_maps(variables, images)
    assert out["gradcam"].shape == (2, 32, 32) and float(out["gradcam"].max()) <= 1.0
    assert ("relevancy" in out) == (name == "r18_faml")
    # The explainer of a stacked ensemble gives each member's own map.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), variables, jittered_variables(config, 1))
    explain = maps.make_explainer(model, "gradcam")
    decision = jnp.asarray([1, 2])
    member_maps, logits = explain(stacked, images, decision)
    np.testing.assert_allclose(
        member_maps[0], network_maps(variables, images, decision)["gradcam"], rtol=1e-4, atol=1e-5
    )
    assert logits.shape == (2, 2, 7)


@pytest.mark.parametrize(
    "name, size, stage", [("r18", 32, "stage1"), ("r18", 64, "stage2"), ("r18_faml", 32, "stage1")]
)
def test_a_small_input_has_a_map_that_varies_over_the_face(name, size, stage):
    """At 32 px ResNet's last stage is 1x1 (the map was all 1.0), at 64 px 2x2 (a bilinear
    upsampling of a 2x2 grid is a matrix of rank 2): Grad-CAM reads the deepest stage of at least
    7x7 instead, so the map has the rank of a finer grid and runs from low to high."""
    config = preset("synthetic", name, model_options={**TINY_MODEL, "input_size": size})
    model = models.network(config.model)
    assert maps.gradcam_stage(model, size) == stage
    images = np.random.default_rng(4).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    cam = np.asarray(
        jax.jit(lambda v, x: maps.network_maps(model, v, x))(jittered_variables(config, 0), images)["gradcam"]
    )
    for one in cam:
        assert one.max() == 1.0 and one.min() < 0.5
        assert np.linalg.matrix_rank(one, tol=1e-3) >= 4


def test_the_stage_is_the_deepest_of_at_least_7x7_or_a_one_line_refusal():
    shapes = {"stage1": (1, 16, 16, 8), "stage2": (1, 8, 8, 8), "stage3": (1, 4, 4, 8), "features": (1, 8)}
    assert maps.stage_for(shapes, 64) == "stage2"
    assert maps.stage_for({**shapes, "stage4": (1, 7, 7, 8)}, 224) == "stage4"
    with pytest.raises(ConfigError, match=r"^Grad-CAM needs a stage map of at least 7x7, .* at least 28 px$"):
        maps.stage_for({"stage1": (1, 4, 4, 8), "stage2": (1, 2, 2, 8)}, 16)
    # The same refusal from the network itself, before anything is computed: 16 px leaves 4x4.
    config = preset("synthetic", "r18", model_options={**TINY_MODEL, "input_size": 16})
    with pytest.raises(
        ConfigError, match="at 16 px this network's shallowest stage is 4x4: use an input size of at least 28 px"
    ):
        maps.gradcam_stage(models.network(config.model), 16)
    assert maps.gradcam_stage(models.network(config.model), 28) == "stage1"
