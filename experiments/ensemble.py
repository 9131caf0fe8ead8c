"""Evaluate an ensemble on the test split and write its report:
``python -m experiments.ensemble --members DIR DIR ...`` or ``--population EVOLVE_DIR``.

The members (workdirs of ``experiments.train``, or the final population of an
``experiments.evolve`` run) must share the data set; they may be of different architectures or
input sizes (a mixed ensemble). One member is a report of that run alone (its rank table, paper
Table 1). Their checkpoints (``--checkpoint final``, the default, or ``best``: selected on the test
split, optimistic) are stacked and evaluated in one compiled call per batch and architecture;
their decisions are combined by T1V
(majority vote), NOI (summed softmax, Eq. 13) and T2V (top-two voting, Eq. 10-12; docs/method.md 4).
The report folder (``--out``) holds:

  report.md                     the tables below, for a person to read
  report.json                   the same numbers (and per member the checkpoint it used)
  members.csv                   accuracy per member and per ensemble decision (paper Table 6)
  sizes.csv                     accuracy against ensemble size 2..M, members added in --order
                                (paper Table 4)
  ranks.csv                     per member, the share of test images whose true label it ranks
                                1st..Cth (paper Table 1)
  confusion_best_member.{csv,png}, confusion_t2v.{csv,png}
                                row-normalised confusion matrices (%) of the best single member
                                and of the T2V ensemble (--format pdf or svg: .pdf or .svg
                                pictures instead of .png)
  logits.npz                    the members' test logits (M, N, C) and the labels

The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import add_format_argument, add_generation_argument, check_generation
from faml_jax import ensemble
from faml_jax.config import EnsembleConfig
from faml_jax.evaluate import named_members
from faml_jax.report import ensemble_report
from faml_jax.runs import population_members


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser.for_program("experiments.ensemble", __doc__)
    source = parser.add_argument_group("members (one run, or several voting together)")
    source.add_argument("--members", nargs="+", metavar="DIR", default=[], help="workdirs of experiments.train runs")
    source.add_argument(
        "--population", metavar="DIR", help="an experiments.evolve workdir: its final population joins the members"
    )
    add_generation_argument(source)
    source.add_argument(
        "--all-networks",
        action="store_true",
        help="with --population: every network the evolution trained, not only the survivors",
    )
    parser.add_argument(
        "--checkpoint",
        choices=["final", "best"],
        default="final",
        help="each member's latest checkpoint (default) or its best by test accuracy (optimistic)",
    )
    parser.add_argument(
        "--order",
        choices=["given", "accuracy"],
        default="given",
        help="order in which members join for the ensemble-size table (default: as given)",
    )
    parser.add_argument("--alpha", type=float, default=ensemble.ALPHA, help="T2V weight of a top-1 vote (1.9)")
    parser.add_argument("--beta", type=float, default=ensemble.BETA, help="T2V weight of a top-2 vote (1.0)")
    parser.add_argument("--out", help="report folder (default: <population>/ensemble, else runs/ensemble)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    parser.add_argument("--data-dir", help="the data set's folder, if it moved since training")
    parser.add_argument("--batch-size", type=int, help="evaluation batch (default: the members' eval batch)")
    parser.add_argument(
        "--mapping",
        choices=["map", "vmap"],
        help="how members are mapped in the compiled call (default: measured per backend)",
    )
    parser.add_argument("--threads", type=int, help="host threads reading images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format_argument(parser, "the confusion matrices")
    return parser


def main(argv=None) -> int:
    def body(args):
        check_generation(args)
        members = named_members([Path(p) for p in args.members])
        if args.population:
            members = population_members(Path(args.population), args.all_networks, args.generation) + members
        elif args.all_networks:
            raise UsageError("--all-networks needs --population")
        if len({name for name, _ in members}) != len(members):
            raise UsageError("two members have the same name: " + ", ".join(name for name, _ in members))
        out = args.out or (str(Path(args.population) / "ensemble") if args.population else "runs/ensemble")
        command = "python -m experiments.ensemble " + " ".join(sys.argv[1:] if argv is None else argv)
        config = EnsembleConfig(alpha=args.alpha, beta=args.beta, checkpoint=args.checkpoint, order=args.order)
        ensemble_report(
            members,
            out,
            config,
            overwrite=args.overwrite,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            mapping=args.mapping,
            num_threads=args.threads,
            progress=not args.no_progress,
            command=command,
            figure_format=args.format,
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
