"""Training one network: ``fit(config, workdir)`` (what ``experiments.train`` runs) trains,
evaluates and checkpoints one network data-parallel over all devices. Also here: preparing a
run's folder and the configuration checks on resume. What the networks of one configuration
share: ``faml_jax.setup``; the workdir's session (lock, failures named, a failed start undone):
``faml_jax.session``; the network and its checkpoints: ``faml_jax.member``; the training loop:
``faml_jax.loop``; joining several processes: ``faml_jax.launch``.

    >>> from faml_jax import config, trainer
    >>> summary = trainer.fit(presets.preset("synthetic", epochs=2), "runs/quick")

A member's workdir and how it is read: ``faml_jax.runs``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import jax
from flax import traverse_util

from faml_jax import signals
from faml_jax.config import RunConfig
from faml_jax.errors import ConfigError
from faml_jax.loop import train_member
from faml_jax.member import Member
from faml_jax.records import config_to_json, from_dict
from faml_jax.runs import DAMAGED, PREEMPTED, checkpoint_epochs, has_checkpoint
from faml_jax.session import workdir_session
from faml_jax.setup import Setup
from faml_jax.versions import checked, stamped, unstamped
from faml_jax.workdir import prepare_directory, primary_workdir, undo_new_run
from faml_jax.writer import write_json

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


logger = logging.getLogger(__name__)

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
    configuration), so that a resumed run keeps the recorded value of a setting whose flag was
    not given again (``data.crop_faces``: ``--no-crop-faces``). Nothing saved: ``config`` as it is."""
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# One network, start to end


def fit(
    config: RunConfig,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    keep_recorded: tuple[str, ...] = (),
) -> dict:
    """Train, evaluate and checkpoint one network data-parallel over all devices (of all
    processes); returns the summary (also in summary.json): final and best epoch. summary.json is
    written however the call ends once an epoch is trained (finished, ``stop_after``, a signal),
    saying which (``finished``, ``planned_epochs``).

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
    with workdir_session(workdir, config, marker="config.json") as session:
        with session.undone_if_it_fails():
            continues = prepare_workdir(workdir, config, resume, overwrite, write=False)
            session.starts(resume, continues, "run")
            setup = Setup(config)  # opens the data set
            member = Member(setup, config, workdir)
        try:
            with contextlib.closing(member):
                if member.done:
                    raise ConfigError(
                        f"nothing to do: the run in {workdir} already has {member.epoch} epochs; raise --epochs"
                    )
                with session.undone_if_it_fails():
                    init = setup.start_variables(config.seed) if config.init and not member.resumed else None
                    write_json(workdir / "config.json", stamped(config_to_json(config)))  # every check passed
                member.begin(init)
                try:
                    train_member(setup, member, progress=progress, stop_after=stop_after)
                except signals.Interrupted:
                    if member.history:  # summary.json says where the run stopped (not an earlier plan's end)
                        member.summary()
                    raise
                summary = member.summary()
        except Exception:  # e.g. out of memory at the first step: a new run leaves nothing half-made
            if not member.resumed and jax.process_count() == 1 and not has_run(workdir):
                undo_new_run(workdir, OUTPUTS, session.made)
            raise
    logger.info(
        f"final (epoch {summary['epochs']}): test accuracy {summary['final_test_accuracy']:.4f}, mean class accuracy "
        f"{summary['final_test_mean_class_accuracy']:.4f} (majority-class rate {summary['majority_class_rate']:.4f})"
    )
    logger.info(
        f"best epoch {summary['best_epoch']} (selected on the test split, optimistic): test accuracy "
        f"{summary['best_epoch_test_accuracy']:.4f}"
    )
    return summary
