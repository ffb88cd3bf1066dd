"""The supervisor: launches the guest under ptrace + seccomp and runs the one wait loop.

The only place (with :mod:`interposer.ptrace_adapter`) that touches ptrace. It
follows every fork, vfork, clone, exec and exit of the guest tree; at each
seccomp stop it looks the syscall up in the table, calls its handler with a
:class:`~interposer.ports.Call`, and applies the action the handler returns.
Trusts the kernel, the agent and its own handlers; trusts nothing a guest
wrote (paths are read once, through ``/proc/PID/mem``).

The scratch area: after every exec the supervisor injects an ``mmap`` of a
read-only anonymous region at the lowest address the kernel allows; checked
copies of paths are written there (the tracer can, the guest cannot), one
slot per syscall in flight, and the filter refuses guest calls that would
unmap, remap or re-protect it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import resource
import select
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from attrs import define, field, frozen

from synthfs import linux
from synthfs.interposer import abi, notify
from synthfs.interposer import ptrace_adapter as pt
from synthfs.interposer.actions import Continue, Fail, Kill, Result, Return, RunChecked, Scratch
from synthfs.interposer.filter import CompiledFilter
from synthfs.interposer.interrupt import Interrupted, Interruption
from synthfs.interposer.notify import Engine, Listener
from synthfs.interposer.numbers import NR
from synthfs.interposer.ports import Call, Env, FsState, Proc
from synthfs.interposer.syscalls import BY_NR, Channel, Gate, Need, Role, SyscallSpec
from synthfs.protocol.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from synthfs.interposer.trace import Tracer

__all__ = ["CallerSignals", "ExecSignals", "Supervisor"]

log = logging.getLogger(__name__)

#: A handler that fails says so in one line, at most 20 times in 10 s (a guest can repeat it).
_handler_failures = RateLimitedLog(log, "handler failures")

SLOT_SIZE = 3 * 4096
SLOTS = 40
SCRATCH_SIZE = SLOT_SIZE * SLOTS
_MASK64 = (1 << 64) - 1
_SIGTRAP_SYSCALL = signal.SIGTRAP | 0x80
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_THREAD = 0x10000
PROT_READ = 1
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
NR_MMAP = 9
NR_CLONE = 56
NR_VFORK = 58
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_ERESTARTSYS = -512 & _MASK64
_ERESTARTNOINTR = -513 & _MASK64
#: the numbers of the rows the notify engine gets by user notification
_NOTIFIED_NRS = frozenset(nr for nr, spec in BY_NR.items() if spec.channel is Channel.NOTIFY)
#: notified rows without side effects whose handler answers (Return/Fail): one a signal
#: interrupted before the supervisor took it is served at the signal's delivery stop
_ANSWERED_AT_SIGNAL = frozenset(
    nr for nr in _NOTIFIED_NRS
    if BY_NR[nr].name in ("stat", "lstat", "fstat", "newfstatat", "statx", "access",
                          "faccessat", "faccessat2", "readlink", "readlinkat")
)


NR_OPENAT = NR["openat"]
NR_OPENAT2 = NR["openat2"]
#: what fcntl(F_SETFL) sets: the guest's own, once the supervisor's O_NONBLOCK is off
#: (not O_ASYNC: open(2) ignores it, F_SETFL would not)
_SETFL = abi.O_APPEND | abi.O_NONBLOCK | 0o40000 | 0o1000000  # + O_DIRECT, O_NOATIME
#: what a reopen of a FIFO through /proc/self/fd/N must not carry (it names no new entry)
_NOT_ON_REOPEN = abi.O_CREAT | abi.O_EXCL | abi.O_TRUNC | abi.O_NOFOLLOW | abi.O_DIRECTORY
#: FIFO opens that may wait for their other end at once (a thread and two fds each)
FIFO_WAITS = 256


def _scratch_base() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            low = int(f.read().strip())
    except (OSError, ValueError):
        low = 65536
    return max(4096, (low + 4095) & ~4095)


SCRATCH_BASE = _scratch_base()


def _outcome(rax: int, syscall: str) -> str:
    from synthfs.interposer.trace import result  # -v only

    return result(rax, syscall)


def _place(item: Scratch, base: int, blob: bytearray) -> int:
    """Append ``item`` (and what it links to) to a slot's bytes at ``base``; its address."""
    start = len(blob)
    blob += item.data
    blob += bytes(-len(blob) % 8)
    for offset, child in item.links:
        blob[start + offset : start + offset + 8] = _place(child, base, blob).to_bytes(8, "little")
    return base + start


@define
class MemSpace:
    """One guest address space (shared by threads and by a vfork child)."""

    pid: int
    mem: pt.GuestMemory
    free: list[int] = field(factory=lambda: list(range(SLOTS - 1, -1, -1)))

    def alloc(self) -> int | None:
        return self.free.pop() if self.free else None

    def release(self, slot: int) -> None:
        self.free.append(slot)


@define
class Pending:
    saved: tuple[int, ...]  # orig_rax, then the six argument registers
    after: Callable[[int], Return | Fail | None] | None
    space: MemSpace
    slot: int
    release: Callable[[], None] | None = None


@define
class Thread:
    tid: int
    proc: Proc
    space: MemSpace | None
    pending: Pending | None = None
    started: bool = False  # past the launcher's exec (its stops before are not the guest's)
    stopped: int = 0  # the stop signal of the group-stop it is in (0: none)
    #: ``-v``: the call under way (name, text, decision), shown with its result at its exit
    shown: tuple[str, str, str] | None = None


def _released(release: Callable[[], None] | None, tid: int) -> None:
    """Run a checked call's ``release`` (its end): one call's cleanup must not end the
    supervisor."""
    if release is not None:
        try:
            release()
        except Exception:
            log.exception("cleanup of the call of thread %d", tid)


def _store_writes(tid: int, result: Return) -> Return | Fail:
    """Write a result's data into the guest (a stat buffer...); EFAULT where it cannot."""
    try:
        for addr, data in result.writes:
            pt.store(tid, addr, data)
    except OSError:
        return Fail(errno.EFAULT)
    return result


def _proc_octal(path: str, key: bytes) -> int | None:
    """The octal number after ``key`` in a /proc file of ``key value`` lines (None: absent)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


#: Python sets these to SIG_IGN at start-up whatever the caller gave (the original is
#: lost); the guest gets SIG_DFL, as ``subprocess``'s ``restore_signals`` gives a child.
_PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
_SETTABLE = frozenset(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


def _signal_sets() -> tuple[frozenset[int], frozenset[int]]:
    """This thread's ignored and blocked signals, as the kernel reports them.

    One read of ``/proc/thread-self/status`` (~10 µs; asking ``signal.getsignal``
    about every signal costs ~0.3 ms, and it cannot see dispositions set outside
    Python).
    """
    fd = os.open("/proc/thread-self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    masks = {b"SigIgn:": 0, b"SigBlk:": 0}
    for line in text.splitlines():
        key = line[:7]
        if key in masks:
            masks[key] = int(line.split()[1], 16)
    ignored, blocked = (
        frozenset(sig for sig in _SETTABLE if mask >> (sig - 1) & 1) for mask in masks.values()
    )
    return ignored, blocked


@frozen
class CallerSignals:
    """The signal dispositions and mask the user's shell gave ``synthfs``, for the guest.

    A guest must start as it would natively: a signal the caller ignored stays
    ignored (``nohup``, a background job's SIGINT), every other one is SIG_DFL
    whatever ``synthfs`` itself does with it (it outlives SIGINT and SIGQUIT and
    passes SIGTERM and SIGHUP on while it supervises), and the mask is the caller's.
    """

    ignored: frozenset[int]
    blocked: frozenset[int]

    @classmethod
    def of_caller(cls) -> CallerSignals:
        """Read them in ``synthfs`` before it changes any (Python's own changes undone).

        Python installs its SIGINT handler only over SIG_DFL: a caller's SIG_IGN
        is still SIG_IGN here.
        """
        ignored, blocked = _signal_sets()
        return cls(ignored - _PYTHON_IGNORES, blocked)

    def for_exec(self) -> ExecSignals:
        """What a child of this thread must change before ``execve`` to start with these.

        An ``execve`` keeps SIG_IGN and the mask and resets handlers to SIG_DFL: the
        child changes only what differs (SIGINT, SIGQUIT, SIGPIPE, SIGXFSZ, typically).
        """
        ignored, blocked = _signal_sets()
        return ExecSignals(
            to_default=tuple(sorted(ignored - self.ignored)),
            to_ignore=tuple(sorted(self.ignored - ignored)),
            mask=self.blocked if blocked != self.blocked else None,
        )


@frozen
class ExecSignals:
    """The few calls a launcher's child makes so that its ``execve`` gives
    :class:`CallerSignals` (computed before the fork, applied after it)."""

    to_default: tuple[int, ...]
    to_ignore: tuple[int, ...]
    mask: frozenset[int] | None

    def apply(self) -> None:
        for sig in self.to_default:
            signal.signal(sig, signal.SIG_DFL)
        for sig in self.to_ignore:
            signal.signal(sig, signal.SIG_IGN)
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


#: the guest mem fds the supervisor keeps open, at most (an LRU: see pt.GuestMemory)
MEM_FDS_MAX = 1024


def _raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the caller's limits.

    The guest gets the caller's limits back before its exec. The supervisor's
    own fds (a mem fd per address space, bounded by :data:`MEM_FDS_MAX` and half
    the limit) then never decide whether a large guest tree survives.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            raised = hard
    if raised == resource.RLIM_INFINITY:
        raised = 2 * MEM_FDS_MAX
    pt.set_fd_budget(min(MEM_FDS_MAX, raised // 2))
    return soft, hard


#: /dev/tty: whoever opens it gets its own controlling terminal
_DEV_TTY = os.makedev(5, 0)


def _guest_tty(tid: int, flags: int) -> int:
    """An open of the guest's controlling terminal (what ``/dev/tty`` is to it: ours
    would be the supervisor's), by its device node; ENXIO when it has none, as the
    kernel says. A pty's (``/dev/pts/N``) and a virtual console's or serial line's."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as f:
            tty_nr = int(f.read().rsplit(b")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        raise OSError(errno.ENXIO, "no controlling terminal") from None
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        node = f"/dev/pts/{(major - 136) * 256 + minor}"
    elif major == 4:
        node = f"/dev/tty{minor}" if minor < 64 else f"/dev/ttyS{minor - 64}"
    else:
        raise OSError(errno.ENXIO, "no controlling terminal we can name")
    fd = os.open(node, flags)
    if os.fstat(fd).st_rdev != os.makedev(major, minor):
        os.close(fd)
        raise OSError(errno.ENXIO, "the terminal's node is not its device")
    return fd


#: the signals whose default action is to do nothing (a traced task has them queued)
_DEFAULT_IGNORED = sum(1 << (s - 1) for s in (signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH,
                                              signal.SIGCONT))


def _signal_waits(tid: int) -> bool:
    """Whether a signal is pending for ``tid`` that it neither blocks nor ignores, and that
    would do something: caught, or one whose default action is not to do nothing."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if line[:3] in (b"Sig", b"Shd"))
        pending = int(fields[b"SigPnd"], 16) | int(fields[b"ShdPnd"], 16)
        acting = int(fields[b"SigCgt"], 16) | ~_DEFAULT_IGNORED
        return bool(pending & ~int(fields[b"SigBlk"], 16) & ~int(fields[b"SigIgn"], 16)
                    & acting)
    except (OSError, KeyError, ValueError):
        return False


def _userns(pid: int | str) -> str | None:
    """The user namespace of ``pid`` (``/proc/PID/ns/user``; None when gone)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _creds(pid: int | str) -> bytes | None:
    """The credential lines (Uid, Gid, Groups, CapEff) of ``/proc/PID/status``."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 8192)
        finally:
            os.close(fd)
    except OSError:
        return None
    return b"\n".join(line for line in text.split(b"\n")
                      if line.startswith((b"Uid:", b"Gid:", b"Groups:", b"CapEff:")))


def _privileged() -> bool:
    """Whether this process has any capability (root): a guest may then have dropped
    some, or changed user, and an open made by us would not be one it could make."""
    own = _creds("self") or b""
    cap = next((line for line in own.split(b"\n") if line.startswith(b"CapEff:")), b"0 0")
    return os.geteuid() == 0 or int(cap.split()[1], 16) != 0


class _FifoWait:
    """A guest's blocking FIFO open, waiting in a thread for the other end."""

    __slots__ = ("done", "flags", "held", "ident", "interrupted", "listener", "lock", "tid")

    def __init__(self, listener: Listener, ident: int, held: int, flags: int, tid: int) -> None:
        self.listener, self.ident, self.held, self.flags = listener, ident, held, flags
        self.tid = tid
        self.lock = threading.Lock()
        self.done = False
        self.interrupted = False

    def end_if_gone(self) -> None:
        """End the wait when the guest's call has gone (its task was killed), or when a
        signal it does not block waits for it (EINTR then, as natively without
        SA_RESTART: a traced task's wait ends only for SIGKILL, so a SIGTERM or an
        alarm would wait for the FIFO's other end forever): we open the other end
        ourselves without blocking, and the thread's answer finds no call, or says
        EINTR."""
        with self.lock:
            if self.done:
                return
            if self.listener.valid(self.ident):
                if not _signal_waits(self.tid):
                    return
                self.interrupted = True
            other = os.O_WRONLY if self.flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDONLY
            with contextlib.suppress(OSError):
                os.close(os.open(f"/proc/self/fd/{self.held}",
                                 other | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY))

    def run(self) -> None:
        """The thread's: open the FIFO ``held`` (our non-blocking fd, or an O_PATH one)
        as the guest asked, blocking until its other end comes, then hand it over and
        answer.

        The reopen goes through ``/proc/self/fd/N`` (the object checked, no path
        walk). Natively the open waits the same way; until it is answered, only a
        fatal signal ends the guest's wait (WAIT_KILLABLE_RECV). Our non-blocking
        reader, kept until then, lets a writer's open through as the guest's own
        reader would.
        """
        lfd, ident, flags = self.listener.fd, self.ident, self.flags
        buf, resp = bytearray(notify.ADDFD.size), bytearray(notify.RESP.size)
        try:
            try:
                fd = os.open(f"/proc/self/fd/{self.held}",
                             (flags & ~_NOT_ON_REOPEN) | os.O_CLOEXEC | os.O_NOCTTY)
            except OSError as exc:
                notify.send(lfd, resp, ident, 0, exc.errno or errno.EIO, False)
                return
            try:
                if self.interrupted:
                    notify.send(lfd, resp, ident, 0, errno.EINTR, False)
                    return
                ret = notify.send_fd(lfd, buf, ident, fd, bool(flags & abi.O_CLOEXEC))
                if ret < 0 and ret != -errno.ENOENT:
                    notify.send(lfd, resp, ident, 0, -ret, False)
            finally:
                os.close(fd)
        finally:
            with self.lock:
                self.done = True
                os.close(self.held)


class GuestView:
    """The :class:`~interposer.ports.Guest` port for one stopped thread."""

    __slots__ = ("space", "tgid", "tid")

    def __init__(self, tid: int, tgid: int, space: MemSpace) -> None:
        self.tid = tid
        self.tgid = tgid
        self.space = space
        space.mem.use(tid)

    def read_path(self, addr: int) -> str:
        raw = self.space.mem.read_cstring(addr)
        if raw is None:
            raise OSError(errno.ENAMETOOLONG, "path too long")
        return os.fsdecode(raw)

    def read(self, addr: int, size: int) -> bytes:
        data = self.space.mem.read(addr, size)
        if len(data) != size:
            raise OSError(errno.EFAULT, "bad address")
        return data

    def fd_target(self, fd: int) -> str | None:
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/{self.tgid}/fd/{fd}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Open but closed to us (a non-dumpable process, another uid): not "not open"
            raise OSError(errno.EACCES, f"fd {fd} of guest {self.tgid} cannot be read") from exc

    def fd_writable(self, fd: int) -> bool:
        flags = _proc_octal(f"/proc/{self.tgid}/fdinfo/{fd}", b"flags:")
        return flags is not None and flags & os.O_ACCMODE != os.O_RDONLY

    def fd_path_only(self, fd: int) -> bool:
        flags = _proc_octal(f"/proc/{self.tgid}/fdinfo/{fd}", b"flags:")
        return flags is not None and bool(flags & os.O_PATH)

    def fd_pid(self, fd: int) -> int | None:
        if fd < 0:
            return None
        try:
            with open(f"/proc/{self.tgid}/fdinfo/{fd}", "rb") as f:
                for line in f:
                    if line.startswith(b"Pid:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def host_cwd(self) -> str:
        return os.readlink(f"/proc/{self.tid}/cwd")

    def umask(self) -> int:
        umask = _proc_octal(f"/proc/{self.tid}/status", b"Umask:")
        return 0o022 if umask is None else umask

    def open_fds(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(f"/proc/{self.tgid}/fd")]
        except OSError:
            return []

    def touches_scratch(self, addr: int, length: int) -> bool:
        end = addr + max(length, 1)
        return addr < SCRATCH_BASE + SCRATCH_SIZE and end > SCRATCH_BASE


class Supervisor:
    """Runs one guest command tree to completion; see the module docstring."""

    def __init__(
        self,
        env: Env,
        compiled: CompiledFilter,
        on_exec: Callable[[Proc], str | None] | None = None,
    ) -> None:
        self.env = env
        self.filter = compiled
        self._host_fds = Gate.HOST in compiled.gates  # Need.HOST_FD rows: every process
        self.on_exec = on_exec
        self.threads: dict[int, Thread] = {}
        self.procs: dict[int, Proc] = {}
        self.early: dict[int, int] = {}  # new children whose first stop (status) came first
        self.main_pid = 0
        self.exit_status: int | None = None
        #: the signal the main guest died of (None: it exited, or runs on)
        self.exit_signal: int | None = None
        self.stops = 0
        #: stop ``synthfs`` itself while the main guest is stopped (job control: see
        #: :meth:`_stop_with_guest`); its caller catches SIGTSTP when it sets this
        self.job_control = False
        #: phase timers (ns), kept only when profiling (``synthfs run --stats FILE``)
        self.stats: dict[str, int] | None = None
        #: ``synthfs run -v``: one strace-like line per handled call (None: nothing formatted)
        self.tracer: Tracer | None = None
        #: a signal sent to the guests: a call served for long gives up and is made again
        self.interruption = Interruption()
        #: the notify engine's listener, taken from the guest at spawn (None: ptrace only)
        self.listener: Listener | None = None
        #: a privileged supervisor's credentials: an open it makes for a guest with others
        #: is refused (None: unprivileged, a guest cannot hold other credentials). Read
        #: only for a process marked ``own_creds`` (a setuid-family call, or other
        #: credentials seen at an exec): /proc/PID/status costs tens of µs per open
        self._creds = _creds("self") if _privileged() else None
        self._told_creds = False
        #: our user namespace: a guest in another (unshare, clone or setns with
        #: CLONE_NEWUSER: untraced calls) holds no capability over what ours can open
        self._userns = _userns("self")
        #: FIFO opens waiting in a thread for the other end: see :meth:`_wait_fifo`
        self._fifo_waits: list[_FifoWait] = []
        #: called at the main guest's exit stop, before its parent can see it exit (the
        #: warm start: the user's shell is its parent, not this process)
        self.at_main_exit: Callable[[], None] | None = None

    # -- launch ------------------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        signals: CallerSignals | None = None,
    ) -> int:
        """Fork the guest, seize it, then let it set the caller's signals, load the filter, exec.

        ``signals`` (default: this process's at the call) are what the guest starts with.
        Returns its pid.
        """
        compiled = self.filter
        at_exec = (signals or CallerSignals.of_caller()).for_exec()
        caller_files = _raise_fd_limit()
        seized, go = os.pipe()
        notify = compiled.engine is Engine.NOTIFY
        # the listener fd's number, child to supervisor; the go-ahead to exec, back
        handoff_r, handoff_w = os.pipe() if notify else (-1, -1)
        taken_r, taken_w = os.pipe() if notify else (-1, -1)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(go)
                if notify:
                    os.close(handoff_r)
                    os.close(taken_w)
                    handoff_r = taken_r
                # Nothing runs before we are traced: the byte comes once we are seized,
                # and EOF without it means the supervisor is gone (never run untraced).
                if os.read(seized, 1) != b"s":
                    os._exit(127)
                os.close(seized)
                # Traced from here: a Ctrl-C now is the guest's, delivered by the wait loop.
                at_exec.apply()
                resource.setrlimit(resource.RLIMIT_NOFILE, caller_files)  # the caller's
                # No core dumps: the kernel writes them itself, unchecked (into a cwd the
                # policy may not let the guest write, replacing a `core` there), and a
                # dump of a pinned app holds what only it was allowed to read.
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                listener = compiled.load()
                if listener >= 0:
                    # The notify engine: the supervisor takes the listener (pidfd_getfd)
                    # before any notified call can come; it is close-on-exec. Only
                    # write and read run here (neither is trapped).
                    os.write(handoff_w, listener.to_bytes(4, "little"))
                    if os.read(handoff_r, 1) != b"g":
                        os._exit(127)
                os.execvpe(argv[0], list(argv), env if env is not None else os.environ)  # noqa: S606
            except FileNotFoundError:
                os.write(2, f"synthfs run: {argv[0]}: command not found\n".encode())
                os._exit(127)
            except PermissionError:
                os.write(2, f"synthfs run: {argv[0]}: permission denied\n".encode())
                os._exit(126)
            except BaseException as exc:
                os.write(2, f"synthfs run: cannot start {argv[0]}: {exc}\n".encode())
                os._exit(127)
            os._exit(127)
        os.close(seized)
        try:
            pt.seize(pid)
        except pt.PtraceError as exc:
            os.close(go)  # the child reads EOF and exits
            os.waitpid(pid, 0)
            why = "PTRACE_SEIZE was refused (is synthfs itself being traced?)"
            raise PermissionError(exc.errno or errno.EPERM, why) from None
        os.write(go, b"s")
        os.close(go)
        self._track_main(pid)
        if notify:
            os.close(handoff_w)
            os.close(taken_r)
            try:
                self.listener = self._take_listener(pid, handoff_r)
                if self.listener is not None:
                    os.write(taken_w, b"g")
            finally:
                os.close(handoff_r)
                os.close(taken_w)  # the child execs now (or reads EOF and exits)
        return pid

    def _track_main(self, pid: int) -> None:
        self.main_pid = pid
        proc = Proc(tgid=pid, fs=FsState())
        self.procs[pid] = proc
        self.threads[pid] = Thread(pid, proc, None)

    def adopt(self, pid: int, alive: Callable[[], bool], conn: int, go: bytes) -> None:
        """Seize ``pid``, a launcher that is not our child (the warm start's client), and
        let it load the filter and exec.

        ``alive`` says whether the process that asked is still the one ``pid`` names
        (its pidfd: a pid reused after it died would be another process); ``conn``
        is its socket: ``go`` goes there once it is seized, and under the notify
        engine its listener's fd number comes back, as from :meth:`spawn`'s child.
        Its signals, limits and terminal stay its own: it is the user's process.
        """
        _raise_fd_limit()
        try:
            pt.seize(pid)
        except pt.PtraceError as exc:
            why = "PTRACE_SEIZE was refused (is the client traced already?)"
            raise PermissionError(exc.errno or errno.EPERM, why) from None
        if not alive():  # gone, and its pid another process's since: not ours to touch
            pt.detach(pid)
            raise ProcessLookupError(errno.ESRCH, "the client went away before it was seized")
        with contextlib.suppress(OSError):  # no core dumps, as spawn's child sets
            resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
        self._track_main(pid)
        os.write(conn, go)
        if self.filter.engine is Engine.NOTIFY:
            self.listener = self._take_listener(pid, conn)
            if self.listener is not None:
                os.write(conn, b"g")

    def _take_listener(self, pid: int, pipe: int) -> Listener | None:
        """Read the child's listener fd number and take a copy of the fd (pidfd_getfd),
        serving its ptrace stops meanwhile (a signal for it); None when it died first
        (its exit status says why), or the copy failed (the child is killed)."""
        got = b""
        poller = select.poll()
        poller.register(pipe, select.POLLIN)
        while len(got) < 4:
            if poller.poll(50):
                chunk = os.read(pipe, 4 - len(got))
                if not chunk:
                    return None  # it exited (load failed: it said why on stderr)
                got += chunk
                continue
            waited, status = os.waitpid(pid, pt.WALL | os.WNOHANG)
            if waited:
                self._dispatch(pid, status)
                if pid not in self.threads:
                    return None
        try:
            fd = notify.take_listener(pid, int.from_bytes(got, "little"))
        except OSError as exc:
            log.error("cannot take the guest's seccomp listener: %s", exc)
            pt.kill(pid)
            return None
        os.set_inheritable(fd, False)
        return Listener(fd)

    # -- the wait loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Follow the guest tree until every process has exited; the main guest's status."""
        if self.stats is not None:
            self.stats.update(
                dict.fromkeys(
                    (
                        "seccomp_stops",
                        "exit_stops",
                        "rewritten",
                        "skipped",
                        "notifications",
                        "at_signal",
                        "decode_ns",
                        "handler_ns",
                        "apply_ns",
                        "wall_ns",
                    ),
                    0,
                )
            )
            started = time.perf_counter_ns()
        if self.listener is not None:
            self._run_both(self.listener)
        else:
            while self.threads:
                ready = self._ready_stops()
                if not ready:
                    break
                self._serve_stops(ready)
        if self.stats is not None:
            self.stats["stops"] = self.stops
            self.stats["wall_ns"] = time.perf_counter_ns() - started
        return self.exit_status if self.exit_status is not None else 1

    def _serve_stops(self, ready: list[tuple[int, int]]) -> None:
        for pid, status in ready:
            self.stops += 1
            try:
                self._dispatch(pid, status)
            except pt.PtraceError as exc:
                # The thread vanished (killed) between its stop and our request.
                if exc.errno != errno.ESRCH:
                    raise

    def _run_both(self, listener: Listener) -> None:
        """The one loop of the notify engine: ptrace stops and notifications.

        ``poll`` over the listener and a ``signalfd`` of SIGCHLD (blocked in this
        thread: the kernel sends it to the tracer at every stop and exit of a
        tracee); SIGCHLD readable, or a quiet second, drains ``waitpid(WNOHANG)``.
        One thread serves both, as the ptrace loop did: handlers, the agent
        connection and the namespace state stay single-threaded, ptrace requests
        come from the tracer thread, and no guest tid can be reused while a
        notification is served (a traced task stays a zombie until this loop
        reaps it), so a pid read from a notification names its task. A thread for
        the listener instead would need a lock around every handler and a GIL
        hand-off per call.
        """
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        sfd = notify.signalfd_of(signal.SIGCHLD)
        poller = select.poll()
        poller.register(sfd, select.POLLIN)
        poller.register(listener.fd, select.POLLIN)
        lfd = listener.fd
        note = notify.Notification()
        try:
            self._serve_stops(self._ready_stops(block=False) or [])
            while self.threads:
                events = poller.poll(100 if self._fifo_waits else 1000)
                if self._fifo_waits:
                    self._end_fifo_waits()
                drain = not events  # a quiet second: look all the same
                for fd, ev in events:
                    if fd == lfd:
                        if ev & select.POLLIN:
                            if listener.recv(note):
                                self._on_notification(listener, note)
                        elif ev & (select.POLLHUP | select.POLLERR):
                            poller.unregister(lfd)  # no task uses the filter any more
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(sfd, 4096)
                        drain = True
                if drain:
                    ready = self._ready_stops(block=False)
                    if ready is None:
                        break  # no child left
                    self._serve_stops(ready)
        finally:
            os.close(sfd)
            listener.close()
            self.listener = None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _on_notification(self, listener: Listener, n: notify.Notification) -> None:
        """Serve one notified call: the row's handler, then an answer; never a ptrace stop.

        The handler reads the guest (its memory through the address space's
        ``/proc/PID/mem``, its cwd and fds through ``/proc``); ``ID_VALID`` then
        says whether all that was the notifying task's (no answer otherwise). A
        :class:`Return`'s bytes are stored with ``process_vm_writev`` (a page
        the guest cannot write gets EFAULT, as from the kernel), then the value
        is sent. The kernel runs the call itself (``CONTINUE``) only when the
        handler says so for a call that names no path (an fstat of a host fd).
        """
        stats = self.stats
        t0 = time.perf_counter_ns() if stats is not None else 0
        ident, tid, nr = n.id, n.pid, n.nr
        t = self.threads.get(tid)
        if t is None:
            # Not seen yet: every new thread's first stop is served before it runs,
            # so this is a task gone (pid reused) or a bug: never an answer on a guess.
            if listener.valid(ident):
                _handler_failures.warning("notified call %d from unknown task %d: EPERM", nr, tid)
                listener.answer(ident, error=errno.EPERM)
            return
        spec = BY_NR.get(nr)
        if not t.started or t.space is None:
            listener.answer(ident, cont=True)  # the launcher's own calls before its exec
            return
        if spec is None or spec.handler is None or spec.channel is not Channel.NOTIFY:
            listener.answer(ident, error=errno.ENOSYS)  # the filter notifies NOTIFY rows only
            return
        needs = spec.needs
        if needs is not Need.ALWAYS and not self._may_need(t.proc, needs):
            if stats is not None:
                stats["skipped"] += 1
            listener.answer(ident, cont=True)  # an fd call that names no path
            return
        call = Call(nr, spec.name, n.args, GuestView(tid, t.proc.tgid, t.space), t.proc)
        t1 = time.perf_counter_ns() if stats is not None else 0
        while True:
            served = self._handle(spec, call)
            if served is not None:
                result = served
                break
            # A signal for the guests: once received, the call's wait ends only for a
            # fatal signal (WAIT_KILLABLE_RECV), so it is served (once per signal gives up)
            # unless it is gone.
            if not listener.valid(ident):
                return
        t2 = time.perf_counter_ns() if stats is not None else 0
        if not listener.valid(ident):
            # interrupted or dead: what the handler read may be another task's
            if isinstance(result, RunChecked):
                _released(result.release, tid)
            return
        # -v: the call as it was made (the guest runs on once answered)
        shown = self.tracer.entry(call, spec) if self.tracer is not None else None
        if isinstance(result, Return):
            result = _store_writes(tid, result)
        if isinstance(result, Return):
            listener.answer(ident, value=result.value)
        elif isinstance(result, Fail):
            listener.answer(ident, error=result.errno)
        elif isinstance(result, RunChecked) and result.nr in (NR_OPENAT, NR_OPENAT2):
            if t.proc.own_rules or _userns(tid) != self._userns or (
                    t.proc.own_creds and self._creds is not None
                    and _creds(tid) != self._creds):
                result = self._not_as_guest(listener, ident, t.proc.tgid, tid, result)
            else:
                opened = self._open_for_guest(listener, ident, call, result)
                result = Return(opened) if opened >= 0 else Fail(-opened)
        elif isinstance(result, Continue) and Role.PATH not in spec.args:
            listener.answer(ident, cont=True)
        elif isinstance(result, Kill):
            log.error("killing guest %d: %s", t.proc.tgid, result.reason)
            pt.kill(t.proc.tgid)
        else:  # another RunChecked, or CONTINUE of a checked path: not on this channel
            _handler_failures.warning("handler %s gave %s on the notify channel (pid %d): "
                                      "EIO", spec.handler.__name__, type(result).__name__, tid)
            if isinstance(result, RunChecked):
                _released(result.release, tid)
            listener.answer(ident, error=errno.EIO)
        if self.tracer is not None and shown is not None:
            value = result.value if isinstance(result, Return) else (
                -result.errno if isinstance(result, Fail) else 0)
            self.tracer.emit(tid, shown, _outcome(value & _MASK64, spec.name))
        if stats is not None:
            t3 = time.perf_counter_ns()
            stats["notifications"] += 1
            stats["decode_ns"] += t1 - t0
            stats["handler_ns"] += t2 - t1
            stats["apply_ns"] += t3 - t2

    def _open_for_guest(
        self, listener: Listener, ident: int, call: Call, run: RunChecked
    ) -> int:
        """Open what an open handler checked, ourselves, and hand it to the guest (ADDFD).

        ``run`` is the call the ptrace engine would let the kernel make in the
        guest: ``openat2`` of the checked real path with RESOLVE_NO_SYMLINKS (a
        link swapped in after the check fails the walk), or ``openat`` of a
        pinned /proc path. The supervisor makes it instead, with the guest's
        umask for a create, O_NOCTTY (no controlling terminal for synthfs) and
        O_NONBLOCK (a FIFO must not block the loop: one opened for a guest that
        did not ask for it is reopened blocking by a thread,
        :meth:`_FifoWait.run`), then ``ADDFD`` + ``FLAG_SEND`` installs the fd
        at the guest's lowest free number, close-on-exec as its flags say, and
        answers with it in one step. The handler's ``after`` sees that number
        (or ``-errno``), as at the ptrace exit stop. The guest fd or ``-errno``.
        """
        path = run.args[1]
        assert isinstance(path, Scratch)
        if run.nr == NR_OPENAT2:
            how = run.args[2]
            assert isinstance(how, Scratch)
            flags, mode, resolve = abi.OPEN_HOW.unpack(how.data[: abi.OPEN_HOW.size])
        else:
            flags, mode, resolve = int(run.args[2]), int(run.args[3]), 0  # type: ignore[arg-type]
        text = os.fsdecode(path.data.rstrip(b"\0"))
        blocking = not flags & (abi.O_NONBLOCK | abi.O_PATH)
        # (openat2 refuses O_PATH with any flag O_PATH does not keep: O_NOCTTY included)
        mine = flags | abi.O_CLOEXEC | (0 if flags & abi.O_PATH else abi.O_NOCTTY) | (
            abi.O_NONBLOCK if blocking else 0)
        creating = flags & abi.O_CREAT or flags & abi.O_TMPFILE == abi.O_TMPFILE
        umask = os.umask(call.guest.umask()) if creating else -1
        fd = -1
        ret = 0
        gone = False
        try:
            fd = linux.openat2(abi.AT_FDCWD, text, mine, resolve, mode)
        except OSError as exc:
            ret = -(exc.errno or errno.EIO)
        finally:
            if umask >= 0:
                os.umask(umask)
        if fd < 0 and ret == -errno.ENXIO and blocking:
            fd = self._fifo_pin(text, flags, resolve)  # a FIFO with no reader yet
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_TTY:
                    os.close(fd)  # our controlling terminal: the guest's own is another
                    fd = -1
                    fd = _guest_tty(call.guest.tid, mine)
                    st = os.fstat(fd)
                kind = stat.S_IFMT(st.st_mode) if blocking else 0
                if kind == stat.S_IFIFO:
                    # (the pins ``release`` lets go of are not needed: our fd holds it)
                    ret = self._wait_fifo(listener, ident, fd, flags, call.guest.tid)
                    fd = -1  # the wait's now
                else:
                    if blocking:
                        fcntl.fcntl(fd, fcntl.F_SETFL, flags & _SETFL)
                    ret = listener.send_fd(ident, fd, bool(flags & abi.O_CLOEXEC))
                    if ret == -errno.ENOENT:
                        gone = True  # (nothing was installed)
            except OSError as exc:
                ret = -(exc.errno or errno.EIO)
            finally:
                if fd >= 0:
                    os.close(fd)
        if ret < 0 and not gone:
            listener.answer(ident, error=-ret)
        _released(run.release, call.guest.tid)
        if run.after is not None:
            outcome = run.after(ret)
            if outcome is not None:
                _handler_failures.warning("an open's after gave %s on the notify channel: "
                                          "ignored (the fd is the guest's)", outcome)
        return ret

    def _not_as_guest(self, listener: Listener, ident: int, tgid: int, tid: int,
                      run: RunChecked) -> Fail:
        """A guest whose credentials are not ours (it changed user, dropped groups or
        capabilities under a root synthfs, entered a user namespace of its own), or that
        restricted itself with Landlock: an
        open we made would be one it could not make (a root-only file read by a process
        that became nobody, a file outside its own Landlock domain). Refused, EACCES;
        under ptrace the kernel opens in the guest's own context."""
        if not self._told_creds:
            self._told_creds = True
            log.warning("pid %d runs with other credentials or rules than synthfs (setuid, "
                        "setgroups, capset, landlock_restrict_self, a user namespace of its "
                        "own): --engine notify cannot "
                        "open files as it, its opens are refused (EACCES); --engine ptrace "
                        "opens them in its own context", tgid)
        if listener.valid(ident):
            listener.answer(ident, error=errno.EACCES)
        _released(run.release, tid)
        if run.after is not None:
            run.after(-errno.EACCES)
        return Fail(errno.EACCES)

    def _wait_fifo(self, listener: Listener, ident: int, held: int, flags: int, tid: int
                   ) -> int:
        """Wait for a FIFO's other end in a thread (:meth:`_FifoWait.run`), which
        answers; 0, or -errno when no thread can wait (the guest's open fails).

        Before each new wait and every 0.1 s of the loop while some wait, the waits
        whose guest call has gone (a killed task) or that a signal waits for are
        ended (:meth:`_FifoWait.end_if_gone`) and the finished ones forgotten:
        no thread or fd outlives its call for long; at most :data:`FIFO_WAITS` wait
        at once (ENFILE beyond: each holds a thread and two fds of the supervisor).
        """
        self._end_fifo_waits()
        if len(self._fifo_waits) >= FIFO_WAITS:
            os.close(held)
            return -errno.ENFILE
        wait = _FifoWait(listener, ident, held, flags, tid)
        try:
            threading.Thread(target=wait.run, name="synthfs-fifo", daemon=True).start()
        except RuntimeError:  # no thread to be had (a pids limit): the open fails
            os.close(held)
            return -errno.EAGAIN
        self._fifo_waits.append(wait)
        return 0

    def _end_fifo_waits(self) -> None:
        for wait in self._fifo_waits:
            wait.end_if_gone()
        self._fifo_waits = [w for w in self._fifo_waits if not w.done]

    @staticmethod
    def _fifo_pin(text: str, flags: int, resolve: int) -> int:
        """An O_PATH fd on ``text`` when it is a FIFO (an O_WRONLY open got ENXIO: no
        reader yet), for :meth:`_FifoWait.run`; -1 otherwise (the ENXIO stands: a socket)."""
        try:
            fd = linux.openat2(abi.AT_FDCWD, text, abi.O_PATH | abi.O_CLOEXEC
                               | (flags & abi.O_NOFOLLOW), resolve)
        except OSError:
            return -1
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        return -1

    def _may_need(self, proc: Proc, needs: Need) -> bool:
        """Whether ``proc`` can hold what a row of ``needs`` looks for (else: skip it)."""
        if needs is Need.HOST_FD:
            needs = Need.ALWAYS if self._host_fds else Need.SYNTH_FD
        if needs is Need.ALWAYS:
            return True
        if needs is Need.SYNTH_FD:
            return proc.synthetic
        if needs is Need.WROTE:
            return proc.wrote
        return proc.fs.cwd is not None

    def _ready_stops(self, block: bool = True) -> list[tuple[int, int]] | None:
        """Every stop the kernel has ready, waiting for the first unless ``block`` is
        False (empty: nothing ready; with ``block``, or None without: no child left).

        ``waitpid(-1)`` reports the tracees in a fixed order (the newest first), so
        serving one stop per wait let a thread that stops again at once be served
        again and again while older ones starved (issue #20: 83 calls for a main
        thread, 43,000 for a newer one). Each stop of a batch is served once before
        the next batch is collected: a round robin over the threads that are ready.
        With a single thread there is nobody to be fair to, and no extra call.
        """
        ready: list[tuple[int, int]] = []
        if block:
            try:
                ready.append(os.waitpid(-1, pt.WALL))
            except ChildProcessError:
                return []
        if not block or len(self.threads) > 1:
            while True:
                try:
                    pid, status = os.waitpid(-1, pt.WALL | os.WNOHANG)
                except ChildProcessError:
                    if not ready and not block:
                        return None
                    break
                if pid == 0:
                    break
                ready.append((pid, status))
        return ready

    def _dispatch(self, pid: int, status: int) -> None:
        if not (os.WIFSTOPPED(status) and status >> 16 == pt.EVENT_EXIT):
            self.interruption.seen(pid)  # dead of a signal, or past it (not dying of it)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(pid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        t = self.threads.get(pid)
        if t is None:
            if event == pt.EVENT_EXIT:
                # A child whose parent died in clone (exit_group, SIGKILL) before its
                # event: that event never comes, and this child is on its way out. Left
                # in its exit stop it would keep its zombie leader (and us) waiting.
                self.early.pop(pid, None)
                pt.cont(pid)
                return
            # A new child's first stop can come before its parent's fork event.
            self.early[pid] = status
            return
        if event == pt.EVENT_STOP:
            self._on_stop_event(t, sig)
            return
        if sig == signal.SIGTRAP:
            if event == pt.EVENT_SECCOMP:
                self._on_seccomp(t)
            elif event in (pt.EVENT_FORK, pt.EVENT_VFORK, pt.EVENT_CLONE):
                self._on_clone(t)
            elif event == pt.EVENT_EXEC:
                self._on_exec(t)
            elif event:
                if event == pt.EVENT_EXIT and pid == self.main_pid and self.at_main_exit:
                    self.at_main_exit()  # before its parent can see it gone
                pt.cont(pid)
            else:
                pt.cont(pid, signal.SIGTRAP)  # the guest's own SIGTRAP: deliver it
            return
        if sig == _SIGTRAP_SYSCALL:
            self._on_syscall_exit(t)
            return
        if event:
            pt.cont(pid)
            return
        # A signal for the guest: deliver it (a stop signal then makes a group-stop).
        self.interruption.delivered(sig, pid)
        if self.listener is not None:
            self._restart_notified(t)
        self._resume(t, sig)

    def _restart_notified(self, t: Thread) -> None:
        """A signal that interrupted a notified call's wait before the supervisor took it.

        The kernel's wait for the supervisor's answer is interruptible until the
        call is received (WAIT_KILLABLE_RECV covers only what follows), and the
        call then returns ERESTARTSYS, which a handler without SA_RESTART turns
        into EINTR: a stat would fail with EINTR where natively it never does.
        A call without side effects (:data:`_ANSWERED_AT_SIGNAL`) is served here,
        at this signal-delivery stop, through its registers, and returns before
        the handler runs, as natively: a timer firing faster than the supervisor
        takes a notification no longer drops every call (issue #12: 307,000
        signals for 2,000 stats at 50 µs). Any other call (or one whose handler
        gave up, or must run in the kernel) is made ERESTARTNOINTR: the kernel
        restarts it after the handler whatever its flags, as the ptrace engine
        restarts a call it gave up (:meth:`_restart`).
        """
        regs = pt.get_regs(t.tid)
        nr = regs.orig_rax
        if regs.rax != _ERESTARTSYS or nr not in _NOTIFIED_NRS:
            return
        result: Result | None = None
        spec = BY_NR[nr]
        if nr in _ANSWERED_AT_SIGNAL and t.started and t.space is not None and (
                spec.needs is Need.ALWAYS or self._may_need(t.proc, spec.needs)):
            args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
            result = self._handle(spec, Call(nr, spec.name, args,
                                             GuestView(t.tid, t.proc.tgid, t.space), t.proc))
            if isinstance(result, Return):
                result = _store_writes(t.tid, result)
        if isinstance(result, Return):
            regs.rax = result.value & _MASK64
        elif isinstance(result, Fail):
            regs.rax = -result.errno & _MASK64
        else:
            regs.rax = _ERESTARTNOINTR
        if self.stats is not None and isinstance(result, Return | Fail):
            self.stats["at_signal"] += 1
        pt.set_regs(t.tid, regs)

    @staticmethod
    def _resume(t: Thread, sig: int = 0) -> None:
        """Let ``t`` run on (to its syscall's exit stop when a checked copy is in flight)."""
        if t.pending is not None:
            pt.syscall(t.tid, sig)
        else:
            pt.cont(t.tid, sig)

    # -- job control -----------------------------------------------------------------------------

    def _on_stop_event(self, t: Thread, sig: int) -> None:
        """A group-stop (``sig`` is the stop signal), or a stop that is not one.

        The guest was seized, so a stop signal's group-stop is reported as such: the
        thread stays stopped (PTRACE_LISTEN, state ``t``: a traced stop) until a
        SIGCONT, which ends it with another EVENT_STOP (SIGTRAP). A new thread's first
        stop is one of those SIGTRAP ones too.
        """
        if sig not in pt.STOP_SIGNALS:
            t.stopped = 0
            self._resume(t)
            return
        t.stopped = sig
        pt.listen(t.tid)
        # synthfs stops only when every guest thread is stopped (the terminal's Ctrl-Z
        # stops them all): a guest still running may be the one to continue the others
        # (`(sleep 1; kill -CONT $$) & kill -STOP $$`), and it needs the supervisor.
        if (
            self.job_control
            and self.main_pid in self.procs
            and all(o.stopped for o in self.threads.values())
        ):
            self._stop_with_guest(sig)

    def _stop_with_guest(self, sig: int) -> None:
        """Every guest stopped: stop ``synthfs`` too, until a SIGCONT, then continue the main one.

        Natively the job's process would be stopped, and the user's shell would see
        it: the shell waits for ``synthfs``, so ``synthfs`` stops the same way. The
        terminal's Ctrl-Z reaches the guest and ``synthfs`` alike (one process group);
        ``synthfs`` catches SIGTSTP (see :attr:`job_control`), so that it stops after
        its guest, whose own SIGTSTP handler (an editor restoring the screen) runs at
        Ctrl-Z, as natively. The same signal, so the shell reports the same stop; a
        SIGSTOP when the guest moved to another process group (ours may be orphaned,
        where the kernel drops the other three) or when ours is blocked here.
        """
        mine = sig
        if sig != signal.SIGSTOP:
            try:
                elsewhere = os.getpgid(self.main_pid) != os.getpgrp()
            except ProcessLookupError:
                return
            if elsewhere or sig in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
                mine = signal.SIGSTOP
        handler = signal.signal(mine, signal.SIG_DFL) if mine != signal.SIGSTOP else None
        try:
            os.kill(os.getpid(), mine)  # returns once continued
        finally:
            if handler is not None:
                signal.signal(mine, handler)
        # Continued: the shell's fg/bg sent SIGCONT to the guest too (one process group),
        # and this one coalesces with it (the guest cannot take it before we resume it);
        # a SIGCONT to synthfs alone continues the guest as it would natively.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.main_pid, signal.SIGCONT)

    # -- events ----------------------------------------------------------------------------------

    def _on_clone(self, t: Thread) -> None:
        child = pt.event_msg(t.tid)
        regs = pt.get_regs(t.tid)
        nr = regs.orig_rax
        flags = regs.rdi if nr == NR_CLONE else (CLONE_VM if nr == NR_VFORK else 0)
        parent = t.proc
        if flags & CLONE_THREAD:
            proc = parent
        else:
            fs = parent.fs if flags & CLONE_FS else FsState(cwd=parent.fs.cwd)
            proc = Proc(
                tgid=child,
                fs=fs,
                exe=parent.exe,
                argv=parent.argv,
                app=parent.app,
                wrote=parent.wrote,
                synthetic=parent.synthetic,
                dumpable=parent.dumpable,
                own_rules=parent.own_rules,
                own_creds=parent.own_creds,
            )
            if flags & CLONE_FILES:
                # One fd table for two processes: what either opens later is the other's
                # too, and only the opener is marked. Both are looked at from now on.
                for p in (parent, proc):
                    p.synthetic = p.wrote = True
            self.procs[child] = proc
        if flags & CLONE_VM or t.space is None:
            space = t.space
        else:
            space = MemSpace(child, pt.GuestMemory(child))
        self.threads[child] = Thread(child, proc, space, started=t.started)
        first = self.early.pop(child, None)
        if first is not None:
            self._dispatch(child, first)  # its first stop came before this event
        pt.cont(t.tid)

    def _on_exec(self, t: Thread) -> None:
        former = pt.event_msg(t.tid)
        if former != t.tid:
            # A thread other than the leader exec'd: it now has the leader's pid.
            old = self.threads.pop(former, None)
            if old is not None:
                self._drop_pending(old)  # its execve, done
            self._drop_pending(t)  # the leader's call: the exec ended it
        else:
            # The execve (its scratch slot, in an address space now gone or, after a
            # vfork, still the parent's) will have no exit stop: release the slot.
            self._drop_pending(t)
        if t.shown is not None:  # -v: it succeeded
            self._show_exit(t, 0)
        if t.space is not None and t.space.pid == t.tid:
            t.space.mem.close()
        space = MemSpace(t.tid, pt.GuestMemory(t.tid))
        t.space = space
        t.started = True
        self._inject_scratch(t)
        proc = t.proc
        proc.dumpable = 1
        try:
            exe = os.readlink(f"/proc/{t.tid}/exe")
        except OSError:
            exe = ""
        repo = self.env.repo.repo_path_of(exe)
        proc.exe = self.env.ns.guest_path(repo) if repo is not None else exe
        try:
            with open(f"/proc/{t.tid}/cmdline", "rb") as f:
                proc.argv = tuple(os.fsdecode(a) for a in f.read().split(b"\0")[:-1])
        except OSError:
            proc.argv = ()
        if self._creds is not None and not proc.own_creds and _creds(t.tid) != self._creds:
            proc.own_creds = True  # (a capability bounding set dropped before this exec)
        if self.on_exec is not None:
            reason = self.on_exec(proc)
            if reason:
                # The new image has not run an instruction yet: it never will.
                log.error("killing guest %d: %s", proc.tgid, reason)
                pt.kill(proc.tgid)
        pt.cont(t.tid)

    def _inject_scratch(self, t: Thread) -> None:
        """Map the read-only scratch area into a freshly exec'd guest."""
        assert t.space is not None
        tid = t.tid
        regs = pt.get_regs(tid)
        saved = ctypes.create_string_buffer(
            ctypes.string_at(ctypes.addressof(regs), ctypes.sizeof(regs))
        )
        rip = regs.rip
        mem = t.space.mem
        # At the exec stop, execve's own return still overwrites rax: load it in the stub.
        stub = b"\xb8" + NR_MMAP.to_bytes(4, "little") + b"\x0f\x05\xcc"  # mov eax,9; syscall; int3
        original = mem.read(rip, len(stub))
        mem.write(rip, stub)
        regs.rax = NR_MMAP
        regs.orig_rax = _MASK64
        regs.rdi = SCRATCH_BASE
        regs.rsi = SCRATCH_SIZE
        regs.rdx = PROT_READ
        regs.r10 = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
        regs.r8 = _MASK64
        regs.r9 = 0
        pt.set_regs(tid, regs)
        pt.cont(tid)
        deferred = 0
        while True:
            _, status = os.waitpid(tid, pt.WALL)
            if not os.WIFSTOPPED(status):
                self._gone(tid, status)
                raise pt.PtraceError("guest died during set-up", errno=errno.ESRCH, pid=tid)
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGTRAP and status >> 16 == 0:
                break
            if status >> 16 == 0 and sig != signal.SIGTRAP:
                deferred = sig
            pt.cont(tid)
        result = pt.get_regs(tid).rax
        mem.write(rip, original)
        ctypes.memmove(ctypes.addressof(regs), saved, ctypes.sizeof(regs))
        pt.set_regs(tid, regs)
        if result != SCRATCH_BASE:
            err = (-result) & 0xFFF if result > _MASK64 // 2 else 0
            log.error(
                "cannot map the scratch area at %#x in pid %d: %s",
                SCRATCH_BASE,
                tid,
                os.strerror(err) if err else hex(result),
            )
            pt.kill(tid)
            return
        if deferred:
            os.kill(tid, deferred)

    @staticmethod
    def _drop_pending(t: Thread) -> None:
        """A checked call that will have no exit stop (its thread is gone, or an exec
        ended it): its scratch slot back, and what it held let go."""
        p = t.pending
        if p is not None:
            t.pending = None
            p.space.release(p.slot)
            _released(p.release, t.tid)

    def _gone(self, pid: int, status: int) -> None:
        t = self.threads.pop(pid, None)
        if t is not None:
            self._drop_pending(t)
            if t.shown is not None and self.tracer is not None:  # -v: it never returned
                self.tracer.emit(pid, t.shown, "?")
        self.early.pop(pid, None)
        if pid == self.main_pid:
            if os.WIFEXITED(status):
                self.exit_status = os.WEXITSTATUS(status)
            else:
                self.exit_signal = os.WTERMSIG(status)
                self.exit_status = 128 + self.exit_signal
            # The sandbox ends with its main process: no guest is left behind.
            for other in [*self.threads, *self.early]:
                pt.kill(other)
        if t is None:
            return
        proc = t.proc
        if not any(o.proc is proc for o in self.threads.values()):
            self.procs.pop(proc.tgid, None)
            if proc.wrote:
                try:
                    self.env.repo.sync()
                except OSError as exc:
                    log.warning("upload at exit of pid %d failed: %s", proc.tgid, exc)
            if t.space is not None and t.space.pid == pid:
                t.space.mem.close()

    # -- syscalls --------------------------------------------------------------------------------

    def _on_seccomp(self, t: Thread) -> None:
        tid = t.tid
        if not t.started or t.space is None:
            pt.cont(tid)
            return
        stats = self.stats
        t0 = time.perf_counter_ns() if stats is not None else 0
        regs = pt.get_regs(tid)
        nr = regs.orig_rax
        spec = BY_NR.get(nr)
        if spec is None or spec.handler is None:
            pt.cont(tid)  # a guest's own stacked filter asked for TRACE
            return
        needs = spec.needs
        if needs is Need.HOST_FD:
            needs = Need.ALWAYS if self._host_fds else Need.SYNTH_FD
        if needs is not Need.ALWAYS:
            proc = t.proc
            if not (
                proc.synthetic
                if needs is Need.SYNTH_FD
                else proc.wrote
                if needs is Need.WROTE
                else proc.fs.cwd is not None
            ):
                pt.cont(tid)  # this process cannot hold what the handler looks for
                if stats is not None:
                    stats["skipped"] += 1
                return
        call = Call(
            nr,
            spec.name,
            (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9),
            GuestView(tid, t.proc.tgid, t.space),
            t.proc,
        )
        t1 = time.perf_counter_ns() if stats is not None else 0
        result = self._handle(spec, call)
        if result is None:  # a signal came for the guests: they take it first
            self._restart(t, regs)
            return
        if self.tracer is not None:
            self._traced(t, regs, spec, call, result)
            return
        if stats is None:
            self._apply(t, regs, result)
            return
        t2 = time.perf_counter_ns()
        self._apply(t, regs, result)
        t3 = time.perf_counter_ns()
        stats["seccomp_stops"] += 1
        stats["decode_ns"] += t1 - t0
        stats["handler_ns"] += t2 - t1
        stats["apply_ns"] += t3 - t2
        if isinstance(result, RunChecked):
            stats["rewritten"] += 1

    def _handle(self, spec: SyscallSpec, call: Call) -> Result | None:
        """The row's handler on ``call``; None when it gave up for a signal (the guest's
        call is to be made again). An exception is the guest's errno (OSError) or a
        bug, refused with EIO in one line."""
        assert spec.handler is not None
        try:
            with self.interruption.serving(call.guest.tid):
                return spec.handler(call, self.env)
        except Interrupted:
            return None
        except OSError as exc:
            return Fail(exc.errno or errno.EIO)
        except Exception as exc:  # a bug, or a guest doing something unforeseen: one line
            _handler_failures.warning("handler %s failed (pid %d): %s: %s: refusing the call "
                                      "(EIO)", spec.handler.__name__, call.guest.tid,
                                      type(exc).__name__, exc)
            log.debug("handler %s failed", spec.handler.__name__, exc_info=True)
            return Fail(errno.EIO)

    @staticmethod
    def _restart(t: Thread, regs: pt.Regs) -> None:
        """Skip the call and point the guest at its ``syscall`` instruction again with the
        call's number, as the kernel restarts an interrupted call: a pending signal is
        delivered first, then the guest makes the same call."""
        regs.rax = regs.orig_rax
        regs.orig_rax = _MASK64
        regs.rip -= 2  # ``syscall`` is two bytes long
        pt.set_regs(t.tid, regs)
        pt.cont(t.tid)

    def _traced(
        self, t: Thread, regs: pt.Regs, spec: SyscallSpec, call: Call, result: Result
    ) -> None:
        """``-v``: apply ``result`` and show the call with what the guest got (at its
        exit stop when the kernel runs it: a Continue is resumed to its exit for that).
        The phase timers of ``--stats`` do not count these stops."""
        assert self.tracer is not None
        shown = self.tracer.entry(call, spec)
        if isinstance(result, Continue):
            t.shown = shown
            pt.syscall(t.tid)
            return
        if isinstance(result, Kill):
            self.tracer.emit(t.tid, shown, f"? (killed: {result.reason})")
            self._apply(t, regs, result)
            return
        t.shown = shown
        self._apply(t, regs, result)
        if t.pending is None:  # answered here (Return, Fail, or a RunChecked that failed)
            t.shown = None
            self.tracer.emit(t.tid, shown, _outcome(regs.rax, spec.name))

    def _apply(self, t: Thread, regs: pt.Regs, result: Result) -> None:
        tid = t.tid
        if isinstance(result, Continue):
            pt.cont(tid)
            return
        if isinstance(result, Return | Fail):
            if isinstance(result, Return):
                result = _store_writes(tid, result)
            regs.orig_rax = _MASK64
            regs.rax = (result.value if isinstance(result, Return) else -result.errno) & _MASK64
            pt.set_regs(tid, regs)
            pt.cont(tid)
            return
        if isinstance(result, Kill):
            log.error("killing guest %d: %s", t.proc.tgid, result.reason)
            pt.kill(t.proc.tgid)
            pt.cont(tid)
            return
        assert isinstance(result, RunChecked)
        space = t.space
        assert space is not None
        slot = space.alloc()
        if slot is None:
            self._not_run(t, regs, result, errno.EAGAIN)
            return
        base = SCRATCH_BASE + slot * SLOT_SIZE
        blob = bytearray()
        values = [
            _place(arg, base, blob) if isinstance(arg, Scratch) else arg & _MASK64
            for arg in result.args
        ]
        if len(blob) > SLOT_SIZE:
            space.release(slot)
            self._not_run(t, regs, result, errno.ENAMETOOLONG)
            return
        try:
            space.mem.write(base, bytes(blob))
        except OSError:
            space.release(slot)
            self._not_run(t, regs, result, errno.EFAULT)
            return
        saved = (regs.orig_rax, regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
        regs.orig_rax = result.nr
        for name, value in zip(_ARG_REGS, values, strict=False):
            setattr(regs, name, value)
        # (pending first: a task killed before set_regs is gone later, and its pins
        # and slot go then)
        t.pending = Pending(saved, result.after, space, slot, result.release)
        pt.set_regs(tid, regs)
        pt.syscall(tid)

    def _not_run(self, t: Thread, regs: pt.Regs, run: RunChecked, err: int) -> None:
        """A checked call that could not be set up: it ends here, with ``err``."""
        _released(run.release, t.tid)
        if run.after is not None:
            run.after(-err)  # (an open's create is undone)
        self._apply(t, regs, Fail(err))

    def _on_syscall_exit(self, t: Thread) -> None:
        p = t.pending
        tid = t.tid
        if p is None:
            if t.shown is not None:  # -v: a Continue's exit
                self._show_exit(t, pt.get_regs(tid).rax)
            pt.cont(tid)
            return
        if self.stats is not None:
            self.stats["exit_stops"] += 1
        t.pending = None
        p.space.release(p.slot)
        p.space.mem.use(tid)
        regs = pt.get_regs(tid)
        ret = regs.rax
        if ret > _MASK64 // 2:
            ret -= 1 << 64
        _released(p.release, tid)
        outcome = p.after(ret) if p.after is not None else None
        if isinstance(outcome, Return) and outcome.writes:
            try:
                for addr, data in outcome.writes:
                    pt.store(tid, addr, data)
            except OSError:
                outcome = Fail(errno.EFAULT)
        regs.orig_rax = p.saved[0]
        for name, value in zip(_ARG_REGS, p.saved[1:], strict=True):
            setattr(regs, name, value)
        if isinstance(outcome, Return):
            regs.rax = outcome.value & _MASK64
        elif isinstance(outcome, Fail):
            regs.rax = -outcome.errno & _MASK64
        pt.set_regs(tid, regs)
        if t.shown is not None:
            self._show_exit(t, regs.rax)
        pt.cont(tid)

    def _show_exit(self, t: Thread, rax: int) -> None:
        shown, t.shown = t.shown, None
        if self.tracer is not None and shown is not None:
            self.tracer.emit(t.tid, shown, _outcome(rax, shown[0]))

    # -- teardown ----------------------------------------------------------------------------------

    def kill_all(self) -> None:
        for pid in list(self.threads):
            pt.kill(pid)

    def forward(self, sig: int) -> None:
        """Deliver a signal the supervisor received to the main guest."""
        if self.main_pid and self.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.main_pid, sig)
            self.interruption.arm(sig)
