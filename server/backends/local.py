"""The local-directory backend: a repository is a directory on this host.

Trusts nothing in the paths it gets: every path is resolved beneath the root
directory's fd, never through a symlink (:mod:`server.backends.beneath`), and
operations act on the final name relative to its parent directory's fd. It
trusts the server's service loop to have authenticated the request.

Writes are whole-object and atomic: uploads are staged in the server's state
directory and installed by one rename (:mod:`server.backends.staging`). No
name in the repository is reserved. A root on a read-only mount needs no state
directory: it is served for reading, and every write is EROFS. A destination
on another file system mounted below the root gets EXDEV (not supported).

A file's setuid and setgid bits are never set from the wire (dropped
silently, as a ``nosuid`` mount would ignore them): the repository is a
host directory, where such a file would run as the server's user.

Truncation (SetAttr.size) of a file up to ``atomic_truncate_max`` bytes is
atomic the same way (copy the kept prefix into a staged file, rename); a
larger file is truncated in place (ftruncate + fsync).

Sparse files keep their holes: ``data_extents`` finds a file's data with
SEEK_DATA/SEEK_HOLE, a sparse upload is staged by its extents into a file
truncated to size, and every copy made here (truncation, a rewrite in place)
copies data extents only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from typing import TypeVar

from synthfs.extents import copy_extents, data_extents
from synthfs.server.backends.base import (
    CHUNK_SIZE,
    Backend,
    Entries,
    Entry,
    Extents,
    ObjectAttrs,
    RenameFlags,
    oserror,
    split_path,
)
from synthfs.server.backends.beneath import (
    Beneath,
    attrs_from_stat,
    attrs_of,
    fsync_dir,
    kind_of,
    renameat2,
    reopen,
    version_of,
)
from synthfs.server.backends.staging import (
    SETID,
    STAGED_MAX,
    UPLOAD_IDLE_S,
    Staging,
    StateDirError,
)
from synthfs.server.statedir import default_state_dir, repo_id_of

__all__ = [
    "LocalBackend",
    "StateDirError",
    "attrs_from_stat",
    "version_of",
]

log = logging.getLogger(__name__)


def _read_only_mount(fd: int) -> bool:
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


#: Reads of a file that changes meanwhile, made again when no version was asked for.
_READ_ATTEMPTS = 5
_T = TypeVar("_T")


class LocalBackend(Backend):
    """A repository served from the local directory ``root``.

    ``state`` is the server's state directory for this root (staging and the
    commit journal): created 0700 when missing, never inside ``root``, on the
    same mount as ``root``; :func:`default_state_dir` when None. It is not
    used (nor created) when ``root`` is on a read-only mount.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state: str | os.PathLike[str] | None = None,
        use_openat2: bool | None = None,
        atomic_truncate_max: int = 64 * 1024 * 1024,
        staged_max: int = STAGED_MAX,
        upload_idle_s: float = UPLOAD_IDLE_S,
    ) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir("/proc/self/fd"):
            # Reopening an O_PATH fd (read, chmod, utimes) goes through /proc/self/fd.
            raise oserror(errno.ENOSYS, "the local backend needs /proc mounted")
        self.repo_id = repo_id_of(self.root)
        self._atomic_truncate_max = atomic_truncate_max
        self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._beneath = Beneath(self._root_fd, use_openat2)
            self.read_only = _read_only_mount(self._root_fd)
            self.state: str | None = None
            if not self.read_only:
                self.state = os.path.realpath(state if state is not None
                                              else default_state_dir(self.root))
            self._staging = Staging(self.state, self.root, self._root_fd,
                                    staged_max=staged_max, upload_idle_s=upload_idle_s)
        except BaseException:
            os.close(self._root_fd)
            raise
        log.info("local backend on %s (repo %s, %s)", self.root, self.repo_id,
                 "openat2" if self._beneath.openat2 else "O_NOFOLLOW walk")

    def __repr__(self) -> str:
        return f"LocalBackend({self.root!r})"

    def close(self) -> None:
        self._staging.close()
        if self._root_fd >= 0:
            os.close(self._root_fd)
        self._root_fd = -1

    # -- reads -------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectAttrs:
        parts = split_path(path)
        if not parts:
            return attrs_from_stat(os.fstat(self._root_fd))
        if len(parts) == 1:  # one name in the root: no walk, no extra fd
            return attrs_from_stat(os.stat(parts[0], dir_fd=self._root_fd, follow_symlinks=False))
        pfd = self._beneath.open(parts[:-1], os.O_PATH | os.O_DIRECTORY)
        try:
            return attrs_from_stat(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(pfd)

    def list(self, path: str) -> tuple[ObjectAttrs, Entries]:
        parts = split_path(path)
        fd = self._beneath.open(parts, os.O_RDONLY | os.O_DIRECTORY)
        try:
            own = attrs_from_stat(os.fstat(fd))
            entries: Entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    name = entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    kind = kind_of(st)
                    if kind is None:
                        continue  # FIFO, socket, device: not served
                    entries.append(Entry(name, attrs_of(st, kind)))
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e.name)
        return own, entries

    def _open_file(self, path: str) -> int:
        """A read-only fd of the regular file ``path`` (EISDIR, ELOOP, EACCES otherwise)."""
        pfd = self._beneath.open(split_path(path), os.O_PATH)
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise oserror(errno.EISDIR)
            if stat.S_ISLNK(st.st_mode):
                raise oserror(errno.ELOOP)
            if not stat.S_ISREG(st.st_mode):
                raise oserror(errno.EACCES, "special files are not served")
            return reopen(pfd, os.O_RDONLY | os.O_NONBLOCK)
        finally:
            os.close(pfd)

    def read(
        self, path: str, offset: int, length: int, version: str = ""
    ) -> tuple[bytes, bool, str]:
        if not 0 <= length <= CHUNK_SIZE:
            raise oserror(errno.EINVAL, "read length")

        def fill(fd: int, st: os.stat_result) -> bytes:
            return os.pread(fd, length, offset) if length and offset < st.st_size else b""

        data, st, current = self._consistent(path, version, fill)
        return data, offset + len(data) >= st.st_size, current

    def read_into(
        self, path: str, offset: int, buf: memoryview, version: str = ""
    ) -> tuple[int, bool, str]:
        """:meth:`read` straight into ``buf`` (``preadv``: no copy on the way)."""
        if not 0 <= len(buf) <= CHUNK_SIZE:
            raise oserror(errno.EINVAL, "read length")

        def fill(fd: int, st: os.stat_result) -> int:
            want = max(0, min(len(buf), st.st_size - offset))
            got = 0
            while got < want:
                n = os.preadv(fd, [buf[got:want]], offset + got)
                if n == 0:  # shortened since the fstat: the second check says so
                    break
                got += n
            return got

        got, st, current = self._consistent(path, version, fill)
        return got, offset + got >= st.st_size, current

    def _consistent(self, path: str, version: str,
                    fill: Callable[[int, os.stat_result], _T]) -> tuple[_T, os.stat_result, str]:
        """``fill(fd, st)`` on the file at ``path``, between two checks of its version.

        Bytes a writer changed during the read never go out under the version from
        before it: a read asked for a ``version`` is then ESTALE (that version is
        gone; the fetch starts again), one that named none is made again.
        """
        fd = self._open_file(path)
        try:
            for _ in range(_READ_ATTEMPTS):
                st = os.fstat(fd)
                current = version_of(st)
                if version and version != current:
                    raise oserror(errno.ESTALE, "the object changed")
                got = fill(fd, st)
                if version_of(os.fstat(fd)) == current:
                    return got, st, current
            raise oserror(errno.ESTALE, "the object kept changing while it was read")
        finally:
            os.close(fd)

    def data_extents(self, path: str, version: str = "") -> tuple[int, str, Extents]:
        fd = self._open_file(path)
        try:
            st = os.fstat(fd)
            current = version_of(st)
            if version and version != current:
                raise oserror(errno.ESTALE, "the object changed")
            return st.st_size, current, data_extents(fd, st.st_size)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EINVAL)
        pfd = self._beneath.open(parts[:-1], os.O_PATH | os.O_DIRECTORY)
        try:
            raw = os.readlink(os.fsencode(parts[-1]), dir_fd=pfd)
        finally:
            os.close(pfd)
        return os.fsdecode(raw)  # bytes that are not UTF-8 travel as they are

    # -- uploads (staged in the state directory: staging.py) ---------------------------

    def upload_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        self._staging.chunk(upload_id, offset, data)

    def upload_abort(self, upload_id: str) -> None:
        self._staging.abort(upload_id)

    def upload_commit(
        self, upload_id: str, path: str, size: int, mode: int = 0o644, exclusive: bool = False
    ) -> ObjectAttrs:
        return self._staging.commit(self._beneath, upload_id, path, size, mode, exclusive)

    def upload_commit_sparse(
        self, upload_id: str, path: str, size: int, extents: Extents, mode: int = 0o644,
        exclusive: bool = False,
    ) -> ObjectAttrs:
        return self._staging.commit(self._beneath, upload_id, path, size, mode, exclusive,
                                    extents)

    # -- namespace ---------------------------------------------------------------------

    def link(self, src: str, dst: str) -> ObjectAttrs:
        sfd, sname, _ = self._beneath.parent(src)
        try:
            st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise oserror(errno.EPERM, "hard links to directories")
            if kind_of(st) is None:
                raise oserror(errno.EACCES, "special files are not served")
            if not split_path(dst):
                raise oserror(errno.EEXIST)
            dfd, dname, _ = self._beneath.parent(dst)
            try:
                self._beneath.check_dev(dfd)
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                fsync_dir(dfd)
                return attrs_from_stat(os.stat(dname, dir_fd=dfd, follow_symlinks=False))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def mkdir(self, path: str, mode: int = 0o755) -> ObjectAttrs:
        if not split_path(path):
            raise oserror(errno.EEXIST)
        pfd, name, _ = self._beneath.parent(path)
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=pfd)
            try:
                os.fchmod(fd, mode)
                result = attrs_from_stat(os.fstat(fd))
            finally:
                os.close(fd)
            fsync_dir(pfd)
            return result
        finally:
            os.close(pfd)

    def remove(self, path: str, directory: bool = False) -> None:
        pfd, name, _ = self._beneath.parent(path)
        try:
            if directory:
                os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
            fsync_dir(pfd)
        finally:
            os.close(pfd)

    def rename(self, src: str, dst: str, flags: RenameFlags = RenameFlags.NONE) -> None:
        flags = RenameFlags.checked(flags)
        sfd, sname, _ = self._beneath.parent(src)
        try:
            dfd, dname, _ = self._beneath.parent(dst)
            try:
                renameat2(sfd, sname, dfd, dname, int(flags))
                fsync_dir(dfd)
                if not os.path.samestat(os.fstat(sfd), os.fstat(dfd)):
                    fsync_dir(sfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def symlink(self, target: str, path: str) -> ObjectAttrs:
        if not split_path(path):
            raise oserror(errno.EEXIST)
        if "\x00" in target:
            raise oserror(errno.EINVAL, "NUL in link target")
        if not target:
            raise oserror(errno.ENOENT, "empty link target")
        pfd, name, _ = self._beneath.parent(path)
        try:
            os.symlink(target, name, dir_fd=pfd)
            fsync_dir(pfd)
            return attrs_from_stat(os.stat(name, dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(pfd)

    def setattr(
        self,
        path: str,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> ObjectAttrs:
        parts = split_path(path)
        if not parts:
            if size is not None:
                raise oserror(errno.EISDIR)
            fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)
        else:
            fd = self._beneath.open(parts, os.O_PATH)
        try:
            st = os.fstat(fd)
            if kind_of(st) is None:
                raise oserror(errno.EACCES, "special files are not served")
            if size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise oserror(errno.EISDIR)
                if stat.S_ISLNK(st.st_mode):
                    raise oserror(errno.ELOOP, "the server does not write through symlinks")
                if size != st.st_size:
                    limit = self._atomic_truncate_max
                    if st.st_nlink == 1 and st.st_size <= limit and size <= limit:
                        self._truncate_atomic(path, fd, st, size)
                        # The path now names the new inode. Open it before closing the
                        # old fd: this block owns exactly one fd number at any time, so
                        # a failed reopen (a rename meanwhile) never leaves ``fd`` naming
                        # a number that was closed (and maybe reused by another thread).
                        new_fd = self._beneath.open(parts, os.O_PATH)
                        os.close(fd)
                        fd = new_fd
                    else:
                        wfd = reopen(fd, os.O_WRONLY | os.O_NONBLOCK)
                        try:
                            os.ftruncate(wfd, size)
                            os.fsync(wfd)
                        finally:
                            os.close(wfd)
            if mode is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise oserror(errno.EOPNOTSUPP, "symlinks have no mode on Linux")
                if stat.S_ISREG(st.st_mode):
                    mode &= ~SETID
                os.chmod(f"/proc/self/fd/{fd}", mode)
            if atime_ns is not None or mtime_ns is not None:
                cur = os.fstat(fd)
                times = (cur.st_atime_ns if atime_ns is None else atime_ns,
                         cur.st_mtime_ns if mtime_ns is None else mtime_ns)
                if stat.S_ISLNK(st.st_mode):
                    pfd, name, _ = self._beneath.parent(path)
                    try:
                        os.utime(name, ns=times, dir_fd=pfd, follow_symlinks=False)
                    finally:
                        os.close(pfd)
                else:
                    os.utime(f"/proc/self/fd/{fd}", ns=times)
            return attrs_from_stat(os.fstat(fd))
        finally:
            os.close(fd)

    def _truncate_atomic(self, path: str, fd: int, st: os.stat_result, size: int) -> None:
        """Install a copy of the first ``size`` bytes (zero-extended) in one rename."""
        pfd, name, _ = self._beneath.parent(path)
        try:
            self._beneath.check_dev(pfd)
            staged = self._staging.staged_name("truncate-" + os.urandom(8).hex())
            out = self._staging.new_staged(staged)
            try:
                src = reopen(fd, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    # The kept prefix by its data extents: its holes stay holes.
                    copy_extents(src, out, data_extents(src, min(size, st.st_size)),
                                 CHUNK_SIZE)
                finally:
                    os.close(src)
                os.ftruncate(out, size)
                os.fchmod(out, stat.S_IMODE(st.st_mode))
                os.fsync(out)
                os.rename(staged, name, src_dir_fd=self._staging.fd, dst_dir_fd=pfd)
                fsync_dir(pfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(staged, dir_fd=self._staging.fd)
                raise
            finally:
                os.close(out)
        finally:
            os.close(pfd)
