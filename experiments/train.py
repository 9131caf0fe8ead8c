"""Train one network: ``python -m experiments.train [--dataset synthetic] [--model r18_faml] ...``.

Trains with the data set's preset (docs/method.md 2.3-2.4; a CPU-sized demo for ``synthetic``),
evaluates on the test split after every epoch, and writes to the workdir:

  config.json              the resolved configuration
  checkpoints/<epoch>/     orbax checkpoints (last N plus the best by test accuracy)
  test_logits/epoch_<e>.npz  test-split logits and labels after each epoch (for ensembles)
  metrics.jsonl            one line per epoch: training loss/accuracy, learning rate, test metrics
  tensorboard/             the same as TensorBoard event files
  summary.json             final-epoch test accuracy and, separately, the best epoch; after a
                           stop, the epoch reached of the planned ones (finished: false)

``--resume`` continues an interrupted run from its last complete checkpoint, bit for bit. Ctrl-C
or SIGTERM while training saves where the run is (``preempted/``) and exits (130 / 143): resume
continues with the next batch. The workdir is locked while a run uses it. See docs/faults.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, run_cli
from experiments.flags import add_run_arguments, kept_on_resume, resolve_config
from faml_jax.trainer import fit
from faml_jax.workdir import process_workdir


def build_parser():
    parser = OneLineErrorParser.for_program("experiments.train", __doc__)
    add_run_arguments(
        parser,
        epochs_help="epochs to train (preset)",
        workdir_help="output folder (default runs/<dataset>-<model>-seed<seed>)",
    )
    return parser


def main(argv=None) -> int:
    def body(args):
        config = resolve_config(args)
        workdir = process_workdir(Path(args.workdir or f"runs/{args.dataset}-{config.model_name}-seed{args.seed}"))
        fit(
            config,
            workdir,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            keep_recorded=kept_on_resume(args),
        )

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
