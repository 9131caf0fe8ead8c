"""How to evaluate an ensemble: a Python loop of jitted single-network calls, or one compiled call
over the stacked variables with the members mapped by ``jax.lax.map`` or ``jax.vmap``.

    python -m tools.bench_ensemble                         # 6 x r18_faml (synthetic widths), 64 px, batch 256
    python -m tools.bench_ensemble --full --size 112 --batch 64

Prints the compile time and the median (min/max) wall time of evaluating one batch with every
member, over ``--rounds`` timed rounds after one warm-up, the contenders interleaved so that
machine noise hits all of them; and checks that they agree. This measurement chooses
``faml_jax.ensemble.MAPPING_BY_BACKEND``. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from faml_jax import ensemble, fga, models, train
from tools import benchmarking


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="r18_faml", choices=sorted(models.PRESETS))
    parser.add_argument("--members", type=int, default=6, help="ensemble size (default 6, as the paper)")
    parser.add_argument(
        "--full", action="store_true", help="full ResNet18 widths (default: the synthetic preset's 16-32-64-128)"
    )
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    parser.add_argument("--batch", type=int, default=256, help="images per call (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def measure(args, model_options: dict | None = None) -> list[str]:
    """Run the comparison; return its title and Markdown table as lines. ``model_options``
    (ModelConfig fields) replace the model's sizes (``tools.gpu_check --cpu-smoke``: a tiny one)."""
    overrides = {} if args.full else dict(widths=(16, 32, 64, 128), attn_dim=32, attn_heads=2, attn_depth=1)
    overrides = {**overrides, **(model_options or {})}
    model = models.build(args.model, 7, input_size=args.size, **overrides)
    members = [models.init(model, jax.random.key(i)) for i in range(args.members)]
    stacked = jax.device_put(fga.stack(members))
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8))
    eval_step = train.make_eval_step(model)

    contenders = {}
    start = time.perf_counter()
    eval_step.lower(members[0]["params"], members[0]["batch_stats"], images).compile()
    contenders["loop"] = (
        lambda: [eval_step(v["params"], v["batch_stats"], images) for v in members],
        time.perf_counter() - start,
    )
    for mapping in ("map", "vmap"):
        step = ensemble.make_ensemble_step(model, mapping)
        start = time.perf_counter()
        compiled = step.lower(stacked, images).compile()
        contenders[mapping] = ((lambda c: lambda: c(stacked, images))(compiled), time.perf_counter() - start)

    outputs = {name: np.stack(jax.block_until_ready(fn())) for name, (fn, _) in contenders.items()}  # warm-up
    for name in ("map", "vmap"):
        np.testing.assert_allclose(outputs[name], outputs["loop"], rtol=1e-4, atol=1e-4)
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (fn, _) in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)

    lines = [
        f"Ensemble evaluation: {args.members} x {args.model} ({'full widths' if args.full and not model_options else 'widths ' + '-'.join(map(str, model.config.widths))}), "
        f"batch {args.batch}, {args.size}x{args.size}, {benchmarking.device()}, median of {args.rounds} rounds "
        "after one warm-up",
        "",
        "| contender | compile (s) | batch median (s) | min / max (s) | images/s (all members) | vs loop |",
        "|---|---|---|---|---|---|",
    ]
    loop = statistics.median(times["loop"])
    for name, (_, compile_s) in contenders.items():
        t = times[name]
        median = statistics.median(t)
        label = {"loop": "Python loop of jitted calls", "map": "one call, lax.map", "vmap": "one call, vmap"}[name]
        lines.append(
            f"| {label} | {compile_s:.1f} | {median:.3f} | {min(t):.3f} / {max(t):.3f} | "
            f"{args.batch / median:.0f} | {loop / median:.2f}x |"
        )
    return lines


def main(argv=None):
    print("\n".join(measure(parse_args(argv))))


if __name__ == "__main__":
    main()
