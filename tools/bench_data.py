"""Data-loading throughput into the train step: images per second from JPEG files to uint8
batches on the device, for RAF-style 100x100 and AffectNet-style 400x400 JPEGs (AffectNet's face
boxes cut out, as training does by default), read from the folder directly, from TFDS
array_record data prepared with the original files (``experiments.prepare --stored-size 0``) and
prepared ready to train (the default: crops stored as JPEGs at the input size).

    python -m tools.bench_data                               # 224 px, batch 128, 4 threads
    python -m tools.bench_data --size 112 --threads 2 --images 1536

Writes the fixture folders (``faml_jax.data.fixtures``: the real releases' layouts, generated
faces) and their preparations into --workdir once (reused later), then runs one epoch of the
training loader (``faml_jax.data.TrainLoader``: shuffled reads, decode, resize on grain's host
threads) and ``jax.device_put`` of every batch. The first batch (thread start-up) is not timed;
each case runs --rounds times and the median is printed. The train step itself is not run: this
is the rate the input pipeline can feed it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

from faml_jax import data
from faml_jax.data import fixtures, prepared
from faml_jax.versions import PREPARED_VERSION
from tools import benchmarking

CASES = (  # (label, data set, writer, image side)
    ("RAF-DB style, 100x100 JPEG", "rafdb", fixtures.write_rafdb, 100),
    ("AffectNet style, 400x400 JPEG", "affectnet8", fixtures.write_affectnet_original, 400),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/faml_jax-bench-data", help="fixture folders (kept for reuse)")
    parser.add_argument("--images", type=int, default=2048, help="training images per fixture (default 2048)")
    parser.add_argument("--size", type=int, default=224, help="model input side (default 224, the paper's)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--threads", type=int, default=4, help="grain host threads (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per case (default 3)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def fixture(workdir: Path, dataset: str, writer, side: int, images: int, stored_size: int, log=print) -> Path:
    """The fixture folder (written once) with its two preparations, of this format version:
    ``prepared-original-v<N>`` and ``prepared-<stored_size>-v<N>``."""
    folder = workdir / f"{dataset}-{side}px-{images}"
    if not (folder / "complete").exists():
        log(f"writing {images} {side}x{side} JPEGs into {folder} (once)")
        codes = {"rafdb": range(1, 8), "affectnet8": range(8)}[dataset]
        train = [list(codes)[i % len(codes)] for i in range(images)]
        writer(folder, train, list(codes), size=side)
        (folder / "complete").touch()
    for name, size in (
        (f"prepared-original-v{PREPARED_VERSION}", None),
        (f"prepared-{stored_size}-v{PREPARED_VERSION}", stored_size),
    ):
        if not prepared.is_prepared(dataset, folder / name):
            log(f"preparing {folder / name}")
            prepared.prepare(dataset, folder, folder / name, bars=False, stored_size=size)
    return folder


def epoch_rate(source, args, epoch: int) -> float:
    """Images per second over one epoch after its first batch."""
    loader = data.TrainLoader(source, args.batch, args.size, seed=0, num_threads=args.threads)
    iterator = loader.iterate(epoch)
    jax.block_until_ready(jax.device_put(next(iterator)))
    start, n = time.perf_counter(), 0
    for batch in iterator:
        jax.block_until_ready(jax.device_put(batch))
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def measure(args, log=print) -> list[str]:
    """Run every case; return the title and Markdown table as lines (``log`` gets progress)."""
    workdir = Path(args.workdir)
    lines = [
        f"Input pipeline (decode + resize to {args.size} px on {args.threads} grain threads, uint8 batches of "
        f"{args.batch} put on the device; flip and normalisation run in the train step): "
        f"{benchmarking.device()}, "
        f"{args.images} images, median of {args.rounds} epochs",
        "",
        "| images | read from | images/s | min | max |",
        "|---|---|---|---|---|",
    ]
    for label, dataset, writer, side in CASES:
        folder = fixture(workdir, dataset, writer, side, args.images, args.size, log)
        for origin, path in (
            ("folder", folder),
            ("prepared, original files", folder / f"prepared-original-v{PREPARED_VERSION}"),
            (f"prepared, ready to train ({args.size} px)", folder / f"prepared-{args.size}-v{PREPARED_VERSION}"),
        ):
            source = data.open_dataset(dataset, path).train
            rates = [epoch_rate(source, args, epoch) for epoch in range(args.rounds)]
            lines.append(
                f"| {label} | {origin} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |"
            )
            log(lines[-1])
    return lines


def main(argv=None):
    lines = measure(parse_args(argv), log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
