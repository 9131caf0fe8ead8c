"""Evolve a population with FGA: ``python -m experiments.evolve [--dataset synthetic] ...``.

Runs Algorithm 1 (docs/method.md 3) for ``--generations`` generations. The initial population is either
trained here (``--population`` networks with their own seeds) or read from the workdirs of
networks trained by ``experiments.train`` (``--members DIR ...``). In each generation:

  1. each network's selection probability is its inverse training loss over the sum (roulette;
     the reference loss, plain CE of the training batches, not the sampled ML loss);
  2. each child draws ``--parents`` distinct parents by those probabilities; its convolution
     kernels are the parents' mean (Eq. 9), everything else is its fittest parent's;
  3. ``--new-members`` fresh networks join;
  4. children and new networks are trained until the stability detector says "well trained"
     (at most ``--epochs`` epochs); children restart the Lr1 regime (``--child-lr``);
  5. the ``--population`` networks with the lowest training loss (reference CE) survive.

Fresh networks start from one shared initialisation with their own heads (the stand-in for the
common pre-trained start; ``--independent-init`` gives each its own).

Networks are trained one after another, each data-parallel over all devices, or with
``--member-parallel`` one per device side by side. Writes to the workdir:

  evolve.json          the resolved configuration (the training run and FGA)
  population.json      the lineage: every network's origin, seed, parents, training loss and
                       test accuracy (and, for a child, its accuracy right after fusion), and per
                       generation the population, selection probabilities and survivors
  members/<name>/      each network's training outputs, as ``experiments.train`` writes them

Names: ``g0-m<i>`` initial networks (``given<i>`` when read with ``--members``), ``g<g>-c<i>``
children and ``g<g>-n<i>`` new networks of generation g. ``--resume`` continues an interrupted
evolution: finished networks are kept, an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, run_cli
from experiments.flags import add_fga_arguments, add_run_arguments, fga_config, kept_on_resume, resolve_config
from faml_jax.evolution import evolve
from faml_jax.workdir import process_workdir


def build_parser():
    parser = OneLineErrorParser.for_program("experiments.evolve", __doc__)
    add_run_arguments(
        parser,
        epochs_help="most epochs to train each network (preset)",
        workdir_help="output folder (default runs/evolve-<dataset>-<model>-seed<seed>)",
    )
    group = add_fga_arguments(parser, population=True)
    group.add_argument(
        "--members",
        nargs="+",
        metavar="DIR",
        help="initial population: workdirs of networks trained by experiments.train",
    )
    group.add_argument(
        "--member-parallel",
        action="store_true",
        help="train one network per device side by side (default: one after another, data-parallel)",
    )
    return parser


def main(argv=None) -> int:
    def body(args):
        config = resolve_config(args)
        fga = fga_config(args)
        workdir = process_workdir(
            Path(args.workdir or f"runs/evolve-{args.dataset}-{config.model_name}-seed{args.seed}")
        )
        evolve(
            config,
            fga,
            workdir,
            members=args.members or (),
            resume=args.resume,
            overwrite=args.overwrite,
            side_by_side=args.member_parallel,
            progress=not args.no_progress,
            keep_recorded=kept_on_resume(args),
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
