"""What the paper's tables share: the seeds of a table, its refusals of a request (too few
networks, an earlier table's workdir without ``resume``, a real data set without a pre-trained
start), training the networks of one row (one
per seed, a finished run reused only when it is the row's) and the mean ± sd of their accuracies."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from faml_jax import runs, trainer
from faml_jax.config import RunConfig
from faml_jax.errors import ConfigError
from faml_jax.presets import PRETRAINED_DATASETS
from faml_jax.records import config_differences, config_to_json
from faml_jax.trainer import adopt_recorded, complete_run_config, recorded_config

logger = logging.getLogger(__name__)


def row_seeds(base: RunConfig, networks: int) -> list[int]:
    """The seeds of a row's networks: ``base.seed`` and the ones after it."""
    return [base.seed + i for i in range(networks)]


def check_networks(networks: int) -> None:
    """A table's ensembles need at least two networks."""
    if networks < 2:
        raise ConfigError(f"the ensembles need at least 2 networks, got --networks {networks}")


class PretrainedStartsMissing(ConfigError):
    """A table on a real data set whose networks would start from random weights without an
    explicit from-scratch argument (docs/method.md 2, 7: every row of the paper's tables starts
    from a pre-trained network; from random weights a RAF-DB row lands tens of points below it).
    Its message names the library's arguments; a program names its flags with ``worded``."""

    def __init__(self, table: str, dataset: str, start: str, detail: str = ""):
        self.table, self.dataset, self.start, self.detail = table, dataset, start, detail
        super().__init__(self.worded(start, "from_scratch=True"))

    def __reduce__(self):
        return type(self), (self.table, self.dataset, self.start, self.detail)

    def worded(self, start: str, from_scratch: str) -> str:
        """The refusal in one line, ``start`` and ``from_scratch`` as the caller names them."""
        return (
            f"{self.table} on {self.dataset} starts its networks from pre-trained weights, as the paper does (from "
            f"random weights its rows land tens of points below the paper's): give {start}{self.detail}, or pass "
            f"{from_scratch} to train them from random weights knowingly"
        )


def check_pretrained_starts(
    table: str, dataset: str, has_start: bool, from_scratch: bool, start: str, detail: str = ""
) -> None:
    """Refuse ``table`` on a real data set without a pre-trained start (``has_start``) unless
    ``from_scratch`` says that is meant; ``start``: what gives one, in the library's words
    (``detail``: what it holds, in any words)."""
    if dataset in PRETRAINED_DATASETS and not has_start and not from_scratch:
        raise PretrainedStartsMissing(table, dataset, start, detail)


def check_fresh_workdir(workdir: Path, resume: bool, what: str) -> None:
    """A workdir holding anything (``what``: an earlier table's) is continued only with ``resume``."""
    if workdir.exists() and any(workdir.iterdir()) and not resume:
        raise ConfigError(f"workdir {workdir} holds {what}: pass --resume to continue it")


def check_finished_run(run_dir: Path, config: RunConfig, keep_recorded: tuple[str, ...]) -> None:
    """A finished run of an earlier table is reused only if it is this row's run (e.g. not an
    R18+FA run made when R18+FA was the FA stem alone, or trained with WCE)."""
    saved = recorded_config(run_dir)
    config = adopt_recorded(config, saved, keep_recorded)
    diffs = config_differences(
        complete_run_config(saved or {}), config_to_json(config), may_differ=("epochs", "data.num_threads")
    )
    if diffs:
        raise ConfigError(
            f"the finished run in {run_dir} was made with another configuration than this row's: "
            f"{'; '.join(diffs)} (delete it, or use another --workdir)"
        )


def train_networks(
    config: RunConfig,
    seeds: list[int],
    folder: Path,
    row: str,
    progress: bool = True,
    keep_recorded: tuple[str, ...] = (),
) -> list[tuple[Path, dict]]:
    """Train (or continue, or reuse when finished) one network of ``config`` per seed in
    ``folder/seed<s>``; returns ``(run folder, summary)`` per seed. A finished run made with
    another configuration than the row's is refused (``check_finished_run``)."""
    trained = []
    for seed in seeds:
        run_dir = folder / f"seed{seed}"
        summary_path = run_dir / "summary.json"
        summary = runs.read_json(summary_path, "the summary") if summary_path.exists() else None
        if summary is not None:
            check_finished_run(run_dir, dataclasses.replace(config, seed=seed), keep_recorded)
        if summary is None or summary["epochs"] < config.epochs:
            logger.info(f"== {row}, seed {seed} ({run_dir})")
            summary = trainer.fit(
                dataclasses.replace(config, seed=seed),
                run_dir,
                resume=trainer.has_run(run_dir),  # a fresh start is not a resume that found nothing
                progress=progress,
                keep_recorded=keep_recorded,
            )
        trained.append((run_dir, summary))
    return trained


def mean_sd(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
