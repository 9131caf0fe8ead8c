"""Training one network: ``fit(config, workdir)`` (what ``experiments.train`` runs) trains,
evaluates and checkpoints one network data-parallel over all devices; ``Setup`` holds what the
networks of one configuration share (data set, model, optimiser, evaluator, compiled steps),
``faml_jax.evolution`` uses it for a population. Also here: preparing a run's folder and the
configuration checks on resume. The network and its checkpoints: ``faml_jax.member``; the
training loop: ``faml_jax.loop``; joining several processes: ``faml_jax.launch``.

    >>> from faml_jax import config, trainer
    >>> summary = trainer.fit(config.preset("synthetic", epochs=2), "runs/quick")

A member's workdir and how it is read: ``faml_jax.runs``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from faml_jax import data, models, pretrained, runs, signals, train
from faml_jax.compiled import compiled
from faml_jax.config import RunConfig, evaluation_model
from faml_jax.errors import (
    ConfigError,
    DiskFullError,
    OutOfMemoryError,
    disk_full_phrase,
    is_disk_full,
    is_out_of_memory,
    requested_bytes,
    written_path,
)
from faml_jax.evaluate import Evaluator
from faml_jax.loop import DataParallel, train_member
from faml_jax.member import Member
from faml_jax.records import config_to_json, from_dict
from faml_jax.runs import DAMAGED, PREEMPTED, checkpoint_epochs, has_checkpoint, primary_workdir
from faml_jax.versions import checked, stamped, unstamped
from faml_jax.workdir import WorkdirLock, new_folders, prepare_directory, undo_new_run, undone_if_it_fails
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
# What the members of one configuration share


def double_correction_warning(config: RunConfig) -> str:
    """What a run told to correct the class imbalance twice is warned (``--balanced`` with a
    class-weighted loss): it trains, as asked, but says so in one line."""
    loss = "wce" if config.loss.kind == "wce" else f"{config.loss.kind} with WCE (--weighted)"
    return (
        f"warning: --balanced with the class-weighted loss ({loss}) corrects the class imbalance twice: the "
        "sampler draws every class equally often and the loss weights the rare classes up again; drop one of "
        "them (--balanced, or --loss ce / --no-weighted) unless that is what you want"
    )


class Setup:
    """The data set, model, optimiser and evaluator shared by every member of one configuration
    (members differ only in seed and starting weights)."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.devices = jax.local_devices()
        self.check_batch(config)
        self.dataset = runs.open_dataset(config)
        self.model = models.network(config.model)  # training: in config.model.dtype
        eval_model = evaluation_model(config.model)  # evaluation: always float32 (docs/method.md 2.4)
        self.tx = train.make_optimizer(config.optim, config.schedule.lr1)
        self.class_weights = self.dataset.class_weights if config.loss.needs_class_weights else None
        if config.data.balanced and config.loss.needs_class_weights:
            logger.warning(double_correction_warning(config))
        self.evaluator = compiled(
            ("evaluator", eval_model, config.eval_batch_size, tuple(self.devices)),
            lambda: Evaluator(models.network(eval_model), config.eval_batch_size, self.devices),
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
        return self._steps_per_epoch

    @functools.cached_property
    def _steps_per_epoch(self) -> int:  # asked every epoch; building a loader for it each time is waste
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
        backbone, _, info = pretrained.load_backbone(self.config.init)
        pretrained.check_backbone_fits(info, self.config.model_name, self.config.init)
        return backbone

    def start_variables(self, seed: int) -> dict | None:
        """Where a new network of this configuration starts: None (its seed's random
        initialisation) or, with ``config.init``, that initialisation with the backbone copied in
        (``pretrained.init_from_backbone``)."""
        if self.backbone is None:
            return None
        fresh = jax.device_get(self.initial_state(seed))
        return pretrained.init_from_backbone(
            {"params": fresh.params, "batch_stats": fresh.batch_stats},
            self.backbone,
            self.config.model.fa_init_pretrained,
        )

    def test_logits(self, variables) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels of the test split; ``variables`` replicated (``train.replicate``)."""
        c = self.config
        return self.evaluator(
            variables, data.eval_batches(self.dataset.test, c.eval_batch_size, c.model.input_size, c.data.num_threads)
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
    Setup.check_batch(config)
    made = new_folders(workdir)
    with disk_full_named(workdir), out_of_memory_named(config), WorkdirLock(workdir, "workdir"):
        with undone_if_it_fails(workdir, "config.json", made):
            continues = prepare_workdir(workdir, config, resume, overwrite, write=False)
            if resume and not continues:
                logger.info(f"no earlier run to resume in {workdir.absolute()}: starting a new run there")
            setup = Setup(config)  # opens the data set
            member = Member(setup, config, workdir)
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
                try:
                    train_member(setup, member, progress=progress, stop_after=stop_after)
                except signals.Interrupted:
                    if member.history:  # summary.json says where the run stopped (not an earlier plan's end)
                        member.summary()
                    raise
                summary = member.summary()
        except Exception:  # e.g. out of memory at the first step: a new run leaves nothing half-made
            if not member.resumed and jax.process_count() == 1 and not has_run(workdir):
                undo_new_run(workdir, OUTPUTS, made)
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
