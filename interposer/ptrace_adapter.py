"""The only importer of python-ptrace: tracing primitives for the supervisor.

python-ptrace gives us the ptrace(2) binding and the register structure. It
lacks seccomp stops (``PTRACE_O_TRACESECCOMP``, event 7) and
``PTRACE_O_EXITKILL``; this module adds them, plus what the wait loop needs
(``__WALL``), guest memory access through ``/proc/PID/mem`` and the start-up
sequence of a traced child. It trusts nothing read from a guest: callers
validate what they read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import types
from collections import OrderedDict
from typing import Any

# python-ptrace finds libc with ctypes.util.find_library, which runs ldconfig and
# gcc in subprocesses (~0.1-0.3 s at every start-up). glibc's soname is fixed on
# Linux: hand python-ptrace the loaded library instead.
if "ptrace.ctypes_libc" not in sys.modules:
    _shim = types.ModuleType("ptrace.ctypes_libc")
    _shim.LIBC_FILENAME = "libc.so.6"  # type: ignore[attr-defined]
    _shim.libc = ctypes.CDLL("libc.so.6", use_errno=True)  # type: ignore[attr-defined]
    sys.modules["ptrace.ctypes_libc"] = _shim

from ptrace import PtraceError
from ptrace.binding import func as _pt
from ptrace.binding.func import ptrace_registers_t as _Regs

__all__ = [
    "EVENT_CLONE",
    "EVENT_EXEC",
    "EVENT_EXIT",
    "EVENT_FORK",
    "EVENT_SECCOMP",
    "EVENT_STOP",
    "EVENT_VFORK",
    "OPTIONS",
    "STOP_SIGNALS",
    "WALL",
    "GuestMemory",
    "PtraceError",
    "Regs",
    "cont",
    "event_msg",
    "get_regs",
    "interrupt",
    "kill",
    "listen",
    "seize",
    "set_fd_budget",
    "set_regs",
    "store",
    "syscall",
]

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_EXIT = 6
EVENT_SECCOMP = 7
EVENT_STOP = 128  # a group-stop, or the first stop of a seized child (PTRACE_SEIZE only)

#: the signals whose default action stops a process (a group-stop when they do)
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

PTRACE_SETOPTIONS = 0x4200
PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

#: waitpid flag: wait for every child, threads included (not in ``os``).
WALL = 0x40000000

#: Every option the supervisor sets on the first guest (inherited by the rest).
OPTIONS = (
    PTRACE_O_TRACESYSGOOD
    | PTRACE_O_TRACEFORK
    | PTRACE_O_TRACEVFORK
    | PTRACE_O_TRACECLONE
    | PTRACE_O_TRACEEXEC
    | PTRACE_O_TRACEEXIT
    | PTRACE_O_TRACESECCOMP
    | PTRACE_O_EXITKILL
)

Regs = Any  # python-ptrace's user_regs_struct (ctypes)

PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24

# The stop path's four requests (GETREGS, SETREGS, CONT, SYSCALL) call libc's
# ptrace directly: python-ptrace's generic wrapper costs ~1.5 µs more per call,
# several times per trapped syscall. Its other requests go through python-ptrace.
_ptrace = ctypes.CDLL("libc.so.6", use_errno=True).ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long


def _fail(request: int, pid: int) -> PtraceError:
    err = ctypes.get_errno()
    return PtraceError(f"ptrace({request}, {pid}): {os.strerror(err)}", errno=err, pid=pid)


def seize(pid: int, options: int = OPTIONS) -> None:
    """Trace ``pid`` (without stopping it) with ``options``; its new children inherit both.

    Seized, not PTRACE_TRACEME'd: a group-stop is reported as such
    (:data:`EVENT_STOP` with the stop signal) and :func:`listen` can leave the
    tracee stopped until a SIGCONT, so job control works under the tracer.
    """
    if _ptrace(PTRACE_SEIZE, pid, None, options) == -1:
        raise _fail(PTRACE_SEIZE, pid)


def cont(pid: int, sig: int = 0) -> None:
    if _ptrace(PTRACE_CONT, pid, None, sig or None) == -1:
        raise _fail(PTRACE_CONT, pid)


def syscall(pid: int, sig: int = 0) -> None:
    """Resume until the next syscall stop (used to reach a syscall's exit)."""
    if _ptrace(PTRACE_SYSCALL, pid, None, sig or None) == -1:
        raise _fail(PTRACE_SYSCALL, pid)


def listen(pid: int) -> None:
    """Leave a tracee in group-stop stopped (a SIGCONT ends it with a new EVENT_STOP)."""
    if _ptrace(PTRACE_LISTEN, pid, None, None) == -1:
        raise _fail(PTRACE_LISTEN, pid)


def interrupt(pid: int) -> None:
    _pt.ptrace(PTRACE_INTERRUPT, pid, 0, 0)


def detach(pid: int) -> None:
    """Let a seized tracee go as it was: stop it (PTRACE_INTERRUPT), then PTRACE_DETACH
    (a signal it was stopped for is delivered). For a process seized by mistake."""
    with contextlib.suppress(PtraceError, ChildProcessError):
        interrupt(pid)
        _, status = os.waitpid(pid, WALL)
        if os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status) if status >> 16 == 0 else 0
            _ptrace(PTRACE_DETACH, pid, None, sig or None)


def event_msg(pid: int) -> int:
    value = ctypes.c_ulong()
    _pt.ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(value))
    return value.value


def get_regs(pid: int) -> Regs:
    regs = _Regs()
    if _ptrace(PTRACE_GETREGS, pid, None, ctypes.byref(regs)) == -1:
        raise _fail(PTRACE_GETREGS, pid)
    return regs


def set_regs(pid: int, regs: Regs) -> None:
    if _ptrace(PTRACE_SETREGS, pid, None, ctypes.byref(regs)) == -1:
        raise _fail(PTRACE_SETREGS, pid)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_CLOSED = -2  # GuestMemory._fd of a closed one (never reopened: its pid may be reused)


def set_fd_budget(limit: int) -> None:
    """Keep at most ``limit`` guest mem fds open (at least 16)."""
    GuestMemory.limit = max(16, limit)


class GuestMemory:
    """Reads and writes one guest address space through ``/proc/PID/mem``.

    The file must be reopened after every exec (an fd opened before an exec
    silently writes nothing after it). Writes reach read-only pages (the
    scratch page) because the kernel forces them for a tracer.

    The fds are a bounded LRU (:attr:`limit` open at most, see :func:`set_fd_budget`):
    a guest tree of thousands of processes must not exhaust the supervisor's fd
    table. An evicted fd is reopened on demand through the thread last named
    with :meth:`use` (the address space outlives its first thread).
    """

    __slots__ = ("_fd", "pid", "via")

    #: how many guest mem fds stay open at once (the least recently used is closed)
    limit = 256
    _open: OrderedDict[GuestMemory, None] = OrderedDict()  # shared by every instance

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.via = pid
        self._fd = -1
        self._reopen()

    @property
    def fd(self) -> int:
        if self._fd < 0:
            if self._fd == _CLOSED:
                raise OSError(errno.EBADF, "guest memory closed")
            self._reopen()
        return self._fd  # marked recent by use(), once a stop

    def use(self, tid: int) -> None:
        """Name a live thread of this address space (to reopen through) and mark it recent."""
        self.via = tid
        if self._fd >= 0:
            self._open.move_to_end(self)

    def _reopen(self) -> None:
        opened = self._open
        while len(opened) >= self.limit:
            opened.popitem(last=False)[0]._close_fd()
        path = f"/proc/{self.via}/mem"
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or not opened:
                raise
            for _ in range(max(1, len(opened) // 2)):  # the table is full of something else
                opened.popitem(last=False)[0]._close_fd()
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        opened[self] = None

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self._open.pop(self, None)
        self._close_fd()
        self._fd = _CLOSED

    def read(self, addr: int, size: int) -> bytes:
        try:
            return os.pread(self.fd, size, addr)
        except (OSError, OverflowError) as exc:  # OverflowError: an address >= 2**63
            raise OSError(errno.EFAULT, "bad guest address") from exc

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes | None:
        """The NUL-terminated bytes at ``addr`` (without the NUL).

        None when the string is longer than ``limit`` bytes (ENAMETOOLONG).
        Raises OSError(EFAULT) when ``addr`` is not readable.
        """
        if addr == 0:
            raise OSError(errno.EFAULT, "NULL path")
        out = b""
        # Read up to the page boundary first: the next page may be unmapped.
        want = 4096 - (addr & 4095)
        while True:
            try:
                chunk = os.pread(self.fd, want, addr)
            except (OSError, OverflowError) as exc:
                raise OSError(errno.EFAULT, "bad guest address") from exc
            if not chunk:
                raise OSError(errno.EFAULT, "bad guest address")
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return out if len(out) < limit else None
            out += chunk
            if len(out) >= limit:
                return None
            addr += len(chunk)
            want = 4096

    def write(self, addr: int, data: bytes) -> None:
        try:
            written = os.pwrite(self.fd, data, addr)
        except (OSError, OverflowError) as exc:  # OverflowError: an address >= 2**63
            raise OSError(errno.EFAULT, "bad guest address") from exc
        if written != len(data):
            raise OSError(errno.EFAULT, "short write to guest memory")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_pvw = ctypes.CDLL("libc.so.6", use_errno=True).process_vm_writev
_pvw.restype = ctypes.c_ssize_t
_pvw.argtypes = (
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
)

#: One local and one remote iovec and a staging buffer, reused by every :func:`store`
#: (the supervisor stores one answer at a time): no ctypes object is built per call.
_STAGE_SIZE = 4096
_stage = ctypes.create_string_buffer(_STAGE_SIZE)
_vecs = (_IoVec * 2)()
_STAGE_ADDR = ctypes.addressof(_stage)
_vecs[0].base = _STAGE_ADDR
_LOCAL = ctypes.addressof(_vecs)
_REMOTE = _LOCAL + ctypes.sizeof(_IoVec)
_memmove = ctypes.memmove


def store(tid: int, addr: int, data: bytes) -> None:
    """Store a syscall's result ``data`` at ``addr`` in thread ``tid``'s memory as the
    kernel's copy to a guest buffer would: a page the guest cannot write (read-only,
    the scratch area) is EFAULT. (:class:`GuestMemory` writes through
    ``/proc/PID/mem``, which forces the store: only for the supervisor's own use.)"""
    size = len(data)
    if not size:
        return
    if size > _STAGE_SIZE:
        buf = ctypes.create_string_buffer(data, size)
        local = _IoVec(ctypes.addressof(buf), size)
        remote = _IoVec(addr, size)
        done = _pvw(tid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    else:
        _memmove(_STAGE_ADDR, data, size)
        vecs = _vecs
        vecs[0].len = size
        vecs[1].base = addr
        vecs[1].len = size
        done = _pvw(tid, _LOCAL, 1, _REMOTE, 1, 0)
    if done != size:
        raise OSError(errno.EFAULT, "bad guest address")
