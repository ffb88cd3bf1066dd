"""A signal for the guests while the supervisor serves one of their calls for long.

A guest stopped in a trapped call cannot take a signal until the supervisor
answers that call, and the supervisor waits on the agent meanwhile: a cold
fetch has an hour's budget, and a call may cost many requests. So a SIGTERM
that ``synthfs run`` passes on (or a Ctrl-C the terminal sent the guests) did
not end the run until the call was served. Once a signal is :meth:`armed
<Interruption.arm>`, a handler that is about to ask the agent something that
changes nothing (a stat, a listing, an open for reading), or is waiting on such
an answer, gives up: :class:`Interrupted` reaches the supervisor, which makes
the guest issue the same call again (as the kernel restarts a call a signal
interrupted), and the signal is delivered before it does. The guest dies of it
as it would natively, or runs its handler and then makes the call anew.

A call that has sent a change (a create, a rename, an upload) is never given
up: its answer comes as it would have. The signal disarms once a guest given it
is seen again (dead of it, or in its next stop), or after :data:`GRACE` seconds
(one nobody takes: blocked, ignored, or for a guest that is not waiting). A
thread's call gives up once per signal: a thread that blocks the signal (so it
is never seen taking it) makes its call again and is then served, instead of
giving up in a loop for the whole grace (review round 7); a restarted call runs
its handler again, so an ``--audit-all`` log may show that call's decision twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import NoReturn

__all__ = ["GRACE", "Interrupted", "Interruption"]

#: seconds a signal nobody takes keeps calls giving up
GRACE = 2.0


class Interrupted(BaseException):
    """A handler gave up for a signal: the supervisor restarts the guest's call.

    Not an ``Exception``: no handler's ``except OSError`` / ``except Exception``
    may turn it into an answer."""


class Interruption:
    """Whether the call being served should give up, for a signal armed."""

    def __init__(self) -> None:
        self._sig = 0
        #: the thread given the signal, until seen again (0: none yet)
        self._taker = 0
        self._until = 0.0
        self._serving = False
        self._changed = False
        #: the thread being served, and the threads whose call gave up for this signal
        self._tid = 0
        self._gave_up: set[int] = set()

    def arm(self, sig: int) -> None:
        """``sig`` was sent to the guests (called from a signal handler)."""
        self._sig, self._taker = sig, 0
        self._until = time.monotonic() + GRACE
        self._gave_up = set()

    def delivered(self, sig: int, tid: int) -> None:
        """Thread ``tid`` is being given ``sig``: calls give up until it is seen again
        (its exit, when the signal kills it: no call of another starts before)."""
        if sig == self._sig:
            self._taker = tid

    def seen(self, tid: int) -> None:
        """Thread ``tid`` ended or stopped (not on its way out: the supervisor
        reaps it first, and a main guest's end ends every guest): once it took the
        signal, disarm."""
        if tid == self._taker:
            self._sig = self._taker = 0

    @contextlib.contextmanager
    def serving(self, tid: int = 0) -> Iterator[None]:
        """Around a handler of thread ``tid``: only there may :meth:`check` give up."""
        self._serving, self._changed, self._tid = True, False, tid
        try:
            yield
        finally:
            self._serving = False

    def changing(self) -> None:
        """The call being served sends a change: it is answered, never given up."""
        self._changed = True

    def pending(self) -> bool:
        """Whether the call being served should give up now."""
        return (
            bool(self._sig) and self._serving and not self._changed
            and self._tid not in self._gave_up and time.monotonic() < self._until
        )

    def check(self) -> None:
        """:class:`Interrupted` when the call being served should give up now."""
        if self.pending():
            self.give_up()

    def give_up(self) -> NoReturn:
        """The call being served gives up now (its thread's once for this signal)."""
        self._gave_up.add(self._tid)
        raise Interrupted
