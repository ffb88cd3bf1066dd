"""The :class:`~interposer.ports.Env` of one ``synthfs run``: policy checks, audit, pins.

Split from :mod:`interposer.run` so that the command can start the embedded
server and agent before it pays for these imports (the policy engine, the
protocol classes): they boot while the interposer loads. Trusts the policy
it is given; everything about the guest comes in through :class:`Call`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import re
import time
from typing import IO

from synthfs.interposer import abi
from synthfs.interposer.hostside import HostSide
from synthfs.interposer.namespace import Namespace
from synthfs.interposer.ports import Call, Proc
from synthfs.interposer.remote import Remote
from synthfs.policy.audit import AuditRecord, Denials, Denied
from synthfs.policy.engine import (
    WRITE_OPS,
    Action,
    App,
    Decision,
    NetworkMode,
    Op,
    Policy,
)

#: op names as handlers give them (an Enum call by value costs ~1 µs per check)
_OPS = {op.value: op for op in Op}

__all__ = ["LOADER_VARIABLES", "Enforcement", "RunEnv", "borrowed_identity"]


class Enforcement(enum.Enum):
    """What a denial of the policy does (``synthfs run --warn``, ``--permissive``)."""

    ENFORCE = "enforce"  # the guest gets the errno
    #: the call goes on, the denial is reported (audit, summary, -v). Only the policy's
    #: own rules are relaxed: the trusted paths, the guards and the refused stop routes
    #: never ask the policy, and the decisions in :data:`ALWAYS_ENFORCED` stand.
    WARN = "warn"


#: denials --warn never lets through: the engine's own refusals (a path it cannot
#: judge) and --read-only (a user who asked for an unwritten mount gets one)
ALWAYS_ENFORCED = frozenset({"engine", "--read-only"})
_READ_ONLY = Decision(Action.DENY, "--read-only", "--read-only: the mount is read-only",
                      errno.EROFS)

#: Environment variables that make the dynamic loader or the C library run, load or
#: write code and files the caller chose: glibc's list of variables it drops for a
#: setuid program (elf/dl-unsecvars.h) that change what runs, plus every ``LD_*``
#: (musl reads LD_PRELOAD and LD_LIBRARY_PATH). A process exec'd with one of them is
#: not identified as its executable (docs/policy.md, "Which app is a process?").
LOADER_VARIABLES = frozenset(
    {"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCPATH", "MALLOC_TRACE",
     "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS"}
)

#: The dynamic loaders' file names: run directly (``ld.so PROGRAM``) they load any program.
_LOADER_NAME = re.compile(
    r"^(?:ld-linux[-\w.]*\.so(?:\.\d+)*|ld-musl-\w+\.so\.\d+|ld\.so(?:\.\d+)?|ld64\.so(?:\.\d+)*)$"
)


def borrowed_identity(exe: str, environ: bytes) -> str | None:
    """Why a freshly exec'd image runs code chosen besides ``exe``, or None.

    ``environ`` is the new image's environment as the kernel laid it out
    (``/proc/PID/environ`` at the exec stop, before the image runs: no thread
    can change it any more).
    """
    if _LOADER_NAME.match(exe.rpartition("/")[2]):
        return "the dynamic loader run directly"
    for entry in environ.split(b"\0"):
        name = entry.partition(b"=")[0].decode("latin-1")
        if name.startswith("LD_") or name in LOADER_VARIABLES:
            return f"loader variable {name} in its environment"
    return None


class RunEnv:
    """The :class:`~interposer.ports.Env` of one ``synthfs run``."""

    def __init__(
        self,
        ns: Namespace,
        repo: Remote,
        host: HostSide,
        policy: Policy,
        audit: IO[str] | None = None,
        audit_all: bool = False,
        enforcement: Enforcement = Enforcement.ENFORCE,
        noted: list[tuple[str, str, Decision, bool]] | None = None,
    ) -> None:
        """``noted`` (``synthfs run -v``): every decision is appended to it as
        (app, op, decision, enforced), for the supervisor's trace line."""
        self.ns = ns
        self.repo = repo
        self.host = host
        self.policy = policy
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.reads_undumpable = abi.has_capability(abi.CAP_SYS_PTRACE)
        self.audit = audit
        self.audit_all = audit_all
        self.enforcement = enforcement
        self.noted = noted
        #: record allowed decisions too (in the audit log when audit_all, in ``noted``)
        self._every = audit_all or noted is not None
        self.denials = 0
        #: the policy's denials, for the summary at the end of the run
        self.denied = Denials()
        self._last: tuple[Call, str, str, int] | None = None
        self._denied_last: Call | None = None
        self._default_app = policy.unmatched  # before the first exec
        self.host_rules = policy.has_host_rules
        self.bound_names: dict[int, bytes] = {}

    def identify(self, proc: Proc) -> str | None:
        """Decide the app of a process at its exec stop; a reason to kill it, or None.

        Killed: the image the kernel mapped, or the ``PT_INTERP`` loader it
        mapped with it, is not a file the execve checked (a directory was
        swapped for a symlink between the check and the exec:
        handlers.cwd_exec._expect_exec).
        """
        checked, proc.exec_checked = proc.exec_checked, None
        held, proc.exec_fds = proc.exec_fds, None
        for fd in held or ():
            with contextlib.suppress(OSError):
                os.close(fd)  # the files an exec from /data ran (handlers.cwd_exec._exec_synthetic)
        if checked is not None:
            try:
                s = os.stat(f"/proc/{proc.tgid}/exe")
                mapped: tuple[int, int] | None = (s.st_dev, s.st_ino)
            except OSError:
                mapped = None
            if mapped not in checked or not abi.loader_checked(proc.tgid, checked):
                proc.app = self.policy.unmatched
                self.denials += 1
                return "the executable changed between the policy check and the exec"
        exe = proc.exe

        def digest() -> str:
            h = hashlib.sha256()
            with open(f"/proc/{proc.tgid}/exe", "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()

        try:
            with open(f"/proc/{proc.tgid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            environ = b"LD_=unreadable"  # fail closed: an environment we cannot see
        why = borrowed_identity(exe, environ)
        proc.app = self.policy.identify(exe, proc.argv, digest, borrowed=why is not None)
        return None

    @property
    def network(self) -> NetworkMode:
        return self.policy.network

    def _app(self, call: Call) -> App:
        app = call.proc.app
        return app if isinstance(app, App) else self._default_app

    def check(self, call: Call, op: str, guest_path: str) -> int:
        """A decision on the mount (``Policy.decide``), audited."""
        t0 = time.perf_counter_ns()
        app = self._app(call)
        decision = self.policy.decide(app, _OPS[op], guest_path)
        if decision.allowed and not self._every:
            return 0
        return self._record(call, app, op, guest_path, decision, t0, mount=True)

    def hides(self, call: Call, guest_path: str) -> bool:
        """Whether ``stat`` of ``guest_path`` is denied with ENOENT (and that takes effect,
        as :meth:`check` says: only then is it audited)."""
        decision = self.policy.decide(self._app(call), Op.STAT, guest_path)
        if decision.allowed or decision.errno != errno.ENOENT:
            return False
        return self.check(call, "stat", guest_path) == errno.ENOENT

    def check_host(self, call: Call, op: str, path: str, via: str = "") -> int:
        """A decision on a resolved host path (``Policy.decide_host``), audited
        (``via``: the repository symlink that led there)."""
        if not self.host_rules:
            return 0  # no [host]: the host is untouched (and there is nothing to audit)
        t0 = time.perf_counter_ns()
        app = self._app(call)
        if op == "mknod":  # a device node: its own [host] list
            decision = self.policy.decide_mknod(app, path)
        else:
            decision = self.policy.decide_host(app, _OPS[op], path)
        if decision.allowed and not self._every:
            return 0
        return self._record(call, app, op, path, decision, t0, via)

    def check_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        """0 when moving ``src`` to ``dst`` (guest paths on the mount; ``tree``: a
        directory) keeps every path under rules at least as strict
        (``Policy.decide_rename``), else the errno (EXDEV), audited."""
        t0 = time.perf_counter_ns()
        app = self._app(call)
        decision = self.policy.decide_rename(app, src, dst, tree)
        if decision.allowed and not self._every:
            return 0
        return self._record(call, app, "rename", f"{src} -> {dst}", decision, t0, mount=True)

    def check_host_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        """:meth:`check_rename` for two resolved host paths (``[host]`` rules)."""
        if not self.host_rules:
            return 0
        t0 = time.perf_counter_ns()
        decision = self.policy.decide_host_rename(src, dst, tree)
        if decision.allowed and not self._every:
            return 0
        return self._record(call, self._app(call), "rename", f"{src} -> {dst}", decision, t0)

    def pin(self, real_path: str, whole: bool, via: str | None = None) -> tuple[str, int] | None:
        """See :class:`~interposer.ports.Env`. With or without ``[host]`` rules:
        with none, the agent's socket, key and cache are still refused, and a
        kernel walk of the checked text could reach them (a directory swapped
        for a symlink); a pin costs one ``openat2`` in the supervisor."""
        if via is not None:
            # A /proc link to an fd (the guest's /proc/PID/fd/N, its cwd): the object
            # it leads to now, which must be the one checked (a guest thread may dup2
            # another file onto N meanwhile). ``real_path`` is the link text checked.
            fd = os.open(via, os.O_PATH | os.O_CLOEXEC)
            try:
                now = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                now = ""
            if now != real_path:
                os.close(fd)
                raise OSError(errno.EACCES, "the fd changed under the check")
            return f"/proc/{os.getpid()}/fd/{fd}", fd
        if whole:
            target, name = real_path, ""
        else:
            head, _, name = real_path.rpartition("/")
            target = head or "/"
            if not name:
                return None
        flags = os.O_PATH | os.O_CLOEXEC | (0 if whole else os.O_DIRECTORY)
        fd = abi.host_openat2(target, flags, abi.RESOLVE_NO_SYMLINKS | abi.RESOLVE_NO_MAGICLINKS)
        base = f"/proc/{os.getpid()}/fd/{fd}"
        return (f"{base}/{name}" if name else base), fd

    def unpin(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    def check_net(self, call: Call, op: str, address: str, local: bool) -> int:
        """A decision on the network (``[host] network``), audited."""
        t0 = time.perf_counter_ns()
        mode = self.policy.network
        allowed = mode is NetworkMode.ALLOW or (mode is NetworkMode.LOOPBACK and local)
        if allowed and not self._every:
            return 0
        rule = f"[host] network = {mode.value!r}"
        if allowed:
            decision = Decision(Action.ALLOW, rule, f"network {mode.value} allows it", 0)
        else:
            reason = "no IP traffic" if mode is NetworkMode.DENY else "loopback addresses only"
            decision = Decision(Action.DENY, rule, reason, errno.EACCES)
        return self._record(call, self._app(call), op, address, decision, t0)

    def _record(
        self,
        call: Call,
        app: App,
        op: str,
        path: str,
        decision: Decision,
        t0: int,
        via: str = "",
        *,
        mount: bool = False,
    ) -> int:
        """Count, note and audit one decision; the errno the guest gets (0: allowed).

        The one place a denial takes effect: under ``--warn`` it is reported and
        the call goes on (unless :data:`ALWAYS_ENFORCED` names its rule; on a
        ``--read-only`` mount a write the policy denies stays refused, EROFS).
        """
        # A call checked twice for one op and path (its path as written, then resolved)
        # is one decision: recorded once.
        last = self._last
        if last is not None and last[0] is call and last[1] == op and last[2] == path:
            return last[3]
        enforced = True
        if not decision.allowed:
            if self.enforcement is Enforcement.WARN and decision.rule not in ALWAYS_ENFORCED:
                if mount and self.policy.is_read_only and _OPS.get(op) in WRITE_OPS:
                    decision = _READ_ONLY
                else:
                    enforced = False
            self.denials += 1
            if call is not self._denied_last:  # a call's first denial: one access refused
                self._denied_last = call
                self.denied.add(
                    Denied(app.name, op, path, decision.errno, decision.rule, enforced)
                )
        err = decision.errno if enforced and not decision.allowed else 0
        self._last = (call, op, path, err)
        if self.noted is not None:
            self.noted.append((app.name, op, decision, enforced))
        if self.audit is not None and (self.audit_all or not decision.allowed):
            record = AuditRecord.from_decision(
                time=time.time(),
                pid=call.guest.tgid,
                exe=call.proc.exe,
                app=app,
                syscall=call.name,
                path=path,
                op=op,
                decision=decision,
                latency_us=(time.perf_counter_ns() - t0) / 1000,
                via=via,
                enforced=enforced,
            )
            self.audit.write(record.to_json() + "\n")
            self.audit.flush()
        return err
