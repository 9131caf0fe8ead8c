"""Versions of the files the project writes and reads back: a run's config.json, each
checkpoint's digest and record, an evolution's evolve.json and population.json, a report's
report.json, an export's export.json, prepared data's metadata.json. Each carries
``format_version``; a file of another version (or of a development version written before files
were versioned) is refused in one line that says so: nothing is read in a form it was not
written in.

    >>> write_json(path, stamped(record))           # writing
    >>> record = checked(json.loads(...), path)     # reading: the record without its version
"""

from __future__ import annotations

from faml_jax.errors import WorkdirError

# Runs, their checkpoints, evolutions, reports and exports (2: checkpoint records hold the
# learning-rate segment and the planned epochs, config.json the numerics and the fusion start).
FORMAT_VERSION = 2
# Files whose format has not changed since version 1 keep it, so that nothing long to make
# (a prepared data set, a converted backbone) has to be made again.
# An evolution's population.json (3: each network given with --members is recorded with its final
# checkpoint's epoch and digest; a lineage of version 2 cannot say which network it meant).
EVOLUTION_VERSION = 3
PREPARED_VERSION = 1  # experiments.prepare's metadata.json
BACKBONE_VERSION = 1  # a converted backbone's digest


def stamped(record: dict, version: int = FORMAT_VERSION) -> dict:
    """``record`` with ``format_version`` first."""
    return {"format_version": version, **unstamped(record)}


def unstamped(record: dict) -> dict:
    """``record`` without its ``format_version`` (checked elsewhere, or not needed)."""
    return {k: v for k, v in record.items() if k != "format_version"}


def checked(record, where, expected: int = FORMAT_VERSION) -> dict:
    """``record`` (read from ``where``) without its ``format_version``, or a ``WorkdirError``
    when it was written in another format than ``expected``."""
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != expected:
        written = (
            f"format version {version}"
            if version is not None
            else "no format version (a development version of faml_jax wrote it before files were versioned)"
        )
        raise WorkdirError(
            f"{where} has {written}; this faml_jax reads format version {expected}: make it again with this version"
        )
    return unstamped(record)
