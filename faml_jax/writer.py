"""One writer for a run's outputs (as CLU's metric writers): per-epoch scalars go to metrics.jsonl
and TensorBoard through one ``write(epoch, scalars)``; arrays (test logits) and summaries are
written atomically. Every file is either complete or absent: never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def write_atomic(path: Path, text: str | None = None, arrays: dict | None = None) -> None:
    """Write a text or .npz file under a temporary name, then rename: never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if arrays is not None:
                np.savez(f, **arrays)
            else:
                f.write(text.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunWriter:
    """The outputs of one network's run in ``workdir``.

    ``history`` (the epochs of the checkpoint the run continues from) is written to
    metrics.jsonl first, so the file always mirrors the state the run continues from (epochs
    logged after the last complete checkpoint by an interrupted run are dropped).

    Files: ``metrics.jsonl`` (one JSON line per epoch), ``tensorboard/`` (the same scalars),
    ``test_logits/epoch_<e>.npz``, ``summary.json``.
    """

    def __init__(self, workdir: str | os.PathLike, history: list[dict] = ()):
        from tensorboardX import SummaryWriter

        self.workdir = Path(workdir)
        write_atomic(self.workdir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        (self.workdir / "test_logits").mkdir(exist_ok=True)
        self._tensorboard = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, epoch: int, scalars: dict) -> None:
        """One epoch's scalars: a metrics.jsonl line (``{"epoch": epoch, **scalars}``) and a
        TensorBoard scalar each, flushed."""
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, **{k: v for k, v in scalars.items() if k != "epoch"}}) + "\n")
        for name, value in scalars.items():
            if name != "epoch":
                self._tensorboard.add_scalar(name, value, epoch)
        self._tensorboard.flush()

    def write_logits(self, epoch: int, logits: np.ndarray, labels: np.ndarray) -> None:
        """The test split's logits and labels after ``epoch`` (0: the starting weights)."""
        write_atomic(self.workdir / "test_logits" / f"epoch_{epoch:04d}.npz", arrays={"logits": logits, "labels": labels})

    def write_summary(self, summary: dict) -> None:
        write_atomic(self.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        self._tensorboard.close()
