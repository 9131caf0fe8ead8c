"""An evolution's lineage, as population.json records it: ``MemberRecord`` (one network: where
it comes from, where it is, how it trained), the networks given with ``--members`` checked and
read into it, and the table of every network that ``evolution.evolve`` logs at its end. Read
back by ``runs.read_lineage`` (its shape) and ``MemberRecord.from_json`` (its fields).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from faml_jax.config import RunConfig
from faml_jax.errors import ConfigError, WorkdirError
from faml_jax.records import config_to_json, structural_differences
from faml_jax.runs import read_json, read_run_config, refuse_repeated

# ---------------------------------------------------------------------------------------------
# A network's record in the lineage (population.json's "members")


@dataclasses.dataclass
class MemberRecord:
    """One network of an evolution as population.json records it: where it comes from, where it
    is, and (``status`` "trained") its final training loss and accuracies (``trained``); a child
    also its parents, their selection probabilities and its accuracy as fused."""

    generation: int
    origin: str  # "initial", "given", "child" or "new"
    workdir: str  # relative: inside the evolution's workdir
    seed: int | None  # None: a given network
    status: str = "planned"
    parents: list[str] | None = None
    parent_probs: list[float] | None = None
    epochs: int | None = None
    train_loss: float | None = None  # the sampled ML loss of the last epoch
    train_ce: float | None = None  # the reference loss: the fitness (docs/method.md 2.4 [choice])
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    well_trained: bool | None = None
    switch_epoch: int | None = None
    initial_test_accuracy: float | None = None  # the starting weights' (a child's: as trained from)
    fused_test_accuracy: float | None = None
    fused_recomputed_bn_test_accuracy: float | None = None
    recompute_bn_batches: int | None = None
    parent_test_accuracies: list[float] | None = None
    # A given network (--members) is identified by its final checkpoint, not by its path
    # (``runs.check_network``): the epoch and content digest the evolution used.
    checkpoint_epoch: int | None = None
    checkpoint_digest: str | None = None

    ALWAYS = ("generation", "origin", "workdir", "seed", "status")
    WHEN_TRAINED = (
        "epochs",
        "train_loss",
        "train_ce",
        "train_accuracy",
        "test_accuracy",
        "well_trained",
        "switch_epoch",
    )

    def trained(self, summary: dict) -> None:
        """Record a finished network from its summary (``Member.summary``, summary.json)."""
        self.status = "trained"
        self.epochs = summary["epochs"]
        self.train_loss = summary["final_train_loss"]
        self.train_ce = summary["final_train_ce"]
        self.train_accuracy = summary["final_train_accuracy"]
        self.test_accuracy = summary["final_test_accuracy"]
        self.well_trained = summary["well_trained"]
        self.switch_epoch = summary["switch_epoch"]
        self.initial_test_accuracy = summary.get("initial_test_accuracy")

    def to_json(self) -> dict:
        """Its population.json entry: unset fields left out (a trained network's results always
        written)."""
        keep = self.ALWAYS + (self.WHEN_TRAINED if self.status == "trained" else ())
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k in keep}

    @classmethod
    def from_json(cls, name: str, entry: dict, where: str) -> MemberRecord:
        """The record of network ``name`` in ``where`` (population.json, its shape checked by
        ``runs.read_lineage``): every field of the type written, else a ``WorkdirError``."""
        unknown = sorted(set(entry) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise WorkdirError(f"{where}: network {name} has fields this version does not know: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        for field in cls.ALWAYS:
            if field not in entry:
                raise WorkdirError(f"{where}: network {name} has no {field}")
        for field, value in entry.items():
            if not of_type(hints[field], value):
                raise WorkdirError(f"{where}: network {name}'s {field} is {str(value)[:40]!r}, not {hints[field]}")
        return cls(**entry)


def of_type(tp, value) -> bool:
    """Whether a JSON value is of a record field's type (``int``, ``float``, ``str``, ``bool``,
    ``list[...]``, ``... | None``)."""
    if isinstance(tp, types.UnionType):
        return any(of_type(t, value) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(of_type(typing.get_args(tp)[0], v) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# What a given network's summary.json must hold, as the MemberRecord fields they become.
SUMMARY_FIELDS = {
    "epochs": "epochs",
    "final_train_loss": "train_loss",
    "final_train_ce": "train_ce",
    "final_train_accuracy": "train_accuracy",
    "final_test_accuracy": "test_accuracy",
    "well_trained": "well_trained",
    "switch_epoch": "switch_epoch",
}


def given_summary(workdir: Path) -> dict:
    """The summary.json of a network given with --members, each value the lineage records from
    it of the type recorded (else a one-line ``WorkdirError`` naming the file and the field)."""
    path = Path(workdir) / "summary.json"
    summary = read_json(path, "the summary of a given network")
    hints = typing.get_type_hints(MemberRecord)
    for key, field in {**SUMMARY_FIELDS, "initial_test_accuracy": "initial_test_accuracy"}.items():
        if key not in summary and key in SUMMARY_FIELDS:
            raise WorkdirError(f"{path} has no {key} (expected a finished experiments.train workdir)")
        if key in summary and not of_type(hints[field], summary[key]):
            raise WorkdirError(f"{path}: {key} is {str(summary[key])[:40]!r}, not {hints[field]}")
    if not isinstance(summary["final_train_ce"], (int, float)):
        raise WorkdirError(f"{path}: final_train_ce is missing, and it is the network's fitness")
    return summary


# ---------------------------------------------------------------------------------------------
# Networks given with --members


def check_given_members(given: list[Path], population: int, config: RunConfig) -> None:
    """The networks given with --members: as many as the population, each once, each a
    finished run of the same model and data (``check_given_member``)."""
    refuse_repeated(given, "--members names a network twice")
    if given and len(given) != population:
        raise ConfigError(f"--members names {len(given)} networks but the population is {population}")
    for path in given:
        check_given_member(path, config)


def check_given_member(workdir: Path, config: RunConfig) -> None:
    """A network passed with --members must be a finished run of the same model and data."""
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        if not (workdir / name).exists():
            raise WorkdirError(f"--members {workdir}: no {name} (expected a finished experiments.train workdir)")
    summary = read_json(workdir / "summary.json", "the summary of a given network")
    if summary.get("finished") is False:  # stopped by a signal or stop_after
        raise WorkdirError(
            f"--members {workdir} stopped at epoch {summary['epochs']} of {summary['planned_epochs']}: "
            "finish it first (python -m experiments.train --resume)"
        )
    saved = config_to_json(read_run_config(workdir))
    current = config_to_json(config)
    diffs = structural_differences(saved, current)
    if diffs:
        raise ConfigError(f"--members {workdir} was trained with another configuration: {'; '.join(diffs)}")


# ---------------------------------------------------------------------------------------------
# The table of an evolution's networks


def lineage_table(members: dict[str, MemberRecord]) -> list[str]:
    """The lines of a table of every trained network: origin, parents, epochs, whether well
    trained, its fitness (train CE), its accuracy as fused and as trained."""
    rows = [("name", "origin", "parents", "epochs", "well trained", "train CE", "fused acc", "test acc")]
    for name, r in members.items():
        if r.status != "trained":
            continue
        rows.append(
            (
                name,
                r.origin,
                "+".join(r.parents or []) or "-",
                str(r.epochs),
                {True: "yes", False: "no", None: "?"}[r.well_trained],
                f"{r.train_ce:.4f}",
                f"{r.fused_test_accuracy:.4f}" if r.fused_test_accuracy is not None else "-",
                f"{r.test_accuracy:.4f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
