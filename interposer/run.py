"""``synthfs run``: launch a command with the synthetic tree at ``/data``.

Wires the parts together: the filter from the syscall table, the agent (a
running one with ``--agent``, or an embedded server + agent pair with
``--data``), the policy, the host side (:class:`~interposer.runenv.RunEnv`),
and the supervisor's wait loop. The exit status is the guest's (128+N when it
died of signal N).

Start-up order (``--data``): the server and the agent are forked first, with
nothing but the standard library, the launcher and the wire they all share
loaded (:func:`~agent.embedded.starting`, ``fork=True``); the interposer's
own imports, the policy and the seccomp filter happen while they boot; the
guest starts once both are ready (the key file deleted), so the guest never
runs beside a half-started stack.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthfs.agent.embedded import Launch
    from synthfs.interposer.ports import Proc
    from synthfs.interposer.runenv import RunEnv
    from synthfs.interposer.supervisor import Supervisor
    from synthfs.interposer.warm import WarmClient

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
        "--policy", metavar="FILE|NAME",
        help="policy file, or the name of a shipped policy (synthfs policy list); "
        "default: the 'default' policy's semantics"
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
        "--write-through", dest="write_through", action="store_true", default=True,
        help="with --data: a close waits until DIR has the file (the default)",
    )
    parser.add_argument(
        "--write-back", dest="write_through", action="store_false",
        help="with --data: a close is durable in the agent's journal, DIR has the file within "
        "a second and before the run ends; fsync and sync always wait",
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
    parser.add_argument(
        "--engine",
        choices=("ptrace", "notify", "auto"),
        default=None,
        help="how trapped calls reach the supervisor: ptrace stops for every row (the "
        "default), or seccomp user notification for the rows 'synthfs syscalls' marks "
        "notify (the stat family; opt-in: a kernel without what it needs falls back to "
        "ptrace and says which feature is missing); auto: ptrace for now (notify passes "
        "the suites but costs more where most calls are other rows). Default: "
        "$SYNTHFS_ENGINE, else ptrace",
    )
    parser.add_argument(
        "--warm", action="store_true",
        help="start through the warm supervisor ('synthfs warm', at $SYNTHFS_WARM_SOCKET or "
        "its default socket): no interposer start-up in this process, which becomes the "
        "guest itself; without one running, start as usual and say so. Also: SYNTHFS_WARM=1",
    )
    _configure_trying(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _configure_trying(parser: argparse.ArgumentParser) -> None:
    """Trying a policy before enforcing it (docs/policy.md, "Trying a policy")."""
    parser.add_argument(
        "--warn", "--permissive", dest="warn", action="store_true",
        help="deny nothing the policy denies: let the call through and report it (at the "
        "end, in --audit FILE, with -v); the trusted paths and the guards still hold",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no summary of the policy's denials on stderr at the end of the run",
    )


def _denial_summary(args: argparse.Namespace, summary: str) -> None:
    """The end-of-run summary of what the policy denied (or, --warn, would have)."""
    if summary and not args.quiet:
        # A closed stderr (``2>&- | ...``, a reader gone) must not change the guest's status.
        # Written unbuffered: nothing of it is left for the exit's flush to trip on.
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.write(2, (summary + "\n").encode("utf-8", "surrogateescape"))


def _fail(message: str, code: int = 2) -> int:
    print(f"synthfs run: {message}", file=sys.stderr)
    return code


class DiedOf(int):
    """128+N, for a guest that died of a signal N that ``synthfs`` received too.

    The terminal's Ctrl-C (Ctrl-\\) reaches ``synthfs`` and its guest alike, and
    a SIGTERM or SIGHUP is passed on: when that signal ended the guest,
    :func:`main` ends ``synthfs`` by it as well once everything is closed, so the
    calling shell sees what it would natively (``$?`` is 128+N either way, and a
    script stops at a Ctrl-C; coreutils ``timeout`` does the same).
    """

    signum: int

    @classmethod
    def of(cls, signum: int) -> DiedOf:
        status = cls(128 + signum)
        status.signum = signum
        return status


def _die_of(signum: int) -> None:
    """End this process by ``signum`` (no core file), as the guest ended."""
    import resource

    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


def main(args: argparse.Namespace, client: WarmClient | None = None) -> int:
    """``synthfs run``; ``client``: the warm start's guest-to-be (:mod:`interposer.warm`)."""
    command = list(args.command)
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        return _fail("no command given (usage: synthfs run [OPTIONS] -- CMD [ARGS...])")
    if not args.agent and not args.data:
        return _fail("say where the data is: --data DIR (a directory to serve) or --agent ENDPOINT")
    if args.state and not args.data:
        return _fail("--state is the --data server's: it goes with --data")
    if not args.write_through and not args.data:
        return _fail("--write-back is for the --data agent: start your own agent with "
                     "'synthfs agent --write-back'")
    if args.data and not os.path.isdir(args.data):
        return _fail(f"--data {args.data}: not a directory")
    if args.data:
        data, cwd = os.path.realpath(args.data), os.path.realpath(os.getcwd())
        if cwd == data or cwd.startswith(data.rstrip("/") + "/"):
            return _fail(f"the current directory is inside --data {args.data}, whose host path "
                         "no guest may use (it sees it as /data): run from outside it")
    if args.agent:
        from synthfs.protocol.endpoints import check_endpoint

        try:
            check_endpoint("--agent", args.agent, tcp=False)  # an agent listens on ipc:// only
        except ValueError as exc:
            return _fail(str(exc))
    try:
        with contextlib.ExitStack() as resources:
            launch: Launch | None = None
            if args.data:
                # First: the server and the agent boot while the interposer loads.
                from synthfs.agent.embedded import starting

                launch = resources.enter_context(
                    starting(args.data, cache_dir=args.cache, verbose=args.verbose,
                             state_dir=args.state, write_through=args.write_through,
                             fork=True)
                )
            status = _run(args, command, launch, client)
    except Exception as exc:  # a clear message, not a traceback, for set-up failures
        if args.verbose:
            raise
        from synthfs.agent.embedded import EmbeddedError

        if isinstance(exc, EmbeddedError):
            return _fail(str(exc), 125)
        raise
    if isinstance(status, DiedOf):  # everything is closed: the embedded pair is gone
        _die_of(status.signum)
    return status


def _run(
    args: argparse.Namespace, command: list[str], launch: Launch | None,
    client: WarmClient | None = None,
) -> int:
    """Everything after the embedded pair's spawn: policy, filter, agent, guest.

    ``client``: the warm start's (:mod:`interposer.warm`): the guest is that process,
    seized instead of spawned."""
    from synthfs.interposer.filter import cached_filter
    from synthfs.interposer.hostside import HostSide, Listener
    from synthfs.interposer.namespace import Namespace
    from synthfs.interposer.progress import ProgressLine
    from synthfs.interposer.remote import Remote
    from synthfs.interposer.runenv import RunEnv
    from synthfs.interposer.supervisor import Supervisor
    from synthfs.policy.engine import Policy, PolicyError

    try:
        ns = Namespace(args.mount)
    except ValueError as exc:
        return _fail(str(exc))
    policy_file = None
    if args.policy:  # here: the shipped policies' module imports pathlib (~8 ms)
        from synthfs.policy.shipped import PolicyNotFound, locate

        try:
            policy_file = locate(args.policy)
        except PolicyNotFound as exc:
            return _fail(str(exc))
    try:
        policy = Policy.from_toml(policy_file) if policy_file else Policy.default(ns.mount)
    except PolicyError as exc:
        return _fail(f"bad policy: {exc}")
    try:
        links = os.stat(policy_file).st_nlink if policy_file else 1
    except OSError as exc:
        return _fail(f"--policy {policy_file}: {exc.strerror}")
    if links > 1:
        # The guests are refused the policy file by its name: not by another one.
        return _fail(f"the policy file {policy_file} has {links} names (hard links): a guest "
                     "could rewrite it through another one; copy it to a file of one name")
    if ns.mount not in policy.mounts:
        return _fail(
            f"the policy {args.policy} has no [[mount]] for {ns.mount} "
            f"(it names {', '.join(policy.mounts) or 'none'}): pass --mount or fix the policy"
        )
    ns = Namespace(ns.mount, policy.symlinks[ns.mount])  # [[mount]] symlinks
    if args.read_only:
        policy = policy.read_only()
    from synthfs.interposer.notify import Engine, choose

    asked = getattr(args, "engine", None) or os.environ.get("SYNTHFS_ENGINE") or "ptrace"
    if asked not in tuple(Engine):
        return _fail(f"SYNTHFS_ENGINE={asked!r}: not an engine (ptrace, notify or auto)")
    engine, why = choose(Engine(asked))
    if why:
        print(f"synthfs run: {why}", file=sys.stderr, flush=True)
    from synthfs.interposer.warm_client import default_socket
    from synthfs.private_dirs import filter_cache_dir

    warm = os.path.dirname(default_socket())  # a warm supervisor's, running or not
    try:
        # (kept from one run to the next where every guest of every run is refused it)
        compiled = client.filter_for(policy, engine) if client \
            else cached_filter(policy, engine, filter_cache_dir())
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
    # Both files are opened before the guest runs: a bad name fails now, not after it.
    try:
        audit = open(args.audit, "a", encoding="utf-8") if args.audit else None  # noqa: SIM115
    except OSError as exc:
        return _fail(f"--audit {args.audit}: {exc.strerror}")
    try:
        stats_file = open(args.stats, "w", encoding="utf-8") if args.stats else None  # noqa: SIM115
    except OSError as exc:
        if audit is not None:
            audit.close()
        return _fail(f"--stats {args.stats}: {exc.strerror}")
    from synthfs.agent.embedded import private_dir

    private = private_dir("synthfs-run-")
    try:
        def away(why: str) -> None:  # once a run: the guest sees EIO, the user sees why
            print(f"synthfs run: calls on {ns.mount} fail with EIO: {why}", file=sys.stderr,
                  flush=True)

        progress = ProgressLine.for_terminal(sys.stderr, ns.mount)
        try:
            remote = client.connected(endpoint) if client else None
            if remote is not None:
                remote.reports_to(away, progress)
            else:
                remote = Remote(endpoint, report=away, progress=progress)
        except OSError as exc:
            hint = ""
            if launch is None and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                hint = (f"; start one with 'synthfs agent --listen {endpoint} ...', "
                        "or serve a directory with --data DIR")
            return _fail(f"cannot reach the agent at {endpoint}: {exc.strerror or exc}{hint}",
                         125)
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
        # The run's own files are no guest's: a job could rewrite the policy the next
        # run enforces, or the audit of its own denials (SECURITY.md).
        own_files = [p for p in (policy_file, args.audit, args.stats) if p]
        host = HostSide(
            private,
            (*remote.refused_paths, socket_path, *stack_paths, warm,
             client.refused if client else "", *own_files),
            (os.getpid(), *trusted, *remote.trusted_pids, *(client.trusted if client else ())),
            listeners,
        )
        # The agent names its server (--agent: it may restart; asked again when it died).
        host.also_trusted = remote.trusted_now
        remote.refused_more = host.refuse_more  # a restarted agent's own paths
        from synthfs.interposer.runenv import Enforcement

        tracer = None
        if args.verbose:
            from synthfs.interposer.trace import Tracer

            tracer = Tracer()
        env = RunEnv(ns, remote, host, policy, audit, args.audit_all,
                     Enforcement.WARN if args.warn else Enforcement.ENFORCE,
                     tracer.noted if tracer is not None else None)
        if not gc.isenabled():
            # The console script's start-up, without collections (synthfs.cli): what it
            # made lives as long as this process, never to be scanned again.
            gc.freeze()
            gc.enable()
        sup = Supervisor(env, compiled, on_exec=env.identify)
        sup.tracer = tracer
        remote.interruption = sup.interruption
        host.live_fd_targets = lambda: _live_targets(sup.procs)
        host.is_guest = sup.threads.__contains__
        if args.stats:
            sup.stats = {}
        if client is not None:
            sup.at_main_exit = lambda: _denial_summary(args, env.denied.summary(args.audit))
            status = client.supervise(sup, command)
        else:
            status = _supervise(sup, command)
        if launch is not None and remote.wrote:
            # The embedded agent stops with this run: everything closed on /data reaches
            # --data before the run returns (an agent of its own keeps write-back going).
            try:
                remote.sync(wait=True)
            except OSError as exc:
                print(f"synthfs run: files closed on {ns.mount} wait in the agent's journal "
                      f"({exc.strerror or exc}); the next run on this cache uploads them",
                      file=sys.stderr, flush=True)
        if client is None:
            _denial_summary(args, env.denied.summary(args.audit))
        if args.stats and sup.stats is not None:
            sup.stats.update(
                agent_requests=remote.requests, agent_ns=remote.agent_ns, denials=env.denials,
                listener_probes=sum(listener.probes for listener in listeners),
            )
            assert stats_file is not None
            json.dump(sup.stats, stats_file, indent=1)
        return status
    finally:
        if audit is not None:
            audit.close()
        if stats_file is not None:
            stats_file.close()
        shutil.rmtree(private, ignore_errors=True)


def _socket_path(endpoint: str) -> str:
    """The file of an ``ipc://`` endpoint ("" for any other transport)."""
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else ""


def _live_targets(procs: dict[int, Proc]) -> Iterator[str]:
    """What the guests' fds link to; PermissionError when some cannot be read."""
    for tgid in list(procs):
        try:
            names = os.listdir(f"/proc/{tgid}/fd")
        except FileNotFoundError:
            continue  # gone
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # closed since
                yield os.readlink(f"/proc/{tgid}/fd/{name}")


def _supervise(sup: Supervisor, command: list[str]) -> int:
    from synthfs.interposer.supervisor import CallerSignals

    # What the guest starts with: the caller's dispositions and mask, not ours below.
    caller = CallerSignals.of_caller()
    received: set[int] = set()

    def noted(sig: int, _frame: object) -> None:
        received.add(sig)
        sup.interruption.arm(sig)  # the guests got it too: a call served for long gives way

    def passed_on(sig: int, _frame: object) -> None:
        received.add(sig)
        sup.forward(sig)

    # The terminal sends Ctrl-C (Ctrl-\) to the guests directly (same process group):
    # we outlive them to report their status. SIGTERM and SIGHUP are passed on. Ctrl-Z's
    # SIGTSTP reaches the guests directly too: we stop once the main guest has (the
    # supervisor's job control), not before it. A signal the caller ignored (nohup, a
    # background job) the guest ignores, and so do we.
    old = {
        sig: signal.signal(sig, signal.SIG_IGN if sig in caller.ignored else handler)
        for sig, handler in (
            (signal.SIGINT, noted),
            (signal.SIGQUIT, noted),
            (signal.SIGTERM, passed_on),
            (signal.SIGHUP, passed_on),
            (signal.SIGTSTP, noted),
        )
    }
    # A guest may take the terminal and set TOSTOP: synthfs's own lines (-v, warnings)
    # must not stop it in the background while its guest waits for it (SIGTTOU). The
    # guest still starts with the caller's SIGTTOU (for_exec undoes what differs).
    old[signal.SIGTTOU] = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    sup.job_control = True
    try:
        try:
            sup.spawn(command, signals=caller)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                return _fail(
                    f"ptrace is not permitted here ({exc}); check kernel.yama.ptrace_scope "
                    "and the container's seccomp profile",
                    125,
                )
            raise
        status = sup.run()
        if sup.exit_signal is not None and sup.exit_signal in received:
            return DiedOf.of(sup.exit_signal)
        return status
    finally:
        sup.kill_all()
        for sig, handler in old.items():
            signal.signal(sig, handler)
