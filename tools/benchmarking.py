"""What the benchmarks in ``tools/`` share: the line naming the machine a table was measured on,
the package versions, and the median time of repeated calls. Timings are measurements for
BENCHMARKS.md, never test assertions."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata

import jax


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """Cores, CPU, memory and accelerator: "2-core AMD EPYC ..., 24 GiB, no GPU"."""
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    accelerator = "no GPU" if device.platform == "cpu" else f"{len(jax.devices())} x {device.device_kind}"
    return f"{os.cpu_count()}-core {cpu_name()}{memory}, {accelerator}"


def device() -> str:
    """The device a table ran on and the jax version, for a table's title: "cpu (AMD EPYC ...),
    jax 0.10.2"."""
    return f"{jax.devices()[0].device_kind} ({cpu_name()}), jax {jax.__version__}"


def versions() -> str:
    """Python and the versions of the packages a benchmark compares."""
    found = []
    for name in ("jax", "jaxlib", "flax", "optax", "grain", "torch", "torchvision"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


def median_seconds(fn: Callable[[], object], rounds: int, *, warm_up: bool = True) -> float:
    """The median seconds of ``rounds`` calls of ``fn`` (after one untimed call that compiles,
    unless ``warm_up`` is False). ``fn`` must wait for its result (``jax.block_until_ready``)."""
    if warm_up:
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
