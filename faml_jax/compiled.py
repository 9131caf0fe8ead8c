"""Compiled functions shared within one process: ``compiled(key, build)``.

A population, an ablation or a test session builds many ``setup.Setup`` objects of one
configuration, and tracing and compiling a ResNet train step or evaluator takes seconds each time
(as ``models.init`` is memoised per configuration), so each is built once per key. At most
``MAX_KEPT`` are kept, the least recently used given up first: a sweep over more configurations
(Table 6) keeps those it still uses.
"""

from __future__ import annotations

from collections.abc import Callable

_COMPILED: dict = {}  # in order of use, the least recently used first
MAX_KEPT = 8  # the most recently used functions kept


def compiled(key: tuple, build: Callable):
    """``build()`` once per ``key`` in this process (the ``MAX_KEPT`` most recently used kept)."""
    if key in _COMPILED:
        _COMPILED[key] = _COMPILED.pop(key)  # now the most recently used
        return _COMPILED[key]
    while len(_COMPILED) >= MAX_KEPT:
        _COMPILED.pop(next(iter(_COMPILED)))  # the least recently used
    _COMPILED[key] = built = build()
    return built
