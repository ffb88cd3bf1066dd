"""``synthfs run``: launch a command with the synthetic tree at ``/data``.

Wires the parts together: the filter from the syscall table, the agent (a
running one with ``--agent``, or an embedded server + agent pair with
``--data``), the policy, the host side, and the supervisor's wait loop. The
exit status is the guest's (128+N when it died of signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from interposer import abi
from interposer.filter import build_filter
from interposer.hostside import HostSide
from interposer.namespace import Namespace
from interposer.policy import (
    Action,
    App,
    AuditRecord,
    Decision,
    NetworkMode,
    Op,
    Policy,
    PolicyError,
)
from interposer.ports import Call, Proc
from interposer.remote import Remote
from interposer.supervisor import Supervisor

__all__ = ["HELP", "RunEnv", "configure", "main"]

HELP = "run a command with the synthetic tree at /data"
log = logging.getLogger(__name__)


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
    ) -> None:
        self.ns = ns
        self.repo = repo
        self.host = host
        self.policy = policy
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.audit = audit
        self.audit_all = audit_all
        self.denials = 0
        self._default_app = policy.unmatched  # before the first exec
        self._host_rules = policy.has_host_rules

    def identify(self, proc: Proc) -> None:
        exe = proc.exe

        def digest() -> str:
            h = hashlib.sha256()
            with open(f"/proc/{proc.tgid}/exe", "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()

        proc.app = self.policy.identify(exe, proc.argv, digest)

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
        decision = self.policy.decide(app, Op(op), guest_path)
        if decision.allowed and not self.audit_all:
            return 0
        return self._record(call, app, op, guest_path, decision, t0)

    def check_host(self, call: Call, op: str, path: str) -> int:
        """A decision on a resolved host path (``Policy.decide_host``), audited."""
        if not self._host_rules:
            return 0  # no [host]: the host is untouched (and there is nothing to audit)
        t0 = time.perf_counter_ns()
        app = self._app(call)
        decision = self.policy.decide_host(app, Op(op), path)
        if decision.allowed and not self.audit_all:
            return 0
        return self._record(call, app, op, path, decision, t0)

    def pin(self, real_path: str, whole: bool, always: bool = False) -> tuple[str, int] | None:
        if not self._host_rules and not always:
            return None  # no host decisions to protect: the kernel walks the checked path
        if whole:
            target, name = real_path, ""
        else:
            head, _, name = real_path.rpartition("/")
            target = head or "/"
            if not name:
                return None
        flags = os.O_PATH | os.O_CLOEXEC | (0 if whole else os.O_DIRECTORY)
        fd = _openat2(target, flags, abi.RESOLVE_NO_SYMLINKS | abi.RESOLVE_NO_MAGICLINKS)
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
        if allowed and not self.audit_all:
            return 0
        rule = f"[host] network = {mode.value!r}"
        if allowed:
            decision = Decision(Action.ALLOW, rule, f"network {mode.value} allows it", 0)
        else:
            reason = "no IP traffic" if mode is NetworkMode.DENY else "loopback addresses only"
            decision = Decision(Action.DENY, rule, reason, errno.EACCES)
        return self._record(call, self._app(call), op, address, decision, t0)

    def _record(self, call: Call, app: App, op: str, path: str, decision: Decision, t0: int) -> int:
        """Count and audit one decision; its errno (0 when allowed)."""
        if not decision.allowed:
            self.denials += 1
        if self.audit is not None:
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
            )
            self.audit.write(record.to_json() + "\n")
            self.audit.flush()
        return decision.errno if not decision.allowed else 0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR_OPENAT2 = 437


def _openat2(path: str, flags: int, resolve: int) -> int:
    """openat2(AT_FDCWD, path, {flags, 0, resolve}) in the supervisor; OSError on failure."""
    how = abi.OPEN_HOW.pack(flags, 0, resolve)
    fd = _libc.syscall(
        ctypes.c_long(NR_OPENAT2),
        ctypes.c_int(abi.AT_FDCWD),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_char_p(how),
        ctypes.c_size_t(len(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="DIR",
        help="serve DIR as the repository (starts a private server and agent)",
    )
    src.add_argument("--agent", metavar="ENDPOINT", help="use a running agent (ipc://PATH)")
    parser.add_argument(
        "--mount", default="/data", help="guest path of the synthetic tree (default: /data)"
    )
    parser.add_argument(
        "--policy", metavar="FILE", help="policy file (default: policies/default.toml semantics)"
    )
    parser.add_argument(
        "--read-only", action="store_true", help="refuse every write on the mount (EROFS)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="content cache directory for --data (default: ~/.cache/synthfs)",
    )
    parser.add_argument(
        "--audit", metavar="FILE", help="append policy decisions (denials) as JSON lines to FILE"
    )
    parser.add_argument("--audit-all", action="store_true", help="audit allowed decisions too")
    parser.add_argument(
        "--stats",
        metavar="FILE",
        help="write the supervisor's counters and phase timers (JSON) to FILE at exit",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _fail(message: str, code: int = 2) -> int:
    print(f"synthfs run: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _agent_endpoint(args: argparse.Namespace) -> Iterator[tuple[str, tuple[int, ...]]]:
    if args.agent:
        yield args.agent, ()
        return
    from agent.embedded import embedded

    with embedded(args.data or ".", cache_dir=args.cache, verbose=args.verbose) as stack:
        yield stack.agent_endpoint, (stack.server_pid, stack.agent_pid)


def main(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        return _fail("no command given (usage: synthfs run [OPTIONS] -- CMD [ARGS...])")
    if not args.agent and not args.data:
        return _fail("say where the data is: --data DIR (a directory to serve) or --agent ENDPOINT")
    if args.data and not os.path.isdir(args.data):
        return _fail(f"--data {args.data}: not a directory")
    try:
        ns = Namespace(args.mount)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        policy = Policy.from_toml(args.policy) if args.policy else Policy.default(ns.mount)
    except PolicyError as exc:
        return _fail(f"bad policy: {exc}")
    if ns.mount not in policy.mounts:
        return _fail(
            f"the policy {args.policy} has no [[mount]] for {ns.mount} "
            f"(it names {', '.join(policy.mounts) or 'none'}): pass --mount or fix the policy"
        )
    if args.read_only:
        policy = policy.read_only()
    try:
        compiled = build_filter(policy)
    except OSError as exc:
        return _fail(f"cannot build the seccomp filter ({exc}); is libseccomp2 installed?", 125)
    audit = open(args.audit, "a", encoding="utf-8") if args.audit else None  # noqa: SIM115
    private = tempfile.mkdtemp(prefix="synthfs-run-")
    try:
        with _agent_endpoint(args) as (endpoint, trusted):
            try:
                remote = Remote(endpoint)
            except OSError as exc:
                return _fail(f"cannot reach the agent at {endpoint}: {exc.strerror or exc}", 125)
            socket_path = endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else ""
            host = HostSide(
                private,
                (*remote.refused_paths, socket_path),
                (os.getpid(), *trusted, *remote.trusted_pids),
            )
            env = RunEnv(ns, remote, host, policy, audit, args.audit_all)
            sup = Supervisor(env, compiled, on_exec=env.identify)
            host.live_fd_targets = lambda: _live_targets(sup.procs)
            if args.stats:
                sup.stats = {}
            status = _supervise(sup, command)
            if args.stats and sup.stats is not None:
                sup.stats.update(
                    agent_requests=remote.requests, agent_ns=remote.agent_ns, denials=env.denials
                )
                with open(args.stats, "w", encoding="utf-8") as f:
                    json.dump(sup.stats, f, indent=1)
            return status
    except Exception as exc:  # a clear message, not a traceback, for set-up failures
        if args.verbose:
            raise
        from agent.embedded import EmbeddedError

        if isinstance(exc, EmbeddedError):
            return _fail(str(exc), 125)
        raise
    finally:
        if audit is not None:
            audit.close()
        shutil.rmtree(private, ignore_errors=True)


def _live_targets(procs: dict[int, Proc]) -> Iterator[str]:
    for tgid in list(procs):
        try:
            names = os.listdir(f"/proc/{tgid}/fd")
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                yield os.readlink(f"/proc/{tgid}/fd/{name}")


def _supervise(sup: Supervisor, command: list[str]) -> int:
    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGQUIT: signal.signal(signal.SIGQUIT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, _f: sup.forward(s)),
        signal.SIGHUP: signal.signal(signal.SIGHUP, lambda s, _f: sup.forward(s)),
    }
    try:
        try:
            sup.spawn(command)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                return _fail(
                    f"ptrace is not permitted here ({exc}); check kernel.yama.ptrace_scope "
                    "and the container's seccomp profile",
                    125,
                )
            raise
        return sup.run()
    finally:
        sup.kill_all()
        for sig, handler in old.items():
            signal.signal(sig, handler)
