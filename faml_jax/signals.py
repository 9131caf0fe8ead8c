"""Stopping on a signal: SIGTERM (a cluster's preemption, ``scancel``, ``kill``) and SIGINT
(Ctrl-C).

Outside a training loop both stop the program where it is, as an ``Interrupted`` exception
(a ``KeyboardInterrupt``; the programs print one line and exit with status 128 + the signal's
number: 130, 143). Inside the loop (``deferred``) a signal only asks it to stop: the loop finishes
its step, saves a checkpoint of exactly where it is and then raises ``Interrupted``; a second
signal stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The program stopped on a signal (``signum``); the message says what was kept."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stopped(signum: int, where: str, prefix: str = "") -> Interrupted:
    """The ``Interrupted`` a run raises once it has stopped on ``signum`` and kept its work:
    ``where`` says where it stopped and what is kept, the message how to continue."""
    return Interrupted(signum, f"{prefix}stopped by {signal.Signals(signum).name} {where}; continue with --resume")


def _raise(signum, frame):
    # Recorded too: Python drops an exception raised where it cannot propagate (a garbage
    # collector's callback, a finaliser); ``deferred``, ``requested`` and ``raise_if_pending``
    # still see the signal then.
    _Requests.pending = signum
    raise Interrupted(signum)


def _unraisable(hook):
    def ignore_interrupts(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):  # recorded in _Requests.pending
            hook(unraisable)

    return ignore_interrupts


def _exit_now(signum, frame):
    argv = getattr(sys, "orig_argv", [])
    program = f"python -m {argv[argv.index('-m') + 1]}: " if "-m" in argv[:-1] else ""
    os.write(2, f"{program}stopped by {signal.Signals(signum).name} while starting\n".encode())
    os._exit(128 + signum)


def exit_while_starting() -> None:
    """For a program started with ``python -m``, called first by its package: until the program
    installs its own handling (``installed``), Ctrl-C or SIGTERM ends it at once with one line
    (it is importing its modules and has written nothing). Elsewhere (an import in Python or in
    a test) nothing changes."""
    if sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _exit_now)


@contextlib.contextmanager
def installed():
    """Within: SIGTERM and SIGINT raise ``Interrupted`` wherever the program is (Python's default
    for SIGTERM is to die without a word). Main thread only (elsewhere nothing changes); the
    programs run inside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    hook = sys.unraisablehook
    _Requests.pending = None
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _raise)
    sys.unraisablehook = _unraisable(hook)
    _Requests.installed = True
    try:
        yield
    finally:
        _Requests.installed = False
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = hook
        _Requests.pending = None  # a stop concerns this program only, not later calls in the process


def raise_if_pending() -> None:
    """Raise ``Interrupted`` for a signal whose exception Python dropped (``installed``)."""
    if _Requests.pending is not None:
        raise Interrupted(_Requests.pending)


class _Requests:
    signum: int | None = None  # received within ``deferred``
    depth: int = 0  # ``deferred`` blocks entered (nested ones change nothing)
    installed: bool = False  # within ``installed``
    pending: int | None = None  # raised by ``installed``'s handler (perhaps dropped by Python)


@contextlib.contextmanager
def deferred():
    """Within: a first SIGTERM or SIGINT is only recorded (``requested()``), for the caller to
    stop at a good moment; a second one raises ``Interrupted`` at once. Nested (an evolution's
    loop over networks around each network's training loop): the outermost block decides, so a
    signal recorded at the end of one network is still seen between networks. Elsewhere than in
    the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _Requests.depth:  # nested: the outer block handles the signals
        _Requests.depth += 1
        try:
            yield
        finally:
            _Requests.depth -= 1
        return

    def record(signum, frame):
        if _Requests.signum is not None:
            _Requests.pending = signum
            raise Interrupted(
                signum, f"stopped by a second {signal.Signals(signum).name}: the last complete checkpoint is kept"
            )
        _Requests.signum = signum

    raise_if_pending()
    previous = {s: signal.getsignal(s) for s in HANDLED}
    installed_now = _Requests.installed  # inside a program's ``installed``: it clears ``pending``
    ignored = {s for s, handler in previous.items() if handler is signal.SIG_IGN}
    _Requests.signum = None
    for signum in HANDLED:
        if signum not in ignored:
            signal.signal(signum, record)
    _Requests.depth = 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _Requests.depth = 0
        if installed_now and completed and _Requests.signum is not None:
            _Requests.pending = _Requests.signum  # not acted on within (the work ended): the program stops next
        for signum, handler in previous.items():
            if signum not in ignored:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _Requests.signum = None
        if not installed_now:
            _Requests.pending = None  # a library call stopped: the next one starts clean


def requested() -> int | None:
    """The signal received within ``deferred``, or one whose exception was dropped before (None:
    none)."""
    return _Requests.signum or _Requests.pending
