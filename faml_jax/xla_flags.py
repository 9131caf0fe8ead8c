"""XLA flags that make the CPU train step fast; set by the programs before jax starts a backend.

jaxlib 0.10.2 hands convolutions, reductions and dots to YNNPACK by default. On our CPU
YNNPACK's convolutions were slower than XLA's own (Eigen) ones while its reductions (BatchNorm
statistics) were much faster, so ``CPU_FLAGS`` keeps YNNPACK for reductions and dots only (the
measurements are in BENCHMARKS.md, ``make bench``).

The flags only concern XLA's CPU backend; GPU compilation ignores them. XLA reads ``XLA_FLAGS``
once, when jax creates its first backend, so :func:`set_default_flags` must run before any jax
computation (the programs call it on import). A flag the user already set in ``XLA_FLAGS`` is
left as the user set it; with another jaxlib release than the measured one nothing is set.
"""

from __future__ import annotations

import os
from importlib import metadata

# The jaxlib release the flags were measured with: XLA stops at start-up on a flag it does not
# know, and "experimental" flags come and go, so other releases get none.
MEASURED_JAXLIB = "0.10."

CPU_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    ),
}


def with_defaults(flags: str, defaults: dict[str, str] = CPU_FLAGS) -> str:
    """``flags`` (an ``XLA_FLAGS`` string) with each default flag appended unless already there."""
    present = {part.lstrip("-").split("=", 1)[0] for part in flags.split()}
    added = [f"--{name}={value}" for name, value in defaults.items() if name not in present]
    return " ".join([flags.strip(), *added]).strip()


def set_default_flags(environ=os.environ, jaxlib_version: str | None = None) -> None:
    """Add ``CPU_FLAGS`` to ``environ["XLA_FLAGS"]`` (user-set flags win) when the installed
    jaxlib is the measured release (``MEASURED_JAXLIB``). Call before jax creates a backend;
    ``FAML_JAX_XLA_DEFAULTS=0`` leaves ``XLA_FLAGS`` untouched."""
    if environ.get("FAML_JAX_XLA_DEFAULTS", "1") == "0":
        return
    if is_measured_jaxlib(jaxlib_version):
        environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))


def is_measured_jaxlib(jaxlib_version: str | None = None) -> bool:
    """Whether ``jaxlib_version`` (default: the installed jaxlib's) is the release whose XLA flags
    were measured (``MEASURED_JAXLIB``): only then may experimental XLA flags be set, since XLA
    stops at start-up on a flag it does not know."""
    if jaxlib_version is None:
        try:
            jaxlib_version = metadata.version("jaxlib")
        except metadata.PackageNotFoundError:
            return False
    return jaxlib_version.startswith(MEASURED_JAXLIB)
