"""Loading a raw seccomp-BPF program into the calling process: two ``prctl`` or one ``seccomp``.

The one loader both launchers use: the supervisor's forked child
(:meth:`interposer.filter.CompiledFilter.load`) and the warm start's thin client
(:mod:`interposer.warm_client`), which must not import pyseccomp or the syscall
table. Light on imports (``ctypes`` and ``os``); trusts its caller's bytes.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["NR_SECCOMP", "SECCOMP_FILTER_FLAG_NEW_LISTENER", "Program"]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
#: seccomp(2)'s operation (prctl's PR_SET_SECCOMP takes SECCOMP_MODE_FILTER instead)
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
NR_SECCOMP = 317  # x86_64


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """Raw BPF and its ``sock_fprog``, allocated before any fork (the child only loads)."""

    def __init__(self, bpf: bytes) -> None:
        if len(bpf) % 8 or not bpf:
            raise ValueError("BPF program must be a non-empty multiple of 8 bytes")
        self.bpf = bpf
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
        libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = libc.prctl
        self._prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong)
        self._prctl.restype = ctypes.c_int
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def load(self, listener: bool) -> int:
        """Set no_new_privs and install the program in the calling thread.

        ``listener``: with ``SECCOMP_FILTER_FLAG_NEW_LISTENER``; the listener fd
        (close-on-exec, as the kernel makes it) is returned, else -1."""
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        if listener:
            fd = self._syscall(
                ctypes.c_long(NR_SECCOMP),
                ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                ctypes.c_uint(SECCOMP_FILTER_FLAG_NEW_LISTENER),
                ctypes.c_void_p(ctypes.addressof(self._prog)),
            )
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"seccomp(SET_MODE_FILTER, NEW_LISTENER): {os.strerror(err)}")
            return int(fd)
        if self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog), 0, 0):
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
        return -1
