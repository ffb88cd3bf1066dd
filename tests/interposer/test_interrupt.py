"""interposer/interrupt.py: which calls give up for a signal, and until when."""

from __future__ import annotations

import signal

import pytest

from synthfs.interposer import interrupt
from synthfs.interposer.interrupt import Interrupted, Interruption


def test_nothing_armed_nothing_gives_up() -> None:
    stop = Interruption()
    with stop.serving():
        stop.check()


def test_an_armed_signal_gives_up_a_call_that_changes_nothing() -> None:
    stop = Interruption()
    stop.arm(signal.SIGTERM)
    with pytest.raises(Interrupted), stop.serving():
        stop.check()
    assert not issubclass(Interrupted, Exception)  # no handler's except turns it into an answer


def test_only_inside_a_handler() -> None:
    """The supervisor's own requests (an exit's sync, an exec's identification) go on."""
    stop = Interruption()
    stop.arm(signal.SIGTERM)
    stop.check()


def test_a_call_that_sent_a_change_is_answered() -> None:
    stop = Interruption()
    stop.arm(signal.SIGTERM)
    with stop.serving():
        stop.changing()
        stop.check()
    with pytest.raises(Interrupted), stop.serving():  # the next call gives up again
        stop.check()


def test_disarmed_once_the_guest_given_it_is_seen_again() -> None:
    stop = Interruption()
    stop.arm(signal.SIGTERM)
    stop.delivered(signal.SIGCHLD, 7)  # another signal: no matter
    stop.seen(7)
    assert stop.pending() is False  # not serving
    stop.delivered(signal.SIGTERM, 7)
    stop.seen(8)
    with pytest.raises(Interrupted), stop.serving():  # 7 not seen since: its exit comes
        stop.check()
    stop.seen(7)
    with stop.serving():
        stop.check()


def test_disarmed_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal nobody takes (blocked, ignored) stops calls for GRACE seconds only."""
    now = [100.0]
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: now[0])
    stop = Interruption()
    stop.arm(signal.SIGTERM)
    now[0] += interrupt.GRACE + 0.1
    with stop.serving():
        stop.check()


def test_a_thread_gives_up_once_a_signal() -> None:
    """A thread that blocks the signal is never seen taking it: its call gives up once,
    then is served (it gave up in a loop for the whole grace: review round 7), and a
    new signal may interrupt it again; another thread's call still gives up."""
    i = Interruption()
    i.arm(2)
    with i.serving(10), pytest.raises(Interrupted):
        i.check()
    with i.serving(10):
        i.check()  # the same thread's call, made again: served
    with i.serving(11), pytest.raises(Interrupted):
        i.check()
    i.arm(2)
    with i.serving(10), pytest.raises(Interrupted):
        i.check()
