"""x86_64 Linux ABI constants and struct packing the handlers need.

Pure: builds the bytes of ``struct stat``, ``struct statx``, ``linux_dirent64``
and friends from synthetic attributes. ``struct open_how``, the RESOLVE_* flags
and the openat2 binding are :mod:`synthfs.linux`'s, re-exported here.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat as st
import struct
from collections.abc import Collection

from synthfs.interposer import binfmt

# Re-exported for the handlers (``abi.RESOLVE_*``, ``abi.OPEN_HOW``): one binding, synthfs.linux's.
from synthfs.linux import NR_OPENAT2 as NR_OPENAT2
from synthfs.linux import OPEN_HOW as OPEN_HOW
from synthfs.linux import RESOLVE_BENEATH as RESOLVE_BENEATH
from synthfs.linux import RESOLVE_CACHED as RESOLVE_CACHED
from synthfs.linux import RESOLVE_IN_ROOT as RESOLVE_IN_ROOT
from synthfs.linux import RESOLVE_NO_MAGICLINKS as RESOLVE_NO_MAGICLINKS
from synthfs.linux import RESOLVE_NO_SYMLINKS as RESOLVE_NO_SYMLINKS
from synthfs.linux import RESOLVE_NO_XDEV as RESOLVE_NO_XDEV
from synthfs.linux import openat2
from synthfs.protocol.messages import Attrs, FileKind

__all__ = [
    "AT_EMPTY_PATH",
    "AT_FDCWD",
    "AT_REMOVEDIR",
    "AT_SYMLINK_FOLLOW",
    "AT_SYMLINK_NOFOLLOW",
    "SYNTH_DEV",
    "dirent64",
    "mode_of",
    "pack_stat",
    "pack_statx",
]

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_EACCESS = 0x200

O_ACCMODE = 0o3
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY
O_LARGEFILE = 0o100000

#: st_dev of every synthetic object: major 0 (anonymous devices), a fixed minor.
SYNTH_DEV = os.makedev(0, 0x5F5F)

_DT = {FileKind.FILE: 8, FileKind.DIR: 4, FileKind.SYMLINK: 10}
_TYPE_BITS = {FileKind.FILE: st.S_IFREG, FileKind.DIR: st.S_IFDIR, FileKind.SYMLINK: st.S_IFLNK}

# struct stat (x86_64): dev, ino, nlink, mode, uid, gid, pad, rdev, size, blksize,
# blocks, atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns, 3 reserved.
_STAT = STAT_STRUCT = struct.Struct("<QQQIIIIQqqqqqqqqq24x")
# struct statx: mask, blksize, attributes, nlink, uid, gid, mode, pad, ino, size,
# blocks, attributes_mask, atime/btime/ctime/mtime (sec i64, nsec u32, pad),
# rdev major/minor, dev major/minor, then reserved space to 256 bytes.
_STATX_TS = "qI4x"
_STATX = struct.Struct("<IIQIIIH2xQQQQ" + _STATX_TS * 4 + "IIII")
STATX_SIZE = 256
STATX_BASIC_STATS = 0x7FF


def mode_of(attrs: Attrs) -> int:
    return _TYPE_BITS[attrs.kind] | (attrs.mode & 0o7777)


def _split_ns(ns: int) -> tuple[int, int]:
    return ns // 1_000_000_000, ns % 1_000_000_000


def pack_stat(attrs: Attrs, uid: int, gid: int) -> bytes:
    m_s, m_ns = _split_ns(attrs.mtime_ns)
    c_s, c_ns = _split_ns(attrs.ctime_ns)
    return _STAT.pack(
        SYNTH_DEV,
        attrs.ino,
        attrs.nlink,
        mode_of(attrs),
        uid,
        gid,
        0,
        0,
        attrs.size,
        4096,
        attrs.blocks,  # the repository's allocation (du), not the size rounded up
        m_s,
        m_ns,
        m_s,
        m_ns,
        c_s,
        c_ns,
    )


def pack_statx(attrs: Attrs, uid: int, gid: int) -> bytes:
    m_s, m_ns = _split_ns(attrs.mtime_ns)
    c_s, c_ns = _split_ns(attrs.ctime_ns)
    body = _STATX.pack(
        STATX_BASIC_STATS,
        4096,
        0,
        attrs.nlink,
        uid,
        gid,
        mode_of(attrs),
        attrs.ino,
        attrs.size,
        attrs.blocks,  # the repository's allocation (du), not the size rounded up
        0,
        m_s,
        m_ns,  # atime
        0,
        0,  # btime (not reported: STATX_BTIME is not in the mask)
        c_s,
        c_ns,  # ctime
        m_s,
        m_ns,  # mtime
        0,
        0,
        os.major(SYNTH_DEV),
        os.minor(SYNTH_DEV),
    )
    return body + bytes(STATX_SIZE - len(body))


def dirent64(ino: int, offset: int, kind: FileKind | None, name: bytes) -> bytes:
    """One ``linux_dirent64`` record, padded to 8 bytes."""
    reclen = (19 + len(name) + 1 + 7) & ~7
    dtype = _DT.get(kind, 0) if kind is not None else 4
    head = struct.pack("<QqHB", ino, offset, reclen, dtype)
    return head + name + bytes(reclen - 19 - len(name))


def dirent(ino: int, offset: int, kind: FileKind | None, name: bytes) -> bytes:
    """One legacy ``linux_dirent`` record (getdents), d_type in the last byte."""
    reclen = (18 + len(name) + 2 + 7) & ~7
    dtype = _DT.get(kind, 0) if kind is not None else 4
    head = struct.pack("<QqH", ino, offset, reclen)
    body = name + bytes(reclen - 18 - len(name) - 1)
    return head + body + bytes([dtype])


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR_STATX = 332

NR_FACCESSAT2 = 439


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return ret


def pid_running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie: its ``/proc/PID/stat`` state, or, for a
    leader that exited before its other threads (``pthread_exit`` in main), a thread
    that still runs (a signal to the pid reaches them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one this process may not signal too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def host_openat2(path: str, flags: int, resolve: int, dirfd: int = AT_FDCWD) -> int:
    """openat2(dirfd, path, {flags, 0, resolve}) in the supervisor (raises OSError)."""
    return openat2(dirfd, path, flags, resolve)


def open_checked(real: str, follow: bool, must_be_dir: bool = False) -> int:
    """An O_PATH fd on a checked real path, by a walk that follows no symlink at all.

    The supervisor answers stat, statx, access and readlink of host paths
    itself, through this fd: a symlink a guest swapped into the path after the
    decision fails the walk (ELOOP) instead of showing another object.
    """
    flags = O_PATH | O_CLOEXEC | (0 if follow else O_NOFOLLOW) | (O_DIRECTORY if must_be_dir else 0)
    return host_openat2(real, flags, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)


def host_statx(path: str, atflags: int, mask: int, dirfd: int = AT_FDCWD) -> bytes:
    """``statx`` of a host path (or of ``dirfd`` itself: path "" and AT_EMPTY_PATH),
    run by the supervisor (raises OSError)."""
    buf = ctypes.create_string_buffer(STATX_SIZE)
    _check(
        _libc.syscall(
            ctypes.c_long(NR_STATX),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.c_int(atflags),
            ctypes.c_uint(mask & 0xFFFFFFFF),
            buf,
        ),
        path,
    )
    return buf.raw


def host_access(fd: int, mode: int, effective: bool) -> bool:
    """faccessat2(fd, "", mode, AT_EMPTY_PATH): may this process access the object?"""
    flags = AT_EMPTY_PATH | (AT_EACCESS if effective else 0)
    ret = _libc.syscall(
        ctypes.c_long(NR_FACCESSAT2), ctypes.c_int(fd), ctypes.c_char_p(b""),
        ctypes.c_int(mode), ctypes.c_int(flags),
    )  # fmt: skip
    if ret == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EACCES:
        return False
    raise OSError(err, os.strerror(err))


def host_readlink(fd: int) -> str:
    """readlinkat(fd, ""): the text of the symlink ``fd`` (O_PATH | O_NOFOLLOW) is on."""
    if not st.S_ISLNK(os.stat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a symbolic link")  # readlink's answer (not ENOENT)
    buf = ctypes.create_string_buffer(4096)
    n = _check(_libc.readlinkat(ctypes.c_int(fd), ctypes.c_char_p(b""), buf, 4096), "readlinkat")
    return os.fsdecode(buf.raw[:n])


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


#: capability(7) numbers
CAP_SYS_PTRACE = 19


def has_capability(cap: int) -> bool:
    """Whether this process has the capability ``cap`` in its effective set."""
    try:
        with open("/proc/self/status", "rb") as f:
            eff = next(int(x.split()[1], 16) for x in f if x.startswith(b"CapEff:"))
    except (OSError, ValueError, StopIteration):
        return False
    return bool(eff >> cap & 1)


#: auxv: AT_BASE, the load address of the ``PT_INTERP`` loader (0: none).
_AT_BASE = 7


def maps_inode(line: str) -> tuple[int, int]:
    """The ``(st_dev, st_ino)`` a ``/proc/PID/maps`` line names: its ``MAJ:MIN``
    (hex) as a ``dev_t``, and its inode number (ValueError: not such a line)."""
    dev, ino = line.split(None, 5)[3:5]
    major, minor = dev.split(":")
    return os.makedev(int(major, 16), int(minor, 16)), int(ino)


def loader_checked(tgid: int, checked: Collection[tuple[int, int]]) -> bool:
    """Whether the loader the kernel mapped for a process's ``PT_INTERP`` (at
    AT_BASE, its first mapping), read at its exec stop, is one of the ``checked``
    ``(st_dev, st_ino)``; True for a program without one. False when it cannot be
    told (fail closed).

    The mapping's ``/proc/PID/maps`` line names the file's inode: ``MAJ:MIN`` of
    its superblock (hex) and its number, readable with no capability. That is
    ``st_dev`` on most file systems, not on a btrfs subvolume (an ``st_dev`` of
    its own) nor for an overlayfs file whose ``st_dev`` is the overlay's while the
    line shows the layer's inode (or the reverse): a pair that matches names the
    same inode (a ``dev_t`` names one superblock or subvolume at a time, and
    ``st_ino`` is unique on it), a pair that does not decides nothing. Only then
    the mapped file is stat'ed through ``/proc/PID/map_files``, as the check
    stat'ed it; following those links needs CAP_CHECKPOINT_RESTORE (or
    CAP_SYS_ADMIN): without it such a file fails closed.
    """
    try:
        with open(f"/proc/{tgid}/exe", "rb") as f:
            word = 4 if f.read(5)[4:] == b"\x01" else 8  # ELFCLASS32: a 32-bit auxv
        with open(f"/proc/{tgid}/auxv", "rb") as f:
            auxv = f.read()
        pairs = struct.iter_unpack("<II" if word == 4 else "<QQ", auxv)
        base = next((v for k, v in pairs if k == _AT_BASE), 0)
        if not base:
            return True
        with open(f"/proc/{tgid}/maps") as f:
            line = next(x for x in f if int(x.split("-", 1)[0], 16) == base)
        if maps_inode(line) in checked:
            return True
        s = os.stat(f"/proc/{tgid}/map_files/{line.split(None, 1)[0]}")
        return (s.st_dev, s.st_ino) in checked
    except (OSError, ValueError, StopIteration):
        return False


def executed_objects(fd: int, cwd: str) -> list[tuple[str, tuple[int, int]]] | None:
    """Every file the kernel opens when it execs the file ``fd`` holds, as
    ``(real path, (st_dev, st_ino))``: the file itself (path ""; its caller
    checked it), each ``#!`` interpreter (followed as the kernel does; a
    relative one from ``cwd``), and the ``PT_INTERP`` loader of the ELF at the
    end (which the kernel maps too). None when that cannot be told (an
    unreadable script, an interpreter that does not exist: the exec fails then
    anyway). Raises nothing."""
    opened: list[int] = []
    found: list[tuple[str, tuple[int, int]]] = []
    scripts = 0
    try:
        while True:
            s = os.fstat(fd)
            real = os.readlink(f"/proc/self/fd/{fd}") if opened else ""
            found.append((real, (s.st_dev, s.st_ino)))
            if not st.S_ISREG(s.st_mode):
                return found
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                line = binfmt.parse(os.pread(rfd, binfmt.BUF_SIZE, 0))  # ENOEXEC: refused
                name = line[0] if line else binfmt.elf_interp(functools.partial(_pread, rfd))
            finally:
                os.close(rfd)
            if line is not None:
                scripts += 1
                if scripts == binfmt.MAX_SCRIPTS:
                    return None  # ELOOP
            if name is None:
                return found
            fd = os.open(os.path.join(cwd, os.fsdecode(name)), os.O_PATH | os.O_CLOEXEC)
            opened.append(fd)
            if line is None:  # the loader: the kernel does not follow its own PT_INTERP
                s = os.fstat(fd)
                found.append((os.readlink(f"/proc/self/fd/{fd}"), (s.st_dev, s.st_ino)))
                return found
    except OSError:
        return None
    finally:
        for f in opened:
            os.close(f)
