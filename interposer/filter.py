"""The guest's seccomp-BPF filter, generated from the syscall table.

Built in the supervisor with pyseccomp (over libseccomp) and exported as raw
BPF, so that the forked child only makes two ``prctl`` calls before ``execve``
(no allocation, no library state after fork). Wrong architecture and x32
numbers kill the process; table rows trace, refuse or kill; syscall numbers
newer than the table get ENOSYS; everything else is allowed and runs at
native speed.

Compiling costs a ``synthfs run`` more than the rest of its set-up: importing
pyseccomp runs ``ldconfig`` twice (``ctypes.util.find_library``) and
libseccomp then builds the program. :func:`build_filter` with a ``cache_dir``
keeps each program it compiled under the digest of its rules (what libseccomp
was given: the rows, the arguments compared, the actions, the architecture), so
a run whose rules were compiled before loads the same bytes instead. The cache
is trusted, a program from it is loaded into every guest: it is a directory of
this user's with mode 0700 (anything else is not used), the supervisor refuses
it to every guest (:mod:`protocol.trusted`, ``Kind.FILTER_CACHE``), and a file
in it is used only when it is this user's, private, and its checksum matches.

Trusts: the syscall table, the policy (which rows it needs) and the cache
directory as just described.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
from typing import TYPE_CHECKING

from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action, Cond, Gate
from synthfs.policy.engine import NetworkMode, Policy

if TYPE_CHECKING:
    import pyseccomp

__all__ = ["CompiledFilter", "active_gates", "build_filter", "default_filter_cache"]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CompiledFilter:
    """Raw BPF ready to load; the buffers are allocated before any fork."""

    def __init__(self, bpf: bytes, gates: frozenset[Gate] = frozenset(Gate)) -> None:
        if len(bpf) % 8 or not bpf:
            raise ValueError("BPF program must be a non-empty multiple of 8 bytes")
        self.bpf = bpf
        #: the table rows' gates this filter was built with (the supervisor reads HOST)
        self.gates = gates
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = self._libc.prctl
        self._prctl.argtypes = (
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        )
        self._prctl.restype = ctypes.c_int

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8

    def load(self) -> None:
        """Set no_new_privs and install the filter in the calling process."""
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        if (
            self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog), 0, 0)
            != 0
        ):
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def _arg(sc: pyseccomp, cond: Cond) -> pyseccomp.Arg:
    if cond.op == "MASKED_EQ":
        return sc.Arg(cond.index, sc.MASKED_EQ, cond.mask, cond.value)
    ops = {"LT": sc.LT, "GT": sc.GT, "EQ": sc.EQ, "NE": sc.NE}
    return sc.Arg(cond.index, ops[cond.op], cond.value)


def active_gates(policy: Policy | None) -> frozenset[Gate]:
    """The table rows a run under ``policy`` needs (None: every row)."""
    if policy is None:
        return frozenset(Gate)
    gates = {Gate.ALWAYS}
    if policy.network is not NetworkMode.ALLOW:
        gates |= {Gate.NETWORK, Gate.SEND}
    if policy.has_host_rules:
        gates |= {Gate.SEND, Gate.HOST}
    return frozenset(gates)


#: one rule given to libseccomp: (syscall nr, action, errno, argument comparisons)
_Rule = tuple[int, str, int, tuple[tuple[int, str, int, int], ...]]
#: the cache's format: a change to how rules are written, the rule tuples or the
#: file's layout changes this and so every key
_FORMAT = b"synthfs-bpf-1"
#: the checksum after the program in a cache file
_SUM = hashlib.sha256().digest_size
#: the kernel's limit (BPF_MAXINSNS): a larger file is not a program of ours
_MAX_BYTES = 4096 * 8


def default_filter_cache() -> str:
    """``$XDG_CACHE_HOME/synthfs-filters``, or ``~/.cache/synthfs-filters``.

    Beside the agent's content cache (``.../synthfs``), not in it: the agent
    owns that directory and may clear it.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "synthfs-filters")


def _rules(gates: frozenset[Gate]) -> list[_Rule]:
    rules: list[_Rule] = []
    for spec in TABLE:
        if spec.gate not in gates:
            continue
        for conds in spec.when or ((),):
            rules.append((spec.nr, spec.action.name, spec.errno or 0,
                          tuple((c.index, c.op, c.value, c.mask) for c in conds)))
    rules.extend((nr, "ENOSYS", errno.ENOSYS, ()) for nr in UNKNOWN_RANGE)
    return rules


def _key(rules: list[_Rule]) -> str:
    text = repr((os.uname().machine, rules)).encode()
    return hashlib.sha256(_FORMAT + b"\0" + text).hexdigest()


def _compile(rules: list[_Rule]) -> bytes:
    """The raw BPF of ``rules``, from libseccomp (imported only here: see the docstring)."""
    import tempfile

    import pyseccomp as sc

    filt = sc.SyscallFilter(sc.ALLOW)
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for nr, kind, err, conds in rules:
        if kind == Action.TRACE.name:
            action = sc.TRACE(nr & 0xFFFF)
        elif kind == Action.KILL.name:
            action = sc.KILL_PROCESS
        else:  # Action.ERRNO, and ENOSYS past the table
            action = sc.ERRNO(err)
        filt.add_rule_exactly(action, nr, *(_arg(sc, Cond(*c)) for c in conds))
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def _private_dir(path: str) -> bool:
    """``path`` is (now) a real directory of this user's that nobody else may enter."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o7777 == 0o700


def _cached(path: str, key: str) -> bytes | None:
    """The program stored under ``key``, when the file is sound; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        import stat

        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077
                or st.st_size > _MAX_BYTES + _SUM):
            return None
        data = os.read(fd, _MAX_BYTES + _SUM + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    bpf, digest = data[:-_SUM], data[-_SUM:]
    if not bpf or len(bpf) % 8 or hashlib.sha256(key.encode() + bpf).digest() != digest:
        return None
    return bpf


def _store(path: str, key: str, bpf: bytes) -> None:
    """Write ``bpf`` to ``path`` whole or not at all (a private file, renamed into place)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return
    try:
        with open(fd, "wb") as out:
            out.write(bpf + hashlib.sha256(key.encode() + bpf).digest())
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def build_filter(policy: Policy | None = None, cache_dir: str | None = None) -> CompiledFilter:
    """The filter for every guest, from :data:`interposer.syscalls.TABLE`.

    Rows gated on the policy (:class:`~interposer.syscalls.Gate`) are left out
    when ``policy`` cannot need them, so ``network = "allow"`` traps no socket
    call; ``None`` builds every row. ``cache_dir``: keep compiled programs there
    and reuse them (see the module's docstring); a directory that is not a
    private one of this user's is not used, and the program is compiled.
    """
    gates = active_gates(policy)
    rules = _rules(gates)
    if cache_dir is None or not _private_dir(cache_dir):
        return CompiledFilter(_compile(rules), gates)
    key = _key(rules)
    path = os.path.join(cache_dir, f"{key}.bpf")
    bpf = _cached(path, key)
    if bpf is None:
        bpf = _compile(rules)
        _store(path, key, bpf)
    return CompiledFilter(bpf, gates)
