"""Classification statistics of logits and decisions, in plain NumPy: accuracy, mean class
accuracy, confusion matrices (counts and row-normalised). Accuracies are fractions in [0, 1]
everywhere the project stores them; only what people read shows percentages."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``m[true, predicted]`` (num_classes, num_classes)."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, mean class accuracy (mean of per-class recall over classes present) and the
    confusion matrix of argmax predictions. logits: (n, C), labels: (n,)."""
    num_classes = logits.shape[-1]
    predictions = np.argmax(logits, axis=-1)
    confusion = confusion_matrix(labels, predictions, num_classes)
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(num_classes), where=support > 0)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "mean_class_accuracy": float(recall[support > 0].mean()),
        "class_accuracy": recall.tolist(),
        "confusion": confusion.tolist(),
    }


def decision_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    return classification_metrics(np.eye(num_classes)[np.asarray(predictions)], labels)


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Confusion counts -> the fraction of each true class (rows without samples stay 0)."""
    confusion = np.asarray(confusion, np.float64)
    support = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
