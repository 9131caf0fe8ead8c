"""Tests of the grain input pipeline: per-epoch permutations, resumable iterators, sharding."""

import numpy as np
import pytest

from faml_jax.data import ArraySource, TrainLoader, eval_batches
from faml_jax.data.pipeline import resize


def source(n=50, size=8):
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
    return ArraySource(np.ascontiguousarray(images), np.arange(n) % 7)


def epoch_ids(loader, epoch):
    return np.concatenate([b["image"][:, 0, 0, 0] for b in loader.iterate(epoch)])


def test_each_epoch_is_a_fresh_permutation_reproducible_from_the_seed():
    loader = TrainLoader(source(), global_batch=8, image_size=8, seed=1, num_threads=2)
    assert loader.steps_per_epoch == 6
    e0, e1 = epoch_ids(loader, 0), epoch_ids(loader, 1)
    assert len(e0) == 48 and len(set(e0.tolist())) == 48  # no repeats; 2 dropped by drop_remainder
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, epoch_ids(TrainLoader(source(), 8, 8, seed=1, num_threads=1), 0))
    assert not np.array_equal(e0, epoch_ids(TrainLoader(source(), 8, 8, seed=2), 0))
    batch = next(loader.iterate(0))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 8, 8, 3)
    np.testing.assert_array_equal(batch["label"], batch["image"][:, 0, 0, 0] % 7)


def assert_resumes_mid_epoch(loader, epoch, taken, remaining):
    """Stop after ``taken`` batches of ``epoch``; an iterator restored from the saved state gives
    exactly the ``remaining`` batches the first one still had."""
    iterator = loader.iterate(epoch)
    for _ in range(taken):
        next(iterator)
    state = iterator.get_state()
    rest = [b["image"][:, 0, 0, 0] for b in iterator]
    resumed = [b["image"][:, 0, 0, 0] for b in loader.iterate(epoch, state)]
    assert len(rest) == remaining
    for a, b in zip(rest, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_iterator_state_resumes_with_exactly_the_next_batch():
    loader = TrainLoader(source(), global_batch=8, image_size=8, seed=5, num_threads=2)
    assert_resumes_mid_epoch(loader, epoch=3, taken=2, remaining=4)


def test_processes_read_disjoint_equal_shards():
    loaders = [TrainLoader(source(51), 8, 8, seed=0, process_index=i, process_count=2) for i in range(2)]
    assert loaders[0].local_batch == 4 and loaders[0].steps_per_epoch == loaders[1].steps_per_epoch == 6
    ids = [set(epoch_ids(loader, 0).tolist()) for loader in loaders]
    assert not ids[0] & ids[1]


def test_processes_together_read_the_global_batches_of_one_process():
    """Process i's step-j batch is slice i of the one-process step-j batch: P processes with D
    devices each put every example on the same device position as one process with P*D devices."""
    single = [b["image"][:, 0, 0, 0] for b in TrainLoader(source(51), 12, 8, seed=3).iterate(2)]
    shards = [
        [
            b["image"][:, 0, 0, 0]
            for b in TrainLoader(source(51), 12, 8, seed=3, process_index=i, process_count=3).iterate(2)
        ]
        for i in range(3)
    ]
    assert len(single) == 4 and all(len(s) == 4 for s in shards)
    for step, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), batch)
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        TrainLoader(source(), 8, 8, process_count=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainLoader(source(5), 8, 8)


def test_eval_batches_keep_order_and_resize():
    batches = list(eval_batches(source(), batch_size=16, image_size=4, num_threads=2))
    assert [len(b["label"]) for b in batches] == [16, 16, 16, 2]
    ids = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(50))
    assert batches[0]["image"].shape == (16, 4, 4, 3)


def test_resize_keeps_constant_images_constant():
    image = np.full((10, 10, 3), 77, np.uint8)
    out = resize(image, 6)
    assert out.shape == (6, 6, 3) and np.all(out == 77)
    assert resize(image, 10) is image


def imbalanced_source():
    """200 examples: class 0 has 150, class 1 has 40, class 2 has 10; image value = index."""
    labels = np.repeat([0, 1, 2], [150, 40, 10])
    images = np.broadcast_to(np.arange(200, dtype=np.uint8)[:, None, None, None], (200, 4, 4, 3))
    return ArraySource(np.ascontiguousarray(images), labels)


def test_balanced_sampler_draws_classes_equally_with_replacement():
    """Each draw's class is uniform: over 20 epochs of 200 draws the class shares are 1/3 within
    a binomial 4-sigma band, although the split is 75/20/5 %; examples repeat within an epoch;
    each epoch is reproducible from (seed, epoch) and differs between epochs."""
    src = imbalanced_source()
    loader = TrainLoader(src, global_batch=20, image_size=4, seed=3, num_threads=2, balanced=True)
    epochs = [epoch_ids(loader, e) for e in range(20)]
    labels = src.labels[np.concatenate(epochs)]
    shares = np.bincount(labels, minlength=3) / len(labels)
    sigma = np.sqrt((1 / 3) * (2 / 3) / len(labels))
    np.testing.assert_allclose(shares, 1 / 3, atol=4 * sigma)
    assert len(set(epochs[0].tolist())) < len(epochs[0])  # with replacement
    np.testing.assert_array_equal(epochs[0], epoch_ids(TrainLoader(src, 20, 4, seed=3, balanced=True), 0))
    assert not np.array_equal(epochs[0], epochs[1])
    # The probabilities themselves: example i drawn with (1/n_{y_i}) / sum_j (1/n_{y_j}) = 1/(3 n_{y_i}).
    from faml_jax.data.pipeline import balanced_indices

    draws = balanced_indices(src.labels, seed=0, epoch=0, size=300_000)
    freq = np.bincount(draws, minlength=200) / len(draws)
    expected = 1 / (3 * np.bincount(src.labels)[src.labels])
    np.testing.assert_allclose(freq, expected, rtol=0.15)


def test_balanced_sampler_resumes_mid_epoch():
    loader = TrainLoader(imbalanced_source(), global_batch=20, image_size=4, seed=4, num_threads=2, balanced=True)
    assert_resumes_mid_epoch(loader, epoch=2, taken=3, remaining=7)
