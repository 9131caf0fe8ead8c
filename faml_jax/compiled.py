"""Compiled functions shared within one process: ``compiled(key, build)``.

A population, an ablation or a test session builds many ``trainer.Setup`` objects of one
configuration, and tracing and compiling a ResNet train step or evaluator takes seconds each time
(as ``models.init`` is memoised per configuration), so each is built once per key.
"""

from __future__ import annotations

from collections.abc import Callable

_COMPILED: dict = {}
MAX_KEPT = 8  # the most recently built functions kept


def compiled(key: tuple, build: Callable):
    """``build()`` once per ``key`` in this process (the ``MAX_KEPT`` most recent kept)."""
    if key not in _COMPILED:
        while len(_COMPILED) >= MAX_KEPT:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]
