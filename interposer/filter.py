"""The guest's seccomp-BPF filter, generated from the syscall table.

Built in the supervisor with pyseccomp (over libseccomp) and exported as raw
BPF, so that the forked child only makes two ``prctl`` calls before ``execve``
(no allocation, no library state after fork). Wrong architecture and x32
numbers kill the process; table rows trace, refuse or kill; syscall numbers
newer than the table get ENOSYS; everything else is allowed and runs at
native speed.

With the notify engine (:class:`~interposer.notify.Engine`), rows whose
``channel`` is NOTIFY get ``SECCOMP_RET_USER_NOTIF`` instead of TRACE, and the
child loads the program with ``seccomp(SECCOMP_SET_MODE_FILTER,
SECCOMP_FILTER_FLAG_NEW_LISTENER)``, which gives it the listener fd (close-on-
exec) that the supervisor then takes (:meth:`CompiledFilter.load`), and with
``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` (5.19) where the kernel has it: once
the supervisor has received a call, only a fatal signal ends the guest's wait.

``synthfs run`` takes its filter from :func:`cached_filter`: the same BPF is kept
from one run to the next in a private directory no guest can write, under a name
that is a digest of everything the compilation reads, so a cold start pays
neither pyseccomp's import (its ``find_library`` runs ``ldconfig`` twice) nor the
compilation: ~40 ms of the launcher's wall time.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import TYPE_CHECKING

from synthfs.interposer.bpf import Program
from synthfs.interposer.notify import Engine
from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action, Channel, Cond, Gate
from synthfs.policy.engine import NetworkMode, Policy

if TYPE_CHECKING:
    import pyseccomp

__all__ = ["CompiledFilter", "active_gates", "build_filter", "cached_filter"]


class CompiledFilter:
    """Raw BPF ready to load; the buffers are allocated before any fork."""

    def __init__(
        self,
        bpf: bytes,
        gates: frozenset[Gate] = frozenset(Gate),
        engine: Engine = Engine.PTRACE,
    ) -> None:
        self.program = Program(bpf)
        self.bpf = bpf
        #: the table rows' gates this filter was built with (the supervisor reads HOST)
        self.gates = gates
        #: NOTIFY: the NOTIFY rows notify, and :meth:`load` returns the listener fd
        self.engine = engine

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8

    def load(self) -> int:
        """Set no_new_privs and install the filter in the calling process.

        Returns the new listener fd under the notify engine (close-on-exec, as the
        kernel makes it), else -1."""
        return self.program.load(listener=self.engine is Engine.NOTIFY)


def _arg(cond: Cond) -> pyseccomp.Arg:
    import pyseccomp as sc

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


def build_filter(policy: Policy | None = None, engine: Engine = Engine.PTRACE) -> CompiledFilter:
    """The filter for every guest, from :data:`interposer.syscalls.TABLE`.

    Rows gated on the policy (:class:`~interposer.syscalls.Gate`) are left out
    when ``policy`` cannot need them, so ``network = "allow"`` traps no socket
    call; ``None`` builds every row. ``engine`` NOTIFY: rows of channel NOTIFY
    notify instead of tracing (``engine`` must be a chosen one, not AUTO).
    """
    if engine is Engine.AUTO:
        raise ValueError("build_filter needs a chosen engine (notify.choose), not auto")
    gates = active_gates(policy)
    return CompiledFilter(_compile(gates, engine), gates, engine)


def _compile(gates: frozenset[Gate], engine: Engine) -> bytes:
    import tempfile

    import pyseccomp as sc

    notify = engine is Engine.NOTIFY
    filt = sc.SyscallFilter(sc.ALLOW)
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for spec in TABLE:
        if spec.gate not in gates:
            continue
        if spec.action is Action.TRACE:
            if notify and spec.channel is Channel.NOTIFY and spec.ptrace_if is not None:
                # with the bit: a ptrace stop; without it: a notification
                bit = spec.ptrace_if
                assert bit.op == "MASKED_EQ" and bit.value == bit.mask and not spec.when
                filt.add_rule_exactly(sc.TRACE(spec.nr & 0xFFFF), spec.nr, _arg(bit))
                filt.add_rule_exactly(sc.NOTIFY, spec.nr,
                                      sc.Arg(bit.index, sc.MASKED_EQ, bit.mask, 0))
                continue
            if notify and spec.channel is Channel.NOTIFY:
                action = sc.NOTIFY
            else:
                action = sc.TRACE(spec.nr & 0xFFFF)
        elif spec.action is Action.ERRNO:
            action = sc.ERRNO(spec.errno)
        else:
            action = sc.KILL_PROCESS
        if spec.when:
            for conds in spec.when:
                filt.add_rule_exactly(action, spec.nr, *(_arg(c) for c in conds))
        else:
            filt.add_rule_exactly(action, spec.nr)
    for nr in UNKNOWN_RANGE:
        filt.add_rule_exactly(sc.ERRNO(errno.ENOSYS), nr)
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


#: the cache's format: part of every entry's name
_CACHE_FORMAT = b"synthfs filter cache 1"
#: no filter is larger (the table's ~400 rows are ~2,000 instructions)
_MAX_BPF = 1 << 18


def cached_filter(policy: Policy | None, engine: Engine, directory: str) -> CompiledFilter:
    """:func:`build_filter`'s filter, kept in ``directory`` from one run to the next.

    ``directory`` must be refused to every guest (``synthfs run`` keeps it in
    :func:`synthfs.private_dirs.filter_cache_dir`, refused to every run's guests by its
    name): a guest that could write it would choose
    the next run's filter. It and its parent are made 0700 here and used only when both
    are real directories of this user with no access for others; an entry only when it
    is a regular file of this user that no one else can write.

    An entry's name is a digest of all the compilation reads: this module's source
    (how rows become rules), every row's number, action, errno, conditions, gate and
    channel, the unknown range, the gates, the engine and the machine; a change to any
    of them names another entry. It also records the pyseccomp and libseccomp files that
    compiled it (path, inode, size, mtime): after an upgrade of either it is compiled
    again. Any failure of the cache compiles, as :func:`build_filter` does.
    """
    if engine is Engine.AUTO:
        raise ValueError("cached_filter needs a chosen engine (notify.choose), not auto")
    gates = active_gates(policy)
    path = os.path.join(directory, _digest(gates, engine) + ".bpf")
    bpf = _read_entry(directory, path)
    if bpf is None:
        bpf = _compile(gates, engine)
        _write_entry(directory, path, bpf)
    return CompiledFilter(bpf, gates, engine)


def _digest(gates: frozenset[Gate], engine: Engine) -> str:
    import hashlib

    h = hashlib.sha256(_CACHE_FORMAT)
    with open(__file__, "rb") as f:
        h.update(f.read())
    rows = [(s.nr, s.action, s.errno, s.when, s.gate, s.channel, s.ptrace_if) for s in TABLE]
    h.update(repr((rows, UNKNOWN_RANGE, sorted(g.value for g in gates), engine.value,
                   os.uname().machine)).encode())
    return h.hexdigest()


def _compilers() -> bytes:
    """pyseccomp's and libseccomp's files as loaded in this process (after a compile)."""
    import pyseccomp

    paths = [pyseccomp.__file__ or ""]
    with open("/proc/self/maps", "rb") as f:
        paths += sorted({line.split()[-1].decode() for line in f
                         if b"/libseccomp" in line and line.split()[-1].startswith(b"/")})
    return _identify(paths)


def _identify(paths: list[str]) -> bytes:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append(f"{path}\t{st.st_ino} {st.st_size} {st.st_mtime_ns}")
    return "\n".join(out).encode("utf-8", "surrogateescape")


def _private(directory: str) -> bool:
    """Whether ``directory`` and its parent are real directories of this user, 0700."""
    import stat

    for d in (os.path.dirname(directory), directory):
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return False
    return True


def _read_entry(directory: str, path: str) -> bytes | None:
    import stat

    try:
        if not _private(directory):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022 \
                or st.st_size > _MAX_BPF + 4096:
            return None
        data = os.read(fd, st.st_size + 1)
        header, sep, bpf = data.partition(b"\n\n")
        if not sep or not bpf or len(bpf) % 8 or header != _identify(
                [os.fsdecode(line.split(b"\t")[0]) for line in header.split(b"\n")]):
            return None
        return bpf
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _write_entry(directory: str, path: str, bpf: bytes) -> None:
    """Keep ``bpf`` at ``path`` (written aside, then renamed: never seen half-written)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        entry = _compilers() + b"\n\n" + bpf
        for d in (os.path.dirname(directory), directory):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
        if not _private(directory) or len(bpf) > _MAX_BPF:
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, entry)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
