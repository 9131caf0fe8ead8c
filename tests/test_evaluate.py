"""Tests of faml_jax.evaluate: metrics by hand, and split evaluation over devices."""

import jax
import numpy as np

from faml_jax import models, train
from faml_jax.data import ArraySource, eval_batches
from faml_jax.evaluate import Evaluator, classification_metrics, confusion_matrix


def test_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 2, 2])
    predictions = np.array([0, 1, 0, 1, 1, 2])
    logits = np.eye(3)[predictions]
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 4 / 6
    assert m["class_accuracy"] == [2 / 3, 1.0, 0.5]
    assert np.isclose(m["mean_class_accuracy"], (2 / 3 + 1 + 0.5) / 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 1, 1]]
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 4).sum(), 6)


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
