"""The syscall table: the single source of truth for what synthfs does with each syscall.

One :class:`SyscallSpec` row per x86_64 syscall that synthfs does not simply
allow. The seccomp filter (:mod:`interposer.filter`), the dispatcher
(:mod:`interposer.supervisor`), ``synthfs syscalls`` and the consistency test
are all generated from :data:`TABLE`. A syscall absent from the table runs
natively (it takes no path and cannot reach a synthetic object); a syscall
number the table does not know at all (newer than this table) gets ENOSYS, so
a new path syscall is never silently allowed.

A row is a syscall's whole story: its argument roles, the handler function
the supervisor calls (from :mod:`synthfs.interposer.handlers`, one module per
section), its support level, the filter's action and argument conditions, the
policy operations its path is checked for before any lookup (``ops``), the
operation it does on a host path (``host_op``), what it gives on /data where
the repository has no such thing (``on_data``), and what it reaches beyond a
path (``reach``, SECURITY.md's matrix) with the test that shows it.

Roles name what an argument is, as nsjail's ``syscall_defs.h`` does; handlers
decode arguments by role, so ``open``, ``openat``, ``openat2`` and ``creat``
end in one shared operation. The numbers are the kernel's
(:mod:`synthfs.interposer.numbers`), so handlers can name other syscalls
without importing this table, which imports them.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable

from attrs import field, frozen

from synthfs.interposer import handlers as h
from synthfs.interposer.actions import Result
from synthfs.interposer.numbers import (
    F_SETLEASE,
    F_SETOWN,
    F_SETOWN_EX,
    FIOSETOWN,
    NR,
    REFUSED_IOCTLS,
    SIOCSPGRP,
    TIOCSPGRP,
)
from synthfs.interposer.ports import Call, Env

Handler = Callable[[Call, Env], Result]

__all__ = [
    "BY_NAME",
    "BY_NR",
    "MAX_KNOWN_NR",
    "TABLE",
    "Action",
    "Channel",
    "Cond",
    "Gate",
    "Level",
    "Need",
    "Reach",
    "Role",
    "SyscallSpec",
]


class Role(enum.StrEnum):
    PATH = "path"  # a path the guest names (copied once, resolved by us)
    PATH2 = "path2"  # second path (rename, link)
    TEXT = "text"  # a string that is not resolved (symlink target, xattr name)
    DIRFD = "dirfd"
    DIRFD2 = "dirfd2"
    FD = "fd"
    FLAGS = "flags"  # open flags
    ATFLAGS = "atflags"  # AT_* flags
    MODE = "mode"
    OUT = "out"  # a buffer the kernel (or we) fill
    IN = "in"  # a buffer the guest passes in (struct)
    HOW = "how"  # openat2's struct open_how (its open flags, mode and RESOLVE_* flags)
    SIZE = "size"
    INT = "int"
    ADDR = "addr"
    SOCKADDR = "sockaddr"
    FAMILY = "family"  # a socket's address family (AF_*)


class Level(enum.StrEnum):
    """How far synthfs supports a syscall."""

    FULL = "full"  # emulated on the synthetic tree, checked on the host
    FD = "fd"  # traced to recognise synthetic fds; host fds run natively
    GUARD = "guard"  # traced only when its arguments could touch what synthfs protects
    HOST = "host-only"  # checked on the host; refused (errno) on the synthetic tree
    DENIED = "denied"  # always refused with an errno
    KILL = "kill"


class Need(enum.Enum):
    """What a process must have done before a traced fd syscall can concern /data.

    The filter traps these syscalls in every process; the supervisor resumes
    the stop at once, without decoding, when the process cannot hold what the
    handler looks for.
    """

    ALWAYS = "always"
    SYNTH_FD = "synthetic fd"  # the process opened a synthetic file or directory
    WROTE = "written fd"  # the process opened a synthetic file for writing
    SYNTH_CWD = "synthetic cwd"  # its cwd is on /data
    #: a synthetic fd, or any fd when the policy restricts the host (Gate.HOST): a
    #: read-only host fd must not be enough to change a file the policy protects
    HOST_FD = "synthetic fd, or [host] rules"


class Gate(enum.Enum):
    """When the filter includes a row at all: rows only some policies need cost
    nothing under the others (the filter is built per run, from the policy)."""

    ALWAYS = "always"
    NETWORK = "network restricted"  # [host] network = "deny" | "loopback"
    SEND = "network or host restricted"  # the above, or [host] read/write lists
    HOST = "host restricted"  # [host] present (getsockname; Need.HOST_FD reads it too)


class Reach(enum.Flag):
    """What a syscall can name or change beyond its path, fd and socket address
    arguments (those come from its roles): the columns of SECURITY.md's matrix."""

    NONE = 0
    PID = enum.auto()  # names a pid, tid or process group
    MEMORY = enum.auto()  # names memory of the caller (an address range)
    DEVICE = enum.auto()  # names or makes a device
    TERMINAL = enum.auto()  # acts on a terminal
    IDENTITY = enum.auto()  # changes who the process is (exe, credentials)
    MEMORY_MAP = enum.auto()  # changes the caller's memory map
    OTHER_PROCESS = enum.auto()  # affects another process (signal, limits, memory, scheduling)
    MOUNT_NS = enum.auto()  # changes mounts or namespaces


class Action(enum.Enum):
    TRACE = "trace"
    ERRNO = "errno"
    KILL = "kill"


class Channel(enum.Enum):
    """How the kernel hands a TRACE row's call to the supervisor.

    ``PTRACE``: a ptrace seccomp stop (the guest's registers and context can be
    read and changed). ``NOTIFY``: seccomp user notification when the run's
    engine is ``notify`` (``synthfs run --engine``), a ptrace stop otherwise. A
    NOTIFY row's handler only answers (``Return``, ``Fail``, ``Continue`` for
    a call that names no path, or an open the supervisor makes itself and hands
    over with ADDFD): the kernel never runs a checked path for it.
    """

    PTRACE = "ptrace"
    NOTIFY = "notify"


@frozen
class Cond:
    """A seccomp argument comparison: ``arg[index] <op> value`` (op as in libseccomp)."""

    index: int
    op: str  # "LT", "GT", "EQ", "MASKED_EQ", "NE"
    value: int
    mask: int = 0


@frozen
class SyscallSpec:
    name: str
    nr: int
    args: tuple[Role, ...]
    level: Level
    #: the function the supervisor calls at a stop (None: the filter alone decides)
    handler: Handler | None = None
    action: Action = Action.TRACE
    errno: int = 0  # for Action.ERRNO
    #: TRACE only when every condition holds (several tuples: any of them).
    when: tuple[tuple[Cond, ...], ...] = ()
    note: str = field(default="")
    needs: Need = Need.ALWAYS
    gate: Gate = Gate.ALWAYS
    #: what else it reaches (SECURITY.md's matrix; rows without ``shown_by`` are not in it)
    reach: Reach = Reach.NONE
    #: the test that shows what synthfs does with it (``file::test[case]``)
    shown_by: str = ""
    #: policy operations its path is checked for before any lookup, so a denied request
    #: never reaches the agent (open decides from its flags)
    ops: tuple[str, ...] = ()
    #: the operation it does on a *host* path (docs/policy.md: read, stat and list are
    #: the read class, the rest the write class); default: ``ops[0]``, else ``write``
    #: (fail closed)
    host_op: str = ""
    #: path calls: whether a final symlink is followed (``l*`` variants: no)
    follow: bool = True
    #: what it gives on a /data object that has no such thing (xattrs): an errno, 0: ``0``
    on_data: int = 0
    #: an fd call that changes a host file is judged as this path call
    judged_as: str = ""
    #: which kernel channel traps it under ``--engine notify`` (see :class:`Channel`)
    channel: Channel = Channel.PTRACE
    #: a NOTIFY row's calls that still take a ptrace stop under ``--engine notify``: a
    #: flag bit set in an argument (``MASKED_EQ`` with value = mask); the others notify
    ptrace_if: Cond | None = None

    @property
    def host_operation(self) -> str:
        return self.host_op or (self.ops[0] if self.ops else "write")


#: Lowest address the scratch area may occupy is ``vm.mmap_min_addr``; the guard
#: rules trap memory calls whose address is below this bound.
SCRATCH_GUARD_END = 0x200000
MAP_FIXED = 0x10
MREMAP_FIXED = 0x2
PR_SET_MM = 35
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PRIO_USER = 2
IOPRIO_WHO_USER = 3
#: ``int`` and ``unsigned int`` arguments: the kernel drops the upper 32 bits, so the
#: filter compares only the lower ones (a guest may set the others to dodge an EQ)
_U32 = 0xFFFFFFFF
CLONE_UNTRACED = 0x00800000
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SEEK_SET = 0

P, P2, T = Role.PATH, Role.PATH2, Role.TEXT
D, D2, FD = Role.DIRFD, Role.DIRFD2, Role.FD
FL, AF, M = Role.FLAGS, Role.ATFLAGS, Role.MODE
OUT, IN, SZ, N, A = Role.OUT, Role.IN, Role.SIZE, Role.INT, Role.ADDR

_NOTIFY = Channel.NOTIFY
_low_addr = ((Cond(0, "LT", SCRATCH_GUARD_END),),)
ESC = "tests/escape/test_escape.py"
GUARDS = "tests/interposer/test_guards.py"
MEMGUARD = "tests/interposer/test_guards.py::test_memory_guards"
PIDGUARD = "tests/interposer/test_guards.py::test_pid_guards"


#: the escape tests of a /data fd a process never opened (SCM_RIGHTS, CLONE_FILES)
_PASSED_FD = "tests/escape/test_fd_passing.py::test_a_passed_fd_is_judged_as_the_opener_is"


def _row(
    name: str,
    args: tuple[Role, ...],
    level: Level,
    handler: Handler | None = None,
    note: str = "",
    **kw: object,
) -> SyscallSpec:
    """One row; its number is the kernel's (:data:`~synthfs.interposer.numbers.NR`)."""
    return SyscallSpec(name=name, nr=NR[name], args=args, level=level, handler=handler,
                       note=note, **kw)  # type: ignore[arg-type]


def _deny(name: str, err: int, note: str, **kw: object) -> SyscallSpec:
    return SyscallSpec(
        name=name, nr=NR[name], args=(), level=Level.DENIED, action=Action.ERRNO, errno=err,
        note=note, **kw,  # type: ignore[arg-type]
    )


def _is32(index: int, *values: int) -> tuple[tuple[Cond, ...], ...]:
    """Trace when the 32-bit argument ``index`` is one of ``values`` (one alternative each)."""
    return tuple((Cond(index, "MASKED_EQ", v, _U32),) for v in values)


def _in_range(index: int, end: int) -> tuple[tuple[Cond, ...], ...]:
    """Trace when ``0 < arg < end`` (``end`` a power of two): one alternative per bit
    length, since libseccomp takes one comparison per argument in a rule."""
    assert end & (end - 1) == 0
    mask = (1 << 64) - 1
    return tuple(
        (Cond(index, "MASKED_EQ", 1 << k, mask & ~((1 << k) - 1)),)
        for k in range(end.bit_length() - 1)
    )


def _o_path(index: int) -> Cond:
    """Open flags (argument ``index``) with O_PATH: ADDFD cannot hand an O_PATH fd over
    (the kernel's ``fget`` refuses them), so those opens stay ptrace stops; openat2's
    flags are behind a pointer the filter cannot read, so openat2 stays ptrace whole."""
    return Cond(index, "MASKED_EQ", 0o10000000, 0o10000000)


#: A pid argument (the first) that names another process: 0 is the caller itself.
_other_pid = ((Cond(0, "NE", 0),),)
_TMPFILE_NOTE = "a valid O_TMPFILE on a /data directory: EOPNOTSUPP (no unnamed files there)"

TABLE: tuple[SyscallSpec, ...] = (
    # -- opening ------------------------------------------------------------------------
    _row("open", (P, FL, M), Level.FULL, h.open.sys_open, _TMPFILE_NOTE, channel=_NOTIFY,
         ptrace_if=_o_path(1)),
    _row("openat", (D, P, FL, M), Level.FULL, h.open.sys_openat, _TMPFILE_NOTE,
         channel=_NOTIFY, ptrace_if=_o_path(2)),
    _row(
        "openat2",
        (D, P, Role.HOW, SZ),
        Level.FULL,
        h.open.sys_openat2,
        "RESOLVE_* flags honoured on the host; on /data RESOLVE_BENEATH/IN_ROOT act at the mount root",
    ),
    _row("creat", (P, M), Level.FULL, h.open.sys_creat, channel=_NOTIFY),
    # -- attributes ---------------------------------------------------------------------
    _row("stat", (P, OUT), Level.FULL, h.stat.sys_stat, ops=("stat",), channel=_NOTIFY),
    _row("lstat", (P, OUT), Level.FULL, h.stat.sys_lstat, ops=("stat",), channel=_NOTIFY),
    _row("newfstatat", (D, P, OUT, AF), Level.FULL, h.stat.sys_newfstatat, ops=("stat",),
         channel=_NOTIFY),
    _row("statx", (D, P, AF, N, OUT), Level.FULL, h.stat.sys_statx, ops=("stat",),
         channel=_NOTIFY),
    _row("fstat", (FD, OUT), Level.FD, h.stat.sys_fstat, needs=Need.SYNTH_FD, channel=_NOTIFY),
    _row("access", (P, N), Level.FULL, h.stat.sys_access, ops=("stat",), channel=_NOTIFY),
    _row("faccessat", (D, P, N), Level.FULL, h.stat.sys_faccessat, ops=("stat",),
         channel=_NOTIFY),
    _row("faccessat2", (D, P, N, AF), Level.FULL, h.stat.sys_faccessat2, ops=("stat",),
         channel=_NOTIFY),
    _row(
        "readlink",
        (P, OUT, SZ),
        Level.FULL,
        h.stat.sys_readlink,
        "/proc/self/{fd/N,cwd,exe} show synthetic paths", ops=("stat",), channel=_NOTIFY,
    ),
    _row("readlinkat", (D, P, OUT, SZ), Level.FULL, h.stat.sys_readlinkat, ops=("stat",),
         channel=_NOTIFY),
    _row(
        "statfs",
        (P, OUT),
        Level.FULL,
        h.stat.sys_statfs,
        "on /data: the cache file system's figures", ops=("stat",)
    ),
    _row("chmod", (P, M), Level.FULL, h.setattr.sys_chmod, ops=("chmod",)),
    _row("fchmodat", (D, P, M), Level.FULL, h.setattr.sys_fchmodat, ops=("chmod",)),
    _row("fchmodat2", (D, P, M, AF), Level.FULL, h.setattr.sys_fchmodat2, ops=("chmod",)),
    _row(
        "fchmod",
        (FD, M),
        Level.FD,
        h.setattr.sys_fchmod,
        "on a host fd under [host] rules: judged and run as chmod of the fd's file",
        needs=Need.HOST_FD,
    ),
    _row(
        "chown",
        (P, N, N),
        Level.FULL,
        h.setattr.sys_chown,
        "on /data: accepted and ignored (the repository stores no owners)", ops=("chmod",)
    ),
    _row("lchown", (P, N, N), Level.FULL, h.setattr.sys_lchown, ops=("chmod",)),
    _row("fchownat", (D, P, N, N, AF), Level.FULL, h.setattr.sys_fchownat, ops=("chmod",)),
    _row("fchown", (FD, N, N), Level.FD, h.setattr.sys_fchown, needs=Need.HOST_FD),
    _row("truncate", (P, N), Level.FULL, h.setattr.sys_truncate, ops=("write",)),
    _row("utime", (P, IN), Level.FULL, h.setattr.sys_utime, ops=("chmod",)),
    _row("utimes", (P, IN), Level.FULL, h.setattr.sys_utimes, ops=("chmod",)),
    _row("futimesat", (D, P, IN), Level.FULL, h.setattr.sys_futimesat, ops=("chmod",)),
    _row("utimensat", (D, P, IN, AF), Level.FULL, h.setattr.sys_utimensat, ops=("chmod",)),
    # -- namespace changes ---------------------------------------------------------------
    _row("mkdir", (P, M), Level.FULL, h.tree.sys_mkdir, ops=("create",)),
    _row("mkdirat", (D, P, M), Level.FULL, h.tree.sys_mkdirat, ops=("create",)),
    _row("rmdir", (P,), Level.FULL, h.tree.sys_rmdir, ops=("delete",)),
    _row("unlink", (P,), Level.FULL, h.tree.sys_unlink, ops=("delete",)),
    _row("unlinkat", (D, P, AF), Level.FULL, h.tree.sys_unlinkat, ops=("delete",)),
    _row("rename", (P, P2), Level.FULL, h.tree.sys_rename, "across the /data boundary: EXDEV", ops=("rename",)),
    _row("renameat", (D, P, D2, P2), Level.FULL, h.tree.sys_renameat, ops=("rename",)),
    _row("renameat2", (D, P, D2, P2, N), Level.FULL, h.tree.sys_renameat2, ops=("rename",)),
    _row("link", (P, P2), Level.FULL, h.tree.sys_link, "across the /data boundary: EXDEV", ops=("link",)),
    _row("linkat", (D, P, D2, P2, AF), Level.FULL, h.tree.sys_linkat, ops=("link",)),
    _row("symlink", (T, P), Level.FULL, h.tree.sys_symlink, ops=("create",)),
    _row("symlinkat", (T, D, P), Level.FULL, h.tree.sys_symlinkat, ops=("create",)),
    _row(
        "mknod", (P, M, N), Level.HOST, h.tree.sys_mknod,
        "on /data: EPERM (a regular file: create); under [host] a device node needs a "
        "[host] mknod glob",
        reach=Reach.DEVICE, shown_by=f"{ESC}::test_device_node", ops=("create",)
    ),
    _row(
        "mknodat", (D, P, M, N), Level.HOST, h.tree.sys_mknodat, "as mknod",
        reach=Reach.DEVICE, shown_by=f"{GUARDS}::test_mknod_of_a_device_asks_the_mknod_rule", ops=("create",)
    ),
    # -- extended attributes -------------------------------------------------------------
    _row(
        "getxattr",
        (P, T, OUT, SZ),
        Level.FULL,
        h.xattr.sys_xattr,
        "on /data: ENODATA (no xattrs stored)", ops=("stat",), on_data=errno.ENODATA
    ),
    _row("lgetxattr", (P, T, OUT, SZ), Level.FULL, h.xattr.sys_xattr, ops=("stat",), on_data=errno.ENODATA, follow=False),
    _row("setxattr", (P, T, IN, SZ, N), Level.FULL, h.xattr.sys_xattr, "on /data: ENOTSUP", ops=("chmod",), on_data=errno.ENOTSUP),
    _row("lsetxattr", (P, T, IN, SZ, N), Level.FULL, h.xattr.sys_xattr, ops=("chmod",), on_data=errno.ENOTSUP, follow=False),
    _row("listxattr", (P, OUT, SZ), Level.FULL, h.xattr.sys_xattr, "on /data: empty list", ops=("stat",),),
    _row("llistxattr", (P, OUT, SZ), Level.FULL, h.xattr.sys_xattr, ops=("stat",), follow=False),
    _row("removexattr", (P, T), Level.FULL, h.xattr.sys_xattr, "on /data: ENODATA", ops=("chmod",), on_data=errno.ENODATA),
    _row("lremovexattr", (P, T), Level.FULL, h.xattr.sys_xattr, ops=("chmod",), on_data=errno.ENODATA, follow=False),
    _row(
        "fgetxattr",
        (FD, T, OUT, SZ),
        Level.FD,
        h.xattr.sys_fxattr,
        "on /data: ENODATA",
        needs=Need.SYNTH_FD, on_data=errno.ENODATA
    ),
    _row(
        "fsetxattr",
        (FD, T, IN, SZ, N),
        Level.FD,
        h.xattr.sys_fxattr,
        "on /data: ENOTSUP (so ACL tools fall back to chmod)",
        needs=Need.HOST_FD, on_data=errno.ENOTSUP, judged_as="setxattr"
    ),
    _row(
        "flistxattr",
        (FD, OUT, SZ),
        Level.FD,
        h.xattr.sys_fxattr,
        "on /data: empty list",
        needs=Need.SYNTH_FD,
    ),
    _row(
        "fremovexattr",
        (FD, T),
        Level.FD,
        h.xattr.sys_fxattr,
        "on /data: ENODATA",
        needs=Need.HOST_FD, on_data=errno.ENODATA, judged_as="removexattr"
    ),
    _row(
        "setxattrat",
        (D, P, AF, T, IN, SZ),
        Level.HOST,
        h.xattr.sys_xattrat,
        "newer than the table's handlers: ENOTSUP on /data", host_op="chmod"
    ),
    _row("getxattrat", (D, P, AF, T, IN, SZ), Level.HOST, h.xattr.sys_xattrat, host_op="stat"),
    _row("listxattrat", (D, P, AF, OUT, SZ), Level.HOST, h.xattr.sys_xattrat, host_op="stat"),
    _row("removexattrat", (D, P, AF, T), Level.HOST, h.xattr.sys_xattrat, host_op="chmod"),
    _row("file_getattr", (D, P, OUT, SZ, AF), Level.HOST, h.xattr.sys_xattrat, host_op="stat"),
    _row("file_setattr", (D, P, IN, SZ, AF), Level.HOST, h.xattr.sys_xattrat, host_op="chmod"),
    # -- working directory and exec ------------------------------------------------------
    _row("chdir", (P,), Level.FULL, h.cwd_exec.sys_chdir, ops=("list",)),
    _row("fchdir", (FD,), Level.FD, h.cwd_exec.sys_fchdir),
    *(
        _row(name, (N, N, N), Level.GUARD, h.guards.sys_creds_guard,
             "runs; marks the process (and its children): under --engine notify a root "
             "synthfs refuses its opens (EACCES) while its credentials are not synthfs's",
             reach=Reach.IDENTITY,
             shown_by="tests/interposer/test_notify.py::"
                      "test_a_guest_that_became_nobody_cannot_open_root_files_through_the_supervisor")
        for name in ("setuid", "setgid", "setreuid", "setregid", "setgroups", "setresuid",
                     "setresgid", "setfsuid", "setfsgid", "capset")
    ),
    _row("landlock_restrict_self", (FD, N), Level.GUARD, h.guards.sys_landlock_guard,
         "runs; marks the process (and its children): under --engine notify its opens are "
         "refused (EACCES), since the supervisor's would not be in its Landlock domain",
         shown_by="tests/interposer/test_notify.py::"
                  "test_a_guest_that_restricted_itself_with_landlock_stays_restricted"),
    _row("getcwd", (OUT, SZ), Level.FULL, h.cwd_exec.sys_getcwd, needs=Need.SYNTH_CWD),
    _row(
        "execve",
        (P, A, A),
        Level.FULL,
        h.cwd_exec.sys_execve,
        "a program on /data runs from its cached copy", ops=("read",), reach=Reach.IDENTITY,
    ),
    _row("execveat", (D, P, A, A, AF), Level.FULL, h.cwd_exec.sys_execveat, ops=("read",),
         reach=Reach.IDENTITY),
    # -- fds that may be synthetic -------------------------------------------------------
    _row("getdents64", (FD, OUT, SZ), Level.FD, h.fds.sys_getdents64, needs=Need.SYNTH_FD),
    _row("getdents", (FD, OUT, SZ), Level.FD, h.fds.sys_getdents, needs=Need.SYNTH_FD),
    _row(
        "lseek",
        (FD, N, N),
        Level.FD,
        h.fds.sys_lseek,
        "traced for SEEK_SET only (rewinddir/seekdir on /data)",
        when=((Cond(2, "EQ", SEEK_SET),),),
        needs=Need.SYNTH_FD,
    ),
    _row(
        "close",
        (FD,),
        Level.FD,
        h.fds.sys_close,
        "a written /data file: durable in the agent's journal, queued for upload",
        needs=Need.WROTE,
    ),
    _row("close_range", (FD, FD, N), Level.FD, h.fds.sys_close_range, needs=Need.WROTE),
    # an fd arrives without an open: SCM_RIGHTS (pidfd_getfd is refused, clone3 too)
    _row(
        "recvmsg", (FD, OUT, N), Level.FD, h.fds.sys_recvmsg,
        "the receiver's fd calls are looked at from then on (it may get a /data fd)",
        shown_by=_PASSED_FD,
    ),
    _row("recvmmsg", (FD, OUT, N, N, A), Level.FD, h.fds.sys_recvmsg, shown_by=_PASSED_FD),
    _row(
        "fsync",
        (FD,),
        Level.FD,
        h.fds.sys_fsync,
        "on /data: returns once the server has the file",
        needs=Need.SYNTH_FD,
    ),
    _row("fdatasync", (FD,), Level.FD, h.fds.sys_fsync, needs=Need.SYNTH_FD),
    _row("syncfs", (FD,), Level.FD, h.fds.sys_syncfs, "on /data: as sync",
         needs=Need.SYNTH_FD),
    _row(
        "sync", (), Level.FD, h.fds.sys_sync,
        "returns once the server has every file the agent queued", needs=Need.ALWAYS
    ),
    _row(
        "inotify_add_watch",
        (FD, P, N),
        Level.HOST,
        h.fds.sys_inotify_add_watch,
        "on /data: ENOTSUP (watchers fall back to polling)", host_op="stat"
    ),
    _row(
        "name_to_handle_at",
        (D, P, OUT, OUT, AF),
        Level.HOST,
        h.fds.sys_name_to_handle_at,
        "on /data: EOPNOTSUPP", host_op="stat"
    ),
    _row(
        "connect",
        (FD, Role.SOCKADDR, SZ),
        Level.HOST,
        h.net.sys_connect,
        "AF_UNIX paths checked (the agent's socket is refused); IP addresses by [host] network",
    ),
    _row(
        "bind",
        (FD, Role.SOCKADDR, SZ),
        Level.HOST,
        h.net.sys_bind,
        "AF_UNIX paths checked; on /data: EACCES; IP addresses by [host] network",
    ),
    _row(
        "getsockname",
        (FD, OUT, A),
        Level.HOST,
        h.net.sys_getsockname,
        "a socket bound in a pinned directory shows the name the guest gave; "
        "in the filter only under [host] rules",
        gate=Gate.HOST,
    ),
    # -- the network ([host] network); rows in the filter only when the policy restricts it
    _row(
        "socket",
        (Role.FAMILY, N, N),
        Level.HOST,
        h.net.sys_socket,
        "network deny: no IP socket (EACCES); deny/loopback: no other family that leaves the machine; "
        "in the filter only when the policy restricts the network",
        # every family but AF_UNIX (1) (a 64-bit compare: upper bits set are trapped too)
        when=((Cond(0, "GT", 1),),),
        gate=Gate.NETWORK,
    ),
    _row(
        "sendto",
        (FD, IN, SZ, N, Role.SOCKADDR, SZ),
        Level.HOST,
        h.net.sys_sendto,
        "with a destination only (send() passes none); checked like connect; "
        "in the filter only when the policy restricts the network or the host",
        when=((Cond(4, "NE", 0),),),
        gate=Gate.SEND,
    ),
    _row(
        "sendmsg",
        (FD, IN, N),
        Level.HOST,
        h.net.sys_sendmsg,
        "msg_name checked like connect; only when the policy restricts the network or the host",
        gate=Gate.SEND,
    ),
    _row(
        "sendmmsg",
        (FD, IN, N, N),
        Level.HOST,
        h.net.sys_sendmmsg,
        "every msg_name checked like connect; only when the policy restricts network or host",
        gate=Gate.SEND,
    ),
    # -- guards of the scratch page ------------------------------------------------------
    # Every call that can change the caller's memory map is here, refused when it touches
    # the scratch area (see SECURITY.md, "Every row of the syscall table, classified"); mmap without
    # MAP_FIXED, MAP_FIXED_NOREPLACE, shmdt (it unmaps shm segments only), mseal, mbind,
    # pkey_alloc and set_mempolicy_home_node move or unprotect nothing and run natively.
    _row(
        "mprotect", (A, SZ, N), Level.GUARD, h.guards.sys_memguard, when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_mprotect]",
    ),
    _row(
        "pkey_mprotect", (A, SZ, N, N), Level.GUARD, h.guards.sys_memguard, when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[pkey_mprotect]",
    ),
    _row(
        "munmap", (A, SZ), Level.GUARD, h.guards.sys_memguard, when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_munmap]",
    ),
    _row(
        "madvise", (A, SZ, N), Level.GUARD, h.guards.sys_memguard,
        "every advice (DONTNEED, FREE, REMOVE, DONTFORK, WIPEONFORK...) on the area: EPERM",
        when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_madvise]",
    ),
    _row(
        "remap_file_pages", (A, SZ, N, N, N), Level.GUARD, h.guards.sys_memguard, when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[remap_file_pages]",
    ),
    _row(
        "mremap",
        (A, SZ, SZ, N, A),
        Level.GUARD,
        h.guards.sys_mremap_guard,
        when=(
            (Cond(0, "LT", SCRATCH_GUARD_END),),
            (Cond(3, "MASKED_EQ", MREMAP_FIXED, MREMAP_FIXED), Cond(4, "LT", SCRATCH_GUARD_END)),
        ),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_mremap]",
    ),
    _row(
        "mmap",
        (A, SZ, N, N, FD, N),
        Level.GUARD,
        h.guards.sys_memguard,
        when=((Cond(0, "LT", SCRATCH_GUARD_END), Cond(3, "MASKED_EQ", MAP_FIXED, MAP_FIXED)),),
        reach=Reach.MEMORY | Reach.MEMORY_MAP,
        shown_by=f"{ESC}::test_scratch_page[scratch_mmap_fixed]",
    ),
    _row(
        "shmat", (N, A, N), Level.GUARD, h.guards.sys_memguard_shmat, "SHM_REMAP over the area: EPERM",
        when=((Cond(1, "NE", 0),),),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[shmat]",
    ),
    _row(
        "brk",
        (A,),
        Level.GUARD,
        h.guards.sys_brk_guard,
        "a break below the area's end gets the current break (the kernel's refusal); only "
        "PR_SET_MM can move the heap's start there",
        when=_in_range(0, SCRATCH_GUARD_END),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[brk]",
    ),
    _row(
        "prctl",
        (N, N, N, N, N),
        Level.GUARD,
        h.guards.sys_prctl,
        "PR_SET_MM refused: EPERM (CRIU's restore call: PR_SET_MM_MAP needs no capability and "
        "moves the heap's break over the scratch area, which brk() then remaps writable); "
        "PR_SET_DUMPABLE 0 answered, not done, by a supervisor without CAP_SYS_PTRACE (the "
        "guest's fds and memory would be closed to it), PR_GET_DUMPABLE says what was set",
        when=_is32(0, PR_SET_MM, PR_SET_DUMPABLE, PR_GET_DUMPABLE),
        reach=Reach.MEMORY | Reach.MEMORY_MAP | Reach.IDENTITY,
        shown_by=f"{ESC}::test_scratch_page[scratch_prctl_brk_race]",
    ),
    _deny(
        "userfaultfd",
        errno.EPERM,
        "a fault handler of the guest's own would answer the kernel's reads of a checked copy",
        reach=Reach.MEMORY, shown_by=f"{ESC}::test_scratch_page[scratch_uffd]",
    ),
    # -- refused outright ----------------------------------------------------------------
    _deny("io_uring_setup", errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("io_uring_enter", errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("io_uring_register", errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("clone3", errno.ENOSYS, "its flags hide behind a pointer; libc falls back to clone"),
    SyscallSpec(name="clone", nr=NR["clone"],
        args=(N,),
        level=Level.GUARD,
        action=Action.ERRNO,
        errno=errno.EPERM,
        when=((Cond(0, "MASKED_EQ", CLONE_UNTRACED, CLONE_UNTRACED),),),
        note="CLONE_UNTRACED refused (a child must stay traced)",
    ),
    SyscallSpec(name="seccomp", nr=NR["seccomp"],
        args=(N, N, A),
        level=Level.GUARD,
        action=Action.ERRNO,
        errno=errno.EPERM,
        when=(
            (
                Cond(
                    1,
                    "MASKED_EQ",
                    SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    SECCOMP_FILTER_FLAG_NEW_LISTENER,
                ),
            ),
        ),
        note="filters may stack; a user-notification listener (it outranks TRACE) is refused",
    ),
    # -- other processes: never the trusted ones (EPERM) ------------------------------
    # Every call that names another process (a pid, tid, process group or pidfd) or
    # sets who gets a file's signals; see SECURITY.md, "Every row of the syscall table, classified".
    _row(
        "kill", (N, N), Level.GUARD, h.guards.sys_signal_guard,
        "refused (EPERM) toward the supervisor, agent and server (pid, or -pgid of theirs)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[signal_agent]",
    ),
    _row(
        "tkill", (N, N), Level.GUARD, h.guards.sys_signal_guard,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[tkill]",
    ),
    _row(
        "tgkill", (N, N, N), Level.GUARD, h.guards.sys_signal_guard,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[tgkill]",
    ),
    _row(
        "rt_sigqueueinfo", (N, N, IN), Level.GUARD, h.guards.sys_signal_guard,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[rt_sigqueueinfo]",
    ),
    _row(
        "rt_tgsigqueueinfo", (N, N, N, IN), Level.GUARD, h.guards.sys_signal_guard,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[rt_tgsigqueueinfo]",
    ),
    _row(
        "pidfd_open", (N, N), Level.GUARD, h.guards.sys_signal_guard,
        "no pidfd on a trusted process (pidfd_send_signal needs one)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[pidfd_agent]",
    ),
    _row(
        "pidfd_send_signal", (FD, N, IN, N), Level.GUARD, h.guards.sys_pidfd_guard,
        "the pidfd's process (fdinfo Pid:) must not be trusted",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[pidfd_send_signal]",
    ),
    # who gets a file's SIGIO/SIGURG (and F_SETSIG's signal, SIGSTOP included); a lease
    # on a file synthfs opens too
    _row(
        "fcntl", (FD, N, A), Level.GUARD, h.guards.sys_fcntl_guard,
        "F_SETOWN/F_SETOWN_EX toward a trusted pid or group: EPERM; the kernel reads a checked "
        "copy; F_SETLEASE on a /data file (the agent's cache copy): EAGAIN",
        when=_is32(1, F_SETOWN, F_SETOWN_EX, F_SETLEASE),
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[setown_stop_agent]",
    ),
    _row(
        "ioctl", (FD, N, A), Level.GUARD, h.guards.sys_ioctl_guard,
        "FIOSETOWN/SIOCSPGRP (a socket's owner), TIOCSPGRP (a terminal's foreground group) "
        "toward a trusted pid or group: EPERM, on a checked copy; EPERM always for "
        "USERFAULTFD_IOC_NEW, TIOCSTI and TIOCLINUX (they type into the terminal the guest "
        "shares with the user), FS_IOC_SETFLAGS/FSSETXATTR/SETVERSION (chattr through a "
        "read-only fd), FIFREEZE/FITHAW (a frozen file system stalls the supervisor) and "
        "FS_IOC_SHUTDOWN (it shuts a whole file system down)",
        when=_is32(1, FIOSETOWN, SIOCSPGRP, TIOCSPGRP, *REFUSED_IOCTLS),
        reach=Reach.PID | Reach.TERMINAL | Reach.DEVICE | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[fiosetown_stop_agent]",
    ),
    # another process's limits, scheduling, priority, memory placement (0: the caller's own,
    # not trapped): a lowered RLIMIT_CPU kills with SIGXCPU, a lowered RLIMIT_NOFILE
    # starves a server, SCHED_IDLE or nice 19 starves the agent
    _row(
        "prlimit64", (N, N, N, N), Level.GUARD, h.guards.sys_signal_guard,
        "refused (EPERM) toward the supervisor, agent and server", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[prlimit_agent]",
    ),
    _row(
        "sched_setaffinity", (N, N, N), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[sched_setaffinity_agent]",
    ),
    _row(
        "sched_setscheduler", (N, N, N), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setscheduler]",
    ),
    _row(
        "sched_setparam", (N, N), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setparam]",
    ),
    _row(
        "sched_setattr", (N, N, N), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setattr]",
    ),
    _row(
        "setpriority", (N, N, N), Level.GUARD, h.guards.sys_priority_guard,
        "toward a trusted pid or group: EPERM; PRIO_USER (every process of a user): EPERM",
        when=((Cond(1, "NE", 0),), *_is32(0, PRIO_USER)),
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[setpriority_agent]",
    ),
    _row(
        "ioprio_set", (N, N, N), Level.GUARD, h.guards.sys_priority_guard,
        "as setpriority (IOPRIO_WHO_USER: EPERM)",
        when=((Cond(1, "NE", 0),), *_is32(0, IOPRIO_WHO_USER)),
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[ioprio_set]",
    ),
    _row(
        "migrate_pages", (N, N, A, A), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[migrate_pages]",
    ),
    _row(
        "move_pages", (N, N, A, A, A, N), Level.GUARD, h.guards.sys_signal_guard, when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[move_pages]",
    ),
    _row(
        "get_robust_list", (N, OUT, OUT), Level.GUARD, h.guards.sys_signal_guard,
        "another process's robust-list address (an ASLR leak)", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[get_robust_list]",
    ),
    _row(
        "kcmp", (N, N, N, N, N), Level.GUARD, h.guards.sys_kcmp_guard,
        "compares two processes' files and memory: EPERM unless both are guests",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[kcmp]",
    ),
    _deny(
        "ptrace", errno.EPERM, "guests may not trace (the supervisor, the agent or each other)",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[ptrace_agent]",
    ),
    _deny(
        "process_vm_readv", errno.EPERM, "reads another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[process_vm_readv_agent]",
    ),
    _deny(
        "process_vm_writev", errno.EPERM, "writes another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY, shown_by=f"{PIDGUARD}[process_vm_writev]",
    ),
    _deny(
        "process_madvise", errno.EPERM, "acts on another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY | Reach.MEMORY_MAP,
        shown_by=f"{PIDGUARD}[process_madvise]",
    ),
    _deny(
        "process_mrelease", errno.EPERM, "reaps a dying process's memory (low-memory killers only)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[process_mrelease]",
    ),
    _deny(
        "pidfd_getfd", errno.EPERM, "steals another process's fds",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[pidfd_getfd]",
    ),
    _deny(
        "vhangup", errno.EPERM, "hangs up the terminal: SIGHUP to its session (the supervisor's)",
        reach=Reach.TERMINAL | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[vhangup]",
    ),
    _deny("open_by_handle_at", errno.EPERM, "opens by handle, bypassing paths"),
    _deny("chroot", errno.EPERM, "would change the root the namespace is resolved against",
          reach=Reach.MOUNT_NS),
    _deny("pivot_root", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("mount", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("umount2", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("open_tree", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("move_mount", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("fsopen", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("fsconfig", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("fsmount", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("fspick", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("mount_setattr", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("open_tree_attr", errno.EPERM, "mounts", reach=Reach.MOUNT_NS),
    _deny("fanotify_mark", errno.EPERM, "watches paths outside the supervisor's view"),
    _deny("swapon", errno.EPERM, "host administration"),
    _deny("swapoff", errno.EPERM, "host administration"),
    _deny("acct", errno.EPERM, "host administration"),
    _deny("quotactl", errno.EPERM, "host administration"),
    _deny("quotactl_fd", errno.EPERM, "host administration"),
    _deny("uselib", errno.ENOSYS, "obsolete"),
    _deny("kexec_load", errno.EPERM, "host administration"),
    _deny("kexec_file_load", errno.EPERM, "host administration"),
    _deny("init_module", errno.EPERM, "host administration"),
    _deny("finit_module", errno.EPERM, "host administration"),
    _deny("delete_module", errno.EPERM, "host administration"),
    _deny("reboot", errno.EPERM, "host administration"),
    _deny("bpf", errno.EPERM, "kernel programs"),
    _deny("perf_event_open", errno.EPERM, "kernel tracing"),
    _deny(
        "keyctl",
        errno.EPERM,
        "kernel keyrings (the agent's secrets live elsewhere, but keyrings are shared)",
    ),
    _deny("add_key", errno.EPERM, "kernel keyrings"),
    _deny("request_key", errno.EPERM, "kernel keyrings"),
)

#: The newest syscall number the table was written against; larger ones get ENOSYS.
MAX_KNOWN_NR = 470
#: Numbers above MAX_KNOWN_NR refused with ENOSYS by the filter (the kernel's range).
UNKNOWN_RANGE = range(MAX_KNOWN_NR + 1, 512)

BY_NR: dict[int, SyscallSpec] = {spec.nr: spec for spec in TABLE}
BY_NAME: dict[str, SyscallSpec] = {spec.name: spec for spec in TABLE}
if len(BY_NR) != len(TABLE) or len(BY_NAME) != len(TABLE):
    raise TypeError("the syscall table names a syscall twice")
