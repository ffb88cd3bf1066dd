"""The syscall table: the single source of truth for what synthfs does with each syscall.

One :class:`SyscallSpec` row per x86_64 syscall that synthfs does not simply
allow. The seccomp filter (:mod:`interposer.filter`), the dispatcher
(:mod:`interposer.supervisor`), ``synthfs syscalls`` and the consistency test
are all generated from :data:`TABLE`. A syscall absent from the table runs
natively (it takes no path and cannot reach a synthetic object); a syscall
number the table does not know at all (newer than this table) gets ENOSYS, so
a new path syscall is never silently allowed.

Roles name what an argument is, as nsjail's ``syscall_defs.h`` does; handlers
decode arguments by role, so ``open``, ``openat``, ``openat2`` and ``creat``
end in one shared operation.
"""

from __future__ import annotations

import enum
import errno

from attrs import field, frozen

__all__ = [
    "BY_NAME",
    "BY_NR",
    "MAX_KNOWN_NR",
    "TABLE",
    "Action",
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
    handler: str | None = None  # function name in interposer.handlers
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


#: Lowest address the scratch area may occupy is ``vm.mmap_min_addr``; the guard
#: rules trap memory calls whose address is below this bound.
SCRATCH_GUARD_END = 0x200000
MAP_FIXED = 0x10
MREMAP_FIXED = 0x2
PR_SET_MM = 35
F_SETOWN = 8
F_SETOWN_EX = 15
FIOSETOWN = 0x8901
SIOCSPGRP = 0x8902
TIOCSPGRP = 0x5410
USERFAULTFD_IOC_NEW = 0xAA00
PRIO_USER = 2
IOPRIO_WHO_USER = 3
#: ``int`` and ``unsigned int`` arguments: the kernel drops the upper 32 bits, so the
#: filter compares only the lower ones (a guest may set the others to dodge an EQ)
_U32 = 0xFFFFFFFF
CLONE_UNTRACED = 0x00800000
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
#: they type into (or act on) the terminal the guest shares with the user's shell
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
SEEK_SET = 0

P, P2, T = Role.PATH, Role.PATH2, Role.TEXT
D, D2, FD = Role.DIRFD, Role.DIRFD2, Role.FD
FL, AF, M = Role.FLAGS, Role.ATFLAGS, Role.MODE
OUT, IN, SZ, N, A = Role.OUT, Role.IN, Role.SIZE, Role.INT, Role.ADDR

_low_addr = ((Cond(0, "LT", SCRATCH_GUARD_END),),)
ESC = "tests/escape/test_escape.py"
GUARDS = "tests/interposer/test_guards.py"
MEMGUARD = "tests/interposer/test_guards.py::test_memory_guards"
PIDGUARD = "tests/interposer/test_guards.py::test_pid_guards"


def _row(
    name: str,
    nr: int,
    args: tuple[Role, ...],
    level: Level,
    handler: str | None = None,
    note: str = "",
    **kw: object,
) -> SyscallSpec:
    return SyscallSpec(name=name, nr=nr, args=args, level=level, handler=handler, note=note, **kw)  # type: ignore[arg-type]


def _deny(name: str, nr: int, err: int, note: str, **kw: object) -> SyscallSpec:
    return SyscallSpec(
        name=name, nr=nr, args=(), level=Level.DENIED, action=Action.ERRNO, errno=err, note=note,
        **kw,  # type: ignore[arg-type]
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


#: A pid argument (the first) that names another process: 0 is the caller itself.
_other_pid = ((Cond(0, "NE", 0),),)
_TMPFILE_NOTE = "a valid O_TMPFILE on a /data directory: EOPNOTSUPP (no unnamed files there)"

TABLE: tuple[SyscallSpec, ...] = (
    # -- opening ------------------------------------------------------------------------
    _row("open", 2, (P, FL, M), Level.FULL, "sys_open", _TMPFILE_NOTE),
    _row("openat", 257, (D, P, FL, M), Level.FULL, "sys_openat", _TMPFILE_NOTE),
    _row(
        "openat2",
        437,
        (D, P, IN, SZ),
        Level.FULL,
        "sys_openat2",
        "RESOLVE_* flags honoured on the host; on /data RESOLVE_BENEATH/IN_ROOT act at the mount root",
    ),
    _row("creat", 85, (P, M), Level.FULL, "sys_creat"),
    # -- attributes ---------------------------------------------------------------------
    _row("stat", 4, (P, OUT), Level.FULL, "sys_stat"),
    _row("lstat", 6, (P, OUT), Level.FULL, "sys_lstat"),
    _row("newfstatat", 262, (D, P, OUT, AF), Level.FULL, "sys_newfstatat"),
    _row("statx", 332, (D, P, AF, N, OUT), Level.FULL, "sys_statx"),
    _row("fstat", 5, (FD, OUT), Level.FD, "sys_fstat", needs=Need.SYNTH_FD),
    _row("access", 21, (P, N), Level.FULL, "sys_access"),
    _row("faccessat", 269, (D, P, N), Level.FULL, "sys_faccessat"),
    _row("faccessat2", 439, (D, P, N, AF), Level.FULL, "sys_faccessat2"),
    _row(
        "readlink",
        89,
        (P, OUT, SZ),
        Level.FULL,
        "sys_readlink",
        "/proc/self/{fd/N,cwd,exe} show synthetic paths",
    ),
    _row("readlinkat", 267, (D, P, OUT, SZ), Level.FULL, "sys_readlinkat"),
    _row(
        "statfs",
        137,
        (P, OUT),
        Level.FULL,
        "sys_statfs",
        "on /data: the cache file system's figures",
    ),
    _row("chmod", 90, (P, M), Level.FULL, "sys_chmod"),
    _row("fchmodat", 268, (D, P, M), Level.FULL, "sys_fchmodat"),
    _row("fchmodat2", 452, (D, P, M, AF), Level.FULL, "sys_fchmodat2"),
    _row(
        "fchmod",
        91,
        (FD, M),
        Level.FD,
        "sys_fchmod",
        "on a host fd under [host] rules: judged and run as chmod of the fd's file",
        needs=Need.HOST_FD,
    ),
    _row(
        "chown",
        92,
        (P, N, N),
        Level.FULL,
        "sys_chown",
        "on /data: accepted and ignored (the repository stores no owners)",
    ),
    _row("lchown", 94, (P, N, N), Level.FULL, "sys_lchown"),
    _row("fchownat", 260, (D, P, N, N, AF), Level.FULL, "sys_fchownat"),
    _row("fchown", 93, (FD, N, N), Level.FD, "sys_fchown", needs=Need.HOST_FD),
    _row("truncate", 76, (P, N), Level.FULL, "sys_truncate"),
    _row("utime", 132, (P, IN), Level.FULL, "sys_utime"),
    _row("utimes", 235, (P, IN), Level.FULL, "sys_utimes"),
    _row("futimesat", 261, (D, P, IN), Level.FULL, "sys_futimesat"),
    _row("utimensat", 280, (D, P, IN, AF), Level.FULL, "sys_utimensat"),
    # -- namespace changes ---------------------------------------------------------------
    _row("mkdir", 83, (P, M), Level.FULL, "sys_mkdir"),
    _row("mkdirat", 258, (D, P, M), Level.FULL, "sys_mkdirat"),
    _row("rmdir", 84, (P,), Level.FULL, "sys_rmdir"),
    _row("unlink", 87, (P,), Level.FULL, "sys_unlink"),
    _row("unlinkat", 263, (D, P, AF), Level.FULL, "sys_unlinkat"),
    _row("rename", 82, (P, P2), Level.FULL, "sys_rename", "across the /data boundary: EXDEV"),
    _row("renameat", 264, (D, P, D2, P2), Level.FULL, "sys_renameat"),
    _row("renameat2", 316, (D, P, D2, P2, N), Level.FULL, "sys_renameat2"),
    _row("link", 86, (P, P2), Level.FULL, "sys_link", "across the /data boundary: EXDEV"),
    _row("linkat", 265, (D, P, D2, P2, AF), Level.FULL, "sys_linkat"),
    _row("symlink", 88, (T, P), Level.FULL, "sys_symlink"),
    _row("symlinkat", 266, (T, D, P), Level.FULL, "sys_symlinkat"),
    _row(
        "mknod", 133, (P, M, N), Level.HOST, "sys_mknod",
        "on /data: EPERM (a regular file: create); under [host] a device node needs a "
        "[host] mknod glob",
        reach=Reach.DEVICE, shown_by=f"{ESC}::test_device_node",
    ),
    _row(
        "mknodat", 259, (D, P, M, N), Level.HOST, "sys_mknodat", "as mknod",
        reach=Reach.DEVICE, shown_by=f"{GUARDS}::test_mknod_of_a_device_asks_the_mknod_rule",
    ),
    # -- extended attributes -------------------------------------------------------------
    _row(
        "getxattr",
        191,
        (P, T, OUT, SZ),
        Level.FULL,
        "sys_getxattr",
        "on /data: ENODATA (no xattrs stored)",
    ),
    _row("lgetxattr", 192, (P, T, OUT, SZ), Level.FULL, "sys_lgetxattr"),
    _row("setxattr", 188, (P, T, IN, SZ, N), Level.FULL, "sys_setxattr", "on /data: ENOTSUP"),
    _row("lsetxattr", 189, (P, T, IN, SZ, N), Level.FULL, "sys_lsetxattr"),
    _row("listxattr", 194, (P, OUT, SZ), Level.FULL, "sys_listxattr", "on /data: empty list"),
    _row("llistxattr", 195, (P, OUT, SZ), Level.FULL, "sys_llistxattr"),
    _row("removexattr", 197, (P, T), Level.FULL, "sys_removexattr", "on /data: ENODATA"),
    _row("lremovexattr", 198, (P, T), Level.FULL, "sys_lremovexattr"),
    _row(
        "fgetxattr",
        193,
        (FD, T, OUT, SZ),
        Level.FD,
        "sys_fgetxattr",
        "on /data: ENODATA",
        needs=Need.SYNTH_FD,
    ),
    _row(
        "fsetxattr",
        190,
        (FD, T, IN, SZ, N),
        Level.FD,
        "sys_fsetxattr",
        "on /data: ENOTSUP (so ACL tools fall back to chmod)",
        needs=Need.HOST_FD,
    ),
    _row(
        "flistxattr",
        196,
        (FD, OUT, SZ),
        Level.FD,
        "sys_flistxattr",
        "on /data: empty list",
        needs=Need.SYNTH_FD,
    ),
    _row(
        "fremovexattr",
        199,
        (FD, T),
        Level.FD,
        "sys_fremovexattr",
        "on /data: ENODATA",
        needs=Need.HOST_FD,
    ),
    _row(
        "setxattrat",
        463,
        (D, P, AF, T, IN, SZ),
        Level.HOST,
        "sys_xattrat",
        "newer than the table's handlers: ENOTSUP on /data",
    ),
    _row("getxattrat", 464, (D, P, AF, T, IN, SZ), Level.HOST, "sys_xattrat"),
    _row("listxattrat", 465, (D, P, AF, OUT, SZ), Level.HOST, "sys_xattrat"),
    _row("removexattrat", 466, (D, P, AF, T), Level.HOST, "sys_xattrat"),
    _row("file_getattr", 468, (D, P, OUT, SZ, AF), Level.HOST, "sys_xattrat"),
    _row("file_setattr", 469, (D, P, IN, SZ, AF), Level.HOST, "sys_xattrat"),
    # -- working directory and exec ------------------------------------------------------
    _row("chdir", 80, (P,), Level.FULL, "sys_chdir"),
    _row("fchdir", 81, (FD,), Level.FD, "sys_fchdir"),
    _row("getcwd", 79, (OUT, SZ), Level.FULL, "sys_getcwd", needs=Need.SYNTH_CWD),
    _row(
        "execve",
        59,
        (P, A, A),
        Level.FULL,
        "sys_execve",
        "a program on /data runs from its cached copy",
    ),
    _row("execveat", 322, (D, P, A, A, AF), Level.FULL, "sys_execveat"),
    # -- fds that may be synthetic -------------------------------------------------------
    _row("getdents64", 217, (FD, OUT, SZ), Level.FD, "sys_getdents64", needs=Need.SYNTH_FD),
    _row("getdents", 78, (FD, OUT, SZ), Level.FD, "sys_getdents", needs=Need.SYNTH_FD),
    _row(
        "lseek",
        8,
        (FD, N, N),
        Level.FD,
        "sys_lseek",
        "traced for SEEK_SET only (rewinddir/seekdir on /data)",
        when=((Cond(2, "EQ", SEEK_SET),),),
        needs=Need.SYNTH_FD,
    ),
    _row(
        "close",
        3,
        (FD,),
        Level.FD,
        "sys_close",
        "a written /data file is uploaded at close",
        needs=Need.WROTE,
    ),
    _row("close_range", 436, (FD, FD, N), Level.FD, "sys_close_range", needs=Need.WROTE),
    _row(
        "fsync",
        74,
        (FD,),
        Level.FD,
        "sys_fsync",
        "a written /data file is uploaded at fsync",
        needs=Need.WROTE,
    ),
    _row("fdatasync", 75, (FD,), Level.FD, "sys_fsync", needs=Need.WROTE),
    _row("syncfs", 306, (FD,), Level.FD, "sys_fsync", needs=Need.WROTE),
    _row(
        "sync", 162, (), Level.FD, "sys_sync", "uploads every written /data file", needs=Need.WROTE
    ),
    _row(
        "inotify_add_watch",
        254,
        (FD, P, N),
        Level.HOST,
        "sys_inotify_add_watch",
        "on /data: ENOTSUP (watchers fall back to polling)",
    ),
    _row(
        "name_to_handle_at",
        303,
        (D, P, OUT, OUT, AF),
        Level.HOST,
        "sys_name_to_handle_at",
        "on /data: EOPNOTSUPP",
    ),
    _row(
        "connect",
        42,
        (FD, Role.SOCKADDR, SZ),
        Level.HOST,
        "sys_connect",
        "AF_UNIX paths checked (the agent's socket is refused); IP addresses by [host] network",
    ),
    _row(
        "bind",
        49,
        (FD, Role.SOCKADDR, SZ),
        Level.HOST,
        "sys_bind",
        "AF_UNIX paths checked; on /data: EACCES; IP addresses by [host] network",
    ),
    _row(
        "getsockname",
        51,
        (FD, OUT, A),
        Level.HOST,
        "sys_getsockname",
        "a socket bound in a pinned directory shows the name the guest gave; "
        "in the filter only under [host] rules",
        gate=Gate.HOST,
    ),
    # -- the network ([host] network); rows in the filter only when the policy restricts it
    _row(
        "socket",
        41,
        (Role.FAMILY, N, N),
        Level.HOST,
        "sys_socket",
        "network deny: no IP socket (EACCES); deny/loopback: no other family that leaves the machine; "
        "in the filter only when the policy restricts the network",
        # every family but AF_UNIX (1) (a 64-bit compare: upper bits set are trapped too)
        when=((Cond(0, "GT", 1),),),
        gate=Gate.NETWORK,
    ),
    _row(
        "sendto",
        44,
        (FD, IN, SZ, N, Role.SOCKADDR, SZ),
        Level.HOST,
        "sys_sendto",
        "with a destination only (send() passes none); checked like connect; "
        "in the filter only when the policy restricts the network or the host",
        when=((Cond(4, "NE", 0),),),
        gate=Gate.SEND,
    ),
    _row(
        "sendmsg",
        46,
        (FD, IN, N),
        Level.HOST,
        "sys_sendmsg",
        "msg_name checked like connect; only when the policy restricts the network or the host",
        gate=Gate.SEND,
    ),
    _row(
        "sendmmsg",
        307,
        (FD, IN, N, N),
        Level.HOST,
        "sys_sendmmsg",
        "every msg_name checked like connect; only when the policy restricts network or host",
        gate=Gate.SEND,
    ),
    # -- guards of the scratch page ------------------------------------------------------
    # Every call that can change the caller's memory map is here, refused when it touches
    # the scratch area (see SECURITY.md, "Calls that reach past a path"); mmap without
    # MAP_FIXED, MAP_FIXED_NOREPLACE, shmdt (it unmaps shm segments only), mseal, mbind,
    # pkey_alloc and set_mempolicy_home_node move or unprotect nothing and run natively.
    _row(
        "mprotect", 10, (A, SZ, N), Level.GUARD, "sys_memguard", when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_mprotect]",
    ),
    _row(
        "pkey_mprotect", 329, (A, SZ, N, N), Level.GUARD, "sys_memguard", when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[pkey_mprotect]",
    ),
    _row(
        "munmap", 11, (A, SZ), Level.GUARD, "sys_memguard", when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_munmap]",
    ),
    _row(
        "madvise", 28, (A, SZ, N), Level.GUARD, "sys_memguard",
        "every advice (DONTNEED, FREE, REMOVE, DONTFORK, WIPEONFORK...) on the area: EPERM",
        when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_madvise]",
    ),
    _row(
        "remap_file_pages", 216, (A, SZ, N, N, N), Level.GUARD, "sys_memguard", when=_low_addr,
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[remap_file_pages]",
    ),
    _row(
        "mremap",
        25,
        (A, SZ, SZ, N, A),
        Level.GUARD,
        "sys_mremap_guard",
        when=(
            (Cond(0, "LT", SCRATCH_GUARD_END),),
            (Cond(3, "MASKED_EQ", MREMAP_FIXED, MREMAP_FIXED), Cond(4, "LT", SCRATCH_GUARD_END)),
        ),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{ESC}::test_scratch_page[scratch_mremap]",
    ),
    _row(
        "mmap",
        9,
        (A, SZ, N, N, FD, N),
        Level.GUARD,
        "sys_memguard",
        when=((Cond(0, "LT", SCRATCH_GUARD_END), Cond(3, "MASKED_EQ", MAP_FIXED, MAP_FIXED)),),
        reach=Reach.MEMORY | Reach.MEMORY_MAP,
        shown_by=f"{ESC}::test_scratch_page[scratch_mmap_fixed]",
    ),
    _row(
        "shmat", 30, (N, A, N), Level.GUARD, "sys_memguard_shmat", "SHM_REMAP over the area: EPERM",
        when=((Cond(1, "NE", 0),),),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[shmat]",
    ),
    _row(
        "brk",
        12,
        (A,),
        Level.GUARD,
        "sys_brk_guard",
        "a break below the area's end gets the current break (the kernel's refusal); only "
        "PR_SET_MM can move the heap's start there",
        when=_in_range(0, SCRATCH_GUARD_END),
        reach=Reach.MEMORY | Reach.MEMORY_MAP, shown_by=f"{MEMGUARD}[brk]",
    ),
    SyscallSpec(
        name="prctl",
        nr=157,
        args=(N, N, N, N, N),
        level=Level.GUARD,
        action=Action.ERRNO,
        errno=errno.EPERM,
        when=_is32(0, PR_SET_MM),
        note="PR_SET_MM refused (CRIU's restore call: PR_SET_MM_MAP needs no capability and "
        "moves the heap's break over the scratch area, which brk() then remaps writable)",
        reach=Reach.MEMORY | Reach.MEMORY_MAP | Reach.IDENTITY,
        shown_by=f"{ESC}::test_scratch_page[scratch_prctl_brk_race]",
    ),
    _deny(
        "userfaultfd",
        323,
        errno.EPERM,
        "a fault handler of the guest's own would answer the kernel's reads of a checked copy",
        reach=Reach.MEMORY, shown_by=f"{ESC}::test_scratch_page[scratch_uffd]",
    ),
    # -- refused outright ----------------------------------------------------------------
    _deny("io_uring_setup", 425, errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("io_uring_enter", 426, errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("io_uring_register", 427, errno.ENOSYS, "io_uring bypasses seccomp"),
    _deny("clone3", 435, errno.ENOSYS, "its flags hide behind a pointer; libc falls back to clone"),
    SyscallSpec(
        name="clone",
        nr=56,
        args=(N,),
        level=Level.GUARD,
        action=Action.ERRNO,
        errno=errno.EPERM,
        when=((Cond(0, "MASKED_EQ", CLONE_UNTRACED, CLONE_UNTRACED),),),
        note="CLONE_UNTRACED refused (a child must stay traced)",
    ),
    SyscallSpec(
        name="seccomp",
        nr=317,
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
    # sets who gets a file's signals; see SECURITY.md, "Calls that reach past a path".
    _row(
        "kill", 62, (N, N), Level.GUARD, "sys_signal_guard",
        "refused (EPERM) toward the supervisor, agent and server (pid, or -pgid of theirs)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[signal_agent]",
    ),
    _row(
        "tkill", 200, (N, N), Level.GUARD, "sys_signal_guard",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[tkill]",
    ),
    _row(
        "tgkill", 234, (N, N, N), Level.GUARD, "sys_signal_guard",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[tgkill]",
    ),
    _row(
        "rt_sigqueueinfo", 129, (N, N, IN), Level.GUARD, "sys_signal_guard",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[rt_sigqueueinfo]",
    ),
    _row(
        "rt_tgsigqueueinfo", 297, (N, N, N, IN), Level.GUARD, "sys_signal_guard",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[rt_tgsigqueueinfo]",
    ),
    _row(
        "pidfd_open", 434, (N, N), Level.GUARD, "sys_signal_guard",
        "no pidfd on a trusted process (pidfd_send_signal needs one)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[pidfd_agent]",
    ),
    _row(
        "pidfd_send_signal", 424, (FD, N, IN, N), Level.GUARD, "sys_pidfd_guard",
        "the pidfd's process (fdinfo Pid:) must not be trusted",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[pidfd_send_signal]",
    ),
    # who gets a file's SIGIO/SIGURG (and F_SETSIG's signal, SIGSTOP included)
    _row(
        "fcntl", 72, (FD, N, A), Level.GUARD, "sys_fcntl_guard",
        "F_SETOWN/F_SETOWN_EX toward a trusted pid or group: EPERM; the kernel reads a checked copy",
        when=_is32(1, F_SETOWN, F_SETOWN_EX),
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[setown_stop_agent]",
    ),
    _row(
        "ioctl", 16, (FD, N, A), Level.GUARD, "sys_ioctl_guard",
        "FIOSETOWN/SIOCSPGRP (a socket's owner), TIOCSPGRP (a terminal's foreground group) "
        "toward a trusted pid or group: EPERM, on a checked copy; USERFAULTFD_IOC_NEW: EPERM; "
        "TIOCSTI and TIOCLINUX: EPERM (they would type into the terminal the guest shares "
        "with the user)",
        when=_is32(1, FIOSETOWN, SIOCSPGRP, TIOCSPGRP, USERFAULTFD_IOC_NEW, TIOCSTI, TIOCLINUX),
        reach=Reach.PID | Reach.TERMINAL | Reach.DEVICE | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[fiosetown_stop_agent]",
    ),
    # another process's limits, scheduling, priority, memory placement (0: the caller's own,
    # not trapped): a lowered RLIMIT_CPU kills with SIGXCPU, a lowered RLIMIT_NOFILE
    # starves a server, SCHED_IDLE or nice 19 starves the agent
    _row(
        "prlimit64", 302, (N, N, N, N), Level.GUARD, "sys_signal_guard",
        "refused (EPERM) toward the supervisor, agent and server", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{ESC}::test_trusted_process_attack[prlimit_agent]",
    ),
    _row(
        "sched_setaffinity", 203, (N, N, N), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[sched_setaffinity_agent]",
    ),
    _row(
        "sched_setscheduler", 144, (N, N, N), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setscheduler]",
    ),
    _row(
        "sched_setparam", 142, (N, N), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setparam]",
    ),
    _row(
        "sched_setattr", 314, (N, N, N), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[sched_setattr]",
    ),
    _row(
        "setpriority", 141, (N, N, N), Level.GUARD, "sys_priority_guard",
        "toward a trusted pid or group: EPERM; PRIO_USER (every process of a user): EPERM",
        when=((Cond(1, "NE", 0),), *_is32(0, PRIO_USER)),
        reach=Reach.PID | Reach.OTHER_PROCESS,
        shown_by=f"{ESC}::test_trusted_process_attack[setpriority_agent]",
    ),
    _row(
        "ioprio_set", 251, (N, N, N), Level.GUARD, "sys_priority_guard",
        "as setpriority (IOPRIO_WHO_USER: EPERM)",
        when=((Cond(1, "NE", 0),), *_is32(0, IOPRIO_WHO_USER)),
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[ioprio_set]",
    ),
    _row(
        "migrate_pages", 256, (N, N, A, A), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[migrate_pages]",
    ),
    _row(
        "move_pages", 279, (N, N, A, A, A, N), Level.GUARD, "sys_signal_guard", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[move_pages]",
    ),
    _row(
        "get_robust_list", 274, (N, OUT, OUT), Level.GUARD, "sys_signal_guard",
        "another process's robust-list address (an ASLR leak)", when=_other_pid,
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[get_robust_list]",
    ),
    _row(
        "kcmp", 312, (N, N, N, N, N), Level.GUARD, "sys_kcmp_guard",
        "compares two processes' files and memory: EPERM when either is trusted",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[kcmp]",
    ),
    _deny(
        "ptrace", 101, errno.EPERM, "guests may not trace (the supervisor, the agent or each other)",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[ptrace_agent]",
    ),
    _deny(
        "process_vm_readv", 310, errno.EPERM, "reads another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY,
        shown_by=f"{ESC}::test_trusted_process_attack[process_vm_readv_agent]",
    ),
    _deny(
        "process_vm_writev", 311, errno.EPERM, "writes another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY, shown_by=f"{PIDGUARD}[process_vm_writev]",
    ),
    _deny(
        "process_madvise", 440, errno.EPERM, "acts on another process's memory",
        reach=Reach.PID | Reach.OTHER_PROCESS | Reach.MEMORY | Reach.MEMORY_MAP,
        shown_by=f"{PIDGUARD}[process_madvise]",
    ),
    _deny(
        "process_mrelease", 448, errno.EPERM, "reaps a dying process's memory (low-memory killers only)",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[process_mrelease]",
    ),
    _deny(
        "pidfd_getfd", 438, errno.EPERM, "steals another process's fds",
        reach=Reach.PID | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[pidfd_getfd]",
    ),
    _deny(
        "vhangup", 153, errno.EPERM, "hangs up the terminal: SIGHUP to its session (the supervisor's)",
        reach=Reach.TERMINAL | Reach.OTHER_PROCESS, shown_by=f"{PIDGUARD}[vhangup]",
    ),
    _deny("open_by_handle_at", 304, errno.EPERM, "opens by handle, bypassing paths"),
    _deny("chroot", 161, errno.EPERM, "would change the root the namespace is resolved against"),
    _deny("pivot_root", 155, errno.EPERM, "mounts"),
    _deny("mount", 165, errno.EPERM, "mounts"),
    _deny("umount2", 166, errno.EPERM, "mounts"),
    _deny("open_tree", 428, errno.EPERM, "mounts"),
    _deny("move_mount", 429, errno.EPERM, "mounts"),
    _deny("fsopen", 430, errno.EPERM, "mounts"),
    _deny("fsconfig", 431, errno.EPERM, "mounts"),
    _deny("fsmount", 432, errno.EPERM, "mounts"),
    _deny("fspick", 433, errno.EPERM, "mounts"),
    _deny("mount_setattr", 442, errno.EPERM, "mounts"),
    _deny("open_tree_attr", 467, errno.EPERM, "mounts"),
    _deny("fanotify_mark", 301, errno.EPERM, "watches paths outside the supervisor's view"),
    _deny("swapon", 167, errno.EPERM, "host administration"),
    _deny("swapoff", 168, errno.EPERM, "host administration"),
    _deny("acct", 163, errno.EPERM, "host administration"),
    _deny("quotactl", 179, errno.EPERM, "host administration"),
    _deny("quotactl_fd", 443, errno.EPERM, "host administration"),
    _deny("uselib", 134, errno.ENOSYS, "obsolete"),
    _deny("kexec_load", 246, errno.EPERM, "host administration"),
    _deny("kexec_file_load", 320, errno.EPERM, "host administration"),
    _deny("init_module", 175, errno.EPERM, "host administration"),
    _deny("finit_module", 313, errno.EPERM, "host administration"),
    _deny("delete_module", 176, errno.EPERM, "host administration"),
    _deny("reboot", 169, errno.EPERM, "host administration"),
    _deny("bpf", 321, errno.EPERM, "kernel programs"),
    _deny("perf_event_open", 298, errno.EPERM, "kernel tracing"),
    _deny(
        "keyctl",
        250,
        errno.EPERM,
        "kernel keyrings (the agent's secrets live elsewhere, but keyrings are shared)",
    ),
    _deny("add_key", 248, errno.EPERM, "kernel keyrings"),
    _deny("request_key", 249, errno.EPERM, "kernel keyrings"),
)

#: The newest syscall number the table was written against; larger ones get ENOSYS.
MAX_KNOWN_NR = 470
#: Numbers above MAX_KNOWN_NR refused with ENOSYS by the filter (the kernel's range).
UNKNOWN_RANGE = range(MAX_KNOWN_NR + 1, 512)

BY_NR: dict[int, SyscallSpec] = {spec.nr: spec for spec in TABLE}
BY_NAME: dict[str, SyscallSpec] = {spec.name: spec for spec in TABLE}
if len(BY_NR) != len(TABLE) or len(BY_NAME) != len(TABLE):
    raise TypeError("the syscall table names a syscall twice")
