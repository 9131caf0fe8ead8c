"""Data sets by name, as random-access train and test sources (see ``pipeline`` for batching).

* ``synthetic``: embedded, generated once into a cache folder (no download).
* ``rafdb``, ``affectnet7``, ``affectnet8``: the user's own copies (docs/method.md 1), read either
  directly from the folder as distributed (``rafdb``, ``affectnet``) or from data prepared once
  with ``python -m experiments.prepare`` (``prepared``): ``data_dir`` may be either; prepared data
  is recognised by its ``<name>/[<config>/]<version>/dataset_info.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from faml_jax.data import affectnet, rafdb, synthetic
from faml_jax.data.distributed import read_folder
from faml_jax.data.folders import (
    CorruptImageError,
    DataError,
    FolderSource,
    Problems,
    drop_bad_images,
    progress_bar,
    training_class_weights,
)
from faml_jax.data.pipeline import ArraySource, Source, TrainLoader, eval_batches
from faml_jax.errors import ConfigError

DATASETS = ("synthetic", "rafdb", "affectnet7", "affectnet8")


def class_names(name: str) -> tuple[str, ...]:
    """The class names of data set ``name`` in label order (without opening it)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if name.startswith("affectnet"):
        return affectnet.classes(int(name[-1]))
    return rafdb.CLASSES if name == "rafdb" else synthetic.CLASSES


TITLES = {"synthetic": "synthetic", "rafdb": "RAF-DB", "affectnet7": "AffectNet-7", "affectnet8": "AffectNet-8"}
PAPER_SIZES = {
    "rafdb": rafdb.PAPER_SIZES,
    "affectnet7": affectnet.PAPER_SIZES[7],
    "affectnet8": affectnet.PAPER_SIZES[8],
}
DATA_DIR_HELP = {
    "rafdb": "RAF-DB's `basic` folder (EmoLabel/, Image/aligned/) or its parent",
    "affectnet7": "the AffectNet folder (Manually_Annotated_file_lists/ and Manually_Annotated_Images/, "
    "or train_set/ and val_set/)",
}
DATA_DIR_HELP["affectnet8"] = DATA_DIR_HELP["affectnet7"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set opened for training.

    Attributes:
      name: its name in ``DATASETS``.
      classes: class names in label order.
      train, test: the splits' sources.
      train_counts, test_counts: examples per class.
      class_weights: ``N / (C n_c)`` over the training split (docs/method.md 1; stored with prepared data).
      origin: where it was read from.
      notes: what was left out and other remarks, one line each (printed by ``describe``).
    """

    name: str
    classes: tuple[str, ...]
    train: Source
    test: Source
    train_counts: np.ndarray
    test_counts: np.ndarray
    class_weights: np.ndarray
    origin: str = ""
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        """Split sizes, class counts and the notes, for the log when a data set is opened."""

        def per_class(counts):
            return ", ".join(f"{c} {n}" for c, n in zip(self.classes, counts))

        lines = [
            f"{self.name} ({self.origin}): train {len(self.train)} / test {len(self.test)} images",
            f"  train per class: {per_class(self.train_counts)}",
            f"  test per class: {per_class(self.test_counts)}",
        ]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def open_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    synthetic_config: synthetic.SyntheticConfig | None = None,
    progress: Callable | None = None,
    *,
    crop_faces: bool = True,
    skip_bad_images: bool = False,
    num_threads: int = 4,
    min_size: int | None = None,
) -> Dataset:
    """Open a data set by name.

    Args:
      name: one of ``DATASETS``.
      data_dir: for ``synthetic``, the cache folder (default ``$FAML_JAX_CACHE`` or
        ``~/.cache/faml_jax``); for the others, the user's folder as distributed (``DATA_DIR_HELP``)
        or the output folder of ``experiments.prepare``.
      synthetic_config: size and difficulty of the synthetic set.
      progress: optional callable receiving one-line status messages.
      crop_faces: AffectNet's original release: cut out the CSV's face box from each image
        (default, docs/method.md 1 [choice]); layouts without boxes (RAF-DB, AffectNet's cropped
        re-distribution) are read as they are either way.
      skip_bad_images: reading a folder directly: decode every image once now and leave out the
        unreadable ones (reported); without it, a corrupt image fails training when it is read.
        (Prepared data was checked when prepared.)
      num_threads: threads for that check.
      min_size: the side images are resized to for the network (its input size): reading a
        folder directly, a JPEG whose face is much larger is decoded at reduced scale
        (``folders.decode_image``).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if name == "synthetic":
        return _open_synthetic(synthetic_config or synthetic.SyntheticConfig(), data_dir, progress)
    if data_dir is None:
        raise DataError(
            f"{name} is not embedded: give --data-dir, {DATA_DIR_HELP[name]}, "
            "or a folder written by experiments.prepare"
        )
    if os.path.isfile(os.path.expanduser(data_dir)):
        raise DataError(
            f"--data-dir {data_dir} is a file, not a folder: give {DATA_DIR_HELP[name]}, "
            "or a folder written by experiments.prepare"
        )
    from faml_jax.data import prepared  # imports tensorflow_datasets: only for the real data sets

    if prepared.is_prepared(name, data_dir):
        return _open_prepared(name, data_dir, crop_faces, min_size)
    try:
        index = read_folder(name, data_dir)
    except DataError:
        unfinished = prepared.unfinished(name, data_dir)
        if unfinished:
            raise DataError(
                f"{data_dir} holds only an unfinished preparation of {name} ({unfinished[0]}): "
                "run experiments.prepare again"
            ) from None
        others = [d for d in prepared.BUILDERS if prepared.is_prepared(d, data_dir)]
        if others:
            raise DataError(
                f"{data_dir} holds prepared {', '.join(others)} but not {name}: run experiments.prepare "
                f"--dataset {name}"
            ) from None
        raise
    if skip_bad_images:
        drop_bad_images(index, crop_faces, skip=True, num_threads=num_threads, progress=progress_bar)
    sources = {split: FolderSource(index.splits[split], crop_faces, min_size) for split in index.splits}
    counts = {split: index.splits[split].counts(len(index.classes)) for split in index.splits}
    return _dataset(
        name,
        index.classes,
        sources,
        counts,
        None,
        f"folder {index.root}",
        index.problems,
        _crop_note(index.has_boxes, crop_faces),
    )


def _crop_note(has_boxes: bool, crop_faces: bool) -> tuple[str, ...]:
    """What ``crop_faces`` did, for layouts where it matters (whole photographs with face boxes)."""
    if not has_boxes:
        return ()
    if crop_faces:
        return ("training and testing on the CSV's face boxes (--no-crop-faces: whole photographs)",)
    return ("training and testing on whole photographs, not their face boxes (--no-crop-faces)",)


def _open_prepared(name, data_dir, crop_faces, min_size) -> Dataset:
    from faml_jax.data import prepared

    p = prepared.open_prepared(name, data_dir, crop_faces, min_size)
    notes = _crop_note(p.has_boxes, crop_faces)
    if p.stored and p.stored.get("size"):
        notes += (f"images stored ready to train: {p.stored['size']} px JPEG, quality {p.stored['quality']}",)
    return _dataset(
        name,
        p.classes,
        p.sources,
        p.class_counts,
        p.class_weights,
        f"prepared {p.folder}, from {p.source}",
        p.problems,
        notes,
    )


def _dataset(
    name, classes, sources, counts, weights, origin, problems: dict[str, Problems], extra_notes: tuple[str, ...] = ()
) -> Dataset:
    for split, source in sources.items():
        if len(source) == 0:
            raise DataError(f"{name} ({origin}) has no usable {split} image")
    if weights is None:
        weights = training_class_weights(classes, counts["train"], f"{name} ({origin})")
    notes = [line for split in sources for line in problems[split].lines(split)] + list(extra_notes)
    paper = PAPER_SIZES[name]
    if any(len(sources[s]) != paper[s] for s in paper):
        notes.append(f"the paper's {TITLES[name]} has {paper['train']:,} / {paper['test']:,} images")
    return Dataset(
        name,
        tuple(classes),
        sources["train"],
        sources["test"],
        counts["train"],
        counts["test"],
        weights,
        origin,
        tuple(notes),
    )


def _open_synthetic(config: synthetic.SyntheticConfig, data_dir, progress) -> Dataset:
    folder = synthetic.materialize(config, data_dir, progress)

    def load(split):
        return ArraySource(
            np.load(folder / f"{split}_images.npy", mmap_mode="r"), np.load(folder / f"{split}_labels.npy")
        )

    train, test = load("train"), load("test")
    counts = [np.bincount(s.labels, minlength=len(synthetic.CLASSES)) for s in (train, test)]
    return Dataset(
        "synthetic",
        synthetic.CLASSES,
        train,
        test,
        counts[0],
        counts[1],
        training_class_weights(synthetic.CLASSES, counts[0], "synthetic"),
        f"generated in {folder}",
    )


__all__ = [
    "DATASETS",
    "ArraySource",
    "CorruptImageError",
    "DataError",
    "Dataset",
    "Source",
    "TrainLoader",
    "eval_batches",
    "open_dataset",
]
