"""Predictions per second of ``faml_jax.predict.Predictor`` at the paper's size: one network and a
6-network T2V ensemble of R18+FAML (full ResNet18 widths, the paper's attention blocks, 224 px),
on face crops already cut out and on photos with face detection and alignment (scikit-image's
astronaut.png, one face each).

    python -m tools.bench_predict                 # writes the table to stdout
    python -m tools.bench_predict --faces 64 --photos 16

Random weights (speed does not depend on them). Times are the median of ``--rounds`` after one
warm-up call (which compiles); measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np

from faml_jax import models, predict
from faml_jax import photos as photos_module
from faml_jax.presets import preset
from tools import benchmarking
from tools.benchmarking import median_seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64, help="aligned crops per round (default 64)")
    parser.add_argument("--photos", type=int, default=8, help="photos per round with detection (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="faces per compiled call (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def measure(args) -> list[str]:
    from PIL import Image
    from skimage import data as skimage_data

    config = preset("rafdb", from_scratch=True)  # R18+FAML, 224 px, the paper's widths and blocks
    model = models.network(config.model)
    rng = np.random.default_rng(0)
    crops = list(rng.integers(0, 256, (args.faces, 100, 100, 3), dtype=np.uint8))  # RAF-DB's aligned size
    folder = Path(tempfile.mkdtemp())
    photo = folder / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    photos = [photo] * args.photos
    lines = [
        f"Prediction: R18+FAML (full widths, 224 px), batch {args.batch}, {benchmarking.device()}, median of "
        f"{args.rounds} rounds "
        "after one warm-up",
        "",
        "| networks | input | faces per round | seconds per round | faces/s |",
        "|---|---|---|---|---|",
    ]
    for members in (1, 6):
        variables = [models.init(model, jax.random.key(i)) for i in range(members)]
        predictor = predict.Predictor(config, variables, [f"net{i}" for i in range(members)], batch_size=args.batch)
        seconds = median_seconds(lambda: predictor.predict(crops), args.rounds)
        lines.append(
            f"| {members} | aligned crops (100 px) | {args.faces} | {seconds:.2f} | {args.faces / seconds:.1f} |"
        )
        seconds = median_seconds(lambda: photos_module.predict_photos(predictor, photos, faces="detect"), args.rounds)
        lines.append(
            f"| {members} | photos 512x512, detect + align | {args.photos} | {seconds:.2f} | "
            f"{args.photos / seconds:.1f} |"
        )
    return lines


def main(argv=None):
    print("\n".join(measure(parse_args(argv))))


if __name__ == "__main__":
    main()
