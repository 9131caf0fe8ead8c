"""One writer for a run's outputs (as CLU's metric writers): per-epoch scalars go to metrics.jsonl
and TensorBoard through one ``write(epoch, scalars)``; arrays (test logits) and summaries are
written atomically. Every file is either complete or absent: never half-written; JSON is strict
(a non-finite number is an error, not a bare ``NaN`` that JSON readers refuse); files get the
modes the umask allows, as ``open`` would give them (not ``mkstemp``'s 0600)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere it can only be read by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode ``open`` gives a new file under the current umask (0o666 without its bits)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask (0o777 without its bits)."""
    return 0o777 & ~_umask()


def temporary_folder(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new folder in ``parent`` to be renamed into place when complete, with the mode the umask
    allows (``mkdtemp``'s is 0700)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    folder.chmod(folder_mode())
    return folder


# The names of what ``write_atomic`` and ``folder_written_whole`` write before the rename:
# ``.<name>.<8 random characters of tempfile's>.tmp`` (or ``.old``: an earlier folder being replaced).
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(tmp|old)")


def stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """The temporary files and folders in ``folder`` (of ``name`` only, if given) that a writer
    killed before its rename left behind. Only the holder of the lock under which they were
    written (``workdir.WorkdirLock``) may remove them: holding it, it knows their writer is gone."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        match = _TEMPORARY.fullmatch(path.name)
        if match and (name is None or match["name"] == name):
            found.append(path)
    return sorted(found)


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove ``stale_temporaries(folder, name)`` (a link is removed, never followed); returns them."""
    found = stale_temporaries(folder, name)
    for path in found:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return found


@contextlib.contextmanager
def folder_written_whole(out: Path):
    """Write the folder ``out`` whole: the block writes into the new temporary folder it is
    given, beside ``out``; when the block ends without error that folder takes ``out``'s place
    (an earlier ``out`` is removed only once the new one is there), otherwise it is removed.
    The caller holds ``out``'s lock (a ``WorkdirLock`` beside it): the temporary folders of an
    earlier writer of ``out`` that was killed are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, out.name)
    tmp = temporary_folder(out.parent, f".{out.name}.", ".tmp")
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def to_json(value, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (raises ValueError for NaN or infinity)."""
    return json.dumps(value, indent=indent, allow_nan=False)


def write_json(path: Path, value) -> None:
    """``value`` as strict, indented JSON in ``path`` (atomically)."""
    write_atomic(path, to_json(value) + "\n")


def write_atomic(
    path: Path,
    text: str | None = None,
    arrays: dict | None = None,
    *,
    payload: bytes | None = None,
    png: np.ndarray | None = None,
) -> None:
    """Write one file under a temporary name, then rename: never half-written. The content is
    ``text``, ``arrays`` (an .npz), raw bytes (``payload``) or an (H, W[, C]) uint8 image
    (``png``). The one place the project writes a file atomically; a failed write (a full disk)
    is an ``OSError`` naming ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            if arrays is not None:
                np.savez(f, **arrays)
            elif payload is not None:
                f.write(payload)
            elif png is not None:
                from PIL import Image

                Image.fromarray(png).save(f, format="PNG")
            else:
                f.write(text.encode())
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without torch: tensorboardX imports torch when
    it is installed (seconds) only to accept torch tensors, and this writer gives it floats."""
    block = "torch" not in sys.modules and "tensorboardX" not in sys.modules
    if block:
        sys.modules["torch"] = None  # "import torch" fails for this import: tensorboardX goes without
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


class RunWriter:
    """The outputs of one network's run in ``workdir``.

    ``history`` (the epochs of the checkpoint the run continues from) is written to
    metrics.jsonl first, so the file always mirrors the state the run continues from (epochs
    logged after the last complete checkpoint by an interrupted run are dropped).

    Files: ``metrics.jsonl`` (one JSON line per epoch), ``tensorboard/`` (the same scalars),
    ``test_logits/epoch_<e>.npz``, ``summary.json``.
    """

    def __init__(self, workdir: str | os.PathLike, history: list[dict] = ()):
        SummaryWriter = _summary_writer()
        self.workdir = Path(workdir)
        write_atomic(self.workdir / "metrics.jsonl", "".join(to_json(h, None) + "\n" for h in history))
        (self.workdir / "test_logits").mkdir(exist_ok=True)
        self._tensorboard = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, epoch: int, scalars: dict) -> None:
        """One epoch's scalars: a metrics.jsonl line (``{"epoch": epoch, **scalars}``) and a
        TensorBoard scalar each, flushed."""
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(to_json({"epoch": epoch, **{k: v for k, v in scalars.items() if k != "epoch"}}, None) + "\n")
        for name, value in scalars.items():
            if name != "epoch":
                self._tensorboard.add_scalar(name, value, epoch)
        self._tensorboard.flush()

    def write_logits(self, epoch: int, logits: np.ndarray, labels: np.ndarray) -> None:
        """The test split's logits and labels after ``epoch`` (0: the starting weights)."""
        write_atomic(
            self.workdir / "test_logits" / f"epoch_{epoch:04d}.npz", arrays={"logits": logits, "labels": labels}
        )

    def write_summary(self, summary: dict) -> None:
        write_json(self.workdir / "summary.json", summary)

    def close(self) -> None:
        self._tensorboard.close()
