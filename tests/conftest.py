"""Test set-up: four CPU devices, so data-parallel code is tested on this machine, the programs'
default XLA flags (faml_jax.xla_flags), and a persistent JAX compilation cache.

The flags must be set before jax creates its devices (its first backend).
"""

import gc
import os
import signal
import threading

# A persistent compilation cache for the suite and the programs it starts in subprocesses (they
# inherit the environment): the suite compiles the same steps again and again (the tiny run in the
# train, evolve, ensemble and ablation tests, their subprocesses), and a second run finds them all.
# Kept beside the synthetic data's cache; FAML_JAX_TEST_JAX_CACHE names another folder, "0" none.
_cache = os.environ.get("FAML_JAX_TEST_JAX_CACHE") or os.path.join(
    os.environ.get("FAML_JAX_CACHE") or os.path.expanduser("~/.cache/faml_jax"), "jax-compilation-cache"
)
if _cache != "0":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    # Programs that take a second or more to compile: the train steps, evaluators and initialisers
    # the tests and their subprocesses share. The thousands of one-primitive programs of op-by-op
    # forwards compile faster than they are hashed, written and read back (measured: a cold run of
    # test_models, test_maps and test_ensemble 42.8 s with every program cached, 40.3 s with these).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    # The programs the tests start (helpers.program_env) cache what takes 0.05 s or more: each of
    # them compiles the tiny run's small programs afresh otherwise (measured: a second
    # `experiments.train` of the tiny run, 2 epochs, 5.7 s with the threshold of 1 s, 4.7 s with this).
    os.environ.setdefault("FAML_JAX_TEST_PROGRAM_MIN_COMPILE_SECS", "0.05")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# After the cache's settings: jax reads its JAX_* settings when it is imported (helpers imports
# it), XLA_FLAGS only when it creates its first backend.
from helpers import suite_xla_flags  # noqa: E402

from faml_jax.xla_flags import set_default_flags  # noqa: E402

NUM_TEST_DEVICES = 4

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {suite_xla_flags(NUM_TEST_DEVICES)}".strip()
set_default_flags()  # the programs' XLA flags, so tests run what users run

import jax  # noqa: E402
import pytest  # noqa: E402

# A suite started in the background by a non-interactive shell (`pytest ... &` in a script, CI)
# inherits SIGINT ignored, and Python then leaves it ignored: the tests that send SIGINT to the
# process or to the programs they start would see nothing. Python's own handler is put back for
# the session; the programs the tests start get SIGINT's default with it (exec keeps a signal
# ignored, but resets a handled one to its default, and Python installs its handler again).
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Python's cyclic garbage collector: the suite traces thousands of programs, allocating millions of
# short-lived objects, and every full collection walked all the long-lived ones (jax, flax, numpy,
# torch modules). Those go to the permanent generation (gc.freeze) and the youngest generation is
# collected every 10,000 allocations rather than 700 (measured on tests/test_trainer.py: 1.75 s of
# collections in 1,600 runs -> 0.3 s in 330).
gc.freeze()
gc.set_threshold(10_000, 20, 100)


@pytest.fixture
def logged():
    """The messages faml_jax and its programs log (INFO and above) during a test, in order."""
    import logging

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, loggers = Collect(), [logging.getLogger(name) for name in ("faml_jax", "experiments")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield messages
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="session")
def devices():
    """The devices data-parallel tests spread over: the four forced CPU devices, or on an
    accelerator (``make gpu-check``) all its local devices (one GPU is a valid, if trivial, case)."""
    found = jax.local_devices()
    if found[0].platform != "cpu":
        return found[:NUM_TEST_DEVICES]
    assert len(found) >= NUM_TEST_DEVICES, f"expected {NUM_TEST_DEVICES} forced CPU devices, got {found}"
    return found[:NUM_TEST_DEVICES]


# The heaviest test files first (measured with --durations on our 2-core CPU, 2026-11-29), so that
# pytest-xdist, which hands whole files to its workers in this order (--dist loadfile; its default
# reordering by the number of tests per file is switched off below), ends with short files on both
# workers rather than one worker running a long file alone.
HEAVIEST_FIRST = (
    "test_faults.py",
    "test_export.py",
    "test_train.py",
    "test_multiprocess.py",
    "test_pretrained.py",
    "test_predict.py",
    "test_serve.py",
    "test_evolution.py",
    "test_trainer.py",
    "test_from_python.py",
    "test_experiments_ablation.py",
    "test_gpu_check.py",
    "test_torch_twin.py",
    "test_models.py",
    "test_fga.py",
    "test_real_datasets.py",
    "test_ensemble.py",
    "test_maps.py",
    "test_preprocess.py",
    "test_report.py",
)


def pytest_configure(config):
    # pytest-xdist sorts files by their number of tests unless told not to: the order above would be
    # lost (its order put the 77 s of the three-test multi-process file and the 35 s of the one-test From
    # Python file among the last).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
