"""Batch evaluation: logits for a whole split in one compiled function, of one network
(``Evaluator``) or of all members of an ensemble at once (``EnsembleEvaluator``), and
classification metrics (accuracy, mean class accuracy, confusion matrix)."""

from __future__ import annotations

from typing import Iterable

import jax
import numpy as np

from faml_jax import ensemble, models, train


class Evaluator:
    """Logits of a whole split: ``Evaluator(model, batch_size)(params, batch_stats, batches)``.

    The eval step is ``pmap``-ed over the local devices with a fixed per-call batch; a short last
    batch is padded (and the padding dropped from the result), so one compilation serves a
    split of any size.
    """

    def __init__(self, model: models.ResNet, batch_size: int, devices=None):
        self.devices = list(jax.local_devices() if devices is None else devices)
        n = len(self.devices)
        self.batch_size = -(-batch_size // n) * n  # a multiple of the device count
        self._step = jax.pmap(self._device_step(model), in_axes=(0, 0), devices=self.devices)

    def _device_step(self, model):
        """``(variables, images) -> logits`` on one device."""
        eval_step = train.make_eval_step(model)
        return lambda variables, images: eval_step(variables["params"], variables["batch_stats"], images)

    def _gather(self, out) -> np.ndarray:
        """The pmapped step's output (devices, per-device batch, C) -> (batch, C) on the host."""
        return np.asarray(out).reshape(self.batch_size, -1)

    def __call__(self, variables: dict, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
        """``variables``: {"params", "batch_stats"} replicated over the devices (``train.replicate``).
        Returns ``(logits float32 (n, C), labels int32 (n,))`` in the order of ``batches``."""
        logits, labels = [], []
        for batch in batches:
            images, count = batch["image"], len(batch["label"])
            for start in range(0, count, self.batch_size):
                chunk = images[start : start + self.batch_size]
                pad = self.batch_size - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                out = self._gather(self._step(variables, train.shard(chunk, self.devices)))
                logits.append(out[..., : self.batch_size - pad, :])
            labels.append(np.asarray(batch["label"], np.int32))
        return np.concatenate(logits, axis=-2), np.concatenate(labels)


class EnsembleEvaluator(Evaluator):
    """Logits of all members of an ensemble for a whole split, in one compiled call per batch:
    ``EnsembleEvaluator(model, batch_size)(stacked_variables, batches)``.

    ``stacked_variables`` (``fga.stack`` of the members' ``{"params", "batch_stats"}``) are
    replicated over the devices (``train.replicate``); each device evaluates every member on its
    share of the batch (``ensemble.ensemble_logits``; ``mapping`` None: the backend's measured
    default). Returns ``(logits float32 (M, n, C), labels int32 (n,))``.
    """

    def __init__(self, model: models.ResNet, batch_size: int, devices=None, mapping: ensemble.Mapping | None = None):
        self.mapping = mapping or ensemble.default_mapping()
        super().__init__(model, batch_size, devices)

    def _device_step(self, model):
        return lambda variables, images: ensemble.ensemble_logits(model, variables, images, self.mapping)

    def _gather(self, out) -> np.ndarray:
        out = np.asarray(out)  # (devices, M, per-device batch, C)
        return out.transpose(1, 0, 2, 3).reshape(out.shape[1], self.batch_size, -1)


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
