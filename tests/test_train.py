"""Tests of faml_jax.train: the data-parallel step, the injectable learning rate, eval."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL as SMALL
from helpers import require_torch

from faml_jax import fga, models, train
from faml_jax.config import LossConfig, OptimConfig
from faml_jax.losses import class_weights
from faml_jax.models.network import head_inits
from faml_jax.preprocess import normalize
from faml_jax.presets import AUGMENT_PRESETS


def small_model(num_classes=7, **kw):
    """The tiny R18+FAML without its attention blocks unless ``attention=True``: the step tests
    check plumbing (devices, members, rates, losses), and the blocks are two thirds of the step's
    compile time. The bfloat16 test keeps them (their softmax runs in float32)."""
    return models.build("r18_faml", num_classes, **{**SMALL, "attention": False, **kw})


def random_batch(seed, batch, size=32, classes=7):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, classes, batch).astype(np.int32),
    }


# One configuration shared by the tests below where the loss or batch does not matter: each
# distinct step is an XLA compilation of several seconds, and the suite's persistent compilation
# cache hands an identical step to the next test that builds it.
LOSS = LossConfig(kind="ml", p_lsr=0.5)
WEIGHTS = class_weights([10, 3, 5, 20, 8, 4, 9])
LSR = LossConfig(kind="lsr", eps=0.3)  # LSR every batch: the learning-rate and reference-loss tests


def max_abs_diff(a, b):
    a, b = jax.device_get((a, b))
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "weighted,augment",
    [
        (False, None),
        (
            True,
            dataclasses.replace(
                AUGMENT_PRESETS["dan"], rotate_p=0.5, crop_padding=0.125, brightness=0.3, contrast=0.3, saturation=0.3
            ),
        ),
    ],
    ids=["ml-ce", "ml-wce-augmented"],
)
def test_four_devices_equal_one_device_on_the_same_global_batch(devices, weighted, augment):
    """Five steps on 4 devices (4 images each) == five steps on 1 device (16 images): gradients
    averaged, BatchNorm synchronised, the same loss draws, the same flips and augmentations, and
    the same reference loss (train_ce)."""
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    loss_config = dataclasses.replace(LOSS, weighted=weighted)
    state = train.create_train_state(model, tx, jax.random.key(0))
    batches = [random_batch(i, 16) for i in range(5)]

    def run(devs):
        step = train.parallel_train_step(model, tx, loss_config, WEIGHTS, devices=devs, augment=augment)
        s = train.replicate(state, devs)
        history = []
        for b in batches:
            s, metrics = step(s, train.shard(b, devs), 1e-3)
            history.append(jax.device_get(train.unreplicate(metrics)))
        return train.unreplicate(s), history

    one, hist_one = run(devices[:1])
    four, hist_four = run(devices)
    assert int(four.step) == 5
    assert max_abs_diff(four.params, one.params) <= 1e-5
    assert max_abs_diff(four.batch_stats, one.batch_stats) <= 1e-5
    for m1, m4 in zip(hist_one, hist_four):
        assert m1["lsr"] == m4["lsr"] and m4["lsr"] in (0.0, 1.0)
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(m4["train_ce"], m1["train_ce"], rtol=1e-5)
        if m1["lsr"] == 0.0 and not weighted:  # a CE batch: the sampled loss is the reference loss
            np.testing.assert_allclose(m1["train_ce"], m1["loss"], rtol=1e-6)
    # Training moved the parameters (the comparison is not between two unchanged states).
    assert max_abs_diff(one.params, state.params) > 1e-3
    assert max_abs_diff(one.batch_stats, state.batch_stats) > 1e-3


@pytest.mark.gpu
def test_pmap_step_matches_plain_jitted_step():
    """The single-device jitted step (no axis) is the same computation as the pmap step."""
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    state = train.create_train_state(model, tx, jax.random.key(1))
    batch = random_batch(0, 16)
    jit_step = jax.jit(train.make_train_step(model, tx, LOSS, WEIGHTS, axis_name=None))
    s_jit, m_jit = jit_step(state, batch, 1e-3)
    one = jax.local_devices()[:1]
    pmap_step = train.parallel_train_step(model, tx, LOSS, WEIGHTS, devices=one)
    s_pmap, m_pmap = pmap_step(train.replicate(state, one), train.shard(batch, one), 1e-3)
    assert max_abs_diff(s_jit.params, train.unreplicate(s_pmap).params) <= 1e-6
    np.testing.assert_allclose(m_jit["loss"], m_pmap["loss"][0], rtol=1e-6)


def test_learning_rate_is_injected_without_recompiling():
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    state = train.create_train_state(model, tx, jax.random.key(2))
    plain, traced = train.make_train_step(model, tx, LSR, axis_name=None, flip=False), []

    def counted(*args):  # runs once per trace: a recompiled step is a new trace
        traced.append(args[2])
        return plain(*args)

    step = jax.jit(counted)
    batch = random_batch(1, 8)

    frozen, metrics = step(state, batch, 0.0)
    # Adam with learning rate 0 changes no parameter, but BatchNorm statistics and the step move.
    assert max_abs_diff(frozen.params, state.params) == 0.0
    assert int(frozen.step) == 1 and float(metrics["learning_rate"]) == 0.0
    moved, metrics = step(state, batch, 1e-2)
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
    assert float(moved.opt_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    # First Adam step: every parameter with a non-zero gradient moves by lr (|m_hat / sqrt(v_hat)| = 1).
    delta = jnp.abs(moved.params["fc"]["bias"] - state.params["fc"]["bias"])
    np.testing.assert_allclose(delta, 1e-2, rtol=1e-3)
    assert len(traced) == 1 and isinstance(traced[0], jax.core.Tracer)  # traced once, the rate an input


def test_sgd_optimizer_takes_the_injected_rate():
    model = small_model()
    tx = train.make_optimizer(OptimConfig(name="sgd", momentum=0.0), 5e-3)
    state = train.create_train_state(model, tx, jax.random.key(3))
    step = jax.jit(train.make_train_step(model, tx, LossConfig(kind="ce"), axis_name=None, flip=False))
    batch = random_batch(2, 8)
    new, _ = step(state, batch, 0.1)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            normalize(batch["image"]),
            train=True,
            mutable=["batch_stats"],
        )
        logq = jax.nn.log_softmax(logits)
        return -jnp.mean(logq[jnp.arange(8), batch["label"]])

    grads = jax.jit(jax.grad(loss))(state.params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, state.params, grads)
    assert max_abs_diff(new.params, expected) <= 1e-6


def test_eval_step_returns_logits_of_normalised_images():
    model = small_model()
    variables = models.init(model, jax.random.key(4))
    images = random_batch(3, 5)["image"]
    eval_step = train.make_eval_step(model)
    logits = eval_step(variables["params"], variables["batch_stats"], images)
    assert logits.shape == (5, 7)
    expected = jax.jit(model.apply)(variables, normalize(images))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_shard_rejects_indivisible_batches():
    with pytest.raises(ValueError, match="not divisible by 4 devices"):
        train.shard(random_batch(0, 6), jax.local_devices()[:4])


def test_overfits_a_fixed_batch_of_random_labels():
    """Capacity and plumbing: 32 random images with random labels are memorised (100% accuracy
    in inference mode, with the running BatchNorm statistics) within a few hundred steps."""
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    state = train.create_train_state(model, tx, jax.random.key(5))
    step = jax.jit(
        train.make_train_step(model, tx, LossConfig(kind="ml", p_lsr=0.8), axis_name=None, flip=False), donate_argnums=0
    )
    eval_step = train.make_eval_step(model)
    batch = random_batch(4, 32)
    accuracy = 0.0
    for i in range(1, 401):
        state, _ = step(state, batch, 1e-3)
        if i % 50 == 0:
            logits = eval_step(state.params, state.batch_stats, batch["image"])
            accuracy = float(jnp.mean(jnp.argmax(logits, -1) == batch["label"]))
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"accuracy {accuracy} after {i} steps"


def test_member_parallel_step_equals_each_members_own_step(devices):
    """Four networks trained side by side (one per device) each take exactly the step they take
    alone: their own batch, learning rate, loss draw and flips; an inactive member is unchanged."""
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    states = [train.create_train_state(model, tx, jax.random.key(10 + i)) for i in range(4)]
    batches = [random_batch(20 + i, 16) for i in range(4)]
    lrs = np.array([1e-3, 5e-4, 2e-3, 1e-3], np.float32)

    single = jax.jit(train.make_train_step(model, tx, LOSS, WEIGHTS, axis_name=None))
    expected = [single(s, b, float(lr)) for s, b, lr in zip(states, batches, lrs)]
    expected2 = [single(s, b, float(lr)) for (s, _), b, lr in zip(expected, batches, lrs)]

    step = train.member_parallel_train_step(model, tx, LOSS, WEIGHTS, devices=devices)
    stacked = train.to_devices(fga.stack(states), devices)
    stacked_batch = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
    active = np.array([True, True, False, True])
    out, metrics = step(stacked, stacked_batch, lrs, active)
    out2, metrics2 = step(out, stacked_batch, lrs, active)
    for i, member in enumerate(fga.unstack(jax.device_get(out2))):
        if not active[i]:
            original = jax.device_get(states[i])
            for name in ("step", "params", "batch_stats", "opt_state"):
                for a, b in zip(
                    jax.tree_util.tree_leaves(getattr(member, name)),
                    jax.tree_util.tree_leaves(getattr(original, name)),
                    strict=True,
                ):
                    np.testing.assert_array_equal(a, b)
            continue
        (s2, m2) = expected2[i]
        assert int(member.step) == 2
        # Equal up to float reordering between the two compiled programs (seen: 1.5e-6 after two
        # Adam steps of about lr = 1e-3 each), as in the four-devices test.
        assert max_abs_diff(member.params, s2.params) <= 1e-5
        assert max_abs_diff(member.batch_stats, s2.batch_stats) <= 1e-5
        np.testing.assert_allclose(metrics["loss"][i], expected[i][1]["loss"], rtol=1e-6)
        np.testing.assert_allclose(metrics2["loss"][i], m2["loss"], rtol=1e-6)
        assert float(metrics2["lsr"][i]) == float(m2["lsr"])
    # The members really differ (distinct seeds and batches), so the comparison is not trivial.
    assert max_abs_diff(expected2[0][0].params, expected2[1][0].params) > 1e-2


@pytest.mark.gpu
def test_bfloat16_compute_keeps_float32_parameters_and_statistics_and_tracks_float32():
    """Mixed precision (ModelConfig.dtype="bfloat16"): the step computes in bfloat16, while the
    parameters, optimiser moments and BatchNorm statistics stay float32; its loss and updated
    parameters stay close to the float32 step's from the same start."""
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    batch = random_batch(4, 16)
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = small_model(dtype=dtype, attention=True)
        state = train.create_train_state(model, tx, jax.random.key(2))
        step = jax.jit(train.make_train_step(model, tx, LOSS, WEIGHTS, axis_name=None))
        results[dtype] = step(state, batch, 1e-3)
    (s32, m32), (s16, m16) = results["float32"], results["bfloat16"]
    leaves = jax.tree_util.tree_leaves((s16.params, s16.batch_stats, s16.opt_state))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in leaves)
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 0.05 * float(m32["loss"])
    # One Adam step moves each parameter by about the learning rate; bfloat16 rounding of the
    # gradients may flip small ones, so compare the update sizes, not each sign.
    delta = jax.tree_util.tree_map(lambda a, b: a - b, s16.params, s32.params)
    assert max_abs_diff(s16.params, s32.params) <= 2.5e-3
    assert float(np.mean([np.mean(np.abs(x)) for x in jax.tree_util.tree_leaves(delta)])) < 5e-4


def test_reference_loss_is_plain_ce_of_the_steps_own_logits():
    """train_ce is CE (NumPy) of the logits the step computed, whatever loss was drawn: with LSR
    every batch (p = 1) the sampled loss differs from it, the reference does not."""
    model = small_model()
    tx = train.make_optimizer(OptimConfig(), 1e-3)
    state = train.create_train_state(model, tx, jax.random.key(2))
    batch = random_batch(3, 8)
    step = jax.jit(train.make_train_step(model, tx, LSR, axis_name=None, flip=False))
    _, metrics = step(state, batch, 1e-3)
    logits, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        normalize(batch["image"]),
        train=True,
        mutable=["batch_stats"],
    )
    logits = np.asarray(logits, np.float64)
    logq = logits - logits.max(-1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(-1, keepdims=True))
    ce = -np.mean(logq[np.arange(8), batch["label"]])
    np.testing.assert_allclose(metrics["train_ce"], ce, rtol=1e-5)
    assert metrics["lsr"] == 1.0 and abs(float(metrics["loss"]) - ce) > 0.05


@pytest.mark.parametrize(
    "name,mode,torch_name",
    [
        ("adam", "coupled", "Adam"),
        ("adam", "decoupled", "AdamW"),
        ("sgd", "coupled", "SGD"),
    ],
)
def test_weight_decay_modes_match_pytorch_optimizers(name, mode, torch_name):
    """Coupled weight decay = torch.optim.Adam(weight_decay) / SGD(weight_decay) (L2 in the
    gradient); decoupled = torch.optim.AdamW. Five steps on the same gradients of
    0.5 |A p - b|^2, equal to float32 rounding."""
    torch = require_torch()
    rng = np.random.default_rng(0)
    a, b, p0 = rng.standard_normal((6, 4)), rng.standard_normal(6), rng.standard_normal(4)
    lr, wd = 0.05, 0.1
    config = OptimConfig(name=name, weight_decay=wd, weight_decay_mode=mode, momentum=0.9)
    tx = train.make_optimizer(config, lr)
    params = jnp.asarray(p0, jnp.float32)
    opt_state = tx.init(params)
    grad = jax.grad(lambda p: 0.5 * jnp.sum((jnp.asarray(a, jnp.float32) @ p - b) ** 2))
    tp = torch.tensor(p0, dtype=torch.float32, requires_grad=True)
    kwargs = dict(lr=lr, weight_decay=wd) | (dict(momentum=0.9) if name == "sgd" else {})
    topt = getattr(torch.optim, torch_name)([tp], **kwargs)
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    for _ in range(5):
        updates, opt_state = tx.update(grad(params), opt_state, params)
        params = params + updates
        topt.zero_grad()
        (0.5 * ((ta @ tp - tb) ** 2).sum()).backward()
        topt.step()
    np.testing.assert_allclose(np.asarray(params), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_weight_decay_is_coupled_only():
    with pytest.raises(ValueError, match="SGD's weight decay is coupled"):
        OptimConfig(name="sgd", weight_decay=1e-4, weight_decay_mode="decoupled")
    OptimConfig(name="sgd", weight_decay=0.0)  # no decay: the mode does not matter


def test_torch_head_init_is_nn_linears_uniform():
    """head_init="torch": weights and bias uniform in +-1/sqrt(fan_in) (nn.Linear's default), with
    the variance of that uniform (bound^2 / 3); "flax": zero bias. The model's head (fan-in 32)
    and, for the distribution, the initialisers on a 256 x 1000 head."""
    fc = models.init(small_model(head_init="torch"), jax.random.key(0))["params"]["fc"]
    bound = 1 / np.sqrt(SMALL["widths"][-1])
    kernel, bias = np.asarray(fc["kernel"]), np.asarray(fc["bias"])
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound and np.any(bias != 0)
    flax_fc = models.init(small_model(), jax.random.key(0))["params"]["fc"]
    assert not np.any(np.asarray(flax_fc["bias"]))

    inits = head_inits("torch", 256)
    kernel = np.asarray(inits["kernel_init"](jax.random.key(1), (256, 1000)))
    bias = np.asarray(inits["bias_init"](jax.random.key(2), (1000,)))
    bound = 1 / np.sqrt(256)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.02)
    np.testing.assert_allclose(bias.var(), bound**2 / 3, rtol=0.15)
