"""Export trained networks for deployment, with the preprocessing inside (uint8 NHWC faces at the
run's input size in; class probabilities, or an ensemble's logits, T2V scores and decision, out):
``python -m tools.export RUN_DIR [RUN_DIR ...] OUT --format onnx|stablehlo|both``
or ``python -m tools.export --population EVOLVE_DIR OUT``.

OUT receives ``<run>.onnx`` for one network or ``ensemble.onnx`` for several (opset 17, batch
dimension symbolic; run it with onnxruntime, ``pip install onnxruntime``): one graph whose outputs
are every network's logits, the T2V scores, the decision and its confidence; ``model.stablehlo``
(``jax.export``: one network, or the whole ensemble with its T2V decision) with
``model.weights.npz`` (load both with ``faml_jax.export.load_stablehlo``); ``README.md`` (how to
cut faces from photos as the run's data set shows faces, with ``faml_jax.faces`` or without it)
and ``export.json`` (inputs, outputs, classes, input size, T2V's weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from experiments.flags import add_generation_argument, check_generation
from faml_jax import export, runs
from faml_jax.safenames import plain_name


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("tools.export", __doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder(s), then the output folder")
    parser.add_argument(
        "--population", metavar="DIR", help="an experiments.evolve workdir: export its final population"
    )
    add_generation_argument(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in OUT (a folder that is not an export is never replaced)",
    )
    parser.add_argument(
        "--format", choices=[*export.FORMATS, "both"], default="both", help="what to write (default both)"
    )
    parser.add_argument("--checkpoint", choices=["final", "best"], default="final", help="which checkpoint of each run")
    return parser


def main(argv=None) -> int:
    def body(args):
        check_generation(args)
        *run_dirs, out = args.paths
        members = [(Path(p).name, Path(p)) for p in run_dirs]
        if args.population:
            record = Path(args.population) / "population.json"
            population = runs.population_members(args.population, generation=args.generation)
            members = [(plain_name(n, record, "member name"), p) for n, p in population] + members
        if not members:
            raise UsageError("give RUN_DIR ... OUT or --population DIR OUT")
        formats = export.FORMATS if args.format == "both" else (args.format,)
        description = export.export_runs(
            [p for _, p in members],
            out,
            formats=formats,
            checkpoint=args.checkpoint,
            names=[n for n, _ in members],
            overwrite=args.overwrite,
        )
        for name, what in description["files"].items():
            size = (Path(out) / name).stat().st_size
            print(f"{Path(out) / name}  {size / 1e6:.1f} MB  {what}")

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
