"""What a program (and every test) pays before and around its first step: creating the run
writer (TensorBoard), ``train.create_train_state`` (initialiser and optimiser state, first call
and later calls) and one checkpoint's save, restore and shape check (``stored_like``), for the
suite's tiny R18+FAML and for full R18+FAML at 112 px.

    python -m tools.bench_startup             # median of 5 of each, as a Markdown table

To compare two versions, run it with each checkout first on ``PYTHONPATH`` (the numbers in
BENCHMARKS.md were taken so). Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time

from tools.gpu_check import TINY  # the GPU check's smoke-run network

SHAPES = {"tiny R18+FAML": {**TINY, "input_size": 32}, "R18+FAML, 112 px": dict(input_size=112)}

# Run in a fresh interpreter: the writer's cost is mostly what it imports.
WRITER = """
import json, sys, tempfile, time
start = time.perf_counter()
from faml_jax.writer import RunWriter
writer = RunWriter(tempfile.mkdtemp())
writer.write(1, {"loss": 1.0})
writer.close()
print(json.dumps({"seconds": time.perf_counter() - start, "torch": "torch" in sys.modules}))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each (default 5; the median is shown)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def median_time(fn, repeats: int) -> float:
    """The median seconds of ``fn(0)``, ..., ``fn(repeats - 1)`` (no warm-up: start-up costs)."""
    from tools.benchmarking import median_seconds  # imports jax: not before the writer's fresh process

    calls = itertools.count()
    return median_seconds(lambda: fn(next(calls)), repeats, warm_up=False)


def measure(args) -> list[str]:
    import jax

    from faml_jax import models, train
    from faml_jax.checkpoint import Checkpoints
    from faml_jax.config import OptimConfig
    from tools.benchmarking import device

    writer = [
        json.loads(subprocess.run([sys.executable, "-c", WRITER], capture_output=True, text=True, check=True).stdout)
        for _ in range(args.repeats)
    ]
    lines = [
        f"Start-up costs, {device()}, median of {args.repeats}",
        "",
        f"Run writer in a fresh process: {statistics.median(w['seconds'] for w in writer):.3f} s "
        f"(torch imported: {writer[0]['torch']})",
        "",
        "| network | create_train_state, first (s) | later (s) | checkpoint save (s) | restore (s) | stored_like (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, options in SHAPES.items():
        model = models.build("r18_faml", 7, **options)
        tx = train.make_optimizer(OptimConfig(), 1e-3)
        start = time.perf_counter()
        state = jax.block_until_ready(train.create_train_state(model, tx, jax.random.key(0)))
        first = time.perf_counter() - start
        later = median_time(
            lambda i: jax.block_until_ready(
                train.create_train_state(model, train.make_optimizer(OptimConfig(), 1e-3), jax.random.key(i + 1))
            ),
            args.repeats,
        )
        host = jax.device_get(state)
        checkpoints = Checkpoints(tempfile.mkdtemp())
        try:
            save = median_time(lambda i: checkpoints.save(i + 1, host, {"epoch": i + 1}), args.repeats)
            restore = median_time(lambda i: checkpoints.restore(i + 1, state), args.repeats)
            stored = median_time(lambda i: checkpoints.stored_like(i + 1, state), args.repeats)
        finally:
            checkpoints.close()
        lines.append(f"| {name} | {first:.2f} | {later:.3f} | {save:.3f} | {restore:.3f} | {stored:.4f} |")
    return lines


def main(argv=None) -> int:
    print("\n".join(measure(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
