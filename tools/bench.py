"""``make bench``: faml_jax's speed side by side with PyTorch, in one run, appended to BENCHMARKS.md.

    python -m tools.bench                            # every section, this backend's defaults
    python -m tools.bench --sections train           # only the train-step comparison
    python -m tools.bench --sizes 112 --no-append    # print only, do not touch BENCHMARKS.md

Sections:

  train     Train-step images/s of ``"r18"`` and ``"r18_faml"`` (faml_jax's data-parallel step:
            uint8 images in, flip and normalisation on the device, the ML loss, Adam) at each
            ``--sizes``, and of their PyTorch counterparts with the same batch, cross-entropy, Adam
            with the same hyperparameters and the same thread count, eager and
            ``torch.compile``-d: torchvision's ``resnet18`` for r18 and the PyTorch twin of
            R18+FAML (``tools/torch_twin.py``, the same layers and FA/attention blocks) for
            r18_faml. The contenders take turns window by window, so machine noise hits all of
            them; each reports the median over ``--windows`` timed windows after warm-up, and its
            compile time (PyTorch: the first step). The headline is the ratio of step times, each
            faml_jax model / its PyTorch counterpart in eager mode. On a GPU also the model FLOPs
            utilisation: FLOPs per image of the compiled step (XLA's cost analysis) x images/s /
            the GPU's peak.
  ensemble  6 members evaluated by one compiled call over stacked variables vs a Python loop of
            jitted calls (``tools/bench_ensemble.py``).
  data      Input pipeline images/s for RAF-style and AffectNet-style JPEGs (``tools/bench_data.py``).

Defaults per backend: CPU: batch 16, float32, 112 and 224 px, PyTorch in float32. GPU: batch 256,
bfloat16 compute (float32 parameters and BatchNorm statistics), 224 px, PyTorch with AMP (bfloat16)
and channels_last. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from faml_jax import models, train
from faml_jax.config import LossConfig, OptimConfig
from faml_jax.writer import write_atomic
from tools import bench_data, bench_ensemble
from tools.benchmarking import machine, versions

LEARNING_RATE = 3e-4
NUM_CLASSES = 7
SECTIONS = ("train", "ensemble", "data")

# Dense bfloat16 peak FLOP/s (no sparsity), from the vendors' data sheets, for the FLOPs utilisation.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def build_parser() -> argparse.ArgumentParser:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--models", nargs="+", default=["r18", "r18_faml"], choices=sorted(models.PRESETS))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[224] if gpu else [112, 224],
        help="input sides in pixels (default: 112 224 on CPU, 224 on GPU)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=256 if gpu else 16,
        help="global batch of every train step (default: 16 on CPU, 256 on GPU)",
    )
    parser.add_argument(
        "--dtype",
        default="bfloat16" if gpu else "float32",
        choices=["float32", "bfloat16"],
        help="faml_jax compute dtype (default: bfloat16 on GPU, float32 on CPU); PyTorch uses AMP when bfloat16",
    )
    parser.add_argument("--windows", type=int, default=5, help="timed windows per contender (default 5)")
    parser.add_argument(
        "--steps", type=int, default=20 if gpu else 2, help="steps per window (default: 2 on CPU, 20 on GPU)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (default 2)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--no-torch-compile", action="store_true", help="leave out torch.compile (about 40 s per size on our CPU)"
    )
    parser.add_argument("--ensemble-size", type=int, default=112, help="ensemble section: input side (default 112)")
    parser.add_argument("--ensemble-batch", type=int, default=64, help="ensemble section: batch (default 64)")
    parser.add_argument("--data-images", type=int, default=1024, help="data section: JPEGs per fixture (default 1024)")
    parser.add_argument(
        "--data-workdir", default="/tmp/faml_jax-bench-data", help="data section: fixture folders (kept)"
    )
    parser.add_argument(
        "--out", default="BENCHMARKS.md", help="file the tables are appended to (default BENCHMARKS.md)"
    )
    parser.add_argument("--no-append", action="store_true", help="print the tables only")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class JaxStep:
    """faml_jax's production train step (``train.parallel_train_step`` over the local devices)."""

    framework = "faml_jax"
    compiled = True

    def __init__(self, name: str, size: int, batch: int, dtype: str, **overrides):
        devices = jax.local_devices()
        self.model_name = name
        self.label = f"faml_jax {name}" + (" bf16" if dtype == "bfloat16" else "")
        self.times: list[float] = []
        model = models.build(name, NUM_CLASSES, input_size=size, dtype=dtype, **overrides)
        self.config = model.config
        tx = train.make_optimizer(OptimConfig(), LEARNING_RATE)
        self.state = train.replicate(train.create_train_state(model, tx, jax.random.key(0)), devices)
        rng = np.random.default_rng(0)
        self.batch = train.shard(
            {
                "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
            },
            devices,
        )
        step = train.parallel_train_step(model, tx, LossConfig(kind="ml"), devices=devices)
        start = time.perf_counter()
        self.step = step.lower(self.state, self.batch, LEARNING_RATE).compile()
        self.compile_s = time.perf_counter() - start
        cost = self.step.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        per_device_batch = batch // len(devices)
        self.flops_per_image = float(cost.get("flops", float("nan"))) / per_device_batch if cost else float("nan")

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` consecutive steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, LEARNING_RATE)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / steps


class TorchStep:
    """A PyTorch counterpart: cross-entropy, Adam with faml_jax's hyperparameters, float inputs.
    ``config`` None: torchvision's ``resnet18``; otherwise the PyTorch twin of that
    ``ModelConfig`` (``tools/torch_twin.py``) with fresh weights."""

    framework = "PyTorch"

    def __init__(self, size: int, batch: int, *, compiled: bool, amp: bool, config=None, model_name: str = "r18"):
        import torch

        self.torch = torch
        self.model_name = model_name
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.amp, self.compiled, self.times = amp, compiled, []
        torch.manual_seed(0)
        if config is None:
            import torchvision

            model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
            name = "resnet18"
        else:
            from tools.torch_twin import TorchTwin

            model = TorchTwin(config)
            name = f"twin {model_name}"
        model = model.to(self.device).train()
        self.label = (
            f"PyTorch {name} " + ("torch.compile" if compiled else "eager") + (" AMP channels_last" if amp else "")
        )
        self.x = torch.randn(batch, 3, size, size, device=self.device)
        if amp:
            model = model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), device=self.device)
        self.opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
        # dynamic=False: one static graph per input size (with symbolic shapes, the second size
        # failed in Inductor on this CPU: "cannot determine truth value of Relational").
        self.forward = torch.compile(model, dynamic=False) if compiled else model
        self.flops_per_image = float("nan")
        start = time.perf_counter()
        self.run(1)
        self.compile_s = time.perf_counter() - start

    def _step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.amp):
            loss = torch.nn.functional.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in kind), None)


def train_results(args, log=log, **overrides) -> list[dict]:
    """Time every contender at every ``args.sizes``; one dict per contender and size (label,
    framework, model, size, batch, compile_s, times, median_s, images_per_s, flops_per_image,
    mfu, vs_torch_eager: step time / the same model's PyTorch eager step). ``overrides``:
    ``ModelConfig`` fields for faml_jax and the twin (the smoke test's tiny widths)."""
    gpu = jax.default_backend() == "gpu"
    peak = peak_flops() if gpu else None
    results = []
    for size in args.sizes:
        contenders = []
        for name in args.models:
            log(f"compiling faml_jax {name} at {size} px ...")
            contenders.append(JaxStep(name, size, args.batch, args.dtype, **overrides))
        if not args.no_torch:
            counterparts = {"r18": None}  # torchvision's resnet18
            counterparts.update(
                {
                    c.model_name: dataclasses.replace(c.config, dtype="float32")
                    for c in contenders
                    if c.model_name != "r18"
                }
            )
            if overrides:  # tiny widths: torchvision's resnet18 has its own, so the twin stands in
                counterparts["r18"] = next(
                    (dataclasses.replace(c.config, dtype="float32") for c in contenders if c.model_name == "r18"), None
                )
            for name, config in counterparts.items():
                if name not in args.models:
                    continue
                for compiled in (False,) if args.no_torch_compile else (False, True):
                    log(f"PyTorch {name} {'torch.compile' if compiled else 'eager'} at {size} px ...")
                    try:
                        contenders.append(
                            TorchStep(
                                size,
                                args.batch,
                                compiled=compiled,
                                amp=args.dtype == "bfloat16",
                                config=config,
                                model_name=name,
                            )
                        )
                    except Exception as error:  # torch.compile is "where it works": report, go on
                        log(f"  left out: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        for contender in contenders:
            contender.run(args.warmup)
        for window in range(args.windows):
            for contender in contenders:
                contender.times.append(contender.run(args.steps))
            log(
                f"  window {window + 1}/{args.windows}: "
                + ", ".join(f"{c.label} {c.times[-1]:.3f} s" for c in contenders)
            )
        eager = {
            c.model_name: statistics.median(c.times) for c in contenders if c.framework == "PyTorch" and not c.compiled
        }
        for c in contenders:
            median = statistics.median(c.times)
            flops = c.flops_per_image
            results.append(
                {
                    "label": c.label,
                    "framework": c.framework,
                    "model": c.model_name,
                    "compiled": c.compiled,
                    "size": size,
                    "batch": args.batch,
                    "dtype": args.dtype,
                    "compile_s": c.compile_s,
                    "times": c.times,
                    "median_s": median,
                    "images_per_s": args.batch / median,
                    "flops_per_image": flops if flops == flops else None,
                    "mfu": flops * args.batch / median / peak if peak and flops == flops else None,
                    "vs_torch_eager": median / eager[c.model_name] if c.model_name in eager else None,
                    "torch_threads": c.torch.get_num_threads() if c.framework == "PyTorch" else None,
                }
            )
    return results


def train_table(args, results: list[dict]) -> list[str]:
    """``train_results`` as Markdown: a title and a table per input size."""
    gpu = jax.default_backend() == "gpu"
    lines = []
    for size in dict.fromkeys(r["size"] for r in results):
        rows = [r for r in results if r["size"] == size]
        threads = next((r["torch_threads"] for r in rows if r["torch_threads"]), None)
        threads = f"; PyTorch {threads} threads, XLA all {os.cpu_count()} cores" if threads and not gpu else ""
        lines += [
            f"Train step, {size}x{size}, batch {args.batch}, {args.dtype if args.dtype == 'float32' else 'bfloat16 compute'}, "
            f"{len(jax.local_devices())} x {jax.devices()[0].device_kind}{threads}; median of {args.windows} windows "
            f"of {args.steps} steps after {args.warmup} warm-up",
            "",
            "| contender | compile (s) | step median (s) | min / max (s) | images/s | step time / PyTorch eager of the same model |"
            + (" GFLOP/image | MFU |" if gpu else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if gpu else ""),
        ]
        for r in rows:
            t = r["times"]
            ratio = f"{r['vs_torch_eager']:.2f}" if r["vs_torch_eager"] is not None else "n/a"
            row = (
                f"| {r['label']} | {r['compile_s']:.1f} | {r['median_s']:.4f} | {min(t):.4f} / {max(t):.4f} | "
                f"{r['images_per_s']:,.1f} | {ratio} |"
            )
            if gpu:
                flops, mfu = r["flops_per_image"], r["mfu"]
                row += f" {flops / 1e9:.2f} |" if flops else " n/a |"
                row += f" {mfu:.1%} |" if mfu is not None else " n/a |"
            lines.append(row)
        lines.append("")
    return lines


def train_section(args) -> list[str]:
    return train_table(args, train_results(args))


def append(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to ``path`` atomically (a new file replaces the old one when complete)."""
    old = (
        path.read_text()
        if path.exists()
        else (
            "# Benchmarks\n\nEach section was appended by `make bench` (`tools/bench.py`) on the machine it names; "
            "newest last. Rerun it to add yours.\n"
        )
    )
    write_atomic(path, old.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n")


def main(argv=None):
    args = parse_args(argv)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m tools.bench" + ("".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)))
    lines = [
        f"## {now}: {machine()}",
        "",
        f"`{command}`; {versions()}; XLA_FLAGS=`{os.environ.get('XLA_FLAGS', '')}`",
        "",
    ]
    if "train" in args.sections:
        lines += train_section(args)
    if "ensemble" in args.sections:
        log("ensemble evaluation ...")
        ensemble_args = bench_ensemble.parse_args(
            ["--full", "--size", str(args.ensemble_size), "--batch", str(args.ensemble_batch), "--rounds", "3"]
        )
        lines += bench_ensemble.measure(ensemble_args) + [""]
    if "data" in args.sections:
        log("input pipeline ...")
        data_args = bench_data.parse_args(["--images", str(args.data_images), "--workdir", args.data_workdir])
        lines += bench_data.measure(data_args, log=log) + [""]
    print("\n".join(lines))
    if not args.no_append:
        append(Path(args.out), lines)
        log(f"appended to {args.out}")


if __name__ == "__main__":
    main()
