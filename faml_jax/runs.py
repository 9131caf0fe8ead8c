"""A trained run's folder, read the same way by everything that uses finished networks (the
trainer on resume, evolution, ensemble evaluation, prediction): its configuration (config.json,
its format version checked), its checkpoints, the variables of a chosen checkpoint, its
metrics, and where each process of a multi-process run reads and writes.

    >>> config, variables, epoch = runs.load("runs/rafdb-r18_faml-seed0", checkpoint="best")

A run's folder holds (written by ``faml_jax.trainer``):

  config.json              the resolved configuration
  checkpoints/<epoch>/     orbax checkpoints (last N plus the best by test accuracy); a member
                           started from given weights (an FGA child) also has checkpoint 0
  test_logits/epoch_<e>.npz  test-split logits and labels after each epoch (for ensembles)
  metrics.jsonl            one line per epoch: training loss/accuracy, learning rate, test metrics
  tensorboard/             the same as TensorBoard event files
  summary.json             final-epoch test accuracy and, separately, the best epoch
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import jax

from faml_jax import data, models, train
from faml_jax.checkpoint import CheckpointError, Checkpoints
from faml_jax.config import ModelConfig, OptimConfig, RunConfig, run_config_from_json
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.versions import checked

logger = logging.getLogger(__name__)

CHECKPOINT_CHOICES = ("final", "best")


# ---------------------------------------------------------------------------------------------
# Several processes: process 0 owns the folder, process i > 0 writes a copy beside it


def process_workdir(workdir: Path) -> Path:
    """Where this process writes its outputs: process 0 into ``workdir``, process i > 0 into its
    own copy ``<workdir>.process<i>``. All processes compute the same run (the same replicated
    state, the same evaluation), so the copies are identical, except for checkpoints: process 0
    alone writes them and every process reads them from process 0's workdir (``checkpoints_of``),
    so the workdir must be on a file system all processes share (as orbax's own multi-host
    checkpoints need)."""
    index = jax.process_index()
    return workdir if index == 0 else workdir.with_name(f"{workdir.name}.process{index}")


def primary_workdir(workdir: Path) -> Path:
    """Process 0's counterpart of a path in this process's copy (``process_workdir``): the folder
    named ``<name>.process<i>`` is replaced by ``<name>``. Process 0, and paths outside the copy
    (e.g. networks given with ``--members``), map to themselves."""
    index = jax.process_index()
    parts = list(Path(workdir).parts)
    suffix = f".process{index}"
    for k in range(len(parts) - 1, -1, -1) if index else ():
        if parts[k].endswith(suffix):
            parts[k] = parts[k][: -len(suffix)]
            return Path(*parts)
    return Path(workdir)


# ---------------------------------------------------------------------------------------------
# What a finished run holds


def open_dataset(config: RunConfig) -> data.Dataset:
    """The data set a run was configured with (``config.data``), checked against its model's
    number of classes."""
    d = config.data
    dataset = data.open_dataset(
        d.dataset,
        d.data_dir,
        d.synthetic,
        progress=logger.info,
        crop_faces=d.crop_faces,
        skip_bad_images=d.skip_bad_images,
        num_threads=d.num_threads,
        min_size=config.model.input_size,
    )
    logger.info(dataset.describe())
    if dataset.num_classes != config.model.num_classes:
        raise ConfigError(f"{dataset.name} has {dataset.num_classes} classes, the model {config.model.num_classes}")
    return dataset


def read_run_config(workdir: Path) -> RunConfig:
    """The configuration a network in ``workdir`` was trained with (its config.json)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise WorkdirError(f"{path} not found (expected the workdir of a network trained by experiments.train)")
    try:
        return run_config_from_json(json.loads(path.read_text()), str(path))
    except (ValueError, TypeError) as error:
        raise WorkdirError(f"{path} is not a valid run configuration: {error}") from None


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON file the programs wrote (``what`` names it in errors): a missing file or one that is
    not valid JSON (edited, truncated by another tool) is a ``WorkdirError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkdirError(f"{what} {path} not found") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{what} {path} is not valid JSON ({error})") from None


def last_epoch(workdir: Path) -> dict:
    """The last line of a network's metrics.jsonl (its final training loss and test accuracy)."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        raise WorkdirError(f"{path} has no trained epoch")
    try:
        return json.loads(lines[-1])
    except ValueError as error:
        raise WorkdirError(f"the last line of {path} is not valid JSON ({error})") from None


# Beside checkpoints/: a checkpoint saved within an epoch when the run stopped on a signal (its
# number is the global step), and damaged checkpoints set aside by a resumed run.
PREEMPTED = "preempted"
DAMAGED = "damaged"


def checkpoints_of(workdir: Path, folder: str = "checkpoints") -> Checkpoints:
    """The checkpoints of the network in ``workdir`` (in process 0's workdir, see
    ``process_workdir``); ``folder``: another kind of them (``PREEMPTED``)."""
    return Checkpoints(primary_workdir(workdir), folder)


def checkpoint_epochs(workdir: Path, folder: str = "checkpoints") -> list[int]:
    """The epochs of the complete checkpoints in a network's workdir, sorted (orbax names a
    complete checkpoint by its number, an unfinished one ``<n>.orbax-checkpoint-tmp*``)."""
    directory = primary_workdir(workdir) / folder
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def has_checkpoint(workdir: Path) -> bool:
    """Whether a network's workdir holds a complete checkpoint."""
    return bool(checkpoint_epochs(workdir))


def choose_epoch(workdir: Path, which: str) -> int:
    """The checkpoint to use: the latest ("final"), or ("best") the kept checkpoint with the
    highest test accuracy in the run's metrics.jsonl (the earliest of equals; selected on the test
    split, so optimistic)."""
    if which not in CHECKPOINT_CHOICES:
        raise ConfigError(f"unknown checkpoint {which!r}; expected 'final' or 'best'")
    workdir = Path(workdir)
    epochs = checkpoint_epochs(workdir)
    if not epochs:
        raise WorkdirError(f"no checkpoint in {workdir / 'checkpoints'}")
    if which == "final":
        return max(epochs)
    path = workdir / "metrics.jsonl"
    accuracy = {}
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        try:
            record = json.loads(line)
            accuracy[record["epoch"]] = record["test_accuracy"]
        except (ValueError, KeyError, TypeError):
            raise WorkdirError(f"{path}:{number} is not a line of metrics (truncated?): {line[:60]!r}") from None
    ranked = [e for e in epochs if e in accuracy]
    if not ranked:
        raise WorkdirError(f"{path} has no test accuracy for the checkpoints {sorted(epochs)}")
    return max(ranked, key=lambda e: (accuracy[e], -e))


@functools.lru_cache(maxsize=4)
def state_template(model: ModelConfig, optim: OptimConfig) -> train.TrainState:
    """A train state whose structure and dtypes the checkpoints of runs with this model and
    optimiser restore into (built once per configuration)."""
    return train.create_train_state(models.network(model), train.make_optimizer(optim, 1e-3), jax.random.key(0))


def restore_variables(workdir: Path, config: RunConfig, epoch: int | None = None) -> dict:
    """``{"params", "batch_stats"}`` of checkpoint ``epoch`` (default: the latest) of the run in
    ``workdir`` trained with ``config``."""
    checkpoints = checkpoints_of(Path(workdir))
    try:
        epoch = checkpoints.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise WorkdirError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
        try:
            state, _ = checkpoints.restore(epoch, state_template(config.model, config.optim))
        except CheckpointError as error:
            raise WorkdirError(str(error)) from None
    finally:
        checkpoints.close()
    return {"params": state.params, "batch_stats": state.batch_stats}


def load(workdir: str | Path, checkpoint: str = "final") -> tuple[RunConfig, dict, int]:
    """A finished run, ready to use: ``(config, variables, epoch)`` of its ``checkpoint``
    ("final" or "best", ``choose_epoch``). Raises ``WorkdirError`` naming what is missing."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise WorkdirError(f"run folder {workdir} not found")
    config = read_run_config(workdir)
    epoch = choose_epoch(workdir, checkpoint)
    return config, restore_variables(workdir, config, epoch), epoch


# ---------------------------------------------------------------------------------------------
# An evolution's networks (``faml_jax.evolution`` writes population.json)


def member_workdir(evolve_dir: Path, workdir: str) -> Path:
    """A network's workdir as its lineage record names it (relative: inside the evolution's)."""
    path = Path(workdir)
    return path if path.is_absolute() else evolve_dir / path


def population_members(
    evolve_dir: str | os.PathLike, all_networks: bool = False, generation: int | None = None
) -> list[tuple[str, Path]]:
    """(name, workdir) of a finished evolution's final population (its last generation's
    survivors), of generation ``generation``'s survivors (0: the initial population; any
    generation recorded so far, also of an unfinished evolution), or with ``all_networks`` of
    every network it has trained. An evolution that has not run all its configured generations
    (evolve.json) is refused unless ``generation`` names one: its last survivors are not the
    final population."""
    evolve_dir = Path(evolve_dir)
    path = evolve_dir / "population.json"
    if not path.exists():
        raise WorkdirError(f"{path} not found (expected the workdir of experiments.evolve)")
    lineage = read_lineage(evolve_dir)
    generations = lineage.get("generations", [])
    if all_networks:
        if generation is not None:
            raise ConfigError("choose all networks or one generation, not both")
        names = [n for n, r in lineage["members"].items() if r.get("status") == "trained"]
        return [(name, member_workdir(evolve_dir, lineage["members"][name]["workdir"])) for name in names]
    if generation is not None:
        if not 0 <= generation < len(generations):
            raise WorkdirError(
                f"generation {generation} is not in {path}: it records generations "
                + (f"0 to {len(generations) - 1}" if generations else "none yet")
            )
        names = generations[generation]["survivors"]
    else:
        planned = configured_generations(evolve_dir) + 1  # generation 0 is the initial population
        if len(generations) < planned:
            raise WorkdirError(
                f"evolution not finished: {len(generations)} of {planned} generations in {evolve_dir}; "
                "resume it (experiments.evolve --resume), or pass --generation N to use an earlier one"
            )
        names = generations[-1]["survivors"]
    return [(name, member_workdir(evolve_dir, lineage["members"][name]["workdir"])) for name in names]


def read_lineage(evolve_dir: str | os.PathLike) -> dict:
    """An evolution's population.json (its lineage), its format version checked."""
    path = Path(evolve_dir) / "population.json"
    return checked(read_json(path, "the lineage"), str(path))


def configured_generations(evolve_dir: Path) -> int:
    """The number of generations (after the initial population) an evolution is configured to run
    (its evolve.json, as last started or resumed)."""
    path = Path(evolve_dir) / "evolve.json"
    if not path.exists():
        raise WorkdirError(f"{path} not found (expected the workdir of experiments.evolve)")
    recorded = checked(read_json(path, "the evolution's configuration"), str(path))
    try:
        return int(recorded["fga"]["generations"])
    except (ValueError, KeyError, TypeError) as error:
        raise WorkdirError(f"{path} is not an evolution's configuration (no fga.generations: {error!r})") from None
