"""Tests of the embedded synthetic data set: determinism, class proportions, label noise, cache."""

import json

import numpy as np
import pytest

from faml_jax.data import synthetic


def test_class_counts_follow_rafdb_proportions():
    counts = synthetic.class_counts(4000, synthetic.RAFDB_TRAIN_COUNTS)
    assert counts.sum() == 4000
    expected = np.asarray(synthetic.RAFDB_TRAIN_COUNTS) / sum(synthetic.RAFDB_TRAIN_COUNTS) * 4000
    assert np.all(np.abs(counts - expected) < 1.0)
    assert synthetic.class_counts(7, synthetic.RAFDB_TRAIN_COUNTS).tolist() == [1] * 7
    # RAF-DB itself: the split sizes of the paper (12,271 / 3,068).
    assert sum(synthetic.RAFDB_TRAIN_COUNTS) == 12271 and sum(synthetic.RAFDB_TEST_COUNTS) == 3068


def test_generation_is_deterministic_by_seed_and_has_the_requested_proportions():
    config = synthetic.SyntheticConfig(train_size=300, test_size=70, image_size=32, seed=3, label_noise=0.1)
    images, labels, true_labels = synthetic.generate_split(config, "train")
    images2, labels2, _ = synthetic.generate_split(config, "train")
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)
    other, _, _ = synthetic.generate_split(
        synthetic.SyntheticConfig(train_size=300, test_size=70, image_size=32, seed=4), "train"
    )
    assert np.abs(other.astype(int) - images).mean() > 10

    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    expected = synthetic.class_counts(300, synthetic.RAFDB_TRAIN_COUNTS)
    np.testing.assert_array_equal(np.bincount(true_labels, minlength=7), expected)
    noisy = labels != true_labels
    assert 0.04 < noisy.mean() < 0.18  # 10% requested, binomial spread on 300
    test_images, test_labels, test_true = synthetic.generate_split(config, "test")
    np.testing.assert_array_equal(test_labels, test_true)  # no label noise on the test split
    np.testing.assert_array_equal(
        np.bincount(test_labels, minlength=7), synthetic.class_counts(70, synthetic.RAFDB_TEST_COUNTS)
    )
    assert not np.array_equal(test_images[:10], images[:10])


def test_classes_differ_in_geometry_not_in_a_lookup():
    """Class means overlap pairwise less than the within-class spread for the confusable pairs."""
    means = dict(zip(synthetic.CLASSES, synthetic.CLASS_MEANS))
    far = np.linalg.norm(means["happiness"] - means["sadness"])
    for a, b in [("fear", "surprise"), ("disgust", "anger"), ("sadness", "neutral")]:
        assert np.linalg.norm(means[a] - means[b]) < far


def test_materialize_caches_and_ignores_unfinished_folders(tmp_path):
    config = synthetic.SyntheticConfig(train_size=14, test_size=7, image_size=16)
    parent = tmp_path / "synthetic"
    parent.mkdir()
    (parent / f".{config.key()}-unfinished").mkdir()  # a generation that was interrupted
    messages = []
    folder = synthetic.materialize(config, tmp_path, progress=messages.append)
    assert folder == parent / config.key() and len(messages) == 1
    info = json.loads((folder / "info.json").read_text())
    assert info["splits"]["train"]["size"] == 14 and info["classes"] == list(synthetic.CLASSES)
    assert np.load(folder / "train_images.npy").shape == (14, 16, 16, 3)
    # Second call: cached, nothing generated.
    assert synthetic.materialize(config, tmp_path, progress=messages.append) == folder and len(messages) == 1


def test_config_validation():
    with pytest.raises(ValueError, match="at least 7"):
        synthetic.SyntheticConfig(train_size=3)
    with pytest.raises(ValueError, match="unknown split"):
        synthetic.generate_split(synthetic.SyntheticConfig(), "val")
