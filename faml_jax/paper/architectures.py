"""Table 6 and Fig. 7, T2V on other basic networks (docs/method.md 7): per row, networks of one
architecture (one per seed, from its converted backbone or a random start), their mean accuracy
(origin) and the T2V, T1V and NOI ensembles of all of them, with the paper's numbers beside;
``table6`` trains, evaluates and writes it all in one workdir."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from faml_jax import ensemble, report, runs
from faml_jax.config import EnsembleConfig, LossConfig, RunConfig
from faml_jax.errors import ConfigError
from faml_jax.paper.networks import check_fresh_workdir, check_networks, mean_sd, row_seeds, train_networks
from faml_jax.presets import preset
from faml_jax.records import config_to_json
from faml_jax.writer import write_atomic, write_json

logger = logging.getLogger(__name__)

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
    figure_format: str = "png",
) -> dict:
    """Train ``networks`` networks per row (seeds ``base.seed`` ..) and write Table 6
    (``table6.md``, ``table6.json``) and Fig. 7 (``fig7.<figure_format>``: png, pdf or svg) in ``workdir``, with a report
    folder per row (``reports/<row>``: its ensemble and Table 1 ranks). ``rows``: default the
    paper's five basic networks and R18+FAML, and R18+FAML-FGA (the final population of
    ``fga_workdir``, an ``experiments.evolve`` workdir) when given. ``backbones``: a folder holding
    one converted backbone per row (``TABLE6_ROWS``' names: ri18, resnet34, vgg16, densenet121,
    msceleb); without it every network starts from random weights. Rows whose configuration is
    another row's (RI18 and R18 without backbones) share that row's networks. Returns the table."""
    workdir = Path(workdir)
    rows = _requested_rows(rows, fga_workdir)
    check_networks(networks)
    _check_backbones(backbones, rows)
    check_fresh_workdir(workdir, resume, "an earlier Table 6")
    seeds = row_seeds(base, networks)
    ensemble_config = EnsembleConfig()
    folders = _configuration_folders(base, backbones)
    trained_by_config: dict[str, tuple[str, list]] = {}
    result_rows: dict[str, dict] = {}
    for row in rows:
        if row == FGA_ROW:
            members = runs.population_members(fga_workdir)
            what = f"the final population of {fga_workdir}"
        else:
            config = table6_config(base, row, backbones)
            members, what = _row_networks(
                row, config, seeds, workdir / folders[_key(config)], trained_by_config, progress, keep_recorded
            )
        out = workdir / "reports" / _folder_name(row)
        numbers = _evaluate_row(row, members, out, ensemble_config, progress, figure_format)
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
    write_atomic(workdir / f"fig7.{figure_format}", payload=figure7(result, figure_format))
    logger.info(table6_markdown(result))
    return result


def _requested_rows(rows: tuple[str, ...] | None, fga_workdir) -> tuple[str, ...]:
    """The rows to make: ``rows``, or every row of ``TABLE6_ROWS`` (and ``FGA_ROW`` with an
    evolution's workdir); an unknown row, or ``FGA_ROW`` without that workdir, is refused."""
    rows = tuple(rows or TABLE6_ROWS) + ((FGA_ROW,) if fga_workdir is not None and not rows else ())
    unknown = [r for r in rows if r not in TABLE6_ROWS and r != FGA_ROW]
    if unknown:
        raise ConfigError(
            f"unknown Table 6 row(s) {', '.join(unknown)}; available: {', '.join(TABLE6_ROWS)}, {FGA_ROW}"
        )
    if FGA_ROW in rows and fga_workdir is None:
        raise ConfigError(f"the {FGA_ROW} row needs an evolution's workdir (--fga-workdir)")
    return rows


def _check_backbones(backbones: str | os.PathLike | None, rows: tuple[str, ...]) -> None:
    """``backbones`` (when given) holds the backbone of every row to train."""
    if backbones is None:
        return
    missing = sorted({TABLE6_ROWS[r][1] for r in rows if r in TABLE6_ROWS} - set(os.listdir(backbones)))
    if missing:
        raise ConfigError(
            f"--backbones {backbones} has no {', '.join(missing)}: convert each with python -m tools.convert_torch "
            "(docs/tables.md names them)"
        )


def _key(config: RunConfig) -> str:
    """What identifies a row's recipe: rows of one key share their networks."""
    return repr(config_to_json(config))


def _folder_name(row: str) -> str:
    """A row's folder name (its networks', its report's): ``R18+FAML`` -> ``r18_faml``."""
    return row.lower().replace("+", "_")


def _configuration_folders(base: RunConfig, backbones) -> dict[str, str]:
    """The folder of each configuration's networks: rows of one configuration train in the folder
    of the first of them in ``TABLE6_ROWS``' order, whatever the order of the rows requested (so a
    later call finds them there)."""
    folders: dict[str, str] = {}
    for row in TABLE6_ROWS:
        folders.setdefault(_key(table6_config(base, row, backbones)), _folder_name(row))
    return folders


def _row_networks(
    row: str,
    config: RunConfig,
    seeds: list[int],
    folder: Path,
    trained_by_config: dict[str, tuple[str, list]],
    progress: bool,
    keep_recorded: tuple[str, ...],
) -> tuple[list[tuple[str, Path]], str]:
    """A row's networks as ``(name, run folder)`` and what they are: trained in ``folder`` (or
    continued, or reused when finished), or an earlier row's of the same configuration
    (``trained_by_config``, which this adds to)."""
    key = _key(config)
    if key in trained_by_config:  # the same recipe as an earlier row: its networks
        earlier, trained = trained_by_config[key]
        what = f"the networks of row {earlier} (the same configuration)"
    else:
        trained = train_networks(config, seeds, folder, row, progress, keep_recorded)
        trained_by_config[key] = (row, trained)
        start = "random start" if config.init is None else f"backbone {Path(config.init).name}"
        what = f"{config.model_name}, {start}, seeds {seeds[0]}..{seeds[-1]}"
    return [(f"seed{seed}", run_dir) for seed, (run_dir, _) in zip(seeds, trained)], what


def _evaluate_row(
    row: str,
    members: list[tuple[str, Path]],
    out: Path,
    ensemble_config: EnsembleConfig,
    progress: bool,
    figure_format: str,
) -> dict:
    """The ensemble report of a row's networks in ``out``, and the row's numbers from its logits."""
    logger.info(f"== {row}: evaluating {len(members)} networks")
    report.ensemble_report(
        members,
        out,
        ensemble_config,
        overwrite=True,
        progress=progress,
        command=f"paper.table6 ({row})",
        figure_format=figure_format,
    )
    saved = runs.read_arrays(out / "logits.npz", {"logits": ("f", 3), "labels": ("iu", 1)}, "the report's logits")
    return table6_row(saved["logits"], saved["labels"], ensemble_config.alpha, ensemble_config.beta)


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


def figure7_points(result: dict) -> list[dict]:
    """Fig. 7's points from a Table 6 result: per basic network its origin accuracy and the gain
    of each decision (%), rows sharing their networks (RI18 and R18 without backbones) as one
    point labelled "RI18 = R18"."""
    points: dict[tuple, dict] = {}
    for row, r in result["rows"].items():
        numbers = (100 * r["origin"], *(100 * r[f"{s}_gain"] for s in DECISIONS))
        point = points.setdefault(
            numbers, {"label": row, "origin": numbers[0], "gains": dict(zip(DECISIONS, numbers[1:]))}
        )
        if point["label"] != row:
            point["label"] += f" = {row}"
    return list(points.values())


FIG7_DECISIONS = (("t2v", "o", "T2V"), ("noi", "s", "NOI"), ("t1v", "^", "T1V"))


def draw_figure7(points: list[dict], title: str):
    """Fig. 7 at the paper's column width: per basic network (``points``: label, origin %, gains
    in points per decision) its three gains above its origin accuracy, joined by a line, one
    colour per network and one marker per decision; the networks and the decisions in two
    legends below the plot, so no label is drawn over a point or another label."""
    from matplotlib.lines import Line2D

    from faml_jax import figures

    with figures.style():
        fig = figures.new_figure(figures.COLUMN, 3.2 + 0.16 * len(points))
        ax = fig.add_subplot()
        colours = [f"C{i % 10}" for i in range(len(points))]
        for point, colour in zip(points, colours):
            gains = [point["gains"][s] for s, _, _ in FIG7_DECISIONS]
            ax.plot([point["origin"]] * 2, [min(gains), max(gains)], color=colour, linewidth=0.8)
            for (_, marker, _), gain in zip(FIG7_DECISIONS, gains):
                ax.plot(point["origin"], gain, marker=marker, color=colour, linestyle="none")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_xlabel("origin: the networks' mean test accuracy (%)")
        ax.set_ylabel("gain of the ensemble (points)")
        ax.set_title(title)
        networks = [
            Line2D([], [], color=c, marker="o", linestyle="-", label=p["label"]) for p, c in zip(points, colours)
        ]
        decisions = [Line2D([], [], color="black", marker=m, linestyle="none", label=n) for _, m, n in FIG7_DECISIONS]
        first = fig.legend(handles=networks, loc="outside lower left", ncols=1, title="basic network")
        fig.legend(handles=decisions, loc="outside lower right", ncols=1, title="decision")
        first.set_in_layout(True)
    return fig


def figure7(result: dict, format: str = "png") -> bytes:
    """Fig. 7 as a file in ``format`` (png, pdf or svg): ``draw_figure7`` of ``figure7_points``."""
    from faml_jax import figures

    title = f"Fig. 7 on {result['dataset']}: T2V, NOI and T1V\nof {result['networks']} networks per basic network"
    return figures.save(draw_figure7(figure7_points(result), title), format)
