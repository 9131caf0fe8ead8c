"""Compile time and steady-state time of the data-parallel train step.

    python -m tools.bench_train_step                      # r18 and r18_faml, 112 px, batch 16
    python -m tools.bench_train_step --size 224 --steps 10

For each model: the time to trace, lower and compile the pmapped train step, then the median
(and min/max) wall time of one step over ``--steps`` timed steps after ``--warmup`` untimed ones,
on random uint8 images; the models are interleaved so that machine noise hits all of them.
Prints a Markdown table. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from faml_jax import models, train
from faml_jax.config import LossConfig, OptimConfig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["r18", "r18_faml"], choices=sorted(models.PRESETS))
    parser.add_argument("--size", type=int, default=112, help="input side in pixels (default 112)")
    parser.add_argument("--batch", type=int, default=16, help="global batch size (default 16)")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (default 2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    devices = jax.local_devices()
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8),
        "label": rng.integers(0, args.classes, args.batch).astype(np.int32),
    }
    tx = train.make_optimizer(OptimConfig())
    runs = {}
    for name in args.models:
        model = models.build(name, args.classes, input_size=args.size, dtype=args.dtype)
        state = train.replicate(train.create_train_state(model, tx, jax.random.key(0)), devices)
        step = train.parallel_train_step(model, tx, LossConfig(kind="ml"), devices=devices)
        sharded = train.shard(batch, devices)
        start = time.perf_counter()
        compiled = step.lower(state, sharded, 3e-4).compile()
        compile_s = time.perf_counter() - start
        for _ in range(args.warmup):
            state, metrics = compiled(state, sharded, 3e-4)
        jax.block_until_ready(state)
        runs[name] = dict(compiled=compiled, state=state, sharded=sharded, compile_s=compile_s, times=[])
        print(f"{name}: compiled in {compile_s:.1f} s", flush=True)

    for _ in range(args.steps):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["compiled"](run["state"], run["sharded"], 3e-4)
            jax.block_until_ready((run["state"], metrics))
            run["times"].append(time.perf_counter() - start)

    print()
    print(f"Train step, batch {args.batch}, {args.size}x{args.size}, {args.dtype}, {len(devices)} x "
          f"{devices[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print()
    print("| model | compile (s) | step median (s) | step min / max (s) | images/s |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        t = run["times"]
        median = statistics.median(t)
        print(f"| {name} | {run['compile_s']:.1f} | {median:.3f} | {min(t):.3f} / {max(t):.3f} | "
              f"{args.batch / median:.1f} |")


if __name__ == "__main__":
    main()
