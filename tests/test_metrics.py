"""Tests of faml_jax.metrics against counts by hand."""

import numpy as np

from faml_jax.metrics import classification_metrics, confusion_matrix, decision_metrics, row_normalised


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


def test_decisions_and_row_normalisation_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    m = decision_metrics(np.array([0, 1, 1, 1, 0, 0]), labels, 4)
    assert m["accuracy"] == 3 / 6 and m["confusion"][0] == [1, 1, 0, 0] and len(m["confusion"]) == 4
    rows = row_normalised(np.array([[1, 3], [0, 0]]))
    np.testing.assert_array_equal(rows, [[0.25, 0.75], [0.0, 0.0]])  # a class without samples stays 0
