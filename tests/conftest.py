"""Test set-up: four CPU devices, so data-parallel code is tested on this machine.

The flag must be set before jax creates its devices, hence before anything imports jax.
"""

import os

NUM_TEST_DEVICES = 4

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={NUM_TEST_DEVICES}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    found = jax.local_devices()
    assert len(found) >= NUM_TEST_DEVICES, f"expected {NUM_TEST_DEVICES} forced CPU devices, got {found}"
    return found[:NUM_TEST_DEVICES]
