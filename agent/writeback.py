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
* The journal survives SIGKILL and restarts: the next agent on this cache
  uploads every row it finds before the rows are due again.
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    path TEXT PRIMARY KEY,    -- repository path (a BLOB when it is not UTF-8)
    queued REAL NOT NULL      -- time.time() of the first close not uploaded yet
)
"""


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
            name_from_wire(p): q for p, q in self._db.execute("SELECT path, queued FROM queue")
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
        self._db.execute("INSERT OR IGNORE INTO queue (path, queued) VALUES (?, ?)",
                         (wire_name(path), now))
        self.rows[path] = now

    def done(self, path: str) -> None:
        if self.rows.pop(path, None) is not None:
            self._db.execute("DELETE FROM queue WHERE path = ?", (wire_name(path),))

    def under(self, path: str) -> list[str]:
        """Queued paths at or below ``path``."""
        prefix = path.rstrip("/") + "/"
        return [p for p in self.rows if p == path or p.startswith(prefix)]

    def oldest(self) -> float | None:
        return min(self.rows.values()) if self.rows else None


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

    def _open_journal(self, write_through: bool) -> None:
        self.journal = None if write_through else Journal(self.cache.dir)
        self._retry_at = 0.0
        self._backoff = 0.0
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
            fd = self.cache.open_object(path)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            j.add(path)
        except (OSError, sqlite3.Error) as exc:
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
        for e in self.cache:
            if e.path not in j and self.cache.is_dirty(e):
                fd = self.cache.open_object(e.path)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                j.add(e.path)
        uploaded = self._drain(everything=True) if msg.wait else 0
        return self._status(uploaded)

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
        j = self.journal
        if j is not None:
            path = _check_path(msg.path)
            if not msg.directory and path in j:
                e = self.cache.get(path)
                if e is None or e.attrs.nlink <= 1:
                    j.done(path)  # never uploaded: create -> write -> unlink sends no content
        reply = super().remove(msg)  # type: ignore[misc]
        if j is not None:
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
        return a

    # -- the queue --------------------------------------------------------------------

    def _dirty(self, path: str) -> bool:
        e = self.cache.get(path)
        return e is not None and self.cache.is_dirty(e)

    def writeback_due(self) -> float | None:
        """Seconds until queued uploads should start (0: now); None: nothing queued."""
        j = self.journal
        if not j:
            return None
        now = time.monotonic()
        if now < self._retry_at:
            return self._retry_at - now
        oldest = j.oldest()
        assert oldest is not None
        # Held a fifth of the bound (a file removed meanwhile is never sent), then sent
        # whenever the agent is idle; at half the bound even while requests wait.
        return max(0.0, oldest + self.upload_delay / 5 - time.time())

    def writeback_urgent(self) -> bool:
        """Queued uploads are half-way to their bound: send them even while requests wait."""
        j = self.journal
        if not j or time.monotonic() < self._retry_at:
            return False
        oldest = j.oldest()
        return oldest is not None and time.time() - oldest >= self.upload_delay / 2

    def background(self) -> None:
        """Send the uploads that are due (one batch); back off while the server cannot take them."""
        if self.writeback_due() != 0.0:
            return
        try:
            self._drain(everything=False)
        except OSError as exc:
            self._backoff = min(_BACKOFF_MAX, max(0.5, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            if not isinstance(exc, Unreachable):  # (Upstream logs an outage once)
                log.warning("write-back: %d closed files wait for the server (%s); "
                            "again in %.1f s", len(self.journal or ()), exc.strerror or exc,
                            self._backoff)
            return
        if self._backoff:
            log.info("write-back: the server takes uploads again")
        self._backoff = 0.0

    def _flush(self, paths: list[str]) -> None:
        """Upload ``paths`` now (before a namespace change that depends on them)."""
        for p in paths:
            self._send_one(p, strict=True)

    def _drain(self, *, everything: bool) -> int:
        """Upload queued files, oldest first: one batch, or (``everything``) all of them.

        OSError when the server cannot take them (they stay queued).
        """
        j = self.journal
        assert j is not None
        sent = 0
        # What is queued now, each at most twice (a copy a guest keeps writing stays
        # queued for later rather than holding this loop).
        tries = dict.fromkeys(j.rows, 2)
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
                if data is None:
                    sent += self._send_one(path, strict=everything)  # a large file: alone
                    continue
                batch.append((path, e, 0, data, st))
                size += len(data)
            if batch:
                sent += self._send_batch(batch)
            if not everything:
                break
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

    def _send_one(self, path: str, *, strict: bool) -> int:
        """Upload one queued file; a refusal for good drops its row (``strict``: raises)."""
        j = self.journal
        assert j is not None
        if path not in j or not self._dirty(path):
            if j is not None:
                j.done(path)
            return 0
        try:
            self._upload(path)
        except OSError as exc:
            if isinstance(exc, Unreachable) or exc.errno in _TRANSIENT:
                raise
            self._refused(path, exc)
            if strict:
                raise
            return 0
        return 1

    def _refused(self, path: str, exc: OSError) -> None:
        assert self.journal is not None
        log.error("write-back: the server refused %s for good (%s): its closed content "
                  "stays only in this agent's cache", path, exc.strerror or exc)
        self.journal.done(path)

    def _send_batch(self, batch: list[tuple[str, Entry, int, bytes, os.stat_result]]) -> int:
        """Small files together: every chunk pipelined, then every commit pipelined."""
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
        except OSError as exc:
            if isinstance(exc, Unreachable):
                raise
            # One file the server refused (or a restart that lost staged chunks):
            # the rest one by one, each with its own verdict.
            log.debug("write-back: batch stopped at %d (%s): one by one", done, exc)
            sent = done
            for path, *_ in batch[done:]:
                sent += self._send_one(path, strict=False)
            return sent
        return done

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

