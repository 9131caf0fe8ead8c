"""Train state, optimiser, and the data-parallel train step of R18+FAML (docs/method.md 2.3-2.4).

The step is a pure function ``(state, batch, learning_rate) -> (state, metrics)``:

* inputs arrive as uint8 NHWC; the random horizontal flip, the optional augmentations
  (``AugmentConfig``) and the normalisation run inside the compiled step;
* beside the sampled training loss (ML draws LSR or CE per batch) the step computes the reference
  loss ``train_ce``, plain CE of the same logits (docs/method.md 2.4 [choice]: what the stability detector
  and FGA read);
* the ML loss is drawn from a key derived from ``(state.rng, state.step)``, identical on every
  device, so all devices take the same loss branch;
* under ``pmap`` gradients and metrics are averaged over devices and BatchNorm statistics are
  synchronised, so N devices compute the same step as one device on the same global batch;
* the learning rate is an argument, written into the optimiser state (``optax.inject_hyperparams``),
  so schedules and the Lr1 -> Lr2 switch need no recompilation.
"""

from __future__ import annotations

import collections
import functools
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from faml_jax import models
from faml_jax.config import AugmentConfig, LossConfig, OptimConfig
from faml_jax.errors import ConfigError
from faml_jax.losses import ce_loss, make_loss_fn
from faml_jax.preprocess import augment as augment_batch
from faml_jax.preprocess import normalize

# Folded into the step's key for the augmentations other than the flip (a run without them draws
# its loss and flips exactly as before they existed).
AUGMENT_TAG = 0xA06
DROPOUT_TAG = 0xD40  # folded into a step's key for dropout (VGG's classifier; docs/method.md 7)

AXIS = "batch"  # the pmap axis name of the data-parallel step
MEMBER_AXIS = "member"  # the pmap axis name of the member-parallel step (one network per device)

Batch = dict[str, jax.Array]  # {"image": uint8 (batch, H, W, 3), "label": int32 (batch,)}
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes: a pure pytree (checkpointable as is).

    Attributes:
      step: int32 scalar, number of steps taken.
      params: model parameters.
      batch_stats: BatchNorm running statistics.
      opt_state: optimiser state (holds the current learning rate).
      rng: typed PRNG key of the run; the step's key is ``fold_in(rng, step)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def make_optimizer(config: OptimConfig, learning_rate: float) -> optax.GradientTransformation:
    """Adam (or SGD with momentum) whose learning rate lives in the state, settable per step
    (``learning_rate`` is its initial value; the train step sets the schedule's value each step).

    Weight decay (``config.weight_decay``): "decoupled" is AdamW (``torch.optim.AdamW``);
    "coupled" adds ``wd * param`` to the gradient first (``torch.optim.Adam(weight_decay=...)``,
    and what SGD always does, as ``torch.optim.SGD``).

    One transformation per configuration and numeric rate (memoised; it holds only pure
    functions), so that what is compiled from it (``create_train_state``'s initialiser) is
    compiled once; any other rate (an optax schedule) gets a new one."""
    if isinstance(learning_rate, numbers.Real):
        return _memoised_optimizer(config, float(learning_rate))
    return _optimizer(config, learning_rate)


def _optimizer(config: OptimConfig, learning_rate) -> optax.GradientTransformation:
    if config.name == "adam":
        if config.weight_decay and config.weight_decay_mode == "decoupled":
            return optax.inject_hyperparams(optax.adamw)(
                learning_rate=learning_rate,
                b1=config.b1,
                b2=config.b2,
                eps=config.eps,
                weight_decay=config.weight_decay,
            )
        core = optax.inject_hyperparams(optax.adam)(
            learning_rate=learning_rate, b1=config.b1, b2=config.b2, eps=config.eps
        )
    else:
        core = optax.inject_hyperparams(optax.sgd)(
            learning_rate=learning_rate, momentum=config.momentum, nesterov=config.nesterov
        )
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), core)
    return core


_memoised_optimizer = functools.lru_cache(maxsize=64)(_optimizer)


def set_learning_rate(opt_state, learning_rate):
    """Return ``opt_state`` with every injected ``learning_rate`` hyperparameter replaced."""

    def is_injected(node):
        return isinstance(node, optax.InjectStatefulHyperparamsState)

    def replace(node):
        if is_injected(node):
            lr = jnp.asarray(learning_rate, node.hyperparams["learning_rate"].dtype)
            return node._replace(hyperparams={**node.hyperparams, "learning_rate": lr})
        return node

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=is_injected)


@functools.lru_cache(maxsize=64)
def _compiled_init(tx: optax.GradientTransformation):
    """``tx.init`` compiled once per transformation (eagerly it is one small compiled call per
    parameter: seconds for a new network shape)."""
    return jax.jit(tx.init)


def create_train_state(model: models.ResNet, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """Initialise a model and its optimiser state. ``key`` (a typed key) seeds both the
    initialisation and the run's step keys."""
    init_key, rng = jax.random.split(key)
    variables = models.init(model, init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=_compiled_init(tx)(variables["params"]),
        rng=rng,
    )


def make_train_step(
    model: models.ResNet,
    tx: optax.GradientTransformation,
    loss_config: LossConfig,
    class_weights=None,
    *,
    axis_name: str | None = AXIS,
    flip: bool = True,
    augment: AugmentConfig | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """The pure train step. With ``axis_name`` it must run under ``pmap``/``shard_map`` with that
    axis (see ``parallel_train_step``); with None it is a single-device step for ``jax.jit``.

    ``augment``: the training augmentations (default: the paper's flip with p = 0.5, or none when
    ``flip`` is False).

    Metrics (averaged over devices): ``loss`` (the sampled training loss), ``train_ce`` (the
    reference loss: plain CE of the same logits, no second forward pass), ``accuracy`` (of the
    training forward pass), ``lsr`` (weight of LSR in this step's loss), ``learning_rate`` and
    ``finite`` (1 when the loss and the gradients are finite; averaged: below 1 when they are not
    on some device).
    """
    if augment is None:
        augment = AugmentConfig(flip=0.5 if flip else 0.0)

    def train_step(state: TrainState, batch: Batch, learning_rate) -> tuple[TrainState, Metrics]:
        # One device on the axis: nothing to average (an all-reduce over one device still copies
        # every gradient; 0.371 s against 0.353 s for the ResNet18 step on our CPU).
        sync = axis_name if axis_name is not None and jax.lax.axis_size(axis_name) > 1 else None
        net = model.clone(axis_name=sync)
        loss_fn = make_loss_fn(loss_config, class_weights, sync)
        step_key = jax.random.fold_in(state.rng, state.step)
        loss_key, flip_key = jax.random.split(step_key)
        images, labels = batch["image"], batch["label"]
        first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * images.shape[0]
        x = augment_batch(flip_key, jax.random.fold_in(step_key, AUGMENT_TAG), images, augment, first)

        dropout_key = jax.random.fold_in(step_key, DROPOUT_TAG)
        if axis_name is not None:  # each device's examples draw their own masks
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

        def objective(params):
            logits, mutated = net.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss, lsr = loss_fn(loss_key, logits, labels)
            return loss, (logits, mutated.get("batch_stats", {}), lsr)

        (loss, (logits, batch_stats, lsr)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        if sync is not None:
            grads = jax.lax.pmean(grads, sync)
        opt_state = set_learning_rate(state.opt_state, learning_rate)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            # 1 when the loss and the gradients are finite (read with the other metrics: no host
            # sync of its own), so a diverging run stops at the step where it diverged.
            "finite": jax.tree.reduce(lambda ok, g: ok & jnp.all(jnp.isfinite(g)), grads, jnp.isfinite(loss)).astype(
                jnp.float32
            ),
            "loss": loss,
            "train_ce": ce_loss(logits, labels),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            "lsr": lsr,
            "learning_rate": jnp.asarray(learning_rate, jnp.float32),
        }
        if sync is not None:
            metrics = jax.lax.pmean(metrics, sync)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def parallel_train_step(
    model: models.ResNet,
    tx: optax.GradientTransformation,
    loss_config: LossConfig,
    class_weights=None,
    *,
    devices=None,
    flip: bool = True,
    augment: AugmentConfig | None = None,
):
    """The train step ``pmap``-ed over ``devices`` (default: all local devices), state buffers
    donated. Call it with a replicated state (``replicate``), a batch sharded over devices
    (``shard``) and a scalar learning rate; metrics come back replicated."""
    step = make_train_step(model, tx, loss_config, class_weights, axis_name=AXIS, flip=flip, augment=augment)
    return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices, donate_argnums=(0,))


def member_parallel_train_step(
    model: models.ResNet,
    tx: optax.GradientTransformation,
    loss_config: LossConfig,
    class_weights=None,
    *,
    devices=None,
    flip: bool = True,
    augment: AugmentConfig | None = None,
):
    """Train several networks side by side, one per device (as the paper trained its population
    on several GPUs): the single-network step ``pmap``-ed over a *member* axis.

    Call it with ``(states, batches, learning_rates, active)``: states stacked over members
    (``fga.stack`` of ``TrainState``s, placed with ``device_sharding``), batches (members, batch,
    ...) with each member's own examples, learning rates (members,) and a bool mask (members,).
    Each member keeps its own loss draws and flips (from its own ``rng``); a member with
    ``active=False`` comes back unchanged (used to pad a group to the device count, or to hold a
    member that is already trained). Metrics are per member.
    """
    step = make_train_step(model, tx, loss_config, class_weights, axis_name=None, flip=flip, augment=augment)

    def masked_step(state: TrainState, batch: Batch, learning_rate, active):
        new, metrics = step(state, batch, learning_rate)
        keep = lambda a, b: jnp.where(active, a, b)  # noqa: E731
        new = new.replace(
            **{
                name: jax.tree_util.tree_map(keep, getattr(new, name), getattr(state, name))
                for name in ("step", "params", "batch_stats", "opt_state")
            }
        )
        return new, metrics

    return jax.pmap(masked_step, axis_name=MEMBER_AXIS, devices=devices, donate_argnums=(0,))


def make_eval_step(model: models.ResNet) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """Jitted ``eval_step(params, batch_stats, images_uint8) -> logits (batch, C)`` (BatchNorm in
    inference mode, no flip)."""
    model = model.clone(axis_name=None)

    @jax.jit
    def eval_step(params, batch_stats, images):
        return model.apply({"params": params, "batch_stats": batch_stats}, normalize(images), train=False)

    return eval_step


def device_sharding(devices=None, axis: str = AXIS) -> jax.sharding.NamedSharding:
    """The sharding of ``pmap``'s inputs and outputs over ``devices``: the leading axis split
    over a one-axis mesh named ``AXIS``. Placing arrays with exactly this sharding lets every
    call of the pmapped step hit the compilation cache (a differently named mesh, as
    ``flax.jax_utils.replicate`` makes, retraces and recompiles the step on its second call).
    The mesh axis is pmap's axis name: ``AXIS`` for data-parallel, ``MEMBER_AXIS`` for
    member-parallel steps."""
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def replicate(tree, devices=None):
    """Copy a pytree onto each device (leading device axis), sharded as ``pmap`` outputs are."""
    sharding = device_sharding(devices)
    n = sharding.mesh.size

    def copies(x):
        if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            x = jnp.broadcast_to(x, (n, *jnp.shape(x)))  # typed keys have no numpy form
        else:  # on the host: a device broadcast would compile once per leaf shape
            x = np.broadcast_to(np.asarray(x), (n, *np.shape(x)))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(copies, tree)


def to_devices(tree, devices=None, axis: str = MEMBER_AXIS):
    """Place a pytree whose leaves have a leading axis of the device count (e.g. a stacked
    population of ``member_parallel_train_step``) one slice per device, as ``pmap`` outputs are."""
    sharding = device_sharding(devices, axis)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def unreplicate(tree):
    """The first device's copy of a replicated pytree, on the host (numpy; typed PRNG keys stay
    jax arrays). Reads each leaf's first shard: no per-leaf device computation."""

    def first(x):
        if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(x.addressable_shards[0].data)[0]
        return x[0]

    return jax.tree_util.tree_map(first, tree)


def shard(batch, devices=None):
    """Split the leading (global batch) axis of every array over ``devices`` (default: all local
    devices): (batch, ...) -> (num_devices, batch / num_devices, ...), placed on the devices."""
    sharding = device_sharding(devices)
    n = sharding.mesh.size

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ConfigError(f"global batch {x.shape[0]} is not divisible by {n} devices")
        return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), sharding)

    return jax.tree_util.tree_map(split, batch)


def prefetch_to_device(batches: Iterable, place: Callable[[Any], Any], size: int = 2) -> Iterator:
    """``place(batch)`` for each of ``batches``, ``size`` batches ahead of the one yielded.

    ``place`` puts a batch on the devices (``shard``; ``jax.device_put`` returns at once and copies
    in the background), so the next batches travel to the accelerator while the current step runs
    and the step never waits on the host for its input, even when the host blocks to fetch
    metrics."""
    queue = collections.deque()
    for batch in batches:
        queue.append(place(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
