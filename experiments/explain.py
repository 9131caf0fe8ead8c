"""Draw where models look, as the paper's Fig. 8: one row per run or ensemble, one column per
expression, each cell the same test image with the row's attention map as a JET overlay:
``python -m experiments.explain --run DIR --run DIR --ensemble DIR,DIR,... --population EVOLVE_DIR``, or
the five rows of Table 2 from an ablation: ``python -m experiments.explain --ablation ABLATION_DIR``.

Each column's image is the test image of that expression that the most rows classify correctly
(ties: the surest, then the first; a cell whose row decides another class is marked x;
``--indices`` chooses one test index per expression instead); the chosen indices are printed. The map of a network is
Grad-CAM of its decided class on the last residual stage (``--map relevancy``: the attention
blocks' relevancy of Chefer et al., for models with attention blocks); an ensemble's map is its
members' maps weighted by their T2V votes for the ensemble's decision (docs/method.md 6). Writes
``--out`` (default figure8.<--format>: png, or pdf / svg for a paper) and beside it the raw maps,
images and indices (.npz).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from experiments.cli import OneLineErrorParser, UsageError, run_cli
from faml_jax import figures, paper, predict
from faml_jax.paper.figure8 import draw_figure8, figure_of_maps

logger = logging.getLogger("experiments.explain")


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser.for_program("experiments.explain", __doc__)
    parser.add_argument("--run", action="append", default=[], metavar="DIR", help="a run folder: one row (repeatable)")
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="DIR,DIR,...",
        help="run folders voting with T2V: one row (repeatable)",
    )
    parser.add_argument(
        "--population",
        action="append",
        default=[],
        metavar="DIR",
        help="an evolution's final population: one row (repeatable)",
    )
    parser.add_argument(
        "--ablation",
        metavar="DIR",
        help="a finished experiments.ablation workdir: the five rows of Table 2 (R18, R18+FA, R18+FAML, "
        "R18+FAML-FGA, R18+FAML-FGA-T2V), before any other rows",
    )
    parser.add_argument(
        "--map",
        choices=["gradcam", "relevancy"],
        default="gradcam",
        help="the map: gradcam (every model; default) or relevancy (models with attention blocks), as in experiments.predict",
    )
    parser.add_argument("--indices", help="one test index per expression, comma-separated")
    parser.add_argument("--checkpoint", choices=["final", "best"], default="final", help="which checkpoint of each run")
    parser.add_argument("--data-dir", help="the data set's folder, if it moved since training")
    parser.add_argument("--out", help="the figure to write (default figure8.<format>)")
    parser.add_argument(
        "--format",
        choices=figures.FORMATS,
        help="png, pdf or svg (default: --out's suffix, else png)",
    )
    return parser


def main(argv=None) -> int:
    def body(args):
        out, format = output(args.out, args.format)
        rows = paper.figure8_rows(args.ablation, args.checkpoint) if args.ablation else []
        names = [Path(d).name for d in args.run]
        if len(set(names)) < len(names):  # runs named alike (seed0 of two rows): their parent folders too
            names = [f"{Path(d).parent.name}/{Path(d).name}" for d in args.run]
        rows += [(name, predict.Predictor.from_run(d, args.checkpoint)) for name, d in zip(names, args.run)]
        for group in args.ensemble:
            dirs = [d for d in group.split(",") if d]
            rows.append((f"T2V of {len(dirs)}", predict.Predictor.from_runs(dirs, args.checkpoint)))
        rows += [
            (f"{Path(d).name} (T2V)", predict.Predictor.from_population(d, args.checkpoint)) for d in args.population
        ]
        if not rows:
            raise UsageError("give --ablation or at least one --run, --ensemble or --population")
        try:
            indices = [int(i) for i in args.indices.split(",")] if args.indices else None
        except ValueError:
            raise UsageError(f"--indices takes integers separated by commas, got {args.indices!r}") from None
        figure = figure_of_maps(rows, kind=args.map, indices=indices, data_dir=args.data_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        from faml_jax.writer import write_atomic

        write_atomic(out, payload=figures.save(draw_figure8(figure), format))
        write_atomic(
            out.with_suffix(".npz"),
            arrays={k: np.asarray(figure[k]) for k in ("maps", "images", "indices", "right", "classes", "rows")},
        )
        logger.info(
            "test-split index of the image shown per expression: "
            + ", ".join(
                f"{c} {i} ({int(figure['right'][:, k].sum())}/{len(rows)} rows right)"
                for k, (c, i) in enumerate(zip(figure["classes"], figure["indices"]))
            )
        )
        logger.info(f"written {out} and {out.with_suffix('.npz')}")

    return run_cli(build_parser(), argv, body)


def output(out: str | None, format: str | None) -> tuple[Path, str]:
    """The file to write and its format: --format, else --out's suffix, else png; the two must agree."""
    suffix = Path(out).suffix.lower().lstrip(".") if out else ""
    format = format or (suffix if suffix in figures.FORMATS else "png")
    if out is None:
        return Path(f"figure8.{format}"), format
    if suffix != format:
        raise UsageError(f"--out {out} does not end in .{format} (--format {format})")
    return Path(out), format


if __name__ == "__main__":
    sys.exit(main())
