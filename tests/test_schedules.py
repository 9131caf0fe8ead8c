"""Tests of faml_jax.schedules: Lr1 cosine, Lr2 step decay, the stability detector and the switch."""

import math

import pytest

from faml_jax import schedules
from faml_jax.config import ScheduleConfig


def test_is_stable_needs_both_ranges_over_the_window():
    loss = [2.0, 1.0, 0.50, 0.505, 0.51]
    acc = [0.3, 0.6, 0.80, 0.801, 0.802]
    assert schedules.is_stable(loss, acc, window=3, loss_range=0.02, acc_range=0.01)
    assert not schedules.is_stable(loss, acc, window=4, loss_range=0.02, acc_range=0.01)  # 1.0 in window
    assert not schedules.is_stable(loss, [0.3, 0.6, 0.80, 0.9, 0.802], 3, 0.02, 0.01)  # accuracy moves
    assert not schedules.is_stable(loss[:2], acc[:2], 3, 10.0, 10.0)  # too few epochs
    # The range is max - min, strictly below the threshold.
    assert not schedules.is_stable([1.0, 1.02, 1.01], [0.5] * 3, 3, 0.02, 0.01)


def test_cosine_by_hand():
    assert schedules.cosine_lr(0.0, 3e-4, 0.0) == pytest.approx(3e-4)
    assert schedules.cosine_lr(0.5, 3e-4, 0.0) == pytest.approx(1.5e-4)
    assert schedules.cosine_lr(0.25, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedules.cosine_lr(1.0, 3e-4, 1e-6) == pytest.approx(1e-6)
    assert schedules.cosine_lr(2.0, 3e-4, 1e-6) == pytest.approx(1e-6)


def test_switch_happens_exactly_when_the_detector_fires():
    """A scripted run: the loss falls, then flattens. The detector first fires at the end of
    epoch index 6 (window 3: epochs 4, 5, 6 within 0.02), so epoch 7 is the first with Lr2."""
    config = ScheduleConfig(
        lr1=3e-4, lr2=1e-5, lr2_step_epochs=2, lr2_gamma=0.1, window=3, loss_range=0.02, acc_range=0.01
    )
    losses = [2.0, 1.5, 1.1, 0.9, 0.800, 0.795, 0.790, 0.789, 0.788, 0.787, 0.786]
    accs = [0.2, 0.4, 0.6, 0.7, 0.750, 0.752, 0.754, 0.755, 0.755, 0.756, 0.756]
    state = schedules.LrState()
    switch_epochs, lrs = [], []
    for epoch in range(len(losses)):
        lrs.append(schedules.learning_rate(config, state, epoch, 0, steps_per_epoch=10, total_epochs=20))
        state = schedules.after_epoch(config, state, epoch, losses[: epoch + 1], accs[: epoch + 1])
        switch_epochs.append(state.switch_epoch)
        fired = schedules.is_stable(losses[: epoch + 1], accs[: epoch + 1], 3, 0.02, 0.01)
        assert (state.switch_epoch is not None) == (fired or any(s is not None for s in switch_epochs[:-1]))
    assert switch_epochs.index(7) == 6 and state.switch_epoch == 7  # fired once, never moved
    # Epochs 0-6 follow the cosine over 20 epochs; then 1e-5 for 2 epochs, 1e-6 for 2, 1e-7.
    for epoch in range(7):
        assert lrs[epoch] == pytest.approx(schedules.cosine_lr(epoch / 20, 3e-4, 1e-5))  # ends at Lr2
    assert lrs[7:] == pytest.approx([1e-5, 1e-5, 1e-6, 1e-6])


def test_within_epoch_cosine_and_no_switch_option():
    config = ScheduleConfig(lr1=1.0, lr1_min=0.0, window=2, loss_range=1.0, acc_range=1.0, switch=False)
    state = schedules.after_epoch(config, schedules.LrState(), 1, [1.0, 1.0], [0.5, 0.5])
    assert state.switch_epoch is None and state.phase == 1
    # Step 5 of 10 in epoch 1 of 4: progress 15/40.
    assert schedules.learning_rate(config, state, 1, 5, 10, 4) == pytest.approx(schedules.cosine_lr(15 / 40, 1.0, 0.0))


def test_config_validation():
    with pytest.raises(ValueError, match="window"):
        ScheduleConfig(window=1)


def test_well_trained_means_stable_in_the_final_regime():
    config = ScheduleConfig(window=3, loss_range=0.02, acc_range=0.01)
    flat_loss, flat_acc = [0.5] * 6, [0.8] * 6
    # Stable, but still in Lr1: the detector only triggers the switch.
    assert not schedules.is_well_trained(config, schedules.LrState(None), flat_loss, flat_acc)
    # Switched at epoch 4 (0-based): only 2 epochs with Lr2 so far, fewer than the window.
    assert not schedules.is_well_trained(config, schedules.LrState(4), flat_loss, flat_acc)
    # Three stable epochs with Lr2.
    assert schedules.is_well_trained(config, schedules.LrState(3), flat_loss, flat_acc)
    # Three epochs with Lr2 that are not stable.
    assert not schedules.is_well_trained(config, schedules.LrState(3), [0.5, 0.5, 0.5, 0.6, 0.5, 0.5], flat_acc)
    # Without the switch, a stable Lr1 window is enough.
    no_switch = ScheduleConfig(window=3, loss_range=0.02, acc_range=0.01, switch=False)
    assert schedules.is_well_trained(no_switch, schedules.LrState(None), flat_loss[:3], flat_acc[:3])
    assert not schedules.is_well_trained(no_switch, schedules.LrState(None), flat_loss[:2], flat_acc[:2])


def test_lr1_cosine_ends_at_lr2_so_the_switch_never_raises_the_rate():
    """docs/method.md 2.4 [choice]: the cosine over the planned epochs ends at Lr2. By hand, 10 epochs of
    5 steps (50 steps): step 0 is Lr1; step t is lr2 + (lr1 - lr2) (1 + cos(pi t / 50)) / 2."""
    config = ScheduleConfig(lr1=3e-4, lr2=1e-5)
    state = schedules.LrState()
    lr = lambda s, e, i: schedules.learning_rate(config, s, e, i, steps_per_epoch=5, total_epochs=10)  # noqa: E731
    assert lr(state, 0, 0) == pytest.approx(3e-4, rel=1e-12)
    last = lr(state, 9, 4)  # the last Lr1 step of the plan, t = 49
    assert last == pytest.approx(1e-5 + (3e-4 - 1e-5) * (1 + math.cos(math.pi * 49 / 50)) / 2, rel=1e-12)
    assert 1e-5 < last < 1.03e-5
    # The switch can come at any epoch: the first Lr2 step is never above the last Lr1 step.
    for switch in range(1, 11):
        before = lr(state, switch - 1, 4)
        first_lr2 = lr(schedules.LrState(switch_epoch=switch), switch, 0)
        assert first_lr2 == 1e-5 <= before
    # An explicit floor is kept, and a floor above Lr1 is refused.
    assert schedules.learning_rate(ScheduleConfig(lr1=3e-4, lr1_min=0.0), state, 9, 4, 5, 10) < 1e-5
    with pytest.raises(ValueError, match="lr1_min"):
        ScheduleConfig(lr1=1e-4, lr1_min=2e-4)


def test_a_lengthened_run_goes_on_from_the_rate_it_reached():
    """A run planned for 10 epochs, resumed at epoch 4 step 3 (of 8) with 20: the cosine goes on
    from the rate reached there (no jump) and reaches the floor at the new end, decreasing all
    the way; by hand: lr(t) = floor + (r0 - floor) (1 + cos(pi (t - t0) / (20 - t0))) / 2."""
    config = ScheduleConfig(lr1=3e-4, lr2=1e-5)
    steps, planned = 8, 10
    before = schedules.LrState()
    state = schedules.lengthened(config, before, 4, 3, steps, planned, 20)
    r0 = schedules.learning_rate(config, before, 4, 3, steps, planned)
    assert (state.cosine_start, state.cosine_lr, state.cosine_end) == (4 + 3 / 8, r0, 20.0)
    assert schedules.learning_rate(config, state, 4, 3, steps, 20) == pytest.approx(r0, rel=1e-12)
    t = 12 + 5 / 8
    expected = 1e-5 + (r0 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 4.375) / (20 - 4.375)))
    assert schedules.learning_rate(config, state, 12, 5, steps, 20) == pytest.approx(expected, rel=1e-12)
    assert schedules.learning_rate(config, state, 20, 0, steps, 20) == pytest.approx(1e-5)
    rates = [schedules.learning_rate(config, before, e, s, steps, planned) for e in range(4) for s in range(steps)]
    rates += [schedules.learning_rate(config, before, 4, s, steps, planned) for s in range(3)]
    rates += [schedules.learning_rate(config, state, 4, s, steps, 20) for s in range(3, steps)]
    rates += [schedules.learning_rate(config, state, e, s, steps, 20) for e in range(5, 20) for s in range(steps)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # The old plan at the same point (the rate a plain re-planned cosine would jump to is higher).
    assert schedules.learning_rate(config, before, 4, 3, steps, 20) > 1.4 * r0
    # Lengthened again: the new segment starts from the second one's rate.
    again = schedules.lengthened(config, state, 15, 0, steps, 20, 30)
    assert again.cosine_lr == pytest.approx(schedules.learning_rate(config, state, 15, 0, steps, 20))
    # Nothing changes in Lr2, with a fixed cosine length (lr1_epochs), or with the same epochs.
    in_lr2 = schedules.LrState(switch_epoch=3)
    assert schedules.lengthened(config, in_lr2, 4, 0, steps, planned, 20) == in_lr2
    fixed = ScheduleConfig(lr1=3e-4, lr2=1e-5, lr1_epochs=10)
    assert schedules.lengthened(fixed, before, 4, 0, steps, planned, 20) == before
    assert schedules.lengthened(config, before, 4, 0, steps, planned, planned) == before
