"""The agent's request handlers: what each interposer message does.

Trusts: the interposer (the only peer that can reach the agent's private
socket) to send well-formed, already policy-checked requests; the server to
serve the repository. It does not trust message contents beyond what the
codec validated: paths are checked here again (absolute, normalised).

Handlers are plain methods taking a message and returning a reply message or
raising ``OSError``; the I/O loop in :mod:`agent.main` turns exceptions into
``Error`` replies. Semantics (the interposer depends on them):

* ``Stat``/``List``/``Readlink``/``Mkdir``/``Remove``/``Rename``/``Symlink``/
  ``SetAttr`` are forwarded; the caches follow the agent's own mutations at
  once. ``Stat`` may be answered from the attribute cache (filled by Stat and
  List replies) while a callback promise holds on the path
  (:mod:`agent.callbacks`), else for ``attr_ttl`` seconds (default 1 s,
  ``--attr-ttl``).
* ``List`` is answered from the server's last listing of the directory while
  callback promises hold on the directory *and* on every entry: the server
  publishes each changed object and its parent, but a chmod or utimes of an
  entry leaves the directory's own version as it was (the agent skips that
  invalidation), so only the entry's tells. An invalidation of either,
  other attributes learnt meanwhile, or a mutation through this agent drops
  the kept listing. At most :data:`LISTING_DIRS` listings of
  :data:`LISTING_ENTRIES` entries in all are kept (least recently used out).
  The reply is built afresh each time (dirty copies' sizes and times, leases).
  A name such a listing lacks does not exist: its ``Stat`` (and an ``Open``'s
  revalidation, an ``O_CREAT`` one's too) gets ENOENT without the server.
* Wherever a path has a dirty local copy, its size and mtime/ctime come from
  that copy.
* ``Open`` revalidates with the server (one Stat) unless a callback promise
  holds on the path (then no round trip at all), fetches when the version
  changed and the local copy is clean and not open for writing (a copy open
  for writing stays shared until its ``Commit``), and returns the cache
  file's host path. An ``O_CREAT`` open of a path the agent knows nothing of
  tries an exclusive create first (one round trip instead of a Stat and a
  create; EEXIST: it exists, and is opened as above); no create ever replaces
  a file another client made meanwhile.
* ``Commit`` uploads a changed local copy; a clean one is answered at once.
* With a lease channel (:mod:`synthfs.protocol.leases`), a read-only ``Open`` of a clean
  copy under a callback promise carries a lease: the interposer opens that copy
  itself until the lease is voided; a ``List`` reply carries leases on the
  entries whose cached copies qualify alike. Every change to what the agent knows of a
  leased path (a server invalidation, a mutation through this agent, an open
  for writing, a dropped copy) is published on the channel first; a leased
  copy is not evicted while its lease runs.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import posixpath
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from synthfs.agent.cache import ContentCache, Entry, signature
from synthfs.agent.callbacks import Promises
from synthfs.agent.upstream import Upstream
from synthfs.protocol.leases import LeaseBoard
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    PROTOCOL_VERSION,
    Attrs,
    Commit,
    Committed,
    Data,
    DirEntry,
    Done,
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
    Read,
    Readlink,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    Sync,
    Synced,
    UploadAbort,
    UploadChunk,
    UploadCommit,
    Welcome,
)

__all__ = ["DEFAULT_ATTR_TTL", "LISTING_DIRS", "LISTING_ENTRIES", "PIPELINE_WINDOW",
           "AgentService"]

log = logging.getLogger(__name__)

#: Seconds an attribute learnt from a Stat or List reply answers a Stat.
DEFAULT_ATTR_TTL = 1.0
#: Directories whose listings the agent keeps, and their entries in all (LRU beyond).
LISTING_DIRS = 4096
LISTING_ENTRIES = 100_000
#: Reads / upload chunks in flight during a fetch or an upload.
PIPELINE_WINDOW = 6
_FETCH_ATTEMPTS = 3


def _check_path(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise OSError(errno.EINVAL, "wire paths are repository-absolute")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm != path.rstrip("/") and not (path == "/" and norm == "/"):
        raise OSError(errno.EINVAL, "wire paths must be normalised")
    return norm


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "/"


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """Write all of ``data`` at ``offset``: a short write (a full disk) goes on, so it fails.

    ``os.pwrite`` returns a count; ignoring a short one left a hole of zeros in a
    fetched copy that was then installed as the server's object.
    """
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    return len(data)


class AgentService:
    """The agent's core: one upstream session, one content cache, one attr cache."""

    def __init__(
        self,
        upstream: Upstream,
        cache_root: str,
        *,
        cache_size: int,
        attr_ttl: float = DEFAULT_ATTR_TTL,
        refused_paths: tuple[str, ...] = (),
        promises: Promises | None = None,
        refresh: Callable[[], None] | None = None,
        leases: LeaseBoard | None = None,
        leases_endpoint: str = "",
    ) -> None:
        self.upstream = upstream
        self.cache_root = cache_root
        self.cache_size = cache_size
        self.attr_ttl = attr_ttl
        self.refused_paths = refused_paths
        self.cache = ContentCache(cache_root, upstream.repo_id, cache_size)
        upstream.on_repo_change = self._repo_changed
        self._attrs: dict[str, tuple[Attrs, float]] = {}
        # Directory -> the server's listing and its entries by name (LRU order).
        self._listings: collections.OrderedDict[str, tuple[Listing, dict[str, Attrs]]] = (
            collections.OrderedDict())
        self._listed = 0  # entries in self._listings
        # Without a subscription the promises never become live: every Open revalidates.
        self.promises = promises or Promises()
        self.promises.on_inval = self._invalidated
        self.promises.known = self._known_version
        self.leases = leases
        self.leases_endpoint = leases_endpoint if leases is not None else ""
        if leases is not None:
            leases.vouched = self.promises.vouched
            self.promises.on_change = self._changed
            self.promises.on_break = lambda why: leases.break_all(why)
        self._refresh = refresh or (lambda: None)
        self._registrations = upstream.registrations
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch-writer")
        self.stats = {"fetches": 0, "uploads": 0, "attr_hits": 0, "promised_opens": 0,
                      "leases": 0, "promised_lists": 0, "promised_absent": 0}
        self._handlers: dict[type[Message], Callable[[Any], Message]] = {
            Hello: self.hello,
            Stat: self.stat,
            List: self.list,
            Readlink: self.readlink,
            Open: self.open,
            Commit: self.commit,
            Sync: self.sync,
            Mkdir: self.mkdir,
            Remove: self.remove,
            Rename: self.rename,
            Symlink: self.symlink,
            Link: self.link,
            SetAttr: self.setattr,
        }

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.cache.close()

    def _repo_changed(self, repo_id: str) -> None:
        log.warning("server now serves repository %r: switching caches", repo_id)
        if self.leases is not None:
            self.leases.break_all("the server serves another repository")
        self.cache.close()
        self.cache = ContentCache(self.cache_root, repo_id, self.cache_size)
        self._attrs.clear()
        self._listings.clear()
        self._listed = 0
        self.promises.break_all("the server serves another repository")

    def handle(self, msg: Message) -> Message:
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise OSError(errno.EOPNOTSUPP, f"the agent does not serve {msg.kind}")
        return handler(msg)

    def idle(self) -> None:
        """Housekeeping between requests (about once a second)."""
        self.cache.flush_touches()
        now = time.monotonic()
        self.promises.expire()
        if self.leases is not None:
            self.leases.expire()
        for p in [
            p
            for p, (_, until) in self._attrs.items()
            if until <= now and not self.promises.holds(p)
        ]:
            del self._attrs[p]

    # -- attribute cache ------------------------------------------------------------

    def _remember(self, path: str, a: Attrs, stamp: tuple[int, int] | None = None) -> None:
        """Cache ``a``; with the promise ``stamp`` taken before its request was sent, hold it.

        A file of several names (hard links) is never cached: the server publishes a
        change under the name it was made through only, so what is known of its other
        names could be stale; every Stat and Open of it asks the server.
        """
        if self._listings:
            self._learnt(path, a)
        if a.nlink > 1 and a.kind == FileKind.FILE:
            self._attrs.pop(path, None)
            self.promises.release(path)
            return
        self._attrs[path] = (a, time.monotonic() + self.attr_ttl)
        if stamp is not None:
            self.promises.hold(path, stamp)
        else:
            self.promises.release(path)

    def _void(self, path: str, *, tree: bool = False) -> None:
        """Leases on ``path`` (and below, with ``tree``) end: it is about to change."""
        if self.leases is not None:
            self.leases.void(path, tree=tree)

    def _changed(self, path: str, version: str, parent: bool) -> None:
        """Any invalidation from the server: leases on the object end (not on a listing)."""
        if not parent:
            self._void(path, tree=True)

    def _forget(self, path: str, *, below: bool = False) -> None:
        self._attrs.pop(path, None)
        self.promises.release(path)
        self._drop_listing(path)  # (its parent's fails its check: no promise on path)
        if below:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self._attrs if p.startswith(prefix)]:
                del self._attrs[p]
                self.promises.release(p)
            for p in [p for p in self._listings if p.startswith(prefix)]:
                self._drop_listing(p)

    def _stamp(self) -> tuple[int, int] | None:
        """A promise stamp for the request about to be sent (None: no promise possible)."""
        self._catch_up()
        return self.promises.stamp()

    def _promised(self, path: str) -> Attrs | None:
        """The attributes of ``path`` if a callback promise holds on them (no round trip)."""
        hit = self._attrs.get(path)
        if hit is None:
            return None
        self._catch_up()
        return hit[0] if self.promises.holds(path) else None

    def _catch_up(self) -> None:
        """Process what the server published so far (and a re-registration)."""
        self._refresh()
        if self.upstream.registrations != self._registrations:
            self._registrations = self.upstream.registrations
            self.promises.break_all("registered with the server again")

    def _invalidated(self, path: str, version: str, parent: bool) -> None:
        """An invalidation from the server: what the agent knows of ``path`` is stale."""
        self._attrs.pop(path, None)
        self._drop_listing(path)
        self._drop_listing(_parent(path))  # an entry it may lack (no promise of it to break)

    # -- listing cache --------------------------------------------------------------

    def _keep_listing(self, path: str, listing: Listing) -> None:
        """Keep the server's ``listing`` of ``path`` (its promises are held already)."""
        self._drop_listing(path)
        self._listings[path] = (listing, {d.name: d.attrs for d in listing.entries})
        self._listed += len(listing.entries)
        while len(self._listings) > LISTING_DIRS or self._listed > LISTING_ENTRIES:
            _, (old, _) = self._listings.popitem(last=False)
            self._listed -= len(old.entries)

    def _drop_listing(self, path: str) -> None:
        kept = self._listings.pop(path, None)
        if kept is not None:
            self._listed -= len(kept[0].entries)

    def _learnt(self, path: str, a: Attrs) -> None:
        """``a`` is news of ``path``: a kept listing that says otherwise is stale."""
        kept = self._listings.get(path)
        if kept is not None and kept[0].attrs != a:
            self._drop_listing(path)
        if path == "/":
            return
        parent = _parent(path)
        kept = self._listings.get(parent)
        if kept is not None and kept[1].get(posixpath.basename(path)) != a:
            self._drop_listing(parent)  # a changed entry, or one the listing lacks

    def _kept_listing(self, path: str) -> Listing | None:
        """The kept listing of ``path`` while promises hold on it and on each entry."""
        if path not in self._listings:
            return None
        self._catch_up()
        kept = self._listings.get(path)  # an invalidation may have dropped it meanwhile
        if kept is None:
            return None
        if not self.promises.holds_entries(path, kept[1]):
            self._drop_listing(path)
            return None
        self._listings.move_to_end(path)
        return kept[0]

    def _known_version(self, path: str) -> str | None:
        hit = self._attrs.get(path)
        return hit[0].version if hit is not None else None

    def _present(self, path: str, a: Attrs) -> Attrs:
        """``a`` as the guest must see it: a dirty local copy's size and times win."""
        e = self.cache.get(path)
        if e is None:
            return a
        st = self.cache.local_stat(e)
        if st is None or not self.cache.is_dirty(e, st):
            return a
        return attrs.evolve(a, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                            blocks=st.st_blocks)

    def _entry(self, path: str) -> Entry | None:
        """The cache entry of ``path`` if its local file still exists (else forget it)."""
        e = self.cache.get(path)
        if e is not None and self.cache.local_stat(e) is None:
            log.warning("cache: the local copy of %s vanished; forgetting it", path)
            self._void(path)
            self.cache.drop(path)
            return None
        return e

    def _other_names_first(self, path: str, a: Attrs) -> Attrs:
        """``a`` again after uploading what was written through the file's other names.

        A file of several names (hard links) has one local copy per name here: a
        copy written through another name and not uploaded yet (its writer may not
        even have closed it: ``echo x >> /data/b`` in a shell closes through dup2)
        goes to the server first, which rewrites the one inode in place, so this
        name shows that content. (O(copies) per Stat or Open of such a file.)
        """
        if a.nlink <= 1 or a.kind != FileKind.FILE:
            return a
        others = [e.path for e in self.cache
                  if e.attrs.ino == a.ino and e.path != path and self.cache.is_dirty(e)]
        for other in others:
            log.debug("%s: uploading %s first (another name of the same file)", path, other)
            self._upload(other)
        return self._stat_upstream(path) if others else a

    def _stat_upstream(self, path: str) -> Attrs:
        """The server's attributes of ``path``; FileNotFoundError also when the kept
        listing of its directory (promised, as a whole) lacks the name."""
        parent = _parent(path) if path != "/" else ""
        if (
            self._kept_listing(parent) is not None  # (its promises checked)
            and posixpath.basename(path) not in self._listings[parent][1]
        ):
            self.stats["promised_absent"] += 1
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        stamp = self._stamp()
        a = self.upstream.call(Stat(path=path), StatReply).attrs
        self._remember(path, a, stamp)
        return a

    # -- handlers -------------------------------------------------------------------

    def _trusted_pids(self) -> tuple[int, ...]:
        """This agent's pid, and the server's when it runs on this machine."""
        ep = self.upstream.endpoint
        local = ep.startswith("ipc://") or ep.startswith(
            ("tcp://127.", "tcp://localhost", "tcp://[::1]")
        )
        server = self.upstream.server_pid
        return (os.getpid(), server) if local and server else (os.getpid(),)

    def hello(self, msg: Hello) -> Message:
        if msg.version != PROTOCOL_VERSION:
            raise OSError(errno.EPROTO, f"agent speaks protocol {PROTOCOL_VERSION}")
        return Welcome(
            version=PROTOCOL_VERSION,
            refused_paths=self.refused_paths,
            trusted_pids=self._trusted_pids(),
            leases=self.leases_endpoint,
        )

    def stat(self, msg: Stat) -> Message:
        path = _check_path(msg.path)
        hit = self._attrs.get(path)
        if hit is not None and (hit[1] > time.monotonic() or self._promised(path) is not None):
            self.stats["attr_hits"] += 1
            return StatReply(attrs=self._present(path, hit[0]))
        try:
            a = self._other_names_first(path, self._stat_upstream(path))
        except FileNotFoundError:
            self._forget(path)
            raise
        return StatReply(attrs=self._present(path, a))

    def list(self, msg: List) -> Message:
        path = _check_path(msg.path)
        kept = self._kept_listing(path)
        if kept is not None:
            self.stats["promised_lists"] += 1
            return self._listing_reply(path, kept, promised=True)
        stamp = self._stamp()
        reply = self.upstream.call(List(path=path), Listing)
        self._drop_listing(path)
        self._remember(path, reply.attrs, stamp)
        for d in reply.entries:
            self._remember(posixpath.join(path, d.name), d.attrs, stamp)
        if stamp is not None:
            self._keep_listing(path, reply)
        return self._listing_reply(path, reply, promised=stamp is not None)

    def _listing_reply(self, path: str, listing: Listing, *, promised: bool) -> Listing:
        """The server's ``listing`` as this guest sees it now: dirty copies, leases."""
        entries = []
        leasable = []
        same = True
        prefix = path if path == "/" else path + "/"
        for d in listing.entries:
            child = prefix + d.name
            shown = self._present(child, d.attrs)
            if shown is d.attrs:
                entries.append(d)
            else:
                entries.append(DirEntry(name=d.name, attrs=shown))
                same = False
            if promised and shown is d.attrs and self.leases is not None:
                e = self.cache.get(child)
                if (e is not None and not e.pinned and e.version == d.attrs.version
                        and e.attrs.mode == d.attrs.mode and d.attrs.kind == FileKind.FILE):
                    leasable.append(d.name)
        if leasable:
            return self._list_leased(path, listing.attrs, entries, leasable)
        if same and not listing.leased:
            return listing  # frozen: the same object serves every request
        return Listing(attrs=listing.attrs, entries=entries)  # converter=tuple

    def _list_leased(self, path: str, a: Attrs, entries: Sequence[DirEntry],
                     names: Sequence[str]) -> Listing:
        """The listing with leases on the entries whose clean copies a promise vouches for
        (a first open of each needs no round trip either: ``find | xargs cat``)."""
        assert self.leases is not None
        leased = []
        grant = None
        for name in names:
            child = posixpath.join(path, name)
            until = self.promises.deadline(child)
            e = self.cache.get(child)
            if until is None or e is None or self.cache.local_stat(e) is None:
                continue
            g = self.leases.grant(child, until)
            if g is None:
                break
            grant = g if grant is None or g[2] < grant[2] else grant
            leased.append(name)
        if grant is None:
            return Listing(attrs=a, entries=entries)
        self.stats["leases"] += len(leased)
        return Listing(attrs=a, entries=entries, lease=grant[0], lease_seq=grant[1],
                       lease_until_ns=grant[2], lease_dir=self.cache.objects, leased=leased)

    def readlink(self, msg: Readlink) -> Message:
        return self.upstream.call(Readlink(path=_check_path(msg.path)), LinkTarget)

    def mkdir(self, msg: Mkdir) -> Message:
        path = _check_path(msg.path)
        self._void(path, tree=True)
        self._forget(_parent(path))
        reply = self.upstream.call(Mkdir(path=path, mode=msg.mode), StatReply)
        self._remember(path, reply.attrs)
        return reply

    def symlink(self, msg: Symlink) -> Message:
        path = _check_path(msg.path)
        self._void(path, tree=True)
        self._forget(_parent(path))
        reply = self.upstream.call(Symlink(target=msg.target, path=path), StatReply)
        self._remember(path, reply.attrs)
        return reply

    def remove(self, msg: Remove) -> Message:
        path = _check_path(msg.path)
        e = self._entry(path) if not msg.directory else None
        if e is not None and self.cache.is_dirty(e):
            with contextlib.suppress(OSError):
                if self.upstream.call(Stat(path=path), StatReply).attrs.nlink > 1:
                    self._upload(path)  # what was written through this name stays in the others
        self._void(path, tree=True)
        self._forget(path, below=True)
        self._forget(_parent(path))
        reply = self.upstream.call(Remove(path=path, directory=msg.directory), Done)
        self.cache.drop(path)
        return reply

    def rename(self, msg: Rename) -> Message:
        src, dst = _check_path(msg.src), _check_path(msg.dst)
        for p in (src, dst):
            self._void(p, tree=True)
            self._forget(p, below=True)
            self._forget(_parent(p))
        reply = self.upstream.call(Rename(src=src, dst=dst, flags=msg.flags), Done)
        self.cache.rename(src, dst, exchange=bool(msg.flags & RenameFlags.EXCHANGE))
        return reply

    def link(self, msg: Link) -> Message:
        src, dst = _check_path(msg.src), _check_path(msg.dst)
        self._void(src)
        self._void(dst, tree=True)
        self._forget(src)
        self._forget(dst)
        self._forget(_parent(dst))
        e = self._entry(src)
        if e is not None and self.cache.is_dirty(e):
            self._upload(src)  # the new name must show what was written through the old
        reply = self.upstream.call(Link(src=src, dst=dst), StatReply)
        self._forget(_parent(src))
        return reply

    def setattr(self, msg: SetAttr) -> Message:
        path = _check_path(msg.path)
        self._void(path)
        self._forget(path)
        e = self._entry(path)
        rest = attrs.evolve(msg, path=path, size=None)
        has_rest = (msg.mode, msg.atime_ns, msg.mtime_ns) != (None, None, None)
        if e is not None and msg.size is not None:
            # Truncate the shared local copy (every holder sees it), then upload it.
            os.truncate(self.cache.object_path(path), msg.size)
            self.cache.record(path, e.attrs, e.recorded, dirty=True)
            a = self._upload(path)
            if not has_rest:
                self._remember(path, a)
                return StatReply(attrs=a)
            reply = self.upstream.call(rest, StatReply)
        else:
            if e is not None and msg.mtime_ns is not None and self.cache.is_dirty(e):
                # New times apply to the written content: upload it first, or the
                # upload at close would stamp its own time over them (cp -a, tar, touch).
                self._upload(path)
            reply = self.upstream.call(attrs.evolve(msg, path=path), StatReply)
        e = self.cache.get(path)
        if e is not None and not self.cache.is_dirty(e):
            # Metadata only: the content of the clean copy is still the server's.
            local = self.cache.object_path(path)
            if msg.mtime_ns is not None:
                # The local copy shows the same times (and stays clean).
                with contextlib.suppress(OSError):
                    os.utime(local, ns=(reply.attrs.mtime_ns, reply.attrs.mtime_ns))
            try:
                recorded = signature(os.stat(local))
            except OSError:
                recorded = e.recorded
            self.cache.record(path, reply.attrs, recorded)
        self._remember(path, reply.attrs)
        return StatReply(attrs=self._present(path, reply.attrs))

    # -- materialisation ------------------------------------------------------------

    def open(self, msg: Open) -> Message:
        path = _check_path(msg.path)
        flags = msg.flags
        writing = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if writing or flags & (os.O_CREAT | os.O_TRUNC):
            self._void(path)  # before anything changes: readers must ask again
        e = self._entry(path)
        if flags & os.O_CREAT and e is None and path not in self._attrs:
            # Nothing known of it: such an open usually creates. One exclusive create
            # instead of a Stat and then a create; EEXIST: open what is there, below.
            created = self._create(path, msg.mode, pin=writing)
            if created is not None:
                return created
        try:
            promised = self._promised(path) if e is not None else None
            if promised is not None:
                self.stats["promised_opens"] += 1
                log.debug("open %s: promised (version %s), no round trip", path, promised.version)
            a = promised or self._other_names_first(path, self._stat_upstream(path))
        except FileNotFoundError:
            self._forget(path)
            if e is not None and self.cache.is_dirty(e):
                a = e.attrs  # a dirty local copy wins (its upload will recreate it)
            elif not flags & os.O_CREAT:
                if e is not None:
                    self._void(path)
                    self.cache.drop(path)
                raise
            else:
                created = self._create(path, msg.mode, pin=writing)
                if created is not None:
                    return created
                if flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST)) from None
                a = self._stat_upstream(path)  # made by another client meanwhile: open it
        else:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        if a.kind == FileKind.DIR:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if a.kind == FileKind.SYMLINK:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        if flags & os.O_DIRECTORY:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        truncate = writing and bool(flags & os.O_TRUNC)
        # Keep the one shared copy when it is dirty, current, or open for writing
        # (replacing it would split the writer from later readers; its commit wins).
        shown = a
        if e is not None and (e.pinned or self.cache.is_dirty(e) or e.version == a.version):
            if e.version != a.version:
                shown = e.attrs  # the kept copy is of an older version: say so
            if truncate:
                os.truncate(self.cache.object_path(path), 0)
                e = self.cache.record(path, e.attrs, e.recorded, dirty=True)
        elif truncate:
            # No need to fetch what is about to be thrown away.
            e = self._empty_copy(path, a, dirty=a.size != 0)
        else:
            e = self._fetch(path, a)
            shown = e.attrs  # a fetch that met a change fetched the newer version
        self.cache.touch(e)
        if writing:
            e.pinned = True
        self._match_mode(e, shown.mode)
        self.cache.evict(keep=path, spare=self.leases.granted if self.leases else None)
        host = self.cache.object_path(path)
        lease = None
        if not (writing or flags & (os.O_CREAT | os.O_TRUNC)):
            lease = self._lease(path, e, shown)
        if lease is None:
            return Opened(host_path=host, attrs=self._present(path, shown))
        self.stats["leases"] += 1
        return Opened(host_path=host, attrs=shown, lease=lease[0], lease_seq=lease[1],
                      lease_until_ns=lease[2])

    def _lease(self, path: str, e: Entry, a: Attrs) -> tuple[str, int, int] | None:
        """A lease on the copy just opened, when a promise vouches for it and it is clean."""
        if self.leases is None or e.pinned or e.version != a.version or self.cache.is_dirty(e):
            return None
        until = self.promises.deadline(path)
        return None if until is None else self.leases.grant(path, until)

    def _match_mode(self, e: Entry, mode: int) -> None:
        """Give the local copy the object's execute bits (the kernel checks them at exec)."""
        local = self.cache.object_path(e.path)
        try:
            st = os.stat(local)
        except OSError:
            return
        want = 0o600 | (mode & 0o111)
        if stat.S_IMODE(st.st_mode) == want:
            return
        clean = not self.cache.is_dirty(e, st)
        os.chmod(local, want)
        if clean:  # a chmod moves ctime: the copy is still the server's object
            self.cache.record(e.path, e.attrs, signature(os.stat(local)))

    def _empty_copy(self, path: str, a: Attrs, *, dirty: bool) -> Entry:
        fd, tmp = self.cache.new_temp()
        os.close(fd)
        e = self.cache.install(path, tmp, a)
        if dirty:
            e = self.cache.record(path, a, e.recorded, dirty=True)
        return e

    def _create(self, path: str, mode: int, *, pin: bool) -> Message | None:
        """Create ``path`` empty on the server, exclusively; None when it exists."""
        upload_id = secrets.token_hex(16)
        stamp = self._stamp()
        try:
            a = self.upstream.call(
                UploadCommit(upload_id=upload_id, path=path, size=0, mode=mode, exclusive=True),
                StatReply,
            ).attrs
        except FileExistsError:
            return None
        self._forget(_parent(path))
        self._remember(path, a, stamp)
        e = self._empty_copy(path, a, dirty=False)
        e.pinned = pin
        return Opened(host_path=self.cache.object_path(path), attrs=a)

    def _fetch(self, path: str, a: Attrs) -> Entry:
        """Fetch ``path`` at version ``a.version`` into a temp file, rename into place."""
        for attempt in range(_FETCH_ATTEMPTS):
            fd, tmp = self.cache.new_temp()
            try:
                try:
                    self._fetch_into(fd, path, a)
                finally:
                    os.close(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if exc.errno != errno.ESTALE or attempt == _FETCH_ATTEMPTS - 1:
                    raise
                log.debug("fetch %s: changed during the fetch, again", path)
                a = self._stat_upstream(path)
                if a.kind != FileKind.FILE:
                    raise OSError(errno.ESTALE, "the object changed kind during a fetch") from None
                continue
            self.stats["fetches"] += 1
            return self.cache.install(path, tmp, a)
        raise AssertionError("unreachable")

    def _fetch_into(self, fd: int, path: str, a: Attrs) -> None:
        """Pipelined Reads; the page-cache writes overlap the next receive (a writer thread).

        Filling fresh page-cache pages is the dearest step of a cold fill; ``os.pwrite``
        releases the GIL, so one writer thread lets it run while the loop decodes the
        next chunk. At most two chunks wait for the writer (bounded memory).
        """
        size = a.size
        count = (size + CHUNK_SIZE - 1) // CHUNK_SIZE
        if count > 1 and hasattr(os, "posix_fallocate"):
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, size)

        def read(i: int) -> Message:
            off = i * CHUNK_SIZE
            n = min(CHUNK_SIZE, size - off)
            return Read(path=path, offset=off, length=n, version=a.version)

        pending: collections.deque[Future[int]] = collections.deque()
        try:
            for i, data in self.upstream.pipeline(count, read, Data, PIPELINE_WINDOW):
                off = i * CHUNK_SIZE
                want = min(CHUNK_SIZE, size - off)
                if data.version != a.version or len(data.data) != want:
                    raise OSError(errno.ESTALE, "the object changed during a fetch")
                if count == 1:
                    _pwrite_all(fd, data.data, off)
                    continue
                while len(pending) >= 2:
                    pending.popleft().result()
                pending.append(self._writer.submit(_pwrite_all, fd, data.data, off))
            while pending:
                pending.popleft().result()
        finally:
            for f in pending:  # the fd must outlive every queued write
                with contextlib.suppress(Exception):
                    f.result()
        os.ftruncate(fd, size)

    def commit(self, msg: Commit) -> Message:
        path = _check_path(msg.path)
        e = self._entry(path)
        if e is None:
            return Committed(attrs=self._stat_upstream(path))
        e.pinned = False
        if not self.cache.is_dirty(e):
            return Committed(attrs=e.attrs)
        return Committed(attrs=self._upload(path))

    def _upload(self, path: str) -> Attrs:
        """Upload the local copy of ``path`` (again, once, if the server restarted meanwhile).

        A restarted server has forgotten the chunks staged before it stopped, so the
        commit fails (EIO); the whole upload is worth one more try.
        """
        server = self.upstream.server_pid
        try:
            return self._upload_once(path)
        except OSError as exc:
            if exc.errno != errno.EIO or self.upstream.server_pid == server:
                raise
            log.info("upload of %s: the server restarted meanwhile, uploading again", path)
        return self._upload_once(path)

    def _upload_once(self, path: str) -> Attrs:
        """Upload the local copy of ``path``; record the new version; return its attrs."""
        e = self.cache.get(path)
        assert e is not None
        obj = self.cache.object_path(path)
        upload_id = secrets.token_hex(16)
        # Below the verified objects directory, never through a symlink planted there.
        with open(self.cache.open_object(path), "rb", buffering=0) as f:
            st0 = os.fstat(f.fileno())
            size = st0.st_size
            count = (size + CHUNK_SIZE - 1) // CHUNK_SIZE
            fileno = f.fileno()

            def chunk(i: int) -> Message:
                off = i * CHUNK_SIZE
                data = os.pread(fileno, min(CHUNK_SIZE, size - off), off)
                return UploadChunk(upload_id=upload_id, offset=off, data=data)

            try:
                for _ in self.upstream.pipeline(count, chunk, Done, PIPELINE_WINDOW):
                    pass
                stamp = self._stamp()
                a = self.upstream.call(
                    UploadCommit(upload_id=upload_id, path=path, size=size, mode=e.attrs.mode),
                    StatReply,
                ).attrs
            except BaseException:
                with contextlib.suppress(OSError):
                    self.upstream.call(UploadAbort(upload_id=upload_id), Done)
                raise
        st1 = os.stat(obj)
        # If a guest wrote during the upload, the copy stays dirty (recorded = before).
        self._void(path)
        self.cache.record(path, a, signature(st0), dirty=signature(st0) != signature(st1))
        self.stats["uploads"] += 1
        self._forget(_parent(path))
        self._remember(path, a, stamp)
        log.debug("uploaded %s: %d bytes, version %s", path, size, a.version)
        return a

    def sync(self, msg: Sync) -> Message:
        n = 0
        for e in self.cache:
            if self.cache.is_dirty(e):
                self._upload(e.path)
                n += 1
        return Synced(uploaded=n)
