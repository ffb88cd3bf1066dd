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
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from synthfs.interposer.warm_client import VERSION, default_socket

if TYPE_CHECKING:
    from synthfs.interposer.filter import CompiledFilter
    from synthfs.interposer.notify import Engine
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

#: compiled filters by (gates, engine): built once in the warm supervisor, before its forks
_FILTERS: dict[tuple[frozenset[object], object], CompiledFilter] = {}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", metavar="PATH",
        help="where to listen (default: $SYNTHFS_WARM_SOCKET, else "
        "$XDG_RUNTIME_DIR/synthfs-warm/warm.sock or /tmp/synthfs-warm-UID/warm.sock); its "
        "directory is made private (0700) or must be already",
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

    def __init__(self, conn: socket.socket, pid: int, pidfd: int, refused: str) -> None:
        self.conn = conn
        self.pid = pid
        self.pidfd = pidfd
        #: the warm supervisor itself (its socket's directory is refused, see run.py)
        self.trusted = (os.getppid(),)
        self.refused = refused
        #: whether the command was let go (after that, the exit status is the client's own)
        self.went = False

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


def _preload() -> None:
    """Everything a run imports, and the default policy's filter, before any fork."""
    import importlib

    for name in ("hostside", "namespace", "progress", "remote", "run", "runenv", "supervisor"):
        importlib.import_module(f"synthfs.interposer.{name}")
    importlib.import_module("synthfs.policy.shipped")
    from synthfs.interposer.notify import Engine, choose
    from synthfs.policy.engine import Policy

    policy = Policy.default("/data")
    _filter_for(policy, Engine.PTRACE)
    engine, why = choose(Engine.NOTIFY)
    if not why:
        _filter_for(policy, engine)


def main(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.socket or default_socket())
    try:
        _preload()
        sock = _listen(path)
    except OSError as exc:
        print(f"synthfs warm: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stopping: list[int] = []

    def stop(sig: int, _frame: object) -> None:
        stopping.append(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"synthfs warm: serving {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        while not stopping:
            with contextlib.suppress(InterruptedError):
                if poller.poll(1000):
                    _accept(sock, path)
            _reap()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        sock.close()
    return 0


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _accept(sock: socket.socket, path: str) -> None:
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
        try:
            child = os.fork()
        except OSError as exc:
            log.warning("cannot fork a supervisor: %s", exc)
            os.close(pidfd)
            return
        if child == 0:  # pragma: no cover - the run's supervisor
            status = 125
            try:
                sock.close()
                status = _serve(conn, pid, pidfd, os.path.dirname(path))
            except BaseException as exc:  # said on the client's stderr
                with contextlib.suppress(OSError):
                    os.write(2, f"synthfs run: the warm supervisor failed: {exc!r}\n".encode())
            finally:
                os._exit(status)
        os.close(pidfd)


def _serve(conn: socket.socket, pid: int, pidfd: int, refused: str) -> int:
    """One run, in its own forked supervisor; 0 when the client was answered."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
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
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    client = WarmClient(conn, pid, pidfd, refused)
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
    parser = argparse.ArgumentParser(prog="synthfs run", description=run.HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    run.configure(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse said why on stderr
        return exc.code if isinstance(exc.code, int) else 2
    if args.data:
        return None
    cli._setup_logging(args.verbose)
    return run.main(args, client=client)
