"""Uploads staged in the server's state directory, and their atomic commit.

The local backend's write path. The protocol sends upload chunks before the
destination path (UploadChunk has no path), so chunks are staged in the
server's *state directory*: never inside the served tree (the repository is
the user's, and shows exactly what the programs wrote), always on the same
mount as the root, so that the final rename is atomic (checked when it is
opened: :class:`StateDirError` names both paths). Chunks are written at their
offsets into a staged file that starts empty, so what no chunk covered stays a
hole: a sparse upload (its data extents only) is truncated to its size at
commit and keeps its holes. Commit fsyncs the staged
file, renames it over the destination (a new inode, so a new version) and
fsyncs the destination directory. A crash at any point leaves the old or the
new version. The state directory is emptied when it is opened, except a
journal of recent commits that keeps a commit resent after a restart
idempotent. Uncommitted uploads hold at most ``staged_max`` bytes together
(4 GiB; a chunk beyond gets ENOSPC) and one idle for ``upload_idle_s`` (10
min) is dropped at the next upload request.

Trusts nothing in upload ids, offsets and sizes (they come from the wire);
trusts its caller for the destination: a parent directory fd resolved beneath
the root (:mod:`server.backends.beneath`) and a final name.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time

import attrs as attrs_mod

from synthfs.extents import copy_extents, data_extents, received, spans_whole
from synthfs.server.backends.base import (
    CHUNK_SIZE,
    MAX_EXTENTS,
    Extents,
    Kind,
    ObjectAttrs,
    oserror,
    split_path,
)
from synthfs.server.backends.beneath import Beneath, attrs_from_stat, fsync_dir
from synthfs.stamps import stamped_now

__all__ = ["SETID", "Staging", "StateDirError"]

log = logging.getLogger(__name__)

_JOURNAL = "committed.journal"
_JOURNAL_READ_MAX = 4 * 1024 * 1024
UPLOAD_IDLE_S = 600.0
#: Bytes all uncommitted uploads may hold in staging together (a key holder that never
#: commits fills no more than this); a chunk beyond it gets ENOSPC.
STAGED_MAX = 4 * 1024**3
#: Idle uploads are looked for at most this often (on the next upload request).
_EXPIRE_EVERY_S = 10.0
_COMMITTED_MEMORY = 10_000
_MAX_UPLOAD_SIZE = 2**50
#: Disjoint ranges one upload may hold (its extents, and chunks a pipeline sends out of
#: order): a chunk that would make more is EINVAL, so that no upload costs more to track.
_MAX_RANGES = 2 * MAX_EXTENTS
#: Mode bits a wire request may not set on a file: the repository is a host directory,
#: and a setuid or setgid file there would run as the server's user (often root).
SETID = stat.S_ISUID | stat.S_ISGID


class StateDirError(OSError):
    """The state directory cannot hold this root's staging (the message says why and how)."""


def _mount_id(fd: int) -> int | None:
    """The mount a file descriptor is on (``mnt_id`` of its fdinfo), None if unknown."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@attrs_mod.define
class _Upload:
    name: str
    ranges: list[tuple[int, int]] = attrs_mod.field(factory=list)
    last_used: float = attrs_mod.field(factory=time.monotonic)
    lock: threading.Lock = attrs_mod.field(factory=threading.Lock)
    done: bool = False
    staged: int = 0  # bytes written to its staged file (counted against the bound)

    def add(self, start: int, end: int) -> None:
        self.ranges = received(self.ranges, start, end)

    def covers(self, size: int) -> bool:
        return spans_whole(self.ranges, size)

    def covers_exactly(self, extents: Extents) -> bool:
        """Whether the staged ranges are ``extents`` (sorted, disjoint), no more, no less."""
        ranges = [(a, b) for a, b in self.ranges if a != b]
        merged: list[tuple[int, int]] = []
        for off, length in extents:
            if merged and off == merged[-1][1]:
                merged[-1] = (merged[-1][0], off + length)
            else:
                merged.append((off, off + length))
        return ranges == merged


def _journal_attrs(fields: list[object]) -> ObjectAttrs:
    """The attributes of a journal line's fields (ValueError or TypeError if they are not)."""
    if not 6 <= len(fields) <= 9:
        raise ValueError("a journal line's attributes")
    defaults: list[object] = [1, "", 0]  # nlink, version, blocks
    kind, size, mode, mtime_ns, ctime_ns, ino, nlink, version, blocks = [
        *fields, *defaults[len(fields) - 6:]]
    ints = [v for v in (size, mode, mtime_ns, ctime_ns, ino, nlink, blocks) if type(v) is int]
    if not isinstance(kind, str) or not isinstance(version, str) or len(ints) != 7:
        raise TypeError("a journal line's attributes")
    size_, mode_, mtime_, ctime_, ino_, nlink_, blocks_ = ints
    return ObjectAttrs(Kind(kind), size_, mode_, mtime_, ctime_, ino_, nlink_, version, blocks_)


class Staging:
    """The staging area of one served root, in the state directory ``state``.

    ``state`` is made 0700 when missing; refused (:class:`StateDirError`) when
    inside ``root`` or on another mount than ``root_fd``. None: a root on a
    read-only mount, which stages nothing (every write is EROFS). Thread-safe.
    """

    def __init__(self, state: str | None, root: str, root_fd: int, *,
                 staged_max: int = STAGED_MAX, upload_idle_s: float = UPLOAD_IDLE_S) -> None:
        self.state = state
        self._staged_max = staged_max
        self._staged = 0  # bytes held by uncommitted uploads, under self._lock
        self._upload_idle_s = upload_idle_s
        self._next_expiry = 0.0
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        self._committed: collections.OrderedDict[str, tuple[str, ObjectAttrs]] = (
            collections.OrderedDict())
        self.fd = self._journal_fd = -1
        if state is None:
            return
        try:
            self.fd = self._open(state, root, root_fd)
            self._clean()
            self._journal_fd = self._load_journal()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self._journal_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self.fd = -1

    @staticmethod
    def _open(state: str, root: str, root_fd: int) -> int:
        """Open (make) the state directory; refuse one the staging cannot use.

        Refused: a directory inside the served tree (it would show there), and
        one on another mount than the root (rename(2) would say EXDEV, so no
        commit could be atomic).
        """
        if state == root or state.startswith(root.rstrip("/") + "/"):
            raise StateDirError(
                errno.EINVAL,
                f"the state directory {state} is inside the served directory {root}: "
                "choose one outside it with --state DIR")
        made = not os.path.lexists(state)
        old = os.umask(0o077)
        try:
            os.makedirs(state, 0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                exc.errno or errno.EIO,
                f"cannot make the state directory {state} ({exc.strerror}): "
                "choose another with --state DIR") from None
        finally:
            os.umask(old)
        fd = os.open(state, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        same = st.st_dev == os.fstat(root_fd).st_dev and _mount_id(fd) == _mount_id(root_fd)
        if not same:
            os.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(state)
            raise StateDirError(
                errno.EXDEV,
                f"the state directory {state} is not on the same mount as the served "
                f"directory {root}, so uploads could not be renamed into place "
                "atomically: pass --state DIR with a directory on the same file system "
                "(and mount) as the root, outside it" + (
                    f" ({root} is a mount point, so there is none: serve a directory "
                    "inside it, or mount it read-only to serve it for reading)"
                    if os.path.ismount(root) else ""))
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise StateDirError(errno.EPERM, f"the state directory {state} belongs to another "
                                "user: choose another with --state DIR")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # staged uploads are repository data
        return fd

    def _clean(self) -> None:
        """Remove every staged file left by a previous run (crash or kill)."""
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            names = os.listdir(dfd)
        finally:
            os.close(dfd)
        for name in names:
            if name == _JOURNAL:
                continue
            try:
                os.unlink(name, dir_fd=self.fd)
                log.info("removed stale staged file %s", name)
            except OSError as exc:
                log.warning("cannot remove stale staged entry %s: %s", name, exc.strerror)

    # -- the journal -------------------------------------------------------------------
    def _load_journal(self) -> int:
        """Reload the ids of recent commits, so a commit resent after a restart is idempotent.

        The journal is ``STATE/committed.journal``: one line per commit,
        ``staged-name <TAB> JSON [path, attrs...]``, appended without fsync (a
        lost line only turns a resent commit into EIO: the agent uploads again).
        At start-up the newest ``_COMMITTED_MEMORY`` lines are kept.
        """
        lines: list[bytes] = []
        try:
            fd = os.open(_JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except FileNotFoundError:
            pass
        else:
            try:
                size = os.fstat(fd).st_size
                start = max(0, size - _JOURNAL_READ_MAX)
                lines = os.pread(fd, size - start, start).split(b"\n")
                if start:
                    lines = lines[1:]  # a partial first line
            finally:
                os.close(fd)
        for line in lines[-_COMMITTED_MEMORY:]:
            try:
                key, raw = line.decode().split("\t", 1)
                path, *fields = json.loads(raw)
                self._committed[key] = (path, _journal_attrs(fields))
            except (ValueError, TypeError):
                continue  # a torn last line, or garbage: ignore it
        tmp = _JOURNAL + ".new"
        text = b"".join(self._journal_line(k, p, a) for k, (p, a) in self._committed.items())
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
            try:
                if os.write(out, text) != len(text):
                    raise oserror(errno.ENOSPC, "short write")
            finally:
                os.close(out)
            os.rename(tmp, _JOURNAL, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            # A full disk must not stop the server from serving what it holds: keep
            # the journal uncompacted (it is read tolerantly), or go without one.
            log.warning("commit journal not rewritten: %s", exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
        try:
            return os.open(_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        except OSError as exc:
            log.warning("no commit journal: %s", exc.strerror)
            return -1

    @staticmethod
    def _journal_line(key: str, path: str, a: ObjectAttrs) -> bytes:
        fields = [path, a.kind.value, a.size, a.mode, a.mtime_ns, a.ctime_ns, a.ino, a.nlink,
                  a.version, a.blocks]
        return f"{key}\t{json.dumps(fields)}\n".encode()

    def _remember_commit(self, key: str, path: str, result: ObjectAttrs) -> None:
        """Under self._lock: remember a commit in memory and in the journal."""
        self._committed[key] = (path, result)
        while len(self._committed) > _COMMITTED_MEMORY:
            self._committed.popitem(last=False)
        try:
            os.write(self._journal_fd, self._journal_line(key, path, result))
        except OSError as exc:
            log.warning("commit journal: %s", exc.strerror)

    def _resent_commit(self, key: str, path: str) -> ObjectAttrs:
        """Under self._lock: the answer to a commit of an upload already committed.

        A resend of the same commit gets the same answer; a commit naming another
        path gets an error, not the other path's attributes (nothing was written).
        """
        done_path, result = self._committed[key]
        if split_path(done_path) != split_path(path):
            raise oserror(errno.EEXIST, "this upload was committed to another path")
        return result

    @staticmethod
    def staged_name(upload_id: str) -> str:
        return "up-" + hashlib.sha256(upload_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def new_staged(self, name: str) -> int:
        if self.fd < 0:
            raise oserror(errno.EROFS, "the repository is on a read-only mount")
        return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600, dir_fd=self.fd)

    # -- uploads -----------------------------------------------------------------------

    def _expire_uploads(self) -> None:
        """Under self._lock: drop uploads idle for ``upload_idle_s`` (every 10 s at most)."""
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + min(_EXPIRE_EVERY_S, self._upload_idle_s)
        for uid, up in list(self._uploads.items()):
            if now - up.last_used > self._upload_idle_s and not up.lock.locked():
                del self._uploads[uid]
                self._staged -= up.staged
                up.done = True
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(up.name, dir_fd=self.fd)
                log.info("expired idle upload %s", up.name)

    def _release(self, up: _Upload) -> None:
        """Under self._lock: ``up`` left staging (committed, aborted)."""
        self._staged -= up.staged
        up.staged = 0

    def _get_upload(self, upload_id: str, create: bool) -> _Upload | None:
        with self._lock:
            self._expire_uploads()  # on every upload request: idle ones go within 10 s
            up = self._uploads.get(upload_id)
            if up is None and create:
                if self.fd < 0:
                    raise oserror(errno.EROFS, "the repository is on a read-only mount")
                name = self.staged_name(upload_id)
                if name in self._committed:
                    return None  # committed meanwhile: nothing to stage
                with contextlib.suppress(FileNotFoundError):  # left by an aborted run
                    os.unlink(name, dir_fd=self.fd)
                os.close(self.new_staged(name))
                up = self._uploads[upload_id] = _Upload(name=name)
            return up

    def chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        """Stage ``data`` at ``offset`` of upload ``upload_id`` (Backend.upload_chunk)."""
        if len(data) > CHUNK_SIZE:
            raise oserror(errno.EMSGSIZE)
        if offset + len(data) > _MAX_UPLOAD_SIZE:
            raise oserror(errno.EFBIG)
        up = self._get_upload(upload_id, create=True)
        if up is None:
            return  # a resend after the commit: nothing to do
        with up.lock:
            if up.done:
                return
            with self._lock:
                if self._staged + len(data) > self._staged_max:
                    raise oserror(errno.ENOSPC, "the server's staging area is full "
                                  "(uncommitted uploads)")
                self._staged += len(data)
                up.staged += len(data)
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(up.name, flags, dir_fd=self.fd)
            try:
                view = memoryview(data)
                pos = 0
                while pos < len(view):
                    pos += os.pwrite(fd, view[pos:], offset + pos)
            finally:
                os.close(fd)
            up.add(offset, offset + len(data))
            up.last_used = time.monotonic()
            if len(up.ranges) > _MAX_RANGES:
                raise oserror(errno.EINVAL, f"an upload of more than {_MAX_RANGES} separate "
                              "ranges (a sparse upload names at most "
                              f"{MAX_EXTENTS} data extents)")

    def abort(self, upload_id: str) -> None:
        """Forget upload ``upload_id`` (Backend.upload_abort)."""
        with self._lock:
            up = self._uploads.pop(upload_id, None)
            if up is not None:
                self._release(up)
        if up is None:
            return
        with up.lock:
            up.done = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(up.name, dir_fd=self.fd)

    def commit(self, beneath: Beneath, upload_id: str, path: str, size: int, mode: int = 0o644,
               exclusive: bool = False, extents: Extents | None = None) -> ObjectAttrs:
        """Install upload ``upload_id`` as ``path`` beneath the root (Backend.upload_commit).

        ``extents``: the chunks covered exactly these, the rest of ``size`` is holes
        (Backend.upload_commit_sparse); None: they covered ``[0, size)``.
        """
        key = self.staged_name(upload_id)
        with self._lock:
            if key in self._committed:
                return self._resent_commit(key, path)
        pfd, name, _parts = beneath.parent(path)
        try:
            beneath.check_dev(pfd)
            up = self._get_upload(upload_id, create=size == 0 or extents == [])
            if up is None:
                with self._lock:
                    if key in self._committed:  # a concurrent resend committed it
                        return self._resent_commit(key, path)
                raise oserror(errno.EIO, "unknown upload (nothing staged)")
            with up.lock:
                with self._lock:
                    if key in self._committed:
                        return self._resent_commit(key, path)
                if extents is None and not up.covers(size):
                    raise oserror(errno.EIO, f"upload does not match size {size}")
                if extents is not None and (not up.covers_exactly(extents)
                                            or any(o + n > size for o, n in extents)):
                    raise oserror(errno.EIO, "the staged chunks are not the upload's "
                                  "data extents")
                result: ObjectAttrs | None = None
                fd = os.open(up.name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self.fd)
                try:
                    if extents is not None and os.fstat(fd).st_size <= size:
                        os.ftruncate(fd, size)  # a trailing hole: only the size grows
                    if os.fstat(fd).st_size != size:
                        raise oserror(errno.EIO, f"staged size is not {size}")
                    old: os.stat_result | None
                    try:
                        old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    except FileNotFoundError:
                        old = None
                        new_mode = mode & ~SETID
                    else:
                        if exclusive:
                            raise oserror(errno.EEXIST)
                        if stat.S_ISDIR(old.st_mode):
                            raise oserror(errno.EISDIR)
                        if stat.S_ISLNK(old.st_mode):
                            raise oserror(errno.ELOOP, "the server does not write through symlinks")
                        new_mode = stat.S_IMODE(old.st_mode)
                    os.fchmod(fd, new_mode)
                    if exclusive:  # before the name appears: see protocol create_stamp
                        st = os.fstat(fd)
                        os.utime(fd, ns=(st.st_atime_ns,
                                         stamped_now(upload_id, time.time_ns())))
                    os.fsync(fd)
                    if not exclusive and old is not None and old.st_nlink > 1:
                        # A file of several names: rewrite its one inode in place (a
                        # rename would give this name a new file and split the names).
                        result = self._rewrite_in_place(pfd, name, fd, size)
                        os.unlink(up.name, dir_fd=self.fd)
                    elif exclusive:
                        # link(2) fails (EEXIST) on a name that appeared since the
                        # stat: the exclusive create never replaces anything.
                        os.link(up.name, name, src_dir_fd=self.fd, dst_dir_fd=pfd,
                                follow_symlinks=False)
                        os.unlink(up.name, dir_fd=self.fd)
                    else:
                        os.rename(up.name, name, src_dir_fd=self.fd, dst_dir_fd=pfd)
                    if result is None:
                        fsync_dir(pfd)
                        result = attrs_from_stat(os.fstat(fd))
                finally:
                    os.close(fd)
                up.done = True
                with self._lock:
                    self._uploads.pop(upload_id, None)
                    self._release(up)
                    self._remember_commit(key, path, result)
                return result
        except OSError as exc:
            if size == 0 or (exclusive and exc.errno == errno.EEXIST):
                # Nothing to keep: an empty upload is staged by its commit alone, and an
                # exclusive create that found its name taken never commits. No abort may
                # follow (an agent takes the EEXIST of a create it made before a failover
                # as done), so the staged file goes now, not after UPLOAD_IDLE_S.
                self.abort(upload_id)
            raise
        finally:
            os.close(pfd)

    def _rewrite_in_place(self, pfd: int, name: str, src: int, size: int) -> ObjectAttrs:
        """Copy ``size`` bytes of ``src`` over the regular file ``name`` (same inode).

        A sparse ``src`` is copied by its data extents into ``name`` emptied first,
        so its holes stay holes there too.
        """
        out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                      | os.O_NOCTTY, dir_fd=pfd)
        try:
            if not stat.S_ISREG(os.fstat(out).st_mode):
                raise oserror(errno.EACCES, "special files are not served")
            extents = data_extents(src, size)
            if extents != [(0, size)]:
                os.ftruncate(out, 0)
            copy_extents(src, out, extents, CHUNK_SIZE)
            os.ftruncate(out, size)
            os.fsync(out)
            return attrs_from_stat(os.fstat(out))
        finally:
            os.close(out)

