"""One session of writing a run's or an evolution's workdir, the same for ``trainer.fit`` and
``evolution.evolve``: the batch checked against the devices before anything is made, the folder
locked (``workdir.WorkdirLock``) for as long as it is written, a full disk and an exhausted device
memory each named in one line, and a new start that fails undone (``workdir.undone_if_it_fails``).

    >>> with workdir_session(workdir, config, marker="config.json") as session:
    ...     with session.undone_if_it_fails():
    ...         continues = prepare_workdir(...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import jax

from faml_jax.config import RunConfig
from faml_jax.errors import (
    DiskFullError,
    OutOfMemoryError,
    disk_full_phrase,
    is_disk_full,
    is_out_of_memory,
    requested_bytes,
    written_path,
)
from faml_jax.runs import checkpoint_epochs
from faml_jax.setup import Setup
from faml_jax.workdir import WorkdirLock, new_folders, undone_if_it_fails

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass
class Session:
    """A locked workdir being written: its ``marker`` (config.json, evolve.json) and the folders
    made for it (``workdir.new_folders``, taken before anything was written)."""

    workdir: Path
    marker: str
    made: list[Path]

    def undone_if_it_fails(self):
        """Around preparing the workdir and opening what it needs: a new start that fails leaves
        nothing behind (``workdir.undone_if_it_fails``)."""
        return undone_if_it_fails(self.workdir, self.marker, self.made)

    def starts(self, resume: bool, continues: bool, what: str) -> None:
        """Say in one line that ``resume`` found no earlier ``what`` to continue (a mistyped
        folder): it starts afresh there."""
        if resume and not continues:
            anew = "a new run" if what == "run" else "a new one"
            logger.info(f"no earlier {what} to resume in {self.workdir.absolute()}: starting {anew} there")


@contextlib.contextmanager
def workdir_session(workdir: Path, config: RunConfig, *, marker: str, networks: int = 1, evolution: bool = False):
    """Write ``workdir`` (a run's, or with ``evolution`` an evolution's: ``networks`` side by
    side) within: its batch size checked first, the folder locked, a full disk and an exhausted
    memory each one line (``disk_full_named``, ``out_of_memory_named``)."""
    Setup.check_batch(config)
    made = new_folders(workdir)
    with (
        disk_full_named(workdir, networks="evolution" if evolution else ""),
        out_of_memory_named(config, networks),
        WorkdirLock(workdir, "workdir"),
    ):
        yield Session(Path(workdir), marker, made)
