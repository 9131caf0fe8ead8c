"""A trained run's folder, read the same way by everything that uses finished networks (the
trainer on resume, evolution, ensemble evaluation, prediction): its configuration (config.json,
its format version checked), its checkpoints, the variables of a chosen checkpoint, its
metrics (where each process of a multi-process run reads and writes: ``workdir.process_workdir``).

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
import re
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

from faml_jax import data, models, train
from faml_jax.checkpoint import CheckpointError, Checkpoints, content_digest
from faml_jax.config import ModelConfig, OptimConfig, RunConfig
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.records import run_config_from_json
from faml_jax.safenames import plain_name
from faml_jax.versions import EVOLUTION_VERSION, checked
from faml_jax.workdir import primary_workdir

logger = logging.getLogger(__name__)

CHECKPOINT_CHOICES = ("final", "best")


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


def refuse_repeated(paths: list[Path], message: str) -> None:
    """Refuse run folders given on the command line that name one folder twice (compared
    resolved): one ``ConfigError``, ``message`` followed by the folders."""
    resolved = [Path(p).resolve() for p in paths]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise ConfigError(f"{message}: {', '.join(duplicates)}")


def read_run_config(workdir: Path) -> RunConfig:
    """The configuration a network in ``workdir`` was trained with (its config.json): the one
    reader every program's configuration of a trained network passes (prediction, export,
    ensembles, evolution), so a damaged or crafted file is refused here in one line naming it
    (and the field), every number bounded (``records.BOUNDS``) before anything is built."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise WorkdirError(f"{path} not found (expected the workdir of a network trained by experiments.train)")
    return run_config_from_json(read_json(path, "the run configuration"), str(path))


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object the programs wrote (``what`` names it in errors): a missing file, one that
    cannot be read, is not valid JSON (edited, truncated by another tool) or holds no object is
    a ``WorkdirError`` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkdirError(f"{what} {path} not found") from None
    except OSError as error:
        raise WorkdirError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{what} {path} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise WorkdirError(f"{what} {path} is not a JSON object")
    return record


def metrics_lines(path: Path) -> list[str]:
    """The lines of a metrics.jsonl (none when it is missing); one that cannot be read or
    decoded is a ``WorkdirError`` naming it."""
    try:
        return path.read_text().splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path} cannot be read ({error})") from None


def metrics_line(path: Path, number: int, line: str) -> dict:
    """Line ``number`` (1-based) of a metrics.jsonl as a record with its epoch (an integer) and
    test accuracy (a number), or a ``WorkdirError`` naming the file and the line."""
    try:
        record = json.loads(line)
        valid = (
            isinstance(record, dict)
            and isinstance(record["epoch"], int)
            and isinstance(record["test_accuracy"], (int, float))
            and not isinstance(record["test_accuracy"], bool)
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise WorkdirError(f"{path}:{number} is not a line of metrics (truncated?): {line[:60]!r}")
    return record


def last_epoch(workdir: Path) -> dict:
    """The last line of a network's metrics.jsonl (its final training loss and test accuracy)."""
    path = workdir / "metrics.jsonl"
    lines = metrics_lines(path)
    if not lines:
        raise WorkdirError(f"{path} has no trained epoch")
    return metrics_line(path, len(lines), lines[-1])


def read_arrays(path: Path, expected: dict[str, tuple[str, int]], what: str = "arrays") -> dict:
    """The arrays of an .npz file the programs wrote, read whole: ``expected`` maps each name to
    its dtype kinds (NumPy's ``dtype.kind`` letters, e.g. "f" or "iu") and number of dimensions.
    A damaged file (truncated, not a zip, an object array: never unpickled) or one without those
    arrays is a one-line ``WorkdirError`` naming it (``what`` says what it is)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            missing = sorted(set(expected) - set(saved.files))
            if missing:
                raise WorkdirError(f"{what} {path} has no {', '.join(missing)} (damaged?)")
            arrays = {name: saved[name] for name in expected}
    except WorkdirError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise WorkdirError(f"{what} {path} cannot be read (damaged?): {str(error).splitlines()[0][:120]}") from None
    for name, (kinds, ndim) in expected.items():
        array = arrays[name]
        if array.dtype.kind not in kinds or array.ndim != ndim:
            raise WorkdirError(f"{what} {path}: {name} is {array.dtype} {array.shape}, not as written (damaged?)")
    return arrays


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
    for number, line in enumerate(metrics_lines(path), 1):
        record = metrics_line(path, number, line)
        accuracy[record["epoch"]] = record["test_accuracy"]
    ranked = [e for e in epochs if e in accuracy]
    if not ranked:
        raise WorkdirError(f"{path} has no test accuracy for the checkpoints {sorted(epochs)}")
    return max(ranked, key=lambda e: (accuracy[e], -e))


@functools.lru_cache(maxsize=4)
def state_template(model: ModelConfig, optim: OptimConfig) -> train.TrainState:
    """The structure, shapes and dtypes of a train state that the checkpoints of runs with this
    model and optimiser restore into (``jax.eval_shape``: nothing is initialised)."""
    network, tx = models.network(model), train.make_optimizer(optim, 1e-3)
    return jax.eval_shape(lambda: train.create_train_state(network, tx, jax.random.key(0)))


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
    final population. Each network is checked to be the one the lineage recorded
    (``check_network``): a network given with --members that moved or was replaced is refused."""
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
    elif generation is not None:
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
    return [(name, check_network(evolve_dir, name, lineage["members"][name])) for name in names]


def read_lineage(evolve_dir: str | os.PathLike) -> dict:
    """An evolution's population.json (its lineage), its format version checked
    (``EVOLUTION_VERSION``) and its shape (``check_lineage``): a record someone else may have
    written, whose names become paths and whose networks are identified by their digests."""
    path = Path(evolve_dir) / "population.json"
    lineage = checked(read_json(path, "the lineage"), str(path), EVOLUTION_VERSION)
    check_lineage(lineage, str(path))
    return lineage


# A network's name in a lineage: also its folder's name (members/<name>).
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DIGEST_TEXT = re.compile(r"[0-9a-f]{64}")


def check_lineage(lineage: dict, where: str) -> None:
    """Refuse (``WorkdirError`` naming ``where`` and the network) a lineage whose networks or
    generations are not as ``faml_jax.evolution`` writes them: a network named as no folder
    can be, one of the evolution's own networks anywhere but ``members/<name>``, a given network
    (``--members``) not by its absolute path or without its checkpoint's epoch and digest, a
    generation naming a network the lineage does not hold."""
    members = lineage.get("members")
    if not isinstance(members, dict):
        raise WorkdirError(f"{where} has no networks (its members are not an object)")
    for name, entry in members.items():
        plain_name(name, where, "member name")  # never a way out of members/
        if not NETWORK_NAME.fullmatch(name):
            raise WorkdirError(f"{where}: member name {name[:60]!r} is not a network's name")
        if not isinstance(entry, dict) or not isinstance(entry.get("workdir"), str):
            raise WorkdirError(f"{where}: network {name} has no workdir")
        given = entry.get("origin") == "given"
        if given and not Path(entry["workdir"]).is_absolute():
            raise WorkdirError(f"{where}: network {name} was given with --members but its workdir is not absolute")
        if not given and entry["workdir"] != f"members/{name}":
            raise WorkdirError(f"{where}: network {name}'s workdir is {entry['workdir'][:100]!r}, not members/{name}")
        if given and entry.get("status") == "trained":
            epoch, digest = entry.get("checkpoint_epoch"), entry.get("checkpoint_digest")
            if not (
                isinstance(epoch, int) and epoch >= 0 and isinstance(digest, str) and DIGEST_TEXT.fullmatch(digest)
            ):
                raise WorkdirError(
                    f"{where}: network {name} (given with --members) has no valid checkpoint_epoch and "
                    "checkpoint_digest: which network it means cannot be checked"
                )
    generations = lineage.get("generations", [])
    if not isinstance(generations, list):
        raise WorkdirError(f"{where}: its generations are not a list")
    for g, entry in enumerate(generations):
        survivors = entry.get("survivors") if isinstance(entry, dict) else None
        if not isinstance(survivors, list) or not all(isinstance(n, str) and n in members for n in survivors):
            raise WorkdirError(f"{where}: generation {g}'s survivors are not networks it records")


def final_checkpoint(workdir: Path) -> tuple[int, str]:
    """The epoch and content digest (``checkpoint.content_digest``) of a run's final checkpoint:
    what identifies the network, whatever its path."""
    epochs = checkpoint_epochs(workdir)
    if not epochs:
        raise WorkdirError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    return epochs[-1], checkpoint_digest(workdir, epochs[-1])


def checkpoint_digest(workdir: Path, epoch: int) -> str:
    """The content digest of checkpoint ``epoch`` of the run in ``workdir``."""
    try:
        return content_digest(primary_workdir(Path(workdir)) / "checkpoints" / str(epoch))
    except CheckpointError as error:
        raise WorkdirError(str(error)) from None


def check_network(evolve_dir: Path, name: str, entry: dict) -> Path:
    """The workdir of the lineage's network ``name`` (its population.json ``entry``), checked to
    hold that network: a folder that moved is named with where the path comes from, and a
    network given with --members must still end at the checkpoint recorded (its epoch and
    digest): a run put in its place, or trained again, is refused."""
    where = Path(evolve_dir) / "population.json"
    workdir = member_workdir(Path(evolve_dir), entry["workdir"])
    if not workdir.is_dir():
        raise WorkdirError(f"network {name}'s run folder {workdir} (recorded in {where}) not found: moved or deleted?")
    epoch, recorded = entry.get("checkpoint_epoch"), entry.get("checkpoint_digest")
    if recorded is None:  # the evolution's own network, inside its folder
        return workdir
    epochs = checkpoint_epochs(workdir)
    if not epochs or epochs[-1] != epoch:
        raise WorkdirError(
            f"network {name} in {workdir} is not the one {where} records: it ends at checkpoint "
            f"{epochs[-1] if epochs else 'none'}, the evolution used checkpoint {epoch} (trained again or replaced?)"
        )
    found = checkpoint_digest(workdir, epoch)
    if found != recorded:
        raise WorkdirError(
            f"network {name} in {workdir} is not the one {where} records: checkpoint {epoch} has digest "
            f"{found[:12]}, the evolution used {recorded[:12]} (another run put in its place, or trained again?)"
        )
    return workdir


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
