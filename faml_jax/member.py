"""One network in its workdir: ``Member`` (its configuration, checkpoints and outputs) and
``RunState`` (what one checkpoint holds, so that a run continues bit for bit). Trained by
``faml_jax.loop``; set up (``faml_jax.setup``) by ``faml_jax.trainer`` (one network) and ``faml_jax.evolution`` (a
population).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

from faml_jax import schedules, signals, train
from faml_jax.checkpoint import CheckpointDamaged, CheckpointError, Checkpoints, sync_processes
from faml_jax.config import RunConfig
from faml_jax.errors import NonFiniteError, WorkdirError
from faml_jax.metrics import classification_metrics
from faml_jax.runs import DAMAGED, PREEMPTED, checkpoint_epochs, checkpoints_of, read_arrays
from faml_jax.workdir import primary_workdir, remove_outputs
from faml_jax.writer import RunWriter, write_atomic

if TYPE_CHECKING:
    from faml_jax.setup import Setup


logger = logging.getLogger(__name__)


def reference_loss(entry: dict) -> float:
    """An epoch's reference loss from its metrics.jsonl entry: ``train_ce``, plain cross-entropy
    of the training batches (docs/method.md 2.4 [choice]), not the sampled ML loss."""
    return entry["train_ce"]


@dataclasses.dataclass
class RunState:
    """Everything a run continues from, what one checkpoint holds: the train state and, as the
    checkpoint's JSON record, the epochs' history, the learning-rate regime and the epochs it was
    planned for (a resume with more epochs goes on from the rate reached), the starting weights'
    test metrics (a member started from given weights) and, for a checkpoint saved within an
    epoch (the run stopped on a signal), how many steps of the next epoch are done and that
    epoch's metric sums so far (so the resumed epoch is the uninterrupted one, bit for bit)."""

    train_state: train.TrainState
    history: list[dict]
    lr_state: schedules.LrState
    planned_epochs: int
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
            "lr_state": dataclasses.asdict(self.lr_state),
            "planned_epochs": self.planned_epochs,
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
            schedules.LrState(**record["lr_state"]),
            record["planned_epochs"],
            record["initial_test"],
            record["step_in_epoch"],
            record["sums"],
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
    ):
        if start_lr not in ("lr1", "lr2"):
            raise ValueError(f"start_lr must be 'lr1' or 'lr2', got {start_lr!r}")
        self.setup, self.config, self.workdir = setup, config, Path(workdir)
        self.until_trained, self.name = until_trained, name
        self.checkpoints = checkpoints_of(self.workdir)
        self.loader = setup.loader(config.seed)
        self.writer: RunWriter | None = None
        self.preempted: Checkpoints | None = None  # opened when a checkpoint within an epoch exists
        restored = self.restore(setup.state_template)
        self.resumed = restored is not None
        self.run = restored or RunState(
            setup.initial_state(config.seed), [], schedules.LrState(0 if start_lr == "lr2" else None), config.epochs
        )
        if self.run.planned_epochs != config.epochs:  # resumed with another --epochs
            lr_state = schedules.lengthened(
                config.schedule,
                self.run.lr_state,
                self.run.epoch,
                self.run.step_in_epoch,
                setup.steps_per_epoch(),
                self.run.planned_epochs,
                config.epochs,
            )
            self.run = dataclasses.replace(self.run, lr_state=lr_state, planned_epochs=config.epochs)

    @property
    def state(self) -> train.TrainState:
        return self.run.train_state

    def restore(self, like: train.TrainState) -> RunState | None:
        """The newest intact checkpoint's run state (None: no checkpoint), restored into ``like``
        (the train state's shapes and dtypes). Damaged checkpoints
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
                state, record = store.restore(number, like)
            except CheckpointDamaged as error:
                moved = store.set_aside(number, primary_workdir(self.workdir) / DAMAGED / store.directory.name)
                logger.warning(f"{self.prefix}{error}; moved to {moved}, trying the checkpoint before it")
                damaged.append(number)
                continue
            except CheckpointError as error:  # another model's, or intact but unreadable now: left alone
                raise WorkdirError(str(error)) from None
            run = RunState.from_checkpoint(state, record)
            where = f"epoch {run.epoch}" + (
                f", step {run.step_in_epoch}/{steps} of epoch {run.epoch + 1}" if run.step_in_epoch else ""
            )
            logger.info(
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
            logger.info(f"{self.prefix}starting weights: test acc {test['accuracy']:.4f}")
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
        docs/method.md 2.4 [choice]), what the stability detector reads."""
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

    def end_epoch(
        self,
        state: train.TrainState,
        variables,
        sums: dict,
        steps: int,
        lr: float,
        elapsed: float,
        steps_run: int | None = None,
    ) -> dict:
        """Book one trained epoch: evaluate ``variables`` (replicated) on the test split, save the
        (host) ``state``, metrics, logits and TensorBoard scalars; returns the epoch's entry.
        ``steps_run``: the steps this session trained of it (fewer when resumed within it), for
        the images/s."""
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
            "images_per_s": (steps if steps_run is None else steps_run) * self.config.batch_size / elapsed,
            "epoch_s": elapsed,
        }
        lr_state = schedules.after_epoch(
            self.config.schedule,
            self.run.lr_state,
            epoch,
            self.losses + [reference_loss(entry)],
            self.accuracies + [entry["train_accuracy"]],
        )
        self.run = RunState(state, self.history + [entry], lr_state, self.config.epochs, self.run.initial_test)
        self.writer.write_logits(epoch + 1, logits, labels)
        self.checkpoints.save(epoch + 1, state, self.run.record(test))
        self.prune()
        self.writer.write(epoch + 1, entry)
        switched = " | stable: switching to Lr2" if lr_state.switch_epoch == epoch + 1 else ""
        trained = " | well trained" if self.until_trained and self.well_trained else ""
        logger.info(
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
                remove_outputs(primary_workdir(self.workdir), [PREEMPTED])

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
        raise signals.stopped(
            signum,
            f"at epoch {self.epoch + 1}, step {step_in_epoch}/{steps}: saved in {self.preempted.directory}",
            self.prefix,
        )

    def summary(self) -> dict:
        """Write and return summary.json: the last and best epoch trained, and whether the run is
        ``finished`` or stopped at ``epochs`` of ``planned_epochs`` (to be resumed)."""
        if not self.history:
            raise WorkdirError(f"{self.prefix}no epoch trained in {self.workdir}")
        best = max(self.history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
        final = self.history[-1]
        labels = read_arrays(
            self.workdir / "test_logits" / f"epoch_{final['epoch']:04d}.npz", {"labels": ("iu", 1)}, "the test logits"
        )["labels"]
        summary = {
            "dataset": self.config.data.dataset,
            "model": self.config.model_name,
            "epochs": final["epoch"],
            "planned_epochs": self.config.epochs,
            "finished": self.done,
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
            "dtype": self.config.model.dtype,  # of training
            "eval_dtype": self.config.eval_dtype,  # of every evaluation: float32 (docs/method.md 2.4)
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
