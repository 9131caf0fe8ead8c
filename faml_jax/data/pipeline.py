"""Input pipeline with grain's ``MapDataset`` API: shuffled, resumable training batches and
ordered evaluation batches, all uint8 (normalisation and flips happen on the device).

Per epoch the training order is a permutation drawn from ``(seed, epoch)`` (or, with the
class-balanced sampler, draws with replacement from ``(seed, epoch)``), so any epoch can be
rebuilt exactly; a run stopped within an epoch records how many steps of it were done, and the
epoch is rebuilt from that step on (``start_step``). In a multi-process run process i reads the i-th slice of every global
batch (``global_batch / process_count`` examples per step), so the processes together take the
steps of one process with all the devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol

import grain
import numpy as np
from PIL import Image

from faml_jax.errors import ConfigError


class Source(Protocol):
    """A random-access data source: ``source[i] -> {"image": uint8 (H, W, 3), "label": int}``;
    ``source.labels`` holds every example's label (read without decoding an image)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A source over in-memory (or memory-mapped) arrays: images (n, H, W, 3) uint8, labels (n,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": np.asarray(self.images[index]), "label": np.int32(self.labels[index])}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3) with antialiased bilinear filtering."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


class _Prepare(grain.transforms.Map):
    """Resize every image to the model's input size (on grain's host threads)."""

    def __init__(self, size: int):
        self.size = size

    def map(self, element):
        return {"image": resize(element["image"], self.size), "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True, eq=False)
class _Indexed:
    """``source`` read at ``indices`` (the class-balanced sampler's draws)."""

    source: Source
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def balanced_indices(labels: np.ndarray, seed: int, epoch: int, size: int | None = None) -> np.ndarray:
    """One epoch of the class-balanced sampler (docs/method.md 1 [choice], DAN's imbalanced-data sampler):
    ``size`` (default: all) example indices drawn with replacement, example i with probability
    ``(1 / n_{y_i}) / sum_j (1 / n_{y_j})``, so each draw's class is uniform over the classes
    present. Deterministic in ``(seed, epoch)``."""
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    rng = np.random.default_rng(shuffle_seed(seed, epoch))
    return rng.choice(len(labels), size=len(labels) if size is None else size, replace=True, p=weights / weights.sum())


def shuffle_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: distinct per epoch, reproducible from the run's seed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class TrainLoader:
    """Training batches, one epoch at a time.

    Attributes:
      source: the training split.
      global_batch: examples per step over all processes (drop_remainder: every step is full).
      image_size: model input side; images are resized on the host threads when they differ.
      seed: run seed; epoch e is shuffled by ``shuffle_seed(seed, e)``.
      num_threads: grain host threads reading and resizing.
      prefetch: batches prepared ahead.
      process_index, process_count: this process's share of each global batch
        (``jax.process_index/count()``).
      balanced: draw each epoch with the class-balanced sampler (``balanced_indices``) instead of
        a permutation.
    """

    source: Source
    global_batch: int
    image_size: int
    seed: int = 0
    num_threads: int = 4
    prefetch: int = 4
    process_index: int = 0
    process_count: int = 1
    balanced: bool = False

    def __post_init__(self):
        if self.global_batch % self.process_count:
            raise ConfigError(f"batch {self.global_batch} is not divisible by {self.process_count} processes")
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {len(self.source)} examples, fewer than one batch of {self.global_batch}"
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def epoch_dataset(self, epoch: int, start_step: int = 0) -> grain.IterDataset:
        """The batches of one epoch from its ``start_step``-th on (a run resumed within an epoch),
        as a grain ``IterDataset``."""
        # Every process shuffles the whole split alike and reads its slice of each global batch:
        # global batch j is local batches j*P .. j*P + P-1, process i reads local batch j*P + i.
        # So P processes take exactly the steps of one process with all the devices.
        if self.balanced:
            indices = balanced_indices(self.source.labels, self.seed, epoch)
            ds = grain.MapDataset.source(_Indexed(self.source, indices))
        else:
            ds = grain.MapDataset.source(self.source).shuffle(seed=shuffle_seed(self.seed, epoch))
        ds = ds.map(_Prepare(self.image_size)).batch(self.local_batch, drop_remainder=True)
        first = self.process_index + start_step * self.process_count
        ds = ds[first : self.steps_per_epoch * self.process_count : self.process_count]
        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        return ds.to_iter_dataset(options)

    def iterate(self, epoch: int, iterator_state: dict | None = None, start_step: int = 0) -> grain.DatasetIterator:
        """An iterator over epoch ``epoch``'s batches from its ``start_step``-th on, resumed from
        ``iterator_state`` (as returned by its ``get_state()``) when given."""
        iterator = iter(self.epoch_dataset(epoch, start_step))
        if iterator_state is not None:
            iterator.set_state(iterator_state)
        return iterator


def eval_batches(source: Source, batch_size: int, image_size: int, num_threads: int = 4) -> Iterator[dict]:
    """All examples of ``source`` in order, in batches of ``batch_size`` (the last may be short)."""
    ds = grain.MapDataset.source(source).map(_Prepare(image_size)).batch(batch_size, drop_remainder=False)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)))
