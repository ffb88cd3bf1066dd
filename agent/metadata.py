"""What the agent knows of the repository, and the metadata handlers.

Role: the attribute cache, the kept listings and the callback-promise
bookkeeping (:class:`Knowledge`, the state every part of the agent shares),
and the handlers of ``Hello``, ``Stat``, ``List``, ``Readlink``, ``Mkdir``,
``Symlink``, ``Remove``, ``Rename``, ``Link`` and ``SetAttr``
(:class:`MetadataHandlers`).

Trusts: the server's replies and what it publishes (through
:mod:`agent.callbacks`) as the truth about the repository; the interposer's
requests only as far as the codec validated them: every wire path is checked
again here (:func:`_check_path`: absolute, normalised).

Semantics (the interposer depends on them):

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
  The reply is built afresh each time (dirty copies' sizes and times, leases:
  see :mod:`agent.materialise`).
  A name such a listing lacks does not exist: its ``Stat`` (and an ``Open``'s
  revalidation, an ``O_CREAT`` one's too) gets ENOENT without the server.
  So does a name the server said does not exist while a promise holds on it
  (``_missing``), and a directory this agent made starts as an empty kept
  listing. Files created here and not uploaded (``_created``, write-back) are
  shown by Stat, Open and List as if the server had them.
* Wherever a path has a dirty local copy, its size and mtime/ctime come from
  that copy.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import errno
import logging
import os
import posixpath
import time
from collections.abc import Callable, Sequence

import attrs

from synthfs.agent.cache import ContentCache, Entry, signature
from synthfs.agent.callbacks import Promises
from synthfs.agent.upstream import Upstream
from synthfs.protocol.leases import LeaseBoard
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Attrs,
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
    Readlink,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    Welcome,
)

__all__ = ["LISTING_DIRS", "LISTING_ENTRIES", "Knowledge", "MetadataHandlers"]

log = logging.getLogger(__name__)

#: Directories whose listings the agent keeps, and their entries in all (LRU beyond).
LISTING_DIRS = 4096
LISTING_ENTRIES = 100_000


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


class Knowledge(abc.ABC):
    """What the agent knows: the state every part shares, and its bookkeeping.

    :class:`agent.service.AgentService` sets every attribute declared here once,
    in its constructor; the parts (:class:`MetadataHandlers`,
    :class:`agent.materialise.Materialiser`, :class:`agent.upload.Uploads`)
    subclass this and read or update that state through the methods below.
    """

    upstream: Upstream
    cache_root: str
    cache_size: int
    attr_ttl: float
    refused_paths: tuple[str, ...]
    #: Replaced when the server starts serving another repository.
    cache: ContentCache
    #: Path -> its attributes, and until when they answer a Stat without a promise.
    _attrs: dict[str, tuple[Attrs, float]]
    #: Directory -> the server's listing and its entries by name (LRU order).
    _listings: collections.OrderedDict[str, tuple[Listing, dict[str, Attrs]]]
    _listed: int  # entries in self._listings
    #: Files created in this agent and not on the server yet (write-back: queued), by
    #: path: every Stat, Open and List this agent answers shows them (agent.writeback).
    _created: dict[str, Attrs]
    #: Paths the server said do not exist, while a callback promise holds on that
    #: (a create of the name, by anyone, cancels it): a create needs no round trip.
    _missing: set[str]
    promises: Promises
    leases: LeaseBoard | None
    leases_endpoint: str
    _refresh: Callable[[], None]
    _registrations: int
    stats: dict[str, int]

    # -- provided by agent.upload ---------------------------------------------------

    @abc.abstractmethod
    def _upload(self, path: str) -> Attrs:
        """Upload the local copy of ``path``; return the new attributes."""

    @abc.abstractmethod
    def _other_names_first(self, path: str, a: Attrs) -> Attrs:
        """``a`` again after uploading what was written through the file's other names."""

    # -- attribute cache ------------------------------------------------------------

    def _remember(self, path: str, a: Attrs, stamp: tuple[int, int] | None = None) -> None:
        """Cache ``a``; with the promise ``stamp`` taken before its request was sent, hold it.

        A file of several names (hard links) is never cached: the server publishes a
        change under the name it was made through only, so what is known of its other
        names could be stale; every Stat and Open of it asks the server.
        """
        if self._listings:
            self._learnt(path, a)
        self._missing.discard(path)
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
        self._missing.discard(path)
        self.promises.release(path)
        self._drop_listing(path)  # (its parent's fails its check: no promise on path)
        if below:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self._missing if p.startswith(prefix)]:
                self._missing.discard(p)
            for p in [p for p in self._attrs if p.startswith(prefix)]:
                del self._attrs[p]
                self.promises.release(p)
            for p in [p for p in self._listings if p.startswith(prefix)]:
                self._drop_listing(p)

    def _listing_changed(self, path: str) -> None:
        """This agent added or removed an entry of directory ``path``: its listing and
        attributes are stale (a Stat asks), and it is still the directory it was (a
        create in it may be local: agent.writeback) while its promise holds as one."""
        self._drop_listing(path)
        hit = self._attrs.get(path)
        if hit is None or hit[0].kind != FileKind.DIR:
            self._forget(path)
            return
        self._attrs[path] = (hit[0], 0.0)
        self.promises.listing_changed(path)

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
        hit = self._attrs.pop(path, None)
        if parent and hit is not None:
            # Its listing changed: stale for a Stat (no TTL left, no promise), still the
            # directory it was while its promise holds as an object (a create in it).
            self._attrs[path] = (hit[0], 0.0)
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

    def _stat_upstream(self, path: str) -> Attrs:
        """The server's attributes of ``path`` (a file created here and not uploaded yet:
        its own); FileNotFoundError also when the kept listing of its directory
        (promised, as a whole) lacks the name, or a promise holds on its absence."""
        created = self._created.get(path)
        if created is not None:
            return created
        if self._known_absent(path):
            self.stats["promised_absent"] += 1
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        stamp = self._stamp()
        try:
            a = self.upstream.call(Stat(path=path), StatReply).attrs
        except FileNotFoundError:
            self._forget(path)
            if stamp is not None:  # absent until an invalidation of the name says otherwise
                self._missing.add(path)
                self.promises.hold(path, stamp)
            raise
        self._remember(path, a, stamp)
        return a

    def _known_absent(self, path: str) -> bool:
        """Whether the server has no ``path``, as a promise vouches (no round trip): the
        kept listing of its directory lacks the name, or the server said so itself."""
        if path in self._created:
            return False
        if path in self._missing:
            self._catch_up()
            if self.promises.holds(path):
                return True
            self._missing.discard(path)
        parent = _parent(path) if path != "/" else ""
        if (self._kept_listing(parent) is None  # (its promises checked: caught up)
                or posixpath.basename(path) in self._listings[parent][1]):
            return False
        # Absent now, as promised: so it stays known when the listing goes (an entry
        # added by this agent's own upload), until the name's invalidation.
        self._missing.add(path)
        self.promises.hold(path, self.promises.stamp())
        return True


class MetadataHandlers(Knowledge):
    """The metadata handlers: each takes a message, returns a reply or raises ``OSError``."""

    def _trusted_pids(self) -> tuple[int, ...]:
        """This agent's pid, and those of its servers that run on this machine."""
        return (os.getpid(), *self.upstream.local_server_pids())

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
        if hit is not None:
            self._forget(path)  # (stale: the server is asked below)
        a = self._other_names_first(path, self._stat_upstream(path))
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
        created = self._created_in(path, listing)
        for d in listing.entries:
            child = prefix + d.name
            shown = self._present(child, d.attrs)
            if shown is d.attrs:
                entries.append(d)
            else:
                entries.append(DirEntry(name=d.name, attrs=shown))
                same = False
            if promised and self.leases is not None and self._leasable(child, d.attrs, shown):
                leasable.append(d.name)
        for name, a in created:
            entries.append(DirEntry(name=name, attrs=self._present(prefix + name, a)))
            same = False
        if leasable:
            return self._list_leased(path, listing.attrs, entries, leasable)
        if same and not listing.leased:
            return listing  # frozen: the same object serves every request
        return Listing(attrs=listing.attrs, entries=entries)  # converter=tuple

    def _created_in(self, path: str, listing: Listing) -> Sequence[tuple[str, Attrs]]:
        """The files created here in directory ``path`` that ``listing`` lacks."""
        if not self._created:
            return []
        prefix = path if path == "/" else path + "/"
        names = {d.name for d in listing.entries}
        return sorted((p[len(prefix):], a) for p, a in self._created.items()
                      if p.startswith(prefix) and "/" not in p[len(prefix):]
                      and p[len(prefix):] not in names)

    def _leasable(self, path: str, a: Attrs, shown: Attrs) -> bool:
        """Whether a listing may lease ``path``, listed by the server as ``a`` and shown
        as ``shown``: a clean copy of that version (its promise decides for how long)."""
        if shown is not a or a.kind != FileKind.FILE:
            return False
        e = self.cache.get(path)
        return (e is not None and not e.pinned and e.version == a.version
                and e.attrs.mode == a.mode)

    def _lease_until(self, path: str) -> float | None:
        """Until when a lease on the copy of ``path`` may last (None: none now)."""
        return self.promises.deadline(path)

    def _list_leased(self, path: str, a: Attrs, entries: Sequence[DirEntry],
                     names: Sequence[str]) -> Listing:
        """The listing with leases on the entries whose clean copies a promise vouches for
        (a first open of each needs no round trip either: ``find | xargs cat``)."""
        assert self.leases is not None
        leased = []
        grant = None
        for name in names:
            child = posixpath.join(path, name)
            until = self._lease_until(child)
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
        stamp = self._stamp()
        reply = self.upstream.call(Mkdir(path=path, mode=msg.mode), StatReply)
        self._remember(path, reply.attrs, stamp)
        if stamp is not None:
            # Made empty: a listing of nothing, promised from before the request (an
            # entry anyone adds publishes the directory), so that the names created
            # in it next are known absent without a round trip each.
            self._keep_listing(path, Listing(attrs=reply.attrs, entries=()))
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
        if not msg.directory:
            self._keep_in_other_names(path)
        self._void(path, tree=True)
        self._forget(path, below=True)
        self._listing_changed(_parent(path))
        reply = self.upstream.call(Remove(path=path, directory=msg.directory), Done)
        self.cache.drop(path)
        return reply

    def _keep_in_other_names(self, path: str) -> None:
        """Before ``path``'s name goes (remove, or a rename over it): upload its dirty
        copy when its file has other names, so they hold what was written through it."""
        e = self._entry(path)
        if e is not None and self.cache.is_dirty(e):
            with contextlib.suppress(OSError):
                if self.upstream.call(Stat(path=path), StatReply).attrs.nlink > 1:
                    self._upload(path)  # what was written through this name stays in the others

    def rename(self, msg: Rename) -> Message:
        src, dst = _check_path(msg.src), _check_path(msg.dst)
        if not msg.flags & RenameFlags.EXCHANGE:
            self._keep_in_other_names(dst)  # the rename removes the name dst
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
