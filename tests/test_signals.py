"""Tests of faml_jax.signals: stopping at once, or at the loop's next good moment."""

import gc
import os
import signal
import threading

import pytest

from faml_jax import signals

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers are set in the main thread only"
)


def test_outside_the_loop_a_signal_raises_interrupted_with_its_exit_status():
    with pytest.raises(signals.Interrupted) as raised:
        with signals.installed():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary: the handler runs
    assert raised.value.exit_status == 143 and isinstance(raised.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_within_deferred_a_first_signal_is_recorded_and_a_second_raises():
    with signals.installed():
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert signals.requested() == signal.SIGINT
            with pytest.raises(signals.Interrupted, match="second SIGINT"):
                os.kill(os.getpid(), signal.SIGINT)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signals.requested() == signal.SIGINT  # the raise is remembered as pending in the program
    assert signals.requested() is None


class RaisesWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # raised here, inside a finaliser: Python drops it


def test_a_signal_whose_exception_python_drops_is_still_a_stop():
    with signals.installed():
        RaisesWhenCollected()
        gc.collect()
        assert signals.requested() == signal.SIGTERM
        with pytest.raises(signals.Interrupted):
            signals.raise_if_pending()
        with pytest.raises(signals.Interrupted):
            with signals.deferred():
                pass
    # The program is over: later calls in this process (a notebook's next fit) start clean.
    assert signals.requested() is None
    with signals.deferred():
        assert signals.requested() is None


def test_a_library_call_stopped_twice_leaves_the_next_one_clean():
    with pytest.raises(signals.Interrupted, match="second SIGINT"):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT) if signals.requested() else None
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signals.requested() is None
    with signals.deferred():
        assert signals.requested() is None


def test_a_signal_the_loop_did_not_act_on_stops_the_program_next():
    """Recorded while the last step or save of a run ended the loop: the program (or the next
    run of a loop of runs) stops at its next check, not never."""
    with signals.installed():
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        with pytest.raises(signals.Interrupted):
            signals.raise_if_pending()


def test_the_suite_and_the_programs_it_starts_receive_sigint():
    """Started in the background by a non-interactive shell, the suite inherits SIGINT ignored:
    tests/conftest.py gives it Python's handler back, and the programs the tests start get it too
    (else every test that sends SIGINT would wait for a stop that never comes)."""
    import subprocess
    import sys

    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    child = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.strip() == "True", child.stderr
