"""Max pooling as strided slices (faml_jax.models.pooling) against flax's reduce_window pool and a
NumPy loop of PyTorch's gradient rule (each window's gradient goes to its first maximum)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faml_jax.models.pooling import max_pool
from faml_jax.xla_flags import CPU_FLAGS, is_measured_jaxlib, set_default_flags, with_defaults


def reference_grad(x, dy, window=3, stride=2, padding=1):
    """dL/dx of max pooling: per window, dy to the first (row-major) position of its maximum."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    dxp = np.zeros_like(xp)
    for n in range(b):
        for i in range(dy.shape[1]):
            for j in range(dy.shape[2]):
                for k in range(c):
                    patch = xp[n, i * stride : i * stride + window, j * stride : j * stride + window, k]
                    a, bb = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: first maximum
                    dxp[n, i * stride + a, j * stride + bb, k] += dy[n, i, j, k]
    return dxp[:, padding : padding + h, padding : padding + w]


@pytest.mark.parametrize("side", [7, 8, 9])
def test_max_pool_matches_flax_and_routes_gradients_to_the_first_maximum(side):
    rng = np.random.default_rng(side)
    x = rng.standard_normal((2, side, side, 3)).astype(np.float32)
    x = np.maximum(x, 0.0)  # ReLU outputs: windows of zeros tie
    x[0, :3, :3, 0] = 1.5  # a tie at a positive value
    y = max_pool(jnp.asarray(x))
    np.testing.assert_array_equal(y, nn.max_pool(jnp.asarray(x), (3, 3), (2, 2), ((1, 1), (1, 1))))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = jax.jit(jax.vjp(max_pool, jnp.asarray(x))[1])(jnp.asarray(dy))[0]
    np.testing.assert_allclose(dx, reference_grad(x, dy), rtol=1e-6, atol=1e-6)


def test_xla_defaults_are_added_unless_the_user_set_them():
    ((name, value),) = CPU_FLAGS.items()
    assert with_defaults("") == f"--{name}={value}"
    assert (
        with_defaults("--xla_force_host_platform_device_count=4")
        == f"--xla_force_host_platform_device_count=4 --{name}={value}"
    )
    assert with_defaults(f"--{name}=") == f"--{name}="  # the user's choice wins


def test_xla_defaults_only_for_the_measured_jaxlib():
    environ = {"XLA_FLAGS": "--a=1"}
    set_default_flags(environ, jaxlib_version="0.11.0")  # unknown flags stop XLA: none set
    assert environ["XLA_FLAGS"] == "--a=1"
    set_default_flags(environ, jaxlib_version="0.10.2")
    assert environ["XLA_FLAGS"] == with_defaults("--a=1") != "--a=1"
    environ = {"FAML_JAX_XLA_DEFAULTS": "0"}
    set_default_flags(environ, jaxlib_version="0.10.2")
    assert "XLA_FLAGS" not in environ


def test_the_suites_compile_shortcuts_only_for_the_measured_jaxlib(monkeypatch):
    """jaxlib 0.11 aborts on the suite's --xla_cpu_use_fusion_emitters (found running the GPU
    check's tests on jax 0.11.2): another release gets the forced devices and the optimisation
    level, a flag every release knows."""
    import helpers

    assert is_measured_jaxlib("0.10.2") and not is_measured_jaxlib("0.11.2")
    monkeypatch.delenv("FAML_JAX_TEST_FAST_COMPILE", raising=False)
    monkeypatch.setattr(helpers, "is_measured_jaxlib", lambda: False)
    assert helpers.suite_xla_flags(2) == "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    monkeypatch.setattr(helpers, "is_measured_jaxlib", lambda: True)
    assert helpers.suite_xla_flags(2) == (
        "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
        " --xla_cpu_use_fusion_emitters=false"
    )
    monkeypatch.setenv("FAML_JAX_TEST_FAST_COMPILE", "0")
    assert helpers.suite_xla_flags(2) == "--xla_force_host_platform_device_count=2"


def test_the_suite_compiles_through_its_persistent_cache():
    """conftest sets the cache's JAX_* variables before anything imports jax (jax reads them on
    import): a second run of the suite then loads its compiled steps instead of compiling them."""
    if os.environ.get("FAML_JAX_TEST_JAX_CACHE") == "0":
        pytest.skip("the cache is off (FAML_JAX_TEST_JAX_CACHE=0)")
    assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
