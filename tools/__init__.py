"""Benchmarks and converters. Importing this package sets faml_jax's default XLA flags
(``faml_jax.xla_flags``), so benchmarks measure what the programs run."""

from faml_jax.xla_flags import set_default_flags

set_default_flags()
