"""What a handler asks the supervisor to do with a trapped syscall.

Handlers never call ptrace; they return one of these values and the
supervisor loop applies it:

* :class:`Continue` — run the syscall exactly as the guest made it (no path
  argument is involved, or the handler only needed to look).
* :class:`Return` — skip the syscall; the guest sees ``value`` (and the bytes
  in ``writes`` were stored in its memory first).
* :class:`Fail` — skip the syscall; the guest sees ``-errno``.
* :class:`RunChecked` — the kernel runs syscall ``nr`` with ``args``, where
  every :class:`Scratch` argument is replaced by the address of its bytes in
  the guest's read-only scratch page (the checked copy, never guest-writable
  memory). The guest's registers are restored at the syscall's exit, and
  ``after`` may rewrite the result (a :class:`Return`'s ``writes`` are stored
  in the guest's memory then).
* :class:`Kill` — kill the guest process, with a reason for the log.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import field, frozen

__all__ = ["Continue", "Fail", "Kill", "Result", "Return", "RunChecked", "Scratch"]


@frozen
class Continue:
    pass


@frozen
class Return:
    value: int
    writes: tuple[tuple[int, bytes], ...] = ()


@frozen
class Fail:
    errno: int


@frozen
class Scratch:
    """Bytes to place in the scratch page; the argument becomes their address.

    ``links`` are pointers inside ``data``: at each byte offset, the supervisor
    stores the scratch address of the linked bytes (a checked ``struct msghdr``
    whose ``msg_name`` is a checked copy too).
    """

    data: bytes = field(repr=lambda b: repr(b[:64]))
    links: tuple[tuple[int, Scratch], ...] = ()


@frozen
class Kill:
    reason: str


@frozen
class RunChecked:
    nr: int
    args: tuple[int | Scratch, ...]
    #: Called with the syscall's return value (negative errno on failure) at its
    #: exit; may return a Return/Fail that replaces the result the guest sees.
    after: Callable[[int], Return | Fail | None] | None = None
    #: Called once whenever the call ends, before ``after`` when there is an exit:
    #: at its exit stop, when its thread is gone first (killed in a blocking call,
    #: ended by another thread's exec) or the exec ended it, or after the notify
    #: channel made the call itself. Lets go of what the call held (a pin); ``after``
    #: only judges the result.
    release: Callable[[], None] | None = None


CONTINUE = Continue()

Result = Continue | Return | Fail | RunChecked | Kill
