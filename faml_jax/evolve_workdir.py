"""An evolution's workdir made ready: what its evolve.json holds (``evolve_record``), how a
saved one is compared on ``--resume`` (``complete_evolve_config``, ``MAY_DIFFER``) and
``prepare_evolve_workdir`` (``workdir.prepare_directory`` with it). Its lineage:
``faml_jax.lineage``; the evolution itself: ``faml_jax.evolution``.
"""

from __future__ import annotations

from pathlib import Path

from faml_jax.config import FGAConfig, RunConfig
from faml_jax.records import config_to_json
from faml_jax.trainer import has_run, normalised_run_config
from faml_jax.versions import unstamped
from faml_jax.workdir import prepare_directory

# Configuration fields that may change when an evolution is resumed.
MAY_DIFFER = ("fga.generations", "run.data.num_threads", "run.keep_checkpoints")


def complete_evolve_config(saved: dict) -> dict:
    """A saved ``evolve.json`` (its format version checked by ``prepare_directory``) ready to
    compare: its run configuration with every field (``trainer.normalised_run_config``)."""
    completed = unstamped(saved)
    if isinstance(completed.get("run"), dict):
        completed["run"] = normalised_run_config(completed["run"])
    return completed


EVOLVE_OUTPUTS = ("members", "evolve.json", "population.json")


def evolve_record(config: RunConfig, fga_config: FGAConfig, given: list[Path]) -> dict:
    """What an evolution's evolve.json holds: its run and FGA configurations and given members."""
    return {
        "run": config_to_json(config),
        "fga": config_to_json(fga_config),
        "members": [str(p.resolve()) for p in given],
    }


def prepare_evolve_workdir(
    workdir: Path,
    config: RunConfig,
    fga_config: FGAConfig,
    given: list[Path],
    resume: bool,
    overwrite: bool,
    *,
    write: bool = True,
) -> bool:
    """Make an evolution's workdir ready (``workdir.prepare_directory`` with its evolve.json,
    written only with ``write``); returns whether it continues an earlier evolution."""
    current = evolve_record(config, fga_config, given)
    return prepare_directory(
        workdir,
        config_file="evolve.json",
        current=current,
        outputs=EVOLVE_OUTPUTS,
        has_run=evolution_has_run,
        resume=resume,
        overwrite=overwrite,
        may_differ=MAY_DIFFER,
        what="evolution",
        complete=complete_evolve_config,
        write=write,
    )


def evolution_has_run(workdir: Path) -> bool:
    """Whether an evolution's workdir holds something to continue from: a network with a
    checkpoint (an evolution that stopped before any did starts afresh)."""
    members = Path(workdir) / "members"
    return members.is_dir() and any(has_run(p) for p in members.iterdir() if p.is_dir())
