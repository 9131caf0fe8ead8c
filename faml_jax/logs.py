"""Where faml_jax's messages go. Library modules log to ``logging.getLogger(__name__)`` (INFO: what
a run is doing, one line each; WARNING: something the user should know) and print nothing
themselves; the programs call ``show()`` so that the messages appear as plain lines (information on
stdout, warnings and errors on stderr), and a Python user may do the same (or configure ``logging``
as they like). Progress bars (tqdm, on
stderr) are separate: each call takes ``progress=``.

    >>> from faml_jax import logs
    >>> logs.show()  # faml_jax's messages on stdout, as the programs print them
"""

from __future__ import annotations

import logging
import sys

# The loggers the programs show: the library's and its programs'.
NAMES = ("faml_jax", "experiments", "tools")


class _Lines(logging.Handler):
    """Writes each message as one line to ``sys.stdout`` (warnings and errors: ``sys.stderr``)
    as they are when the message is logged (so that a redirected or captured stream receives it,
    as ``print`` would)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def show(level: int = logging.INFO) -> None:
    """Show faml_jax's messages of ``level`` and above, one plain line each (what the
    programs do; a process other than the first of a multi-process run shows only warnings).
    Called again, it replaces the earlier setting."""
    for name in NAMES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _Lines)]:
            logger.removeHandler(handler)
        handler = _Lines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
