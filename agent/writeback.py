"""Write-back: a close is durable on the agent's disk and queued; the queue drains behind it.

Role: :class:`WriteBack` answers ``Commit`` (a guest closed a written copy)
without the server: the local copy is flushed to the agent's disk
(``fdatasync``), a row naming it goes into the :class:`Journal` (an SQLite
table with ``synchronous=FULL``: the row is on disk when the commit returns),
and the guest's ``close`` returns. The agent's loop drains the queue between
requests (:meth:`WriteBack.background`): the server has the file within
``upload_delay`` seconds (default 1) while it answers.

Trusts: the content cache (:mod:`agent.cache`) for the copies; the server to
commit each upload atomically (fsync + rename) and to apply a resent one
idempotently; :mod:`agent.upload` to upload one file and record its version.

Semantics (README, docs/architecture.md "Write-back"):

* ``Commit``: durable here, queued (``close``). ``Commit(wait=True)``
  (``fsync``/``fdatasync``) and ``Sync(wait=True)`` (``sync``/``syncfs``):
  answered only once the server has the file (every queued file) durably.
  ``Sync(wait=False)`` (a process exit) queues every changed copy.
* One row per path: a second close before the upload adds nothing (the upload
  sends the copy as it is then: in order per file, the last close wins). A
  removed path's row goes (``create, write, close, unlink`` sends no content).
* A rename, link or truncation of a queued path first uploads it (the server
  applies namespace changes at once, in the order the guests made them); a
  remove drops its row; mkdir/rmdir go to the server at once.
* The journal survives SIGKILL, power loss and restarts: the next agent on
  this cache sends every row it finds at once (their copies are kept even if
  the cache's unsynced index lost them). A close the journal cannot record
  (its disk is full) uploads before it returns, as with ``--write-through``.
* Two agents writing one path: the server's commit order decides (the last
  upload to commit wins, as the last close does in AFS); an exclusive create
  is decided by the server before the guest's ``open`` returns.
* An upload the server refuses for good (the parent directory went away,
  the name became a directory) drops its row with an error in the log; one
  the server could not take (down, full) stays queued and is retried, with a
  back-off, until it is taken.
* ``--write-through`` (no journal): ``Commit`` uploads before answering, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import sqlite3
import time

from synthfs.agent.cache import Entry, signature
from synthfs.agent.metadata import Knowledge, _check_path, _parent
from synthfs.protocol.client import Unreachable
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Attrs,
    Commit,
    Committed,
    Done,
    Link,
    Message,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    StatReply,
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
    queued REAL NOT NULL      -- time.time() of the first close not uploaded yet
)
"""


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
    """The queue of closed files, one row per path, on disk before a close returns."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "writeback.sqlite")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # each commit is fsynced
        self._db.execute(_SCHEMA)
        #: path -> time.time() of its first close not uploaded yet
        self.rows: dict[str, float] = {
            name_from_wire(p): q
            for p, q in self._db.execute("SELECT path, queued FROM queue ORDER BY queued")
        }

    def close(self) -> None:
        self._db.close()

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, path: str) -> None:
        """Queue ``path`` (durably); a path already queued keeps its first time."""
        if path in self.rows:
            return
        now = time.time()
        self._exec("INSERT OR IGNORE INTO queue (path, queued) VALUES (?, ?)",
                   (wire_name(path), now))
        self.rows[path] = now

    def done(self, path: str) -> None:
        if self.rows.pop(path, None) is None:
            return
        try:
            self._exec("DELETE FROM queue WHERE path = ?", (wire_name(path),))
        except OSError as exc:
            # The file is on the server; a row left behind only makes the next agent
            # look at the copy again (and send it only if it is dirty).
            log.warning("write-back: cannot clear %s from the journal (%s)", path,
                        exc.strerror or exc)

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


class WriteBack(Knowledge):
    """``Commit``/``Sync`` with a write-back queue; the namespace handlers keep its order.

    Comes first among :class:`agent.service.AgentService`'s bases: each handler
    here does its part of the queue and hands the request on (``super()``).
    """

    #: None: write-through (``--write-through``)
    journal: Journal | None
    upload_delay: float
    _retry_at: float  # monotonic: no background upload before (a back-off)
    _backoff: float
    _stuck: dict[str, float]  # path -> time.time() of its next try

    def _open_journal(self, write_through: bool) -> None:
        self.journal = None if write_through else Journal(self.cache.dir)
        self._retry_at = 0.0
        self._backoff = 0.0
        self._stuck = {}
        if self.journal:
            log.info("write-back: %d closed files still to upload (from before a restart)",
                     len(self.journal))

    def _close_journal(self) -> None:
        """Upload what is queued while the server answers; the rest stays in the journal."""
        j = self.journal
        if j is None:
            return
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
        for e in self.cache:
            if e.path not in j and self.cache.is_dirty(e):
                try:
                    self._queue(e.path)
                except OSError as exc:  # the journal cannot keep it: the server must, now
                    log.warning("write-back: cannot queue %s (%s): uploading it now", e.path,
                                exc.strerror or exc)
                    self._upload(e.path)
                    uploaded += 1
        if msg.wait:
            uploaded += self._drain(everything=True)
        return self._status(uploaded)

    def _queue(self, path: str) -> None:
        """Make the local copy of ``path`` durable here and queue its upload."""
        assert self.journal is not None
        fd = self.cache.open_object(path)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.cache.sync_objects_dir()  # (the copy may be new there: a create, a fetch)
        self.journal.add(path)

    def _status(self, uploaded: int) -> Synced:
        j = self.journal
        if j is None or not j:
            return Synced(uploaded=uploaded)
        size = 0
        for p in j.rows:
            e = self.cache.get(p)
            st = self.cache.local_stat(e) if e is not None else None
            size += st.st_size if st is not None else 0
        oldest = j.oldest() or time.time()
        return Synced(uploaded=uploaded, queued=len(j), queued_bytes=size,
                      oldest_ms=max(0, int((time.time() - oldest) * 1000)))

    def remove(self, msg: Remove) -> Message:
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
        if j is not None:
            src, dst = _check_path(msg.src), _check_path(msg.dst)
            # The server renames what it has: it must have what was closed under src.
            self._flush(j.under(src))
            if msg.flags & RenameFlags.EXCHANGE:
                self._flush(j.under(dst))
        reply = super().rename(msg)  # type: ignore[misc]
        if j is not None:
            for p in j.under(_check_path(msg.dst)):
                if not self._dirty(p):
                    j.done(p)  # replaced by the rename
        return reply

    def link(self, msg: Link) -> Message:
        if self.journal is not None:
            self._flush(self.journal.under(_check_path(msg.src)))
        return super().link(msg)  # type: ignore[misc]

    def setattr(self, msg: SetAttr) -> Message:
        reply = super().setattr(msg)  # type: ignore[misc]
        j = self.journal
        path = _check_path(msg.path)
        if j is not None and path in j and not self._dirty(path):
            j.done(path)  # a truncation or new times uploaded the copy
        return reply

    def _upload(self, path: str) -> Attrs:
        a = super()._upload(path)  # type: ignore[safe-super]
        j = self.journal
        if j is not None and path in j and not self._dirty(path):
            j.done(path)
            self._stuck.pop(path, None)
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
        if not j:
            return None
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        oldest, waits = self._oldest_ready()
        # Held a fifth of the bound (a file removed meanwhile is never sent), then sent
        # whenever the agent is idle; at half the bound even while requests wait.
        soonest = min(t for t in (None if oldest is None else oldest + self.upload_delay / 5,
                                  waits) if t is not None)
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
            batch: list[tuple[str, Entry, int, bytes, os.stat_result]] = []
            size = 0
            for path, _ in rows:
                if len(batch) >= _BATCH_FILES or size >= _BATCH_BYTES:
                    break
                tries[path] -= 1
                got = self._snapshot(path)
                if got is None:
                    continue
                e, st, data = got
                if data is None:  # a large file: alone
                    try:
                        sent += self._send_one(path)
                    except Unreachable:
                        raise
                    except OSError as exc:
                        failed = failed or exc
                        tries[path] = 0
                    continue
                batch.append((path, e, 0, data, st))
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

    def _snapshot(self, path: str) -> tuple[Entry, os.stat_result, bytes | None] | None:
        """The copy to upload now (its bytes when small); None: nothing to send (row done)."""
        j = self.journal
        assert j is not None
        e = self._entry(path)
        if e is None or not self.cache.is_dirty(e):
            j.done(path)
            return None
        try:
            fd = self.cache.open_object(path)
        except FileNotFoundError:
            j.done(path)
            return None
        try:
            st = os.fstat(fd)
            if st.st_size > _SMALL:
                return e, st, None
            parts = []
            off = 0
            while off < st.st_size:
                chunk = os.pread(fd, st.st_size - off, off)
                if not chunk:
                    break
                parts.append(chunk)
                off += len(chunk)
            return e, st, b"".join(parts)
        finally:
            os.close(fd)

    def _send_one(self, path: str) -> int:
        """Upload one queued file (1: sent, 0: nothing to send); OSError when it failed.

        A refusal for good drops its row; a failure the server may get over marks the
        file for a later try (:data:`_STUCK`); Unreachable is only raised.
        """
        j = self.journal
        assert j is not None
        if path not in j or not self._dirty(path):
            j.done(path)
            return 0
        try:
            self._upload(path)
        except Unreachable:
            raise
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
        return 1

    def _send_batch(self, batch: list[tuple[str, Entry, int, bytes, os.stat_result]]
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
            for k, reply in self.upstream.pipeline(
                    len(batch),
                    lambda k: UploadCommit(upload_id=ids[k], path=batch[k][0],
                                           size=len(batch[k][3]), mode=batch[k][1].attrs.mode),
                    StatReply, _WINDOW):
                path, _, _, _, st0 = batch[k]
                self._uploaded(path, reply.attrs, st0, stamp)
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

    def _uploaded(self, path: str, a: Attrs, st0: os.stat_result, stamp: object) -> None:
        """Record an upload of the copy as it was at ``st0`` (as Uploads._upload_once does)."""
        try:
            st1 = os.stat(self.cache.object_path(path))
        except FileNotFoundError:
            st1 = None
        self._void(path)
        changed = st1 is None or signature(st1) != signature(st0)
        if self.cache.get(path) is not None:
            self.cache.record(path, a, signature(st0), dirty=changed)
        self.stats["uploads"] += 1
        self._forget(_parent(path))
        self._remember(path, a, stamp)  # type: ignore[arg-type]
        assert self.journal is not None
        if not changed:
            self.journal.done(path)
            self._stuck.pop(path, None)

