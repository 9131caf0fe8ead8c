"""Training one network: ``fit(config, workdir)`` (what ``experiments.train`` runs) trains,
evaluates and checkpoints one network data-parallel over all devices in one flat loop
(``train_member``); ``faml_jax.evolution`` reuses it for each network of a population (and
trains networks side by side itself). Also here: preparing a run's folder and the configuration
checks on resume. Joining several processes: ``faml_jax.launch``.

    >>> from faml_jax import config, trainer
    >>> summary = trainer.fit(config.preset("synthetic", epochs=2), "runs/quick")

A member's workdir and how it is read: ``faml_jax.runs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from faml_jax import data, models, pretrained, runs, schedules, signals, train
from faml_jax.checkpoint import CheckpointDamaged, CheckpointError, Checkpoints, sync_processes
from faml_jax.config import RunConfig, config_to_json, from_dict
from faml_jax.errors import (
    ConfigError,
    DiskFullError,
    NonFiniteError,
    OutOfMemoryError,
    WorkdirError,
    disk_full_phrase,
    is_disk_full,
    is_out_of_memory,
    requested_bytes,
    written_path,
)
from faml_jax.evaluate import Evaluator
from faml_jax.metrics import classification_metrics
from faml_jax.runs import DAMAGED, PREEMPTED, checkpoint_epochs, checkpoints_of, has_checkpoint, primary_workdir
from faml_jax.versions import checked, stamped, unstamped
from faml_jax.workdir import WorkdirLock, new_folders, prepare_directory, undo_new_run, undone_if_it_fails
from faml_jax.writer import RunWriter, write_atomic, write_json

# Per-epoch fields of metrics.jsonl that are timings (they differ between identical runs).
TIMING_FIELDS = ("images_per_s", "epoch_s")
OUTPUTS = (
    "checkpoints",
    PREEMPTED,
    DAMAGED,
    "test_logits",
    "tensorboard",
    "metrics.jsonl",
    "config.json",
    "summary.json",
)

# Configuration fields a resumed run may change: how long it trains, how many checkpoints it
# keeps, how many threads read its images.
MAY_DIFFER = ("epochs", "keep_checkpoints", "data.num_threads")

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Files


def has_run(workdir: Path) -> bool:
    """Whether a network's workdir holds something to continue from: a checkpoint (complete,
    damaged or saved within an epoch). A run that failed before its first checkpoint did not."""
    return (
        has_checkpoint(workdir)
        or bool(checkpoint_epochs(workdir, PREEMPTED))
        or (primary_workdir(workdir) / DAMAGED).is_dir()
    )


def prepare_workdir(workdir: Path, config: RunConfig, resume: bool, overwrite: bool, *, write: bool = True) -> bool:
    """Make a network's workdir ready (``workdir.prepare_directory`` with its ``config.json``;
    ``epochs`` may grow on resume); returns whether it continues an earlier run."""
    return prepare_directory(
        workdir,
        config_file="config.json",
        current=config_to_json(config),
        outputs=OUTPUTS,
        has_run=has_run,
        resume=resume,
        overwrite=overwrite,
        may_differ=MAY_DIFFER,
        what="run",
        complete=_completed,
        write=write,
    )


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree, keep_empty_nodes=True, sep=".")


def _nested(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat, sep=".")


def normalised_run_config(saved: dict) -> dict:
    """A saved run configuration (a config.json's without its version, or evolve.json's "run")
    with every field, as ``config_to_json`` writes it; as it is when it is not one."""
    if not isinstance(saved, dict):
        return saved
    saved = unstamped(saved)
    try:
        return config_to_json(from_dict(RunConfig, saved))
    except (ValueError, TypeError):
        return saved  # not a run configuration: compared as it is


def complete_run_config(saved: dict | None, where: str = "the run's config.json") -> dict:
    """A saved ``config.json`` ready to compare with ``config_to_json`` of a configuration: its
    format version checked (``versions.checked``: another version is refused) and dropped."""
    if not saved:
        return {}
    return normalised_run_config(checked(saved, where))


def _completed(saved: dict) -> dict:
    """``prepare_directory``'s ``complete`` for config.json (the version is checked there)."""
    return normalised_run_config(saved)


def adopt_recorded(config: RunConfig, saved: dict | None, fields: tuple[str, ...]) -> RunConfig:
    """``config`` with the dotted ``fields`` set to their values in ``saved`` (a run's saved
    configuration, completed by ``complete_run_config``), so that resuming a run made before a
    default changed keeps its recorded setting (e.g. ``data.crop_faces``, ``schedule.lr1_min``).
    Nothing saved: ``config`` as it is."""
    if not saved:
        return config
    saved, current = _flat(normalised_run_config(saved)), _flat(config_to_json(config))
    current.update({name: saved[name] for name in fields if name in saved})
    return from_dict(RunConfig, _nested(current))


def recorded_config(workdir: Path, config_file: str = "config.json") -> dict | None:
    """The configuration saved in ``workdir`` (None when there is none or it is not JSON)."""
    path = Path(workdir) / config_file
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# What the members of one configuration share


# Compiled steps shared by every Setup of one configuration in this process: a population, an
# ablation or a test session builds many Setups of one configuration, and tracing and compiling a
# ResNet step takes seconds each time (as ``models.init`` is memoised per configuration).
_COMPILED: dict = {}
_COMPILED_MAX = 8


def compiled(key: tuple, build: Callable):
    """``build()`` once per ``key`` in this process (the ``_COMPILED_MAX`` most recent kept)."""
    if key not in _COMPILED:
        while len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


class Setup:
    """The data set, model, optimiser and evaluator shared by every member of one configuration
    (members differ only in seed and starting weights)."""

    def __init__(self, config: RunConfig, log: Log = print):
        self.config = config
        self.devices = jax.local_devices()
        self.check_batch(config)
        self.dataset = runs.open_dataset(config, log)
        self.model = models.ResNet(config.model)
        self.tx = train.make_optimizer(config.optim, config.schedule.lr1)
        self.class_weights = self.dataset.class_weights if config.loss.needs_class_weights else None
        self.evaluator = compiled(
            ("evaluator", config.model, config.eval_batch_size, tuple(self.devices)),
            lambda: Evaluator(self.model, config.eval_batch_size, self.devices),
        )

    def step_key(self, kind: str, devices) -> tuple:
        """What a compiled train step of this configuration depends on (``compiled``)."""
        c = self.config
        weights = None if self.class_weights is None else tuple(np.asarray(self.class_weights).tolist())
        return (kind, c.model, c.optim, c.loss, c.augment, weights, None if devices is None else tuple(devices))

    @functools.cached_property
    def data_parallel(self) -> DataParallel:
        """The (compiled once, reused) data-parallel train step of this configuration."""
        return DataParallel(self)

    @staticmethod
    def check_batch(config: RunConfig) -> None:
        n = jax.local_device_count() * jax.process_count()
        if config.batch_size % n:
            raise ConfigError(f"batch size {config.batch_size} is not divisible by {n} devices")

    def loader(self, seed: int, *, whole_batches: bool = False) -> data.TrainLoader:
        """The training batches of ``seed``: this process's slice of each global batch, or with
        ``whole_batches`` the global batches themselves (the same in every process)."""
        c = self.config
        shard = (
            dict(process_index=0, process_count=1)
            if whole_batches
            else dict(process_index=jax.process_index(), process_count=jax.process_count())
        )
        return data.TrainLoader(
            self.dataset.train,
            c.batch_size,
            c.model.input_size,
            seed=seed,
            num_threads=c.data.num_threads,
            balanced=c.data.balanced,
            **shard,
        )

    def steps_per_epoch(self) -> int:
        return self.loader(0).steps_per_epoch

    def initial_state(self, seed: int, variables: dict | None = None) -> train.TrainState:
        """A fresh train state from ``seed``; with ``variables``, those weights and statistics
        instead of the random initialisation (fresh optimiser state, step 0, the seed's rng)."""
        state = train.create_train_state(self.model, self.tx, jax.random.key(seed))
        if variables is None:
            return state
        return state.replace(
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=self.tx.init(variables["params"]),
        )

    @functools.cached_property
    def backbone(self) -> dict | None:
        """The pre-trained backbone of ``config.init`` (read once), or None."""
        if self.config.init is None:
            return None
        backbone, _, _ = pretrained.load_backbone(self.config.init)
        return backbone

    def start_variables(self, seed: int) -> dict | None:
        """Where a new network of this configuration starts: None (its seed's random
        initialisation) or, with ``config.init``, that initialisation with the backbone copied in
        (``pretrained.init_from_backbone``)."""
        if self.backbone is None:
            return None
        fresh = jax.device_get(self.initial_state(seed))
        return pretrained.init_from_backbone({"params": fresh.params, "batch_stats": fresh.batch_stats}, self.backbone)

    def test_logits(self, variables) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of the test split; ``variables`` replicated (``train.replicate``)."""
        c = self.config
        return self.evaluator(
            variables, data.eval_batches(self.dataset.test, c.eval_batch_size, c.model.input_size, c.data.num_threads)
        )


def reference_loss(entry: dict) -> float:
    """An epoch's reference loss (``train_ce``, docs/method.md 2.4 [choice]) from its metrics.jsonl entry;
    entries written before it was logged give their sampled ``train_loss``."""
    return entry.get("train_ce", entry["train_loss"])


# ---------------------------------------------------------------------------------------------
# One network


@dataclasses.dataclass
class RunState:
    """Everything a run continues from, what one checkpoint holds: the train state and, as the
    checkpoint's JSON record, the epochs' history, the learning-rate regime, the starting weights'
    test metrics (a member started from given weights) and, for a checkpoint saved within an
    epoch (the run stopped on a signal), how many steps of the next epoch are done and that
    epoch's metric sums so far (so the resumed epoch is the uninterrupted one, bit for bit)."""

    train_state: train.TrainState
    history: list[dict]
    lr_state: schedules.LrState
    initial_test: dict | None = None
    step_in_epoch: int = 0
    sums: dict | None = None

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history)

    def record(self, test: dict | None = None) -> dict:
        """The checkpoint's JSON record (``test``: the metrics of the epoch it ends)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "switch_epoch": self.lr_state.switch_epoch,
            "test": test,
            "initial_test": self.initial_test,
            "step_in_epoch": self.step_in_epoch,
            "sums": self.sums,
        }

    @classmethod
    def from_checkpoint(cls, train_state: train.TrainState, record: dict) -> RunState:
        return cls(
            train_state,
            record["history"],
            schedules.LrState(record["switch_epoch"]),
            record.get("initial_test"),
            record.get("step_in_epoch", 0),
            record.get("sums"),
        )


def all_finite(tree) -> bool:
    """Whether every floating-point array of ``tree`` (on the host) is finite."""
    return all(
        np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.floating)
    )


class Member:
    """One network in its workdir (made ready by ``prepare_workdir``): configuration, checkpoints
    and its ``RunState``.

    A member continues from its newest intact checkpoint (a damaged one is set aside in
    ``damaged/`` with one line saying so; a checkpoint saved within an epoch continues with that
    epoch's next batch) or starts from the seed's random initialisation. ``begin`` opens its
    outputs; a new member given ``init_variables`` (an FGA child, or FGA's shared start) has those
    weights evaluated and saved as checkpoint 0 there (``test_logits/epoch_0000.npz``,
    ``initial_test`` in summary.json).

    ``until_trained``: stop as soon as the stability detector says the network is well trained
    (``schedules.is_well_trained``), at the latest after ``config.epochs`` epochs.
    ``start_lr``: "lr1" starts with the cosine regime, "lr2" directly with Lr2.
    """

    def __init__(
        self,
        setup: Setup,
        config: RunConfig,
        workdir: str | os.PathLike,
        *,
        until_trained: bool = False,
        start_lr: str = "lr1",
        name: str = "",
        log: Log = print,
    ):
        if start_lr not in ("lr1", "lr2"):
            raise ValueError(f"start_lr must be 'lr1' or 'lr2', got {start_lr!r}")
        self.setup, self.config, self.workdir = setup, config, Path(workdir)
        self.until_trained, self.name, self.log = until_trained, name, log
        self.checkpoints = checkpoints_of(self.workdir)
        self.loader = setup.loader(config.seed)
        self.writer: RunWriter | None = None
        self.preempted: Checkpoints | None = None  # opened when a checkpoint within an epoch exists
        fresh = RunState(setup.initial_state(config.seed), [], schedules.LrState(0 if start_lr == "lr2" else None))
        restored = self.restore(fresh)
        self.resumed = restored is not None
        self.run = restored or fresh

    @property
    def state(self) -> train.TrainState:
        return self.run.train_state

    def restore(self, like: RunState) -> RunState | None:
        """The newest intact checkpoint's run state (None: no checkpoint). Damaged checkpoints
        are set aside in ``damaged/`` (one line each) and the one before tried; none intact, or
        one of another model, is a ``WorkdirError``."""
        steps = self.setup.steps_per_epoch()
        sync_processes(f"restore {primary_workdir(self.workdir)}")  # every process lists the same checkpoints
        candidates = [(e * steps, self.checkpoints, e) for e in self.checkpoints.all_epochs()]
        preempted = checkpoint_epochs(self.workdir, PREEMPTED)
        if preempted:
            self.preempted = checkpoints_of(self.workdir, PREEMPTED)
            candidates += [(g, self.preempted, g) for g in preempted]
        damaged = []
        for _, store, number in sorted(candidates, key=lambda c: (c[0], c[1] is self.checkpoints), reverse=True):
            try:
                state, record = store.restore(number, like.train_state)
            except CheckpointDamaged as error:
                moved = store.set_aside(number, primary_workdir(self.workdir) / DAMAGED / store.directory.name)
                self.log(f"{self.prefix}{error}; moved to {moved}, trying the checkpoint before it")
                damaged.append(number)
                continue
            except CheckpointError as error:  # another model's, or intact but unreadable now: left alone
                raise WorkdirError(str(error)) from None
            run = RunState.from_checkpoint(state, record)
            where = f"epoch {run.epoch}" + (
                f", step {run.step_in_epoch}/{steps} of epoch {run.epoch + 1}" if run.step_in_epoch else ""
            )
            self.log(
                f"{self.prefix}resuming from {store.directory.name} {number} ({where}; at most "
                f"{self.config.epochs} epochs)"
            )
            return run
        if damaged or (primary_workdir(self.workdir) / DAMAGED).is_dir():
            raise WorkdirError(
                f"{self.prefix}no intact checkpoint in {self.workdir} (the damaged ones are in "
                f"{self.workdir / DAMAGED}): start again with --overwrite"
            )
        return None

    def begin(self, init_variables: dict | None = None) -> None:
        """Open the outputs (metrics.jsonl mirrors the history of the state continued from); a
        new member given ``init_variables`` starts from them, evaluated and saved as checkpoint 0."""
        if not self.resumed and init_variables is not None:
            self.run.train_state = self.setup.initial_state(self.config.seed, init_variables)
            logits, labels = self.setup.test_logits(
                train.replicate({"params": self.state.params, "batch_stats": self.state.batch_stats})
            )
            test = classification_metrics(logits, labels)
            self.run.initial_test = {k: test[k] for k in ("accuracy", "mean_class_accuracy")}
            (self.workdir / "test_logits").mkdir(exist_ok=True)
            write_atomic(self.workdir / "test_logits" / "epoch_0000.npz", arrays={"logits": logits, "labels": labels})
            self.checkpoints.save(0, jax.device_get(self.state), self.run.record(test))
            self.log(f"{self.prefix}starting weights: test acc {test['accuracy']:.4f}")
        self.writer = RunWriter(self.workdir, self.run.history)

    @property
    def prefix(self) -> str:
        return f"{self.name}: " if self.name else ""

    @property
    def epoch(self) -> int:
        """Epochs trained so far."""
        return self.run.epoch

    @property
    def history(self) -> list[dict]:
        return self.run.history

    @property
    def well_trained(self) -> bool:
        return schedules.is_well_trained(self.config.schedule, self.run.lr_state, self.losses, self.accuracies)

    @property
    def losses(self) -> list[float]:
        """The reference loss of every epoch (``train_ce``: plain CE of the training batches,
        docs/method.md 2.4 [choice]), what the stability detector reads; epochs logged before it existed
        give their sampled loss."""
        return [reference_loss(h) for h in self.history]

    @property
    def accuracies(self) -> list[float]:
        return [h["train_accuracy"] for h in self.history]

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs or (self.until_trained and self.well_trained)

    def learning_rate(self, step_in_epoch: int, steps_per_epoch: int) -> float:
        return schedules.learning_rate(
            self.config.schedule, self.run.lr_state, self.epoch, step_in_epoch, steps_per_epoch, self.config.epochs
        )

    def check_finite(self, state: train.TrainState, where: str) -> None:
        """Raise ``NonFiniteError`` when ``state``'s weights or statistics are not all finite."""
        if not all_finite((state.params, state.batch_stats)):
            raise NonFiniteError(self.non_finite_message(where, "the weights"))

    def non_finite_message(self, where: str, what: str) -> str:
        kept = self.checkpoints.latest_epoch()
        return (
            f"{self.prefix}{what} became non-finite at {where}: training stopped; "
            + (f"checkpoint {kept} (finite) is kept" if kept is not None else "no checkpoint was saved")
            + " (lower the learning rate, --lr, or check the data)"
        )

    def end_epoch(self, state: train.TrainState, variables, sums: dict, steps: int, lr: float, elapsed: float) -> dict:
        """Book one trained epoch: evaluate ``variables`` (replicated) on the test split, save the
        (host) ``state``, metrics, logits and TensorBoard scalars; returns the epoch's entry."""
        epoch = self.epoch
        self.check_finite(state, f"the end of epoch {epoch + 1}")
        logits, labels = self.setup.test_logits(variables)
        test = classification_metrics(logits, labels)
        entry = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / steps,
            "train_ce": sums["train_ce"] / steps,
            "train_accuracy": sums["accuracy"] / steps,
            "lsr_share": sums["lsr"] / steps,
            "learning_rate": lr,
            "phase": self.run.lr_state.phase,
            "test_accuracy": test["accuracy"],
            "test_mean_class_accuracy": test["mean_class_accuracy"],
            "images_per_s": steps * self.config.batch_size / elapsed,
            "epoch_s": elapsed,
        }
        lr_state = schedules.after_epoch(
            self.config.schedule,
            self.run.lr_state,
            epoch,
            self.losses + [reference_loss(entry)],
            self.accuracies + [entry["train_accuracy"]],
        )
        self.run = RunState(state, self.history + [entry], lr_state, self.run.initial_test)
        self.writer.write_logits(epoch + 1, logits, labels)
        self.checkpoints.save(epoch + 1, state, self.run.record(test))
        self.prune()
        self.writer.write(epoch + 1, entry)
        switched = " | stable: switching to Lr2" if lr_state.switch_epoch == epoch + 1 else ""
        trained = " | well trained" if self.until_trained and self.well_trained else ""
        self.log(
            f"{self.prefix}epoch {epoch + 1}/{self.config.epochs}: train loss {entry['train_loss']:.4f} "
            f"(CE {entry['train_ce']:.4f}) acc "
            f"{entry['train_accuracy']:.4f} | test acc {test['accuracy']:.4f} mean-class "
            f"{test['mean_class_accuracy']:.4f} | {entry['images_per_s']:.0f} img/s{switched}{trained}"
        )
        return entry

    def prune(self) -> None:
        """Keep the last ``keep_checkpoints`` checkpoints and the best by test accuracy (the
        earliest of equals, as ``runs.choose_epoch``), also those of earlier sessions of the run;
        drop a checkpoint saved within an epoch that is now behind."""
        epochs = self.checkpoints.all_epochs()
        accuracy = {h["epoch"]: h["test_accuracy"] for h in self.history}
        if self.run.initial_test is not None:
            accuracy[0] = self.run.initial_test["accuracy"]
        ranked = [e for e in epochs if e in accuracy]
        keep = set(sorted(epochs)[-self.config.keep_checkpoints :])
        if ranked:
            keep.add(max(ranked, key=lambda e: (accuracy[e], -e)))
        self.checkpoints.prune(keep)
        if self.preempted is not None:  # the epoch it was saved in is complete now
            self.preempted.prune(set())
            self.preempted.close()
            self.preempted = None
            if jax.process_index() == 0:
                shutil.rmtree(primary_workdir(self.workdir) / PREEMPTED, ignore_errors=True)

    def save_within_epoch(self, state: train.TrainState, step_in_epoch: int, sums: dict, signum: int) -> None:
        """Save where a run stopped on a signal (``step_in_epoch`` steps of the next epoch done,
        their metric ``sums``) and raise ``signals.Interrupted`` saying so."""
        self.check_finite(state, f"epoch {self.epoch + 1}, step {step_in_epoch}")
        run = dataclasses.replace(self.run, train_state=state, step_in_epoch=step_in_epoch, sums=dict(sums))
        if self.preempted is None:
            self.preempted = checkpoints_of(self.workdir, PREEMPTED)
        steps = self.setup.steps_per_epoch()
        self.preempted.save(self.epoch * steps + step_in_epoch, state, run.record())
        self.preempted.prune({self.epoch * steps + step_in_epoch})
        raise signals.Interrupted(
            signum,
            f"{self.prefix}stopped by {signal.Signals(signum).name} at epoch "
            f"{self.epoch + 1}, step {step_in_epoch}/{steps}: saved in "
            f"{self.preempted.directory}; continue with --resume",
        )

    def summary(self) -> dict:
        """Write and return summary.json (final and best epoch)."""
        if not self.history:
            raise WorkdirError(f"{self.prefix}no epoch trained in {self.workdir}")
        best = max(self.history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
        final = self.history[-1]
        labels = np.load(self.workdir / "test_logits" / f"epoch_{final['epoch']:04d}.npz")["labels"]
        summary = {
            "dataset": self.config.data.dataset,
            "model": self.config.model_name,
            "epochs": final["epoch"],
            "final_train_loss": final["train_loss"],
            "final_train_ce": reference_loss(final),
            "final_train_accuracy": final["train_accuracy"],
            "final_test_accuracy": final["test_accuracy"],
            "final_test_mean_class_accuracy": final["test_mean_class_accuracy"],
            "best_epoch": best["epoch"],
            "best_epoch_test_accuracy": best["test_accuracy"],
            "majority_class_rate": float(np.bincount(labels).max() / len(labels)),
            "well_trained": self.well_trained,
            "switch_epoch": self.run.lr_state.switch_epoch,
        }
        if self.run.initial_test is not None:
            summary["initial_test_accuracy"] = self.run.initial_test["accuracy"]
        self.writer.write_summary(summary)
        return summary

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.checkpoints.close()
        if self.preempted is not None:
            self.preempted.close()


# ---------------------------------------------------------------------------------------------
# Placing members on the devices


class DataParallel:
    """One network's train state replicated over all devices, its batches split over them
    (``train.parallel_train_step``)."""

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

    def load(self, state: train.TrainState) -> None:
        self.state = train.replicate(state, self.devices)

    def place(self, batch):
        """The step's input on the devices: the batch split over this process's devices."""
        return train.shard(batch, self.devices)

    def __call__(self, placed, learning_rate: float):
        self.state, metrics = self.step(self.state, placed, learning_rate)
        return metrics

    def host_state(self) -> train.TrainState:
        return jax.device_get(train.unreplicate(self.state))

    def eval_variables(self, host_state):
        """Variables replicated over this process's devices, for the evaluator (one process:
        already there; several: the train state spans every process's devices)."""
        if self.multi_process:
            return train.replicate({"params": host_state.params, "batch_stats": host_state.batch_stats}, self.devices)
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}


# ---------------------------------------------------------------------------------------------
# The loop

METRICS = ("loss", "train_ce", "accuracy", "lsr")  # the step's metrics summed over an epoch
FETCH_EVERY = 10  # steps whose metrics are fetched from the devices together (fewer host syncs)


class EpochProgress:
    """One epoch's metric sums and its progress bar (loss, accuracy, images/s, learning rate),
    shared by the single-network loop and FGA's side-by-side loop. ``done``/``sums``: the steps
    and sums of an epoch resumed within it. ``add`` raises ``NonFiniteError`` at the first step
    whose loss or gradient was not finite (``member``: the network, for the message)."""

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
            what = "the loss or a gradient"
            raise NonFiniteError(self.member.non_finite_message(where, what))
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


def train_member(setup: Setup, member: Member, *, progress: bool = True, stop_after: int | None = None) -> None:
    """Train one network until it is ``done`` (or for ``stop_after`` epochs, as if interrupted):
    each epoch's batches go to the devices ahead of their step, the learning rate is set per
    step, metrics are fetched every ``FETCH_EVERY`` steps, and the epoch ends in
    ``member.end_epoch`` (evaluation, checkpoint, outputs).

    SIGTERM or Ctrl-C (``signals.deferred``) ends the step, saves a checkpoint there
    (``member.save_within_epoch``) and raises ``signals.Interrupted``; a non-finite loss,
    gradient or weight raises ``NonFiniteError`` naming the epoch and step, before anything
    non-finite is saved."""
    placement = setup.data_parallel
    placement.load(member.state)
    steps = setup.steps_per_epoch()
    epochs = 0
    with signals.deferred():
        while not member.done and (stop_after is None or epochs < stop_after):
            epochs += 1
            start = member.run.step_in_epoch
            epoch = EpochProgress(
                f"{member.prefix}epoch {member.epoch + 1}/{member.config.epochs}",
                steps,
                setup.config.batch_size,
                progress,
                done=start,
                sums=member.run.sums,
                member=member,
            )
            iterator = iter(member.loader.iterate(member.epoch, start_step=start))
            host_batches = (next(iterator) for _ in range(start, steps))
            pending, learning_rate, stop, i = [], 0.0, None, start - 1
            # Batches go to the devices ahead of their step (transfers overlap the running step).
            for i, placed in enumerate(train.prefetch_to_device(host_batches, placement.place), start=start):
                learning_rate = member.learning_rate(i, steps)
                pending.append(placement(placed, learning_rate))
                fetch = len(pending) == FETCH_EVERY or i == steps - 1
                stop = stop_signal(fetch)
                if fetch or stop:
                    first = i + 1 - len(pending)
                    for k, metrics in enumerate(jax.device_get(pending)):
                        epoch.add(
                            {k: float(v[0]) for k, v in metrics.items()},
                            f"epoch {member.epoch + 1}, step {first + k + 1}/{steps}",
                        )
                    epoch.show(i + 1, len(pending), learning_rate)
                    pending = []
                if stop:
                    break
            if stop and i < steps - 1:
                epoch.close()
                member.save_within_epoch(placement.host_state(), i + 1, epoch.sums, stop)
            elapsed = epoch.close()
            state = placement.host_state()
            member.end_epoch(state, placement.eval_variables(state), epoch.sums, steps, learning_rate, elapsed)
            stop = stop or stop_signal(True)
            if stop and not member.done:
                raise signals.Interrupted(
                    stop,
                    f"{member.prefix}stopped by {signal.Signals(stop).name} after epoch "
                    f"{member.epoch} (its checkpoint is saved); continue with --resume",
                )


# ---------------------------------------------------------------------------------------------
# One network, start to end


@contextlib.contextmanager
def disk_full_named(workdir: Path, networks: str = ""):
    """Around writing a run (or, with ``networks``, an evolution's runs under ``workdir``): the file
    system filling up becomes one ``DiskFullError`` naming the file being written and the last
    complete checkpoint (what ``--resume`` continues from), whatever library noticed it."""
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        path = written_path(error) or workdir
        if networks:
            kept = "every network's complete checkpoints are kept"
        else:
            epochs = checkpoint_epochs(workdir)
            kept = f"the last complete checkpoint is epoch {epochs[-1]}" if epochs else "no checkpoint is complete yet"
        raise DiskFullError(f"{disk_full_phrase(error)} while writing {path}; {kept}") from None


@contextlib.contextmanager
def out_of_memory_named(config: RunConfig, networks: int = 1):
    """Around training: an allocation that failed becomes one ``OutOfMemoryError`` naming the
    batch sizes, the devices and the memory asked for."""
    try:
        yield
    except Exception as error:
        if isinstance(error, OutOfMemoryError) or not is_out_of_memory(error):
            raise
        devices = jax.devices()
        asked = requested_bytes(error)
        side = f", {networks} networks side by side" if networks > 1 else ""
        raise OutOfMemoryError(
            f"out of memory training with --batch-size {config.batch_size} (evaluation batch {config.eval_batch_size}"
            f"{side}) on {len(devices)} {devices[0].platform.upper()} device(s)"
            + (f": one allocation asked for {asked / 1e9:.2f} GB" if asked else "")
            + "; lower --batch-size"
        ) from None


def fit(
    config: RunConfig,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = print,
    stop_after: int | None = None,
    keep_recorded: tuple[str, ...] = (),
) -> dict:
    """Train, evaluate and checkpoint one network data-parallel over all devices (of all
    processes); returns the summary (also in summary.json): final and best epoch.

    ``resume`` continues the run in ``workdir`` from its newest intact checkpoint (bit for bit,
    also within an epoch); ``overwrite`` deletes an earlier run's outputs first. A workdir whose
    run stopped before its first checkpoint starts afresh either way. ``stop_after`` ends this
    call after that many epochs (as if interrupted there; continue with ``resume=True``).
    ``keep_recorded``: dotted fields a resumed run takes from its saved config.json
    (``adopt_recorded``). The workdir is locked while the run lasts (``workdir.WorkdirLock``).

    Raises ``ConfigError`` / ``WorkdirError`` / ``DataError`` / ``NonFiniteError`` with one-line
    messages, and ``signals.Interrupted`` when stopped by a signal (after saving where it was)."""
    workdir = Path(workdir)
    if resume and keep_recorded:
        config = adopt_recorded(config, recorded_config(workdir), keep_recorded)
    Setup.check_batch(config)
    made = new_folders(workdir)
    with disk_full_named(workdir), out_of_memory_named(config), WorkdirLock(workdir, "workdir"):
        with undone_if_it_fails(workdir, "config.json", made):
            continues = prepare_workdir(workdir, config, resume, overwrite, write=False)
            if resume and not continues:
                log(f"no earlier run to resume in {workdir.absolute()}: starting a new run there")
            setup = Setup(config, log)  # opens the data set
            member = Member(setup, config, workdir, log=log)
        try:
            with contextlib.closing(member):
                if member.done:
                    raise ConfigError(
                        f"nothing to do: the run in {workdir} already has {member.epoch} epochs; raise --epochs"
                    )
                with undone_if_it_fails(workdir, "config.json", made):
                    init = setup.start_variables(config.seed) if config.init and not member.resumed else None
                    write_json(workdir / "config.json", stamped(config_to_json(config)))  # every check passed
                member.begin(init)
                train_member(setup, member, progress=progress, stop_after=stop_after)
                summary = member.summary()
        except Exception:  # e.g. out of memory at the first step: a new run leaves nothing half-made
            if not member.resumed and jax.process_count() == 1 and not has_run(workdir):
                undo_new_run(workdir, OUTPUTS, made)
            raise
    log(
        f"final (epoch {summary['epochs']}): test accuracy {summary['final_test_accuracy']:.4f}, mean class accuracy "
        f"{summary['final_test_mean_class_accuracy']:.4f} (majority-class rate {summary['majority_class_rate']:.4f})"
    )
    log(
        f"best epoch {summary['best_epoch']} (selected on the test split, optimistic): test accuracy "
        f"{summary['best_epoch_test_accuracy']:.4f}"
    )
    return summary
