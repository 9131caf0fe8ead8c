"""The library's exceptions: one-line messages a program prints as they are (``experiments/cli.py``
turns them into "one line, exit status 2"). All are ``ValueError`` subclasses, so code that
catches ``ValueError`` keeps working, except ``DiskFullError``, an ``OSError`` (exit status 1)."""

import errno
import re


class ConfigError(ValueError):
    """A run's configuration cannot be used as asked (e.g. a real data set without a pre-trained
    start, a batch that does not divide over the devices, a resumed run with another
    configuration)."""


class WorkdirError(ValueError):
    """An output folder cannot be used as asked: not writable, holding an earlier run without
    resume/overwrite, or missing what a finished run leaves there."""


class DataError(ValueError):
    """A data set folder is missing, incomplete or not in the expected layout."""


class NonFiniteError(ValueError):
    """Training produced a non-finite loss, gradient or weight (a learning rate too high, a
    non-finite input): the run stopped, keeping its last finite checkpoint."""


class DiskFullError(OSError):
    """The file system filled up while writing an output (a checkpoint, metrics, a report): what
    was being written and what is complete are in the message. Complete files stay intact (every
    write is atomic), so a resumed run continues from the last complete checkpoint."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is the file system being full:
    ``OSError`` ENOSPC, or the same reported in another library's message (tensorstore, under
    orbax's checkpoints, raises ``ValueError("RESOURCE_EXHAUSTED: ... No space left on device")``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def written_path(error: BaseException) -> str | None:
    """The file a failed write was writing, as ``error`` names it (None when it does not)."""
    if isinstance(error, OSError) and error.filename:
        return str(error.filename)
    match = re.search(r'Failed writing: "([^"]+)"', str(error)) or re.search(r'local file "([^"]+)"', str(error))
    if match:
        return match.group(1)
    cause = error.__cause__ or error.__context__
    return written_path(cause) if cause is not None and cause is not error else None
