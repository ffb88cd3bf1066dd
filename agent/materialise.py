"""Materialisation: ``Open``, fetching objects into the cache, leases on copies, creates.

Role: an ``Open`` makes the object a local file the guest can open itself (the
cache file's host path goes back to the interposer), fetching it when the
cached copy is missing or stale, creating it when an ``O_CREAT`` open asks to.

Trusts: the content cache (:mod:`agent.cache`: objects below a verified
directory, never through a symlink planted there); the server's ``Data``
replies only while their version and length are the ones asked for (else the
fetch starts again, ESTALE at last); what :mod:`agent.metadata` knows. A
file of :data:`DIRECT_MIN` bytes or more is first read from the store itself
when the server locates it (:mod:`agent.direct`: an S3 object version, on a
presigned URL), else, or when that fails, through the server.

Semantics (the interposer depends on them):

* ``Open`` revalidates with the server (one Stat) unless a callback promise
  holds on the path's attributes (then no round trip: a copy kept, or a cold
  open right after the guest's Stat of it), fetches when the version
  changed and the local copy is clean and not open for writing (a copy open
  for writing stays shared until its ``Commit``), and returns the cache
  file's host path. An ``O_CREAT`` open of a path the agent knows nothing of
  tries an exclusive create first (one round trip instead of a Stat and a
  create; EEXIST: it exists, and is opened as above); no create ever replaces
  a file another client made meanwhile. A write-back agent makes a create the
  server is known to lack itself (:meth:`Materialiser._create_here`,
  :mod:`agent.writeback`), unless the guest asked for ``O_EXCL``.
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
import secrets
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import attrs

from synthfs.agent.cache import Entry, signature
from synthfs.agent.metadata import Knowledge, _check_path, _parent
from synthfs.extents import check_extents, pieces
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Attrs,
    Data,
    ExtentMap,
    Extents,
    FileKind,
    Locate,
    Located,
    Message,
    Open,
    Opened,
    Progress,
    Read,
    StatReply,
    UploadCommit,
)

__all__ = ["PIPELINE_WINDOW", "PROGRESS_EVERY", "Materialiser"]

log = logging.getLogger(__name__)

#: Reads / upload chunks in flight during a fetch or an upload.
PIPELINE_WINDOW = 6
_FETCH_ATTEMPTS = 3
#: Seconds between two Progress notes of one fetch (the first goes at its start).
PROGRESS_EVERY = 0.2
#: A file this large or larger is first asked for a direct read (``Locate``): below it,
#: one or two Reads through the server cost less than the extra round trip.
DIRECT_MIN = 2 * CHUNK_SIZE
#: Seconds without a direct read after the store could not be reached from here, or the
#: server cannot locate (each attempt would cost a round trip, or a connect timeout).
DIRECT_OFF_S = 60.0


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
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


def _allocate(fd: int, size: int) -> None:
    """Allocate the ``size`` bytes of a copy about to be filled (not needed: a failure is
    left to the writes)."""
    if hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


class Materialiser(Knowledge):
    """``Open`` and what it needs: fetches, creates, leases on the copies it opens."""

    #: Writes fetched chunks into the page cache while the next one is received.
    _writer: ThreadPoolExecutor
    #: Sends a Progress note on the request in hand (set by the I/O loop, else None):
    #: the interposer shows it on its terminal when the fetch takes long.
    note: Callable[[Message], None] | None = None

    def open(self, msg: Open) -> Message:
        path = _check_path(msg.path)
        flags = msg.flags
        writing = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if writing or flags & (os.O_CREAT | os.O_TRUNC):
            self._void(path)  # before anything changes: readers must ask again
        e = self._entry(path)
        if flags & os.O_CREAT and e is None and path not in self._attrs:
            # Nothing known of it: such an open usually creates. Here, when the server
            # is known to lack the name and the create need not be exclusive (write-back);
            # else one exclusive create instead of a Stat and then a create; EEXIST:
            # open what is there, below.
            guest_excl = flags & os.O_EXCL and not msg.claim  # (exclusive across agents)
            here = None if guest_excl else self._create_here(path, msg.mode, pin=writing)
            created = here or self._create(path, msg.mode, pin=writing)
            if created is not None:
                return created
        try:
            # A promise vouches for the attributes whether or not a copy is kept: a cold
            # open right after the guest's own Stat of the path (the interposer resolves
            # it first) needs no second one.
            promised = self._promised(path)
            if promised is not None:
                self.stats["promised_opens"] += 1
                log.debug("open %s: promised (version %s), no round trip", path, promised.version)
            a = promised or self._other_names_first(path, self._stat_upstream(path))
        except FileNotFoundError:
            self._attrs.pop(path, None)  # (a promise on the absence stays: _stat_upstream)
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
                # The kept copy's content is not the server's version (older, or written
                # and queued): say so; its mode is the server's (a chmod since, cc's +x).
                shown = attrs.evolve(e.attrs, mode=a.mode)
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
        return Opened(host_path=host, attrs=self._present(path, shown), lease=lease[0],
                      lease_seq=lease[1], lease_until_ns=lease[2])

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

    def _create_here(self, path: str, mode: int, *, pin: bool) -> Message | None:
        """Create ``path`` in this agent only, queued for the server (write-back:
        agent.writeback); None: the server must create it (the default)."""
        return None

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
        self._listing_changed(_parent(path))
        self._remember(path, a, stamp)
        e = self._empty_copy(path, a, dirty=False)
        e.pinned = pin
        return Opened(host_path=self.cache.object_path(path), attrs=a)

    def _fetch(self, path: str, a: Attrs) -> Entry:
        """Fetch ``path`` at version ``a.version`` into a temp file, rename into place.

        A stale clean copy no lease covers is dropped first, not at the install: its
        page-cache pages go back to the kernel before the new copy needs as many (a
        guest reading it keeps its inode), so a refetch of a large file reuses them
        instead of faulting fresh memory in, and the cache never holds both.
        """
        old = self.cache.get(path)
        if old is not None and not old.pinned and not self.cache.is_dirty(old) and not (
                self.leases is not None and self.leases.granted(path)):
            self._void(path)
            self.cache.drop(path)
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

    def _server_extents(self, path: str, a: Attrs) -> list[tuple[int, int]]:
        """The data extents of ``path`` at ``a.version``: one Extents round trip when the
        server allocates less than the size (the file has holes), else the whole file."""
        if a.size == 0 or a.blocks * 512 >= a.size:
            return [(0, a.size)] if a.size else []
        reply = self.upstream.call(Extents(path=path, version=a.version), ExtentMap)
        if reply.version != a.version or reply.size != a.size:
            raise OSError(errno.ESTALE, "the object changed during a fetch")
        try:
            return check_extents(reply.extents, reply.size)
        except OSError as exc:
            raise OSError(errno.EIO, f"the server's {exc.strerror}") from None

    def _fetch_into(self, fd: int, path: str, a: Attrs) -> None:
        """Pipelined Reads; the page-cache writes overlap the next receive (a writer thread).

        Filling fresh page-cache pages is the dearest step of a cold fill; ``os.pwrite``
        releases the GIL, so one writer thread lets it run while the loop decodes the
        next chunk. At most two chunks wait for the writer (bounded memory). A sparse
        object is read by its data extents only, into a copy truncated to its size:
        its holes are neither moved nor allocated here.
        """
        size = a.size
        if (self.direct_min is not None and size >= self.direct_min
                and a.blocks * 512 >= size and self._fetch_direct(fd, path, a)):
            return
        extents = self._server_extents(path, a)
        parts = list(pieces(extents, CHUNK_SIZE))
        count = len(parts)
        if count > 1 and extents == [(0, size)] and hasattr(os, "posix_fallocate"):
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, size)

        def read(i: int) -> Message:
            off, n = parts[i]
            return Read(path=path, offset=off, length=n, version=a.version)

        pending: collections.deque[Future[int]] = collections.deque()
        note = self.note if count > 1 else None
        total = sum(n for _, n in parts)
        done = 0
        next_note = 0.0
        try:
            for i, data in self.upstream.pipeline(count, read, Data, PIPELINE_WINDOW):
                off, want = parts[i]
                if data.version != a.version or len(data.data) != want:
                    raise OSError(errno.ESTALE, "the object changed during a fetch")
                if note is not None and time.monotonic() >= next_note:
                    note(Progress(path=path, done=done, total=total))
                    next_note = time.monotonic() + PROGRESS_EVERY
                done += want
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

    #: the size from which a direct read is tried; None: never (``agent --no-direct``)
    direct_min: int | None = DIRECT_MIN
    #: monotonic time until which no direct read is tried (see :data:`DIRECT_OFF_S`)
    _direct_off_until = 0.0

    def _fetch_direct(self, fd: int, path: str, a: Attrs) -> bool:
        """Read ``path`` at ``a.version`` from the store itself (:mod:`agent.direct`), on a
        URL the server located; False when that cannot be done (the copy is then empty
        again, for the fetch through the server). ESTALE when the object changed."""
        if time.monotonic() < self._direct_off_until:
            return False
        # The copy's blocks are allocated while the Locate is on its way (2-10 ms).
        allocated = self._writer.submit(_allocate, fd, a.size)
        try:
            loc = self.upstream.call(Locate(path=path, version=a.version), Located)
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                raise
            if exc.errno == errno.EOPNOTSUPP:  # a local-directory server, or an older one
                self._direct_off_until = time.monotonic() + DIRECT_OFF_S
            log.debug("fetch %s: no direct read (%s)", path, exc.strerror)
            return False
        finally:
            allocated.result()  # (the caller closes fd: nothing may use it after)
        if loc.version != a.version or loc.size != a.size:
            raise OSError(errno.ESTALE, "the object changed during a fetch")
        note = self.note
        next_note = 0.0

        def progress(done: int) -> None:
            nonlocal next_note
            if note is not None and time.monotonic() >= next_note:
                note(Progress(path=path, done=done, total=loc.size))
                next_note = time.monotonic() + PROGRESS_EVERY

        progress(0)
        # Here, not at the top: http.client (ssl, email) is ~30 ms of every agent's start-up,
        # and only a store that locates (S3) ever gets here.
        from synthfs.agent import direct

        try:
            direct.fetch_into(fd, loc.url, loc.etag, loc.size, progress)
        except direct.Unusable as exc:
            log.info("fetch %s: direct read failed (%s): through the server", path, exc)
            self.stats["direct_failed"] += 1
            if "did not answer" in str(exc):
                self._direct_off_until = time.monotonic() + DIRECT_OFF_S
            os.ftruncate(fd, 0)
            return False
        os.ftruncate(fd, loc.size)
        self.stats["direct_fetches"] += 1
        return True
