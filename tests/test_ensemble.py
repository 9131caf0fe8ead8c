"""Tests of faml_jax.ensemble: T2V / T1V / NOI by hand and against a plain numpy reference, the
rank statistics of Table 1, and all members' logits in one call against a loop over members."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import reference_predict

from faml_jax import ensemble, fga, models, train
from faml_jax.data import ArraySource, eval_batches
from faml_jax.evaluate import EnsembleEvaluator


def member(c, first, second, strength=(3.0, 2.0)):
    """A member's logits over ``c`` classes with the given top-1 and top-2 classes."""
    row = np.zeros(c, np.float32)
    row[first], row[second] = strength
    return row


def test_t2v_scores_by_hand_c7():
    c = 7
    logits = np.stack([member(c, 2, 5), member(c, 5, 2), member(c, 1, 5)])[:, None, :]
    expected = np.zeros(c, np.float32)
    expected[2] = 1.9 + 1.0
    expected[5] = 1.0 + 1.9 + 1.0
    expected[1] = 1.9
    np.testing.assert_allclose(ensemble.t2v_scores(logits)[0], expected, rtol=1e-6)
    np.testing.assert_allclose(ensemble.vote_vectors(logits)[:, 0].sum(0), expected, rtol=1e-6)
    assert int(ensemble.t2v_predict(logits)[0]) == 5
    # T1V: classes 2, 5 and 1 have one vote each; NOI decides among them.
    assert ensemble.t1v_scores(logits)[0].tolist() == [0, 1, 1, 0, 0, 1, 0]


def test_two_second_places_outweigh_one_first_place_c8():
    c = 8
    # Class 7 is first for one member; class 3 is second for two members and first for none.
    logits = np.stack([member(c, 7, 3), member(c, 0, 3), member(c, 6, 3)])[:, None, :]
    scores = np.asarray(ensemble.t2v_scores(logits)[0])
    np.testing.assert_allclose(scores[[0, 3, 6, 7]], [1.9, 3.0, 1.9, 1.9], rtol=1e-6)
    assert int(ensemble.t2v_predict(logits)[0]) == 3
    # With alpha = 3.5 > 3 beta, a single first place outweighs three second places.
    assert int(ensemble.t2v_predict(logits, alpha=3.5)[0]) != 3


def test_weights_that_rank_a_second_choice_above_the_first_are_refused(tmp_path, capsys):
    """alpha < beta is refused in one line (library and program); equal weights and beta 0 are
    T2V's allowed extremes (docs/method.md 4)."""
    from experiments import ensemble as ensemble_program
    from faml_jax.config import EnsembleConfig
    from faml_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"alpha=1.0 is below beta=2.0: every member's second choice would count"):
        EnsembleConfig(alpha=1.0, beta=2.0)
    assert EnsembleConfig(alpha=1.0, beta=1.0).beta == 1.0 and EnsembleConfig(alpha=1.0, beta=0.0).beta == 0.0
    members = [str(tmp_path / "a"), str(tmp_path / "b")]
    code = ensemble_program.main(["--members", *members, "--alpha", "1", "--beta", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "alpha=1.0 is below beta=2.0" in err, err
    assert not (tmp_path / "r").exists()


def test_member_with_equal_logits_votes_for_the_two_lowest_classes():
    flat = np.zeros((1, 1, 7), np.float32)
    np.testing.assert_allclose(ensemble.vote_vectors(flat)[0, 0], [1.9, 1.0, 0, 0, 0, 0, 0])
    first, second = ensemble.top_two(flat)
    assert (int(first[0, 0]), int(second[0, 0])) == (0, 1)
    # Partial tie: the two largest logits equal -> top-1 is the lower of the two classes.
    row = np.array([[[0.0, 2.0, 0.5, 2.0, 0.0, 0.0, 0.0]]], np.float32)
    first, second = ensemble.top_two(row)
    assert (int(first[0, 0]), int(second[0, 0])) == (1, 3)


def test_ties_broken_by_noi_then_lowest_class():
    c = 7
    # Two members, opposite votes: classes 0 and 4 both score 2.9.
    confident_for_4 = np.stack([member(c, 0, 4, (1.0, 0.9)), member(c, 4, 0, (9.0, 1.0))])[:, None, :]
    confident_for_0 = np.stack([member(c, 0, 4, (9.0, 1.0)), member(c, 4, 0, (1.0, 0.9))])[:, None, :]
    for logits, winner in [(confident_for_4, 4), (confident_for_0, 0)]:
        scores = np.asarray(ensemble.t2v_scores(logits)[0])
        assert scores[0] == scores[4]  # an exact tie
        assert int(ensemble.t2v_predict(logits)[0]) == winner
        assert int(ensemble.t1v_predict(logits)[0]) == winner
    # Mirror-image members: the NOI scores tie too -> the lowest class index.
    symmetric = np.stack([member(c, 4, 2), member(c, 2, 4)])[:, None, :]
    assert int(ensemble.t2v_predict(symmetric)[0]) == 2
    assert int(ensemble.t1v_predict(symmetric)[0]) == 2


RAF_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def table3_example():
    """The vote pattern of the paper's Table 3 example (docs/method.md 7), one RAF-DB face of
    label anger and six networks: three rank anger first (weakly, 0.40) and another class second;
    three rank fear first (confidently, 0.85) and anger second. As probabilities, so that NOI's
    sums are read off by hand."""
    rows = []
    for second in ("disgust", "sadness", "surprise"):  # anger first, weakly
        p = np.full(7, 0.05)
        p[0], p[RAF_CLASSES.index(second)] = 0.40, 0.35
        rows.append(p)
    for _ in range(3):  # fear first, confidently; anger second
        p = np.full(7, 0.01)
        p[2], p[0] = 0.85, 0.10
        rows.append(p)
    probabilities = np.stack(rows)
    assert np.allclose(probabilities.sum(-1), 1.0)
    return np.log(probabilities).astype(np.float32)[:, None, :], np.array([0])


@pytest.mark.parametrize("ties, t1v_class", [("noi", "fear"), ("lowest", "anger")])
def test_the_papers_table3_example_under_both_tie_rules(ties, t1v_class):
    """T1V ties 3-3 between anger and fear: NOI (anger 3 * 0.40 + 3 * 0.10 = 1.5 against fear
    3 * 0.05 + 3 * 0.85 = 2.7) breaks it to fear, the lowest class index to anger (the label).
    T2V is no tie (anger 3 * 1.9 + 3 * 1.0 = 8.7, fear 3 * 1.9 = 5.7): anger under both rules."""
    logits, labels = table3_example()
    np.testing.assert_allclose(ensemble.t1v_scores(logits)[0], [3, 0, 3, 0, 0, 0, 0])
    np.testing.assert_allclose(ensemble.noi_scores(logits)[0, [0, 2]], [1.5, 2.7], rtol=1e-5)
    np.testing.assert_allclose(ensemble.t2v_scores(logits)[0, [0, 2]], [8.7, 5.7], rtol=1e-6)
    assert RAF_CLASSES[int(ensemble.t1v_predict(logits, ties)[0])] == t1v_class
    assert RAF_CLASSES[int(ensemble.predict(logits, "t1v", ties=ties)[0])] == t1v_class
    assert RAF_CLASSES[int(ensemble.t2v_predict(logits, ties=ties)[0])] == "anger"
    assert RAF_CLASSES[int(ensemble.noi_predict(logits)[0])] == "fear"
    # The report's analysis takes the rule: Bagging's (T1V's) accuracy on this face follows it.
    report = ensemble.analyse(logits, labels, [f"net{i}" for i in range(6)], RAF_CLASSES, ties=ties)
    assert report["ties"] == ties and report["ensemble"]["t1v"]["accuracy"] == float(t1v_class == "anger")
    assert report["ensemble"]["t2v"]["accuracy"] == 1.0 and report["ensemble"]["noi"]["accuracy"] == 0.0


def test_an_unknown_tie_rule_is_refused(capsys):
    from experiments import ensemble as ensemble_program
    from faml_jax.config import EnsembleConfig
    from faml_jax.errors import ConfigError

    logits, _ = table3_example()
    with pytest.raises(ConfigError, match="unknown tie rule 'coin'"):
        ensemble.predict(logits, "t2v", ties="coin")
    with pytest.raises(ConfigError, match="ties must be 'noi' or 'lowest', got 'coin'"):
        EnsembleConfig(ties="coin")
    with pytest.raises(SystemExit) as exit_:
        ensemble_program.main(["--members", "a", "b", "--ties", "coin"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ties: invalid choice: 'coin'" in err, err


def test_noi_by_hand():
    logits = np.log(np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.2, 0.7]], [[0.2, 0.5, 0.3]]], np.float32))
    np.testing.assert_allclose(ensemble.noi_scores(logits)[0], [0.8, 1.0, 1.2], rtol=1e-6)
    assert int(ensemble.noi_predict(logits)[0]) == 2
    # T2V: class 0 gets 1.9 + 0 + 0, class 1 gets 1.0 + 1.0 + 1.9, class 2 gets 1.9 + 1.0.
    np.testing.assert_allclose(ensemble.t2v_scores(logits)[0], [1.9, 3.9, 2.9], rtol=1e-6)


@pytest.mark.parametrize("c", [7, 8])
@pytest.mark.parametrize("strategy", ensemble.STRATEGIES)
def test_predictions_match_numpy_reference_with_many_ties(c, strategy):
    rng = np.random.default_rng(c)
    # Small integer logits: many equal logits within a member and many tied ensemble scores.
    logits = rng.integers(-2, 3, size=(5, 400, c)).astype(np.float32)
    expected, ambiguous = reference_predict(logits, strategy)
    assert ambiguous.mean() < 0.05
    np.testing.assert_array_equal(np.asarray(ensemble.predict(logits, strategy))[~ambiguous], expected[~ambiguous])
    jitted = jax.jit(ensemble.predict, static_argnums=1)(logits, strategy)
    np.testing.assert_array_equal(np.asarray(jitted)[~ambiguous], expected[~ambiguous])


def test_t2v_ignores_the_scale_of_each_member():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 300, 7)).astype(np.float32)
    scaled = logits * np.array([0.01, 1.0, 37.0, 2.5], np.float32)[:, None, None] + np.float32(3.0)
    np.testing.assert_array_equal(ensemble.t2v_scores(scaled), ensemble.t2v_scores(logits))
    # NOI depends on the scale, so it may only change decisions that were ties in T2V.
    scores = np.asarray(ensemble.t2v_scores(logits))
    top = np.sort(scores, axis=-1)
    untied = top[:, -1] > top[:, -2]
    assert untied.mean() > 0.5
    np.testing.assert_array_equal(
        np.asarray(ensemble.t2v_predict(scaled))[untied], np.asarray(ensemble.t2v_predict(logits))[untied]
    )


def test_rank_distribution():
    # Member 0 ranks the labels 1st, 2nd, 1st, 3rd; member 1 1st, 1st, 2nd (tie: lower index first), 1st.
    logits = np.array(
        [
            [[5, 1, 0], [5, 4, 0], [0, 0, 9], [2, 1, 0]],
            [[5, 1, 0], [0, 7, 1], [3, 3, 0], [0, 0, 1]],
        ],
        np.float32,
    )
    labels = np.array([0, 1, 2, 2])
    labels_m1 = np.array([0, 1, 1, 2])
    np.testing.assert_array_equal(ensemble.label_ranks(logits[:1], labels), [[0, 1, 0, 2]])
    np.testing.assert_array_equal(ensemble.label_ranks(logits[1:], labels_m1), [[0, 0, 1, 0]])
    np.testing.assert_allclose(ensemble.rank_distribution(logits[:1], labels), [[0.5, 0.25, 0.25]])
    rng = np.random.default_rng(2)
    many = rng.normal(size=(3, 500, 8)).astype(np.float32)
    truth = rng.integers(0, 8, 500)
    dist = np.asarray(ensemble.rank_distribution(many, truth))
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=1e-6)
    # The first column is each member's accuracy.
    np.testing.assert_allclose(dist[:, 0], (many.argmax(-1) == truth).mean(axis=1), rtol=1e-6)
    # Against numpy: the label's position in a stable descending sort.
    expected = np.array(
        [[np.flatnonzero(np.argsort(-many[k, i], kind="stable") == truth[i])[0] for i in range(500)] for k in range(3)]
    )
    np.testing.assert_array_equal(ensemble.label_ranks(many, truth), expected)


def test_bad_logits_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ensemble.t2v_scores(np.zeros((2, 3, 1), np.float32))
    with pytest.raises(AssertionError):
        ensemble.t2v_scores(np.zeros((3, 7), np.float32))  # no member axis
    with pytest.raises(ValueError, match="unknown strategy"):
        ensemble.predict(np.zeros((2, 3, 7), np.float32), "borda")


def tiny_members(count):
    model = models.build("r18_faml", 7, widths=(8, 8, 8, 8), input_size=32, attn_dim=8, attn_heads=2, attn_depth=1)
    members = []
    for i in range(count):
        v = models.init(model, jax.random.key(i))
        # Non-trivial BatchNorm statistics and attention gates, so every member differs everywhere.
        v = jax.tree_util.tree_map_with_path(
            lambda p, x: (
                x + 0.1 * jax.random.normal(jax.random.key(100 + i), x.shape, x.dtype)
                if "mean" in jax.tree_util.keystr(p) or "back" in jax.tree_util.keystr(p)
                else x
            ),
            v,
        )
        members.append(v)
    return model, members


@pytest.mark.gpu
@pytest.mark.parametrize("mapping", ["map", "vmap"])
def test_ensemble_logits_equal_a_loop_over_members(mapping):
    model, members = tiny_members(3)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    eval_step = train.make_eval_step(model)
    loop = np.stack([eval_step(v["params"], v["batch_stats"], images) for v in members])
    out = ensemble.make_ensemble_step(model, mapping)(fga.stack(members), images)
    assert out.shape == (3, 5, 7)
    np.testing.assert_allclose(out, loop, rtol=1e-5, atol=1e-5)
    assert not np.allclose(loop[0], loop[1])


def test_ensemble_evaluator_over_devices_with_padding(devices):
    model, members = tiny_members(3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    src = ArraySource(images, np.arange(23) % 7)
    evaluator = EnsembleEvaluator(model, batch_size=6, devices=devices)  # 6 -> 8 over 4 devices
    assert evaluator.mapping == "map"  # the CPU's measured default
    logits, labels = evaluator(train.replicate(fga.stack(members), devices), eval_batches(src, 10, 32, num_threads=1))
    eval_step = train.make_eval_step(model)
    expected = np.stack([eval_step(v["params"], v["batch_stats"], images) for v in members])
    assert logits.shape == (3, 23, 7)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.arange(23) % 7)


def test_decisions_are_jittable_and_vmappable():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 4, 50, 7)).astype(np.float32)  # 6 independent ensembles
    batched = jax.vmap(lambda x: ensemble.t2v_predict(x, 2.0, 1.0))(jnp.asarray(logits))
    for k in range(6):
        expected, ambiguous = reference_predict(logits[k], "t2v", 2.0, 1.0)
        np.testing.assert_array_equal(np.asarray(batched[k])[~ambiguous], expected[~ambiguous])


def test_an_exact_t2v_tie_goes_to_noi_with_any_weights():
    """alpha 0.7, beta 0.3, 10 members: class 0 has 6 first votes (4.2), class 1 has 3 first and
    7 second votes (2.1 + 2.1 = 4.2): an exact tie, which NOI decides (class 0, whose members are
    confident). A fused multiply-add (XLA on the CPU, under jit) rounds 4.2000003 for class 1."""

    def member(first, second, strength):
        row = np.zeros(3, np.float32)
        row[first], row[second] = strength, strength / 2
        return row

    rows = [member(0, 1, 8.0)] * 6 + [member(2, 1, 1.0)] + [member(1, 2, 1.0)] * 3
    logits = np.stack(rows)[:, None, :]  # (10, 1, 3)
    scores = np.asarray(ensemble.t2v_scores(logits, 0.7, 0.3))
    assert scores[0, 0] == scores[0, 1] == np.float32(0.7) * 6
    assert int(ensemble.predict(logits, "t2v", 0.7, 0.3)[0]) == 0
