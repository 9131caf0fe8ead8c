"""Data sets by name, as random-access train and test sources (see ``pipeline`` for batching).

Available now: ``synthetic`` (embedded, generated once into a cache folder). The readers of the
user-provided RAF-DB and AffectNet folders are added beside it.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from faml_jax.data import synthetic
from faml_jax.data.pipeline import ArraySource, Source, TrainLoader, eval_batches

DATASETS = ("synthetic",)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set opened for training: its classes, splits and training class counts."""

    name: str
    classes: tuple[str, ...]
    train: Source
    test: Source
    train_counts: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        counts = ", ".join(f"{c} {n}" for c, n in zip(self.classes, self.train_counts))
        return f"{self.name}: train {len(self.train)} / test {len(self.test)} images; train per class: {counts}"


def open_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 synthetic_config: synthetic.SyntheticConfig | None = None, progress=None) -> Dataset:
    """Open a data set by name.

    Args:
      name: one of ``DATASETS``.
      data_dir: for ``synthetic``, the cache folder (default ``$FAML_JAX_CACHE`` or
        ``~/.cache/faml_jax``).
      synthetic_config: size and difficulty of the synthetic set.
      progress: optional callable receiving one-line status messages.
    """
    if name != "synthetic":
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    config = synthetic_config or synthetic.SyntheticConfig()
    folder = synthetic.materialize(config, data_dir, progress)

    def load(split):
        return ArraySource(
            np.load(folder / f"{split}_images.npy", mmap_mode="r"), np.load(folder / f"{split}_labels.npy")
        )

    train, test = load("train"), load("test")
    counts = np.bincount(train.labels, minlength=len(synthetic.CLASSES))
    return Dataset("synthetic", synthetic.CLASSES, train, test, counts)


__all__ = ["DATASETS", "ArraySource", "Dataset", "Source", "TrainLoader", "eval_batches", "open_dataset"]
