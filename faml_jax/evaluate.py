"""Batch evaluation: logits for a whole split in one compiled function, of one network
(``Evaluator``) or of all members of an ensemble at once (``EnsembleEvaluator``), and the test
logits of finished runs evaluated together (``evaluate_members``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np

from faml_jax import data, ensemble, fga, models, runs, train
from faml_jax.compiled import compiled
from faml_jax.config import evaluation_model
from faml_jax.errors import ConfigError, DataError, WorkdirError
from faml_jax.records import config_to_json, structural_differences


def call_size(batch_size: int, count: int, multiple: int = 1) -> int:
    """Examples per compiled call for ``count`` examples: ``batch_size``, or ``count`` (at least
    1) rounded up to ``multiple`` (the device count) when fewer: a short input is never padded up
    to a large batch."""
    return min(batch_size, -(-max(count, 1) // multiple) * multiple)


def pad_batch(chunk: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """``chunk`` with zero rows appended up to ``size`` rows (one compiled shape for a short last
    batch), and how many were appended (drop that many results)."""
    pad = size - len(chunk)
    if pad <= 0:
        return chunk, 0
    return np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]), pad


class Evaluator:
    """Logits of a whole split: ``Evaluator(model, batch_size)(variables, batches)``.

    The eval step is ``pmap``-ed over the local devices with one batch per call of ``__call__``:
    ``batch_size``, or the first batch rounded up to the device count if that is smaller (a split
    smaller than a batch is not padded to a whole one). A short last batch is padded (and the
    padding dropped from the result), so one compilation serves a split of any size.
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

    def _gather(self, out, size: int) -> np.ndarray:
        """The pmapped step's output (devices, per-device batch, C) -> (size, C) on the host."""
        return np.asarray(out).reshape(size, -1)

    def __call__(self, variables: dict, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
        """``variables``: {"params", "batch_stats"} replicated over the devices (``train.replicate``).
        Returns ``(logits float32 (n, C), labels int32 (n,))`` in the order of ``batches``."""
        logits, labels, size = [], [], None
        for batch in batches:
            images, count = batch["image"], len(batch["label"])
            size = size or call_size(self.batch_size, count, len(self.devices))
            for start in range(0, count, size):
                chunk = images[start : start + size]
                chunk, pad = pad_batch(chunk, size)
                out = self._gather(self._step(variables, train.shard(chunk, self.devices)), size)
                logits.append(out[..., : size - pad, :])
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

    def _gather(self, out, size: int) -> np.ndarray:
        out = np.asarray(out)  # (devices, M, per-device batch, C)
        return out.transpose(1, 0, 2, 3).reshape(out.shape[1], size, -1)


# ---------------------------------------------------------------------------------------------
# Finished runs evaluated together


def named_members(paths: list[Path]) -> list[tuple[str, Path]]:
    """(name, workdir) of workdirs given on the command line: named by folder (by path when two
    folders share a name)."""
    runs.refuse_repeated(paths, "a member is given twice")
    names = [p.name for p in paths]
    return [(p.name if names.count(p.name) == 1 else str(p), p) for p in paths]


# What a run's test_logits/epoch_<e>.npz holds: float logits (N, C) and integer labels (N,).
STORED_LOGITS = {"logits": ("f", 2), "labels": ("iu", 1)}
SAME_TEST_SPLIT = ("data.dataset", "data.synthetic", "data.crop_faces", "model.num_classes")


def check_compatible(members: list[tuple[str, Path]], configs: list) -> None:
    """Members evaluated together must share the data set (its test split and classes); their
    architectures and input sizes may differ (a mixed ensemble, docs/method.md 7)."""
    first = config_to_json(configs[0])
    for (name, _), config in zip(members[1:], configs[1:]):
        diffs = structural_differences(
            first, config_to_json(config), labels=(f"in {members[0][0]}", f"in {name}"), fields=SAME_TEST_SPLIT
        )
        if diffs:
            raise ConfigError(f"member {name} differs from {members[0][0]} in: {'; '.join(diffs)}")


def model_groups(configs: list) -> list[tuple[list[int], object]]:
    """The members' positions grouped by the network they evaluate with (architecture, widths,
    input size: ``evaluation_model``), in order of first appearance: each group is one compiled
    call."""
    keys = [evaluation_model(c.model) for c in configs]
    return [([i for i, k in enumerate(keys) if k == key], key) for key in dict.fromkeys(keys)]


def evaluate_members(
    members: list[tuple[str, Path]],
    *,
    checkpoint: str = "final",
    data_dir: str | None = None,
    batch_size: int | None = None,
    mapping: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    """Restore the members' checkpoints (``(name, run folder)`` pairs; ``checkpoint`` "final" or
    "best") and evaluate them on their test split: the members of one architecture and input size
    together, in one compiled call per batch (``model_groups``). One member gives its Table 1 rank
    statistics; members of several architectures make a mixed ensemble (docs/method.md 7).

    Returns ``(logits (M, N, C), labels (N,), class names, info)``; ``info``: what was evaluated
    (data set, models, checkpoint per member, and how far each member's logits are from those its
    training run stored for the same checkpoint)."""
    from tqdm import tqdm

    if not members:
        raise ConfigError("no member to evaluate")
    configs = [runs.read_run_config(path) for _, path in members]
    check_compatible(members, configs)
    config = configs[0]
    if data_dir is not None or num_threads is not None:
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(
                config.data,
                **({"data_dir": data_dir} if data_dir is not None else {}),
                **({"num_threads": num_threads} if num_threads is not None else {}),
            ),
        )
    # Decoded for the largest input size among the members (each group resizes from it).
    largest = max(c.model.input_size for c in configs)
    dataset = runs.open_dataset(
        dataclasses.replace(config, model=dataclasses.replace(config.model, input_size=largest))
    )
    records, variables = [], []
    for (name, path), member_config in zip(members, configs):
        epoch = runs.choose_epoch(path, checkpoint)
        variables.append(runs.restore_variables(path, member_config, epoch))
        records.append(
            {"name": name, "workdir": str(path.resolve()), "epoch": epoch, "model": member_config.model_name}
        )
    devices = jax.local_devices()
    test = dataset.test
    logits, labels, mappings = None, None, set()
    for positions, model_config in model_groups(configs):
        size = batch_size or config.eval_batch_size
        evaluator = compiled(  # one per configuration in a process (a population's reports, a test session)
            ("ensemble-evaluator", model_config, size, tuple(devices), mapping or ensemble.default_mapping()),
            lambda: EnsembleEvaluator(models.network(model_config), size, devices, mapping),
        )
        mappings.add(evaluator.mapping)
        batches = data.eval_batches(test, evaluator.batch_size, model_config.input_size, config.data.num_threads)
        bar = tqdm(
            batches,
            total=-(-len(test) // evaluator.batch_size),
            desc=f"evaluating {len(positions)} {configs[positions[0]].model_name} member(s)",
            unit="batch",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        stacked = train.replicate(fga.stack(jax.device_get([variables[i] for i in positions])), devices)
        group_logits, group_labels = evaluator(stacked, bar)
        if logits is None:
            logits = np.zeros((len(members), *group_logits.shape[1:]), np.float32)
            labels = group_labels
        logits[positions] = group_logits
    # The members' own evaluation of the same checkpoint, from training: same test split?
    for i, (record, (name, path)) in enumerate(zip(records, members)):
        stored = path / "test_logits" / f"epoch_{record['epoch']:04d}.npz"
        if stored.exists():
            saved = runs.read_arrays(stored, STORED_LOGITS, "the test logits")
            if not np.array_equal(saved["labels"], labels):
                raise DataError(
                    f"member {name} was evaluated on another test split during training "
                    f"(the labels in {stored} differ from the data set's)"
                )
            if saved["logits"].shape != logits[i].shape:
                raise WorkdirError(
                    f"the test logits {stored} are {saved['logits'].shape}, not {logits[i].shape} (damaged?)"
                )
            record["stored_logits_max_abs_diff"] = float(np.max(np.abs(saved["logits"] - logits[i])))
    names = list(dict.fromkeys(c.model_name for c in configs))
    info = {
        "dataset": config.data.dataset,
        "model": names[0] if len(names) == 1 else "mixed: " + ", ".join(names),
        "checkpoint": checkpoint,
        "mapping": ", ".join(sorted(mappings)),
        "members_evaluated": records,
    }
    return logits, labels, dataset.classes, info
