"""Benchmarks and converters. Importing this package sets faml_jax's default XLA flags
(``faml_jax.xla_flags``), so benchmarks measure what the programs run."""

from faml_jax.signals import exit_while_starting
from faml_jax.xla_flags import set_default_flags

exit_while_starting()  # Ctrl-C while the program imports its modules: one line, no traceback
set_default_flags()
