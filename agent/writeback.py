"""Write-back: a close is durable on the agent's disk and queued; the queue drains behind it.

Role: :class:`WriteBack` answers ``Commit`` (a guest closed a written copy)
without the server: the local copy is flushed to the agent's disk
(``fdatasync``), a row naming it goes into the :class:`Journal` (an SQLite
table with ``synchronous=FULL``: the row is on disk when the commit returns),
and the guest's ``close`` returns. Several rows at once (a process exit's ``Sync``, an
upload batch's rows leaving) go in one group commit (:meth:`Journal.batch`): one flush
of the copies (``syncfs``), one journal commit. The agent's loop drains the queue between
requests (:meth:`WriteBack.background`): the server has the file within
``upload_delay`` seconds (default 1) while it answers.

Trusts: the content cache (:mod:`agent.cache`) for the copies; the server to
commit each upload atomically (fsync + rename) and to apply a resent one
idempotently; :mod:`agent.upload` to upload one file and record its version;
the kernel's read leases (``F_SETLEASE``) to tell whether any fd still has a
copy open for writing.

Semantics (README, docs/architecture.md "Write-back"):

* ``Commit``: durable here, queued (``close``). ``Commit(wait=True)``
  (``fsync``/``fdatasync``) and ``Sync(wait=True)`` (``sync``/``syncfs``):
  answered only once the server has the file (every queued file) durably.
  ``Sync(wait=False)`` (a process exit) queues every changed copy that no fd
  has open for writing any more (the exit closed its own).
* What reaches the server is always a version some close produced (or an
  ``fsync``/``sync``: the copy as it is then). One row per path, naming the
  copy's signature at its close: a second close before the upload replaces it
  (in order per file, the last close wins). The guest writes the copy in
  place, so an ``Open`` for writing (or ``O_TRUNC``) of a queued path first
  keeps the closed version aside, copy-on-reopen: a reflink (``FICLONE``) where
  the cache's file system has them, else a copy, fsynced under ``snaps/``
  and named in the row before the ``Open`` returns; the upload sends that
  version, and a replay after SIGKILL too. Copy-on-reopen rather than a copy
  at every close: the usual close is never reopened before its upload (or is
  removed first), so it costs nothing; only a reopen within the upload delay
  pays one copy. A copy written without a reopen (through an fd kept open
  across the close, a shared mapping) no longer holds its closed version: it
  waits until no fd writes it any more (a read lease probes that) or its
  next close, and is then sent as that left it. An upload that read a copy
  while it changed is not committed (it is tried again). A removed path's row
  goes with its version kept aside (``create, write, close, unlink`` sends no
  content).
* A rename, link or truncation of a queued path first uploads it (the server
  applies namespace changes at once, in the order the guests made them); a
  remove drops its row; mkdir/rmdir go to the server at once.
* Local creates (:meth:`WriteBack._create_here`): an ``O_CREAT`` open of a name a
  promise says the server lacks, without the guest's ``O_EXCL`` (``Open.claim``:
  the interposer's own), makes the file here only, dirty; Stat, Open and List
  show it (``_created``) until its upload creates it on the server (not
  exclusively: a name another agent made meanwhile is replaced, the later commit
  wins). Its remove before that sends nothing; a rename, link or setattr naming
  it uploads it first (:meth:`WriteBack._homed`); rmdir of its directory is
  ENOTEMPTY. After a restart, rows whose copy has no server version are such
  files again.
* The journal survives SIGKILL, power loss and restarts: the next agent on
  this cache sends every row it finds at once (their copies are kept even if
  the cache's unsynced index lost them). A close the journal cannot record
  (its disk is full) uploads before it returns, as with ``--write-through``.
* Two agents writing one path: the server's commit order decides (the last
  upload to commit wins, as the last close does in AFS); a guest's exclusive
  create is decided by the server before its ``open`` returns.
* A closed file whose directory went away before its upload (another agent's
  guest removed or renamed it while it looked empty there) makes that directory
  again (mode 0755) and is uploaded: no closed content is lost.
* An upload the server refuses for good (the name became a directory, a
  directory on its path became a file) drops its row with an error in the log; one
  the server could not take (down, full) stays queued and is retried, with a
  back-off, until it is taken.
* ``--write-through`` (no journal): ``Commit`` uploads before answering, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator

from synthfs.agent.cache import Entry, signature
from synthfs.agent.metadata import Knowledge, _check_path, _parent
from synthfs.agent.upload import Changed
from synthfs.extents import copy_extents, data_extents
from synthfs.protocol.client import Unreachable
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Attrs,
    Commit,
    Committed,
    Done,
    FileKind,
    Link,
    Message,
    Mkdir,
    Open,
    Opened,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    StatReply,
    Symlink,
    Sync,
    Synced,
    UploadChunk,
    UploadCommit,
)
from synthfs.protocol.naming import name_from_wire, wire_name

__all__ = ["DEFAULT_UPLOAD_DELAY", "Journal", "WriteBack"]

log = logging.getLogger(__name__)

#: Seconds within which a closed file reaches the server while it answers.
DEFAULT_UPLOAD_DELAY = 1.0
#: Files up to this size are uploaded together, pipelined; larger ones one at a time.
_SMALL = 1 << 20
_BATCH_FILES = 64
_BATCH_BYTES = 8 << 20
_WINDOW = 16
#: Queuing this many copies at once flushes them with one syncfs, not one fdatasync each.
_SYNCFS = 4
#: Errnos after which an upload is retried later (the server may take it then).
_TRANSIENT = frozenset({errno.EIO, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENOSPC,
                        errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.EPROTO,
                        errno.EKEYEXPIRED, errno.EKEYREJECTED})
_BACKOFF_MAX = 5.0
#: Seconds a file the server could not take (its disk full) waits before another try.
_STUCK = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    path TEXT PRIMARY KEY,    -- repository path (a BLOB when it is not UTF-8)
    queued REAL NOT NULL,     -- time.time() of the first close not uploaded yet
    sig TEXT,                 -- JSON [ino, size, mtime_ns] of the copy at its last close
    snap TEXT                 -- the closed version kept aside (snaps/<snap>), if reopened
)
"""
#: (ino, size, mtime_ns): what a write to a copy changes (a chmod or rename moves only ctime)
Written = tuple[int, int, int]
_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): share src's extents (btrfs, XFS, bcachefs)
#: The version of a file created here and not uploaded yet (a server's is never empty).
_CREATED = ""
#: Inode numbers of files created here (above what file systems hand out; the
#: interposer keeps the number a path first showed: interposer/inodes.py).
_CREATED_INO = 1 << 61


def _written(st: os.stat_result) -> Written:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _writers(fd: int) -> bool | None:
    """Whether some fd (of any process) has the file of ``fd`` open for writing.

    A read lease is granted only on a file nobody has open for writing (a
    shared writable mapping counts); it is let go at once. None: cannot tell
    (leases unsupported here, or SIGIO, which a lease break would raise, is
    not ignored by this process).
    """
    if signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


class NotCommitted(OSError):
    """A journal's group commit failed: none of its changes is on disk."""


def queued_paths(directory: str) -> list[str]:
    """The paths the journal in ``directory`` holds (none when it has none)."""
    path = os.path.join(directory, "writeback.sqlite")
    if not os.path.exists(path):
        return []
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            return [name_from_wire(p) for (p,) in db.execute("SELECT path FROM queue")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.warning("write-back journal %s unreadable (%s)", path, exc)
        return []


class Journal:
    """The queue of closed files, one row per path, on disk before a close returns.

    ``unlink_snap(name)`` deletes a version kept aside once no row names it.
    """

    def __init__(self, directory: str, unlink_snap: Callable[[str], None]) -> None:
        self.path = os.path.join(directory, "writeback.sqlite")
        self._unlink_snap = unlink_snap
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # each commit is fsynced
        self._db.execute(_SCHEMA)
        columns = {c[1] for c in self._db.execute("PRAGMA table_info(queue)")}
        for column in ("sig", "snap"):  # a journal an older agent left
            if column not in columns:
                self._db.execute(f"ALTER TABLE queue ADD COLUMN {column} TEXT")
        #: path -> time.time() of its first close not uploaded yet
        self.rows: dict[str, float] = {}
        #: path -> the copy's (ino, size, mtime_ns) at its last close (None: not known)
        self.sigs: dict[str, Written | None] = {}
        #: path -> the name of its closed version kept aside (the copy was reopened)
        self.snaps: dict[str, str] = {}
        #: inside batch(): what to do once it is committed (else None)
        self._batch: list[Callable[[], None]] | None = None
        for p, q, sig, snap in self._db.execute(
                "SELECT path, queued, sig, snap FROM queue ORDER BY queued"):
            path = name_from_wire(p)
            self.rows[path] = q
            self.sigs[path] = _load_sig(sig)
            if snap:
                self.snaps[path] = snap

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the changes made inside into one transaction: one fsync for all of them
        (group commit). On disk when the block ends; when the commit fails, none of them is
        (the rows in memory go back to what they were, and OSError is raised)."""
        if self._batch is not None:  # (nested: the outer block commits)
            yield
            return
        saved = (dict(self.rows), dict(self.sigs), dict(self.snaps))
        self._batch = []
        try:
            self._exec("BEGIN", ())
            yield
            try:
                self._exec("COMMIT", ())
            except OSError as exc:
                raise NotCommitted(exc.errno, exc.strerror) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self.rows, self.sigs, self.snaps = saved
            self._batch = None
            raise
        after, self._batch = self._batch, None
        for unlink in after:
            unlink()

    def _later(self, snap: str) -> None:
        """Delete a version kept aside once no row on disk names it (after the batch)."""
        if self._batch is None:
            self._unlink_snap(snap)
        else:
            self._batch.append(lambda: self._unlink_snap(snap))

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, path: str, sig: Written) -> None:
        """Queue ``path`` closed as ``sig`` (durably); a path already queued keeps its first
        time, and a version kept aside for it goes (this close replaces it)."""
        old = self.snaps.get(path)
        if path in self.rows:
            if self.sigs.get(path) == sig and old is None:
                return
            self._exec("UPDATE queue SET sig = ?, snap = NULL WHERE path = ?",
                       (json.dumps(sig), wire_name(path)))
        else:
            now = time.time()
            self._exec("INSERT OR REPLACE INTO queue (path, queued, sig) VALUES (?, ?, ?)",
                       (wire_name(path), now, json.dumps(sig)))
            self.rows[path] = now
        self.sigs[path] = sig
        if old is not None:
            del self.snaps[path]
            self._later(old)

    def keep(self, path: str, snap: str) -> None:
        """Name ``snap`` (durable already) as the closed version of queued ``path``."""
        self._exec("UPDATE queue SET snap = ? WHERE path = ?", (snap, wire_name(path)))
        self.snaps[path] = snap

    def drop_snap(self, path: str) -> None:
        """The server has a later version of ``path`` than the one kept aside: forget it."""
        snap = self.snaps.pop(path, None)
        if snap is None:
            return
        with contextlib.suppress(OSError):  # (a stale name only costs a look at replay)
            self._exec("UPDATE queue SET snap = NULL WHERE path = ?", (wire_name(path),))
        self._later(snap)

    def done(self, path: str) -> None:
        if self.rows.pop(path, None) is None:
            return
        self.sigs.pop(path, None)
        snap = self.snaps.pop(path, None)
        try:
            self._exec("DELETE FROM queue WHERE path = ?", (wire_name(path),))
        except OSError as exc:
            # The file is on the server; a row left behind only makes the next agent
            # look at the copy again (and send it only if it is dirty).
            log.warning("write-back: cannot clear %s from the journal (%s)", path,
                        exc.strerror or exc)
            return  # (its version kept aside stays with it)
        if snap is not None:
            self._later(snap)

    def _exec(self, sql: str, args: tuple[object, ...]) -> None:
        """One statement, committed (fsynced); a full disk is ENOSPC, as for any write."""
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            full = "full" in str(exc)
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          f"write-back journal: {exc}") from None

    def under(self, path: str) -> list[str]:
        """Queued paths at or below ``path``."""
        prefix = path.rstrip("/") + "/"
        return [p for p in self.rows if p == path or p.startswith(prefix)]

    def oldest(self) -> float | None:
        # Rows are kept in the order they were queued (loaded so; added at the end).
        return next(iter(self.rows.values()), None)


def _load_sig(text: str | None) -> Written | None:
    try:
        v = json.loads(text) if text else None
        if isinstance(v, list) and len(v) == 3:
            return (int(v[0]), int(v[1]), int(v[2]))
    except (ValueError, TypeError):
        pass
    return None


def _copy(src: int, dst: int, size: int) -> bool:
    """Copy the file ``src`` into the empty ``dst``: a reflink when the file system makes
    one (True), else its data extents (in the kernel where it can; holes stay holes)."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return True
    except OSError:
        pass
    copy_extents(src, dst, data_extents(src, size), CHUNK_SIZE)
    os.ftruncate(dst, size)
    return False


class WriteBack(Knowledge):
    """``Commit``/``Sync`` with a write-back queue; the namespace handlers keep its order.

    Comes first among :class:`agent.service.AgentService`'s bases: each handler
    here does its part of the queue and hands the request on (``super()``).
    """

    #: None: write-through (``--write-through``)
    journal: Journal | None
    #: (agent.upload.Uploads, a later base of the service)
    _send_file: Callable[..., tuple[Attrs, os.stat_result, tuple[int, int] | None]]
    _match_mode: Callable[[Entry, int], None]  # (agent.materialise.Materialiser)
    upload_delay: float
    _retry_at: float  # monotonic: no background upload before (a back-off)
    _backoff: float
    _stuck: dict[str, float]  # path -> time.time() of its next try
    _held: set[str]  # stuck because a guest writes the copy since its close
    #: created here (``_created``) and not queued yet -> time.time() of the create
    _unqueued: dict[str, float]

    def _open_journal(self, write_through: bool) -> None:
        self.journal = None if write_through else Journal(self.cache.dir, self.cache.unlink_snap)
        self._retry_at = 0.0
        self._backoff = 0.0
        self._stuck = {}
        self._held = set()
        self._created = {}
        self._unqueued = {}
        if self.journal is not None:
            for path in self.journal.rows:  # created here before a restart, not uploaded
                e = self.cache.get(path)
                if e is not None and e.attrs.version == _CREATED:
                    self._created[path] = e.attrs
            named = set(self.journal.snaps.values())
            for name in self.cache.snaps():  # kept aside, but the agent died before naming it
                if name not in named:
                    self.cache.unlink_snap(name)
        if self.journal:
            log.info("write-back: %d closed files still to upload (from before a restart)",
                     len(self.journal))

    def _close_journal(self) -> None:
        """Upload what is queued while the server answers; the rest stays in the journal."""
        j = self.journal
        if j is None:
            return
        try:
            self._queue(*[p for p in self._unqueued
                          if p in self._created and self._entry(p) is not None])
        except OSError as exc:
            log.warning("write-back: cannot queue the files created here (%s)", exc)
        if j:
            try:
                self._drain(everything=True)
            except OSError as exc:
                log.warning("write-back: %d closed files stay queued (%s); the next agent "
                            "on this cache uploads them", len(j), exc.strerror or exc)
            except Exception:  # never lose the rows to an unexpected error: they stay
                log.exception("write-back: uploading the queue at exit failed")
        j.close()

    # -- handlers ---------------------------------------------------------------------

    def open(self, msg: Open) -> Message:
        j = self.journal
        if j is not None and (msg.flags & os.O_ACCMODE != os.O_RDONLY or msg.flags & os.O_TRUNC):
            path = _check_path(msg.path)
            if path in j and path not in j.snaps:
                self._keep_aside(path)  # before the guest can write the closed version
        return super().open(msg)  # type: ignore[misc]

    def _create_here(self, path: str, mode: int, *, pin: bool) -> Message | None:
        """A create that needs no server: the name is known absent there (a promise
        vouches) and the open is not exclusive. The empty copy is the file, dirty: its
        close queues it like any other, and its upload creates it on the server (last
        upload wins there, as for any two writers). Until then this agent's Stat, Open
        and List show it, and its remove never reaches the server."""
        if self.journal is None or not self._known_absent(path) or not self._a_directory(
                _parent(path)):
            return None
        now = time.time_ns()
        fd, tmp = self.cache.new_temp()
        try:
            ino = _CREATED_INO + os.fstat(fd).st_ino
        finally:
            os.close(fd)
        a = Attrs(kind=FileKind.FILE, size=0, mode=stat.S_IMODE(mode), mtime_ns=now,
                  ctime_ns=now, ino=ino, version=_CREATED)
        e = self.cache.install(path, tmp, a)
        e = self.cache.record(path, a, e.recorded, dirty=True)
        e.pinned = pin
        self._created[path] = a
        self._unqueued[path] = time.time()  # (its close queues it; else the loop does)
        self._missing.discard(path)
        self.stats["local_creates"] += 1
        self._match_mode(e, a.mode)
        return Opened(host_path=self.cache.object_path(path), attrs=a)

    def _a_directory(self, path: str) -> bool:
        """Whether a promise vouches that the server has a directory at ``path`` (the
        upload of a name created in it must find it)."""
        if path in self._created:
            return False
        if self._kept_listing(path) is not None:
            return True
        hit = self._attrs.get(path)
        if hit is None or hit[0].kind != FileKind.DIR:
            return False
        self._catch_up()
        return self.promises.holds_object(path)  # (entries added since do not matter)

    def _homed(self, *paths: str) -> None:
        """Upload the files created here at or below ``paths`` (not on the server yet):
        a namespace change the server makes must find them there."""
        for path in paths:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self._created if p == path or p.startswith(prefix)]:
                if self._entry(p) is None:
                    self._created.pop(p, None)
                    continue
                self._stuck.pop(p, None)
                self._upload(p)

    def _lease(self, path: str, e: Entry, a: Attrs) -> tuple[str, int, int] | None:
        """A lease on a queued copy as its close left it, until its upload.

        Until its upload this agent's copy is the file's content (the dirty copy wins
        over the server's), so nothing the server hears of changes what an open here
        must see; what can change it goes through this agent and voids the lease
        first: an open for writing, a remove, a rename, the upload itself. A copy
        written since its close (an fd kept across it) gets none: each open asks.
        """
        if not self._closed_copy(path):
            return super()._lease(path, e, a)  # type: ignore[misc]
        until = self._lease_until(path)
        return None if until is None or self.leases is None else self.leases.grant(path, until)

    def _closed_copy(self, path: str) -> bool:
        """Whether ``path`` is queued and its copy is as its close left it (not open for
        writing, not written since, not reopened)."""
        j = self.journal
        if j is None or path not in j or path in j.snaps:
            return False
        e = self.cache.get(path)
        if e is None or e.pinned:
            return False
        st = self.cache.local_stat(e)
        return st is not None and j.sigs.get(path) == _written(st)

    def _leasable(self, path: str, a: Attrs, shown: Attrs) -> bool:
        """A listing leases a queued copy as its close left it too (see :meth:`_lease`)."""
        return self._closed_copy(path) or super()._leasable(path, a, shown)  # type: ignore[misc]

    def _lease_until(self, path: str) -> float | None:
        """A queued copy's lease lasts as long as a promise may (``--max-age``): its upload
        voids it, whenever that comes (the server may be down meanwhile)."""
        if self.leases is not None and self._closed_copy(path):
            return self.leases.clock() + self.promises.max_age
        return super()._lease_until(path)  # type: ignore[misc]

    def _keep_aside(self, path: str) -> None:
        """Keep the closed version of queued ``path`` (its copy) aside, durably, for its
        upload: the guest is about to write the copy in place. When it cannot be kept
        (the cache's disk is full), it is uploaded now, or the open fails."""
        j = self.journal
        assert j is not None
        try:
            src = self.cache.open_object(path)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(src)
            if not self._still_closed(path, src, st):
                return  # already written since its close: that close's version is gone
            name = secrets.token_hex(16)
            try:
                dst = self.cache.open_snap(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    reflink = _copy(src, dst, st.st_size)
                    os.fdatasync(dst)
                finally:
                    os.close(dst)
                if _written(os.fstat(src)) != _written(st):  # an fd kept across the close
                    self.cache.unlink_snap(name)             # wrote it meanwhile: gone too
                    return
                self.cache.sync_snaps_dir()
                j.keep(path, name)
            except OSError as exc:
                self.cache.unlink_snap(name)
                log.warning("write-back: cannot keep the closed version of %s aside (%s): "
                            "uploading it before it is reopened", path, exc.strerror or exc)
                self._stuck.pop(path, None)
                self._send_one(path)
                return
            log.debug("write-back: %s reopened: its closed version kept aside (%s)", path,
                      "reflink" if reflink else "copy")
        finally:
            os.close(src)

    def _still_closed(self, path: str, fd: int, st: os.stat_result) -> bool:
        """Whether the copy open on ``fd`` is a version a close produced: its signature at
        its last close, or written since by an fd kept open across that close which
        nothing has open for writing any more (then its row takes that signature)."""
        j = self.journal
        assert j is not None
        sig = j.sigs.get(path)
        if sig is None or _written(st) == sig:
            return True
        if _writers(fd) is False:
            j.add(path, _written(st))
            return True
        return False

    def commit(self, msg: Commit) -> Message:
        j = self.journal
        path = _check_path(msg.path)
        if j is None or msg.wait:
            reply = super().commit(msg)  # type: ignore[misc]
            if j is not None and path in j and not self._dirty(path):
                j.done(path)
            return reply
        e = self._entry(path)
        if e is None:
            j.done(path)
            return super().commit(msg)  # type: ignore[misc]
        e.pinned = False
        if not self.cache.is_dirty(e):
            return Committed(attrs=e.attrs)
        try:
            self._queue(path)
        except OSError as exc:
            # The agent's disk cannot keep it (full?): the server must, before close returns.
            log.warning("write-back: cannot queue %s (%s): uploading it now", path, exc)
            return super().commit(msg)  # type: ignore[misc]
        return Committed(attrs=self._present(path, e.attrs))

    def sync(self, msg: Sync) -> Message:
        j = self.journal
        if j is None:
            reply = super().sync(msg)  # type: ignore[misc]
            assert isinstance(reply, Synced)
            return reply
        uploaded = 0
        todo = [e.path for e in self.cache
                if self.cache.is_dirty(e) and self._to_queue(e, msg.wait)]
        try:
            self._queue(*todo)  # one group commit for them all
        except OSError:
            for path in todo:  # one by one: each its own verdict
                try:
                    self._queue(path)
                except OSError as exc:  # the journal cannot keep it: the server must, now
                    log.warning("write-back: cannot queue %s (%s): uploading it now", path,
                                exc.strerror or exc)
                    self._upload(path)
                    uploaded += 1
        if msg.wait:
            uploaded += self._drain(everything=True)
        return self._status(uploaded)

    def _to_queue(self, e: Entry, now: bool) -> bool:
        """Whether a ``Sync`` queues the changed copy ``e`` as it is: one not queued
        yet that no fd writes any more (a process exit closed its own fds, not the ones
        writing this); ``now`` (``sync``: every file as it is then) also one whose queued
        version is not the copy (kept aside, or written since its close)."""
        j = self.journal
        assert j is not None
        if e.path not in j:
            return now or not self._being_written(e.path)
        if not now:
            return False
        if e.path in j.snaps:
            return True
        st = self.cache.local_stat(e)
        return st is not None and j.sigs.get(e.path) not in (None, _written(st))

    def _being_written(self, path: str) -> bool:
        """Whether an fd (a guest's) has the copy of ``path`` open for writing now."""
        try:
            fd = self.cache.open_object(path)
        except FileNotFoundError:
            return False
        try:
            return _writers(fd) is True
        finally:
            os.close(fd)

    def _queue(self, *paths: str) -> None:
        """Make the local copies of ``paths`` durable here and queue their uploads (as they
        are now: a version kept aside for one goes): one fsync of the objects directory and
        one journal commit for all of them (group commit)."""
        j = self.journal
        assert j is not None
        if not paths:
            return
        sigs = []
        if len(paths) >= _SYNCFS:
            fds: list[int] = []
            try:
                for path in paths:
                    fds.append(self.cache.open_object(path))
                self.cache.sync_objects()  # every copy and its name, in one flush
                sigs = [(path, _written(os.fstat(fd))) for path, fd in zip(paths, fds, strict=True)]
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            for path in paths:
                fd = self.cache.open_object(path)
                try:
                    os.fdatasync(fd)
                    sigs.append((path, _written(os.fstat(fd))))
                finally:
                    os.close(fd)
            self.cache.sync_objects_dir()  # (a copy may be new there: a create, a fetch)
        with j.batch():
            for path, sig in sigs:
                j.add(path, sig)
        for path in paths:
            self._unqueued.pop(path, None)
            if path in self._held:  # it waited for this close
                self._held.discard(path)
                self._stuck.pop(path, None)

    def _status(self, uploaded: int) -> Synced:
        j = self.journal
        if j is None or not j:
            return Synced(uploaded=uploaded)
        size = 0
        for p in j.rows:
            snap = j.snaps.get(p)
            if snap is not None:
                with contextlib.suppress(OSError):
                    size += os.stat(snap, dir_fd=self.cache.snaps_fd).st_size
                continue
            e = self.cache.get(p)
            st = self.cache.local_stat(e) if e is not None else None
            size += st.st_size if st is not None else 0
        oldest = j.oldest() or time.time()
        return Synced(uploaded=uploaded, queued=len(j), queued_bytes=size,
                      oldest_ms=max(0, int((time.time() - oldest) * 1000)))

    def remove(self, msg: Remove) -> Message:
        path = _check_path(msg.path)
        if path in self._created and not msg.directory:
            # Never on the server: the name goes here, and nothing reaches the server.
            self._void(path, tree=True)
            del self._created[path]
            self._unqueued.pop(path, None)
            if self.journal is not None:
                self.journal.done(path)
            self._stuck.pop(path, None)
            self._held.discard(path)
            self.cache.drop(path)
            self.stats["local_removes"] += 1
            return Done()
        if msg.directory and any(p.startswith(path.rstrip("/") + "/") for p in self._created):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        if path in self._created:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        reply = super().remove(msg)  # type: ignore[misc]
        j = self.journal
        if j is not None:
            # Never uploaded: create -> write -> close -> unlink sends no content.
            for p in j.under(_check_path(msg.path)):
                if self.cache.get(p) is None:
                    j.done(p)
        return reply

    def rename(self, msg: Rename) -> Message:
        j = self.journal
        self._homed(_check_path(msg.src), _check_path(msg.dst))
        if j is not None:
            src, dst = _check_path(msg.src), _check_path(msg.dst)
            # The server renames what it has: it must have what was closed under src.
            self._flush(j.under(src))
            if msg.flags & RenameFlags.EXCHANGE:
                self._flush(j.under(dst))
        reply = super().rename(msg)  # type: ignore[misc]
        if j is not None:
            for p in j.under(_check_path(msg.dst)):
                j.drop_snap(p)  # a version of the file the rename replaced
                if not self._dirty(p):
                    j.done(p)  # replaced by the rename
        return reply

    def link(self, msg: Link) -> Message:
        self._homed(_check_path(msg.src), _check_path(msg.dst))
        if self.journal is not None:
            self._flush(self.journal.under(_check_path(msg.src)))
        return super().link(msg)  # type: ignore[misc]

    def mkdir(self, msg: Mkdir) -> Message:
        if _check_path(msg.path) in self._created:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        return super().mkdir(msg)  # type: ignore[misc]

    def symlink(self, msg: Symlink) -> Message:
        if _check_path(msg.path) in self._created:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        return super().symlink(msg)  # type: ignore[misc]

    def setattr(self, msg: SetAttr) -> Message:
        self._homed(_check_path(msg.path))
        reply = super().setattr(msg)  # type: ignore[misc]
        j = self.journal
        path = _check_path(msg.path)
        if j is not None and path in j and not self._dirty(path):
            j.done(path)  # a truncation or new times uploaded the copy
        return reply

    def _upload(self, path: str) -> Attrs:
        """Upload the copy as it is now (an fsync, a truncation, a rename's or link's source)."""
        a = super()._upload(path)  # type: ignore[safe-super]
        j = self.journal
        if j is not None and path in j:
            if not self._dirty(path):
                j.done(path)
                self._stuck.pop(path, None)
                self._held.discard(path)
            else:
                j.drop_snap(path)  # the server has a later version than the one kept aside
        return a

    # -- the queue --------------------------------------------------------------------

    def _dirty(self, path: str) -> bool:
        e = self.cache.get(path)
        return e is not None and self.cache.is_dirty(e)

    def _oldest_ready(self) -> tuple[float | None, float | None]:
        """(first close of the oldest row that may be tried now, next end of a wait)."""
        assert self.journal is not None
        if not self._stuck:
            return self.journal.oldest(), None
        now = time.time()
        oldest = waits = None
        for p, q in self.journal.rows.items():
            until = self._stuck.get(p)
            if until is not None and until > now:
                waits = until if waits is None else min(waits, until)
            elif oldest is None or q < oldest:
                oldest = q
        return oldest, waits

    def writeback_due(self) -> float | None:
        """Seconds until queued uploads should start (0: now); None: nothing queued."""
        j = self.journal
        if j is None or not (j or self._unqueued):
            return None
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        oldest, waits = self._oldest_ready()
        created = next(iter(self._unqueued.values()), None)
        # Held a fifth of the bound (a file removed meanwhile is never sent), then sent
        # whenever the agent is idle; at half the bound even while requests wait. A file
        # created here and closed by no writer (a lock file) is queued as late.
        soonest = min(t + self.upload_delay / 5 for t in (oldest, created) if t is not None) \
            if oldest is not None or created is not None else None
        soonest = min(t for t in (soonest, waits) if t is not None)
        return max(0.0, soonest - time.time())

    def writeback_urgent(self) -> bool:
        """Queued uploads are half-way to their bound: send them even while requests wait."""
        j = self.journal
        if not j or time.monotonic() < self._retry_at:
            return False
        oldest, _ = self._oldest_ready()
        return oldest is not None and time.time() - oldest >= self.upload_delay / 2

    def background(self) -> None:
        """Send the uploads that are due (one batch); back off while the server cannot take them."""
        if self.writeback_due() != 0.0:
            return
        try:
            self._queue_created()
            self._drain(everything=False)
        except Exception as exc:  # the loop must go on; the rows stay queued
            self._backoff = min(_BACKOFF_MAX, max(0.5, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            if not isinstance(exc, Unreachable):  # (Upstream logs an outage once)
                log.warning("write-back: %d closed files wait for the server (%s); "
                            "again in %.1f s", len(self.journal or ()),
                            getattr(exc, "strerror", None) or exc, self._backoff)
            return
        if self._backoff:
            log.info("write-back: the server takes uploads again")
        self._backoff = 0.0

    def _queue_created(self) -> None:
        """Queue the files created here a fifth of the bound ago that no close queued
        (opened without writing: ``flock``'s lock file, ``open(O_CREAT)`` then ``close``
        of a read-only fd sends no Commit). One still open for writing: its close will."""
        due = time.time() - self.upload_delay / 5
        todo = []
        for path, t in list(self._unqueued.items()):
            if t > due:
                break  # (in the order they were created)
            del self._unqueued[path]
            if path not in self._created or self.journal is None or path in self.journal:
                continue
            if self._being_written(path):
                self._unqueued[path] = time.time()  # looked at again later
                continue
            todo.append(path)
        if todo:
            try:
                self._queue(*todo)
            except OSError:
                now = time.time()
                self._unqueued.update((p, now) for p in todo)  # tried again after a while
                raise

    def _flush(self, paths: list[str]) -> None:
        """Upload ``paths`` now (before a namespace change that depends on them)."""
        for p in paths:
            self._send_one(p)

    def _drain(self, *, everything: bool) -> int:
        """Upload queued files, oldest first: one batch, or (``everything``) all of them.

        A file the server cannot take now (its disk is full) waits a while
        (:data:`_STUCK`) without holding the others; ``everything`` tries each
        queued file and then raises the first such error. Unreachable at once.
        """
        j = self.journal
        assert j is not None
        sent = 0
        failed: OSError | None = None
        now = time.time()
        # What is queued now, each at most twice (a copy a guest keeps writing stays
        # queued for later rather than holding this loop).
        tries = {p: 2 for p in j.rows if everything or self._stuck.get(p, 0.0) <= now}
        while True:
            rows = sorted((r for r in j.rows.items() if tries.get(r[0], 0) > 0),
                          key=lambda r: r[1])
            if not rows:
                break
            batch: list[tuple[str, Entry, str | None, bytes, os.stat_result]] = []
            size = 0
            for path, _ in rows:
                if len(batch) >= _BATCH_FILES or size >= _BATCH_BYTES:
                    break
                tries[path] -= 1
                got = self._snapshot(path)
                if got is None:
                    continue
                e, st, data, snap = got
                if data is None:  # a large file: alone
                    try:
                        sent += self._send_one(path)
                    except Unreachable:
                        raise
                    except OSError as exc:
                        failed = failed or exc
                        tries[path] = 0
                    continue
                batch.append((path, e, snap, data, st))
                size += len(data)
            if batch:
                n, err = self._send_batch(batch)
                sent += n
                failed = failed or err
            if not everything:
                break
        if everything and failed is not None:
            raise failed
        return sent

    def _source(self, path: str) -> tuple[Entry, int, str | None] | None:
        """What to upload for queued ``path``: (its entry, an fd on the closed version: the
        one kept aside, else the copy, the name kept aside or None); None: nothing now
        (the row is done, or waits for the copy's writers: :meth:`_hold`)."""
        j = self.journal
        assert j is not None
        e = self._entry(path)
        snap = j.snaps.get(path)
        if e is None or (snap is None and not self.cache.is_dirty(e)):
            j.done(path)  # removed (nothing is sent), or the server has it
            return None
        if snap is not None:
            try:
                return e, self.cache.open_snap(snap), snap
            except FileNotFoundError:
                log.error("write-back: the closed version of %s kept aside is gone: "
                          "sending the copy", path)
                j.drop_snap(path)
        try:
            fd = self.cache.open_object(path)
        except FileNotFoundError:
            j.done(path)
            return None
        if not self._still_closed(path, fd, os.fstat(fd)):
            os.close(fd)
            self._hold(path)
            return None
        return e, fd, None

    def _hold(self, path: str) -> None:
        """The copy of ``path`` is being written (no close since): try it again later."""
        log.debug("write-back: %s is written again since its close: its upload waits", path)
        self._held.add(path)
        self._stuck[path] = time.time() + _STUCK

    def _snapshot(self, path: str
                  ) -> tuple[Entry, os.stat_result, bytes | None, str | None] | None:
        """The closed version to upload now: (entry, its stat, its bytes when small, the
        name it was kept aside under); None: nothing to send now."""
        got = self._source(path)
        if got is None:
            return None
        e, fd, snap = got
        try:
            st = os.fstat(fd)
            if st.st_size > _SMALL:
                return e, st, None, snap
            parts = []
            off = 0
            while off < st.st_size:
                chunk = os.pread(fd, st.st_size - off, off)
                if not chunk:
                    break
                parts.append(chunk)
                off += len(chunk)
            if snap is None and signature(os.fstat(fd)) != signature(st):
                self._hold(path)  # written while it was read
                return None
            return e, st, b"".join(parts), snap
        finally:
            os.close(fd)

    def _send_one(self, path: str) -> int:
        """Upload one queued file (1: sent, 0: nothing to send now); OSError when it failed.

        A refusal for good drops its row; a failure the server may get over marks the
        file for a later try (:data:`_STUCK`); Unreachable is only raised.
        """
        j = self.journal
        assert j is not None
        if path not in j:
            return 0
        try:
            try:
                return self._upload_queued(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT or not self._rehome(path):
                    raise
                return self._upload_queued(path)
        except Unreachable:
            raise
        except Changed:
            self._hold(path)
            return 0
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                if path not in self._stuck:
                    log.warning("write-back: the server cannot take %s now (%s): it stays "
                                "queued", path, exc.strerror or exc)
                self._stuck[path] = time.time() + _STUCK
            else:
                log.error("write-back: the server refused %s for good (%s): its closed "
                          "content stays only in this agent's cache", path,
                          exc.strerror or exc)
                j.done(path)
            raise

    def _rehome(self, path: str) -> bool:
        """The directory of a closed file went away before its upload (another agent's
        guest removed or renamed it, seeing it empty): made again, so that the closed
        content is not lost (True when some directory was made)."""
        made = False
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            try:
                self.mkdir(Mkdir(path="/" + "/".join(parts[:i]), mode=0o755))
                made = True
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    return False
        if made:
            log.warning("write-back: the directory of %s went away before its upload: made "
                        "again (mode 0755)", path)
        return made

    def _upload_queued(self, path: str) -> int:
        """Upload the closed version of queued ``path`` (1), or nothing now (0)."""
        got = self._source(path)
        if got is None:
            return 0
        e, fd, snap = got
        try:
            server = self.upstream.server_pid
            try:
                a, st0, stamp = self._send_file(path, fd, e.attrs.mode, steady=snap is None)
            except OSError as exc:
                # A restarted server forgot the staged chunks: once more.
                if exc.errno != errno.EIO or self.upstream.server_pid == server:
                    raise
                a, st0, stamp = self._send_file(path, fd, e.attrs.mode, steady=snap is None)
        finally:
            os.close(fd)
        self._uploaded(path, a, st0, stamp, snap)
        return 1

    def _send_batch(self, batch: list[tuple[str, Entry, str | None, bytes, os.stat_result]]
                    ) -> tuple[int, OSError | None]:
        """Small files together: every chunk pipelined, then every commit pipelined.

        (files sent, the first per-file error); Unreachable is raised.
        """
        ids = [secrets.token_hex(16) for _ in batch]
        chunks = [(ids[k], off, data[off:off + CHUNK_SIZE])
                  for k, (_, _, _, data, _) in enumerate(batch)
                  for off in range(0, len(data), CHUNK_SIZE)]
        done = 0
        try:
            for _ in self.upstream.pipeline(
                    len(chunks),
                    lambda i: UploadChunk(upload_id=chunks[i][0], offset=chunks[i][1],
                                          data=chunks[i][2]),
                    Done, _WINDOW):
                pass
            stamp = self._stamp()
            with self._clearing():  # the rows of the whole batch go in one commit
                for k, reply in self.upstream.pipeline(
                        len(batch),
                        lambda k: UploadCommit(upload_id=ids[k], path=batch[k][0],
                                               size=len(batch[k][3]),
                                               mode=batch[k][1].attrs.mode),
                        StatReply, _WINDOW):
                    path, _, snap, _, st0 = batch[k]
                    self._uploaded(path, reply.attrs, st0, stamp, snap)
                    done = k + 1
        except Unreachable:
            raise
        except OSError as exc:
            # One file the server refused (or a restart that lost staged chunks):
            # the rest one by one, each with its own verdict.
            log.debug("write-back: batch stopped at %d (%s): one by one", done, exc)
            sent, failed = done, None
            for path, *_ in batch[done:]:
                try:
                    sent += self._send_one(path)
                except Unreachable:
                    raise
                except OSError as one:
                    failed = failed or one
            return sent, failed
        return done, None

    @contextlib.contextmanager
    def _clearing(self) -> Iterator[None]:
        """Rows cleared inside (their files are on the server) leave the journal in one
        commit. When it fails they stay on disk and in memory, and are looked at again
        (a clean copy is then only cleared, not sent)."""
        assert self.journal is not None
        try:
            with self.journal.batch():
                yield
        except NotCommitted as exc:
            log.warning("write-back: cannot clear uploaded files from the journal (%s)", exc)

    def _uploaded(self, path: str, a: Attrs, st0: os.stat_result,
                  stamp: tuple[int, int] | None, snap: str | None) -> None:
        """Record an upload of the closed version read at ``st0`` (from the copy, or the
        version kept aside as ``snap``), as Uploads._upload_once does."""
        j = self.journal
        assert j is not None
        try:
            st1: os.stat_result | None = os.stat(self.cache.object_path(path))
        except FileNotFoundError:
            st1 = None
        self._void(path)
        e = self.cache.get(path)
        if snap is None:
            recorded = signature(st0)
            changed = st1 is None or signature(st1) != recorded
        elif st1 is not None and _written(st1) == j.sigs.get(path):
            recorded, changed = signature(st1), False  # reopened, not written (yet)
        else:
            recorded, changed = (e.recorded if e is not None else signature(st0)), True
        if e is not None:
            self.cache.record(path, a, recorded, dirty=changed)
        self._created.pop(path, None)
        self.stats["uploads"] += 1
        self._listing_changed(_parent(path))
        self._remember(path, a, stamp)
        if snap is not None or not changed:
            # (The copy written since a reopen queues itself at its close.)
            j.done(path)
            self._stuck.pop(path, None)
            self._held.discard(path)
