"""Paper Table 2 for one data set: ``python -m experiments.ablation [--dataset synthetic] [--networks 6]``.

Trains three single-network variants with the same budget (the preset's epochs, schedule and
batch) and the same seeds (``--seed`` .. ``--seed + networks - 1``), as the paper defines its rows
(docs/method.md 2):

  R18        plain ResNet18 (``--model r18``), plain CE on every data set
  R18+FA     FA = the fusion stem and the attention blocks (``r18_fa``), plain CE
  R18+FAML   R18+FA trained with the preset's ML loss (``r18_faml``)

(``--no-attention`` drops the attention blocks from R18+FA and R18+FAML.)

then combines the R18+FAML networks:

  R18+FAML-FGA      FGA (``experiments.evolve``) with the R18+FAML networks as the initial
                    population; the row reports the final population
  R18+FAML-T2V      T2V over the R18+FAML networks (``experiments.ensemble``)
  R18+FAML-FGA-T2V  T2V over the evolved population

and writes ``table2.md`` and ``table2.json`` to the workdir (single-network rows: mean and
standard deviation over the networks, and the best one; ensemble rows: the T2V accuracy; the
paper's number beside each). Every run has its own folder, so an interrupted ablation continues
with ``--resume`` (finished runs are kept):

  r18/seed<s>/, r18_fa/seed<s>/, r18_faml/seed<s>/   experiments.train workdirs
  fga/                                               the experiments.evolve workdir
  reports/faml-t2v/, reports/faml-fga-t2v/           experiments.ensemble report folders

Budget note: FGA trains its children and new networks on top of the initial population, so the
FGA rows use more training than the single-network rows (the evolution's lineage says how much).
On the real data sets every network starts from the pre-trained backbone of ``--init`` (the
paper's setting; ``--from-scratch`` to train from random weights). The ensemble rows' paper
column takes the paper's ensemble-size table at ``--networks`` (6 by default, as in the paper's
T2V rows; "-" where the paper reports no ensemble of that size).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np

from experiments.cli import (
    OneLineErrorParser,
    UsageError,
    add_fga_arguments,
    add_run_arguments,
    fga_config,
    kept_on_resume,
    resolve_config,
    run_cli,
)
from faml_jax import evolution, report, runs, trainer
from faml_jax.config import FGAConfig, LossConfig, RunConfig, config_differences, config_to_json, with_preset
from faml_jax.runs import process_workdir
from faml_jax.trainer import adopt_recorded, complete_run_config, recorded_config
from faml_jax.writer import write_atomic, write_json

logger = logging.getLogger("experiments.ablation")

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
        raise UsageError(
            f"the finished run in {run_dir} was made with another configuration than this row's: "
            f"{'; '.join(diffs)} (delete it, or use another --workdir)"
        )


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


def run(
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
        raise UsageError(f"the ensembles need at least 2 networks, got --networks {networks}")
    if fga.population != networks:
        raise UsageError(f"FGA's population ({fga.population}) must be the number of networks ({networks})")
    if workdir.exists() and any(workdir.iterdir()) and not resume:
        raise UsageError(f"workdir {workdir} holds an earlier ablation: pass --resume to continue it")
    seeds = [base.seed + i for i in range(networks)]
    table: dict[str, dict] = {}
    faml_dirs = []
    for row in VARIANTS:
        config = variant_config(base, row)
        names, accuracies = [], []
        for seed in seeds:
            run_dir = workdir / config.model_name / f"seed{seed}"
            summary_path = run_dir / "summary.json"
            summary = runs.read_json(summary_path, "the summary") if summary_path.exists() else None
            if summary is not None:
                check_finished_run(run_dir, dataclasses.replace(config, seed=seed), keep_recorded)
            if summary is None or summary["epochs"] < config.epochs:
                logger.info(f"== {row}, seed {seed} ({run_dir})")
                summary = trainer.fit(
                    dataclasses.replace(config, seed=seed),
                    run_dir,
                    resume=True,
                    progress=progress,
                    keep_recorded=keep_recorded,
                )
            names.append(f"seed{seed}")
            accuracies.append(summary["final_test_accuracy"])
            if row == "R18+FAML":
                faml_dirs.append(run_dir)
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
    write_atomic(workdir / "table2.md", markdown(result))
    logger.info(markdown(result))
    return result


def markdown(result: dict) -> str:
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser.for_program("experiments.ablation", __doc__)
    add_run_arguments(
        parser,
        epochs_help="epochs of every network (preset; FGA: at most)",
        workdir_help="output folder (default runs/ablation-<dataset>-seed<seed>)",
    )
    parser.add_argument(
        "--networks",
        type=int,
        default=6,
        help="networks per single-network row = ensemble size = FGA population (default 6, as the paper's T2V rows)",
    )
    add_fga_arguments(parser, population=False)
    parser.add_argument("--member-parallel", action="store_true", help="FGA: one network per device side by side")
    return parser


def main(argv=None) -> int:
    def body(args):
        if args.model is not None or args.loss is not None:
            raise UsageError("the ablation chooses each row's --model and --loss itself")
        if args.overwrite:
            raise UsageError("--overwrite is not supported here: delete the workdir to start again")
        if args.networks < 2:
            raise UsageError(f"the ensembles need at least 2 networks, got --networks {args.networks}")
        base = resolve_config(args)
        if base.model_name != "r18_faml":
            raise UsageError(f"the {args.dataset} preset's model is {base.model_name}, expected r18_faml")
        workdir = process_workdir(Path(args.workdir or f"runs/ablation-{args.dataset}-seed{args.seed}"))
        run(
            base,
            fga_config(args, population=args.networks),
            args.networks,
            workdir,
            resume=args.resume,
            member_parallel=args.member_parallel,
            progress=not args.no_progress,
            keep_recorded=kept_on_resume(args),
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
