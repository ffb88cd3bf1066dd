"""The embedded default: a private server + agent pair for one ``synthfs run --data DIR``.

The server publishes invalidations on a third private socket (``--publish``)
that the agent follows (``--subscribe``): see :mod:`agent.callbacks`.

Trusts: the Python interpreter running it (``sys.executable``) and the
``server`` / ``agent`` packages beside this one. It creates every secret
itself: a private 0700 work directory holding both ``ipc://`` sockets and the
bootstrap key (0600, random), so no other user can reach either process. The
key never appears in argv or the environment: the server reads the file, the
agent reads the same key from an inherited pipe, and the file is deleted as
soon as both are ready. The agent lists the work directory (and its cache)
in ``Welcome.refused_paths``, and the server its root and state directory
(``Registered.trusted_paths``), so the interposer refuses them to every guest
(:mod:`protocol.trusted`).

The server's state directory (staged uploads, the commit journal) is never in
the served directory: ``state_dir`` when given, else ``WORKDIR/state`` (removed
with the work directory) when the work directory is on the data's file
system, else the server's default (``$XDG_STATE_HOME/synthfs/server/ID``);
a server that still cannot use it says why (:class:`EmbeddedError`).

Usage::

    with embedded("./datasets") as stack:
        client = Client(stack.agent_endpoint)   # the interposer's side
        ...
    # both processes are gone (SIGTERM, then SIGKILL after a grace period)
    # and the work directory is removed.

If the launcher dies without cleaning up (SIGKILL), the agent is told at once
(``PR_SET_PDEATHSIG``: SIGTERM, so it finishes the request in hand, an upload
included) and the server stays while the agent does: it stops when every
holder of its lifeline pipe (the launcher and the agent) has gone. Both are
gone within moments of the launcher, and no upload in flight is cut off.

Both processes start in parallel (the agent's registration waits in ZeroMQ's
queue until the server binds); the stack is ready when both have written
``ready`` on their ready fd. A process that exits or stays silent past
``startup_timeout`` is an :class:`EmbeddedError` carrying its stderr.

:func:`starting` is the same pair for a launcher with work of its own to do
while they boot (``synthfs run`` imports the interposer and builds the guest's
filter meanwhile): it returns as soon as both processes are spawned, and
``launch.ready()`` waits for them and deletes the key file.

``starting(fork=True)`` (``synthfs run``) forks the pair from the launcher
instead of starting two interpreters: it first imports what all three processes
import (:data:`PRELOAD`: ZeroMQ, attrs, msgpack, the protocol's messages and
codec, which the launcher needs anyway), so each child starts from there, not
from an empty interpreter (about 130 ms of CPU less each). Only for a process
with one thread and no ZeroMQ context (a context's I/O thread does not survive
a fork): with a second thread running it spawns as usual. A forked child gets
what an exec'd one gets and nothing more: its own session, PDEATHSIG (the
agent), ``/`` as its cwd, ``/dev/null`` and its log on 0-2, and no other fd
than those passed; it runs ``synthfs server`` / ``synthfs agent`` and ends
with ``os._exit``, never returning into the launcher's code. The launcher holds
no secret at that point but the bootstrap key, which both children need; the
agent's token is made after the fork, in the agent alone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import synthfs
from synthfs.private_dirs import private_dir_name

if TYPE_CHECKING:
    import subprocess

# Light on imports on purpose (no attrs, no agent.cache and the protocol behind it):
# ``synthfs run --data`` imports this module first and spawns the pair before it
# loads anything else, so that they boot while the interposer loads. subprocess,
# shutil and tempfile are imported where used: ``synthfs run --agent`` imports this
# module for :func:`private_dir` alone.

__all__ = ["PRELOAD", "EmbeddedError", "Launch", "TrustedStack", "embedded", "starting"]

#: What the launcher, the server and the agent all import (``starting(fork=True)``
#: imports them before forking the pair): the wire and its libraries.
PRELOAD = ("zmq", "synthfs.protocol.codec", "synthfs.protocol.client")

#: Seconds to wait for SIGTERM to work before SIGKILL.
GRACE = 2.0
#: the directory that holds the ``synthfs`` package (a checkout, or site-packages)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(synthfs.__file__)))


class EmbeddedError(RuntimeError):
    """The embedded server or agent could not be started (message says why)."""


class TrustedStack(NamedTuple):
    """A running embedded server + agent pair (valid inside the ``with`` block).

    A NamedTuple rather than an attrs class: this module must not import attrs
    (see the imports).
    """

    agent_endpoint: str  # ipc:// endpoint the interposer connects to
    server_endpoint: str  # ipc:// endpoint of the server (only the agent uses it)
    workdir: str  # private 0700 directory: sockets, key, logs (removed on exit)
    cache_dir: str  # the agent's content cache root
    data_dir: str  # the repository directory the server serves
    state_dir: str  # the server's state directory (staging, journal): outside data_dir
    server_pid: int
    agent_pid: int

    @property
    def refused_paths(self) -> tuple[str, ...]:
        """Host paths no guest may name: the work directory, the cache, the data, the state."""
        return (self.workdir, self.cache_dir, self.data_dir, self.state_dir)


def _check_data_dir(data_dir: str | os.PathLike[str]) -> str:
    path = os.path.abspath(os.fspath(data_dir))
    if not os.path.exists(path):
        raise EmbeddedError(f"data directory {path} does not exist")
    if not os.path.isdir(path):
        raise EmbeddedError(f"data directory {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise EmbeddedError(f"data directory {path} is not readable")
    return path


def _state_dir(data: str, workdir: str, state_dir: str | None) -> str:
    """The embedded server's state directory (see the module's docstring)."""
    if state_dir is not None:
        return os.path.abspath(state_dir)
    if os.stat(workdir).st_dev == os.stat(data).st_dev:
        return os.path.join(workdir, "state")
    from synthfs.server.statedir import default_state_dir

    return default_state_dir(data)


def _runtime_base() -> str | None:
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run) and os.access(run, os.W_OK) and len(run) < 60:
        return run
    return None


#: the file in each work directory naming its owner: ``PID START PIDNS`` (START: the
#: process's start time in clock ticks since boot, /proc/PID/stat field 22; PIDNS:
#: the pid namespace the pid is in, /proc/self/ns/pid)
OWNER_FILE = "owner"


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


#: the bases :func:`private_dir` has swept in this process
_swept: set[str] = set()


def private_dir(prefix: str, base: str | None = None) -> str:
    """A fresh 0700 ``PREFIX*`` directory owned by this process, leftovers swept first.

    It holds :data:`OWNER_FILE` (this process's pid and start time), so that a
    later run can tell it is a leftover once this process is gone (SIGKILL, a
    crash): see :func:`sweep_leftovers`. A base is swept once a process (``synthfs run
    --data`` makes two directories, often side by side, and each sweep reads every
    ``synthfs-*`` entry there): a leftover it misses, the next run sweeps.
    """
    base = sweep_once(base)
    path = _mkdtemp(prefix, base)
    pid = os.getpid()
    fd = os.open(
        os.path.join(path, OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
    )
    try:
        os.write(fd, f"{pid} {_start_time(pid)} {_pid_ns()}\n".encode())
    finally:
        os.close(fd)
    return path


def sweep_once(base: str | None = None) -> str:
    """:func:`sweep_leftovers` of ``base`` (default: the temp dir) once in this process
    (a warm start's supervisor sweeps before its client comes); the base."""
    base = base or _temp_base()
    if base not in _swept:
        sweep_leftovers(base)
        _swept.add(base)
    return base


def _temp_base() -> str:
    """``tempfile.gettempdir()`` without importing tempfile (and shutil, random) for it.

    The same first choice in every usual case: ``$TMPDIR`` (``$TEMP``, ``$TMP``) when
    it is a writable directory, else ``/tmp``; anything unusual asks tempfile itself.
    """
    if "tempfile" not in sys.modules:
        for name in ("TMPDIR", "TEMP", "TMP"):
            path = os.environ.get(name)
            if path:
                break
        else:
            path = "/tmp"  # tempfile's first default
        path = os.path.abspath(path)
        if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return path
    import tempfile

    return tempfile.gettempdir()


def _mkdtemp(prefix: str, base: str) -> str:
    """``tempfile.mkdtemp(prefix=prefix, dir=base)``: a new 0700 directory, a random name."""
    for _ in range(100):
        path = os.path.join(base, private_dir_name(prefix))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # whatever the umask
        return os.path.abspath(path)
    raise FileExistsError(f"no free name for {prefix}* in {base}")


def sweep_leftovers(base: str | None = None) -> list[str]:
    """Remove the ``synthfs-*`` directories in ``base`` (default: the temp dir) whose owner is gone.

    Only a real directory (never a symlink) owned by this user with mode 0700
    and an :data:`OWNER_FILE` naming a process of this pid namespace that no
    longer runs (or a pid since reused: the start time differs) is removed; a directory without that
    file (being created, or not ours) and another live run's are left alone.
    Returns the paths removed. Never raises.
    """
    import stat

    base = base or _temp_base()
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    uid = os.geteuid()
    here = _pid_ns()
    for name in names:
        if not name.startswith("synthfs-"):
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o7777 != 0o700:
                continue
            fd = os.open(
                os.path.join(path, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            try:
                owner = os.read(fd, 64).split()
            finally:
                os.close(fd)
            pid, start, pid_ns = int(owner[0]), int(owner[1]), owner[2].decode()
        except (OSError, ValueError, IndexError):
            continue
        if pid_ns != here:
            continue  # a run in another pid namespace (a container): its pid means nothing here
        if pid == os.getpid() or _start_time(pid) == start:
            continue  # its owner still runs
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # never follows symlinks
        removed.append(path)
    return removed


@contextlib.contextmanager
def embedded(
    data_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int | None = None,
    startup_timeout: float = 10.0,
    token_ttl: float | None = None,
    attr_ttl: float | None = None,
    server_listen: str | None = None,
    verbose: int = 0,
    state_dir: str | os.PathLike[str] | None = None,
    write_through: bool = True,
) -> Iterator[TrustedStack]:
    """Start a private server (serving ``data_dir``) and agent; stop both on exit.

    ``cache_dir`` defaults to ``$XDG_CACHE_HOME/synthfs`` or ``~/.cache/synthfs``
    and ``cache_size`` to the agent's default (``agent.cache.DEFAULT_CACHE_SIZE``).
    ``token_ttl`` and ``attr_ttl`` pass through to the server and the agent;
    ``server_listen`` replaces the server's private ``ipc://`` endpoint (for
    benchmarks: e.g. ``tcp://127.0.0.1:5701``; a port the caller chose).
    ``state_dir`` is the server's ``--state`` (see the module's docstring).
    ``write_through``: the agent's ``--write-through`` (a close waits for the server).
    Raises :class:`EmbeddedError` (before starting anything) for a bad
    ``data_dir``, or when a process fails to become ready in ``startup_timeout``.
    """
    with starting(
        data_dir, cache_dir=cache_dir, cache_size=cache_size, startup_timeout=startup_timeout,
        token_ttl=token_ttl, attr_ttl=attr_ttl, server_listen=server_listen, verbose=verbose,
        state_dir=state_dir, write_through=write_through,
    ) as launch:
        yield launch.ready()


class Launch:
    """A server + agent pair being started by :func:`starting`."""

    def __init__(self, procs: list[_Proc], key_path: str, deadline: float, timeout: float,
                 stack: TrustedStack) -> None:
        self._procs = procs
        self._key_path = key_path
        self._deadline = deadline
        self._timeout = timeout
        self._stack = stack
        self._ready = False

    def ready(self) -> TrustedStack:
        """Wait until both processes are ready (:class:`EmbeddedError` if one is not)."""
        if not self._ready:
            _wait_ready(self._procs, self._deadline, self._timeout)
            # Both hold the key in memory now; the file has no further use (defence
            # in depth: the work directory is refused to guests anyway).
            os.unlink(self._key_path)
            self._ready = True
        return self._stack


@contextlib.contextmanager
def starting(
    data_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int | None = None,
    startup_timeout: float = 10.0,
    token_ttl: float | None = None,
    attr_ttl: float | None = None,
    server_listen: str | None = None,
    verbose: int = 0,
    state_dir: str | os.PathLike[str] | None = None,
    write_through: bool = True,
    fork: bool = False,
) -> Iterator[Launch]:
    """Spawn the pair of :func:`embedded` and return at once; stop both on exit.

    Call ``ready()`` on the :class:`Launch` before using either process:
    ``startup_timeout`` counts from the spawn. The same arguments and errors as
    :func:`embedded`; the stack is never handed out before both are ready.
    ``fork``: fork both from this process (see the module's docstring): the caller
    has no ZeroMQ context and handles no signal yet (threads are checked: with a
    second one running, both are spawned as usual).
    """
    data = _check_data_dir(data_dir)
    if fork and _single_threaded():
        import importlib

        for name in PRELOAD:
            importlib.import_module(name)
    else:
        fork = False
    cache = os.path.abspath(os.fspath(cache_dir)) if cache_dir is not None else None
    workdir = private_dir("synthfs-", _runtime_base())
    state = _state_dir(data, workdir, None if state_dir is None else os.fspath(state_dir))
    procs: list[_Proc] = []
    lifeline: int | None = None
    try:
        key_path = os.path.join(workdir, "bootstrap.key")
        key = os.urandom(32).hex().encode()  # what secrets.token_hex does, without its imports
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key + b"\n")
        finally:
            os.close(fd)
        server_ep = server_listen or f"ipc://{workdir}/server.sock"
        agent_ep = f"ipc://{workdir}/agent.sock"
        # The server's invalidations and heartbeats: the agent holds callback promises
        # (an unchanged cached object opens with no round trip).
        pub_ep = f"ipc://{workdir}/publish.sock"
        # Exec'd (not forked): both run with -S (no site import, no .pth processing)
        # and get this interpreter's own sys.path instead, so they import exactly
        # what this process imports (the repository, the venv).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([_REPO, *filter(None, sys.path)]))
        v = ["-" + "v" * verbose] if verbose else []

        server_argv = [*v, "--root", data,
                       "--listen", server_ep, "--bootstrap-key", key_path,
                       "--publish", pub_ep, "--state", state]
        if token_ttl is not None:
            server_argv += ["--token-ttl", f"{token_ttl:g}"]
        # The server's lifeline: it stops at EOF, once this process and the agent
        # (the write end's holders) have both gone; no PDEATHSIG of its own.
        life_r, life_w = os.pipe()
        lifeline = life_w
        server_argv += ["--lifeline-fd", str(life_r)]
        spawned = time.monotonic()
        try:
            server = _spawn("server", server_argv, workdir, env, [life_r], fork,
                            die_with_parent=False)
        finally:
            os.close(life_r)
        procs.append(server)

        key_r, key_w = os.pipe()
        try:
            agent_argv = [*v, "--server", server_ep,
                          "--bootstrap-fd", str(key_r), "--listen", agent_ep,
                          "--subscribe", pub_ep, "--refuse", workdir]
            if cache is not None:
                agent_argv += ["--cache", cache]
            if cache_size is not None:
                agent_argv += ["--cache-size", str(cache_size)]
            if attr_ttl is not None:
                agent_argv += ["--attr-ttl", f"{attr_ttl:g}"]
            if not write_through:
                agent_argv.append("--write-back")
            agent = _spawn("agent", agent_argv, workdir, env, [key_r, life_w], fork)
            procs.append(agent)
        finally:
            os.close(key_r)
        try:
            os.write(key_w, key)  # a 64-byte write to an empty pipe never blocks
        finally:
            os.close(key_w)
        del key

        if cache is None:  # the agent's default, computed here after the spawn (see imports)
            from synthfs.agent import default_cache_dir

            cache = default_cache_dir()
        stack = TrustedStack(
            agent_endpoint=agent_ep,
            server_endpoint=server_ep,
            workdir=workdir,
            cache_dir=cache,
            data_dir=data,
            state_dir=state,
            server_pid=server.popen.pid,
            agent_pid=agent.popen.pid,
        )
        yield Launch(procs, key_path, spawned + startup_timeout, startup_timeout, stack)
    finally:
        import shutil

        _stop(procs, lifeline)
        shutil.rmtree(workdir, ignore_errors=True)


class _Proc:
    """One spawned process: its log file and, until it is ready, its ready fd."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes] | _Forked, log_path: str,
                 ready_fd: int | None) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.ready_fd = ready_fd

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """What the child runs before exec: SIGTERM when the launching thread's process dies.

    libc is looked up here, before the fork: the child only makes the call.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return in_child


def _spawn(
    name: str, args: list[str], workdir: str, env: dict[str, str], pass_fds: list[int],
    fork: bool = False, die_with_parent: bool = True,
) -> _Proc:
    """``synthfs NAME ARGS --ready-fd N``: a fresh interpreter, or (``fork``) a fork of this one."""
    ready_r, ready_w = os.pipe()
    args = [*args, "--ready-fd", str(ready_w)]
    log_path = os.path.join(workdir, f"{name}.log")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        # A new session: a Ctrl-C meant for the guests does not stop the agent
        # before it has uploaded their writes. PDEATHSIG: if this process dies
        # without cleaning up (SIGKILL), the agent stops too (the server follows
        # it through its lifeline).
        if fork:
            child: subprocess.Popen[bytes] | _Forked = _fork(
                name, args, log, [ready_w, *pass_fds], die_with_parent)
        else:
            import subprocess

            preexec = _die_with_parent() if die_with_parent else None
            child = subprocess.Popen(
                [sys.executable, "-S", "-m", f"synthfs.{name}", *args], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=env, pass_fds=[ready_w, *pass_fds], cwd="/",
                start_new_session=True, preexec_fn=preexec,
            )
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
        os.close(log)
    return _Proc(name=name, popen=child, log_path=log_path, ready_fd=ready_r)


def _single_threaded() -> bool:
    if "threading" not in sys.modules:
        return True
    import threading

    return threading.active_count() == 1


def _fork(name: str, args: list[str], log: int, keep: list[int], die_with_parent: bool) -> _Forked:
    """Fork ``synthfs NAME ARGS`` (see the module's docstring); its handle."""
    prctl = _die_with_parent() if die_with_parent else None
    parent = os.getpid()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    sys.stdout.flush()  # nothing buffered here is written twice
    sys.stderr.flush()
    gc.freeze()  # the children's collections never scan (nor copy) what they inherit
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _forked_child(name, args, log, devnull, keep, prctl, parent)
    finally:
        os.close(devnull)
    return _Forked(pid)


def _forked_child(name: str, args: list[str], log: int, devnull: int, keep: list[int],
                  prctl: Callable[[], None] | None, parent: int) -> None:
    status: object = 1
    try:
        gc.enable()  # (synthfs run starts with it disabled: synthfs.cli)
        os.setsid()
        if prctl is not None:
            prctl()
            if os.getppid() != parent:  # the launcher died before the prctl
                os._exit(1)
        os.chdir("/")
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # Only 0-2 and ``keep`` stay open (close_fds, as subprocess does).
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _max_fd())
        # The signal dispositions and mask are left as they are: a fresh interpreter's
        # (the launcher forks before it handles any signal itself).
        _set_cmdline([sys.executable, "-m", f"synthfs.{name}", *args])
        from synthfs.cli import main

        status = main([name, *args])
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status if isinstance(status, int) else 0 if status is None else 1)


def _set_cmdline(argv: list[str]) -> None:
    """Show ``argv`` in ``/proc/self/cmdline`` (``ps``, ``pgrep -f``), as setproctitle does:
    a forked child would otherwise show its launcher's command line, the guest's included.

    Written over the launcher's argv area (its bytes, ``/proc/self/stat``'s ``arg_start``
    and ``arg_end``), cut to its length; nothing changes where that fails.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[-5]), int(fields[-4])
        text = b"\0".join(os.fsencode(a) for a in argv)[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(text.ljust(end - start, b"\0"))


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1 << 16


class _Forked:
    """A forked child, as much of :class:`subprocess.Popen` as this module uses.

    The supervisor's wait loop (``waitpid(-1)``) may reap it first (a killed agent):
    it is then gone with status 0, as :class:`subprocess.Popen` has it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # before Linux 5.3: wait() polls
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (as subprocess.Popen takes it)
                pid, status = self.pid, 0
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        if timeout is not None:
            deadline = time.monotonic() + timeout
            while self.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired([str(self.pid)], timeout)
                if self._pidfd is not None:
                    select.select([self._pidfd], [], [], left)
                else:
                    time.sleep(min(left, 0.01))
        elif self.returncode is None:
            try:
                self._reaped(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:  # reaped elsewhere: the supervisor's wait loop
                self._reaped(0)
        assert self.returncode is not None
        return self.returncode

    def _reaped(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _wait_ready(procs: list[_Proc], deadline: float, timeout: float) -> None:
    import subprocess

    waiting = {p.ready_fd: p for p in procs if p.ready_fd is not None}
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            p = next(iter(waiting.values()))
            raise EmbeddedError(
                f"synthfs {p.name} did not become ready within {timeout:g} s; "
                f"its output:\n{p.output()}"
            )
        readable, _, _ = select.select(list(waiting), [], [], left)
        for fd in readable:
            p = waiting.pop(fd)
            data = os.read(fd, 64)
            os.close(fd)
            p.ready_fd = None
            if not data.startswith(b"ready"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=GRACE)
                raise EmbeddedError(
                    f"synthfs {p.name} failed to start (exit {p.popen.returncode}); "
                    f"its output:\n{p.output()}"
                )


def _stop(procs: list[_Proc], lifeline: int | None = None) -> None:
    """Stop the agent first (it may be finishing an upload to the server), then the server.

    Each gets SIGTERM, then SIGKILL after ``GRACE`` seconds; the launcher's end of the
    server's lifeline closes once the agent has gone.
    """
    import subprocess

    for p in reversed(procs):  # spawned server first, agent second
        if p.name == "server" and lifeline is not None:
            os.close(lifeline)
            lifeline = None
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        try:
            p.popen.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.popen.kill()
            p.popen.wait()
        if p.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(p.ready_fd)
            p.ready_fd = None
    if lifeline is not None:
        os.close(lifeline)
