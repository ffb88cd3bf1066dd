"""The agent's link to its servers: registration, session tokens, spreading, failover.

Trusts: the servers it was pointed at (each proves itself by accepting our HMAC
and serving the repository). Holds the secrets of the agent, in memory only:
the bootstrap key (to register) and one session token per server (attached to
every request through :class:`protocol.client.Client`'s ``token_provider``).
None appears in a repr or a log line.

**One server or several** (``synthfs agent --server EP1,EP2``): every server
serves the same repository (a server that reports another repository id is
refused). The agent registers with each (the bootstrap key is the fleet's;
each server gives its own token: nothing is shared between servers) and
sends each request to the next server in turn that is up: a chunked upload
and its commit go to one server (its chunks are staged there). A server is
*down* from the moment its connection closes (its process died: the socket
monitor says so at once, :class:`protocol.client.PeerGone`) or a request to it
goes unanswered for one attempt (``timeout / 3``), until its connection
completes again; requests go to the servers that are up, or, when none is,
to each in turn until the call's budget (``timeout``) is spent. A re-registration
is transparent: shortly before a token expires, or when a server answers
EKEYEXPIRED / EKEYREJECTED (it restarted and forgot it), the agent registers
with it again and resends the request once.

**Failover of a request in flight**, and why nothing is applied twice:

* Reads (``Stat``, ``List``, ``Read``, ``Readlink``) and ``UploadAbort`` have
  no effect: resent to the next server at once.
* Upload chunks are staged by the server that took them: a transfer whose
  server is lost starts again from its first chunk on another one, and the
  commit follows the chunks. A commit whose chunks died with their server is
  answered EIO by the next one (it knows no such upload), and the agent's
  upload is made once again (``server_pid`` then names another server:
  :mod:`agent.upload`).
* A mutation (``UploadCommit``, ``Mkdir``, ``Remove``, ``Rename``, ``Symlink``,
  ``Link``, ``SetAttr``) moves to another server only when its own server's
  connection *closed* (the process is gone, so it will never apply the request
  later). Its outcome there is unknown (applied just before the death, or not),
  so it is resent and an error that says "already done" is checked against the
  repository (:meth:`Upstream._settle`): ``Remove`` answered ENOENT succeeded;
  ``Mkdir`` answered EEXIST succeeded if a directory is there; ``Symlink``
  EEXIST if a link with the same text is there; ``Rename`` ENOENT if the
  destination exists; ``Link`` EEXIST if both names are one file; an exclusive
  ``UploadCommit`` answered EEXIST if the file there is the one it made: its
  size, and its mtime carrying the upload's stamp (:mod:`synthfs.stamps`, as
  NFSv3's exclusive create keeps a verifier; a file another client made is a
  match once in a million, and only if made in that window), and a plain commit
  installs the same bytes again. The check says what the repository holds, not
  who made it: a concurrent client that did the same thing in that window makes
  the retry succeed as well. A ``Rename`` with ``RENAME_EXCHANGE`` cannot be
  told apart from its repetition: it is never resent (EIO once an attempt went
  unanswered). A mutation whose server stops answering without closing (hung)
  stays with it until the budget is spent, then ETIMEDOUT (EIO to the guest), as
  with one server: sent elsewhere, it could be applied again when the hung server
  wakes up, after a later change. Resent there, it keeps its request id: the
  server's duplicate request cache (:class:`server.service.DuplicateCache`) runs
  it once, answers a resend that comes while it runs when it ends, and one that
  comes later with the remembered answer (so a slow rename is never run twice at
  once); the checks above catch a repeat the cache has forgotten.
* A mutation or a listing that runs long (a directory rename on S3 copies
  every key; a first listing of a large directory on S3 makes a HEAD per
  entry) is not "hung": its server sends a ``Progress`` note every
  :data:`server.service.NOTE_EVERY` seconds while it runs, each starting the
  attempt's wait again, and the agent passes them on to its client
  (``on_note``), whose wait starts again too. So a long mutation is waited
  for as long as it runs (up to :data:`server.service.NOTE_FOR_S`), and a
  server that stops (hung, not dead) still ends the call within the budget.

A server that stops answering is logged once (a warning naming it), and
once more when it answers again: not once per failed request.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from synthfs.protocol.bootstrap import register_mac
from synthfs.protocol.client import Client, PeerGone, Unreachable
from synthfs.protocol.curve import remote_tcp
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Done,
    FileKind,
    Link,
    LinkTarget,
    Message,
    Mkdir,
    Progress,
    Readlink,
    Register,
    Registered,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    UploadAbort,
    UploadChunk,
    UploadCommit,
)
from synthfs.stamps import made_by

__all__ = ["ATTEMPTS", "Upstream"]

log = logging.getLogger(__name__)

_AUTH_ERRNOS = (errno.EKEYEXPIRED, errno.EKEYREJECTED)
#: Register again when less than this much of the token's life is left.
_RENEW_MARGIN_NS = 200_000_000
#: Attempts per call (across servers, or resends to one): each gets ``timeout / ATTEMPTS``.
ATTEMPTS = 3
#: Requests with an effect: moved to another server only when theirs is gone.
_MUTATIONS: frozenset[type[Message]] = frozenset(
    {UploadCommit, Mkdir, Remove, Rename, Symlink, Link, SetAttr})

#: Uploads whose server the agent remembers at most (a commit or an abort ends each).
_MAX_UPLOADS = 1024

_M = TypeVar("_M", bound=Message)


class _Server:
    """One server: its connection, the session it gave this agent, whether it is up."""

    def __init__(self, endpoint: str, attempt: float,
                 sockopts: Mapping[int, int | bytes] | None, alone: bool,
                 on_note: Callable[[Progress], None] | None = None) -> None:
        self.endpoint = endpoint
        self.alone = alone
        self.token = ""
        self.expires_at_ns = 0
        self.token_id = ""
        self.repo_id = ""
        self.server_pid = 0
        self.publish_key = ""  # the sealed invalidation channel's (synthfs.protocol.sealed)
        self.paths: tuple[str, ...] = ()
        #: another repository than the agent's: never used
        self.refused = ""
        #: a publication came sealed with another key: register again to learn the new one
        self.stale_key = False
        #: monotonic time of the first unanswered request of an outage (None: answering)
        self.down_since: float | None = None
        self.client = Client(endpoint, timeout=attempt, retries=0,
                             token_provider=lambda: self.token, sockopts=sockopts, watch=True,
                             on_note=on_note)

    def __repr__(self) -> str:
        return f"_Server({self.endpoint!r}, token_id={self.token_id!r})"

    def stale(self) -> None:
        self.stale_key = True

    def up(self) -> bool:
        """Worth a request: connected now, or not known to be down."""
        if self.refused:
            return False
        self.client.events()
        if self.client.connected is False:
            if self.down_since is None:  # closed between requests: none was lost
                self.down_since = time.monotonic()
                log.warning("the server at %s does not answer (it closed the connection): %s",
                            self.endpoint, "requests that need it fail until it does"
                            if self.alone else "requests go to the other servers")
            return False
        return self.down_since is None or self.client.connected is True


class Upstream:
    """Registered sessions with the servers at ``endpoints`` (one or several)."""

    def __init__(self, endpoints: str | Sequence[str], key: bytes, *, timeout: float = 5.0,
                 sockopts: Mapping[int, int | bytes] | None = None) -> None:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps:
            raise ValueError("no server endpoint")
        self.endpoints = tuple(eps)
        self.endpoint = eps[0]
        self.timeout = float(timeout)
        self._key = key
        self.agent_id = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        #: Called with each Progress note of a server on the request in flight (the agent
        #: passes it on to its client, whose wait then starts again as well).
        self.on_note: Callable[[Progress], None] | None = None
        self.servers = [_Server(ep, self.timeout / ATTEMPTS, sockopts, len(eps) == 1,
                                self._note) for ep in eps]
        self._next = 0
        self._uploads: dict[str, _Server] = {}  # upload id -> the server holding its chunks
        self.repo_id = ""
        self.registrations = 0
        #: Requests moved to another server because theirs went away, and how long the
        #: longest such move kept its request waiting (seconds).
        self.failovers = 0
        self.longest_failover = 0.0
        #: Called with the new repo id when a re-registration reports another one.
        self.on_repo_change: Callable[[str], None] | None = None
        #: Called after a registration that told host paths not known before (a server
        #: that was down at start-up, or restarted with another state directory).
        self.on_new_paths: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Upstream({', '.join(self.endpoints)})"

    def _note(self, note: Progress) -> None:
        if self.on_note is not None:
            self.on_note(note)

    # -- what the rest of the agent reads ---------------------------------------------

    @property
    def server_pid(self) -> int:
        """The pid of the server the next request goes to (changes when it is lost)."""
        return self._peek().server_pid

    @property
    def publish_key(self) -> str:
        return self.servers[0].publish_key

    @property
    def server_paths(self) -> tuple[str, ...]:
        """Every server's own host paths (``Registered.trusted_paths``)."""
        return tuple(p for s in self.servers for p in s.paths)

    @property
    def token_id(self) -> str:
        return self.servers[0].token_id

    @property
    def down_since(self) -> float | None:
        """When the first server still down stopped answering (None: all answer)."""
        downs = [s.down_since for s in self.servers if s.down_since is not None]
        return min(downs) if downs else None

    def local_server_paths(self) -> tuple[str, ...]:
        """The host paths of the servers on this machine (``Registered.trusted_paths``)."""
        return tuple(p for s in self.servers if not remote_tcp(s.endpoint) for p in s.paths)

    def local_server_pids(self) -> tuple[int, ...]:
        """The pids of the servers on this machine, as each last registered this agent.

        A dead one stays listed until it is replaced: the supervisor then refuses
        every pid it cannot place (fail closed), as with one server that restarts.
        """
        return tuple(s.server_pid for s in self.servers
                     if s.server_pid and not remote_tcp(s.endpoint))

    def close(self) -> None:
        if self.failovers:
            log.warning("%d requests were moved to another server; the longest waited "
                        "%.3f s", self.failovers, self.longest_failover)
        for s in self.servers:
            s.client.close()

    # -- registration -----------------------------------------------------------------

    def register(self) -> Registered:
        """Register with every server; the first answer. Raises when none answered.

        A server that does not answer now is registered with when it is next used.
        """
        first: Registered | None = None
        error: OSError | None = None
        done: set[int] = set()
        for _ in range(ATTEMPTS):  # a server still starting: a few attempts
            unanswered = False
            for i, s in enumerate(self.servers):
                if i in done:
                    continue
                try:
                    reply = self._register(s)
                except Unreachable as exc:
                    self._lost(s, exc)
                    error, unanswered = exc, True
                except OSError as exc:
                    error = exc
                else:
                    done.add(i)
                    first = first or reply
            if first is not None or not unanswered:
                break
        if first is None:
            assert error is not None
            raise error
        return first

    def _register(self, s: _Server) -> Registered:
        """Prove the bootstrap key to ``s`` (HMAC, the key never travels) and take a token.

        A registration that reached a server started after it was made (it waited
        in the queue while the server started) is refused ESTALE: made again, once.
        """
        s.token = ""
        for attempt in range(2):
            nonce = secrets.token_hex(16)
            ts = time.time_ns()
            mac = register_mac(self._key, self.agent_id, nonce, ts)
            try:
                reply = s.client.call(Register(version=PROTOCOL_VERSION, agent_id=self.agent_id,
                                               nonce=nonce, timestamp_ns=ts, mac=mac))
            except OSError as exc:
                if exc.errno == errno.ESTALE and attempt == 0:
                    continue
                raise
            break
        if not isinstance(reply, Registered):
            raise OSError(errno.EPROTO, f"server answered Register with {reply.kind}")
        if self.repo_id and reply.repo_id != self.repo_id:
            if len(self.servers) > 1:
                s.refused = reply.repo_id
                log.error("the server at %s serves repository %r, not %r: not using it",
                          s.endpoint, reply.repo_id, self.repo_id)
                raise OSError(errno.EXDEV, f"{s.endpoint} serves another repository")
            if self.on_repo_change is not None:
                self.on_repo_change(reply.repo_id)
        s.refused = ""
        s.stale_key = False
        s.token = reply.token
        s.expires_at_ns = reply.expires_at_ns
        s.token_id = reply.token_id
        s.repo_id = self.repo_id = reply.repo_id
        s.server_pid = reply.server_pid
        s.publish_key = reply.publish_key
        news = not set(reply.trusted_paths) <= set(s.paths)
        s.paths = reply.trusted_paths
        if news and self.on_new_paths is not None:
            self.on_new_paths()
        self.registrations += 1
        log.info("registered with %s as %s (token %s)", s.endpoint, self.agent_id,
                 reply.token_id)
        return reply

    def _fresh(self, s: _Server) -> None:
        if not s.token or time.time_ns() > s.expires_at_ns - _RENEW_MARGIN_NS:
            self._register(s)

    def housekeeping(self) -> None:
        """Between requests: register with a server that came back (its channel key)."""
        for s in self.servers:
            if (not s.token or s.stale_key) and s.up() and s.client.connected:
                try:
                    self._register(s)
                except OSError as exc:
                    log.debug("registration with %s: %s", s.endpoint, exc)

    # -- choosing a server ------------------------------------------------------------

    def _peek(self) -> _Server:
        n = len(self.servers)
        for k in range(n):
            s = self.servers[(self._next + k) % n]
            if s.up():
                return s
        return self.servers[self._next % n]

    def _pick(self, avoid: _Server | None = None) -> _Server:
        """The next server that is up, in turn (each in turn when none is)."""
        n = len(self.servers)
        usable = [s for s in self.servers if not s.refused] or self.servers
        for k in range(n):
            s = self.servers[(self._next + k) % n]
            if s is not avoid and s.up():
                self._next = (self._next + k + 1) % n
                return s
        # none is up: each in turn (one may come back within the budget)
        s = usable[self._next % len(usable)]
        if s is avoid and len(usable) > 1:
            s = usable[(self._next + 1) % len(usable)]
        self._next = (self.servers.index(s) + 1) % n
        return s

    def _route(self, msg: Message) -> _Server:
        """Where ``msg`` goes first: an upload's commit or abort where its chunks went."""
        if isinstance(msg, UploadCommit | UploadAbort):
            s = self._uploads.get(msg.upload_id)
            if s is not None and s.up():
                return s
        return self._pick()

    def _staged(self, upload_id: str, s: _Server) -> None:
        """The chunks of ``upload_id`` are on ``s`` (kept until its commit or abort ends)."""
        self._uploads[upload_id] = s
        while len(self._uploads) > _MAX_UPLOADS:  # some caller never ended one
            del self._uploads[next(iter(self._uploads))]

    def _ended(self, msg: Message, ok: bool) -> None:
        """A commit that succeeded, or an abort, ends its upload's routing."""
        if isinstance(msg, UploadAbort) or (ok and isinstance(msg, UploadCommit)):
            self._uploads.pop(msg.upload_id, None)

    # -- health -------------------------------------------------------------------------

    def _lost(self, s: _Server, exc: Unreachable) -> None:
        """A request to ``s`` went unanswered: log the outage when it starts."""
        if s.down_since is None:
            s.down_since = time.monotonic()
            what = ("does not answer (it closed the connection while a request waited)"
                    if isinstance(exc, PeerGone)
                    else f"does not answer (no reply within {exc.seconds:.3g} s)")
            others = "requests go to the other servers" if len(self.servers) > 1 \
                else "requests that need it fail until it does"
            log.warning("the server at %s %s: %s", s.endpoint, what, others)
        if not isinstance(exc, PeerGone):
            s.client.reopen()  # drop what waits in its queue: never delivered late

    def _answered(self, s: _Server) -> None:
        if s.down_since is not None:
            log.warning("the server at %s answers again (after %.1f s)", s.endpoint,
                        time.monotonic() - s.down_since)
            s.down_since = None

    # -- calls --------------------------------------------------------------------------

    def call(self, msg: Message, expect: type[_M]) -> _M:
        """Forward ``msg`` (to another server when its own is lost: see the module doc)."""
        try:
            reply = self._call(msg)
        except OSError:
            self._ended(msg, False)
            raise
        self._ended(msg, True)
        if not isinstance(reply, expect):
            raise OSError(errno.EPROTO, f"server answered {msg.kind} with {reply.kind}")
        return reply

    def _on(self, s: _Server, msg: Message, request_id: int | None = None) -> Message:
        """``msg`` to ``s`` (as ``request_id``: a resend); re-register and resend once on
        an authentication error."""
        self._fresh(s)
        try:
            return s.client.call(msg, request_id)
        except OSError as exc:
            if exc.errno not in _AUTH_ERRNOS or isinstance(exc, Unreachable):
                raise
            log.info("server %s refused the token (%s): registering again", s.endpoint,
                     errno.errorcode[exc.errno])
            self._register(s)
            return s.client.call(msg, request_id)

    def _call(self, msg: Message) -> Message:
        mutation = type(msg) in _MUTATIONS
        s = self._route(msg)
        started = time.monotonic()
        moved = False  # sent again elsewhere after its server went away
        unknown = False  # an earlier attempt may have been applied
        # A mutation keeps its request id while it stays with one server: a resend is
        # then recognised there (a duplicate request cache) and never run twice.
        rid = s.client.new_request_id() if mutation else None
        for attempt in range(ATTEMPTS):
            try:
                reply = self._on(s, msg, rid)
            except Unreachable as exc:
                self._lost(s, exc)
                if attempt == ATTEMPTS - 1:
                    raise Unreachable(exc.endpoint, time.monotonic() - started,
                                      exc.strerror or "") from None
                gone = isinstance(exc, PeerGone)
                unknown = unknown or mutation
                if unknown and isinstance(msg, Rename) and msg.flags & RenameFlags.EXCHANGE:
                    # applied twice, it undoes itself; neither resend tells: never resent
                    raise OSError(errno.EIO, f"{s.endpoint} did not answer an exchange of "
                                  f"{msg.src} and {msg.dst}: its outcome is unknown") from None
                if mutation and not gone:
                    continue  # hung, not gone: resend to it (see the module doc)
                other = self._pick(avoid=s)
                moved = moved or other is not s
                if mutation and other is not s:
                    rid = other.client.new_request_id()
                s = other
                continue
            except OSError as exc:
                if not unknown:
                    raise
                self._answered(s)
                self._moved(moved, started, msg.kind)
                return self._settle(s, msg, exc)
            self._answered(s)
            self._moved(moved, started, msg.kind)
            return reply
        raise AssertionError("unreachable")

    def _moved(self, moved: bool, started: float, what: str = "") -> None:
        """Count a request answered by another server than the one it was sent to first."""
        if moved:
            took = time.monotonic() - started
            self.failovers += 1
            if took > self.longest_failover:
                log.warning("%s moved to another server, answered %.3f s after it was sent "
                            "(the longest such wait so far; %d moved)", what or "a request",
                            took, self.failovers)
            self.longest_failover = max(self.longest_failover, took)

    def _settle(self, s: _Server, msg: Message, exc: OSError) -> Message:
        """The reply to ``msg``, resent after its first server went away, that failed
        with ``exc``: success when the repository shows ``msg`` was applied before."""
        def attrs_of(path: str) -> StatReply | None:
            try:
                reply = self._on(s, Stat(path=path))
            except OSError:
                return None
            return reply if isinstance(reply, StatReply) else None

        done: Message | None = None
        code = exc.errno
        if isinstance(msg, Remove) and code == errno.ENOENT:
            done = Done()
        elif isinstance(msg, Mkdir) and code == errno.EEXIST:
            a = attrs_of(msg.path)
            done = a if a is not None and a.attrs.kind == FileKind.DIR else None
        elif isinstance(msg, Symlink) and code == errno.EEXIST:
            try:
                text = self._on(s, Readlink(path=msg.path))
            except OSError:
                text = None
            if isinstance(text, LinkTarget) and text.target == msg.target:
                done = attrs_of(msg.path)
        elif isinstance(msg, Rename) and code == errno.ENOENT:
            done = Done() if attrs_of(msg.dst) is not None else None
        elif isinstance(msg, UploadCommit) and msg.exclusive and code == errno.EEXIST:
            a = attrs_of(msg.path)
            if (a is not None and a.attrs.kind == FileKind.FILE and a.attrs.size == msg.size
                    and made_by(msg.upload_id, a.attrs.mtime_ns, time.time_ns())):
                done = a
        elif isinstance(msg, Link) and code == errno.EEXIST:
            a, b = attrs_of(msg.src), attrs_of(msg.dst)
            if a is not None and b is not None and a.attrs.ino == b.attrs.ino:
                done = b
        if done is None:
            raise exc
        log.info("%s resent after %s went away: it had been applied", msg.kind, s.endpoint)
        return done

    def pipeline(
        self, count: int, make: Callable[[int], Message], expect: type[_M], window: int = 4
    ) -> Iterator[tuple[int, _M]]:
        """Send ``make(0) .. make(count-1)`` pipelined; yield ``(i, reply)`` in order.

        On an authentication error at ``i``, register again and go on from ``i``
        (again at a later ``i`` when the token expires again: a long transfer may
        outlive several tokens; twice at the same ``i`` is an error). When the
        server is lost, the rest goes to another one: reads go on from ``i``, upload
        chunks start again from the first (the lost server held the staged ones),
        and the upload's commit then goes where its chunks went.
        """
        if count <= 0:
            return
        first = make(0)
        staged = isinstance(first, UploadChunk)
        s = self._pick()
        start = 0
        renewed_at = -1
        lost = 0
        moved = False
        switched = True  # to a server whose token may be old
        started = time.monotonic()
        while start < count:
            if staged:
                assert isinstance(first, UploadChunk)
                self._staged(first.upload_id, s)
            base = start
            try:
                if switched:  # (not after a re-registration: that token is fresh)
                    self._fresh(s)
                    switched = False
                replies = s.client.pipeline((make(i) for i in range(base, count)), window)
                for n, reply in enumerate(replies):
                    if not isinstance(reply, expect):
                        raise OSError(errno.EPROTO, f"server answered with {reply.kind}")
                    if lost:
                        self._answered(s)
                    yield base + n, reply
                    start = base + n + 1
            except Unreachable as exc:
                self._lost(s, exc)
                lost += 1
                if lost >= ATTEMPTS:
                    raise
                other = self._pick(avoid=s)
                moved = moved or other is not s
                switched = True
                s = other
                if staged:
                    start = 0
            except OSError as exc:
                if exc.errno not in _AUTH_ERRNOS or renewed_at == start:
                    raise
                renewed_at = start
                self._register(s)
        self._moved(moved, started, f"a transfer of {count} chunks")
