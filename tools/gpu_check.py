"""``make gpu-check OUT=dir``: every GPU check in one go, for a few borrowed minutes of one GPU.

    python -m tools.gpu_check --out gpu-results              # on the GPU machine (after make gpu-install)
    python -m tools.gpu_check --out /tmp/smoke --cpu-smoke   # the same script, tiny, on a CPU (CI)

Sections, in this order, each timed and recorded even when it fails (the others still run):

  environment  Python, package versions, devices, XLA flags.
  tests        ``pytest -m gpu``: the tests that check the accelerator paths (bfloat16 step against
               float32, the pmapped step on all local devices against one, ensemble evaluation
               with ``lax.map`` and ``vmap``, ONNX/StableHLO export parity), run on this backend.
  train_step   Train-step images/s, FLOPs per image (XLA's cost analysis) and MFU of faml_jax r18
               and r18_faml at 224 px, bfloat16, batch 256, against torchvision's resnet18 and the
               PyTorch twin of R18+FAML (``tools/torch_twin.py``) with AMP bfloat16, channels_last,
               eager and ``torch.compile`` (``tools/bench.py``'s train section).
  ensemble     6 x r18_faml evaluated by a loop of jitted calls, ``lax.map`` and ``vmap``: the
               numbers that fill ``faml_jax.ensemble.MAPPING_BY_BACKEND`` for GPUs.
  data         The input pipeline on all cores (``tools/bench_data.py``).
  end_to_end   ``experiments.train`` for 2 epochs on synthetic faces at 224 px: images/s of whole
               epochs, the loader included.

Writes ``gpu_check.json`` (everything, machine-readable) and ``gpu_check.md`` (the tables) into
``--out``, rewritten after every section, so an interrupted check keeps what it measured.
``--cpu-smoke`` runs every section with tiny sizes (32 px, batch 8, one window, no
torch.compile, 64 images) in about a minute: it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

SECTIONS = ("environment", "tests", "train_step", "ensemble", "data", "end_to_end")
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "grain",
    "tensorflow-datasets",
    "array-record",
    "tensorboardX",
    "numpy",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
)
ROOT = Path(__file__).resolve().parents[1]
# The modules holding the tests marked gpu (collecting only these needs no optional extra).
GPU_TEST_FILES = ("tests/test_train.py", "tests/test_models.py", "tests/test_ensemble.py", "tests/test_export.py")
TINY = dict(widths=(8, 16, 16, 32), stage_depths=(1, 1, 1, 1), attn_dim=16, attn_heads=2, attn_depth=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md (created)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on any backend: checks the script (CI)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="default: all")
    parser.add_argument(
        "--size", type=int, help="input side of the train step and end-to-end run (default 224; smoke 32)"
    )
    parser.add_argument("--batch", type=int, help="global batch of the train step (default 256; smoke 8)")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds: sections not started by then are skipped and recorded so (default 420)",
    )
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment(args) -> dict:
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
    }


def child_env() -> dict:
    """The environment of the programs the check starts: this checkout first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def tests(args) -> dict:
    """``pytest -m gpu`` in a subprocess (the smoke run only collects them: the CPU suite runs them)."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TEST_FILES]
    if args.cpu_smoke:
        command.insert(4, "--collect-only")
    env = child_env()
    if not args.cpu_smoke:
        env["FAML_JAX_TEST_FAST_COMPILE"] = "0"  # the suite's CPU compile shortcuts would slow GPU kernels
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = (result.stdout + result.stderr).strip().splitlines()
    summary = next(
        (
            line
            for line in reversed(output)
            if " passed" in line or " failed" in line or "collected" in line or " selected" in line or "error" in line
        ),
        output[-1] if output else "",
    )
    if result.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {result.returncode}: {summary}\n" + "\n".join(output[-40:]))
    return {"command": " ".join(command[2:]), "summary": summary, "tail": output[-25:]}


def train_step(args) -> dict:
    from tools import bench

    bench_args = bench.parse_args(
        [
            "--sizes",
            str(args.size),
            "--batch",
            str(args.batch),
            "--windows",
            "1" if args.cpu_smoke else "3",
            "--steps",
            "1" if args.cpu_smoke else "10",
            "--warmup",
            "1" if args.cpu_smoke else "3",
            *(["--no-torch-compile", "--dtype", "float32"] if args.cpu_smoke else []),
            "--no-append",
        ]
    )
    if importlib.util.find_spec("torch") is None:
        bench_args.no_torch = True
        log("torch is not installed: faml_jax alone")
    results = bench.train_results(bench_args, log=log, **(TINY if args.cpu_smoke else {}))
    return {"results": results, "table": bench.train_table(bench_args, results)}


def ensemble(args) -> dict:
    from tools import bench_ensemble

    options = (
        ["--size", "32", "--batch", "8", "--rounds", "1", "--members", "2"]
        if args.cpu_smoke
        else ["--full", "--size", "224", "--batch", "256", "--rounds", "5"]
    )
    return {"table": bench_ensemble.measure(bench_ensemble.parse_args(options), TINY if args.cpu_smoke else None)}


def data_section(args) -> dict:
    from tools import bench_data

    workdir = Path(tempfile.gettempdir()) / "faml_jax-gpu-check-data"  # not under --out: only the results come back
    options = (
        ["--images", "64", "--size", "32", "--batch", "8", "--threads", "2", "--rounds", "1"]
        if args.cpu_smoke
        else ["--images", "2048", "--size", "224", "--batch", "256", "--threads", str(os.cpu_count()), "--rounds", "3"]
    )
    return {"table": bench_data.measure(bench_data.parse_args([*options, "--workdir", str(workdir)]), log=log)}


def end_to_end(args) -> dict:
    """Two epochs of ``experiments.train`` on synthetic faces; images/s of each whole epoch."""
    with tempfile.TemporaryDirectory(prefix="faml_jax-gpu-check-") as tmp:
        workdir = Path(tmp) / "run"
        size = str(args.size)
        options = [
            "--epochs",
            "2",
            "--input-size",
            size,
            "--no-progress",
            "--workdir",
            str(workdir),
            "--data-dir",
            str(Path(tmp) / "data"),
        ]
        if args.cpu_smoke:
            # (the test suite's program runs use this network and batch: its compilation cache has the step)
            options += [
                "--widths",
                "8,16,16,32",
                "--train-size",
                "96",
                "--test-size",
                "40",
                "--batch-size",
                "16",
                "--no-attention",
            ]
        else:
            options += [
                "--model",
                "r18_faml",
                "--widths",
                "64,128,256,512",
                "--train-size",
                "4096",
                "--test-size",
                "1024",
                "--batch-size",
                str(args.batch),
                "--threads",
                str(os.cpu_count()),
            ]
        command = [sys.executable, "-m", "experiments.train", *options]
        env = child_env()
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(
                f"experiments.train exited {result.returncode}: "
                + "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            )
        epochs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {
        "command": " ".join(command[2:]),
        "wall_s": seconds,
        "epochs": epochs,
        "images_per_s": [e.get("images_per_s") for e in epochs],
    }


RUNNERS = {
    "environment": environment,
    "tests": tests,
    "train_step": train_step,
    "ensemble": ensemble,
    "data": data_section,
    "end_to_end": end_to_end,
}


def markdown(report: dict) -> str:
    env = report["sections"].get("environment", {}).get("result", {})
    lines = [f"# GPU check, {report['started']}" + (" (CPU smoke run)" if report["cpu_smoke"] else ""), ""]
    if env:
        lines += [
            f"{env['device_count']} x {env['device_kind']} ({env['backend']}), {env['cpu_count']} CPU cores, "
            f"Python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
            "",
        ]
    for name, section in report["sections"].items():
        lines.append(f"## {name}: {section['status']} ({section['seconds']:.0f} s)")
        lines.append("")
        result = section.get("result") or {}
        if section["status"] == "failed":
            lines += ["```", section["error"], "```"]
        elif "table" in result:
            lines += result["table"]
        elif name == "tests":
            lines.append(f"`{result['command']}`: {result['summary']}")
        elif name == "end_to_end":
            rates = ", ".join(f"{r:,.0f}" for r in result["images_per_s"] if r)
            lines.append(f"`{result['command']}`: {result['wall_s']:.0f} s in all; images/s per epoch: {rates}")
        lines.append("")
    return "\n".join(lines)


def write(out: Path, report: dict) -> None:
    from faml_jax.writer import write_atomic

    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=1, default=str)),
        ("gpu_check.md", markdown(report)),
    ):
        write_atomic(out / name, text)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.size = args.size or (32 if args.cpu_smoke else 224)
    args.batch = args.batch or (8 if args.cpu_smoke else 256)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: cannot create --out {out}: {error.strerror}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_smoke": args.cpu_smoke,
        "size": args.size,
        "batch": args.batch,
        "sections": {},
    }
    for name in args.sections:
        if time.perf_counter() - started > args.budget:
            report["sections"][name] = {
                "status": "skipped",
                "seconds": 0.0,
                "error": f"over the {args.budget:.0f} s budget",
            }
            continue
        log(f"{name} ...")
        start = time.perf_counter()
        try:
            section = {"status": "ok", "result": RUNNERS[name](args)}
        except Exception as error:  # record it; the other sections still run
            section = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
            log(f"{name} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        section["seconds"] = time.perf_counter() - start
        report["sections"][name] = section
        write(out, report)
    report["seconds"] = time.perf_counter() - started
    write(out, report)
    failed = [name for name, s in report["sections"].items() if s["status"] == "failed"]
    print(
        f"gpu check: {len(report['sections']) - len(failed)} of {len(report['sections'])} sections ok"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; {report['seconds']:.0f} s; {out / 'gpu_check.md'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
