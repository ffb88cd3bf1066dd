"""Paths resolved beneath one root directory, never through a symlink.

The local backend's confinement. Trusts nothing in the paths it gets (they
come from the wire, checked only by :func:`split_path`). The root directory is
opened once as a file descriptor and every path is resolved *beneath* it with
``openat2`` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS),
or, where ``openat2`` is missing, by a component walk with ``O_NOFOLLOW`` on
each step. A symlink inside the repository is an object (stat, readlink and
list show it), and a path that goes *through* one fails with ELOOP or
ENOTDIR, so a symlink pointing outside the root cannot be used to reach
anything outside it. Callers then act on the final name relative to its
parent directory's fd (the helpers here), never on a full host path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat

from synthfs.linux import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    libc,
    openat2,
    openat2_available,
)
from synthfs.server.backends.base import Kind, ObjectAttrs, oserror, split_path

__all__ = [
    "Beneath",
    "attrs_from_stat",
    "attrs_of",
    "fsync_dir",
    "kind_of",
    "renameat2",
    "reopen",
    "version_of",
]

_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(platform.machine())
_CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


def _openat2_beneath(dirfd: int, path: str, flags: int) -> int:
    for _ in range(16):  # EAGAIN: a concurrent rename raced the lookup; retry
        try:
            return openat2(dirfd, path, flags, _CONFINED)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise oserror(exc.errno or errno.EIO, path) from None
    raise oserror(errno.EAGAIN, path)


class Beneath:
    """Opens beneath ``root_fd`` (an O_PATH directory fd the caller owns and closes).

    ``use_openat2``: None asks the kernel whether it has ``openat2``; False
    forces the ``O_NOFOLLOW`` walk (tests run both).
    """

    def __init__(self, root_fd: int, use_openat2: bool | None = None) -> None:
        self.root_fd = root_fd
        self.root_dev = os.fstat(root_fd).st_dev
        self.openat2 = openat2_available() if use_openat2 is None else use_openat2

    def open(self, parts: tuple[str, ...], flags: int) -> int:
        """Open ``parts`` beneath the root, following no symlink anywhere."""
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW
        if not parts:
            return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=self.root_fd)
        if self.openat2:
            return _openat2_beneath(self.root_fd, "/".join(parts), flags)
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.open(parts[-1], flags, dir_fd=fd)
        finally:
            os.close(fd)

    def parent(self, path: str) -> tuple[int, str, tuple[str, ...]]:
        """(fd of the parent directory (O_PATH), final name, all parts); root is EBUSY."""
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EBUSY, "the repository root")
        return self.open(parts[:-1], os.O_PATH | os.O_DIRECTORY), parts[-1], parts

    def check_dev(self, dir_fd: int) -> None:
        """EXDEV when ``dir_fd`` is on another file system mounted below the root."""
        if os.fstat(dir_fd).st_dev != self.root_dev:
            raise oserror(errno.EXDEV, "another file system below the root")


# -- dirfd-relative helpers -------------------------------------------------------------


def fsync_dir(dir_fd: int) -> None:
    """fsync the directory ``dir_fd`` names (an O_PATH fd is reopened for it)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reopen(fd: int, flags: int) -> int:
    """Reopen an O_PATH fd with real access (same inode, no path lookup)."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def renameat2(olddir: int, old: str, newdir: int, new: str, flags: int) -> None:
    """renameat2(2) of ``old`` in ``olddir`` to ``new`` in ``newdir`` (flags: the kernel's)."""
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddir, dst_dir_fd=newdir)
        return
    fn = getattr(libc, "renameat2", None)
    args = (ctypes.c_int(olddir), ctypes.c_char_p(os.fsencode(old)),
            ctypes.c_int(newdir), ctypes.c_char_p(os.fsencode(new)), ctypes.c_uint(flags))
    if fn is not None:
        rc = fn(*args)
    elif _SYS_RENAMEAT2 is not None:
        rc = libc.syscall(ctypes.c_long(_SYS_RENAMEAT2), *args)
    else:
        raise oserror(errno.EINVAL, "renameat2 flags are not supported here")
    if rc != 0:
        raise oserror(ctypes.get_errno(), f"{old} -> {new}")


# -- attributes ------------------------------------------------------------------------


def version_of(st: os.stat_result) -> str:
    """The etag of an object: inode, mtime, ctime and size (any content change moves one)."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}-{st.st_size:x}"


def kind_of(st: os.stat_result) -> Kind | None:
    """The kind of a stat result; None for a FIFO, socket or device (not served)."""
    if stat.S_ISREG(st.st_mode):
        return Kind.FILE
    if stat.S_ISDIR(st.st_mode):
        return Kind.DIR
    if stat.S_ISLNK(st.st_mode):
        return Kind.SYMLINK
    return None


def attrs_of(st: os.stat_result, kind: Kind) -> ObjectAttrs:
    """The attributes of a stat result of a known kind."""
    return ObjectAttrs(kind, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                       st.st_ctime_ns, st.st_ino, st.st_nlink, version_of(st), st.st_blocks)


def attrs_from_stat(st: os.stat_result) -> ObjectAttrs:
    """Attributes of a stat result; a FIFO, socket or device is EACCES (not served)."""
    kind = kind_of(st)
    if kind is None:
        raise oserror(errno.EACCES, "special files are not served")
    return attrs_of(st, kind)
