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

FORMAT_VERSION = 2


def stamped(record: dict) -> dict:
    """``record`` with this version's ``format_version`` first."""
    return {"format_version": FORMAT_VERSION, **unstamped(record)}


def unstamped(record: dict) -> dict:
    """``record`` without its ``format_version`` (checked elsewhere, or not needed)."""
    return {k: v for k, v in record.items() if k != "format_version"}


def checked(record, where) -> dict:
    """``record`` (read from ``where``) without its ``format_version``, or a ``WorkdirError``
    when it was written in another format."""
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION:
        written = (
            f"format version {version}"
            if version is not None
            else "no format version (a development version of faml_jax wrote it before files were versioned)"
        )
        raise WorkdirError(
            f"{where} has {written}; this faml_jax reads format version {FORMAT_VERSION}: make it again with this version"
        )
    return unstamped(record)
