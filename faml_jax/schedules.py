"""Learning-rate regimes and the stability detector (docs/method.md 2.4).

Training starts with Lr1 (3e-4, cosine annealing) and switches to Lr2 (1e-5, step decay) once the
training loss is stable: over the last K epochs the range (max - min) of the training loss and of
the training accuracy are both under thresholds. The loss the detector reads is the *reference*
loss, plain CE of every training batch (docs/method.md 2.4 [choice]; ``train_ce`` in the train step's
metrics), not the sampled ML loss, whose LSR/CE draws alone move an epoch's mean by about 0.01. The same detector decides when a network is
"well trained" for FGA. Everything here is plain host-side Python on per-epoch numbers; the
learning rate reaches the compiled step as an argument.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from faml_jax.config import ScheduleConfig


def is_stable(
    losses: Sequence[float], accuracies: Sequence[float], window: int, loss_range: float, acc_range: float
) -> bool:
    """The stability detector: True when the last ``window`` epochs' training losses and
    accuracies each vary (max - min) by less than ``loss_range`` and ``acc_range``."""
    if len(losses) < window or len(accuracies) < window:
        return False
    recent_loss, recent_acc = losses[-window:], accuracies[-window:]
    return (max(recent_loss) - min(recent_loss) < loss_range) and (max(recent_acc) - min(recent_acc) < acc_range)


def cosine_lr(progress: float, lr: float, lr_min: float) -> float:
    """Cosine annealing from ``lr`` (progress 0) to ``lr_min`` (progress 1), clamped after 1."""
    progress = min(max(progress, 0.0), 1.0)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True)
class LrState:
    """Where the run is in the two regimes; saved with each checkpoint. ``switch_epoch`` is the
    first epoch trained with Lr2 (None while in Lr1). Lr1's cosine runs from ``cosine_start``
    (epochs, fractional) at ``cosine_lr`` (None: ``lr1``) to the floor at ``cosine_end`` epochs
    (None: the run's epochs, or ``lr1_epochs``); a run lengthened while in Lr1 continues from
    where it is (``lengthened``)."""

    switch_epoch: int | None = None
    cosine_start: float = 0.0
    cosine_lr: float | None = None
    cosine_end: float | None = None

    @property
    def phase(self) -> int:
        return 1 if self.switch_epoch is None else 2


def cosine_end(config: ScheduleConfig, state: LrState, total_epochs: int) -> float:
    """Where Lr1's cosine reaches its floor, in epochs."""
    if state.cosine_end is not None:
        return state.cosine_end
    return config.lr1_epochs or total_epochs


def learning_rate(
    config: ScheduleConfig, state: LrState, epoch: int, step_in_epoch: int, steps_per_epoch: int, total_epochs: int
) -> float:
    """The learning rate of one step (``epoch`` counted from 0).

    Lr1: cosine from ``lr1`` at the first step to ``lr1_floor`` (Lr2 by default, docs/method.md 2.4
    [choice]) at the end of the planned epochs, so switching to Lr2 never raises the rate; Lr2:
    ``lr2 * lr2_gamma ** (epochs since the switch // lr2_step_epochs)``."""
    if state.switch_epoch is None:
        start, end = state.cosine_start, cosine_end(config, state, total_epochs)
        at = epoch + step_in_epoch / steps_per_epoch
        progress = (at - start) / (end - start) if end > start else 1.0
        return cosine_lr(progress, config.lr1 if state.cosine_lr is None else state.cosine_lr, config.lr1_floor)
    decays = (epoch - state.switch_epoch) // config.lr2_step_epochs
    return config.lr2 * config.lr2_gamma ** max(decays, 0)


def lengthened(
    config: ScheduleConfig,
    state: LrState,
    epoch: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    planned_epochs: int,
    total_epochs: int,
) -> LrState:
    """The regime of a run planned for ``planned_epochs`` and resumed at (``epoch``,
    ``step_in_epoch``) for ``total_epochs`` instead. In Lr1 (with the cosine over the run's
    epochs) the cosine goes on from the rate reached there to the floor at the new end: the rate
    never jumps at the resume point (docs/method.md 2.4). Otherwise the regime is unchanged."""
    if state.switch_epoch is not None or config.lr1_epochs or planned_epochs == total_epochs:
        return state
    at = epoch + step_in_epoch / steps_per_epoch
    rate = learning_rate(config, state, epoch, step_in_epoch, steps_per_epoch, planned_epochs)
    return dataclasses.replace(state, cosine_start=at, cosine_lr=rate, cosine_end=float(total_epochs))


def after_epoch(
    config: ScheduleConfig, state: LrState, epoch: int, losses: Sequence[float], accuracies: Sequence[float]
) -> LrState:
    """Update the regime at the end of ``epoch`` given the training loss and accuracy history
    (one value per epoch so far): switch to Lr2 from the next epoch when the detector fires."""
    if (
        state.switch_epoch is None
        and config.switch
        and is_stable(losses, accuracies, config.window, config.loss_range, config.acc_range)
    ):
        return dataclasses.replace(state, switch_epoch=epoch + 1)
    return state


def is_well_trained(
    config: ScheduleConfig, state: LrState, losses: Sequence[float], accuracies: Sequence[float]
) -> bool:
    """Whether a network is "well trained" (docs/method.md 2.4, ready for FGA): the detector fires in the
    final regime. With the Lr1 -> Lr2 switch, that means ``window`` epochs trained with Lr2 that
    are stable (the firing in Lr1 only triggers the switch); without it, a stable Lr1 window."""
    if config.switch:
        if state.switch_epoch is None or len(losses) - state.switch_epoch < config.window:
            return False
    return is_stable(losses, accuracies, config.window, config.loss_range, config.acc_range)
