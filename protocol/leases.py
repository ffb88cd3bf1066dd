"""Leases: the interposer opens a cached copy itself while the agent vouches for it.

Trusts: the agent's lease socket (a private ``ipc://`` socket beside the agent's
own, in the same 0700 directory, refused to every guest). A forged beat could
keep leases alive, so it must be as private as the agent's request socket.

The agent grants a lease with an ``Opened`` reply when a callback promise from
the server holds on the object (:mod:`agent.callbacks`) and its local copy is
clean and not open for writing; a ``Listing`` reply grants one on each entry
whose cached copy qualifies alike, so that a first open (``find | xargs cat``
over a warm cache) needs no round trip either. The lease names the channel's ``instance``,
its sequence number when granted and its end (CLOCK_MONOTONIC: agent and
interposer share the machine): the end of the promise it rests on. The agent
then publishes, on an XPUB socket, in order:

* ``[b"inval", msgpack([instance, seq, path, tree])]`` before (or as) anything
  changes what it knows of a leased ``path``: a server invalidation, a change
  made through this agent by any sandbox (an open for writing, a commit, a
  remove, a rename, a setattr), a dropped copy; ``tree`` also voids every
  lease below ``path`` (a directory removed or renamed);
* ``[b"break", msgpack([instance, seq])]`` when its own promises break (the
  server's channel lost a message, the server restarted, re-registration):
  every lease ends;
* ``[b"beat", msgpack([instance, seq, until_ns])]`` every ``BEAT_INTERVAL``
  and at once when an interposer subscribes: the agent vouches for every
  lease until ``until_ns``, never beyond the liveness of its own promises.

Every inval and break takes the next ``seq``; a beat repeats the last. The
interposer (:class:`Leases`, pure; :class:`LeaseFeed`, its socket) drains the
channel without blocking before it uses a lease, and honours one only while
the channel is provably unbroken: a beat's ``until_ns`` not passed, no
sequence gap (ZeroMQ drops when slow), the same instance, no disconnection
since (socket monitor). A lease is voided by an inval whose ``seq`` is above
its own (an inval at or below was already known to the agent when it granted
it). The interposer also drops a lease at once when its own sandbox changes
the path, and checks the copy's stat (inode, size, times) against the one it
saw at the grant, so a copy evicted or replaced meanwhile costs a round trip,
never a wrong open.

Consistency is the agent's own: another agent's change is seen once its
invalidation has reached this agent and been forwarded (a few hundred µs
more than the agent's promise), and a silent or broken channel means no
leases at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import zmq

from synthfs.protocol.messages import Opened
from synthfs.protocol.monitor import monitor_event
from synthfs.protocol.naming import name_from_wire, wire_name

__all__ = [
    "BEAT_INTERVAL",
    "BEAT_TIMEOUT",
    "Lease",
    "LeaseBoard",
    "LeaseFeed",
    "Leases",
    "leases_endpoint",
]

log = logging.getLogger(__name__)

#: Seconds between the agent's beats on the lease channel.
BEAT_INTERVAL = 0.5
#: Seconds a beat vouches for at most (a silent agent's leases end within this).
BEAT_TIMEOUT = 1.5
#: More leases than this and the interposer stops taking new ones (bounded memory).
_MAX_LEASES = 200_000
_NS = 1_000_000_000

#: (st_ino, st_size, st_mtime_ns, st_ctime_ns) of a local copy
Signature = tuple[int, int, int, int]


def leases_endpoint(socket_path: str) -> str | None:
    """The lease channel's endpoint beside the agent's socket (None: path too long)."""
    path = os.path.join(os.path.dirname(socket_path), "leases-" + os.path.basename(socket_path))
    return f"ipc://{path}" if len(path.encode()) <= 107 else None


def signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- the agent's side -----------------------------------------------------------------------


class LeaseBoard:
    """The agent's side: grants, and publishes what ends them (``send`` does the I/O)."""

    def __init__(
        self,
        send: Callable[[list[bytes]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        instance: str | None = None,
    ) -> None:
        self._send = send
        self.clock = clock
        self.instance = instance or os.urandom(8).hex()  # secrets.token_hex(8), without its imports
        self.seq = 0
        self._granted: dict[str, float] = {}  # path -> end of the latest lease on it
        #: The end of what the agent's own promises vouch for (-inf: nothing).
        self.vouched: Callable[[], float] = lambda: float("-inf")
        self._next_beat = float("-inf")
        self.socket: zmq.Socket[Any] | None = None
        self.endpoint = ""
        self.path = ""

    @classmethod
    def bind(cls, ctx: zmq.Context[Any], socket_path: str) -> LeaseBoard | None:
        """A board publishing on an XPUB socket beside ``socket_path`` (None: no room)."""
        endpoint = leases_endpoint(socket_path)
        if endpoint is None:
            log.warning("no lease channel: the socket path %s is too long", socket_path)
            return None
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription: each gets a beat at once
        path = endpoint[len("ipc://"):]
        old_umask = os.umask(0o077)
        try:
            if os.path.exists(path):
                os.unlink(path)  # a stale socket from a killed agent
            sock.bind(endpoint)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        board = cls(lambda frames: sock.send_multipart(frames, zmq.NOBLOCK))
        board.socket, board.endpoint, board.path = sock, endpoint, path
        return board

    def subscribed(self) -> None:
        """An interposer (re)subscribed (the XPUB socket is readable): beat at once."""
        if self.socket is None:
            return
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.beat(force=True)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def grant(self, path: str, until: float) -> tuple[str, int, int] | None:
        """A lease on ``path`` until ``until``: (instance, seq, until_ns), or None."""
        if min(until, self.vouched()) <= self.clock():
            return None  # the agent's own promises are not live: nothing to vouch for
        self._granted[path] = max(until, self._granted.get(path, until))
        return self.instance, self.seq, int(until * _NS)

    def granted(self, path: str) -> bool:
        """True while some lease on ``path`` may be in use (its copy must stay)."""
        until = self._granted.get(path)
        return until is not None and until > self.clock()

    def void(self, path: str, *, tree: bool = False) -> None:
        """What the agent knows of ``path`` (and below, with ``tree``) is about to change."""
        if tree:
            if not self._granted:
                return
            self._granted.pop(path, None)
        elif self._granted.pop(path, None) is None:
            return
        self.seq += 1
        self._send([b"inval", msgpack.packb([self.instance, self.seq, wire_name(path), tree])])

    def break_all(self, why: str) -> None:
        """Every lease ends."""
        if self._granted:
            log.info("leases broken: %s", why)
        self._granted.clear()
        self.seq += 1
        self._send([b"break", msgpack.packb([self.instance, self.seq])])

    def beat(self, *, force: bool = False) -> None:
        """Vouch for the leases granted so far (when due, or at once with ``force``)."""
        now = self.clock()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + BEAT_INTERVAL
        until = max(0.0, min(now + BEAT_TIMEOUT, self.vouched()))  # 0: vouches for nothing
        self._send([b"beat", msgpack.packb([self.instance, self.seq, int(until * _NS)])])

    def expire(self) -> None:
        """Housekeeping: forget grants that ended."""
        now = self.clock()
        for p in [p for p, until in self._granted.items() if until <= now]:
            del self._granted[p]


# -- the interposer's side ------------------------------------------------------------------


@attrs.define
class Lease:
    """What the interposer needs to open a cached copy without asking."""

    opened: Opened
    instance: str
    seq: int
    until: float  # CLOCK_MONOTONIC seconds
    #: the copy's stat when the lease arrived, or at its first use (a listing's leases)
    sig: Signature | None


class Leases:
    """The interposer's leases and the channel state: pure (messages and a clock in)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.instance: str | None = None
        self.seq = 0
        self.until = float("-inf")  # what the last beat vouched for
        self._held: dict[str, Lease] = {}
        self._below: dict[str, int] = {}  # directory -> leases held below it
        self.breaks = 0

    def __len__(self) -> int:
        return len(self._held)

    # -- the channel ----------------------------------------------------------------

    def drop_all(self, why: str) -> None:
        if self._held:
            log.debug("leases dropped: %s", why)
        self.breaks += 1
        self._held.clear()
        self._below.clear()

    def _follow(self, instance: str, seq: int, through: int) -> bool:
        """Check continuity; False when the message was handled by (re)syncing.

        ``through``: the last seq this message proves the agent had published.
        """
        if self.instance is None or instance != self.instance:
            if self.instance is not None:
                self.drop_all("the agent restarted")
            self.instance, self.seq = instance, seq
            # Leases granted before ``through`` may have missed an inval: drop them.
            for path in [p for p, h in self._held.items()
                         if h.instance != instance or h.seq < through]:
                self._remove(path)
            return False
        return True

    def beat(self, instance: str, seq: int, until_ns: int) -> None:
        if self._follow(instance, seq, seq) and seq != self.seq:
            self.drop_all(f"lost messages (seq {self.seq} -> {seq})")
            self.seq = seq
        self.until = until_ns / _NS

    def inval(self, instance: str, seq: int, path: str, tree: bool) -> None:
        if self._follow(instance, seq, seq - 1):
            if seq != self.seq + 1:
                self.drop_all(f"lost messages (seq {self.seq} -> {seq})")
            self.seq = seq
        self.drop(path, tree=tree, seq=seq)

    def broken(self, instance: str, seq: int) -> None:
        self._follow(instance, seq, seq)
        self.seq = seq
        self.drop_all("the agent broke them")

    def disconnected(self) -> None:
        """The channel dropped (or reconnected): nothing it said still holds."""
        self.drop_all("the lease channel disconnected")
        self.instance = None
        self.until = float("-inf")

    # -- leases ---------------------------------------------------------------------

    def install(self, path: str, opened: Opened, sig: Signature | None) -> bool:
        """Hold the lease ``opened`` carries (False: none, or not safe to take)."""
        if not opened.lease or len(self._held) >= _MAX_LEASES:
            return False
        if self.instance is not None and (opened.lease != self.instance
                                          or opened.lease_seq < self.seq):
            return False  # granted before messages already processed here
        self._remove(path)
        self._held[path] = Lease(opened, opened.lease, opened.lease_seq,
                                 opened.lease_until_ns / _NS, sig)
        d = path
        while d != "/":
            d = os.path.dirname(d) or "/"
            self._below[d] = self._below.get(d, 0) + 1
        return True

    def get(self, path: str) -> Lease | None:
        """The lease on ``path`` if the channel vouches for it now."""
        h = self._held.get(path)
        if h is None:
            return None
        now = self.clock()
        if self.instance is None or now >= self.until:
            return None
        if now >= h.until:
            self._remove(path)
            return None
        return h

    def _remove(self, path: str) -> None:
        if self._held.pop(path, None) is None:
            return
        d = path
        while d != "/":
            d = os.path.dirname(d) or "/"
            n = self._below.get(d, 0) - 1
            if n > 0:
                self._below[d] = n
            else:
                self._below.pop(d, None)

    def drop(self, path: str, *, tree: bool = False, seq: int | None = None) -> None:
        """End the lease on ``path`` (and below it, with ``tree``): granted before ``seq``."""
        h = self._held.get(path)
        if h is not None and (seq is None or h.seq < seq):
            self._remove(path)
        if tree and path in self._below:
            prefix = path.rstrip("/") + "/"
            for p in [p for p, h in self._held.items()
                      if p.startswith(prefix) and (seq is None or h.seq < seq)]:
                self._remove(p)


class LeaseFeed:
    """The interposer's SUB socket on the agent's lease channel, and its monitor."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, leases: Leases) -> None:
        self.endpoint = endpoint
        self.leases = leases
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 100_000)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED)
        self.socket.connect(endpoint)
        # Both sockets' ZMQ_FDs in one epoll: readable when something arrived since
        # the last drain (the fds are edge-like: ZMQ_EVENTS clears them, which is why
        # a drain reads until ZMQ_EVENTS says nothing is left). An epoll_wait of 0 is
        # a few µs cheaper than a zmq_poll or a getsockopt on each socket.
        self._ready = select.epoll()
        self._ready.register(self.socket.getsockopt(zmq.FD), select.EPOLLIN)
        self._ready.register(self.monitor.getsockopt(zmq.FD), select.EPOLLIN)

    def close(self) -> None:
        self._ready.close()
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def drain(self) -> None:
        """Process every event and message already received (never blocks)."""
        if not self._ready.poll(0):
            return
        monitor, sock = self.monitor, self.socket
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
            if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECTED,
                         zmq.EVENT_MONITOR_STOPPED):
                self.leases.disconnected()
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                self._on_message(frames)
            except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
                self.leases.disconnected()
                log.warning("lease channel: undecodable message (%s)", exc)

    def _on_message(self, frames: list[bytes]) -> None:
        kind, body = frames[0], msgpack.unpackb(frames[1])
        instance, seq = body[0], body[1]
        if not isinstance(instance, str) or type(seq) is not int:
            raise ValueError("bad header")
        if kind == b"beat":
            if type(body[2]) is not int:
                raise ValueError("bad beat")
            self.leases.beat(instance, seq, body[2])
        elif kind == b"inval":
            self.leases.inval(instance, seq, name_from_wire(body[2]), bool(body[3]))
        elif kind == b"break":
            self.leases.broken(instance, seq)
        else:
            raise ValueError(f"unknown kind {kind[:20]!r}")
