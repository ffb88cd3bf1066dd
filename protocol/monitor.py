"""ZeroMQ socket-monitor events, read without pyzmq's ``zmq.utils.monitor``.

That module imports ``zmq.asyncio`` and with it asyncio (~20 ms at a quiet
start, far more on a loaded machine) in every process that watches a socket:
the interposer (leases), the agent (callbacks, leases) and the server (CURVE),
all for a 6-byte header. Trusts: the frames come from a monitor socket of our
own (libzmq writes them); a malformed one is a RuntimeError, as in pyzmq.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["monitor_event"]

#: The first frame of a monitor message: the event id (u16) and its value (i32).
_HEADER = struct.Struct("=Hi")


def monitor_event(frames: Sequence[bytes]) -> int:
    """The event (a ``zmq.EVENT_*`` value) of one monitor message ``[header, endpoint]``."""
    if len(frames) != 2 or len(frames[0]) != _HEADER.size:
        raise RuntimeError(f"invalid monitor message: {list(frames)!r}"[:200])
    event: int = _HEADER.unpack(frames[0])[0]
    return event
