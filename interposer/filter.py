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

import errno
import tempfile

import pyseccomp as sc

from synthfs.interposer.bpf import Program
from synthfs.interposer.notify import Engine
from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action, Channel, Cond, Gate
from synthfs.policy.engine import NetworkMode, Policy

__all__ = ["CompiledFilter", "active_gates", "build_filter"]

_OPS = {"LT": sc.LT, "GT": sc.GT, "EQ": sc.EQ, "NE": sc.NE, "MASKED_EQ": sc.MASKED_EQ}


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
