"""The programs a user runs. Importing this package sets faml_jax's default XLA flags
(``faml_jax.xla_flags``) before any program starts jax."""

from faml_jax.signals import exit_while_starting
from faml_jax.xla_flags import set_default_flags

exit_while_starting()  # Ctrl-C while the program imports its modules: one line, no traceback
set_default_flags()
