"""An output folder's life, the same for every program that writes one (a run, an evolution, an
ensemble report, a preparation): one exclusive lock for as long as it is written, the checks of
``--resume``/``--overwrite`` against what it holds, undoing a new run's start when that start
fails, and where each process of a multi-process run writes (``process_workdir``).

    >>> with WorkdirLock(path):          # a second process is refused, naming this one
    ...     prepare_directory(path, ...)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax

from faml_jax.checkpoint import sync_processes
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.records import config_differences
from faml_jax.safenames import name_problem
from faml_jax.versions import checked, stamped
from faml_jax.writer import file_mode, remove_stale_temporaries, write_json

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Several processes: process 0 owns the folder, process i > 0 writes a copy beside it


def process_workdir(workdir: Path) -> Path:
    """Where this process writes its outputs: process 0 into ``workdir``, process i > 0 into its
    own copy ``<workdir>.process<i>``. All processes compute the same run (the same replicated
    state, the same evaluation), so the copies are identical, except for checkpoints: process 0
    alone writes them and every process reads them from process 0's workdir (``runs.checkpoints_of``),
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


def ensure_writable(directory: Path, what: str = "workdir") -> None:
    """Create ``directory`` (and its parents) and check a file can be written there."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WorkdirError(f"cannot write to {what} {directory}: it is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise WorkdirError(f"cannot write to {what} {directory}: {error.strerror or error}") from None


class WorkdirLock:
    """An exclusive lock on an output folder (``fcntl.flock`` on ``<folder>/<name>``), held from
    ``acquire`` (or entering the ``with`` block) to ``release``. The operating system releases it
    when the process ends in any way, so a lock left by a dead process is no lock: it is taken
    over at once. A folder locked by a live process is refused with one line naming that
    process (its pid, command and start time, written into the lock file)."""

    def __init__(self, folder: str | os.PathLike, what: str = "workdir", name: str = LOCK_FILE):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        ensure_writable(self.folder, self.what)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise WorkdirError(f"cannot lock {self.what} {self.folder}: {error.strerror}") from None
                raise WorkdirError(
                    f"{self.what} {self.folder} is in use by {holder}: wait until it ends or stop it first"
                ) from None
            # A releasing process unlinks the file: if the path now names another file (or none),
            # this lock is on a file nobody else sees; take the current one instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({command}, started {started})\n".encode(), 0)
        self._fd = fd
        if self.path.name == LOCK_FILE:  # the folder's own lock: what its killed writers left is stale
            _remove_stale_in(self.folder)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the lock
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_stale_in(folder: Path) -> None:
    """The temporary files (``writer.write_atomic``'s) that a writer of ``folder`` killed before
    its rename left in it and in its folders (test_logits/), once its lock is held: their writer
    is gone."""
    remove_stale_temporaries(folder)
    with contextlib.suppress(OSError):
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                remove_stale_temporaries(sub)


def remove_outputs(folder: Path, names: tuple[str, ...] | list[str], what: str = "workdir") -> None:
    """Delete the outputs ``names`` of ``folder``: the one place outputs are deleted. Everything
    is checked before anything is deleted: a symbolic link among them (an output itself or
    anything inside one) is refused in one line naming it, so a link is never followed out of the
    folder and a refusal leaves the folder as it was."""
    folder = Path(folder)
    for name in names:
        link = _first_link(folder / name)
        if link is not None:
            raise WorkdirError(
                f"{link} is a symbolic link ({what} {folder}): faml_jax replaces only what it wrote there and "
                "never follows a link; nothing was deleted: remove the link (or move what it points to) first"
            )
    for name in names:
        path = folder / name
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _first_link(path: Path) -> Path | None:
    """The first symbolic link at or under ``path`` (walked without following links), or None."""
    if path.is_symlink():
        return path
    if not path.is_dir():
        return None
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def prepare_directory(
    workdir: Path,
    *,
    config_file: str,
    current: dict,
    outputs: tuple[str, ...],
    has_run: Callable[[Path], bool],
    resume: bool,
    overwrite: bool,
    may_differ: tuple[str, ...],
    what: str,
    complete: Callable[[dict], dict] = lambda saved: saved,
    write: bool = True,
) -> bool:
    """Check an output folder (created, writable, locked by the caller) against
    ``resume``/``overwrite`` and return whether it continues an earlier ``what``.

    An earlier ``what`` (``has_run(workdir)``: it left something to continue from) needs
    ``resume`` with the same configuration (``may_differ`` excepted) or ``overwrite`` (which
    deletes ``outputs``). Outputs of a start that failed before leaving anything to continue from
    are deleted: such a folder starts afresh, with or without ``resume``. With ``write``,
    ``config_file`` is then written with ``current`` (otherwise the caller writes it once its own
    checks pass: a refused command changes nothing). ``complete`` fills a saved configuration's
    fields that a later version added with their defaults, before comparing."""
    ensure_writable(workdir)
    earlier = has_run(workdir)
    _refuse_other_kind(workdir, config_file, what)
    if not earlier:  # (a folder with this program's checkpoints is its own, even if its config is damaged)
        _refuse_foreign(workdir, config_file, current, outputs, what)
    if earlier and not (resume or overwrite):
        raise WorkdirError(
            f"workdir {workdir} holds an earlier {what}: pass --resume to continue it or --overwrite to replace it "
            "(resume=True / overwrite=True in Python)"
        )
    if earlier and resume and not overwrite and (workdir / config_file).exists():
        try:
            saved = complete(checked(json.loads((workdir / config_file).read_text()), workdir / config_file))
        except json.JSONDecodeError as error:
            raise WorkdirError(
                f"{workdir / config_file} is not valid JSON ({error}): the earlier {what} cannot be "
                "continued; --overwrite replaces it"
            ) from None
        diffs = config_differences(saved, current, may_differ=may_differ, labels=(f"in {config_file}", "now"))
        if diffs:
            raise ConfigError(f"the {what} in {workdir} was made with another configuration: {'; '.join(diffs)}")
    if overwrite or not earlier:  # an earlier run replaced, or the leftovers of a start that failed
        sync_processes(f"delete {primary_workdir(workdir)}")  # no process still reads the old run
        remove_outputs(workdir, outputs)
    if write:
        write_json(workdir / config_file, stamped(current))
    sync_processes(f"prepared {primary_workdir(workdir)}")  # process 0 may have deleted checkpoints
    return earlier and not overwrite


def check_replaceable(folder: Path, what: str, recognise: Callable[[Path], str | None], overwrite: bool) -> None:
    """Whether the output folder ``folder`` (a report, an export) may be written: absent or
    empty, or (with ``overwrite``) holding an earlier ``what`` of this program. ``recognise``
    returns None for a folder it wrote, else what in it is not its own; such a folder is refused
    even with ``overwrite``, naming what is there, so a program never deletes what it did not
    write (a training run, a user's notes)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise WorkdirError(
            f"cannot write the {what} to {folder}: it is a symbolic link (to {os.readlink(folder)}); "
            "give the folder itself"
        )
    if folder.exists() and not folder.is_dir():
        raise WorkdirError(f"cannot write the {what} to {folder}: it is a file, not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    foreign = recognise(folder)
    if foreign is not None:
        raise WorkdirError(
            f"{folder} is not {_a(what)} written by faml_jax (it holds {foreign}): it is never "
            "replaced; choose another folder"
        )
    if not overwrite:
        raise WorkdirError(f"{folder} holds an earlier {what}: pass --overwrite to replace it")


def recognise_listed(folder: Path, index_file: str, kind: str, listed: Callable[[dict], set[str]]) -> str | None:
    """``check_replaceable``'s test for a folder described by its ``index_file`` (JSON whose
    ``kind`` is ``kind``): None when that file is there and every entry is one it lists
    (``listed(index)``: names, or "/"-joined paths inside the folder, e.g. ``annotated/a.png``,
    whose folders then hold only what is listed), else a short description of what is not. A
    listed name is only compared with what is there, never followed; a symbolic link or a hidden
    entry is never the program's own."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir())
    try:
        index = json.loads((folder / index_file).read_text())
        own = isinstance(index, dict) and index.get("kind") == kind and not (folder / index_file).is_symlink()
        wanted = listed(index) if own else set()
    except (OSError, ValueError, TypeError, AttributeError):
        own = False
    if not own:
        return _listing(names)
    wanted = {w for w in wanted if isinstance(w, str) and all(name_problem(p) is None for p in w.split("/"))}
    others = _unlisted(folder, "", wanted | {index_file})
    return _listing(others) if others else None


def _unlisted(folder: Path, prefix: str, wanted: set[str]) -> list[str]:
    """The entries of ``folder`` (its path inside the recognised folder: ``prefix``) that
    ``wanted`` does not list; a folder is looked into (all it holds must be listed), and an empty
    one must be listed itself."""
    others = []
    for path in sorted(folder.iterdir()):
        name = prefix + path.name
        if path.is_symlink() or name_problem(path.name) is not None:
            others.append(name)
        elif not path.is_dir():
            if name not in wanted:
                others.append(name)
        elif any(path.iterdir()):
            others += _unlisted(path, name + "/", wanted)
        elif name not in wanted:
            others.append(name)
    return others


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def new_folders(workdir: Path) -> list[Path]:
    """The folders that writing into ``workdir`` will create (innermost first)."""
    workdir = Path(workdir).absolute()
    return [p for p in (workdir, *workdir.parents) if not p.exists()]


# The file that marks each kind of faml_jax output folder.
MARKERS = {
    "config.json": "training run",
    "evolve.json": "evolution",
    "report.json": "ensemble report",
    "export.json": "export",
}


def _refuse_other_kind(workdir: Path, config_file: str, what: str) -> None:
    """A folder that holds another program's output (a run's config.json in an evolution's
    workdir, a report in a run's) is never written into, with or without ``--overwrite``."""
    for marker, kind in MARKERS.items():
        if marker != config_file and (workdir / marker).is_file():
            raise WorkdirError(f"workdir {workdir} holds {_a(kind)} ({marker}), not {_a(what)}: choose another folder")


def _refuse_foreign(workdir: Path, config_file: str, current: dict, outputs: tuple[str, ...], what: str) -> None:
    """Outputs are deleted (by ``--overwrite``, or as the leftovers of a start that failed) only
    when they are this program's: its ``config_file`` with (at least half of) the
    configuration's sections. Anything else there (a folder of the user's own) is refused, with
    or without ``--overwrite``. Empty folders do not count."""
    present = [
        name
        for name in outputs
        if (workdir / name).is_file() or ((workdir / name).is_dir() and any((workdir / name).iterdir()))
    ]
    if not present:
        return
    try:
        saved = json.loads((workdir / config_file).read_text())
        ours = isinstance(saved, dict) and len(set(saved) & set(current)) * 2 >= len(current)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise WorkdirError(
            f"workdir {workdir} holds {', '.join(present)} but no {what} of faml_jax: it is never "
            "replaced; choose another folder"
        )


@contextlib.contextmanager
def undone_if_it_fails(workdir: Path, marker: str, made: list[Path] | None = None):
    """Around preparing a run's workdir and opening what it needs (data set, backbone): when that
    fails for a new run, its ``marker`` (config.json, evolve.json) is removed again, and the
    folders made for it (``made``, from ``new_folders`` before anything was written; default:
    those this call makes) while they are empty (but for the lock), so the next try starts
    afresh instead of asking for --resume."""
    workdir = Path(workdir).absolute()
    made = new_folders(workdir) if made is None else made
    new_run = not (workdir / marker).exists()
    try:
        yield
    except BaseException:
        if new_run and workdir.is_dir():
            (workdir / marker).unlink(missing_ok=True)
            _remove_empty(made)
        raise


def undo_new_run(workdir: Path, outputs: tuple[str, ...], made: list[Path]) -> None:
    """Remove what a new run wrote (its ``outputs``: it left nothing to continue from) and the
    folders made for it (``new_folders``) once empty, so a failed start leaves nothing behind."""
    workdir = Path(workdir).absolute()
    try:
        remove_outputs(workdir, outputs)
    except WorkdirError as error:  # (while another error is raised: it is the one to show)
        logger.warning(f"a failed start left its outputs: {error}")
        return
    _remove_empty(made)


def _remove_empty(made: list[Path]) -> None:
    """The folders ``made`` (innermost first, the first one the locked workdir) while they are
    empty: the workdir may hold this process's lock, its parents nothing at all (a lock there is
    another process's)."""
    for i, folder in enumerate(made):
        if not folder.is_dir() or any(i > 0 or p.name != LOCK_FILE for p in folder.iterdir()):
            break
        if i == 0:
            (folder / LOCK_FILE).unlink(missing_ok=True)  # the lock is held by this process
        with contextlib.suppress(OSError):  # another process came in meanwhile: leave it
            folder.rmdir()
