"""``synthfs run -v``: one strace-like line per syscall the supervisor handles.

    [pid 4242] openat(AT_FDCWD, "/data/x", O_RDONLY|O_CLOEXEC) = 3 [allow: app cat]

The arguments are decoded by their roles in the syscall table
(:class:`~interposer.syscalls.Role`: a dirfd shows ``AT_FDCWD``, a path the
string read from the guest, open flags ``O_*``, modes in octal), the result as
strace shows it (``-1 ENOENT (No such file or directory)``), then the policy's
decision on the call, when it asked for one. Strings are read from the guest
again for the line only (what the call decided on is the supervisor's own
copy), bounded, and escaped as strace escapes them.

Only a run with ``-v`` builds a :class:`Tracer`; without one the supervisor's
loop tests one attribute and formats nothing.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from collections.abc import Callable

from synthfs.interposer.ports import Call
from synthfs.interposer.syscalls import Role, SyscallSpec
from synthfs.policy.engine import Decision

__all__ = ["Tracer", "at_flags", "escape", "open_flags"]

#: bytes of a string argument shown at most (strace shows whole paths; PATH_MAX bounds them)
STRING_MAX = 4096
_AT_FDCWD = -100
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

_O_ACCMODE = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")
#: open flags above the access mode, in strace's order (x86_64 values); O_SYNC and
#: O_TMPFILE are composites, named before their parts
_O_SYNC, _O_DSYNC = 0o4010000, 0o10000
_O_TMPFILE, _O_DIRECTORY = 0o20200000, 0o200000
_O_CREAT = 0o100
_O_FLAGS = (
    (0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"),
    (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"),
    (0o10000000, "O_PATH"),
)
_AT_FLAGS = (
    (0x100, "AT_SYMLINK_NOFOLLOW"), (0x200, "AT_REMOVEDIR"), (0x400, "AT_SYMLINK_FOLLOW"),
    (0x800, "AT_NO_AUTOMOUNT"), (0x1000, "AT_EMPTY_PATH"), (0x2000, "AT_STATX_FORCE_SYNC"),
    (0x4000, "AT_STATX_DONT_SYNC"), (0x8000, "AT_RECURSIVE"),
)
_RESOLVE = (
    (0x01, "RESOLVE_NO_XDEV"), (0x02, "RESOLVE_NO_MAGICLINKS"), (0x04, "RESOLVE_NO_SYMLINKS"),
    (0x08, "RESOLVE_BENEATH"), (0x10, "RESOLVE_IN_ROOT"), (0x20, "RESOLVE_CACHED"),
)
_FILE_TYPES = {
    0o140000: "S_IFSOCK", 0o120000: "S_IFLNK", 0o100000: "S_IFREG", 0o060000: "S_IFBLK",
    0o040000: "S_IFDIR", 0o020000: "S_IFCHR", 0o010000: "S_IFIFO",
}
_FAMILIES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK",
             17: "AF_PACKET"}
#: the kernel's restart codes, seen at a syscall's exit when a signal interrupted it
_RESTART = {512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND",
            516: "ERESTART_RESTARTBLOCK"}
#: results that are addresses (shown in hex)
_ADDRESS_RESULTS = frozenset({"brk", "mmap", "mremap", "shmat"})
_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"',
            0x5C: "\\\\"}


def _bits(value: int, names: tuple[tuple[int, str], ...]) -> list[str]:
    out = []
    for bit, name in names:
        if value & bit:
            out.append(name)
            value &= ~bit
    if value:
        out.append(hex(value))
    return out


def open_flags(flags: int) -> str:
    """``O_RDONLY|O_CLOEXEC``: open flags as strace names them."""
    flags &= _U32
    parts = [_O_ACCMODE[flags & 3]]
    rest = flags & ~3
    if rest & _O_TMPFILE == _O_TMPFILE:
        parts.append("O_TMPFILE")
        rest &= ~_O_TMPFILE
    if rest & _O_SYNC == _O_SYNC:
        parts.append("O_SYNC")
        rest &= ~_O_SYNC
    return "|".join(parts + _bits(rest, _O_FLAGS))


def at_flags(flags: int, syscall: str = "") -> str:
    """``AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH``, or ``0`` (0x200 is AT_EACCESS for faccessat*)."""
    flags &= _U32
    if not flags:
        return "0"
    names: tuple[tuple[int, str], ...] = _AT_FLAGS
    if syscall.startswith("faccessat"):
        names = tuple((b, "AT_EACCESS" if b == 0x200 else n) for b, n in names)
    return "|".join(_bits(flags, names))


def mode(value: int) -> str:
    """``0644``, ``S_IFCHR|0600`` (a mknod's file type named)."""
    value &= _U32
    kind = _FILE_TYPES.get(value & 0o170000)
    perms = f"0{value & 0o7777:03o}"
    if kind:
        return f"{kind}|{perms}"
    if value & ~0o7777:
        return f"{value:#o}"
    return perms


def escape(raw: bytes, limit: int = STRING_MAX) -> str:
    """A quoted C string as strace prints it: printable ASCII as is, ``\\n``, ``\\"``...,
    other bytes in octal (``\\303\\251``); ``...`` after it when cut at ``limit``."""
    cut = len(raw) > limit
    out = ['"']
    data = raw[:limit]
    for i, b in enumerate(data):
        if b in _ESCAPES:
            out.append(_ESCAPES[b])
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            nxt = data[i + 1] if i + 1 < len(data) else None
            digits = nxt is not None and 0x30 <= nxt <= 0x37
            out.append(f"\\{b:03o}" if digits else f"\\{b:o}")
    out.append('"')
    return "".join(out) + ("..." if cut else "")


def _takes_mode(flags: int) -> bool:
    return bool(flags & _O_CREAT) or flags & _O_TMPFILE == _O_TMPFILE


def _s32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


def _pointer(value: int) -> str:
    return "NULL" if value == 0 else hex(value & _U64)


def _errno_text(err: int) -> str:
    if err in _RESTART:  # interrupted; strace prints these the same way
        return f"? {_RESTART[err]}"
    return f"-1 {_errno.errorcode.get(err, f'E{err}')} ({os.strerror(err)})"


def result(value: int, syscall: str = "") -> str:
    """What the guest got, as strace shows it: ``3``, ``-1 ENOENT (No such file...)``."""
    value &= _U64
    if value >= _U64 - 4095 + 1:  # -4095..-1: an errno
        return _errno_text((-value) & _U64)
    if syscall in _ADDRESS_RESULTS:
        return hex(value)
    return str(value - (1 << 64) if value >> 63 else value)


class Tracer:
    """Formats and writes the ``-v`` lines; collects the decisions the policy made
    during the call being handled (``noted``, filled by the run's Env)."""

    def __init__(self, write: Callable[[str], object] | None = None) -> None:
        self.noted: list[tuple[str, str, Decision, bool]] = []
        self._write = write if write is not None else _to_stderr

    # -- one call ------------------------------------------------------------------------

    def entry(self, call: Call, spec: SyscallSpec) -> tuple[str, str, str]:
        """(name, the call as text, the decision note); takes the decisions noted so far."""
        return spec.name, f"{spec.name}({', '.join(self._args(call, spec))})", self._note()

    def emit(self, tid: int, shown: tuple[str, str, str], outcome: str) -> None:
        _name, text, note = shown
        self._write(f"[pid {tid}] {text} = {outcome}{note}\n")

    def _note(self) -> str:
        if not self.noted:
            return ""
        noted = self.noted[:]
        self.noted.clear()  # the run's Env holds this very list
        # The denial that decided the call, else one let through by --warn, else an allow.
        chosen = next((n for n in noted if not n[2].allowed and n[3]), None)
        chosen = chosen or next((n for n in noted if not n[2].allowed), None) or noted[0]
        app, _op, decision, enforced = chosen
        if decision.allowed:
            return f" [allow: app {app}]"
        if enforced:
            return f" [deny: app {app}, rule {decision.rule}]"
        name = _errno.errorcode.get(decision.errno, str(decision.errno))
        return f" [warn: app {app}, rule {decision.rule}, would be {name}]"

    # -- arguments, by role --------------------------------------------------------------

    def _args(self, call: Call, spec: SyscallSpec) -> list[str]:
        roles = spec.args
        args = call.args
        out: list[str] = []
        flags = None
        for i, role in enumerate(roles):
            value = args[i]
            if role is Role.FLAGS:
                flags = value
            if role is Role.MODE and flags is not None and not _takes_mode(flags):
                continue  # open without O_CREAT/O_TMPFILE: strace leaves the mode out
            out.append(self._arg(call, spec, role, value, args[i + 1] if i + 1 < 6 else 0))
        return out

    def _arg(self, call: Call, spec: SyscallSpec, role: Role, value: int, nxt: int) -> str:
        if role in (Role.PATH, Role.PATH2, Role.TEXT):
            return _string(call, value)
        if role in (Role.DIRFD, Role.DIRFD2):
            fd = _s32(value)
            return "AT_FDCWD" if fd == _AT_FDCWD else str(fd)
        if role is Role.FD:
            return str(_s32(value))
        if role is Role.FLAGS:
            return open_flags(value)
        if role is Role.ATFLAGS:
            return at_flags(value, spec.name)
        if role is Role.MODE:
            return mode(value)
        if role is Role.INT:  # an int (its upper half ignored), or a 64-bit offset
            return str(_s32(value) if value <= _U32 else value - (value >> 63 << 64))
        if role is Role.SIZE:
            return str(value & _U64)
        if role is Role.FAMILY:
            return _FAMILIES.get(value & _U32, str(value & _U32))
        if role is Role.HOW:
            return _open_how(call, value)
        if role is Role.SOCKADDR:
            return _sockaddr(call, value, nxt & _U32)
        return _pointer(value)  # OUT, IN, ADDR


def _to_stderr(line: str) -> None:
    # A reader that went away (``2>&1 | head``) loses the lines, never the run.
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "surrogateescape"))


def _string(call: Call, addr: int) -> str:
    if addr == 0:
        return "NULL"
    try:
        return escape(os.fsencode(call.guest.read_path(addr)))
    except OSError as exc:
        if exc.errno != _errno.ENAMETOOLONG:
            return hex(addr)  # unreadable: strace shows the pointer too
    try:
        return escape(call.guest.read(addr, 256), 255)  # longer than PATH_MAX: its start
    except OSError:
        return hex(addr)


def _open_how(call: Call, addr: int) -> str:
    try:
        raw = call.guest.read(addr, 24)
    except OSError:
        return _pointer(addr)
    flags, how_mode, resolve = (int.from_bytes(raw[i : i + 8], "little") for i in (0, 8, 16))
    parts = [f"flags={open_flags(flags)}"]
    if how_mode or _takes_mode(flags):
        parts.append(f"mode={mode(how_mode)}")
    if resolve:
        parts.append(f"resolve={'|'.join(_bits(resolve, _RESOLVE))}")
    return "{" + ", ".join(parts) + "}"


def _sockaddr(call: Call, addr: int, size: int) -> str:
    if addr == 0:
        return "NULL"
    try:
        raw = call.guest.read(addr, min(size, 128))
    except OSError:
        return hex(addr)
    if len(raw) < 2:
        return hex(addr)
    family = int.from_bytes(raw[:2], "little")
    name = _FAMILIES.get(family, str(family))
    if family == 1:
        path = raw[2:].split(b"\0", 1)[0] if len(raw) > 2 and raw[2] else raw[2:]
        text = escape(path) if len(raw) > 2 and raw[2] else "@" + escape(path[1:])
        return f"{{sa_family={name}, sun_path={text}}}"
    if family == 2 and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        ip = ".".join(str(b) for b in raw[4:8])
        return f'{{sa_family={name}, sin_port=htons({port}), sin_addr=inet_addr("{ip}")}}'
    if family == 10 and len(raw) >= 24:
        import ipaddress

        port = int.from_bytes(raw[2:4], "big")
        return (f"{{sa_family={name}, sin6_port=htons({port}), "
                f'sin6_addr="{ipaddress.IPv6Address(raw[8:24])}"}}')
    return f"{{sa_family={name}, ...}}"
