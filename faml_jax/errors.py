"""The library's exceptions. Every error a user can cause (a configuration, a data set, a folder,
a file) is a ``FamlError`` with a one-line message, which the programs print as it is with exit
status 2 (``experiments/cli.py``); ``DiskFullError`` is an ``OSError`` (exit status 1). Any other
exception is a bug, and the programs show its traceback.

``FamlError`` derives from ``ValueError`` (code that catches ``ValueError`` keeps working)."""

import errno
import re


class FamlError(ValueError):
    """The common base of the errors a user can cause: one line that says what to do."""


class ConfigError(FamlError):
    """A run's configuration cannot be used as asked (e.g. a real data set without a pre-trained
    start, a batch that does not divide over the devices, a resumed run with another
    configuration)."""


class WorkdirError(FamlError):
    """An output folder cannot be used as asked: not writable, holding an earlier run without
    resume/overwrite, or missing what a finished run leaves there."""


class DataError(FamlError):
    """A data set folder is missing, incomplete or not in the expected layout."""


class NonFiniteError(FamlError):
    """Training produced a non-finite loss, gradient or weight (a learning rate too high, a
    non-finite input): the run stopped, keeping its last finite checkpoint."""


class DiskFullError(OSError):
    """The file system filled up while writing an output (a checkpoint, metrics, a report): what
    was being written and what is complete are in the message. Complete files stay intact (every
    write is atomic), so a resumed run continues from the last complete checkpoint."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")


def causes(error: BaseException | None):
    """``error`` and the exceptions it was raised from (``__cause__``, else ``__context__``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is the file system being full, or
    the user's quota on it used up: ``OSError`` ENOSPC or EDQUOT, or the same reported in another
    library's message (tensorstore, under orbax's checkpoints, raises
    ``ValueError("RESOURCE_EXHAUSTED: ... No space left on device")``)."""
    return any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(text in str(e) for text in FULL_DISK_TEXTS)
        for e in causes(error)
    )


def disk_full_phrase(error: BaseException) -> str:
    """How to name the fault ``is_disk_full`` found: "disk quota exceeded" or "no space left on
    device"."""
    quota = any(
        (isinstance(e, OSError) and e.errno == errno.EDQUOT) or "Disk quota exceeded" in str(e) for e in causes(error)
    )
    return "disk quota exceeded" if quota else "no space left on device"


def written_path(error: BaseException) -> str | None:
    """The file a failed write was writing, as ``error`` (or an exception it was raised from)
    names it; None when none does."""
    for e in causes(error):
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        match = re.search(r'Failed writing: "([^"]+)"', str(e)) or re.search(r'local file "([^"]+)"', str(e))
        if match:
            return match.group(1)
    return None


class OutOfMemoryError(ConfigError):
    """A step needed more memory than the devices have (a batch too large for the machine)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device or host allocation that failed (XLA's RESOURCE_EXHAUSTED
    "Out of memory ...", or Python's ``MemoryError``); a full disk is not."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text and "out of memory" in text.lower() and not is_disk_full(error)


def requested_bytes(error: BaseException) -> int | None:
    """The allocation an out-of-memory error names, in bytes (XLA's CPU: "allocating N bytes";
    its GPU allocator: "to allocate 12.34GiB"), or None."""
    text = str(error)
    match = re.search(r"allocat\w* (\d+) bytes", text)
    if match:
        return int(match.group(1))
    match = re.search(r"allocate (\d+(?:\.\d+)?) ?([KMGT])i?B", text)
    if match:
        return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2)))
    return None
