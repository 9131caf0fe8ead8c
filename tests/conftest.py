"""Test set-up: four CPU devices, so data-parallel code is tested on this machine, and the
programs' default XLA flags (faml_jax.xla_flags).

The flag must be set before jax creates its devices, hence before anything imports jax.
"""

import os

from faml_jax.xla_flags import set_default_flags

NUM_TEST_DEVICES = 4

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={NUM_TEST_DEVICES}".strip()
set_default_flags()  # the programs' XLA flags, so tests run what users run

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    found = jax.local_devices()
    assert len(found) >= NUM_TEST_DEVICES, f"expected {NUM_TEST_DEVICES} forced CPU devices, got {found}"
    return found[:NUM_TEST_DEVICES]
