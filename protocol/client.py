"""A small synchronous ZeroMQ client for the synthfs protocol (DEALER socket).

Used by the interposer (to talk to the agent) and by the agent (to talk to the
server). It trusts the peer it was pointed at to speak the protocol, but not
the bytes it receives: every reply goes through :func:`protocol.codec.decode`,
and a reply that does not decode or does not carry the id of the request in
flight is dropped (and logged at DEBUG).

Semantics, in the Majordomo (7/MDP) "lazy pirate" style:

* Every request gets a fresh request id (a per-client counter); the reply must
  echo it. Replies to older requests (late answers to a request we resent)
  are dropped.
* A call has a total budget of ``timeout`` seconds, split evenly across
  ``1 + retries`` attempts. When an attempt times out, the socket is closed
  (pending messages discarded, ``linger=0``) and reopened, and the *same*
  frame (same request id) is sent again. Every synthfs request is idempotent
  or carries its own idempotency key (upload ids), so resending is safe.
* When every attempt has timed out, :class:`Unreachable` is raised: a
  ``TimeoutError`` (so an ``OSError``) with errno **ETIMEDOUT**. The agent
  answers the interposer ``Error(SERVER_UNREACHABLE)`` for it; the
  interposer says so once on its stderr and gives the guest EIO.
* With ``alive`` (a callable saying whether the peer process still exists),
  a wait longer than a second checks it once a second: a dead peer ends the
  call at once with :class:`Unreachable` (the request died with it), instead
  of after the whole budget (the interposer's bulk budget is an hour).
* With ``watch``, the socket's monitor tells when the connection to the peer
  completes and when it closes: a close while a request waits ends the call at
  once with :class:`PeerGone` (an :class:`Unreachable`: the request died with
  the connection, answered or not, and no reply can come), instead of after
  the attempt's timeout; :attr:`Client.connected` says whether the peer is
  connected now. The agent watches its servers this way, to fail over within
  a fraction of a second when one dies (:mod:`agent.upstream`).
* A message the codec cannot encode (a path with a lone surrogate, i.e. bytes
  that are not UTF-8) raises ``OSError(EINVAL)`` before anything is sent.
* A :class:`~protocol.messages.Progress` with the id of the request in flight
  is a note, not the reply: it goes to ``on_note`` (when given) and the wait
  goes on, its attempt's budget started again (the peer is alive and working:
  a server notes a mutation that runs long, an agent a long fetch, or passes
  its server's notes on).
* ``call(msg, request_id)`` resends a request under the id it had (from
  :meth:`Client.new_request_id`): a server answers a mutation it was sent
  before, under the same id by the same agent, with its first answer instead
  of running it again (:class:`server.service.DuplicateCache`).
* An :class:`~protocol.messages.Error` reply raises ``OSError(errno, message)``,
  which Python turns into the matching subclass (``FileNotFoundError`` for
  ENOENT...), so callers can catch either by class or by ``errno``.

Framing: a request is sent as one frame (the encoded envelope). Frames are
received one at a time, so a peer that adds an empty delimiter frame
(REQ-style) works too: the delimiter does not decode and is dropped, the
envelope after it is read next.

A ``Client`` is **not thread-safe**: use one per thread. The hot path (one
encode, one send, one poll, one receive, one decode) allocates little; a small
round trip over ``ipc://`` costs a few tens of microseconds on top of the peer.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import zmq

from synthfs.protocol.codec import DecodeError, decode, encode
from synthfs.protocol.messages import Error, Message, Progress
from synthfs.protocol.monitor import monitor_event

__all__ = ["DEFAULT_TIMEOUT", "SERVER_UNREACHABLE", "Client", "PeerGone", "Unreachable",
           "raise_for_error"]

log = logging.getLogger(__name__)

#: Total seconds one call may take (all attempts together) unless told otherwise.
DEFAULT_TIMEOUT = 5.0
#: The errno of an agent's answer when its server did not answer (:class:`Unreachable`
#: upstream). No file operation on a repository gives it, so the interposer can tell it
#: apart: it reports the outage and gives the guest EIO.
SERVER_UNREACHABLE = errno_mod.EHOSTUNREACH
#: With ``watch``: how long one blocking receive waits before the monitor is read again
#: (the most a peer's death can go unnoticed while a request waits on it).
WATCH_SLICE_MS = 50


class Unreachable(TimeoutError):
    """The peer did not answer within the call's budget (errno ETIMEDOUT)."""

    def __init__(self, endpoint: str, seconds: float, why: str = "") -> None:
        super().__init__(errno_mod.ETIMEDOUT,
                         why or f"{endpoint} did not answer within {seconds:g} s")
        self.endpoint = endpoint
        self.seconds = seconds


class PeerGone(Unreachable):
    """The connection closed while a request waited: no reply can come (errno ETIMEDOUT).

    The request may or may not have been carried out before the peer went away.
    """

    def __init__(self, endpoint: str, seconds: float) -> None:
        super().__init__(endpoint, seconds,
                         f"{endpoint} closed the connection while a request waited")


class Client:
    """One DEALER connection to ``endpoint``; see the module docstring for semantics.

    ``token_provider``, when given, is called before each request and its result
    is put in the envelope (the agent passes its session token this way, so the
    token lives in one place only). ``retries`` is the number of resends after
    the first attempt times out. ``sockopts`` are set on every socket it opens,
    before it connects (the agent's CURVE keys: :func:`protocol.curve.client_sockopts`).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 2,
        token_provider: Callable[[], str] | None = None,
        context: zmq.Context[Any] | None = None,
        alive: Callable[[], bool] | None = None,
        sockopts: Mapping[int, int | bytes] | None = None,
        on_note: Callable[[Progress], None] | None = None,
        watch: bool = False,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._attempt_ms = max(1, int(self.timeout * 1000 / (1 + self.retries)))
        self._token_provider = token_provider
        self._sockopts = dict(sockopts or {})
        self._alive = alive
        #: called with each Progress note on the request in flight
        self.on_note = on_note
        #: Progress notes received so far
        self.notes = 0
        self._ctx = context or zmq.Context.instance()
        # Start ids at a random point so a reopened client never matches old replies.
        self._next_id = int.from_bytes(os.urandom(4), "little") << 16
        self._sock: zmq.Socket[Any] | None = None
        self._watch = watch
        self._monitor: zmq.Socket[Any] | None = None
        #: With ``watch``: True once connected, False once the connection closed (None:
        #: not known yet, after an open).
        self.connected: bool | None = None
        #: With ``watch``: connections closed so far (a request compares before and after).
        self.disconnects = 0
        self._sent_at = (0, 0.0)
        self._open()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}, timeout={self.timeout:g}, retries={self.retries})"

    # -- socket life cycle ------------------------------------------------------------

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        # A peer not bound yet (an embedded agent registering while its server still
        # boots): retry the connect after 10 ms, backing off to ZeroMQ's usual 100 ms,
        # not after a flat 100 ms (measured: a request sent 20 ms before the bind
        # arrived after ~190 ms, ~30 ms with this).
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        for opt, value in self._sockopts.items():
            sock.setsockopt(opt, value)
        if self._watch:
            self._monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self.connected = None
        sock.connect(self.endpoint)
        self._sock = sock
        self._rcvtimeo = -1

    def reopen(self) -> None:
        """Close the socket (what waits in its queue is dropped) and connect afresh."""
        self._reopen()

    def _reopen(self) -> None:
        log.debug("client %s: no answer, reopening the socket", self.endpoint)
        self._close_socket()
        self._open()

    def _close_socket(self) -> None:
        if self._monitor is not None:
            assert self._sock is not None
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        self._close_socket()

    def events(self) -> None:
        """Read the monitor (with ``watch``): update :attr:`connected` and :attr:`disconnects`."""
        mon = self._monitor
        if mon is None:
            return
        # EVENTS first: a getsockopt costs a fraction of the zmq.Again an empty receive
        # raises, and the monitor is read twice a request (measured: +90 µs of the
        # agent's CPU per request with the exception, under load).
        while cast(int, mon.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                event = monitor_event(mon.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self.disconnects += 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------

    def new_request_id(self) -> int:
        """A request id no other request of this client has (for :meth:`call`'s resends)."""
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFFFFFFFFFFFFFF
        return rid

    def _frame(self, msg: Message, request_id: int | None = None) -> tuple[int, bytes]:
        rid = self.new_request_id() if request_id is None else request_id
        token = self._token_provider() if self._token_provider is not None else ""
        try:
            return rid, encode(msg, rid, token)
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. a path holding a lone surrogate (undecodable bytes): not sendable.
            raise OSError(errno_mod.EINVAL, f"cannot encode {msg.kind}: {exc}") from None

    def call(self, msg: Message, request_id: int | None = None) -> Message:
        """Send ``msg``, wait for the reply; raise OSError (an Error reply) or Unreachable.

        ``request_id`` (from :meth:`new_request_id`): a resend of a request this client
        made before, under its id (a server runs a mutation resent so only once).
        """
        rid, frame = self._frame(msg, request_id)
        sock = self._sock
        assert sock is not None, "client is closed"
        self._sent()
        sock.send(frame, 0, copy=len(frame) < 65536)
        for attempt in range(1 + self.retries):
            if attempt:
                self._reopen()
                sock = self._sock
                assert sock is not None
                self._sent()
                sock.send(frame, 0, copy=False)
            if self._alive is not None:
                reply = self._wait_alive(rid)
            else:
                reply = self._wait_for({rid}, self._attempt_ms)
            if reply is not None:
                return _unwrap(reply[1])
        raise Unreachable(self.endpoint, self.timeout)

    def _sent(self) -> None:
        """A request is about to go out: what closed before it does not concern it."""
        if self._monitor is not None:
            self.events()
            self._sent_at = (self.disconnects, time.monotonic())

    def _check_gone(self) -> None:
        """PeerGone when the connection closed since the request in flight was sent."""
        self.events()
        if self.disconnects != self._sent_at[0]:
            raise PeerGone(self.endpoint, time.monotonic() - self._sent_at[1])

    def _wait_alive(self, rid: int) -> tuple[int, Message] | None:
        """One attempt's wait, asking ``alive`` every second; Unreachable once the peer is gone."""
        assert self._alive is not None
        t0 = time.monotonic()
        deadline = t0 + self._attempt_ms / 1000
        notes = self.notes
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                return None
            reply = self._wait_for({rid}, min(left, 1000))
            if reply is not None:
                return reply
            if self.notes != notes:  # a Progress note: the wait starts again
                notes = self.notes
                deadline = time.monotonic() + self._attempt_ms / 1000
            if not self._alive():
                self._reopen()  # drop the request: never deliver it late to a successor
                raise Unreachable(self.endpoint, time.monotonic() - t0)

    def pipeline(self, msgs: Iterable[Message], window: int = 4) -> Iterator[Message]:
        """Send ``msgs`` with up to ``window`` in flight; yield the replies in order.

        An ``Error`` reply raises ``OSError`` at its place in the sequence
        (the requests still in flight are abandoned: their late replies will be
        dropped). A stall longer than one attempt's timeout reopens the socket
        and resends every request in flight; after ``1 + retries`` consecutive
        stalls, ``Unreachable`` is raised.
        """
        source = iter(msgs)
        inflight: deque[tuple[int, bytes]] = deque()
        done: dict[int, Message] = {}
        exhausted = False
        stalls = 0
        while True:
            while not exhausted and len(inflight) < window:
                try:
                    m = next(source)
                except StopIteration:
                    exhausted = True
                    break
                rid, frame = self._frame(m)
                inflight.append((rid, frame))
                assert self._sock is not None
                if len(inflight) == 1:
                    self._sent()
                self._sock.send(frame, 0, copy=len(frame) < 65536)
            if not inflight:
                return
            head = inflight[0][0]
            if head in done:
                inflight.popleft()
                yield _unwrap(done.pop(head))
                continue
            got = self._wait_for({r for r, _ in inflight}, self._attempt_ms, bulk=True)
            if got is not None:
                stalls = 0
                done[got[0]] = got[1]
                continue
            stalls += 1
            if stalls > self.retries:
                raise Unreachable(self.endpoint, self.timeout)
            self._reopen()
            assert self._sock is not None
            self._sent()
            for _rid, frame in inflight:
                self._sock.send(frame, 0, copy=False)

    def _wait_for(
        self, rids: set[int], timeout_ms: int, *, bulk: bool = False
    ) -> tuple[int, Message] | None:
        """The next reply whose id is in ``rids``, or None after ``timeout_ms``.

        ``bulk`` replies (Data chunks) are received without a copy, and their data
        is a view of the received frame (:func:`protocol.codec.decode`'s ``views``);
        small ones are copied into bytes, which is cheaper than a zero-copy Frame.
        """
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + timeout_ms / 1000
        remaining = timeout_ms
        watching = self._monitor is not None
        while True:
            # A blocking receive with RCVTIMEO: ~12 µs less CPU per call than poll + recv
            # (pyzmq builds a Poller for every Socket.poll).
            wait = min(remaining, WATCH_SLICE_MS) if watching else remaining
            if wait != self._rcvtimeo:
                sock.setsockopt(zmq.RCVTIMEO, wait)
                self._rcvtimeo = wait
            try:
                # One frame at a time: a peer that adds a delimiter frame (REQ style)
                # costs one dropped undecodable frame, then its envelope follows.
                frame = sock.recv(copy=not bulk)
            except zmq.Again:
                if watching:
                    self._check_gone()
                    remaining = int((deadline - time.monotonic()) * 1000)
                    if remaining > 0:
                        continue
                return None
            try:
                data = cast(bytes, frame if isinstance(frame, bytes) else frame.buffer)
                # decode reads any buffer; a bulk reply's data stays a view of the frame
                env = decode(data, views=bulk)
            except DecodeError as exc:
                log.debug("client %s: dropped an undecodable reply: %s", self.endpoint, exc)
            else:
                if env.request_id in rids and isinstance(env.msg, Progress):
                    self.notes += 1
                    if self.on_note is not None:
                        self.on_note(env.msg)
                    deadline = time.monotonic() + timeout_ms / 1000  # alive and working
                elif env.request_id in rids:
                    return env.request_id, env.msg
                log.debug("client %s: dropped a reply to request %d", self.endpoint, env.request_id)
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0:
                return None


def raise_for_error(msg: Message) -> Message:
    """``msg``, unless it is an :class:`Error`: then ``OSError(errno, message)``."""
    if isinstance(msg, Error):
        raise OSError(msg.errno, msg.message or os.strerror(msg.errno))
    return msg


_unwrap = raise_for_error
