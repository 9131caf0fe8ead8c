"""The programs a user runs. Importing this package sets faml_jax's default XLA flags
(``faml_jax.xla_flags``) before any program starts jax."""

from faml_jax.xla_flags import set_default_flags

set_default_flags()
