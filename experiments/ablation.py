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
import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import (
    add_fga_arguments,
    add_format_argument,
    add_run_arguments,
    fga_config,
    kept_on_resume,
    resolve_config,
)
from faml_jax import paper
from faml_jax.workdir import process_workdir


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
    add_format_argument(parser, "the reports' confusion matrices")
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
        paper.table2(
            base,
            fga_config(args, population=args.networks),
            args.networks,
            workdir,
            resume=args.resume,
            member_parallel=args.member_parallel,
            progress=not args.no_progress,
            keep_recorded=kept_on_resume(args),
            figure_format=args.format,
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
