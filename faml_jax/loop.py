"""The training loop, one for every way networks are placed on the devices: ``train_epoch``
trains a group of members (``faml_jax.member``) for one epoch, each with its own batches and
learning rate; ``train_member`` runs it for one network data-parallel over all devices
(``DataParallel``, what ``trainer.fit`` does), ``train_side_by_side`` for several networks, one
per device (``MemberParallel``, FGA's ``--member-parallel``).

Each step's batches go to the devices ahead of the step (``train.prefetch_to_device``), metrics are
fetched every ``FETCH_EVERY`` steps, the first non-finite loss or gradient stops the run naming
its step (``EpochProgress.add``), and the epoch ends in ``Member.end_epoch`` (evaluation,
checkpoint, outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np

from faml_jax import fga, signals, train
from faml_jax.compiled import compiled
from faml_jax.errors import ConfigError, NonFiniteError
from faml_jax.member import Member

if TYPE_CHECKING:
    from faml_jax.setup import Setup

METRICS = ("loss", "train_ce", "accuracy", "lsr")  # the step's metrics summed over an epoch
FETCH_EVERY = 10  # steps whose metrics are fetched from the devices together (fewer host syncs)


# ---------------------------------------------------------------------------------------------
# Placing members on the devices. A placement trains a group of members: ``load`` their states,
# ``place`` one step's batches (one per member, None for one that is done), call it with one
# learning rate per member and which members are active, read a member's metrics, and give the
# states back to the host.


class DataParallel:
    """One network's train state replicated over all devices, its batches split over them
    (``train.parallel_train_step``): a group of one member."""

    width = 1

    def __init__(self, setup: Setup):
        self.devices = setup.devices  # this process's devices: it places its share of each batch
        self.multi_process = jax.process_count() > 1
        # All devices of all processes (one process: its own devices).
        devices = None if self.multi_process else self.devices
        self.step = compiled(
            setup.step_key("data-parallel", devices),
            lambda: train.parallel_train_step(
                setup.model,
                setup.tx,
                setup.config.loss,
                setup.class_weights,
                devices=devices,
                augment=setup.config.augment,
            ),
        )

    def load(self, states: list) -> None:
        (state,) = states
        self.state = train.replicate(state, self.devices)

    def place(self, batches: list):
        """The step's input on the devices: the batch split over this process's devices."""
        (batch,) = batches
        return train.shard(batch, self.devices)

    def __call__(self, placed, learning_rates: list[float], active: list[bool]):
        self.state, metrics = self.step(self.state, placed, learning_rates[0])
        return metrics

    @staticmethod
    def member_metrics(metrics, i: int) -> dict:
        return {k: float(v[0]) for k, v in metrics.items()}  # the same on every device

    def host_states(self, count: int = 1) -> list:
        return [jax.device_get(train.unreplicate(self.state))]

    def eval_variables(self, i: int, host_state):
        """Variables replicated over this process's devices, for the evaluator (one process:
        already there; several: the train state spans every process's devices)."""
        if self.multi_process:
            return train.replicate({"params": host_state.params, "batch_stats": host_state.batch_stats}, self.devices)
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}


class MemberParallel:
    """One member per device (``train.member_parallel_train_step``); a group smaller than the
    device count is padded with inactive copies."""

    def __init__(self, setup: Setup):
        if jax.process_count() > 1:
            raise ConfigError("--member-parallel trains in one process; several processes train data-parallel")
        self.devices = setup.devices
        self.width = len(self.devices)
        self.step = compiled(
            setup.step_key("member-parallel", self.devices),
            lambda: train.member_parallel_train_step(
                setup.model,
                setup.tx,
                setup.config.loss,
                setup.class_weights,
                devices=self.devices,
                augment=setup.config.augment,
            ),
        )

    def load(self, states: list) -> None:
        padded = list(states) + [states[0]] * (self.width - len(states))
        self.state = train.to_devices(fga.stack(jax.device_get(padded)), self.devices)

    def place(self, batches: list):
        """The step's input on the devices: one member's batch per device (zeros for a pad)."""
        n = self.width
        template = next(b for b in batches if b is not None)
        full = [b if b is not None else jax.tree_util.tree_map(np.zeros_like, template) for b in batches]
        full += [jax.tree_util.tree_map(np.zeros_like, template)] * (n - len(full))
        return train.to_devices(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *full), self.devices)

    def __call__(self, stacked, learning_rates: list[float], active: list[bool]):
        n = self.width
        lrs = np.asarray(list(learning_rates) + [0.0] * (n - len(learning_rates)), np.float32)
        mask = np.asarray(list(active) + [False] * (n - len(active)))
        self.state, metrics = self.step(self.state, stacked, lrs, mask)
        return metrics

    @staticmethod
    def member_metrics(metrics, i: int) -> dict:
        return {k: float(v[i]) for k, v in metrics.items()}

    def host_states(self, count: int) -> list:
        """The first ``count`` members' states on the host (one transfer for all)."""
        return fga.unstack(jax.device_get(self.state))[:count]

    def eval_variables(self, i: int, host_state):
        return train.replicate({"params": host_state.params, "batch_stats": host_state.batch_stats}, self.devices)


# ---------------------------------------------------------------------------------------------
# The loop


class EpochProgress:
    """One member's epoch: its metric sums and a progress bar (loss, accuracy, images/s, learning
    rate). ``done``/``sums``: the steps and sums of an epoch resumed within it. ``add`` raises
    ``NonFiniteError`` at the first step whose loss or gradient was not finite."""

    def __init__(
        self,
        desc: str,
        steps: int,
        images_per_step: int,
        progress: bool,
        *,
        member: Member,
        done: int = 0,
        sums: dict | None = None,
    ):
        from tqdm import tqdm

        self.sums = dict(sums) if sums else {k: 0.0 for k in METRICS}
        self.first, self.member = done, member
        self.images_per_step = images_per_step
        self.begin = time.perf_counter()
        self.bar = tqdm(
            total=steps, initial=done, desc=desc, disable=not progress, leave=False, unit="step", dynamic_ncols=True
        )

    def add(self, values: dict, where: str) -> None:
        """One step's metrics (``where``: "epoch e, step s" for the message)."""
        if values.get("finite", 1.0) < 1.0:
            where = f"{where} (loss {values['loss']:.4g})"
            raise NonFiniteError(self.member.non_finite_message(where, "the loss or a gradient"))
        for k in self.sums:
            self.sums[k] += values[k]

    def show(self, done: int, fetched: int, learning_rate: float) -> None:
        rate = (done - self.first) * self.images_per_step / (time.perf_counter() - self.begin)
        self.bar.set_postfix(
            loss=f"{self.sums['loss'] / done:.3f}",
            acc=f"{self.sums['accuracy'] / done:.3f}",
            img_s=f"{rate:.0f}",
            lr=f"{learning_rate:.2e}",
        )
        self.bar.update(fetched)

    def close(self) -> float:
        """Close the bar; the epoch's seconds."""
        self.bar.close()
        return time.perf_counter() - self.begin


def stop_signal(check: bool) -> int | None:
    """The signal a run was asked to stop by (``signals.deferred``), or None. Several processes
    must stop at the same step: they agree (one small all-gather) only where ``check``, at the
    steps where metrics are fetched; one process answers at every step."""
    if jax.process_count() == 1:
        return signals.requested()
    if not check:
        return None
    from jax.experimental import multihost_utils

    asked = multihost_utils.process_allgather(np.int32(signals.requested() or 0))
    return int(np.max(asked)) or None


def train_epoch(
    setup: Setup,
    placement,
    group: list[Member],
    *,
    progress: bool = True,
    stoppable: bool = False,
    on_done: Callable[[Member], None] | None = None,
) -> int | None:
    """Train every member of ``group`` that is not done for one epoch, its states already on the
    devices (``placement.load``); returns the signal the run was asked to stop by, if any.

    All members of the group are at the same step (a member resumed within an epoch trains in a
    group of one). The progress bar shows the first active member's loss (and all members'
    images/s). With ``stoppable``, a signal (``signals.deferred``) ends the step, saves each
    member there (``Member.save_within_epoch``) and raises ``signals.Interrupted``; a non-finite
    loss, gradient or weight raises ``NonFiniteError`` naming the epoch and step, before anything
    non-finite is saved. ``on_done(member)`` is called as soon as a member finishes."""
    steps = setup.steps_per_epoch()
    active = [not m.done for m in group]
    (start,) = {m.run.step_in_epoch for m, a in zip(group, active) if a}
    first = active.index(True)
    desc = ", ".join(f"{m.prefix}epoch {m.epoch + 1}/{m.config.epochs}" for m, a in zip(group, active) if a)
    epochs = [
        EpochProgress(
            desc,
            steps,
            setup.config.batch_size * sum(active),
            progress and j == first,
            member=m,
            done=start,
            sums=m.run.sums if a else None,
        )
        for j, (m, a) in enumerate(zip(group, active))
    ]
    iterators = [iter(m.loader.iterate(m.epoch, start_step=start)) if a else None for m, a in zip(group, active)]
    host_batches = ([next(it) if it is not None else None for it in iterators] for _ in range(start, steps))
    pending, lrs, stop, i = [], [0.0] * len(group), None, start - 1
    # Batches go to the devices ahead of their step (transfers overlap the running step).
    for i, placed in enumerate(train.prefetch_to_device(host_batches, placement.place), start=start):
        lrs = [m.learning_rate(i, steps) if a else 0.0 for m, a in zip(group, active)]
        pending.append(placement(placed, lrs, active))
        fetch = len(pending) == FETCH_EVERY or i == steps - 1  # fetched in groups: fewer host syncs
        stop = stop_signal(fetch) if stoppable else None
        if fetch or stop:
            fetched_from = i + 1 - len(pending)
            for k, metrics in enumerate(jax.device_get(pending)):
                for j, a in enumerate(active):
                    if a:
                        epochs[j].add(
                            placement.member_metrics(metrics, j),
                            f"epoch {group[j].epoch + 1}, step {fetched_from + k + 1}/{steps}",
                        )
            epochs[first].show(i + 1, len(pending), lrs[first])
            pending = []
        if stop:
            break
    elapsed = [epoch.close() for epoch in epochs][first]
    states = placement.host_states(len(group))
    if stop and i < steps - 1:
        for j, (member, a) in enumerate(zip(group, active)):
            if a:
                member.save_within_epoch(states[j], i + 1, epochs[j].sums, stop)
    for j, (member, a) in enumerate(zip(group, active)):
        if a:
            member.end_epoch(
                states[j], placement.eval_variables(j, states[j]), epochs[j].sums, steps, lrs[j], elapsed, steps - start
            )
            if member.done and on_done is not None:
                on_done(member)
    return (stop or stop_signal(True)) if stoppable else None


def train_member(setup: Setup, member: Member, *, progress: bool = True, stop_after: int | None = None) -> None:
    """Train one network data-parallel over all devices until it is ``done`` (or for
    ``stop_after`` epochs, as if interrupted). SIGTERM or Ctrl-C (``signals.deferred``) stops it
    within the epoch (``train_epoch``) or, when the epoch had just ended, after it, raising
    ``signals.Interrupted``."""
    placement = DataParallel(setup)  # its step compiled once per configuration (``compiled``)
    placement.load([member.state])
    epochs = 0
    with signals.deferred():
        while not member.done and (stop_after is None or epochs < stop_after):
            epochs += 1
            stop = train_epoch(setup, placement, [member], progress=progress, stoppable=True)
            if stop and not member.done:
                raise signals.stopped(stop, f"after epoch {member.epoch} (its checkpoint is saved)", member.prefix)


def train_side_by_side(
    setup: Setup,
    placement: MemberParallel,
    members: list[Member],
    *,
    progress: bool = True,
    on_done: Callable[[Member], None] | None = None,
) -> None:
    """Train ``members`` until each is ``done``, in groups of one member per device, each member
    with its own batches, loss draws and flips (``MemberParallel``). ``on_done(member)`` is
    called as soon as a member finishes (e.g. to record it). Signals are not deferred here: an
    interrupted member continues from its last epoch's checkpoint."""
    pending = [m for m in members if not m.done]
    within = [m.name for m in pending if m.run.step_in_epoch]
    if within:
        raise ConfigError(
            f"{', '.join(within)} stopped within an epoch: continue without side_by_side (--member-parallel) first"
        )
    for start in range(0, len(pending), placement.width):
        group = pending[start : start + placement.width]
        placement.load([m.state for m in group])
        while any(not m.done for m in group):
            train_epoch(setup, placement, group, progress=progress, on_done=on_done)
