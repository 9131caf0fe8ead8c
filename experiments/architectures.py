"""Paper Table 6 and Fig. 7 for one data set: T2V on other basic networks
(``python -m experiments.architectures [--dataset synthetic] [--networks 6]``).

Trains ``--networks`` networks (seeds ``--seed`` ..) of each basic network with the R18 row's
recipe (plain CE, Adam, Lr1 cosine ending at Lr2 with the stability switch, the preset's batch and
epochs, flip only; docs/method.md 7):

  RI18         ResNet18 from ImageNet weights        (backbone ri18)
  ResNet34     torchvision's resnet34                (backbone resnet34)
  VGG16        torchvision's vgg16                   (backbone vgg16)
  DenseNet121  torchvision's densenet121             (backbone densenet121)
  R18          ResNet18 from MS-Celeb-1M weights     (backbone msceleb)
  R18+FAML     the paper's network, its ML loss      (backbone msceleb)
  R18+FAML-FGA the final population of --fga-workdir (an experiments.evolve workdir), if given

then evaluates each row's networks together (origin: their mean accuracy, spread and the first
one's; T2V, T1V and NOI over all of them) and writes ``table6.md``, ``table6.json`` (fractions)
and ``fig7.png`` (``--format pdf|svg``: fig7.pdf, fig7.svg; the gain of T2V, NOI and T1V against
the origin accuracy, one point per row) in the workdir, with the paper's RAF-DB numbers beside ours; a report folder per row
under ``reports/`` (its ensemble and Table 1 ranks). ``--backbones DIR`` holds one converted
backbone per row, named as above (``python -m tools.convert_torch --arch ARCH FILE DIR/NAME``);
without it every network starts from random weights (allowed on the real data sets with
--from-scratch only), and RI18 and R18 are then the same networks. An interrupted table continues
with ``--resume`` (finished runs are kept; one made with another configuration is refused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import add_format_argument, add_run_arguments, kept_on_resume, resolve_config
from faml_jax import paper
from faml_jax.workdir import process_workdir


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser.for_program("experiments.architectures", __doc__)
    add_run_arguments(
        parser,
        epochs_help="epochs of every network (preset)",
        workdir_help="output folder (default runs/table6-<dataset>-seed<seed>)",
    )
    parser.add_argument("--networks", type=int, default=6, help="networks per row = ensemble size (default 6)")
    parser.add_argument(
        "--rows",
        help=f"comma-separated rows (default: {', '.join(paper.TABLE6_ROWS)}, and {paper.FGA_ROW} with --fga-workdir)",
    )
    parser.add_argument("--backbones", metavar="DIR", help="one converted backbone per row: ri18, resnet34, vgg16, ...")
    parser.add_argument("--fga-workdir", metavar="DIR", help=f"an experiments.evolve workdir: the {paper.FGA_ROW} row")
    add_format_argument(parser, "Fig. 7 and the reports' confusion matrices")
    return parser


def main(argv=None) -> int:
    def body(args):
        if args.model is not None or args.loss is not None:
            raise UsageError("each row chooses its --model and --loss (--rows picks the rows)")
        if args.init is not None:
            raise UsageError("--init is not taken here: --backbones DIR holds one backbone per row (docs/tables.md)")
        if args.widths or args.fusion_init is not None or args.no_attention:
            raise UsageError(
                "--widths, --fusion-init and --no-attention would apply to one architecture only: each row "
                "takes its network as torchvision (or the paper) defines it"
            )
        if args.overwrite:
            raise UsageError("--overwrite is not supported here: delete the workdir to start again")
        if args.backbones is not None and not Path(args.backbones).is_dir():
            raise UsageError(f"--backbones {args.backbones} is not a folder")
        if args.backbones is not None:  # the rows' backbones stand for --init in the data set's check
            args.from_scratch = True
        base = resolve_config(args)
        workdir = process_workdir(Path(args.workdir or f"runs/table6-{args.dataset}-seed{args.seed}"))
        paper.table6(
            base,
            workdir,
            rows=tuple(r.strip() for r in args.rows.split(",")) if args.rows else None,
            networks=args.networks,
            backbones=args.backbones,
            fga_workdir=args.fga_workdir,
            resume=args.resume,
            progress=not args.no_progress,
            keep_recorded=kept_on_resume(args),
            figure_format=args.format,
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
