"""The interposer's view of the repository: the agent, behind a small attribute cache.

Implements :class:`interposer.ports.Repo` over a :class:`protocol.client.Client`
connected to the agent's private socket. Trusts the agent (a trusted process
of the same user). The cache holds what Stat and List (READDIRPLUS) replies
said, for ``ttl`` seconds (a listing says too that a name it lacks does not
exist); every mutation this interposer makes invalidates
what it touched at once, so a sandbox sees its own changes immediately and
other agents' changes within ``ttl``. Opens go to the agent, which
revalidates with the server (close-to-open consistency), except a read-only
open of a file the agent gave a lease on (:mod:`synthfs.protocol.leases`): while the
agent's lease channel vouches for it, and the copy's stat is the one seen at
the grant, the interposer opens the same copy itself, with no round trip. The
channel is drained (never waited on) before a lease is used; every change this
sandbox makes to a path drops its lease at once, and an open for writing,
truncating or creating always asks the agent.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Hashable

import zmq
from attrs import evolve

from synthfs.interposer import abi
from synthfs.interposer.inodes import Inodes, state_of
from synthfs.interposer.interrupt import Interruption
from synthfs.interposer.progress import ProgressLine
from synthfs.protocol.client import SERVER_UNREACHABLE, Client, Unreachable
from synthfs.protocol.leases import LeaseFeed, Leases
from synthfs.protocol.leases import signature as copy_signature
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Attrs,
    Commit,
    DirEntry,
    FileKind,
    Hello,
    Link,
    LinkTarget,
    List,
    Listing,
    Message,
    Mkdir,
    Open,
    Opened,
    Progress,
    Readlink,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    Sync,
    Welcome,
)
from synthfs.protocol.naming import object_name

__all__ = ["Remote"]

log = logging.getLogger(__name__)

#: Seconds an Open, Commit or Sync may take (a cold fetch or an upload of a large file).
BULK_TIMEOUT = 3600.0
#: Open flags a leased open may carry: read-only, nothing that creates or truncates.
_LEASE_FLAGS = (
    os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NOATIME | 0o100000
)  # 0o100000: O_LARGEFILE (0 in Python's os on x86_64, set by 32-bit-era callers)


def _restartable(msg: Message) -> bool:
    """Whether ``msg`` changes nothing, so that its call may be given up for a signal
    and made again (:mod:`synthfs.interposer.interrupt`): an open for reading too."""
    if isinstance(msg, Open):
        return not msg.flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC)
    return isinstance(msg, Hello | Stat | List | Readlink)


def _cacheable(attrs: Attrs) -> bool:
    """Whether attributes may be kept for ``ttl``: not those of a file of several names,
    which a write through another name changes without this sandbox hearing of it."""
    return attrs.nlink <= 1 or attrs.kind is not FileKind.FILE


class Remote:
    """The repository as the agent serves it, with the interposer's caches."""

    def __init__(
        self,
        endpoint: str,
        *,
        ttl: float = 1.0,
        timeout: float = 10.0,
        report: Callable[[str], None] | None = None,
        progress: ProgressLine | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ttl = ttl
        #: told once why calls fail with EIO (the agent or its server is away)
        self._report = report or log.warning
        self._reported = False
        #: the agent's pid (Welcome): a wait on a dead agent ends within a second (EIO)
        self._agent_pid: int | None = None
        self._agent_lost = False
        # One attempt, no resend: a live agent answers within its own server budget
        # (its --timeout, 5 s by default: SERVER_UNREACHABLE when the server did not),
        # and a resend half-way through ours would drop that answer; a dead one is
        # seen within a second (alive).
        self._client = Client(endpoint, timeout=timeout, retries=0, alive=self._waiting_on)
        # Open, Commit and Sync move whole files (a cold fetch, an upload): they get
        # a patient client of their own, and are never resent while the agent works.
        # Its Progress notes (a long cold fetch) go to the terminal's progress line.
        self._progress = progress
        self._bulk = Client(endpoint, timeout=BULK_TIMEOUT, retries=0, alive=self._waiting_on,
                            on_note=self._note)
        #: a signal for the guests (the supervisor's): a call that changes nothing gives up
        self.interruption: Interruption | None = None
        #: whether the request in flight may be given up, and whether it was
        self._restartable = False
        self._given_up = False
        self._attrs: dict[str, tuple[float, Attrs | None]] = {}
        self._links: dict[str, tuple[float, str]] = {}
        #: the names of each directory listed, and until when a name it lacks is absent
        self._names: dict[str, tuple[float, frozenset[str]]] = {}
        self._by_host: dict[str, str] = {}
        self._local: dict[str, str] = {}
        #: (size, mtime_ns) of each local copy when it last matched the server's object
        self._synced: dict[str, tuple[int, int]] = {}
        #: paths this sandbox opened for writing: what an exit's sync looks at
        self._written: set[str] = set()
        #: local copies of removed names whose file kept another name, open for writing:
        #: host path -> the copy's (st_dev, st_ino, size, mtime) at the remove
        self._unhomed: dict[str, tuple[int, int, int, int]] = {}
        #: paths seen as directories (see :meth:`known_dir`)
        self._dirs: set[str] = set()
        #: st_ino shown for each path: the first one seen this session, never another
        #: file's (the server installs every upload as a new file, and its file system
        #: reuses the number freed): see :mod:`synthfs.interposer.inodes`
        self._ino = Inodes(self._server_ino)
        self._probe()  # no agent listening: say so now, not after the whole timeout
        self._reported = True  # a failed start-up is the caller's to tell
        welcome = self._call(Hello(version=PROTOCOL_VERSION))
        self._reported = False
        if not isinstance(welcome, Welcome):
            raise OSError(errno.EPROTO, f"agent at {endpoint} answered {welcome.kind!r} to hello")
        self.refused_paths: tuple[str, ...] = welcome.refused_paths
        #: told the paths a later Welcome adds (the supervisor's HostSide refuses them)
        self.refused_more: Callable[[tuple[str, ...]], None] | None = None
        self.trusted_pids: tuple[int, ...] = welcome.trusted_pids
        self._agent_pid = welcome.trusted_pids[0] if welcome.trusted_pids else None
        #: requests sent to the agent, and the time they took (``--stats``)
        self.requests = 1
        self.agent_ns = 0
        #: opens served from a lease (no round trip)
        self.leased_opens = 0
        self._leases: Leases | None = None
        self._feed: LeaseFeed | None = None
        if welcome.leases:
            self._leases = Leases()
            self._feed = LeaseFeed(zmq.Context.instance(), welcome.leases, self._leases)

    def same_agent(self) -> bool:
        """Whether the agent that greeted us still listens on its socket (a spare
        supervisor greeted it ahead of its run: a restarted one may refuse more)."""
        if not self.endpoint.startswith("ipc://"):
            return True  # (a tcp:// agent is another host's: nothing of it to refuse here)
        from synthfs.interposer.hostside import peer_pid

        pid = peer_pid(self.endpoint[len("ipc://") :])
        return pid is not None and pid == self._agent_pid

    def close(self) -> None:
        self._unhomed.clear()
        if self._feed is not None:
            self._feed.close()
        self._client.close()
        self._bulk.close()

    def _agent_alive(self) -> bool:
        pid = self._agent_pid
        return pid is None or abi.pid_running(pid)

    def _waiting_on(self) -> bool:
        """Whether to go on waiting for an answer (asked every second): not once the
        agent died, nor for a call that changes nothing once a signal was armed."""
        stop = self.interruption
        if self._restartable and stop is not None and stop.pending():
            self._given_up = True
            return False
        return self._agent_alive()

    def _call(self, msg: Message, client: Client | None = None) -> Message:
        self._given_up = False
        pid = self._agent_pid
        if pid is not None and not self._agent_lost:
            try:
                os.kill(pid, 0)  # ~1 µs: an agent that died since is replaced before we ask
            except ProcessLookupError:
                self._agent_lost = True
            except PermissionError:
                pass
        try:
            if self._agent_lost:  # the agent died: its successor (if any) says who it is
                self._rehello()
            return (client or self._client).call(msg)
        except Unreachable as exc:
            if self._given_up and self.interruption is not None:  # the call is made again
                self.interruption.give_up()
            self._agent_lost = not self._agent_alive()
            self._away(f"the agent at {self.endpoint} did not answer within {exc.seconds:.3g} s")
            raise OSError(errno.EIO, f"agent unreachable: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == SERVER_UNREACHABLE:
                self._away(f"the agent cannot reach its server ({exc.strerror})")
                raise OSError(errno.EIO, exc.strerror) from None
            if exc.errno == errno.EIO and self._agent_lost:  # _rehello: nobody listens
                self._away(exc.strerror or "the agent has gone")
            raise

    def _away(self, why: str) -> None:
        """Tell the user (once) why calls on the mount fail with EIO."""
        if not self._reported:
            self._reported = True
            self._report(why)

    def _probe(self) -> None:
        """OSError (ENOENT: no socket file, ECONNREFUSED: nobody listens on it) unless
        something listens on the agent's ``ipc://`` socket; costs one connect."""
        if not self.endpoint.startswith("ipc://"):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(self.endpoint[len("ipc://") :])
        except OSError as exc:
            why = "no such socket" if exc.errno == errno.ENOENT else "nothing listens on it"
            raise OSError(exc.errno, why) from None
        finally:
            probe.close()

    def _rehello(self) -> None:
        """Greet whoever listens on the agent's socket now; EIO at once when nobody does."""
        try:
            self._probe()
        except OSError as exc:
            why = f"no agent listens at {self.endpoint}: {exc.strerror}"
            raise OSError(errno.EIO, why) from None
        old, self._agent_pid = self._agent_pid, None  # a busy new agent is waited for
        try:
            welcome = self._client.call(Hello(version=PROTOCOL_VERSION))
        finally:
            self._agent_pid = old
        if not isinstance(welcome, Welcome) or not welcome.trusted_pids:
            raise OSError(errno.EIO, "the restarted agent did not say who it is")
        self._welcomed(welcome)
        self._agent_lost = False

    def _welcomed(self, welcome: Welcome) -> None:
        """A later Welcome (a restarted agent, a restarted server): who is trusted now,
        and what the new agent refuses beside what the old one did (another cache)."""
        self.trusted_pids = welcome.trusted_pids
        self._agent_pid = welcome.trusted_pids[0]
        new = tuple(p for p in welcome.refused_paths if p not in self.refused_paths)
        if new:
            self.refused_paths += new
            if self.refused_more is not None:
                self.refused_more(new)

    def trusted_now(self) -> tuple[int, ...] | None:
        """The pids the agent vouches for (itself, a local server), asked again when
        one of them has died (a restarted server); None while one is still dead.

        Costs a ``kill(pid, 0)`` a pid while they all live; a hello when one died.
        """
        if all(abi.pid_alive(p) for p in self.trusted_pids):
            return self.trusted_pids
        try:
            welcome = self._ask(Hello(version=PROTOCOL_VERSION))
        except OSError:
            return None
        if isinstance(welcome, Welcome) and welcome.trusted_pids:
            self._welcomed(welcome)
        return self.trusted_pids if all(abi.pid_alive(p) for p in self.trusted_pids) else None

    def _ask(self, msg: Message, bulk: bool = False) -> Message:
        self._restartable = _restartable(msg)
        stop = self.interruption
        if stop is not None:
            if self._restartable:
                stop.check()
            else:
                stop.changing()
        self.requests += 1
        t0 = time.perf_counter_ns()
        if bulk and self._progress is not None:
            self._progress.start()
        try:
            return self._call(msg, self._bulk if bulk else None)
        finally:
            self.agent_ns += time.perf_counter_ns() - t0
            if bulk and self._progress is not None:
                self._progress.finish()

    def reports_to(
        self, report: Callable[[str], None], progress: ProgressLine | None
    ) -> None:
        """Where to say why calls fail and show long fetches, from now on (a warm
        start's supervisor connects before it knows its client's terminal)."""
        self._report = report
        self._progress = progress

    def _note(self, note: Progress) -> None:
        # total 0: a server's "still running" note on a long mutation, not a fetch
        if self._progress is not None and note.total:
            self._progress.update(note.path, note.done, note.total)

    # -- cache ------------------------------------------------------------------------------

    def _stable(self, path: str, attrs: Attrs) -> Attrs:
        ino = self._ino.show(path, attrs.ino, state_of(attrs))
        return attrs if ino == attrs.ino else evolve(attrs, ino=ino)

    def _server_ino(self, path: str) -> tuple[int, Hashable] | None:
        """The server's inode number of ``path`` now and its object's state (None:
        gone), asked afresh."""
        try:
            reply = self._ask(Stat(path=path))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        assert isinstance(reply, StatReply)
        return reply.attrs.ino, state_of(reply.attrs)

    def _record_local(self, path: str) -> None:
        host = self._local.get(path)
        if host is None:
            return
        try:
            st = os.stat(host)
        except OSError:
            return
        self._synced[path] = (st.st_size, st.st_mtime_ns)

    def _drop_lease(self, path: str, *, tree: bool = False) -> None:
        if self._leases is not None:
            self._leases.drop(path, tree=tree)

    def _forget(self, path: str) -> None:
        self._attrs.pop(path, None)
        self._links.pop(path, None)
        self._names.pop(path, None)
        parent = path.rsplit("/", 1)[0] or "/"
        self._attrs.pop(parent, None)
        self._names.pop(parent, None)

    def _forget_below(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        for key in [k for k in self._attrs if k.startswith(prefix)]:
            del self._attrs[key]
        for key in [k for k in self._names if k.startswith(prefix)]:
            del self._names[key]
        for key in [k for k in self._links if k.startswith(prefix)]:
            del self._links[key]

    # -- Repo port ----------------------------------------------------------------------------

    def lstat(self, path: str) -> Attrs | None:
        hit = self._attrs.get(path)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        parent, _, name = path.rpartition("/")
        listed = self._names.get(parent or "/")
        if listed is not None and listed[0] > now and name and name not in listed[1]:
            self._attrs[path] = (listed[0], None)  # a fresh listing of its directory lacks it
            return None
        if self._leases is not None:
            leased = self._leased(path)
            if leased is not None:  # the agent vouches for these attributes still
                self._attrs[path] = (now + self.ttl, leased[0].attrs)
                return leased[0].attrs
        try:
            reply = self._ask(Stat(path=path))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self._attrs[path] = (now + self.ttl, None)
                self._dirs.discard(path)
                return None
            raise
        assert isinstance(reply, StatReply)
        attrs = self._stable(path, reply.attrs)
        if _cacheable(attrs):
            self._attrs[path] = (now + self.ttl, attrs)
        if attrs.kind is FileKind.DIR:
            self._dirs.add(path)
        else:
            self._dirs.discard(path)
        return attrs

    def listdir(self, path: str) -> Listing:
        reply = self._ask(List(path=path))
        assert isinstance(reply, Listing)
        expiry = time.monotonic() + self.ttl
        base = "" if path == "/" else path
        entries = []
        for entry in reply.entries:
            child = f"{base}/{entry.name}"
            attrs = self._stable(child, entry.attrs)
            if _cacheable(attrs):
                self._attrs[child] = (expiry, attrs)
            entries.append(DirEntry(entry.name, attrs))
        listing = Listing(attrs=self._stable(path, reply.attrs), entries=tuple(entries))
        self._dirs.add(path)
        self._attrs[path] = (expiry, listing.attrs)
        self._names[path] = (expiry, frozenset(e.name for e in entries))
        if reply.leased and self._leases is not None:
            self._take_listed_leases(base, reply, listing)
        return listing

    def _take_listed_leases(self, base: str, reply: Listing, listing: Listing) -> None:
        """Hold the leases a listing carries: the first open of those entries is local too."""
        assert self._leases is not None
        shown = {e.name: e.attrs for e in listing.entries}
        for name in reply.leased:
            attrs = shown.get(name)
            if attrs is None or "/" in name or name in (".", ".."):
                continue
            child = f"{base}/{name}"
            opened = Opened(
                host_path=os.path.join(reply.lease_dir, object_name(child)), attrs=attrs,
                lease=reply.lease, lease_seq=reply.lease_seq,
                lease_until_ns=reply.lease_until_ns,
            )
            if not self._leases.install(child, opened, None):
                return

    def readlink(self, path: str) -> str:
        hit = self._links.get(path)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        reply = self._ask(Readlink(path=path))
        assert isinstance(reply, LinkTarget)
        self._links[path] = (now + self.ttl, reply.target)
        return reply.target

    def _leased(self, path: str) -> tuple[Opened, os.stat_result] | None:
        """What a lease on ``path`` vouches for now, and its copy's stat (None: ask the agent)."""
        assert self._feed is not None and self._leases is not None
        self._feed.drain()
        lease = self._leases.get(path)
        if lease is None:
            return None
        try:
            st = os.stat(lease.opened.host_path)
        except OSError:
            st = None
        if lease.sig is None and st is not None:
            # A listing's lease: the copy is the vouched one now (any change through an
            # agent was voided before it, and the channel was just drained).
            lease.sig = copy_signature(st)
        if st is None or copy_signature(st) != lease.sig:
            self._leases.drop(path)  # evicted, replaced or written: ask the agent
            return None
        return lease.opened, st

    def _open_leased(self, path: str) -> Opened | None:
        """The copy a lease vouches for, opened with no round trip (None: ask the agent)."""
        hit = self._leased(path)
        if hit is None:
            return None
        opened, st = hit
        self.leased_opens += 1
        self._by_host[opened.host_path] = path
        self._local[path] = opened.host_path
        self._attrs[path] = (time.monotonic() + self.ttl, opened.attrs)
        self._synced[path] = (st.st_size, st.st_mtime_ns)
        return opened

    def open(self, path: str, flags: int, mode: int, claim: bool = False) -> Opened:
        if self._leases is not None:
            if flags & ~_LEASE_FLAGS & 0xFFFFFFFF:
                self._leases.drop(path)  # writing, creating, truncating: always the agent
            else:
                leased = self._open_leased(path)
                if leased is not None:
                    return leased
        reply = self._ask(Open(path=path, flags=flags & 0xFFFFFFFF, mode=mode & 0o7777,
                               claim=claim), bulk=True)
        assert isinstance(reply, Opened)
        self._by_host[reply.host_path] = path
        self._local[path] = reply.host_path
        if flags & 0o1003:  # O_WRONLY, O_RDWR, O_TRUNC
            self._written.add(path)
        attrs = self._stable(path, reply.attrs)
        if _cacheable(attrs):
            self._attrs[path] = (time.monotonic() + self.ttl, attrs)
        if path not in self._synced or not (flags & 0o1003 or path in self._written):
            # Read-only, no O_TRUNC, of a copy this sandbox never opened for writing:
            # the copy is the server's object (a written one is until its next upload).
            self._record_local(path)
        lease = reply
        reply = Opened(host_path=reply.host_path, attrs=attrs)
        if lease.lease and self._leases is not None:
            self._take_lease(path, lease, reply)
        if flags & 0o100:  # O_CREAT: the parent's listing changed
            parent = path.rsplit("/", 1)[0] or "/"
            self._attrs.pop(parent, None)
            self._names.pop(parent, None)
        return reply

    def _take_lease(self, path: str, granted: Opened, opened: Opened) -> None:
        """Hold the lease the agent granted with ``granted``, for later opens of ``path``."""
        assert self._leases is not None
        try:
            st = os.stat(opened.host_path)
        except OSError:
            return
        self._leases.install(path, evolve(granted, attrs=opened.attrs), copy_signature(st))

    def commit(self, path: str, wait: bool = False) -> None:
        self._drop_lease(path)
        self._ask(Commit(path=path, wait=wait), bulk=True)
        self._attrs.pop(path, None)
        self._ino.changed(path)
        self._record_local(path)

    def sync(self, wait: bool = False) -> None:
        """Queue what changed, when a copy this sandbox opened for writing changed;
        with ``wait`` (``sync(2)``), also wait until the agent's server has every
        file the agent has queued (whoever wrote it).

        Called without ``wait`` at the exit of every process that may have written
        (children inherit that): the usual exit, whose writes were committed at
        close, costs a stat of each written copy and no request. A writable fd can
        outlive its close (a dup), so a copy stays looked at for the whole session.
        """
        if not wait and not any(
            self.written_copy(path) is not None for path in list(self._written)
        ):
            return
        if self._leases is not None:
            self._leases.drop_all("this sandbox synced")
        self._ask(Sync(wait=wait), bulk=True)
        self._ino.changed_all()
        self._attrs.clear()
        self._names.clear()
        for path in self._local:
            self._record_local(path)

    @property
    def wrote(self) -> bool:
        """Whether this sandbox opened a /data file for writing."""
        return bool(self._written)

    def mkdir(self, path: str, mode: int) -> None:
        self._drop_lease(path, tree=True)
        self._ask(Mkdir(path=path, mode=mode & 0o7777))
        self._forget(path)

    def remove(self, path: str, directory: bool) -> None:
        self._drop_lease(path, tree=True)
        held = self._hold_unhomed(path) if path in self._written else None
        self._ask_keeping(Remove(path=path, directory=directory), held)
        self._forget(path)
        self._forget_dirs(path)
        self._ino.forget(path)
        self._synced.pop(path, None)
        self._written.discard(path)
        host = self._local.pop(path, None)
        if host is not None:
            self._by_host.pop(host, None)

    def _hold_unhomed(self, path: str) -> tuple[str, os.stat_result] | None:
        """Before ``path`` (a name this sandbox wrote) is removed while its file keeps
        another name this sandbox made (``link``): its local copy and the copy's stat.
        The remove uploads the copy first, so the other name has what was written until
        now; a guest fd still open on the copy writes a file no name reaches here. No fd
        is held: a guest fd's own stat tells the copy's inode (one held per remove ran
        the supervisor out of fds in a maildir's link-then-unlink deliveries)."""
        host = self._local.get(path)
        if host is None or not (self._ino.shares(path) or self._server_links(path) > 1):
            return None
        try:
            return host, os.stat(host)
        except OSError:
            return None

    def _ask_keeping(self, msg: Message, held: tuple[str, os.stat_result] | None) -> None:
        """Ask ``msg`` (a remove or a rename over a name): once it is done, keep ``held``
        (see :meth:`_hold_unhomed`)."""
        self._ask(msg)
        if held is not None:
            copy, st = held
            self._unhomed[copy] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _one_file(self, src: str, dst: str) -> bool:
        """Whether ``src`` and ``dst`` name one regular file (links made here, or held by
        the repository before the run: a file of several names is never cached, so its
        attributes come from the server)."""
        if self._ino.same(src, dst):
            return True
        try:
            a, b = self.lstat(src), self.lstat(dst)
        except OSError:
            return False
        return (a is not None and b is not None and a.kind is FileKind.FILE
                and b.kind is FileKind.FILE and a.nlink > 1 and a.ino == b.ino)

    def _server_links(self, path: str) -> int:
        """The link count of ``path`` (its other names may never have been met here: hard
        links the repository held before the run); 0 when unknown. Attributes are cached
        only for a file of one name, so a fresh cached entry costs no round trip."""
        try:
            attrs = self.lstat(path)
        except OSError:
            return 0
        return attrs.nlink if attrs is not None else 0

    def unhomed_write(self, host_path: str, link: str) -> bool:
        """Whether ``host_path`` (an fd's target; ``link``: the fd's ``/proc`` link) is
        the local copy of a removed name whose file kept another name, written since the
        remove: those writes reach no name of the file (close and fsync say EIO rather
        than lose them in silence)."""
        held = self._unhomed.get(host_path.removesuffix(" (deleted)"))
        if held is None:
            return False
        try:
            st = os.stat(link)
        except OSError:
            return False
        return ((st.st_dev, st.st_ino) == held[:2]
                and (st.st_size, st.st_mtime_ns) != held[2:])

    def rename(self, src: str, dst: str, flags: RenameFlags) -> None:
        self._drop_lease(src, tree=True)
        self._drop_lease(dst, tree=True)
        if not flags and dst in self._written and self._one_file(src, dst):
            # rename(2) of a name over another name of the same file does nothing and
            # succeeds: the server's would too, but the local copies would be moved, and
            # an fd still open on dst's copy would write a copy no name reaches.
            return
        # A rename over a name this sandbox wrote removes that name as unlink does:
        # its file may keep another name (link), which an fd still open on the
        # replaced name's copy no longer reaches (close and fsync say EIO).
        replaces = (not flags & RenameFlags.EXCHANGE and dst in self._written
                    and not self._ino.same(src, dst))
        held = self._hold_unhomed(dst) if replaces else None
        self._ask_keeping(Rename(src=src, dst=dst, flags=flags), held)
        for path in (src, dst):
            self._forget(path)
            self._forget_below(path)
            self._forget_dirs(path)
        moved = {p: h for p, h in self._local.items() if p == src or p.startswith(src + "/")}
        replaced = {p: h for p, h in self._local.items() if p == dst or p.startswith(dst + "/")}
        for p, h in replaced.items():
            self._local.pop(p, None)
            self._by_host.pop(h, None)
        for p, h in moved.items():
            self._local.pop(p, None)
            self._by_host.pop(h, None)
        written = {p for p in self._written if p == src or p.startswith(src + "/")}
        self._written -= written
        self._written.update(dst + p[len(src) :] for p in written)
        self._ino.move(src, dst)
        for p, h in moved.items():
            # The agent moved the local copy to the new path's name (its cache names an
            # object by the hash of its path: agent.cache.ContentCache.object_path), and
            # guests may hold fds on it: learn the new name so close still commits.
            new = dst + p[len(src) :]
            new_host = os.path.join(os.path.dirname(h), object_name(new))
            self._local[new] = new_host
            self._by_host[new_host] = new

    def symlink(self, target: str, path: str) -> None:
        self._drop_lease(path, tree=True)
        self._ask(Symlink(target=target, path=path))
        self._forget(path)

    def link(self, src: str, dst: str) -> None:
        self._drop_lease(src)
        self._drop_lease(dst, tree=True)
        reply = self._ask(Link(src=src, dst=dst))
        assert isinstance(reply, StatReply)
        self._forget(src)
        self._forget(dst)
        self._dirs.discard(dst)
        # One file, one st_ino under both names (du, find -samefile, tar count on it).
        self._ino.link(src, dst, reply.attrs.ino)

    def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> None:
        self._drop_lease(path)
        self._ask(SetAttr(path=path, mode=mode, atime_ns=atime_ns, mtime_ns=mtime_ns, size=size))
        self._attrs.pop(path, None)
        self._ino.changed(path)

    def repo_path_of(self, host_path: str) -> str | None:
        return self._by_host.get(host_path)

    def known_dir(self, path: str) -> bool:
        return path in self._dirs

    def _forget_dirs(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        self._dirs -= {p for p in self._dirs if p == path or p.startswith(prefix)}

    def local_copy(self, path: str) -> str | None:
        return self._local.get(path)

    def written_copy(self, path: str) -> os.stat_result | None:
        """The local copy's stat when a guest changed it since it matched the server."""
        host = self._local.get(path)
        if host is None:
            return None
        try:
            st = os.stat(host)
        except OSError:
            return None
        if self._synced.get(path) == (st.st_size, st.st_mtime_ns):
            return None
        self._drop_lease(path)  # a guest of this sandbox wrote it
        return st
