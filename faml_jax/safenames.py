"""Names read from a record (population.json's members, export.json's, report.json's and
predictions.json's files) before they become paths: a record written elsewhere is untrusted
input (docs: DESIGN's rule), so a name in it must be one plain file-name component, never a way
out of the folder it is joined to (``../x``, ``/etc/x``) nor a hidden file.

    >>> out / plain_name(name, "population.json", "survivors")       # or a one-line WorkdirError
"""

from __future__ import annotations

import os
from pathlib import Path

from faml_jax.errors import WorkdirError

MAX_NAME_BYTES = 200  # file systems take 255; room for a suffix (.onnx) and a temporary name's parts


def name_problem(name) -> str | None:
    """Why ``name`` is not a plain file-name component, or None when it is one."""
    if not isinstance(name, str):
        return "not a string"
    if not name or not name.strip():
        return "empty"
    if "\0" in name:
        return "it holds a NUL character"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "it holds a path separator"
    if name in (".", "..") or name.startswith("."):
        return "it starts with '.'"
    if len(name.encode(errors="surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def plain_name(name, record: str | os.PathLike, field: str, cause: str = "the record was altered or damaged") -> str:
    """``name`` (``field`` of the file ``record``) when it is a plain file-name component, else a
    one-line ``WorkdirError`` naming the record and the field (and ``cause``)."""
    problem = name_problem(name)
    if problem is not None:
        shown = repr(name)[:80]
        raise WorkdirError(f"{record}: {field} {shown} is not a plain file name ({problem}): {cause}")
    return name


def relative_path(value, record: str | os.PathLike, field: str) -> Path:
    """A path of plain components (``annotated/a.png``) from ``field`` of ``record``; each
    component checked by ``plain_name``."""
    if not isinstance(value, str) or not value:
        plain_name(value, record, field)
    return Path(*[plain_name(part, record, field) for part in value.split("/")])
