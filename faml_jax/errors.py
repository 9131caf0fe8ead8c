"""The library's exceptions: one-line messages a program prints as they are (exit status 2).

All are ``ValueError`` subclasses, so code that catches ``ValueError`` keeps working."""


class ConfigError(ValueError):
    """A run's configuration cannot be used as asked (e.g. a real data set without a pre-trained
    start)."""
