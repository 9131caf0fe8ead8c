"""Helpers shared by the tests (no test module imports another): the tiny training run every
program test trains, built with ``faml_jax.presets.preset`` as a user would, and a plain NumPy
reference of the ensemble decisions."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from faml_jax.config import RunConfig
from faml_jax.presets import preset
from faml_jax.versions import stamped
from faml_jax.xla_flags import is_measured_jaxlib
from tools.gpu_check import TINY

# The suite's networks are tiny, so compiling them is most of its time. Two code-generation
# settings of XLA's CPU backend halve it and change only how the CPU code is generated, not what it
# computes (XLA's HLO passes all run): LLVM's optimisation level 0 (measured: a tiny R18+FAML's
# initialiser 15 -> 6 s, its train step 12 -> 6.5 s) and the legacy elemental emitters for fusions
# instead of the MLIR fusion emitters (train step 6.1 -> 3.5 s; tests/test_train.py 227 -> 182 s).
# FAML_JAX_TEST_FAST_COMPILE=0 compiles as the programs do. The second flag only with the jaxlib
# release it was measured with: jaxlib 0.11 no longer knows it, and XLA aborts on an unknown flag.
FAST_COMPILE = "--xla_backend_optimization_level=0"
FAST_COMPILE_MEASURED = "--xla_cpu_use_fusion_emitters=false"


def suite_xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for the suite and the programs it starts: ``devices`` forced CPU devices and
    the fast-compile flag (the programs add their own defaults, ``faml_jax.xla_flags``)."""
    fast = ""
    if os.environ.get("FAML_JAX_TEST_FAST_COMPILE", "1") != "0":
        fast = f"{FAST_COMPILE} {FAST_COMPILE_MEASURED}" if is_measured_jaxlib() else FAST_COMPILE
    return f"--xla_force_host_platform_device_count={devices} {fast}".strip()


ROOT = Path(__file__).resolve().parents[1]


def program_env(**extra) -> dict:
    """The environment of a program a test starts: this checkout and its tests/ first on
    ``PYTHONPATH``, then the suite's own (packages installed with ``pip --target``, as on the GPU
    image, stay importable), plus ``extra`` variables."""
    path = [str(ROOT), str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if "FAML_JAX_TEST_PROGRAM_MIN_COMPILE_SECS" in os.environ:  # conftest: the programs' cache threshold
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = os.environ["FAML_JAX_TEST_PROGRAM_MIN_COMPILE_SECS"]
    return {**env, **extra}


def require_torch(module: str = "torch"):
    """Import ``module`` of the torch extra (``torch``, ``torchvision.transforms.functional``, ...):
    required when ``FAML_JAX_REQUIRE_TORCH=1`` (``make test``: these tests never skip in CI),
    otherwise the test skips without it."""
    if os.environ.get("FAML_JAX_REQUIRE_TORCH") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="the torch extra is not installed (pip install -e '.[torch]')")


# A run small enough for the CPU: 96 training images of 32 px, batch 16 over the 4 test devices.
# The detector's window is 2 epochs with huge ranges, so a run switches to Lr2 after epoch 2.
# One BasicBlock per stage (every kind of layer still there: FA stem, stride-2 projections,
# attention blocks after stages 1-3) compiles in about 3/4 of the time of ResNet18's two.
# The network of the GPU check's smoke run (and tools/bench_startup), at 32 px.
TINY_MODEL = {**TINY, "input_size": 32}


# The tiny run as program flags (``tiny_config``'s network and data set, without attention
# blocks, one epoch unless given): the programs' runs in the tests share its compiled step.
TINY_FLAGS = [
    *("--widths", "8,16,16,32", "--input-size", "32", "--train-size", "96", "--test-size", "40"),
    *("--batch-size", "16", "--threads", "2", "--no-progress", "--no-attention"),
]


def randomise_batch_norm(net, min_var: float = 0.5):
    """A torch network's BatchNorm weights, biases and running statistics drawn at random
    (seeded; running variances in [min_var, min_var + 1)), so that converted statistics matter."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(min_var + torch.rand(n, generator=generator))
    return net


def tiny_config(data_dir, epochs: int, attention: bool = False, **overrides) -> RunConfig:
    """R18+FAML with ML (p 0.5, WCE) on a 96/40-image synthetic set of 32 px, seed 7.

    Without the attention blocks unless ``attention``: they are two thirds of the tiny network's
    compile time (initialiser and step) and nothing the run tests check (resume, faults,
    evolution, outputs) depends on them; the tests of the blocks, their maps, the step, export
    and prediction train and use them."""
    return preset(
        "synthetic",
        model_options={**TINY_MODEL, "attention": attention},
        loss=dict(kind="ml", p_lsr=0.5, weighted=True),
        schedule=dict(lr1=1e-3, window=2, loss_range=10.0, acc_range=10.0),
        data=dict(data_dir=str(data_dir), synthetic=dict(train_size=96, test_size=40, image_size=32), num_threads=2),
        **{"epochs": epochs, "batch_size": 16, "seed": 7, "eval_batch_size": 32, "keep_checkpoints": 2, **overrides},
    )


def reference_predict(logits, strategy, alpha=1.9, beta=1.0):
    """Plain numpy, one sample at a time: the votes of Eq. 10-12 / majority / Eq. 13, ties broken
    by NOI and then by the lowest class index. Returns (predictions, ambiguous): ``ambiguous``
    marks samples whose decision rests on two NOI sums that are equal up to rounding (float32
    and float64 sums may order them differently)."""
    logits = np.asarray(logits, np.float64)
    m, b, c = logits.shape
    out, ambiguous = [], []
    for i in range(b):
        votes, noi = np.zeros(c), np.zeros(c)
        for k in range(m):
            order = np.argsort(-logits[k, i], kind="stable")  # equal logits: lower index first
            if strategy == "t2v":
                votes[order[0]] += alpha
                votes[order[1]] += beta
            else:
                votes[order[0]] += 1
            e = np.exp(logits[k, i] - logits[k, i].max())
            noi += e / e.sum()
        candidates = np.arange(c) if strategy == "noi" else np.flatnonzero(np.isclose(votes, votes.max()))
        best = np.sort(noi[candidates])[::-1]
        ambiguous.append(len(candidates) > 1 and best[0] - best[1] < 1e-5)
        out.append(int(candidates[np.argmax(noi[candidates])]))
    return np.asarray(out), np.asarray(ambiguous)


def jittered_variables(config: RunConfig, seed: int) -> dict:
    """A network's variables at initialisation, every parameter moved by noise (so the attention
    blocks' zero-initialised back-projection no longer makes them the identity)."""
    import jax

    from faml_jax import models

    variables = models.init(models.network(config.model), jax.random.key(seed))
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
    moved = [leaf + 0.05 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return {"params": jax.tree.unflatten(tree, moved), "batch_stats": variables["batch_stats"]}


def write_run(workdir, config: RunConfig, variables: dict, epoch: int = 1, test_accuracy: float = 0.5):
    """A finished run folder written by hand (config.json, one checkpoint, metrics.jsonl), as
    ``trainer.fit`` leaves it, without training."""
    import json
    from pathlib import Path

    import jax

    from faml_jax import train
    from faml_jax.checkpoint import Checkpoints
    from faml_jax.records import config_to_json

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(stamped(config_to_json(config))))
    from faml_jax import models

    state = train.create_train_state(
        models.network(config.model), train.make_optimizer(config.optim, 1e-3), jax.random.key(0)
    )
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    checkpoints = Checkpoints(workdir)
    checkpoints.save(epoch, state, {"epoch": epoch})
    checkpoints.close()
    (workdir / "metrics.jsonl").write_text(
        json.dumps({"epoch": epoch, "test_accuracy": test_accuracy, "train_loss": 1.0}) + "\n"
    )
    return workdir


def without_timings(lines):
    """metrics.jsonl lines without the fields that are timings."""
    from faml_jax import trainer

    return [{k: v for k, v in json.loads(line).items() if k not in trainer.TIMING_FIELDS} for line in lines]


def restored_state(workdir, config: RunConfig | None = None, epoch: int | None = None):
    """The train state (on the host) and record of checkpoint ``epoch`` (default: the latest) of
    the run in ``workdir`` trained with ``config`` (default: its config.json): the tests' one way
    of reading a run's weights back."""
    from faml_jax import models, train
    from faml_jax.checkpoint import Checkpoints
    from faml_jax.records import run_config_from_json

    workdir = Path(workdir)
    if config is None:
        config = run_config_from_json(json.loads((workdir / "config.json").read_text()))
    model = models.network(config.model)
    like = train.create_train_state(model, train.make_optimizer(config.optim, config.schedule.lr1), jax.random.key(0))
    checkpoints = Checkpoints(workdir)
    try:
        state, record = checkpoints.restore(checkpoints.latest_epoch() if epoch is None else epoch, like)
    finally:
        checkpoints.close()
    return jax.device_get(state), record


def restored_variables(workdir, config: RunConfig | None = None, epoch: int | None = None) -> dict:
    """``{"params", "batch_stats"}`` of a run's checkpoint (``restored_state``)."""
    state, _ = restored_state(workdir, config, epoch)
    return {"params": state.params, "batch_stats": state.batch_stats}


_REFERENCES: dict = {}


def _reference_params(reference_dir, config):
    """``restored_state`` of a reference run, read once (the many resumed runs compared with one
    reference would read it each time; the key holds the newest checkpoint's digest's mtime, so a
    changed reference is read again)."""
    from faml_jax.checkpoint import DIGEST

    digests = sorted((reference_dir / "checkpoints").glob(f"*/{DIGEST}"), key=lambda p: int(p.parent.name))
    key = (
        str(reference_dir),
        config,
        str(digests[-1]) if digests else None,
        digests[-1].stat().st_mtime_ns if digests else None,
    )
    if key not in _REFERENCES:
        _REFERENCES[key] = restored_state(reference_dir, config)
    return _REFERENCES[key]


def assert_same_run(workdir, reference_dir, config, epochs: int = 3):
    """``workdir`` (resumed after an interruption) ended exactly as the uninterrupted run in
    ``reference_dir`` (a ``tiny_config`` run): metrics but timings, final weights and statistics,
    regime switch, last test logits."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    ref_lines = (reference_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(ref_lines) == epochs
    assert without_timings(lines) == without_timings(ref_lines)
    state, record = restored_state(workdir, config)
    ref_state, ref_record = _reference_params(reference_dir, config)
    chex.assert_trees_all_equal(state.params, ref_state.params)
    chex.assert_trees_all_equal(state.batch_stats, ref_state.batch_stats)
    assert record["lr_state"] == ref_record["lr_state"] and record["lr_state"]["switch_epoch"] == 2  # 0-based
    np.testing.assert_array_equal(
        np.load(workdir / "test_logits" / f"epoch_{epochs:04d}.npz")["logits"],
        np.load(reference_dir / "test_logits" / f"epoch_{epochs:04d}.npz")["logits"],
    )


def png16(levels: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale for (H, W), RGB for (H, W, 3)) of uint16 ``levels``, written byte by
    byte from the PNG specification (Pillow cannot write 16-bit colour)."""
    import struct
    import zlib

    height, width = levels.shape[:2]
    colour_type = 2 if levels.ndim == 3 else 0
    rows = b"".join(b"\x00" + levels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
