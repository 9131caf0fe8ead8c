"""tools/torch_twin.py: the PyTorch twin of R18 / R18+FAML computes what the Flax model computes,
in eval and train mode, and one Adam step with cross-entropy moves both alike."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY_MODEL, jittered_variables, require_torch

from faml_jax import models
from faml_jax.presets import preset

torch = require_torch()

from tools.torch_twin import flax_params, from_flax  # noqa: E402  (needs torch)

BATCH = 8


def config_of(model: str):
    # ResNet18's two blocks per stage and two attention layers: every layer of the layout is exercised.
    return preset(
        "synthetic", model=model, model_options={**TINY_MODEL, "stage_depths": (2, 2, 2, 2), "attn_depth": 2}, seed=0
    )


def batch(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 7, BATCH)
    return x, y


def to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("model", ["r18", "r18_faml"])
def test_eval_and_train_mode_logits_equal_the_flax_models(model):
    config = config_of(model)
    variables = jittered_variables(config, seed=3)
    flax_model = models.network(config.model)
    twin = from_flax(variables, config.model)
    x, _ = batch(config.model.input_size)

    expected = np.asarray(flax_model.apply(variables, x, train=False))
    with torch.no_grad():
        got = twin(to_torch(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)

    expected, updated = flax_model.apply(variables, x, train=True, mutable=["batch_stats"])
    twin.train()
    with torch.no_grad():
        got = twin(to_torch(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4, rtol=1e-4)
    # The running statistics: means alike; PyTorch's running variance takes the unbiased batch
    # variance, Flax's the biased one: var_torch = 0.9 var0 + 0.1 * n/(n-1) * batch_var.
    stats = twin.state_dict()
    mean = np.asarray(updated["batch_stats"]["bn1"]["mean"])
    var, var0 = (np.asarray(v["bn1"]["var"]) for v in (updated["batch_stats"], variables["batch_stats"]))
    np.testing.assert_allclose(stats["bn1.running_mean"].numpy(), mean, atol=1e-5, rtol=1e-5)
    n = BATCH * (config.model.input_size // 2) ** 2  # batch x the stem's output positions
    batch_var = (var - 0.9 * var0) / 0.1
    np.testing.assert_allclose(
        stats["bn1.running_var"].numpy(), 0.9 * var0 + 0.1 * batch_var * n / (n - 1), rtol=1e-4, atol=1e-6
    )


def test_one_adam_step_with_cross_entropy_moves_both_alike():
    config = config_of("r18_faml")
    variables = jittered_variables(config, seed=4)
    flax_model = models.network(config.model)
    x, y = batch(config.model.input_size, seed=1)
    lr = 1e-3

    def loss(params):
        logits, _ = flax_model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    optimizer = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    grads = jax.jit(jax.grad(loss))(variables["params"])
    updates, _ = optimizer.update(grads, optimizer.init(variables["params"]), variables["params"])
    stepped = optax.apply_updates(variables["params"], updates)

    twin = from_flax(variables, config.model).train()
    opt = torch.optim.Adam(twin.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    torch.nn.functional.cross_entropy(twin(to_torch(x)), torch.from_numpy(y)).backward()
    opt.step()

    ours = {tuple(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(stepped)[0]}
    theirs = flax_params(twin)
    assert set(theirs) == set(ours)
    moved = 0
    for path, value in theirs.items():
        expected = ours[path].reshape(value.shape)
        before = np.asarray(_get(variables["params"], path))
        moved += int(np.sum(np.abs(expected - before.reshape(value.shape)) > lr / 2))
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5 * scale, err_msg="/".join(path))
    # Adam's first step moves a weight by about lr unless its gradient is near eps (measured: 65 % of
    # the weights moved by more than lr / 2), so the comparison is not between unchanged weights.
    assert moved > 0.5 * sum(v.size for v in theirs.values())


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
