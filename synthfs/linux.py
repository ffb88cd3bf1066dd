"""The one binding of ``openat2(2)``: its number, ``struct open_how`` and RESOLVE_*.

Python wraps neither the syscall nor its flags. The interposer's supervisor
(:mod:`synthfs.interposer.abi`) and the server's local backend
(:mod:`synthfs.server.backends.beneath`) both open through :func:`openat2`.
Trusts its callers: it is a thin syscall binding and checks nothing beyond
what the kernel checks. Light to import (ctypes, struct): the supervisor loads
it at start-up.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Any

__all__ = [
    "NR_OPENAT2",
    "OPEN_HOW",
    "RESOLVE_BENEATH",
    "RESOLVE_CACHED",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "libc",
    "openat2",
    "openat2_available",
    "reuse_freed_memory",
    "unfilled_bytearray",
]

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

#: ``struct open_how { u64 flags; u64 mode; u64 resolve; }`` (its first, 24-byte version).
OPEN_HOW = struct.Struct("<QQQ")

#: openat2's number (the same in every table that has it since Linux 5.6).
NR_OPENAT2 = 437
#: The machines whose syscall table the binding is known to match.
_ARCHES = ("x86_64", "aarch64", "riscv64")

_AT_FDCWD = -100

#: The C library, for the syscalls Python does not wrap (errno kept for ctypes.get_errno).
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# openat2 through its own prototype of syscall(2): it runs on every trapped host path.
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
_syscall.restype = ctypes.c_long
_HOWS: dict[tuple[int, int, int], bytes] = {}


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``: a new fd, or OSError(errno, _, path)."""
    key = (flags, mode, resolve)
    how = _HOWS.get(key)
    if how is None:
        how = _HOWS.setdefault(key, OPEN_HOW.pack(flags, mode, resolve))
    fd: int = _syscall(NR_OPENAT2, dirfd, os.fsencode(path), how, OPEN_HOW.size)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def syncfs(fd: int) -> None:
    """syncfs(2): flush every dirty page and inode of the file system holding ``fd``."""
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def openat2_available() -> bool:
    """Whether this machine and kernel answer openat2 (Linux 5.6 and later)."""
    if platform.machine() not in _ARCHES:
        return False
    try:
        os.close(openat2(_AT_FDCWD, "/", os.O_PATH | os.O_CLOEXEC, 0))
    except OSError:
        return False
    return True


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory() -> bool:
    """Keep freed chunk buffers in the heap for the next chunk (the bulk processes: the
    server and the agent). False where the C library is not glibc.

    By default glibc serves each 4 MiB buffer of a transfer (a pread, an encoded frame,
    a received message) from a fresh mmap and unmaps it when freed, so every chunk
    faults its pages in again; on a VM whose host backs guest memory lazily that cost
    more CPU than the copies themselves (measured, a 256 MiB fetch: agent 0.5 s of
    CPU, 0.2 s with this). Buffers up to 32 MiB (glibc's maximum) come from the heap,
    and up to 128 MiB freed at its top stays for reuse.
    """
    try:
        mallopt = libc.mallopt
    except AttributeError:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 128 << 20)
                and mallopt(_M_TOP_PAD, 16 << 20))


_from_string: Any
try:  # CPython's own constructor: with a NULL source it leaves the bytes as they were
    _from_string = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _from_string.restype = ctypes.py_object
    _from_string.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
except AttributeError:  # not CPython
    _from_string = None


def unfilled_bytearray(n: int) -> bytearray:
    """A bytearray of ``n`` bytes that are not cleared first: for a buffer read into.

    ``bytearray(n)`` writes ``n`` zeros that a read then overwrites: for the
    server's 4 MiB read buffers that pass cost as much as the copy it replaced
    (measured ~0.2-0.4 ms per chunk here). What the bytes hold before the read is
    whatever the heap held (other requests' data): the caller must send or keep
    only the part a read filled, never the rest.
    """
    if _from_string is None or n <= 0:
        return bytearray(n)
    out: bytearray = _from_string(None, n)
    return out
