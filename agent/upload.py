"""Uploads: ``Commit``, ``Sync``, and uploading a file's other names first.

Role: send a changed local copy to the server (pipelined ``UploadChunk``
requests, then one ``UploadCommit``), record the version it became, and
abort the staged upload on any failure. A sparse copy sends its data extents
only (SEEK_DATA/SEEK_HOLE, :mod:`synthfs.extents`) and names them in the
commit, so its holes stay holes on the server and cost no upload time.

Trusts: the local copy as what the guest wrote (a write during the upload
leaves it dirty, for the next one); the server to commit a staged upload
atomically or not at all, and to forget staged chunks when it restarts (the
commit then fails with EIO and the upload is made once again).

Semantics (the interposer depends on them):

* ``Commit`` uploads a changed local copy; a clean one is answered at once.
* ``Sync`` uploads every dirty copy.
* A file of several names (hard links) has one local copy per name: before
  a ``Stat`` or an ``Open`` of one name answers, what was written through
  the others goes to the server (:meth:`Uploads._other_names_first`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets

from synthfs.agent.cache import signature
from synthfs.agent.materialise import PIPELINE_WINDOW
from synthfs.agent.metadata import Knowledge, _check_path, _parent
from synthfs.extents import coalesce, data_extents, flatten, pieces
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Attrs,
    Commit,
    Committed,
    Done,
    FileKind,
    Message,
    StatReply,
    Sync,
    Synced,
    UploadAbort,
    UploadChunk,
    UploadCommit,
)

__all__ = ["Changed", "Uploads"]

log = logging.getLogger(__name__)


class Changed(OSError):
    """A file changed while it was being uploaded (a guest wrote it): nothing was committed."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EAGAIN, f"{path} changed during its upload")


class Uploads(Knowledge):
    """Uploads of local copies, and the handlers that ask for them."""

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
        # Below the verified objects directory, never through a symlink planted there.
        with open(self.cache.open_object(path), "rb", buffering=0) as f:
            a, st0, stamp = self._send_file(path, f.fileno(), e.attrs.mode)
        st1 = os.stat(obj)
        # If a guest wrote during the upload, the copy stays dirty (recorded = before).
        self._void(path)
        self.cache.record(path, a, signature(st0), dirty=signature(st0) != signature(st1))
        self._created.pop(path, None)  # (created here: the server has it now)
        self.stats["uploads"] += 1
        self._listing_changed(_parent(path))
        self._remember(path, a, stamp)
        return a

    def _send_file(self, path: str, fileno: int, mode: int, *, steady: bool = False
                   ) -> tuple[Attrs, os.stat_result, tuple[int, int] | None]:
        """Upload the file open on ``fileno`` as ``path``: (its new attrs, its stat when
        read, the stamp). ``steady``: a file that changed while it was read is not
        committed (the staged upload is aborted; :class:`Changed`)."""
        upload_id = secrets.token_hex(16)
        st0 = os.fstat(fileno)
        size = st0.st_size
        # Only the data extents travel: the holes of a sparse copy stay holes.
        extents = coalesce(data_extents(fileno, size))
        sparse = extents != [(0, size)] and size > 0
        parts = list(pieces(extents, CHUNK_SIZE))

        def chunk(i: int) -> Message:
            off, n = parts[i]
            return UploadChunk(upload_id=upload_id, offset=off, data=os.pread(fileno, n, off))

        try:
            for _ in self.upstream.pipeline(len(parts), chunk, Done, PIPELINE_WINDOW):
                pass
            if steady and signature(os.fstat(fileno)) != signature(st0):
                raise Changed(path)
            stamp = self._stamp()
            a = self.upstream.call(
                UploadCommit(upload_id=upload_id, path=path, size=size, mode=mode,
                             extents=flatten(extents) if sparse else None),
                StatReply,
            ).attrs
        except BaseException:
            with contextlib.suppress(OSError):
                self.upstream.call(UploadAbort(upload_id=upload_id), Done)
            raise
        log.debug("uploaded %s: %d bytes (%d of data), version %s", path, size,
                  sum(n for _, n in extents), a.version)
        return a, st0, stamp

    def sync(self, msg: Sync) -> Message:
        n = 0
        for e in self.cache:
            if self.cache.is_dirty(e):
                self._upload(e.path)
                n += 1
        return Synced(uploaded=n)
