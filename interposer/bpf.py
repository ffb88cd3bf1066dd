"""Loading a raw seccomp-BPF program into the calling process: two ``prctl`` or one ``seccomp``.

The one loader both launchers use: the supervisor's forked child
(:meth:`interposer.filter.CompiledFilter.load`) and the warm start's thin client
(:mod:`interposer.warm_client`), which must not import pyseccomp or the syscall
table. Bound with ``_ctypes`` itself: the ``ctypes`` package costs the thin
client ~7 ms to import (its whole run is ~30); the four C types below are all
it needs. Trusts its caller's bytes.
"""

from __future__ import annotations

import _ctypes
import os

__all__ = ["NR_SECCOMP", "SECCOMP_FILTER_FLAG_NEW_LISTENER",
           "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "Program"]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
#: seccomp(2)'s operation (prctl's PR_SET_SECCOMP takes SECCOMP_MODE_FILTER instead)
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
#: Linux 5.19: once the supervisor has received a call, a signal cannot end the
#: guest's wait for its answer (a fast timer starved /data stats without it)
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
_EINVAL = 22
NR_SECCOMP = 317  # x86_64


class _ULong(_ctypes._SimpleCData):  # ctypes.c_ulong
    _type_ = "L"


class _Int(_ctypes._SimpleCData):  # ctypes.c_int
    _type_ = "i"


class _Long(_ctypes._SimpleCData):  # ctypes.c_long
    _type_ = "l"


class _UShort(_ctypes._SimpleCData):  # ctypes.c_ushort
    _type_ = "H"


class _Char(_ctypes._SimpleCData):  # ctypes.c_char
    _type_ = "c"


class _SockFprog(_ctypes.Structure):
    _fields_ = [("len", _UShort), ("filter", _ULong)]


class _IntFunction(_ctypes.CFuncPtr):  # a C function returning int; errno kept
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _LongFunction(_ctypes.CFuncPtr):  # returning long
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


class _Libc:
    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # dlopen(NULL): this program


def _fail(what: str) -> OSError:
    err = _ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


class Program:
    """Raw BPF and its ``sock_fprog``, allocated before any fork (the child only loads)."""

    def __init__(self, bpf: bytes) -> None:
        if len(bpf) % 8 or not bpf:
            raise ValueError("BPF program must be a non-empty multiple of 8 bytes")
        self.bpf = bpf
        self._buf = (_Char * len(bpf)).from_buffer_copy(bpf)
        self._prog = _SockFprog(len(bpf) // 8, _ctypes.addressof(self._buf))
        # CFuncPtr((name, library)) reads only the library's _handle (a CDLL's in typeshed)
        self._prctl = _IntFunction(("prctl", _Libc()))  # type: ignore[arg-type]
        self._syscall = _LongFunction(("syscall", _Libc()))  # type: ignore[arg-type]

    def load(self, listener: bool) -> int:
        """Set no_new_privs and install the program in the calling thread.

        ``listener``: with ``SECCOMP_FILTER_FLAG_NEW_LISTENER``; the listener fd
        (close-on-exec, as the kernel makes it) is returned, else -1."""
        zero = _ULong(0)
        if self._prctl(_Int(PR_SET_NO_NEW_PRIVS), _ULong(1), zero, zero, zero) != 0:
            raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
        prog = _ULong(_ctypes.addressof(self._prog))
        if listener:
            fd = self._syscall(_Long(NR_SECCOMP), _ULong(SECCOMP_SET_MODE_FILTER),
                               _ULong(SECCOMP_FILTER_FLAG_NEW_LISTENER
                                      | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV), prog)
            if fd < 0 and _ctypes.get_errno() == _EINVAL:
                # Before 5.19: a signal may still end a received call's wait (the
                # supervisor then serves it again; a fast timer can starve it).
                os.write(2, b"synthfs run: this kernel refuses SECCOMP_FILTER_FLAG_WAIT_"
                            b"KILLABLE_RECV (Linux 5.19): a signal can interrupt a call "
                            b"being served\n")
                fd = self._syscall(_Long(NR_SECCOMP), _ULong(SECCOMP_SET_MODE_FILTER),
                                   _ULong(SECCOMP_FILTER_FLAG_NEW_LISTENER), prog)
            if fd < 0:
                raise _fail("seccomp(SET_MODE_FILTER, NEW_LISTENER)")
            return int(fd)
        if self._prctl(_Int(PR_SET_SECCOMP), _ULong(SECCOMP_MODE_FILTER), prog, zero, zero):
            raise _fail("prctl(PR_SET_SECCOMP)")
        return -1
