"""``synthfs run``: launch a command with the synthetic tree at ``/data``.

Wires the parts together: the filter from the syscall table, the agent (a
running one with ``--agent``, or an embedded server + agent pair with
``--data``), the policy, the host side (:class:`~interposer.runenv.RunEnv`),
and the supervisor's wait loop. The exit status is the guest's (128+N when it
died of signal N).

Start-up order (``--data``): the server and the agent are spawned first, with
nothing but the standard library and the launcher loaded; the interposer's
own imports, the policy and the seccomp filter happen while they boot; the
guest starts once both are ready (the key file deleted), so the guest never
runs beside a half-started stack.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthfs.agent.embedded import Launch
    from synthfs.interposer.ports import Proc
    from synthfs.interposer.runenv import RunEnv
    from synthfs.interposer.supervisor import Supervisor

__all__ = ["FAST_EXIT", "HELP", "RunEnv", "configure", "main"]

HELP = "run a command with the synthetic tree at /data"
#: main() has closed everything (audit, stats, the embedded pair) when it returns.
FAST_EXIT = True


def __getattr__(name: str) -> object:
    if name == "RunEnv":  # where it lived before the split (tests construct it from here)
        from synthfs.interposer.runenv import RunEnv

        return RunEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        "--state",
        metavar="DIR",
        help="the --data server's state directory (staged uploads): outside DIR, on its file "
        "system (default: a private one in the run's work directory when that is on DIR's file "
        "system, else ~/.local/state/synthfs/server/ID)",
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


def main(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        return _fail("no command given (usage: synthfs run [OPTIONS] -- CMD [ARGS...])")
    if not args.agent and not args.data:
        return _fail("say where the data is: --data DIR (a directory to serve) or --agent ENDPOINT")
    if args.state and not args.data:
        return _fail("--state is the --data server's: it goes with --data")
    if args.data and not os.path.isdir(args.data):
        return _fail(f"--data {args.data}: not a directory")
    if args.data:
        data, cwd = os.path.realpath(args.data), os.path.realpath(os.getcwd())
        if cwd == data or cwd.startswith(data.rstrip("/") + "/"):
            return _fail(f"the current directory is inside --data {args.data}, whose host path "
                         "no guest may use (it sees it as /data): run from outside it")
    try:
        with contextlib.ExitStack() as resources:
            launch: Launch | None = None
            if args.data:
                # First: the server and the agent boot while the interposer loads.
                from synthfs.agent.embedded import starting

                launch = resources.enter_context(
                    starting(args.data, cache_dir=args.cache, verbose=args.verbose,
                             state_dir=args.state)
                )
            return _run(args, command, launch)
    except Exception as exc:  # a clear message, not a traceback, for set-up failures
        if args.verbose:
            raise
        from synthfs.agent.embedded import EmbeddedError

        if isinstance(exc, EmbeddedError):
            return _fail(str(exc), 125)
        raise


def _run(args: argparse.Namespace, command: list[str], launch: Launch | None) -> int:
    """Everything after the embedded pair's spawn: policy, filter, agent, guest."""
    from synthfs.interposer.filter import build_filter
    from synthfs.interposer.hostside import HostSide, Listener
    from synthfs.interposer.namespace import Namespace
    from synthfs.interposer.remote import Remote
    from synthfs.interposer.runenv import RunEnv
    from synthfs.interposer.supervisor import Supervisor
    from synthfs.policy.engine import Policy, PolicyError

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
    trusted: tuple[int, ...] = ()
    server_socket = ""
    stack_paths: tuple[str, ...] = ()
    if launch is None:
        endpoint = args.agent
    else:
        stack = launch.ready()  # both up, the key file gone: only now may a guest run
        endpoint, trusted = stack.agent_endpoint, (stack.server_pid, stack.agent_pid)
        server_socket = _socket_path(stack.server_endpoint)
        stack_paths = stack.refused_paths  # the agent and the server list them too
    audit = open(args.audit, "a", encoding="utf-8") if args.audit else None  # noqa: SIM115
    private = tempfile.mkdtemp(prefix="synthfs-run-")
    try:
        try:
            remote = Remote(endpoint)
        except OSError as exc:
            return _fail(f"cannot reach the agent at {endpoint}: {exc.strerror or exc}", 125)
        socket_path = _socket_path(endpoint)
        # Whoever serves these sockets is trusted, a restarted agent too (learned when
        # a guest names a pid); with --data the server cannot restart (nothing restarts
        # it), its socket is watched the same way all the same.
        listeners = [
            Listener(path, pid)
            for path, pid in (
                (socket_path, remote.trusted_pids[0] if remote.trusted_pids else None),
                (server_socket, trusted[0] if trusted else None),
            )
            if path
        ]
        host = HostSide(
            private,
            (*remote.refused_paths, socket_path, *stack_paths),
            (os.getpid(), *trusted, *remote.trusted_pids),
            listeners,
        )
        # The agent names its server (--agent: it may restart; asked again when it died).
        host.also_trusted = remote.trusted_now
        env = RunEnv(ns, remote, host, policy, audit, args.audit_all)
        sup = Supervisor(env, compiled, on_exec=env.identify)
        host.live_fd_targets = lambda: _live_targets(sup.procs)
        host.is_guest = sup.threads.__contains__
        if args.stats:
            sup.stats = {}
        status = _supervise(sup, command)
        if args.stats and sup.stats is not None:
            sup.stats.update(
                agent_requests=remote.requests, agent_ns=remote.agent_ns, denials=env.denials,
                listener_probes=sum(listener.probes for listener in listeners),
            )
            with open(args.stats, "w", encoding="utf-8") as f:
                json.dump(sup.stats, f, indent=1)
        return status
    finally:
        if audit is not None:
            audit.close()
        shutil.rmtree(private, ignore_errors=True)


def _socket_path(endpoint: str) -> str:
    """The file of an ``ipc://`` endpoint ("" for any other transport)."""
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else ""


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
