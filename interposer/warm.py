"""``synthfs warm``: the warm supervisor, for ``synthfs run --warm`` to start in a few ms.

A process that has imported the interposer (the filter, the supervisor, the
agent client, the policy engine) and compiled the default policy's filter
once, listening on a UNIX socket in a private directory (0700, the socket
0600). Each connection is one ``synthfs run --warm`` (:mod:`interposer.warm_client`):
the peer's uid must be ours (``SO_PEERCRED``, else it is closed unanswered);
its pid is pinned by a pidfd (``SO_PEERPIDFD``). A supervisor is forked for the
run (its own session: the warm supervisor's terminal signals never reach it);
it reads the run's arguments, cwd, environment and stderr, and runs
``synthfs run`` as a cold start does (:func:`interposer.run.main`: the same
checks, the same policy and agent, the same wait loop) except that the guest
is the client process itself, seized with ptrace (``PTRACE_O_EXITKILL``: if
the supervisor dies, so does the guest) before it loads the filter and
``execve``s the command. ``--data`` runs start cold (``C``): their stack is
per run.

What a client gets is what ``synthfs run`` gives anyone of this uid: a
supervised command. The warm supervisor never runs inside the agent (it holds
no token), and its socket's directory is refused to every guest, as the
agent's socket is.

Wire (one stream): the client sends a 4-byte length and a body
(:data:`~interposer.warm_client.VERSION`, then NUL-ended cwd, argc, argv,
environment), its stderr as ``SCM_RIGHTS``; the answer is one byte (``G``
go, ``E`` error, ``C`` start cold), a 4-byte length and a payload (``G``: the
engine, the BPF program and the command; ``E``: the exit status).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from synthfs.interposer.warm_client import VERSION, default_socket, sandboxed

if TYPE_CHECKING:
    from synthfs.interposer.filter import CompiledFilter
    from synthfs.interposer.notify import Engine
    from synthfs.interposer.remote import Remote
    from synthfs.interposer.supervisor import Supervisor
    from synthfs.policy.engine import Policy

__all__ = ["FAST_EXIT", "HELP", "WarmClient", "configure", "main"]

HELP = "serve warm starts: 'synthfs run --warm --agent EP' then starts in a few ms"
FAST_EXIT = True

log = logging.getLogger(__name__)

_SO_PEERPIDFD = 77
#: the largest request (arguments and environment) a client may send
_REQUEST_MAX = 4 << 20
#: how long a client may take to send its request
_REQUEST_TIMEOUT = 10.0
#: seconds a spare supervisor waits for a client before it is replaced
SPARE_AGE = 60.0

#: compiled filters by (gates, engine): built once in the warm supervisor, before its forks
_FILTERS: dict[tuple[frozenset[object], object], CompiledFilter] = {}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", metavar="PATH",
        help="where to listen (default: $SYNTHFS_WARM_SOCKET, else "
        "$XDG_RUNTIME_DIR/synthfs-warm/warm.sock or /tmp/synthfs-warm-UID/warm.sock); its "
        "directory is made private (0700) or must be already",
    )
    parser.add_argument(
        "--agent", metavar="ENDPOINT",
        help="the agent most runs use (ipc://PATH): each run's supervisor is connected to it "
        "before its client comes; a run with another --agent connects on its own",
    )


def _filter_for(policy: Policy, engine: Engine) -> CompiledFilter:
    from synthfs.interposer.filter import active_gates, build_filter

    key = (frozenset(active_gates(policy)), engine)
    compiled = _FILTERS.get(key)
    if compiled is None:
        compiled = _FILTERS[key] = build_filter(policy, engine)
    return compiled


def _strings(items: Sequence[str]) -> bytes:
    return b"".join(os.fsencode(s) + b"\0" for s in items)


def _answer(conn: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    with contextlib.suppress(OSError):
        conn.sendall(kind + len(payload).to_bytes(4, "little") + payload)


class WarmClient:
    """One ``synthfs run --warm`` client, as :func:`interposer.run.main` sees it."""

    def __init__(
        self, conn: socket.socket, pid: int, pidfd: int, refused: str, remote: Remote | None
    ) -> None:
        self.conn = conn
        self._remote = remote
        self.pid = pid
        self.pidfd = pidfd
        #: the warm supervisor itself (its socket's directory is refused, see run.py)
        self.trusted = (os.getppid(),)
        self.refused = refused
        #: whether the command was let go (after that, the exit status is the client's own)
        self.went = False

    def connected(self, endpoint: str) -> Remote | None:
        """The spare's connection to ``endpoint`` (None: it has none to that one)."""
        remote, self._remote = self._remote, None
        if remote is not None and remote.endpoint == endpoint:
            return remote
        return None

    def filter_for(self, policy: Policy, engine: Engine) -> CompiledFilter:
        return _filter_for(policy, engine)

    def alive(self) -> bool:
        """Whether the client that connected has not exited (its pid names it still)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def supervise(self, sup: Supervisor, command: list[str]) -> int:
        from synthfs.interposer.notify import Engine

        compiled = sup.filter
        payload = (
            (b"n" if compiled.engine is Engine.NOTIFY else b"p")
            + len(compiled.bpf).to_bytes(4, "little") + compiled.bpf + _strings(command)
        )
        go = b"G" + len(payload).to_bytes(4, "little") + payload
        try:
            sup.adopt(self.pid, self.alive, self.conn.fileno(), go)
        except (PermissionError, ProcessLookupError) as exc:
            print(f"synthfs run: cannot supervise the warm client: {exc.strerror or exc}",
                  file=sys.stderr, flush=True)
            return 125
        self.went = True
        try:
            return sup.run()
        finally:
            sup.kill_all()


def _private_dir(path: str) -> None:
    """Make ``path`` a private directory of ours, or refuse one that is not."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise OSError(errno.EPERM, f"{path} is not a directory of this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _listen(path: str) -> socket.socket:
    _private_dir(os.path.dirname(path) or ".")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead one's
    else:
        raise OSError(errno.EADDRINUSE, f"a warm supervisor already serves {path}")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """``synthfs run``'s own parser (built once, before the forks)."""
    from synthfs.interposer import run

    parser = argparse.ArgumentParser(prog="synthfs run", description=run.HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    run.configure(parser)
    return parser


def _preload() -> None:
    """Everything a run imports, and the default policy's filter, before any fork."""
    import importlib

    for name in ("hostside", "namespace", "progress", "remote", "run", "runenv", "supervisor"):
        importlib.import_module(f"synthfs.interposer.{name}")
    importlib.import_module("synthfs.policy.shipped")
    importlib.import_module("synthfs.agent.embedded")
    from synthfs.interposer.notify import Engine, choose
    from synthfs.policy.engine import Policy

    _parser()
    policy = Policy.default("/data")
    _filter_for(policy, Engine.PTRACE)
    engine, why = choose(Engine.NOTIFY)
    if not why:
        _filter_for(policy, engine)


def main(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.socket or default_socket())
    if args.agent:
        from synthfs.protocol.endpoints import check_endpoint

        try:
            check_endpoint("--agent", args.agent, tcp=False)
        except ValueError as exc:
            print(f"synthfs warm: {exc}", file=sys.stderr)
            return 2
    try:
        _preload()
        sock = _listen(path)
    except OSError as exc:
        print(f"synthfs warm: cannot serve {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stopping: list[int] = []

    def stop(sig: int, _frame: object) -> None:
        stopping.append(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A run's supervisor is reaped as it ends (its CPU time then counts in ours at once).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    spares = _Spares(sock, os.path.dirname(path), args.agent)
    print(f"synthfs warm: serving {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    try:
        while not stopping:
            spares.ready()
            for fd, _ in poller.poll(1000):
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                else:
                    _accept(sock, spares)
            _reap()
    finally:
        spares.retire()
        with contextlib.suppress(OSError):
            os.unlink(path)
        sock.close()
    return 0


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class _Spares:
    """One supervisor forked ahead of its run, connected to ``--agent`` already: a
    client's run starts without a fork or an agent hello on its path. It waits on a
    socket pair for the client's connection, pidfd and pid; a spare idle for
    :data:`SPARE_AGE` seconds is replaced (its agent's Welcome may be stale)."""

    def __init__(self, listening: socket.socket, refused: str, agent: str | None) -> None:
        self.listening = listening
        self.refused = refused
        self.agent = agent
        self.spare: tuple[socket.socket, float] | None = None

    def ready(self) -> None:
        if self.spare is not None and time.monotonic() - self.spare[1] > SPARE_AGE:
            self.retire()
        if self.spare is None:
            ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                child = os.fork()
            except OSError as exc:
                log.warning("cannot fork a spare supervisor: %s", exc)
                ctl.close()
                theirs.close()
                return
            if child == 0:  # pragma: no cover - the spare
                ctl.close()
                self._wait(theirs)
            theirs.close()
            self.spare = (ctl, time.monotonic())

    def hand(self, conn: socket.socket, pid: int, pidfd: int) -> bool:
        """Give a client to the spare (False: it is gone: serve the client otherwise)."""
        if self.spare is None:
            return False
        ctl, _ = self.spare
        self.spare = None
        try:
            ctl.sendmsg([str(pid).encode()],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          conn.fileno().to_bytes(4, "little") + pidfd.to_bytes(4, "little"))])
            return True
        except OSError:
            return False
        finally:
            ctl.close()

    def retire(self) -> None:
        if self.spare is not None:
            self.spare[0].close()  # it reads EOF and exits
            self.spare = None

    def _wait(self, ctl: socket.socket) -> NoReturn:
        status = 0
        try:
            self.listening.close()
            _detach()
            from synthfs.agent.embedded import sweep_once

            sweep_once()  # what a run's private directory would start with
            remote = None
            if self.agent:
                from synthfs.interposer.remote import Remote

                with contextlib.suppress(OSError):  # the run connects and says why
                    remote = Remote(self.agent)
            msg, anc, _, _ = ctl.recvmsg(16, socket.CMSG_SPACE(8))
            fds = [int.from_bytes(data[i : i + 4], "little")
                   for level, kind, data in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for i in range(0, len(data) - 3, 4)]
            if remote is not None and not remote.same_agent():
                # The agent was restarted since our hello: its Welcome (what it refuses:
                # another cache) is the one the run must enforce.
                remote.close()
                remote = None
                with contextlib.suppress(OSError):
                    remote = Remote(self.agent or "")
            if msg and len(fds) == 2:
                conn = socket.socket(fileno=fds[0])
                status = _serve(conn, int(msg), fds[1], self.refused, remote)
        except BaseException as exc:  # said on the client's stderr, when it has one
            status = 125
            with contextlib.suppress(OSError):
                os.write(2, f"synthfs run: the warm supervisor failed: {exc!r}\n".encode())
        finally:
            os._exit(status)


def _detach() -> None:
    """A run's supervisor: its own session, default signals (nothing of the warm one's)."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _accept(sock: socket.socket, spares: _Spares) -> None:
    try:
        conn, _ = sock.accept()
    except OSError:
        return
    with conn:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid = int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little")
        if uid != os.getuid():
            log.warning("refused a client of uid %d (pid %d)", uid, pid)
            return
        try:
            pidfd = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
        except OSError:  # a kernel before 6.5: the pid as it is now (checked after the seize)
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                return
        if sandboxed(pid, os.dup(pidfd)):
            # A guest of any run (all are traced): it would pick its own options (a
            # --stats FILE written before the seize fails) or a looser policy.
            log.warning("refused a traced client (pid %d): a guest of a run", pid)
            os.close(pidfd)
            return
        try:
            if not spares.hand(conn, pid, pidfd):
                spares.ready()
                if not spares.hand(conn, pid, pidfd):
                    log.warning("no supervisor for the client (pid %d)", pid)
        finally:
            os.close(pidfd)


def _serve(
    conn: socket.socket, pid: int, pidfd: int, refused: str, remote: Remote | None
) -> int:
    """One run, in its own supervisor; 0 when the client was answered."""
    conn.settimeout(_REQUEST_TIMEOUT)
    head, fds, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(4))
    stderr = -1
    for level, kind, data in fds:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            stderr = int.from_bytes(data[:4], "little")
    if len(head) != 4 or stderr < 0:
        return 1
    size = int.from_bytes(head, "little")
    if size > _REQUEST_MAX:
        return 1
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return 1
        body += chunk
    conn.settimeout(None)
    os.dup2(stderr, 2)
    os.close(stderr)
    client = WarmClient(conn, pid, pidfd, refused, remote)
    status = _run(client, body)
    if not client.went:
        _answer(conn, b"C" if status is None else b"E", bytes([(status or 0) & 0xFF]))
    return 0


def _run(client: WarmClient, body: bytes) -> int | None:
    """``synthfs run`` with the client's request; None: it is to start cold."""
    from synthfs import cli
    from synthfs.interposer import run

    if not body.startswith(VERSION):
        print("synthfs run: the warm supervisor is of another version: stop it and start "
              "'synthfs warm' again", file=sys.stderr, flush=True)
        return 125
    fields = [os.fsdecode(f) for f in body[len(VERSION):].split(b"\0")[:-1]]
    try:
        cwd, argc = fields[0], int(fields[1])
        argv, env = fields[2 : 2 + argc], fields[2 + argc :]
        os.chdir(cwd)
    except (IndexError, ValueError, OSError) as exc:
        print(f"synthfs run: bad warm request ({exc})", file=sys.stderr, flush=True)
        return 125
    os.environ.clear()
    for kv in env:
        key, eq, value = kv.partition("=")
        if eq:
            os.environ[key] = value
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse said why on stderr
        return exc.code if isinstance(exc.code, int) else 2
    if args.data:
        return None
    cli._setup_logging(args.verbose)
    return run.main(args, client=client)
