"""Ensemble reports (METHOD 4): the members' checkpoints evaluated together, their decisions
combined by T1V, NOI and T2V, and the report files; what ``python -m experiments.ensemble`` runs.

    >>> from faml_jax import evolution, report
    >>> result = report.ensemble_report(evolution.population_members(Path("runs/evo")), "runs/evo/ensemble")

The report folder holds report.md, report.json, members.csv, sizes.csv, ranks.csv, the
row-normalised confusion matrices (csv and png) of the best member and of T2V, and logits.npz;
it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from faml_jax import data, ensemble, fga, train
from faml_jax.config import EnsembleConfig
from faml_jax.errors import ConfigError, DataError, WorkdirError
from faml_jax.evaluate import EnsembleEvaluator, classification_metrics
from faml_jax.trainer import (
    Setup, checkpoint_epochs, config_to_json, final_variables, read_run_config, structural_differences,
)

STRATEGY_NAMES = {"t1v": "T1V (majority vote)", "noi": "NOI (summed softmax, Eq. 13)", "t2v": "T2V (top-two voting, Eq. 12)"}


# ---------------------------------------------------------------------------------------------
# Which networks


def named_members(paths: list[Path]) -> list[tuple[str, Path]]:
    """(name, workdir) of workdirs given on the command line: named by folder (by path when two
    folders share a name)."""
    resolved = [p.resolve() for p in paths]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise ConfigError(f"a member is given twice: {', '.join(duplicates)}")
    names = [p.name for p in paths]
    return [(p.name if names.count(p.name) == 1 else str(p), p) for p in paths]


def member_epoch(workdir: Path, which: str) -> int:
    """The checkpoint to evaluate: the latest ("final"), or ("best") the kept checkpoint with the
    highest test accuracy in the member's metrics.jsonl (the earliest of equals)."""
    epochs = checkpoint_epochs(workdir)
    if not epochs:
        raise WorkdirError(f"no checkpoint in {workdir / 'checkpoints'}")
    if which == "final":
        return max(epochs)
    path = workdir / "metrics.jsonl"
    accuracy = {h["epoch"]: h["test_accuracy"] for h in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    ranked = [e for e in epochs if e in accuracy]
    if not ranked:
        raise WorkdirError(f"{path} has no test accuracy for the checkpoints {sorted(epochs)}")
    return max(ranked, key=lambda e: (accuracy[e], -e))


def check_compatible(members: list[tuple[str, Path]], configs: list) -> None:
    first = config_to_json(configs[0])
    for (name, _), config in zip(members[1:], configs[1:]):
        diffs = structural_differences(first, config_to_json(config), labels=(f"in {members[0][0]}", f"in {name}"))
        if diffs:
            raise ConfigError(f"member {name} differs from {members[0][0]} in: {'; '.join(diffs)}")


# ---------------------------------------------------------------------------------------------
# The numbers (pure: logits in, report out)


def percent(x: float) -> float:
    return round(100.0 * float(x), 2)


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Confusion counts -> % of each true class (rows without samples stay 0)."""
    confusion = np.asarray(confusion, np.float64)
    support = confusion.sum(axis=1, keepdims=True)
    return np.divide(100.0 * confusion, support, out=np.zeros_like(confusion), where=support > 0)


def decision_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    return classification_metrics(np.eye(num_classes)[np.asarray(predictions)], labels)


def analyse(logits: np.ndarray, labels: np.ndarray, names: list[str], classes: tuple[str, ...], *,
            order: str = "given", alpha: float = ensemble.ALPHA, beta: float = ensemble.BETA) -> dict:
    """Everything the report shows, from the members' test logits (M, N, C) and the labels (N,).

    ``order``: the order in which members join for the ensemble-size table: "given" (as listed)
    or "accuracy" (best single member first; chosen on the test split)."""
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels, np.int32)
    m, _, c = logits.shape
    if m < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {m}")
    singles = [classification_metrics(logits[i], labels) for i in range(m)]
    best = int(np.argmax([s["accuracy"] for s in singles]))  # first of equals

    def decide(subset: np.ndarray) -> dict:
        return {s: decision_metrics(np.asarray(ensemble.predict(subset, s, alpha, beta)), labels, c)
                for s in ensemble.STRATEGIES}

    if order == "given":
        sequence = list(range(m))
    elif order == "accuracy":
        sequence = sorted(range(m), key=lambda i: (-singles[i]["accuracy"], i))
    else:
        raise ValueError(f"unknown order {order!r}; expected 'given' or 'accuracy'")
    sizes = []
    for k in range(2, m + 1):
        decisions = decide(logits if k == m else logits[sequence[:k]])  # at k = m: the whole ensemble
        sizes.append({"size": k, "added": names[sequence[k - 1]],
                      **{s: percent(decisions[s]["accuracy"]) for s in ensemble.STRATEGIES}})
    ranks = np.asarray(ensemble.rank_distribution(logits, labels), np.float64)
    wrong = 1.0 - ranks[:, 0]
    second_of_wrong = np.divide(ranks[:, 1], wrong, out=np.zeros(m), where=wrong > 0)
    return {
        "num_test_images": int(len(labels)),
        "classes": list(classes),
        "alpha": alpha,
        "beta": beta,
        "members": [{"name": n, "accuracy": percent(s["accuracy"]),
                     "mean_class_accuracy": percent(s["mean_class_accuracy"])} for n, s in zip(names, singles)],
        "best_member": names[best],
        "mean_member_accuracy": percent(np.mean([s["accuracy"] for s in singles])),
        "ensemble": {s: {"accuracy": percent(d["accuracy"]), "mean_class_accuracy": percent(d["mean_class_accuracy"])}
                     for s, d in decisions.items()},
        "order": order,
        "sizes": sizes,
        "ranks": {
            "members": {n: [round(float(r), 4) for r in row] for n, row in zip(names, ranks)},
            "mean": [round(float(r), 4) for r in ranks.mean(axis=0)],
            "second_among_wrong": {n: round(float(v), 4) for n, v in zip(names, second_of_wrong)},
        },
        "confusion_percent": {
            "best_member": row_normalised(singles[best]["confusion"]).round(2).tolist(),
            "t2v": row_normalised(decisions["t2v"]["confusion"]).round(2).tolist(),
        },
        "confusion_counts": {"best_member": singles[best]["confusion"], "t2v": decisions["t2v"]["confusion"]},
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


def member_rows(report: dict) -> list[list]:
    rows = [[m["name"], f"{m['accuracy']:.2f}", f"{m['mean_class_accuracy']:.2f}"] for m in report["members"]]
    rows.append([f"mean of {len(report['members'])} members", f"{report['mean_member_accuracy']:.2f}", ""])
    for s in ensemble.STRATEGIES:
        e = report["ensemble"][s]
        rows.append([STRATEGY_NAMES[s], f"{e['accuracy']:.2f}", f"{e['mean_class_accuracy']:.2f}"])
    return rows


def size_rows(report: dict) -> list[list]:
    return [[s["size"], s["added"], *(f"{s[k]:.2f}" for k in ensemble.STRATEGIES)] for s in report["sizes"]]


def rank_rows(report: dict) -> list[list]:
    r = report["ranks"]
    rows = [[n, *(f"{100 * v:.2f}" for v in row), f"{100 * r['second_among_wrong'][n]:.2f}"]
            for n, row in r["members"].items()]
    rows.append(["mean", *(f"{100 * v:.2f}" for v in r["mean"]), ""])
    return rows


def confusion_png(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    """A row-normalised confusion matrix (%) as a PNG image, with its values printed."""
    from matplotlib.figure import Figure

    c = len(classes)
    fig = Figure(figsize=(1.0 + 0.8 * c, 0.6 + 0.8 * c), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > 60 else "black")
    ax.set_xticks(range(c), classes, rotation=45, ha="right")
    ax.set_yticks(range(c), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="% of the true class")
    fig.savefig(path)


def markdown(report: dict, info: dict) -> str:
    classes = report["classes"]
    c = len(classes)
    best = report["best_member"]
    lines = [
        "# Ensemble report\n",
        f"Data set `{info['dataset']}`, test split: {report['num_test_images']} images, {c} classes. "
        f"{len(report['members'])} members of model `{info['model']}`, each at its {info['checkpoint']} "
        f"checkpoint{' (selected on the test split: optimistic)' if info['checkpoint'] == 'best' else ''}. "
        f"T2V: alpha = {report['alpha']}, beta = {report['beta']}; ties broken by NOI, then the lowest class.\n",
        f"Command: `{info['command']}`\n",
        "## Members and ensemble decisions (paper Table 6)\n",
        "Accuracy and mean class accuracy on the test split, %.\n",
        table(["", "accuracy", "mean class accuracy"], member_rows(report)),
        f"Best single member: {best}.\n",
        "## Accuracy against ensemble size (paper Table 4)\n",
        f"Members join in {'the order given' if report['order'] == 'given' else 'order of single accuracy, best first (chosen on the test split)'}; accuracy %.\n",
        table(["size", "member added", "T1V", "NOI", "T2V"], size_rows(report)),
        "## Rank of the true label (paper Table 1)\n",
        "Share (%) of test images whose true label each member ranks 1st, 2nd, ...; the last column is "
        "the share ranked 2nd among the images the member gets wrong.\n",
        table(["member", *(ordinal(k) for k in range(1, c + 1)), "2nd among wrong"], rank_rows(report)),
        "## Confusion matrices (row-normalised, %)\n",
        f"Best single member ({best}): `confusion_best_member.csv`\n\n![best member](confusion_best_member.png)\n",
        "T2V ensemble: `confusion_t2v.csv`\n\n![T2V](confusion_t2v.png)\n",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict, info: dict, logits: np.ndarray, labels: np.ndarray) -> None:
    """Write the report folder under a temporary name, then rename it to ``out`` (replacing an
    earlier report only once the new one is complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        classes = report["classes"]
        (tmp / "report.json").write_text(json.dumps({**info, **report}, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report, info))
        (tmp / "members.csv").write_text(csv_text(["", "accuracy", "mean_class_accuracy"], member_rows(report)))
        (tmp / "sizes.csv").write_text(csv_text(["size", "member_added", *ensemble.STRATEGIES], size_rows(report)))
        (tmp / "ranks.csv").write_text(csv_text(
            ["member", *(ordinal(k) for k in range(1, len(classes) + 1)), "second_among_wrong"], rank_rows(report)))
        titles = {"best_member": f"best member ({report['best_member']})", "t2v": "T2V ensemble"}
        for which, title in titles.items():
            matrix = np.asarray(report["confusion_percent"][which])
            (tmp / f"confusion_{which}.csv").write_text(csv_text(
                ["true \\ predicted", *classes], [[name, *(f"{v:.2f}" for v in row)] for name, row in zip(classes, matrix)]))
            confusion_png(tmp / f"confusion_{which}.png", matrix, classes, f"{title}, % of true class")
        np.savez(tmp / "logits.npz", logits=logits, labels=labels)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "report")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------
# Evaluating members and writing the report


def evaluate(members: list[tuple[str, Path]], *, checkpoint: str = "final", data_dir: str | None = None,
             batch_size: int | None = None, mapping: str | None = None, num_threads: int | None = None,
             progress: bool = True, log=print) -> tuple[np.ndarray, np.ndarray, dict, list[dict]]:
    """Restore the members' checkpoints and evaluate them together on the test split.

    Returns ``(logits (M, N, C), labels (N,), setup, info)``: the first member's ``Setup`` and
    what was evaluated (data set, model, checkpoint per member, and how far each member's logits
    are from those its training run stored for the same checkpoint)."""
    from tqdm import tqdm

    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
    configs = [read_run_config(path) for _, path in members]
    check_compatible(members, configs)
    config = configs[0]
    if data_dir is not None or num_threads is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, **({"data_dir": data_dir} if data_dir is not None else {}),
            **({"num_threads": num_threads} if num_threads is not None else {})))
    setup = Setup(config, log)
    records, variables = [], []
    for name, path in members:
        epoch = member_epoch(path, checkpoint)
        variables.append(final_variables(setup, path, epoch))
        records.append({"name": name, "workdir": str(path.resolve()), "epoch": epoch})
    evaluator = EnsembleEvaluator(setup.model, batch_size or config.eval_batch_size, setup.devices, mapping)
    test = setup.dataset.test
    batches = data.eval_batches(test, evaluator.batch_size, config.model.input_size, config.data.num_threads)
    bar = tqdm(batches, total=-(-len(test) // evaluator.batch_size), desc=f"evaluating {len(members)} members",
               unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    logits, labels = evaluator(train.replicate(fga.stack(jax.device_get(variables)), setup.devices), bar)
    # The members' own evaluation of the same checkpoint, from training: same test split?
    for i, (record, (name, path)) in enumerate(zip(records, members)):
        stored = path / "test_logits" / f"epoch_{record['epoch']:04d}.npz"
        if stored.exists():
            with np.load(stored) as saved:
                if not np.array_equal(saved["labels"], labels):
                    raise DataError(f"member {name} was evaluated on another test split during training "
                                     f"(the labels in {stored} differ from the data set's)")
                record["stored_logits_max_abs_diff"] = float(np.max(np.abs(saved["logits"] - logits[i])))
    info = {"dataset": config.data.dataset, "model": config.model_name, "checkpoint": checkpoint,
            "mapping": evaluator.mapping, "members_evaluated": records}
    return logits, labels, setup, info


def ensemble_report(members: list[tuple[str, Path]], out: str | os.PathLike, config: EnsembleConfig = EnsembleConfig(),
                    *, overwrite: bool = False, data_dir: str | None = None, batch_size: int | None = None,
                    mapping: str | None = None, num_threads: int | None = None, progress: bool = True,
                    command: str = "", log=print) -> dict:
    """Evaluate ``members`` ((name, workdir) pairs) as an ensemble (``config``: T2V's weights,
    which checkpoint, the order of the size table) and write the report folder ``out``; returns
    the report (also in ``out/report.json``). ``data_dir``, ``num_threads``: where the data set is
    now and how it is read, if not as in training; ``batch_size``, ``mapping``: the evaluation."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise WorkdirError(f"{out} already holds a report: pass --overwrite to replace it")
    checkpoint, order, alpha, beta = config.checkpoint, config.order, config.alpha, config.beta
    logits, labels, setup, info = evaluate(members, checkpoint=checkpoint, data_dir=data_dir, batch_size=batch_size,
                                           mapping=mapping, num_threads=num_threads, progress=progress, log=log)
    names = [name for name, _ in members]
    report = analyse(logits, labels, names, setup.dataset.classes, order=order, alpha=alpha, beta=beta)
    info["command"] = command
    write_report(out, report, info, logits, labels)
    log(table(["", "accuracy %", "mean class accuracy %"], member_rows(report)).rstrip())
    log(f"ensemble size ({'given order' if order == 'given' else 'best first'}): " + "; ".join(
        f"{s['size']}: T2V {s['t2v']:.2f}" for s in report["sizes"]))
    log(f"report written to {out}")
    return {**info, **report}
