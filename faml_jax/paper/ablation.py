"""Table 2, the ablation (docs/method.md 2, 5): R18, R18+FA and R18+FAML (one network per seed
each), R18+FAML-FGA (FGA over the R18+FAML networks) and the T2V ensembles of both, with the
paper's published numbers beside ours; ``table2`` trains and combines it all in one workdir."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from faml_jax import evolution, report, runs
from faml_jax.config import FGAConfig, LossConfig, RunConfig
from faml_jax.errors import ConfigError
from faml_jax.paper.networks import check_fresh_workdir, check_networks, mean_sd, row_seeds, train_networks
from faml_jax.presets import with_preset
from faml_jax.writer import write_atomic, write_json

logger = logging.getLogger(__name__)

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
    figure_format: str = "png",
) -> dict:
    """Train and combine everything Table 2 needs in ``workdir``; returns the table (also in
    table2.json). ``figure_format``: the reports' confusion matrices (png, pdf or svg)."""
    workdir = Path(workdir)
    check_networks(networks)
    if fga.population != networks:
        raise ConfigError(f"FGA's population ({fga.population}) must be the number of networks ({networks})")
    check_fresh_workdir(workdir, resume, "an earlier ablation")
    seeds = row_seeds(base, networks)
    table, faml_dirs = _single_network_rows(base, seeds, workdir, progress, keep_recorded)
    fga_dir = workdir / "fga"
    table["R18+FAML-FGA"] = _fga_row(base, fga, fga_dir, faml_dirs, member_parallel, progress, keep_recorded)
    for row, members, folder in [
        ("R18+FAML-T2V", [(f"seed{s}", d) for s, d in zip(seeds, faml_dirs)], "faml-t2v"),
        ("R18+FAML-FGA-T2V", runs.population_members(fga_dir), "faml-fga-t2v"),
    ]:
        table[row] = _ensemble_row(row, members, workdir / "reports" / folder, progress, figure_format)
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


def _single_network_rows(
    base: RunConfig, seeds: list[int], workdir: Path, progress: bool, keep_recorded: tuple[str, ...]
) -> tuple[dict[str, dict], list[Path]]:
    """The rows R18, R18+FA and R18+FAML (``workdir/<preset>/seed<s>``), and the R18+FAML run
    folders (FGA's first generation and the R18+FAML-T2V ensemble)."""
    table, faml_dirs = {}, []
    names = [f"seed{seed}" for seed in seeds]
    for row in VARIANTS:
        config = variant_config(base, row)
        trained = train_networks(config, seeds, workdir / config.model_name, row, progress, keep_recorded)
        accuracies = [summary["final_test_accuracy"] for _, summary in trained]
        if row == "R18+FAML":
            faml_dirs = [run_dir for run_dir, _ in trained]
        table[row] = single_row(
            names, accuracies, f"mean ± sd of {len(seeds)} networks (seeds {seeds[0]}..{seeds[-1]})"
        )
    return table, faml_dirs


def _fga_row(
    base: RunConfig,
    fga: FGAConfig,
    fga_dir: Path,
    faml_dirs: list[Path],
    member_parallel: bool,
    progress: bool,
    keep_recorded: tuple[str, ...],
) -> dict:
    """The row R18+FAML-FGA: FGA evolved from the R18+FAML networks in ``fga_dir`` (continued
    where it stopped), the mean ± sd of its final population."""
    logger.info("== R18+FAML-FGA")
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
    return single_row(
        survivors,
        [lineage["members"][n]["test_accuracy"] for n in survivors],
        f"mean ± sd of the final population ({fga.generations} generation(s))",
    )


def _ensemble_row(row: str, members: list[tuple[str, Path]], out: Path, progress: bool, figure_format: str) -> dict:
    """A T2V row: the ensemble report of ``members`` in ``out`` and its T2V, T1V and NOI accuracies."""
    logger.info(f"== {row}")
    result = report.ensemble_report(
        members,
        out,
        overwrite=True,
        progress=progress,
        command=f"experiments.ablation ({row})",
        figure_format=figure_format,
    )
    return {
        "accuracy": result["ensemble"]["t2v"]["accuracy"],
        "t1v": result["ensemble"]["t1v"]["accuracy"],
        "noi": result["ensemble"]["noi"]["accuracy"],
        "best_member": max(m["accuracy"] for m in result["members"]),
        "what": f"T2V of {len(members)} networks ({', '.join(n for n, _ in members)})",
        "report": str(out),
    }


def table2_markdown(result: dict) -> str:
    """Table 2 as Markdown (percentages), the paper's numbers beside."""
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
