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
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile

import pyseccomp as sc

from synthfs.interposer.notify import (
    NR_SECCOMP,
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    Engine,
)
from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action, Channel, Cond, Gate
from synthfs.policy.engine import NetworkMode, Policy

__all__ = ["CompiledFilter", "active_gates", "build_filter"]

_OPS = {"LT": sc.LT, "GT": sc.GT, "EQ": sc.EQ, "NE": sc.NE, "MASKED_EQ": sc.MASKED_EQ}
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
#: seccomp(2)'s operation (prctl's PR_SET_SECCOMP takes SECCOMP_MODE_FILTER instead)
SECCOMP_MODE_FILTER_SET = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CompiledFilter:
    """Raw BPF ready to load; the buffers are allocated before any fork."""

    def __init__(
        self,
        bpf: bytes,
        gates: frozenset[Gate] = frozenset(Gate),
        engine: Engine = Engine.PTRACE,
    ) -> None:
        if len(bpf) % 8 or not bpf:
            raise ValueError("BPF program must be a non-empty multiple of 8 bytes")
        self.bpf = bpf
        #: the table rows' gates this filter was built with (the supervisor reads HOST)
        self.gates = gates
        #: NOTIFY: the NOTIFY rows notify, and :meth:`load` returns the listener fd
        self.engine = engine
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
        self._syscall = self._libc.syscall
        self._syscall.restype = ctypes.c_long

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8

    def _seccomp(self, flags: int) -> int:
        return int(self._syscall(
            ctypes.c_long(NR_SECCOMP),
            ctypes.c_uint(SECCOMP_MODE_FILTER_SET),
            ctypes.c_uint(flags),
            ctypes.c_void_p(ctypes.addressof(self._prog)),
        ))

    def load(self) -> int:
        """Set no_new_privs and install the filter in the calling process.

        Returns the new listener fd under the notify engine (close-on-exec, as the
        kernel makes it), else -1."""
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        if self.engine is Engine.NOTIFY:
            fd = self._seccomp(
                SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            )
            if fd < 0 and ctypes.get_errno() == errno.EINVAL:
                # Before 5.19: a signal may still end a received call's wait (the
                # supervisor then serves it again; a fast timer can starve it).
                os.write(2, b"synthfs run: this kernel refuses SECCOMP_FILTER_FLAG_WAIT_"
                            b"KILLABLE_RECV (Linux 5.19): a signal can interrupt a call "
                            b"being served\n")
                fd = self._seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"seccomp(SET_MODE_FILTER, NEW_LISTENER): {os.strerror(err)}")
            return int(fd)
        if (
            self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog), 0, 0)
            != 0
        ):
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
        return -1


def _arg(cond: Cond) -> sc.Arg:
    if cond.op == "MASKED_EQ":
        return sc.Arg(cond.index, sc.MASKED_EQ, cond.mask, cond.value)
    return sc.Arg(cond.index, _OPS[cond.op], cond.value)


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
    notify = engine is Engine.NOTIFY
    gates = active_gates(policy)
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
        bpf = out.read()
    return CompiledFilter(bpf, gates, engine)
