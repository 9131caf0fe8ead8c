"""What every program shares: a parser whose errors are one line, process start-up, and the
library's errors turned into one line with exit status 2 (``run_cli``). The flags the programs
share are in ``experiments.flags``. Programs import these modules and the library, never each
other."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import jax

from faml_jax import logs, signals
from faml_jax.errors import FULL_DISK_TEXTS, FamlError, disk_full_phrase, is_disk_full, written_path
from faml_jax.launch import start_processes


class UsageError(FamlError):
    """A problem with the command line itself (flags that do not go together): one line, exit 2.
    Problems found by the library arrive as its own errors (``faml_jax.errors``)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line pointing at ``--help``."""

    def error(self, message):  # one line, not the whole usage
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    @classmethod
    def for_program(cls, module: str, doc: str) -> OneLineErrorParser:
        """The parser of ``python -m <module>``, its module docstring as the description."""
        return cls(prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_cli(parser: argparse.ArgumentParser, argv, body) -> int:
    """Parse ``argv`` and call ``body(args)``. Every failure a user can cause is one line on
    stderr: a usage problem or a library error (``faml_jax.errors.FamlError``: exit status 2), a
    file that cannot be read or written (``OSError``, status 1), a stop by Ctrl-C or SIGTERM
    (status 130 or 143, after what the library kept is said; ``faml_jax.signals``). The file
    system filling up, however a library reports it, is one line naming what was being written
    (status 1), without the background writers' echoes of it (``quiet_disk_full_echoes``). Any
    other exception is a bug: it propagates with its traceback."""
    args = parser.parse_args(argv)
    quiet_disk_full_echoes()
    try:
        with signals.installed():
            run_body(args, body)
    except FamlError as error:
        print(f"{parser.prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # DiskFullError included: its message names the file and the checkpoint
        where = f": {error.filename}" if error.filename else ""
        print(f"{parser.prog}: error: {error.strerror or one_line(error)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM (signals.Interrupted)
        stop(parser.prog, error)
    except Exception as error:  # a full disk as another library reports it; anything else is a bug
        if not is_disk_full(error):
            raise
        path = written_path(error)
        print(
            f"{parser.prog}: error: {disk_full_phrase(error)}" + (f" while writing {path}" if path else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def run_body(args: argparse.Namespace, body) -> None:
    """Join the processes of a multi-process run, then ``body(args)``."""
    start_processes(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
        getattr(args, "distributed", "off"),
    )
    primary = jax.process_index() == 0  # process 0 reports for all; errors still reach stderr
    logs.show(logging.INFO if primary else logging.WARNING)
    if not primary and hasattr(args, "no_progress"):
        args.no_progress = True
    body(args)
    signals.raise_if_pending()  # a signal whose exception Python dropped: still a stop


class _DropDiskFull(logging.Filter):
    """Drops log records about the file system being full: the program says it once, itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not any(text in message for text in FULL_DISK_TEXTS) and not (error and is_disk_full(error))


def quiet_disk_full_echoes() -> None:
    """When a disk fills up during a checkpoint, orbax's writer threads log the error with its
    traceback (absl, ERROR), asyncio logs the failed writes nobody awaited any more, and
    tensorstore's callbacks, arriving after orbax closed the event loop of that save, raise
    "Event loop is closed" as unraisable exceptions (hundreds of lines in all). The error itself
    reaches the program (``run_cli``): these echoes are dropped; every other log record and
    unraisable exception is shown as before."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropDiskFull) for f in logger.filters):
            logger.addFilter(_DropDiskFull())
    if not getattr(sys.unraisablehook, "drops_closed_loops", False):
        shown = sys.unraisablehook

        def hook(unraisable):
            if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
                return
            shown(unraisable)

        hook.drops_closed_loops = True
        sys.unraisablehook = hook


def one_line(error: BaseException) -> str:
    """An error's message as one line."""
    return " ".join(str(error).split()) or type(error).__name__


def stop(prog: str, error: KeyboardInterrupt) -> None:
    """End the program after Ctrl-C or SIGTERM: one line, exit status 128 + the signal's number.
    ``os._exit``: the interpreter's usual shutdown can crash while XLA's compiler threads are
    still running (a segfault after Ctrl-C during compilation); every file the program writes is
    complete or absent already (atomic writes, checkpoints)."""
    status = getattr(error, "exit_status", 128 + signal.SIGINT)
    print(f"{prog}: {one_line(error) if str(error) else 'interrupted'}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
