"""The server's broker: one ZeroMQ I/O loop, request dispatch, worker pools.

Trusts nothing that arrives on its socket. Every frame is decoded by
:mod:`protocol.codec` (which refuses anything malformed); a frame that does
not decode gets an ``Error(EBADMSG)`` reply (with its request id when one can
be salvaged, else 0), a bad multipart shape gets the same, and both are
logged at a limited rate. Every request other than ``Register`` must carry a
live session token (:mod:`server.auth`), checked before anything is done.
Only token ids are logged, never tokens.

Shape (one I/O loop per process, as STYLE.md asks): a ROUTER frontend and an
inproc PULL for replies are polled by one thread, which decodes, checks the
token and hands requests to two thread pools: *meta* (stat, list, mkdir...)
and *bulk* (read, upload). Bulk requests of one client take at most half the
bulk pool (the rest wait in that client's backlog), and metadata never waits
behind bulk data, so one client's big read does not stall another's stat.
Workers answer through per-thread PUSH sockets into the PULL; the I/O thread
alone writes to the ROUTER (and the optional PUB socket, which announces
invalidations ``["inval", path, version, instance, seq, parent]`` after each
mutation and before its reply (an empty version means the object is gone;
``parent`` is true for the parent directory of a changed object, whose
listing changed), and a heartbeat ``["beat", instance, seq]`` every
:data:`BEAT_INTERVAL` seconds, each sealed (:mod:`protocol.sealed`) with a
key made per process and given only in ``Registered`` replies, so a local
reader that did not register learns nothing from them. ``instance`` is random per
server process; ``seq`` numbers invalidations 1, 2, 3... (a beat carries the
last one), so a subscriber detects a restart, a lost message or a dead
publisher, and holds its callback promises only while none happened).

With ``curve`` (:mod:`protocol.curve`), the ROUTER and the PUB socket are
CURVE servers and the same loop answers ZAP on an inproc REP socket: a peer
whose public key is not among the allowed ones is dropped during the
handshake, so none of its frames reaches this loop.

Mutations go through :class:`DuplicateCache` on the I/O thread: one resent
by its agent under the same request id is not run again (it gets the first
copy's answer). A mutation, or a request of the metadata pool (a listing),
that has not been answered :data:`NOTE_EVERY` seconds after it came gets a
``Progress`` note every :data:`NOTE_EVERY` seconds, so that its agent
waits for it instead of taking it for lost (:mod:`agent.upstream`): a cold
listing of a large directory on S3 (a LIST and a HEAD per entry) takes seconds
at load, longer than one attempt of the agent (its ``--timeout`` / 3), which
then resent it, and gave up (EIO) after three.

:func:`handle` (request -> reply, with the changed paths) is pure of sockets
and is what the tests of dispatch exercise through the real socket.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import posixpath
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import msgpack
import zmq

from synthfs.extents import check_extents, coalesce, flatten
from synthfs.linux import unfilled_bytearray
from synthfs.protocol import messages as m
from synthfs.protocol.codec import (
    HEAD_ROOM,
    MAX_FRAME,
    DecodeError,
    Envelope,
    build,
    decode,
    encode,
    encode_around,
    error_from_exception,
)
from synthfs.protocol.curve import ZAP_ENDPOINT, CurveServer, apply, server_sockopts, zap_reply
from synthfs.protocol.naming import wire_name
from synthfs.protocol.ratelimit import RateLimitedLog
from synthfs.protocol.sealed import TOPIC, new_key, seal
from synthfs.server.auth import AuthError, Authority
from synthfs.server.backends import base as backend_types
from synthfs.server.backends.base import Backend, Entry, ObjectAttrs

__all__ = ["BEAT_INTERVAL", "HANDLERS", "INLINE", "Server", "handle", "wire_attrs",
           "wire_entry"]

log = logging.getLogger(__name__)

Changed = list[tuple[str, str, bool]]  # (path, new version or "" when gone, parent?)

#: Seconds between two heartbeats on the PUB socket.
BEAT_INTERVAL = 0.5


# A backend speaks in its own value types (server.backends.base); here, and only here,
# they become wire messages. The backend's limits are the wire's.
if (backend_types.CHUNK_SIZE, backend_types.MAX_PATH, backend_types.MAX_EXTENTS) != (
        m.CHUNK_SIZE, m.MAX_PATH, m.MAX_EXTENTS):
    raise ImportError("the backend's CHUNK_SIZE/MAX_PATH/MAX_EXTENTS differ from the protocol's")


def _attrs_values(a: ObjectAttrs) -> list[object]:
    return [a.kind.value, *a[1:]]  # the same fields in the same order


def wire_attrs(a: ObjectAttrs) -> m.Attrs:
    """The wire attributes of a backend's (checked: a bad value is a ValueError)."""
    return build(m.Attrs, *_attrs_values(a))  # a third of Attrs(...)'s cost


def wire_entry(e: Entry) -> m.DirEntry:
    """The wire entry of a backend's listing entry (checked like :func:`wire_attrs`)."""
    return build(m.DirEntry, e.name, _attrs_values(e.attrs))


def backend_rename_flags(flags: m.RenameFlags) -> backend_types.RenameFlags:
    """A wire Rename's flags as the backend's (the same kernel values)."""
    return backend_types.RenameFlags(int(flags))


def _stat_reply(a: ObjectAttrs) -> m.StatReply:
    return m.StatReply(attrs=wire_attrs(a))


def _h_stat(b: Backend, r: Any) -> m.Message:
    return _stat_reply(b.stat(r.path))


def _h_list(b: Backend, r: Any) -> m.Message:
    own, entries = b.list(r.path)
    return m.Listing(attrs=wire_attrs(own), entries=tuple(wire_entry(e) for e in entries))


def _h_read(b: Backend, r: Any) -> m.Message:
    data, eof, version = b.read(r.path, r.offset, r.length, r.version)
    return m.Data(data=data, eof=eof, version=version)


def _h_readlink(b: Backend, r: Any) -> m.Message:
    return m.LinkTarget(target=b.readlink(r.path))


def _h_chunk(b: Backend, r: Any) -> m.Message:
    b.upload_chunk(r.upload_id, r.offset, r.data)
    return m.Done()


def _h_extents(b: Backend, r: Any) -> m.Message:
    size, version, extents = b.data_extents(r.path, r.version)
    # Whatever the backend found, the wire names at most MAX_EXTENTS (holes taken in).
    return m.ExtentMap(size=size, version=version, extents=flatten(coalesce(extents)))


def _h_locate(b: Backend, r: Any) -> m.Message:
    loc = b.locate(r.path, r.version)
    return m.Located(url=loc.url, etag=loc.etag, size=loc.size, version=loc.version,
                     expires_ns=loc.expires_ns)


def _h_commit(b: Backend, r: Any) -> m.Message:
    if r.extents is None:
        return _stat_reply(b.upload_commit(r.upload_id, r.path, r.size, r.mode, r.exclusive))
    extents = check_extents(r.extents, r.size)  # EINVAL, one clear line, nothing installed
    return _stat_reply(b.upload_commit_sparse(r.upload_id, r.path, r.size, extents, r.mode,
                                              r.exclusive))


def _h_abort(b: Backend, r: Any) -> m.Message:
    b.upload_abort(r.upload_id)
    return m.Done()


def _h_mkdir(b: Backend, r: Any) -> m.Message:
    return _stat_reply(b.mkdir(r.path, r.mode))


def _h_remove(b: Backend, r: Any) -> m.Message:
    b.remove(r.path, r.directory)
    return m.Done()


def _h_rename(b: Backend, r: Any) -> m.Message:
    b.rename(r.src, r.dst, backend_rename_flags(r.flags))
    return m.Done()


def _h_symlink(b: Backend, r: Any) -> m.Message:
    return _stat_reply(b.symlink(r.target, r.path))


def _h_link(b: Backend, r: Any) -> m.Message:
    return _stat_reply(b.link(r.src, r.dst))


def _h_setattr(b: Backend, r: Any) -> m.Message:
    return _stat_reply(b.setattr(r.path, r.mode, r.atime_ns, r.mtime_ns, r.size))


#: request class -> (handler, bulk?, paths it changes)
HANDLERS: dict[type[m.Message], tuple[Callable[[Backend, Any], m.Message], bool,
                                      Callable[[Any], tuple[str, ...]]]] = {
    m.Stat: (_h_stat, False, lambda r: ()),
    m.List: (_h_list, False, lambda r: ()),
    m.Read: (_h_read, True, lambda r: ()),
    m.Extents: (_h_extents, True, lambda r: ()),
    m.Locate: (_h_locate, False, lambda r: ()),
    m.Readlink: (_h_readlink, False, lambda r: ()),
    m.UploadChunk: (_h_chunk, True, lambda r: ()),
    m.UploadCommit: (_h_commit, True, lambda r: (r.path,)),
    m.UploadAbort: (_h_abort, False, lambda r: ()),
    m.Mkdir: (_h_mkdir, False, lambda r: (r.path,)),
    m.Remove: (_h_remove, False, lambda r: (r.path,)),
    m.Rename: (_h_rename, False, lambda r: (r.src, r.dst)),
    m.Symlink: (_h_symlink, False, lambda r: (r.path,)),
    m.Link: (_h_link, False, lambda r: (r.dst, r.src)),
    m.SetAttr: (_h_setattr, False, lambda r: (r.path,)),
}


#: Requests with an effect: each is run once per (agent, request id), whatever resends it
#: (:class:`DuplicateCache`).
MUTATIONS: frozenset[type[m.Message]] = frozenset(
    {m.UploadCommit, m.Mkdir, m.Remove, m.Rename, m.Symlink, m.Link, m.SetAttr})
#: Answers to mutations the duplicate request cache remembers (the latest; each a few
#: hundred bytes at most: a StatReply, Done or Error).
DRC_SIZE = 4096
#: Seconds between two Progress notes to the client of a mutation still running (a
#: directory rename on S3 copies and deletes every key below it: seconds, or minutes).
NOTE_EVERY = 0.25
#: A mutation still running after this long gets no more notes (its client's budget ends
#: the wait: a worker stuck for good does not hold a guest for ever).
NOTE_FOR_S = 3600.0
#: The routes (connections) a running mutation answers at most: its first and its resends.
_MAX_ROUTES = 4

#: Requests answered on the I/O thread itself when the backend's lookups are local
#: (``Backend.local_lookups``): one fd-relative lookup, no data, no fsync. A thread handoff
#: costs more than the request (tens to hundreds of µs under the GIL).
INLINE: frozenset[type[m.Message]] = frozenset({m.Stat, m.Readlink})


def _version_or_gone(backend: Backend, path: str) -> str:
    try:
        return backend.stat(path).version
    except OSError:
        return ""


def _failed(msg: m.Message, exc: Exception) -> m.Error:
    """The Error reply to ``msg`` that raised ``exc`` (a bug is logged, and is EIO)."""
    if isinstance(exc, OSError):
        return error_from_exception(exc)
    if isinstance(exc, ValueError | TypeError | OverflowError):  # a value the OS call refuses
        log.info("%s refused: %s: %s", msg.kind, type(exc).__name__, exc)
        return m.Error(errno=errno.EINVAL, message=f"invalid argument: {type(exc).__name__}")
    log.error("bug while serving %s", msg.kind, exc_info=exc)
    return m.Error(errno=errno.EIO, message="internal error")


def handle(
    backend: Backend, msg: m.Message, want_changes: bool = False
) -> tuple[m.Message, Changed]:
    """Run one authenticated request; the reply (an Error on failure) and what changed."""
    entry = HANDLERS.get(type(msg))
    if entry is None:
        return m.Error(errno=errno.EOPNOTSUPP, message=f"{msg.kind} is not a server request"), []
    fn, _bulk, touched = entry
    try:
        reply = fn(backend, msg)
    except Exception as exc:
        return _failed(msg, exc), []
    changed: Changed = []
    if want_changes:
        for path in touched(msg):
            if isinstance(reply, m.StatReply) and path == getattr(msg, "path", None):
                # the object the request made (a commit, mkdir, symlink, setattr): its
                # version is in the reply; a stat again costs a store round trip on S3
                version = reply.attrs.version
            else:
                version = _version_or_gone(backend, path)
            changed.append((path, version, False))
            parent = posixpath.dirname(path.rstrip("/")) or "/"
            changed.append((parent, _version_or_gone(backend, parent), True))
    return reply, changed


class _Running:
    """A request being run: whom to answer, and when it started and was last noted."""

    __slots__ = ("msg", "noted", "request_id", "routes", "started")

    def __init__(self, msg: m.Message, request_id: int, route: list[bytes]) -> None:
        self.msg = msg
        self.request_id = request_id
        self.routes = [route]
        self.started = self.noted = time.monotonic()


class DuplicateCache:
    """The duplicate request cache (NFS's DRC) of mutations: I/O-thread state, no lock.

    A mutation is keyed by the agent that sent it (its registered id, which its
    sessions share) and its request id. The agent resends a mutation with the same
    request id when an attempt went unanswered (:mod:`agent.upstream`): a resend
    that comes while the first copy runs is not run again, it waits for that copy's
    answer (both connections get it); one that comes after gets the remembered
    answer. So a slow directory rename on S3, resent, is not run twice at once (which
    answered ENOTEMPTY or ENOENT for a rename that happened). The last
    :data:`DRC_SIZE` answers are kept; an older resend is run again, and the
    checks of a resent mutation (``Upstream._settle``, an upload's commit journal
    in the backend) still apply. A request id reused for another request is
    served as a new request, and not cached.
    """

    def __init__(self, size: int = DRC_SIZE) -> None:
        self.size = size
        self.running: dict[bytes, _Running] = {}
        #: key -> (the request's fingerprint, its encoded answer)
        self._done: collections.OrderedDict[bytes, tuple[int, bytes]] = \
            collections.OrderedDict()
        #: resends answered from the cache or joined to a running copy (for the tests)
        self.hits = 0

    @staticmethod
    def key(agent_id: str, request_id: int) -> bytes:
        return request_id.to_bytes(8, "little") + agent_id.encode("utf-8", "surrogatepass")

    @staticmethod
    def _fingerprint(msg: m.Message) -> int:
        """Tells a resend from another request under a reused id (a commit's extents can
        take tens of kB: the cache keeps this, not the request)."""
        fields: Any = attrs.astuple
        return hash((type(msg), fields(msg, recurse=False)))

    def admit(self, key: bytes, msg: m.Message, request_id: int,
              route: list[bytes]) -> tuple[str, bytes]:
        """``("run", key)``, ``("wait", b"")`` (joined the copy running) or
        ``("again", answer)``; ``("run", b"")``: run it, uncached."""
        run = self.running.get(key)
        if run is not None:
            if self._fingerprint(run.msg) != self._fingerprint(msg):
                return "run", b""
            self.hits += 1
            run.routes = [run.routes[0], *run.routes[1:][2 - _MAX_ROUTES:], route]
            return "wait", b""
        done = self._done.get(key)
        if done is not None and done[0] == self._fingerprint(msg):
            self.hits += 1
            self._done.move_to_end(key)
            return "again", done[1]
        self.running[key] = _Running(msg, request_id, route)
        return "run", key

    def finish(self, key: bytes, out: bytes) -> list[list[bytes]]:
        """The copy of ``key`` answered ``out``: remember it; the other routes to answer."""
        run = self.running.pop(key, None)
        if run is None:
            return []
        self._done[key] = (self._fingerprint(run.msg), out)
        while len(self._done) > self.size:
            self._done.popitem(last=False)
        return run.routes[1:]  # the first is answered with the worker's reply

    def drop(self, key: bytes) -> None:
        """The copy of ``key`` was never run (the server stops)."""
        self.running.pop(key, None)

    def due(self, now: float) -> list[_Running]:
        """The mutations to note as still running now (each every :data:`NOTE_EVERY`)."""
        return _due(self.running.values(), now)


def _due(runs: Iterable[_Running], now: float) -> list[_Running]:
    """Those of ``runs`` to note now: unanswered for :data:`NOTE_EVERY` since their start
    or their last note (and for less than :data:`NOTE_FOR_S`)."""
    out = []
    for run in runs:
        if now - run.noted >= NOTE_EVERY and now - run.started < NOTE_FOR_S:
            run.noted = now
            out.append(run)
    return out


class Unanswered:
    """The metadata requests other than mutations handed to the metadata pool and not
    answered yet (I/O-thread state, no lock): a listing, mostly. Each is noted as running
    every :data:`NOTE_EVERY` seconds until its reply goes out, as a mutation is (a
    mutation is the :class:`DuplicateCache`'s to note). Bulk requests are not: a read or
    an upload chunk moves 4 MiB at most, and a fetch's pipeline has its own patience."""

    def __init__(self) -> None:
        self.running: dict[bytes, _Running] = {}
        self._seq = 0

    def start(self, msg: m.Message, request_id: int, route: list[bytes]) -> bytes:
        """A token for the request, handed back to :meth:`end` with its reply."""
        self._seq += 1
        token = self._seq.to_bytes(8, "little")
        self.running[token] = _Running(msg, request_id, route)
        return token

    def end(self, token: bytes) -> None:
        self.running.pop(token, None)

    def due(self, now: float) -> list[_Running]:
        return _due(self.running.values(), now)


def read_frame(backend: Backend, r: m.Read, request_id: int) -> bytes | memoryview:
    """The encoded reply to ``r``: its bytes read straight into the frame that carries them.

    The same frame as ``encode(handle(backend, r)[0], request_id)``, made with no copy
    of the data: the backend reads into a buffer that leaves room for the header
    before it (:func:`protocol.codec.encode_around`), and the frame is sent from it.
    """
    # Not cleared first: only what the read filled (n bytes) and the header are sent.
    buf = unfilled_bytearray(HEAD_ROOM + r.length)
    try:
        n, eof, version = backend.read_into(r.path, r.offset, memoryview(buf)[HEAD_ROOM:],
                                            r.version)
        if not 0 <= n <= r.length:
            raise OSError(errno.EIO, f"the backend read {n} of {r.length} bytes")
        return encode_around(m.Data(data=b"", eof=eof, version=version), request_id, "",
                             buf, HEAD_ROOM, n)
    except Exception as exc:
        return encode(_failed(r, exc), request_id)


class Server:
    """The broker. ``bind()`` then ``serve(stop_fd)`` from one thread; ``close()`` at the end."""

    MAX_PENDING = 4096
    MAX_PENDING_BYTES = 256 * 1024 * 1024

    def __init__(
        self,
        backend: Backend,
        authority: Authority,
        endpoint: str,
        *,
        workers: int = 8,
        meta_workers: int = 4,
        publish: str | None = None,
        curve: CurveServer | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.backend = backend
        self._inline: frozenset[type[m.Message]] = INLINE if backend.local_lookups else frozenset()
        self.authority = authority
        self.endpoint = endpoint
        self.publish_endpoint = publish
        self.bound_endpoint = ""
        self.bound_publish = ""
        self.curve = curve
        # A CURVE server answers ZAP on the context's one fixed inproc endpoint: its own
        # context, so two servers in one process (tests) do not collide.
        self._own_ctx = context is None and curve is not None
        self._ctx = context or (zmq.Context() if curve is not None else zmq.Context.instance())
        self._workers = max(1, workers)
        self._per_client_bulk = max(1, self._workers // 2)
        self._meta = ThreadPoolExecutor(max(1, meta_workers), thread_name_prefix="synthfs-meta")
        self._bulk = ThreadPoolExecutor(self._workers, thread_name_prefix="synthfs-bulk")
        self._reply_ep = f"inproc://synthfs-replies-{id(self):x}"
        self._local = threading.local()
        self._push_lock = threading.Lock()
        self._pushes: list[zmq.Socket] = []
        self._bad = RateLimitedLog(log, "bad frames")
        self._router: zmq.Socket | None = None
        self._pull: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._zap: zmq.Socket | None = None
        self.instance_id = secrets.token_hex(8)
        self.publish_key = new_key()  # the sealed channel's key: synthfs.protocol.sealed
        self._pub_seq = 0
        # I/O-thread-only state:
        self._pending = 0
        self._pending_bytes = 0
        self._bulk_active: dict[bytes, int] = {}
        self._bulk_backlog: dict[bytes, collections.deque[
            tuple[list[bytes], Envelope, int, bytes]]] = {}
        self.drc = DuplicateCache()
        self.unanswered = Unanswered()
        self._next_note = 0.0

    def __repr__(self) -> str:
        return f"Server({self.endpoint!r}, {self.backend!r})"

    # -- sockets -----------------------------------------------------------------------

    def bind(self) -> str:
        """Bind the sockets; returns the endpoint actually bound (a tcp port chosen by "*")."""
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(self._reply_ep)
        if self.curve is not None:
            # Before any CURVE socket binds: without a ZAP handler libzmq admits every key.
            self._zap = self._ctx.socket(zmq.REP)
            self._zap.setsockopt(zmq.LINGER, 0)
            self._zap.bind(ZAP_ENDPOINT)
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 500)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME + 4096)
        router.setsockopt(zmq.RCVHWM, 1000)
        router.setsockopt(zmq.SNDHWM, 1000)
        if self.curve is not None:
            apply(router, server_sockopts(self.curve.keys))
        self._router = router
        self.bound_endpoint = self._bind_private(router, self.endpoint)
        if self.publish_endpoint:
            pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                apply(pub, server_sockopts(self.curve.keys))
            self._pub = pub
            self.bound_publish = self._bind_private(pub, self.publish_endpoint)
        return self.bound_endpoint

    @staticmethod
    def _bind_private(sock: zmq.Socket, endpoint: str) -> str:
        if endpoint.startswith("ipc://"):
            old = os.umask(0o077)  # the socket file is created 0600
            try:
                sock.bind(endpoint)
            finally:
                os.umask(old)
            path = endpoint[len("ipc://"):]
            if not path.startswith("@"):
                os.chmod(path, 0o600)
        else:
            sock.bind(endpoint)
        bound = sock.getsockopt(zmq.LAST_ENDPOINT)
        return bound.decode() if isinstance(bound, bytes) else str(bound)

    def close(self) -> None:
        self._meta.shutdown(wait=True, cancel_futures=True)
        self._bulk.shutdown(wait=True, cancel_futures=True)
        self._flush_replies()
        with self._push_lock:
            for s in self._pushes:
                s.close(linger=0)
            self._pushes.clear()
        for sock in (self._router, self._pull, self._pub, self._zap):
            if sock is not None:
                sock.close()
        self._router = self._pull = self._pub = self._zap = None
        if self._own_ctx:
            self._ctx.term()
        for ep in (self.bound_endpoint, self.bound_publish):
            if ep.startswith("ipc://") and not ep[6:].startswith("@"):
                with contextlib.suppress(OSError):
                    os.unlink(ep[6:])

    # -- the I/O loop ------------------------------------------------------------------

    def serve(self, stop_fd: int | None = None, stop: threading.Event | None = None) -> None:
        """Serve until ``stop_fd`` becomes readable or ``stop`` is set."""
        assert self._router is not None and self._pull is not None, "bind() first"
        router, pull = self._router, self._pull
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        reading = True
        next_beat = time.monotonic()
        while True:
            timeout = 200 if stop is not None else None
            if self._pub is not None:
                now = time.monotonic()
                if now >= next_beat:
                    self._beat()
                    next_beat = now + BEAT_INTERVAL
                timeout = min(timeout or 10**9, int((next_beat - now) * 1000) + 1)
            if self.drc.running or self.unanswered.running:
                self._note_running()
                timeout = min(timeout or 10**9, int(NOTE_EVERY * 1000))
            events = dict(poller.poll(timeout))
            if (stop_fd is not None and stop_fd in events) or (stop is not None and stop.is_set()):
                log.info("stopping")
                return
            if pull in events:
                self._flush_replies()
            if self._zap is not None and self._zap in events:
                self._answer_zap()
            if router in events and self._can_read():
                # One request per wake-up: polling again costs less than the zmq.Again a
                # second non-blocking receive raises when (as usual) nothing else waits
                # (~6 µs against ~12 µs here); a burst pays one poll per request instead.
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    frames = None
                if frames is not None:
                    try:
                        self._on_request(frames)
                    except Exception:  # a bug must not take the server down
                        log.exception("bug while dispatching a request")
            want = self._can_read()
            if want != reading:
                poller.modify(router, zmq.POLLIN if want else 0)
                reading = want

    def _answer_zap(self) -> None:
        """One ZAP request (a new CURVE peer): admitted only with an allowed client key."""
        assert self._zap is not None and self.curve is not None
        try:
            frames = self._zap.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        reply, why = zap_reply(frames, self.curve.allowed)
        if reply[2] == b"200":
            log.info("%s", why)
        else:
            self._bad.warning("%s", why)
        self._zap.send_multipart(reply)

    def _can_read(self) -> bool:
        return self._pending < self.MAX_PENDING and self._pending_bytes < self.MAX_PENDING_BYTES

    def _flush_replies(self) -> None:
        pull, router = self._pull, self._router
        if pull is None or router is None:
            return
        while True:
            try:
                frames = pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            tag = frames[0].bytes
            if tag == b"P":
                if self._pub is not None:
                    path, version, parent = msgpack.unpackb(frames[1].bytes)
                    self._pub_seq += 1
                    self._pub.send_multipart([TOPIC, seal(self.publish_key, msgpack.packb(
                        ["inval", path, version, self.instance_id, self._pub_seq, parent]))])
                continue
            # b"R", size, cache key (b"": none), note token (b"": none), identity, [b""],
            # reply
            size = int(frames[1].bytes)
            key = frames[2].bytes
            ident = frames[4].bytes
            self._pending -= 1
            self._pending_bytes -= size
            if key:  # a mutation: remembered, and every connection that sent it answered
                out = frames[-1].bytes
                for route in self.drc.finish(key, out):
                    self._send(route, out)
            else:
                self.unanswered.end(frames[3].bytes)
            try:
                router.send_multipart(frames[4:], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # peer gone or its queue full: it will resend
                log.debug("reply dropped: %s", exc)
            if tag == b"B":
                self._bulk_done(ident)

    def _beat(self) -> None:
        assert self._pub is not None
        with contextlib.suppress(zmq.ZMQError):
            self._pub.send_multipart([TOPIC, seal(self.publish_key, msgpack.packb(
                ["beat", self.instance_id, self._pub_seq]))], zmq.NOBLOCK)

    def _reply_now(self, route: list[bytes], msg: m.Message, request_id: int) -> None:
        self._send(route, encode(msg, request_id))

    def _send(self, route: list[bytes], frame: bytes) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart([*route, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("reply dropped: %s", exc)

    def _note_running(self) -> None:
        """A Progress note to the client of each request running for a while: its wait
        starts again (:class:`protocol.client.Client`), and its agent does not resend it."""
        now = time.monotonic()
        if now < self._next_note:  # looked at most twice a NOTE_EVERY, not per request
            return
        self._next_note = now + NOTE_EVERY / 2
        for run in [*self.drc.due(now), *self.unanswered.due(now)]:
            touched = HANDLERS[type(run.msg)][2](run.msg) or [getattr(run.msg, "path", "/")]
            note = encode(m.Progress(path=touched[0] if touched else "/", done=0, total=0),
                          run.request_id)
            for route in run.routes:
                self._send(route, note)

    def _on_request(self, frames: list[bytes]) -> None:
        if len(frames) == 2:
            route, payload = frames[:1], frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            route, payload = frames[:2], frames[2]  # a REQ client's envelope
        else:
            self._bad.warning("bad multipart request (%d frames) dropped with an error reply",
                              len(frames))
            if frames:
                self._reply_now(frames[:1], m.Error(errno=errno.EBADMSG,
                                                    message="one frame per request"), 0)
            return
        try:
            env = decode(payload, request=True)  # bounded: see protocol.codec
        except DecodeError as exc:
            self._bad.warning("bad frame (%d bytes): %r", len(payload), str(exc)[:200])
            self._reply_now(route, m.Error(errno=errno.EBADMSG, message=str(exc)[:200]),
                            exc.request_id)
            return
        except Exception:  # the codec promises DecodeError only; never die on input
            log.exception("codec bug on a %d-byte frame", len(payload))
            self._reply_now(route, m.Error(errno=errno.EBADMSG, message="undecodable"), 0)
            return
        msg = env.msg
        if isinstance(msg, m.Register):
            self._submit(self._meta, "R", route, env, len(payload))
            return
        entry = HANDLERS.get(type(msg))
        if entry is None:
            self._reply_now(route, m.Error(errno=errno.EOPNOTSUPP,
                                           message=f"{msg.kind} is not a server request"),
                            env.request_id)
            return
        try:
            session = self.authority.check(env.token)
        except AuthError as exc:
            log.info("%s #%d refused: %s", msg.kind, env.request_id, exc.strerror)
            self._reply_now(route, m.Error(errno=exc.errno or errno.EKEYREJECTED,
                                           message=str(exc.strerror or "")[:200]),
                            env.request_id)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s #%d token %s", msg.kind, env.request_id, session.token_id)
        key = b""
        if type(msg) in MUTATIONS:
            verdict, key = self.drc.admit(DuplicateCache.key(session.agent_id, env.request_id),
                                          msg, env.request_id, route)
            if verdict == "wait":
                log.info("%s #%d resent while it runs: it gets the answer of its first copy",
                         msg.kind, env.request_id)
                return
            if verdict == "again":
                log.info("%s #%d resent after it ran: its answer again", msg.kind,
                         env.request_id)
                self._send(route, key)
                return
        if type(msg) in self._inline:
            self._answer_inline(route, env)
            return
        if entry[1]:
            ident = route[0]
            if self._bulk_active.get(ident, 0) < self._per_client_bulk:
                self._bulk_active[ident] = self._bulk_active.get(ident, 0) + 1
                self._submit(self._bulk, "B", route, env, len(payload), key)
            else:
                self._bulk_backlog.setdefault(ident, collections.deque()).append(
                    (route, env, len(payload), key))
                self._pending += 1
                self._pending_bytes += len(payload)
        else:
            # noted while it runs (a mutation by the cache: it may have other routes)
            token = b"" if key else self.unanswered.start(msg, env.request_id, route)
            self._submit(self._meta, "R", route, env, len(payload), key, token)

    def _answer_inline(self, route: list[bytes], env: Envelope) -> None:
        """A read-only lookup of one name (lstat, readlink): a few µs, cheaper than a handoff."""
        assert self._router is not None
        try:
            reply, _ = handle(self.backend, env.msg)
            out = encode(reply, env.request_id)
        except Exception:
            log.exception("bug while serving %s", env.msg.kind)
            out = encode(m.Error(errno=errno.EIO, message="internal error"), env.request_id)
        try:
            self._router.send_multipart([*route, out], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("reply dropped: %s", exc)

    def _bulk_done(self, ident: bytes) -> None:
        backlog = self._bulk_backlog.get(ident)
        if backlog:
            route, env, size, key = backlog.popleft()
            if not backlog:
                del self._bulk_backlog[ident]
            self._pending -= 1
            self._pending_bytes -= size
            self._submit(self._bulk, "B", route, env, size, key)  # keeps its active slot
            return
        n = self._bulk_active.get(ident, 0) - 1
        if n > 0:
            self._bulk_active[ident] = n
        else:
            self._bulk_active.pop(ident, None)

    def _submit(self, pool: ThreadPoolExecutor, tag: str, route: list[bytes], env: Envelope,
                size: int, key: bytes = b"", token: bytes = b"") -> None:
        self._pending += 1
        self._pending_bytes += size
        try:
            pool.submit(self._work, tag, route, env, size, key, token)
        except RuntimeError:  # shutting down
            self._pending -= 1
            self._pending_bytes -= size
            if key:
                self.drc.drop(key)
            self.unanswered.end(token)

    # -- workers -----------------------------------------------------------------------

    def _push(self) -> zmq.Socket:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(self._reply_ep)
            self._local.push = sock
            with self._push_lock:
                self._pushes.append(sock)
        return sock

    def _work(self, tag: str, route: list[bytes], env: Envelope, size: int,
              key: bytes = b"", token: bytes = b"") -> None:
        started = time.perf_counter()
        changed: Changed = []
        msg = env.msg
        out: bytes | memoryview | None = None
        try:
            if isinstance(msg, m.Register):
                try:
                    registered = self.authority.register(msg)
                    # Only a registered agent reads the channel (and a test's stand-in
                    # publisher that registered with the key, when the server has none).
                    reply: m.Message = attrs.evolve(registered, publish_key=self.publish_key)
                except AuthError as exc:
                    reply = m.Error(errno=exc.errno or errno.EACCES,
                                    message=str(exc.strerror or "")[:200])
            elif isinstance(msg, m.Read):
                reply, out = msg, read_frame(self.backend, msg, env.request_id)
            else:
                reply, changed = handle(self.backend, msg, want_changes=self._pub is not None)
            if out is None:
                out = encode(reply, env.request_id)
            if len(out) > MAX_FRAME:
                out = encode(m.Error(errno=errno.EOVERFLOW, message="reply too large for a frame"),
                             env.request_id)
        except Exception:
            log.exception("bug while serving %s", msg.kind)
            out = encode(m.Error(errno=errno.EIO, message="internal error"), env.request_id)
            reply = m.Error(errno=errno.EIO)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s #%d -> %s %.0f µs", msg.kind, env.request_id,
                      reply.kind if not isinstance(reply, m.Error)
                      else f"error {errno.errorcode.get(reply.errno, reply.errno)}",
                      (time.perf_counter() - started) * 1e6)
        push = self._push()
        # Invalidations first: the I/O loop publishes them before it sends the reply.
        for path, version, parent in changed:
            push.send_multipart([b"P", msgpack.packb([wire_name(path), version, parent])])
        push.send_multipart([tag.encode(), str(size).encode(), key, token, *route, out],
                            copy=False)
