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
MAX_KEPT = 16  # the most recently used functions kept (train steps, evaluators, ensemble steps)


def compiled(key: tuple, build: Callable):
    """``build()`` once per ``key`` in this process (the ``MAX_KEPT`` most recently used kept)."""
    return remembered(_COMPILED, key, build, MAX_KEPT)


def remembered(memo: dict, key, build: Callable, max_kept: int):
    """``memo[key]``, made by ``build()`` when absent; ``memo`` keeps the ``max_kept`` most
    recently used entries (in order of use: the least recently used is given up first)."""
    if key in memo:
        memo[key] = memo.pop(key)  # now the most recently used
        return memo[key]
    while len(memo) >= max(max_kept, 1):
        memo.pop(next(iter(memo)))  # the least recently used
    memo[key] = built = build()
    return built
