"""The paper's experiments as library calls: Table 2 (the ablation, ``table2``) and Table 6 with
Fig. 7 (T2V on other basic networks, ``table6``), each with its rows, recipes, the paper's
published numbers beside ours, and the table and figure writers. ``experiments.ablation`` and
``experiments.architectures`` only parse flags and call these; a notebook can run either table
with one call:

    >>> from faml_jax import config, paper
    >>> result = paper.table6(config.preset("synthetic"), networks=3, workdir="runs/table6")

Every run has its own folder under the workdir, so an interrupted table continues with
``resume=True`` (finished runs are kept, and refused when they were made with another
configuration than their row's).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np

from faml_jax import evolution, report, runs, trainer
from faml_jax.config import FGAConfig, LossConfig, RunConfig
from faml_jax.errors import ConfigError
from faml_jax.presets import preset, with_preset
from faml_jax.records import config_differences, config_to_json
from faml_jax.trainer import adopt_recorded, complete_run_config, recorded_config
from faml_jax.writer import write_atomic, write_json

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Table 2: the ablation (docs/method.md 2, 5)

VARIANTS = {  # row name: model preset
    "R18": "r18",
    "R18+FA": "r18_fa",
    "R18+FAML": "r18_faml",
}
ROWS = ("R18", "R18+FA", "R18+FAML", "R18+FAML-FGA", "R18+FAML-T2V", "R18+FAML-FGA-T2V")
# docs/method.md 5 / paper Table 2 (accuracy %); the FGA-T2V row is the paper's 6-network ensemble.
PAPER = {
    "rafdb": {
        "R18": 88.62,
        "R18+FA": 88.72,
        "R18+FAML": 90.32,
        "R18+FAML-FGA": 90.51,
        "R18+FAML-T2V": 91.46,
        "R18+FAML-FGA-T2V": 91.59,
    },
    "affectnet8": {
        "R18": 52.16,
        "R18+FA": 52.54,
        "R18+FAML": 62.17,
        "R18+FAML-FGA": 62.29,
        "R18+FAML-T2V": 63.04,
        "R18+FAML-FGA-T2V": 63.27,
    },
    "affectnet7": {
        "R18": 58.17,
        "R18+FA": 59.77,
        "R18+FAML": 65.83,
        "R18+FAML-FGA": 65.89,
        "R18+FAML-T2V": 66.51,
        "R18+FAML-FGA-T2V": 66.63,
    },
}


# Paper section 4 (docs/method.md 5): R18+FAML-FGA-T2V by ensemble size (RAF-DB, AffectNet-8; AffectNet-7
# reports only its 6-network ensemble).
PAPER_ENSEMBLE_SIZES = {
    "rafdb": {2: 90.58, 3: 90.84, 4: 91.30, 5: 91.46, 6: 91.59, 8: 91.75},
    "affectnet8": {2: 62.49, 3: 62.47, 4: 62.64, 5: 62.99, 6: 63.27},
    "affectnet7": {6: 66.63},
}


def paper_accuracy(dataset: str, row: str, networks: int) -> float | None:
    """The paper's number for ``row`` on ``dataset`` as a fraction (it prints percentages); for
    R18+FAML-FGA-T2V the ensemble of ``networks`` networks (None where the paper reports none)."""
    if row == "R18+FAML-FGA-T2V":
        percent = PAPER_ENSEMBLE_SIZES.get(dataset, {}).get(networks)
    else:
        percent = PAPER.get(dataset, {}).get(row)
    return None if percent is None else percent / 100


def variant_config(base: RunConfig, row: str) -> RunConfig:
    """The configuration of one single-network row (docs/method.md 2): ``base`` (an R18+FAML run with the
    preset's ML loss) with the row's network and loss; R18 and R18+FA train with plain CE on every
    data set. ``base``'s attention setting (``--no-attention``) carries over to R18+FA."""
    name = VARIANTS[row]
    loss = base.loss if name == "r18_faml" else LossConfig(kind="ce")
    attention = base.model.attention if name != "r18" else None
    return dataclasses.replace(
        base, model_name=name, model=with_preset(base.model, name, attention=attention), loss=loss
    )


def check_finished_run(run_dir: Path, config: RunConfig, keep_recorded: tuple[str, ...]) -> None:
    """A finished run of an earlier ablation is reused only if it is this row's run (e.g. not an
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
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def single_row(names: list[str], accuracies: list[float], what: str) -> dict:
    """A single-network row: the mean and standard deviation of the networks' test accuracies
    (fractions), the best network and each network's."""
    mean, sd = mean_sd(accuracies)
    best = int(np.argmax(accuracies))
    return {
        "accuracy": mean,
        "sd": sd,
        "best": accuracies[best],
        "best_network": names[best],
        "networks": dict(zip(names, accuracies)),
        "what": what,
    }


def table2(
    base: RunConfig,
    fga: FGAConfig,
    networks: int,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    member_parallel: bool = False,
    progress: bool = True,
    keep_recorded: tuple[str, ...] = (),
) -> dict:
    """Train and combine everything Table 2 needs in ``workdir``; returns the table (also in
    table2.json)."""
    workdir = Path(workdir)
    if networks < 2:
        raise ConfigError(f"the ensembles need at least 2 networks, got --networks {networks}")
    if fga.population != networks:
        raise ConfigError(f"FGA's population ({fga.population}) must be the number of networks ({networks})")
    if workdir.exists() and any(workdir.iterdir()) and not resume:
        raise ConfigError(f"workdir {workdir} holds an earlier ablation: pass --resume to continue it")
    seeds = [base.seed + i for i in range(networks)]
    table: dict[str, dict] = {}
    faml_dirs = []
    for row in VARIANTS:
        config = variant_config(base, row)
        trained = train_networks(config, seeds, workdir / config.model_name, row, progress, keep_recorded)
        names = [f"seed{seed}" for seed in seeds]
        accuracies = [summary["final_test_accuracy"] for _, summary in trained]
        if row == "R18+FAML":
            faml_dirs = [run_dir for run_dir, _ in trained]
        table[row] = single_row(names, accuracies, f"mean ± sd of {networks} networks (seeds {seeds[0]}..{seeds[-1]})")
    logger.info("== R18+FAML-FGA")
    fga_dir = workdir / "fga"
    result = evolution.evolve(
        base,
        fga,
        fga_dir,
        members=faml_dirs,
        resume=True,
        side_by_side=member_parallel,
        progress=progress,
        keep_recorded=keep_recorded,
    )
    lineage = runs.read_lineage(fga_dir)
    survivors = result["survivors"]
    table["R18+FAML-FGA"] = single_row(
        survivors,
        [lineage["members"][n]["test_accuracy"] for n in survivors],
        f"mean ± sd of the final population ({fga.generations} generation(s))",
    )
    reports = {}
    for row, members, folder in [
        ("R18+FAML-T2V", [(f"seed{s}", d) for s, d in zip(seeds, faml_dirs)], "faml-t2v"),
        ("R18+FAML-FGA-T2V", runs.population_members(fga_dir), "faml-fga-t2v"),
    ]:
        logger.info(f"== {row}")
        out = workdir / "reports" / folder
        result_ = report.ensemble_report(
            members, out, overwrite=True, progress=progress, command=f"experiments.ablation ({row})"
        )
        reports[row] = result_
        table[row] = {
            "accuracy": result_["ensemble"]["t2v"]["accuracy"],
            "t1v": result_["ensemble"]["t1v"]["accuracy"],
            "noi": result_["ensemble"]["noi"]["accuracy"],
            "best_member": max(m["accuracy"] for m in result_["members"]),
            "what": f"T2V of {len(members)} networks ({', '.join(n for n, _ in members)})",
            "report": str(out),
        }
    for row in ROWS:
        table[row]["paper"] = paper_accuracy(base.data.dataset, row, networks)
    result = {
        "dataset": base.data.dataset,
        "networks": networks,
        "seeds": seeds,
        "epochs": base.epochs,
        "fga": dataclasses.asdict(fga),
        "rows": table,
    }
    write_json(workdir / "table2.json", result)
    write_atomic(workdir / "table2.md", table2_markdown(result))
    logger.info(table2_markdown(result))
    return result


def table2_markdown(result: dict) -> str:
    dataset = result["dataset"]
    lines = [
        f"# Table 2 on `{dataset}`\n",
        f"{result['networks']} networks per single-network row (seeds {result['seeds'][0]}.."
        f"{result['seeds'][-1]}), at most {result['epochs']} epochs each; test accuracy % (table2.json: "
        "fractions).\n",
        "Rows as the paper defines them (docs/method.md 2): R18 = plain ResNet18, CE; R18+FA = FA stem and "
        "attention blocks, CE; R18+FAML = R18+FA trained with the ML loss.\n",
        f"| model | accuracy | best network | T1V / NOI | paper ({dataset}) | what |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        r = result["rows"][row]
        paper = "-" if r["paper"] is None else f"{100 * r['paper']:.2f}"
        if "sd" in r:
            lines.append(
                f"| {row} | {100 * r['accuracy']:.2f} ± {100 * r['sd']:.2f} | {100 * r['best']:.2f} "
                f"({r['best_network']}) | "
                f"| {paper} | {r['what']} |"
            )
        else:
            label = f"{row} ({result['networks']} nets)" if row.endswith("-T2V") else row
            if row == "R18+FAML-T2V" and r["paper"] is not None:
                paper += " (size not stated)"
            lines.append(
                f"| {label} | {100 * r['accuracy']:.2f} | {100 * r['best_member']:.2f} (best member) | "
                f"{100 * r['t1v']:.2f} / {100 * r['noi']:.2f} | {paper} | {r['what']} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Table 6 and Fig. 7: T2V on other basic networks (docs/method.md 7)

# Row: (model preset, the backbone's folder name under ``backbones``). RI18 is ResNet18 from
# ImageNet weights; R18 and R18+FAML start from the MS-Celeb-1M ResNet18.
TABLE6_ROWS = {
    "RI18": ("r18", "ri18"),
    "ResNet34": ("resnet34", "resnet34"),
    "VGG16": ("vgg16", "vgg16"),
    "DenseNet121": ("densenet121", "densenet121"),
    "R18": ("r18", "msceleb"),
    "R18+FAML": ("r18_faml", "msceleb"),
}
FGA_ROW = "R18+FAML-FGA"  # the final population of an evolution (``fga_workdir``)
# docs/method.md 7 / paper Table 6 (RAF-DB, accuracy %): origin, T2V, T1V, NOI.
PAPER_TABLE6 = {
    "RI18": (85.40, 88.69, 87.94, 88.53),
    "ResNet34": (85.53, 89.24, 88.85, 89.21),
    "VGG16": (83.83, 87.52, 86.67, 87.39),
    "DenseNet121": (86.57, 89.60, 89.11, 89.41),
    "R18": (88.62, 90.42, 89.73, 90.38),
    "R18+FAML": (90.32, 91.46, 90.97, 91.17),
    "R18+FAML-FGA": (90.51, 91.59, 91.19, 91.26),
}
DECISIONS = ("t2v", "t1v", "noi")


def paper_table6(dataset: str, row: str) -> dict | None:
    """The paper's Table 6 numbers of ``row`` as fractions (RAF-DB only; None elsewhere)."""
    numbers = PAPER_TABLE6.get(row) if dataset == "rafdb" else None
    if numbers is None:
        return None
    return dict(zip(("origin", *DECISIONS), (n / 100 for n in numbers)))


def table6_row(logits: np.ndarray, labels: np.ndarray, alpha: float, beta: float) -> dict:
    """One row of Table 6 from its members' test logits (M, N, C): origin (the members' mean
    accuracy, their standard deviation and the first member's), the accuracy of T2V, T1V and
    NOI over all M (Eq. 10-13), and each decision's gain over the mean origin."""
    from faml_jax import ensemble

    logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
    singles = [float(np.mean(np.argmax(member, -1) == labels)) for member in logits]
    mean, sd = mean_sd(singles)
    row = {"origin": mean, "origin_sd": sd, "first": singles[0], "members": singles}
    for strategy in DECISIONS:
        decided = np.asarray(ensemble.predict(logits, strategy, alpha, beta))
        row[strategy] = float(np.mean(decided == labels))
        row[f"{strategy}_gain"] = row[strategy] - mean
    return row


def table6_config(base: RunConfig, row: str, backbones: str | os.PathLike | None) -> RunConfig:
    """The configuration of one Table 6 row: ``base`` (the data set, optimiser, schedule, batch,
    epochs and augmentation: the R18 row's recipe, docs/method.md 7) with the row's network, its
    loss (plain CE; R18+FAML its data set's ML loss) and its backbone (``backbones/<name>``, or a
    random start without ``backbones``)."""
    model, backbone = TABLE6_ROWS[row]
    fresh = preset(base.data.dataset, model, from_scratch=True, data={"data_dir": base.data.data_dir})
    kept = {k: getattr(base.model, k) for k in ("dtype", "matmul_precision", "head_init", "input_size")}
    return dataclasses.replace(
        base,
        model_name=model,
        model=dataclasses.replace(fresh.model, **kept),
        loss=base.loss if model == "r18_faml" else LossConfig(kind="ce"),
        init=str(Path(backbones, backbone).absolute()) if backbones is not None else None,
    )


def table6(
    base: RunConfig,
    workdir: str | os.PathLike,
    *,
    rows: tuple[str, ...] | None = None,
    networks: int = 6,
    backbones: str | os.PathLike | None = None,
    fga_workdir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    keep_recorded: tuple[str, ...] = (),
) -> dict:
    """Train ``networks`` networks per row (seeds ``base.seed`` ..) and write Table 6
    (``table6.md``, ``table6.json``) and Fig. 7 (``fig7.png``) in ``workdir``, with a report
    folder per row (``reports/<row>``: its ensemble and Table 1 ranks). ``rows``: default the
    paper's five basic networks and R18+FAML, and R18+FAML-FGA (the final population of
    ``fga_workdir``, an ``experiments.evolve`` workdir) when given. ``backbones``: a folder holding
    one converted backbone per row (``TABLE6_ROWS``' names: ri18, resnet34, vgg16, densenet121,
    msceleb); without it every network starts from random weights. Rows whose configuration is
    another row's (RI18 and R18 without backbones) share that row's networks. Returns the table."""
    from faml_jax.config import EnsembleConfig

    workdir = Path(workdir)
    rows = tuple(rows or TABLE6_ROWS) + ((FGA_ROW,) if fga_workdir is not None and not rows else ())
    unknown = [r for r in rows if r not in TABLE6_ROWS and r != FGA_ROW]
    if unknown:
        raise ConfigError(
            f"unknown Table 6 row(s) {', '.join(unknown)}; available: {', '.join(TABLE6_ROWS)}, {FGA_ROW}"
        )
    if FGA_ROW in rows and fga_workdir is None:
        raise ConfigError(f"the {FGA_ROW} row needs an evolution's workdir (--fga-workdir)")
    if networks < 2:
        raise ConfigError(f"the ensembles need at least 2 networks, got --networks {networks}")
    if backbones is not None:
        missing = sorted({TABLE6_ROWS[r][1] for r in rows if r in TABLE6_ROWS} - set(os.listdir(backbones)))
        if missing:
            raise ConfigError(
                f"--backbones {backbones} has no {', '.join(missing)}: convert each with python -m tools.convert_torch "
                "(docs/tables.md names them)"
            )
    if workdir.exists() and any(workdir.iterdir()) and not resume:
        raise ConfigError(f"workdir {workdir} holds an earlier Table 6: pass --resume to continue it")
    seeds = [base.seed + i for i in range(networks)]
    ensemble_config = EnsembleConfig()
    result_rows: dict[str, dict] = {}
    trained_by_config: dict[str, tuple[str, list]] = {}
    # Rows of one configuration train in the folder of the first of them in TABLE6_ROWS' order,
    # whatever the order of ``rows`` (so a later call finds them there).
    folders: dict[str, str] = {}
    for row in TABLE6_ROWS:
        folders.setdefault(repr(config_to_json(table6_config(base, row, backbones))), row.lower().replace("+", "_"))
    for row in rows:
        if row == FGA_ROW:
            members = runs.population_members(fga_workdir)
            what = f"the final population of {fga_workdir}"
        else:
            config = table6_config(base, row, backbones)
            key = repr(config_to_json(config))
            if key in trained_by_config:  # the same recipe as an earlier row: its networks
                earlier, trained = trained_by_config[key]
                what = f"the networks of row {earlier} (the same configuration)"
            else:
                trained = train_networks(config, seeds, workdir / folders[key], row, progress, keep_recorded)
                trained_by_config[key] = (row, trained)
                start = "random start" if config.init is None else f"backbone {Path(config.init).name}"
                what = f"{config.model_name}, {start}, seeds {seeds[0]}..{seeds[-1]}"
            members = [(f"seed{seed}", run_dir) for seed, (run_dir, _) in zip(seeds, trained)]
        logger.info(f"== {row}: evaluating {len(members)} networks")
        out = workdir / "reports" / row.lower().replace("+", "_")
        report.ensemble_report(
            members, out, ensemble_config, overwrite=True, progress=progress, command=f"paper.table6 ({row})"
        )
        saved = runs.read_arrays(out / "logits.npz", {"logits": ("f", 3), "labels": ("iu", 1)}, "the report's logits")
        numbers = table6_row(saved["logits"], saved["labels"], ensemble_config.alpha, ensemble_config.beta)
        result_rows[row] = {**numbers, "what": what, "report": str(out), "paper": paper_table6(base.data.dataset, row)}
    result = {
        "dataset": base.data.dataset,
        "networks": networks,
        "seeds": seeds,
        "epochs": base.epochs,
        "rows": result_rows,
    }
    write_json(workdir / "table6.json", result)
    write_atomic(workdir / "table6.md", table6_markdown(result))
    write_atomic(workdir / "fig7.png", payload=figure7(result))
    logger.info(table6_markdown(result))
    return result


def table6_markdown(result: dict) -> str:
    """Table 6 as Markdown: origin (mean ± sd, first member), T2V, T1V, NOI and their gains, the
    paper's numbers beside (percentages)."""
    dataset = result["dataset"]
    lines = [
        f"# Table 6 on `{dataset}`: T2V on other basic networks\n",
        f"{result['networks']} networks per row (seeds {result['seeds'][0]}..{result['seeds'][-1]}), at most "
        f"{result['epochs']} epoch(s) each; test accuracy % (table6.json: fractions). Origin: the networks' mean ± sd "
        "(the first network's); T2V, T1V and NOI: the ensemble of all of them, with the gain over the mean origin. "
        "Fig. 7: fig7.png.\n",
        "| basic network | origin | T2V | T1V | NOI | paper (RAF-DB): origin / T2V / T1V / NOI | what |",
        "|---|---|---|---|---|---|---|",
    ]

    def pct(x):
        return f"{100 * x:.2f}"

    for row, r in result["rows"].items():
        paper = "-" if r["paper"] is None else " / ".join(pct(r["paper"][k]) for k in ("origin", *DECISIONS))
        decisions = " | ".join(f"{pct(r[k])} ({100 * r[k + '_gain']:+.2f})" for k in DECISIONS)
        lines.append(
            f"| {row} | {pct(r['origin'])} ± {pct(r['origin_sd'])} ({pct(r['first'])}) | {decisions} | {paper} | "
            f"{r['what']} |"
        )
    return "\n".join(lines) + "\n"


def figure7(result: dict) -> bytes:
    """Fig. 7 as PNG bytes: per basic network, the gain of T2V, NOI and T1V (points, y) against
    its origin accuracy (%, x), each point labelled with the row."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for strategy, marker, label in (("t2v", "o", "T2V"), ("noi", "s", "NOI"), ("t1v", "^", "T1V")):
        xs = [100 * r["origin"] for r in result["rows"].values()]
        ys = [100 * r[f"{strategy}_gain"] for r in result["rows"].values()]
        ax.scatter(xs, ys, marker=marker, label=label)
    points: dict[tuple, list[str]] = {}  # rows sharing their networks share a point
    for row, r in result["rows"].items():
        points.setdefault((100 * r["origin"], 100 * r["t2v_gain"]), []).append(row)
    for xy, names in points.items():
        ax.annotate(" = ".join(names), xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("origin: mean test accuracy of the basic networks (%)")
    ax.set_ylabel("gain of the ensemble (points)")
    ax.set_title(f"Fig. 7 on {result['dataset']}: {result['networks']} networks per ensemble")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Fig. 8 from an ablation: the maps of Table 2's five rows


def figure8_rows(ablation_dir: str | os.PathLike, checkpoint: str = "final") -> list:
    """The rows of the paper's Fig. 8 from a finished ablation (``table2``'s workdir): R18,
    R18+FA and R18+FAML (each row's first network), R18+FAML-FGA (the best network of the final
    population) and R18+FAML-FGA-T2V (the final population voting), as ``(label, Predictor)``
    pairs for ``figures.figure_of_maps``."""
    from faml_jax.predict import Predictor

    ablation_dir = Path(ablation_dir)
    table = runs.read_json(ablation_dir / "table2.json", "the ablation's table (a finished experiments.ablation)")
    first_seed = table["seeds"][0]
    rows = [
        (row, Predictor.from_run(ablation_dir / VARIANTS[row] / f"seed{first_seed}", checkpoint)) for row in VARIANTS
    ]
    population = runs.population_members(ablation_dir / "fga")
    best = table["rows"]["R18+FAML-FGA"]["best_network"]
    best_dir = dict(population)[best]
    rows.append((f"R18+FAML-FGA ({best})", Predictor.from_run(best_dir, checkpoint)))
    rows.append(("R18+FAML-FGA-T2V", Predictor._from_members(population, checkpoint)))
    return rows
