"""Ensemble reports (docs/method.md 4): the files of ``ensemble.analyse`` of the members' test logits
(``evaluate.evaluate_members``), their decisions combined by T1V, NOI and T2V; what
``python -m experiments.ensemble`` runs.

    >>> from faml_jax import report, runs
    >>> result = report.ensemble_report(runs.population_members("runs/evo"), "runs/evo/ensemble")

The report folder holds report.md, report.json, members.csv, sizes.csv, ranks.csv, the
row-normalised confusion matrices (csv, and png, pdf or svg) of the best member and of T2V, and logits.npz;
it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from faml_jax import ensemble
from faml_jax.config import EnsembleConfig
from faml_jax.ensemble import analyse
from faml_jax.evaluate import evaluate_members
from faml_jax.versions import stamped
from faml_jax.workdir import WorkdirLock, check_replaceable, recognise_listed
from faml_jax.writer import folder_written_whole, to_json

logger = logging.getLogger(__name__)

STRATEGY_NAMES = {
    "t1v": "T1V (majority vote)",
    "noi": "NOI (summed softmax, Eq. 13)",
    "t2v": "T2V (top-two voting, Eq. 12)",
}


# ---------------------------------------------------------------------------------------------
# The report files


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


# The report's numbers are fractions (report.json, the CSV files); people read percentages
# (report.md, the printed table, the figures).


def shown(fraction: float, percent: bool) -> str:
    """A fraction as a table cell: a percentage with two decimals, or the fraction with four."""
    return f"{100 * fraction:.2f}" if percent else f"{fraction:.4f}"


def member_rows(report: dict, percent: bool = True) -> list[list]:
    rows = [
        [m["name"], shown(m["accuracy"], percent), shown(m["mean_class_accuracy"], percent)] for m in report["members"]
    ]
    rows.append([f"mean of {len(report['members'])} members", shown(report["mean_member_accuracy"], percent), ""])
    for s in ensemble.STRATEGIES:
        e = report["ensemble"][s]
        rows.append([STRATEGY_NAMES[s], shown(e["accuracy"], percent), shown(e["mean_class_accuracy"], percent)])
    return rows


def size_rows(report: dict, percent: bool = True) -> list[list]:
    return [[s["size"], s["added"], *(shown(s[k], percent) for k in ensemble.STRATEGIES)] for s in report["sizes"]]


def rank_rows(report: dict, percent: bool = True) -> list[list]:
    r = report["ranks"]
    rows = [
        [n, *(shown(v, percent) for v in row), shown(r["second_among_wrong"][n], percent)]
        for n, row in r["members"].items()
    ]
    rows.append(["mean", *(shown(v, percent) for v in r["mean"]), ""])
    return rows


def write_confusion(path: Path, counts: np.ndarray, classes: list[str], what: str, model: str, format: str) -> None:
    """A confusion matrix (``figures.confusion_figure``: % of each true class, its count, the
    accuracy in the title) as a ``format`` file (png, pdf or svg)."""
    from faml_jax import figures

    path.write_bytes(figures.save(figures.confusion_figure(counts, classes, what, model), format))


def markdown(report: dict, info: dict, figure_format: str = "png") -> str:
    classes = report["classes"]
    c = len(classes)
    best = report["best_member"]
    lines = [
        "# Ensemble report\n",
        f"Data set `{info['dataset']}`, test split: {report['num_test_images']} images, {c} classes. "
        f"{len(report['members'])} member(s) of model `{info['model']}`, each at its {info['checkpoint']} "
        f"checkpoint{' (selected on the test split: optimistic)' if info['checkpoint'] == 'best' else ''}. "
        f"T2V: alpha = {report['alpha']}, beta = {report['beta']}; ties broken by NOI, then the lowest class.\n",
        f"Command: `{info['command']}`\n",
        "## Members and ensemble decisions (paper Table 6)\n",
        "Accuracy and mean class accuracy on the test split, %.\n",
        table(["", "accuracy", "mean class accuracy"], member_rows(report)),
        f"Best single member: {best}.\n",
        "## Accuracy against ensemble size (paper Table 4)\n",
        f"Members join in {'the order given' if report['order'] == 'given' else 'order of single accuracy, best first (chosen on the test split)'}; accuracy %.\n",
        table(["size", "member added", "T1V", "NOI", "T2V"], size_rows(report))
        if report["sizes"]
        else "One member: no ensemble (its T1V, NOI and T2V are its own decisions).\n",
        "## Rank of the true label (paper Table 1)\n",
        "Share (%) of test images whose true label each member ranks 1st, 2nd, ...; the last column is "
        "the share ranked 2nd among the images the member gets wrong.\n",
        table(["member", *(ordinal(k) for k in range(1, c + 1)), "2nd among wrong"], rank_rows(report)),
        "## Confusion matrices (row-normalised, %)\n",
        f"Best single member ({best}): `confusion_best_member.csv`\n\n"
        f"![best member](confusion_best_member.{figure_format})\n",
        f"T2V ensemble: `confusion_t2v.csv`\n\n![T2V](confusion_t2v.{figure_format})\n",
    ]
    return "\n".join(lines)


REPORT_KIND = "faml_jax.ensemble_report"  # report.json's "kind": how a report folder is recognised
REPORT_FILES = frozenset(
    {
        "report.json",
        "report.md",
        "members.csv",
        "sizes.csv",
        "ranks.csv",
        "logits.npz",
        *(f"confusion_{w}.{e}" for w in ("best_member", "t2v") for e in ("csv", "png", "pdf", "svg")),
    }
)


def recognise_report(folder: Path) -> str | None:
    """None for a report folder ``write_report`` wrote, else what in ``folder`` is not one."""
    return recognise_listed(folder, "report.json", REPORT_KIND, lambda index: REPORT_FILES)


def write_report(
    out: Path, report: dict, info: dict, logits: np.ndarray, labels: np.ndarray, figure_format: str = "png"
) -> None:
    """Write the report folder under a temporary name, then rename it to ``out`` (replacing an
    earlier report only once the new one is complete); the confusion matrices as
    ``figure_format`` files (png, pdf or svg)."""
    with folder_written_whole(out) as tmp:
        classes = report["classes"]
        (tmp / "report.json").write_text(to_json(stamped({"kind": REPORT_KIND, **info, **report})) + "\n")
        (tmp / "report.md").write_text(markdown(report, info, figure_format))
        (tmp / "members.csv").write_text(
            csv_text(["", "accuracy", "mean_class_accuracy"], member_rows(report, percent=False))
        )
        (tmp / "sizes.csv").write_text(
            csv_text(["size", "member_added", *ensemble.STRATEGIES], size_rows(report, percent=False))
        )
        (tmp / "ranks.csv").write_text(
            csv_text(
                ["member", *(ordinal(k) for k in range(1, len(classes) + 1)), "second_among_wrong"],
                rank_rows(report, percent=False),
            )
        )
        titles = {
            "best_member": f"best member {report['best_member']}",
            "t2v": f"T2V of {len(report['members'])} networks",
        }
        model = f"{info['model']} on {info['dataset']}"
        for which, title in titles.items():
            matrix = np.asarray(report["confusion_rates"][which])
            (tmp / f"confusion_{which}.csv").write_text(
                csv_text(
                    ["true \\ predicted", *classes],
                    [[name, *(f"{v:.4f}" for v in row)] for name, row in zip(classes, matrix)],
                )
            )
            counts = np.asarray(report["confusion_counts"][which])
            write_confusion(tmp / f"confusion_{which}.{figure_format}", counts, classes, title, model, figure_format)
        np.savez(tmp / "logits.npz", logits=logits, labels=labels)


# ---------------------------------------------------------------------------------------------
# Evaluating members and writing the report


def ensemble_report(
    members: list[tuple[str, Path]],
    out: str | os.PathLike,
    config: EnsembleConfig = EnsembleConfig(),
    *,
    overwrite: bool = False,
    data_dir: str | None = None,
    batch_size: int | None = None,
    mapping: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    command: str = "",
    figure_format: str = "png",
) -> dict:
    """Evaluate ``members`` ((name, workdir) pairs) as an ensemble (``config``: T2V's weights,
    which checkpoint, the order of the size table) and write the report folder ``out``; returns
    the report (also in ``out/report.json``). ``data_dir``, ``num_threads``: where the data set is
    now and how it is read, if not as in training; ``batch_size``, ``mapping``: the evaluation;
    ``figure_format``: the confusion matrices' files (png, pdf or svg)."""
    out = Path(out).absolute()
    # The report folder is replaced whole (``write_report``): its lock lies beside it.
    with WorkdirLock(out.parent, f"report folder {out.name} in", name=f".{out.name}.lock"):
        check_replaceable(out, "report", recognise_report, overwrite)
        checkpoint, order, alpha, beta = config.checkpoint, config.order, config.alpha, config.beta
        logits, labels, classes, info = evaluate_members(
            members,
            checkpoint=checkpoint,
            data_dir=data_dir,
            batch_size=batch_size,
            mapping=mapping,
            num_threads=num_threads,
            progress=progress,
        )
        names = [name for name, _ in members]
        report = analyse(logits, labels, names, classes, order=order, alpha=alpha, beta=beta)
        info["command"] = command
        write_report(out, report, info, logits, labels, figure_format)
    logger.info(table(["", "accuracy %", "mean class accuracy %"], member_rows(report)).rstrip())
    if report["sizes"]:  # (one member: no ensemble sizes)
        logger.info(
            f"ensemble size ({'given order' if order == 'given' else 'best first'}): "
            + "; ".join(f"{s['size']}: T2V {100 * s['t2v']:.2f} %" for s in report["sizes"])
        )
    logger.info(f"report written to {out}")
    return {**info, **report}
