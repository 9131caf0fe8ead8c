"""The library's exceptions: one-line messages a program prints as they are (``experiments/cli.py``
turns them into "one line, exit status 2"). All are ``ValueError`` subclasses, so code that
catches ``ValueError`` keeps working."""


class ConfigError(ValueError):
    """A run's configuration cannot be used as asked (e.g. a real data set without a pre-trained
    start, a batch that does not divide over the devices, a resumed run with another
    configuration)."""


class WorkdirError(ValueError):
    """An output folder cannot be used as asked: not writable, holding an earlier run without
    resume/overwrite, or missing what a finished run leaves there."""


class DataError(ValueError):
    """A data set folder is missing, incomplete or not in the expected layout."""


class NonFiniteError(ValueError):
    """Training produced a non-finite loss, gradient or weight (a learning rate too high, a
    non-finite input): the run stopped, keeping its last finite checkpoint."""
