"""Callback promises: serve a cached object with no round trip while nothing changed it.

Trusts: the server's PUB socket (``--subscribe``; a private ``ipc://`` socket
in the embedded stack). A forged beat could keep promises alive, so the
endpoint must be as private as the server's own socket.

The server publishes ``["inval", path, version, instance, seq, parent]`` for
every object a mutation changed (and its parent directory, ``parent`` true)
*before* it acknowledges the mutation, and ``["beat", instance, seq]`` every
0.5 s, each sealed with the channel key of this agent's registration
(:mod:`protocol.sealed`: only registered agents can read them, and nobody
without the key can forge one). :class:`Promises` (pure: messages
and a clock in, decisions out) holds a promise on a path when a server answer
about it was asked for while the subscription was live, and honours it only
while the subscription is provably unbroken:

* *live*: some message arrived within ``beat_timeout`` (1.5 s);
* no sequence gap (ZeroMQ SUB drops messages when slow): any gap, or a beat
  whose seq is not the last one seen, breaks every promise;
* the same server instance: a restart (new instance id) breaks every promise;
* no disconnection (socket monitor) since: a disconnect breaks every promise.

A broken promise only costs a round trip: the agent revalidates (one Stat) and
holds a new promise. Each promise is stamped with the number of invalidations
processed when its request was *sent*; an invalidation of the path, or of
an ancestor as an object (gone, renamed, replaced), processed afterwards
cancels it, whatever the order in which the reply and the invalidation were
processed. A parent-directory invalidation (its listing changed) cancels the
directory's own promise only. Promises also end after ``max_age`` seconds,
which bounds how long a change made behind the server's back (directly in its
directory, published by nobody) can stay unseen.

Limit (as with any asynchronous callback channel): another agent's change is
seen once its invalidation has arrived. The server publishes it before it
acknowledges the change, so it races only a longer chain (ack to the writer,
the writer's guest, whatever tells this agent's guest to open); the liveness
window bounds the rest.

:class:`Subscription` is the socket side (a SUB socket and its monitor),
polled by the agent's one I/O loop.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import zmq

from synthfs.protocol.monitor import monitor_event
from synthfs.protocol.naming import name_from_wire
from synthfs.protocol.sealed import TOPIC as SEALED_TOPIC
from synthfs.protocol.sealed import SealError, open_sealed

__all__ = ["BEAT_TIMEOUT", "MAX_AGE", "Promises", "Subscription"]

log = logging.getLogger(__name__)

#: Seconds without any message after which promises are not honoured.
BEAT_TIMEOUT = 1.5
#: Seconds a promise lasts at most (changes behind the server's back show within this).
MAX_AGE = 30.0
#: More marks than this and the agent breaks every promise instead (bounded memory).
_MAX_MARKS = 100_000

#: Called with (path, version or "", parent?) for each invalidation processed.
OnInval = Callable[[str, str, bool], None]


class _Channel:
    """What one server's publications said last: its instance, sequence number, time."""

    __slots__ = ("heard", "instance", "seq")

    def __init__(self) -> None:
        self.instance: str | None = None
        self.seq = 0
        self.heard = float("-inf")


class Promises:
    """The promise state: pure (messages and times in, decisions out)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        beat_timeout: float = BEAT_TIMEOUT,
        max_age: float = MAX_AGE,
        channels: int = 1,
    ) -> None:
        self.clock = clock
        self.beat_timeout = beat_timeout
        self.max_age = max_age
        #: one per server: a promise holds only while every one is live and unbroken
        self.channels = [_Channel() for _ in range(max(1, channels))]
        self.epoch = 0
        self.n = 0  # invalidations processed in this epoch
        self._held: dict[str, tuple[int, int, float]] = {}  # path -> (epoch, n, since)
        self._marks: dict[str, int] = {}  # path -> n of its last invalidation
        self._trees: dict[str, int] = {}  # path -> n of its last invalidation as an object
        self.breaks = 0
        self.on_inval: OnInval | None = None
        #: Called for every invalidation received, even one of a version the agent
        #: already knows (the lease channel forwards them all: synthfs.protocol.leases).
        self.on_change: OnInval | None = None
        #: Called when every promise breaks, with the reason.
        self.on_break: Callable[[str], None] | None = None
        #: The version the agent knows of a path (None: nothing); an invalidation to
        #: that very version (the agent's own change coming back) cancels nothing.
        self.known: Callable[[str], str | None] = lambda path: None

    # -- the channel ----------------------------------------------------------------

    def break_all(self, why: str) -> None:
        """Every promise is void; none holds until the channel proves itself again."""
        if any(c.instance is not None for c in self.channels) or self._held:
            log.info("callback promises broken: %s", why)
        self.breaks += 1
        self.epoch += 1
        for c in self.channels:
            c.instance = None
        self.n = 0
        self._held.clear()
        self._marks.clear()
        self._trees.clear()
        if self.on_break is not None:
            self.on_break(why)

    def _sync(self, c: _Channel, instance: str, seq: int) -> None:
        if c.instance is None:
            c.instance, c.seq = instance, seq
            log.debug("callback promises: following instance %s from seq %d", instance, seq)

    def beat(self, instance: str, seq: int, channel: int = 0) -> None:
        c = self.channels[channel]
        now = self.clock()
        if c.instance is not None and (instance != c.instance or seq != c.seq):
            self.break_all("server restarted" if instance != c.instance
                           else f"lost invalidations (seq {c.seq} -> {seq})")
        self._sync(c, instance, seq)
        c.heard = now

    def inval(self, path: str, version: str, instance: str, seq: int, parent: bool,
              channel: int = 0) -> None:
        c = self.channels[channel]
        now = self.clock()
        if c.instance is not None and (instance != c.instance or seq != c.seq + 1):
            self.break_all("server restarted" if instance != c.instance
                           else f"lost invalidations (seq {c.seq} -> {seq})")
        if c.instance is None:
            self._sync(c, instance, seq)
        c.seq = seq
        c.heard = now
        if self.on_change is not None:
            self.on_change(path, version, parent)
        if version and self.known(path) == version:
            return  # nothing this agent knows has changed
        self.n += 1
        self._marks[path] = self.n
        if not parent:
            self._trees[path] = self.n
        if len(self._marks) > _MAX_MARKS:
            self.break_all("too many invalidations to track")
        if self.on_inval is not None:
            self.on_inval(path, version, parent)

    def disconnected(self, channel: int = 0) -> None:
        self.break_all("disconnected from the publisher"
                       + (f" {channel}" if len(self.channels) > 1 else ""))

    def silent(self, channel: int = 0) -> None:
        """The channel cannot be read (no key for it yet): it is not live."""
        c = self.channels[channel]
        if c.instance is not None:
            self.break_all(f"channel {channel} cannot be read")

    def _live(self, now: float) -> bool:
        return all(c.instance is not None and now - c.heard <= self.beat_timeout
                   for c in self.channels)

    def live(self) -> bool:
        return self._live(self.clock())

    # -- promises -------------------------------------------------------------------

    def stamp(self) -> tuple[int, int] | None:
        """Take before sending a request; pass to :meth:`hold` with its answer."""
        return (self.epoch, self.n) if self.live() else None

    def hold(self, path: str, stamp: tuple[int, int] | None) -> None:
        if stamp is not None and stamp[0] == self.epoch:
            self._held[path] = (stamp[0], stamp[1], self.clock())

    def release(self, path: str) -> None:
        self._held.pop(path, None)

    def holds(self, path: str) -> bool:
        """True when what the agent knows of ``path`` is still the server's truth."""
        h = self._held.get(path)
        if h is None:
            return False
        epoch, n, since = h
        now = self.clock()
        if (epoch != self.epoch or not self._live(now)
                or now - since > self.max_age or self._marks.get(path, 0) > n):
            return False
        return self._tree_mark(path) <= n

    def listing_changed(self, path: str) -> None:
        """This agent changed an entry of directory ``path``: its promise ends as a parent
        invalidation would end it (:meth:`holds_object` still holds)."""
        self.n += 1
        self._marks[path] = self.n

    def holds_object(self, path: str) -> bool:
        """:meth:`holds`, except that a change of the listing of ``path`` (a parent
        invalidation: an entry came or went) does not end it: ``path`` is still the
        object the agent knows (a directory that exists, though its entries changed)."""
        h = self._held.get(path)
        if h is None:
            return False
        epoch, n, since = h
        now = self.clock()
        if epoch != self.epoch or not self._live(now) or now - since > self.max_age:
            return False
        return self._tree_mark(path) <= n

    def _tree_mark(self, path: str) -> int:
        """The last invalidation of ``path`` or an ancestor as an object (0: none)."""
        top = 0
        if self._trees:
            p = path
            while True:
                top = max(top, self._trees.get(p, 0))
                if p == "/":
                    break
                p = posixpath.dirname(p) or "/"
        return top

    def holds_entries(self, directory: str, names: Iterable[str]) -> bool:
        """:meth:`holds` of ``directory`` and of each entry ``names`` in it (one walk up)."""
        if not self.holds(directory):
            return False
        top = self._tree_mark(directory)
        prefix = directory if directory == "/" else directory + "/"
        held, marks, epoch = self._held, self._marks, self.epoch
        oldest = self.clock() - self.max_age
        for name in names:
            path = prefix + name
            h = held.get(path)
            # An entry's own invalidation (as an object or not) is among the marks.
            if (h is None or h[0] != epoch or h[2] < oldest or h[1] < top
                    or marks.get(path, 0) > h[1]):
                return False
        return True

    def deadline(self, path: str) -> float | None:
        """When the promise on ``path`` ends at the latest (None: it does not hold)."""
        if not self.holds(path):
            return None
        return self._held[path][2] + self.max_age

    def vouched(self) -> float:
        """Until when the channel vouches for the promises it holds (-inf: not live)."""
        if any(c.instance is None for c in self.channels):
            return float("-inf")
        return min(c.heard for c in self.channels) + self.beat_timeout

    def expire(self) -> None:
        """Housekeeping: drop promises past ``max_age`` or cancelled."""
        now = self.clock()
        for p in [p for p, (e, _, since) in self._held.items()
                  if e != self.epoch or now - since > self.max_age]:
            del self._held[p]
        if not self._held:
            self._marks.clear()
            self._trees.clear()


class Subscription:
    """The SUB socket on the server's PUB endpoint, and its monitor (disconnects).

    ``sockopts`` are set before it connects (the agent's CURVE keys, as upstream).
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, promises: Promises,
                 sockopts: Mapping[int, int | bytes] | None = None,
                 key: Callable[[], str] = lambda: "", channel: int = 0,
                 on_foreign: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.promises = promises
        self.key = key  # the channel key of the current registration
        #: which of ``promises.channels`` this server's publications feed
        self.channel = channel
        #: called when a publication is sealed with another key (the server restarted:
        #: the agent registers with it again to learn the new one)
        self.on_foreign = on_foreign
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 100_000)
        self.socket.setsockopt(zmq.SUBSCRIBE, SEALED_TOPIC)
        for opt, value in (sockopts or {}).items():
            self.socket.setsockopt(opt, value)
        self.monitor = self.socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED)
        self.socket.connect(endpoint)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def drain(self) -> None:
        """Process every event and message already received (never blocks)."""
        while True:
            try:
                event = monitor_event(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event == zmq.EVENT_DISCONNECTED:
                self.promises.disconnected(self.channel)
            elif event == zmq.EVENT_CONNECTED:
                self.promises.break_all("connected to the publisher")
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_message(frames)
            except SealError as exc:
                self.promises.break_all(f"undecodable publication: {exc}")
                if self.on_foreign is not None:
                    self.on_foreign()
            except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
                self.promises.break_all(f"undecodable publication: {exc}")

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[0] != SEALED_TOPIC:
            raise ValueError("not a sealed publication")
        key = self.key()
        if not key:  # not registered with this server yet: its channel is not live
            self.promises.silent(self.channel)
            return
        # A publication another key sealed (a restarted server, before this agent
        # registers again) raises SealError (a ValueError): every promise breaks.
        body = msgpack.unpackb(open_sealed(key, frames[1]))
        if not isinstance(body, list) or not body:
            raise ValueError("bad publication")
        if body[0] == "beat":
            instance, seq = body[1], body[2]
            if not isinstance(instance, str) or not isinstance(seq, int):
                raise ValueError("bad beat")
            self.promises.beat(instance, seq, self.channel)
        elif body[0] == "inval":
            path, version, instance, seq, parent = body[1:6]
            path = name_from_wire(path)  # a name that is not UTF-8 comes as bin
            if not (isinstance(path, str) and isinstance(version, str)
                    and isinstance(instance, str) and isinstance(seq, int)):
                raise ValueError("bad invalidation")
            self.promises.inval(path, version, instance, seq, bool(parent), self.channel)
