"""The seccomp user-notification channel: the kernel interface, and nothing else.

The second way a trapped syscall reaches the supervisor (the first is a
ptrace seccomp stop, :mod:`interposer.ptrace_adapter`). A table row whose
``channel`` is :attr:`~interposer.syscalls.Channel.NOTIFY` gets
``SECCOMP_RET_USER_NOTIF`` in the filter when the notify engine is on: the
guest thread blocks in the kernel, the supervisor receives the call's number
and arguments from the listener fd, emulates it, and answers a value or an
errno. No ptrace stop, no register access, no exit stop.

This module binds the ioctls (``RECV``, ``SEND``, ``ID_VALID``, ``SET_FLAGS``,
``ADDFD``: an fd of the supervisor's installed in the guest, the answer sent with it),
probes what the running kernel has (:func:`probe`), and takes the listener
fd out of the freshly filtered child (:func:`take_listener`: ``pidfd_getfd``).
What to do with a notification is the supervisor's and the handlers'.

Trusts the kernel only: every field of a notification is data a guest chose,
and ``ID_VALID`` after reading guest memory is the caller's duty (the
notifying task may have died, and its pid been reused, since ``RECV``).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
import struct

from synthfs.interposer.bpf import NR_SECCOMP

__all__ = [
    "NOTIF",
    "Engine",
    "Listener",
    "Notification",
    "choose",
    "probe",
    "signalfd_of",
    "take_listener",
]


class Engine(enum.StrEnum):
    """Which channel traps the rows marked NOTIFY (``synthfs run --engine``)."""

    PTRACE = "ptrace"  # every trapped row: a ptrace seccomp stop
    NOTIFY = "notify"  # rows with channel NOTIFY: user notification; the others: ptrace
    AUTO = "auto"  # see :func:`choose`


#: ``struct seccomp_notif``: id, pid, flags, then ``struct seccomp_data`` (nr, arch,
#: instruction pointer, six arguments): 80 bytes
NOTIF = struct.Struct("<QIIiIQ6Q")
#: ``struct seccomp_notif_resp``: id, val, error, flags: 24 bytes
RESP = struct.Struct("<QqiI")
_ID = struct.Struct("<Q")
#: ``struct seccomp_notif_addfd``: id, flags, srcfd, newfd, newfd_flags: 24 bytes
ADDFD = struct.Struct("<QIIII")

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
#: ADDFD answers the call with the new fd's number, atomically (Linux 5.14)
SECCOMP_ADDFD_FLAG_SEND = 2
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1

SECCOMP_GET_NOTIF_SIZES = 3

NR_PIDFD_OPEN = 434
NR_PIDFD_GETFD = 438

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class Notification:
    """One received call: reused for every ``RECV`` (no allocation per call)."""

    __slots__ = ("args", "buf", "id", "nr", "pid")

    def __init__(self) -> None:
        self.buf = bytearray(NOTIF.size)
        self.id = 0
        self.pid = 0
        self.nr = -1
        self.args: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)


class Listener:
    """The supervisor's end of the filter: receive, check, answer."""

    __slots__ = ("_addb", "_idb", "_resp", "_zero", "fd", "sync_wake_up")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._zero = bytes(NOTIF.size)
        self._resp = bytearray(RESP.size)
        self._idb = bytearray(_ID.size)
        self._addb = bytearray(ADDFD.size)
        #: whether the kernel wakes the supervisor on the notifying task's CPU (≥ 6.6)
        self.sync_wake_up = False
        try:
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            self.sync_wake_up = True
        except OSError:
            pass  # an older kernel: a cross-CPU wake-up per call, still correct

    def recv(self, n: Notification) -> bool:
        """Fill ``n`` with the next call; False when it went away before we took it
        (its task was interrupted by a signal, or died)."""
        buf = n.buf
        buf[:] = self._zero  # the kernel wants a zeroed buffer
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):
                return False
            raise
        n.id, n.pid, _flags, n.nr, _arch, _ip, *args = NOTIF.unpack(buf)
        n.args = tuple(args)
        return True

    def valid(self, ident: int) -> bool:
        """Whether the call ``ident`` still waits for its answer (its task alive, in it).

        Once False, never True again: checked after every read of the task's memory
        or /proc entries, a True means what was read was the notifying task's."""
        _ID.pack_into(self._idb, 0, ident)
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, self._idb)
        except OSError:
            return False
        return True

    def answer(self, ident: int, value: int = 0, error: int = 0, cont: bool = False) -> bool:
        """Answer the call: ``value``, or ``-error`` (an errno), or let the kernel run it
        (``cont``). False when the call is gone (interrupted, or its task died)."""
        return send(self.fd, self._resp, ident, value, error, cont)

    def send_fd(self, ident: int, fd: int, cloexec: bool) -> int:
        """Install a copy of our ``fd`` in the guest at its lowest free number and answer
        the call with that number, in one step (``ADDFD`` + ``FLAG_SEND``).

        The number, or ``-errno``: EMFILE at the guest's fd limit, ENOENT when the call
        is gone (then nothing was installed); a failure leaves the call unanswered."""
        return send_fd(self.fd, self._addb, ident, fd, cloexec)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def send(lfd: int, buf: bytearray, ident: int, value: int, error: int, cont: bool) -> bool:
    """``SEND`` on listener ``lfd`` with the 24-byte ``buf`` (the caller's: another
    thread brings its own); see :meth:`Listener.answer`."""
    flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
    RESP.pack_into(buf, 0, ident, value, -error if error else 0, flags)
    try:
        fcntl.ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, buf)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EBADF):
            return False
        raise
    return True


def send_fd(lfd: int, buf: bytearray, ident: int, fd: int, cloexec: bool) -> int:
    """``ADDFD`` + ``FLAG_SEND`` on listener ``lfd``; see :meth:`Listener.send_fd`."""
    ADDFD.pack_into(buf, 0, ident, SECCOMP_ADDFD_FLAG_SEND, fd, 0, os.O_CLOEXEC if cloexec else 0)
    try:
        return int(fcntl.ioctl(lfd, SECCOMP_IOCTL_NOTIF_ADDFD, buf))
    except OSError as exc:
        return -(exc.errno or errno.EIO)


def take_listener(pid: int, fd: int) -> int:
    """A copy of the fd ``fd`` of process ``pid`` (its new listener), via ``pidfd_getfd``."""
    pidfd = _syscall(NR_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0))
    if pidfd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_open({pid}): {os.strerror(err)}")
    try:
        got = _syscall(NR_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return int(got)
    finally:
        os.close(pidfd)


def _has_syscall(nr: int) -> bool:
    """Whether the kernel knows syscall ``nr`` (called with arguments it refuses)."""
    ret = _syscall(ctypes.c_long(nr), ctypes.c_long(-1), ctypes.c_long(0), ctypes.c_long(0))
    return not (ret < 0 and ctypes.get_errno() == errno.ENOSYS)


def probe() -> str | None:
    """What this kernel lacks for the notify engine (None: nothing).

    User notification (5.0: ``user_notif`` in ``actions_avail``), structures of the
    sizes this module packs (``SECCOMP_GET_NOTIF_SIZES``), and ``pidfd_open`` /
    ``pidfd_getfd`` (5.6) to take the listener from the child, and ``ADDFD`` with
    ``FLAG_SEND`` (5.14) to hand an open's fd over.
    """
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().split()
    except OSError:
        return "seccomp filters (/proc/sys/kernel/seccomp/actions_avail is unreadable)"
    if "user_notif" not in actions:
        return "seccomp user notification (Linux 5.0; 'user_notif' not in actions_avail)"
    sizes = (ctypes.c_uint16 * 3)()
    if _syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES),
                ctypes.c_uint(0), sizes) != 0:
        return "SECCOMP_GET_NOTIF_SIZES (Linux 5.0)"
    if sizes[0] != NOTIF.size or sizes[1] != RESP.size:
        return (f"seccomp notification structures of {NOTIF.size}/{RESP.size} bytes "
                f"(this kernel's: {sizes[0]}/{sizes[1]})")
    for nr, name in ((NR_PIDFD_OPEN, "pidfd_open"), (NR_PIDFD_GETFD, "pidfd_getfd")):
        if not _has_syscall(nr):
            return f"{name} (Linux 5.6)"
    if _release() < (5, 14):
        # (no listener to ask before the run: ADDFD refuses an unknown flag with EINVAL)
        return "SECCOMP_ADDFD_FLAG_SEND (Linux 5.14), for opens"
    return None


def _release() -> tuple[int, int]:
    """The running kernel's major and minor version (0, 0: unreadable)."""
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return 0, 0


def choose(asked: Engine) -> tuple[Engine, str]:
    """The engine a run uses for ``asked``, and a line saying why when it is not that.

    ``auto`` is ptrace: the notify engine passes the conformance and escape suites
    (``SYNTHFS_ENGINE=notify``), but with only the stat family notified, every
    remaining ptrace stop costs more under its loop than under ptrace's, and
    ``ls -lR`` costs more CPU than under ptrace (benchmarks/RESULTS.md, "Engine
    v2"): auto picks notify once the hot rows are notified. ``notify`` on a kernel
    without a feature it needs falls back to ptrace, and the line names the feature.
    """
    if asked is Engine.PTRACE:
        return Engine.PTRACE, ""
    if asked is Engine.AUTO:
        return Engine.PTRACE, ""
    missing = probe()
    if missing is not None:
        return Engine.PTRACE, f"--engine notify: this kernel lacks {missing}; using ptrace"
    return Engine.NOTIFY, ""


class _SigSet(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_uint64 * 16)]


_signalfd = _libc.signalfd
_signalfd.restype = ctypes.c_int
SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC


def signalfd_of(*signals: int) -> int:
    """A non-blocking ``signalfd`` for ``signals`` (the caller blocks them first)."""
    mask = _SigSet()
    for sig in signals:
        mask.bits[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
    fd = _signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"signalfd: {os.strerror(err)}")
    return int(fd)
