"""Tests of faml_jax.evaluate: split evaluation over devices (members evaluated together:
test_report.py)."""

import jax
import numpy as np

from faml_jax import models, train
from faml_jax.data import ArraySource, eval_batches
from faml_jax.evaluate import Evaluator


def test_evaluator_matches_direct_application_with_padding(devices):
    model = models.build("r18", 5, widths=(8, 8, 8, 8), input_size=16)
    variables = models.init(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    src = ArraySource(images, np.arange(23) % 5)
    evaluator = Evaluator(model, batch_size=6, devices=devices)  # 6 -> 8 (4 devices)
    logits, labels = evaluator(train.replicate(variables, devices), eval_batches(src, 10, 16, num_threads=1))
    expected = train.make_eval_step(model)(variables["params"], variables["batch_stats"], images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.arange(23) % 5)


def test_a_split_smaller_than_the_batch_is_padded_to_the_device_count_only(devices):
    """5 images with a batch of 64 are evaluated in one call of 8 (two per device), not 64."""
    model = models.build("r18", 5, widths=(8, 8, 8, 8), input_size=16)
    variables = models.init(model, jax.random.key(0))
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    evaluator = Evaluator(model, batch_size=64, devices=devices)
    step, calls = evaluator._step, []
    evaluator._step = lambda v, x: calls.append(x.shape) or step(v, x)
    logits, _ = evaluator(
        train.replicate(variables, devices), eval_batches(ArraySource(images, np.zeros(5)), 64, 16, 1)
    )
    n = len(devices)
    assert calls == [(n, -(-5 // n), 16, 16, 3)]
    expected = train.make_eval_step(model)(variables["params"], variables["batch_stats"], images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
