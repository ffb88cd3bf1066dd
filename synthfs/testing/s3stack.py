"""A real synthfs stack over an S3 bucket, for tests: ``synthfs server --s3`` + an agent.

:func:`s3_stack` starts ``synthfs server --s3 ENDPOINT --bucket B --prefix P``
(with the store's credentials in *its* environment only) and an agent on it,
both as real processes in a private directory, waits until both wrote
``ready`` (bounded; the error carries their logs) and stops them. The agent's
environment holds no ``AWS_*`` variable: only the server holds the credentials.

:func:`push_tree` and :func:`pull_tree` copy a local directory into the
repository and back (through :class:`server.backends.s3.S3Backend`), so that a
test can build its starting tree with ordinary file operations and compare the
result the same way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from synthfs.server.backends.base import Backend, Kind

__all__ = ["S3Stack", "pull_tree", "push_tree", "s3_stack"]

_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


class S3Stack(NamedTuple):
    agent_endpoint: str
    server_endpoint: str
    workdir: str
    state_dir: str
    server_pid: int
    agent_pid: int
    #: every agent's endpoint (the first is ``agent_endpoint``): ``s3_stack(agents=N)``
    agent_endpoints: tuple[str, ...] = ()


def _spawn(name: str, argv: list[str], workdir: str, env: Mapping[str, str],
           pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    ready_r, ready_w = os.pipe()
    with open(os.path.join(workdir, f"{name}.log"), "wb") as log:
        try:
            p = subprocess.Popen([*argv, "--ready-fd", str(ready_w)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, env=dict(env),
                                 pass_fds=(ready_w, *pass_fds), start_new_session=True)
        finally:
            os.close(ready_w)
    return p, ready_r


def _log(workdir: str, name: str) -> str:
    try:
        return Path(workdir, f"{name}.log").read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def _wait(name: str, p: subprocess.Popen[bytes], rfd: int, deadline: float, workdir: str,
          what: str) -> None:
    try:
        left = max(0.0, deadline - time.monotonic())
        ok = select.select([rfd], [], [], left)[0] and os.read(rfd, 64).startswith(b"ready")
    finally:
        os.close(rfd)
    if not ok:
        raise RuntimeError(f"synthfs {name} on {what} not ready (exit {p.poll()}):\n"
                           + _log(workdir, name))


@contextlib.contextmanager
def s3_stack(endpoint: str, bucket: str, prefix: str, credentials: Mapping[str, str], *,
             state_dir: str | None = None, timeout: float = 30.0,
             server_args: tuple[str, ...] = (), agent_args: tuple[str, ...] = (),
             agents: int = 1) -> Iterator[S3Stack]:
    """A server on ``bucket``/``prefix`` and ``agents`` agents on it; stopped on exit."""
    workdir = tempfile.mkdtemp(prefix="synthfs-s3stack-")
    os.chmod(workdir, 0o700)
    key_path = os.path.join(workdir, "bootstrap.key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    state = state_dir or os.path.join(workdir, "state")
    server_ep, agent_ep = f"ipc://{workdir}/server.sock", f"ipc://{workdir}/agent.sock"
    pub_ep = f"ipc://{workdir}/publish.sock"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server_env = {**{k: v for k, v in os.environ.items() if k not in _AWS}, **credentials}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server, sready = _spawn("server", [
            sys.executable, "-m", "synthfs.server", "--s3", endpoint, "--bucket", bucket,
            "--prefix", prefix, "--listen", server_ep, "--bootstrap-key", key_path,
            "--publish", pub_ep, "--state", state, *server_args], workdir, server_env)
        procs.append(server)
        deadline = time.monotonic() + timeout
        _wait("server", server, sready, deadline, workdir, f"s3://{bucket}/{prefix}")
        # The agent after the server: a registration made before the server started is
        # refused (and retried later), which would cost seconds.
        endpoints = [agent_ep, *(f"ipc://{workdir}/agent{i}.sock" for i in range(1, agents))]
        pids = []
        for i, ep in enumerate(endpoints):
            name = f"agent{i}" if i else "agent"
            agent, aready = _spawn(name, [
                sys.executable, "-m", "synthfs.agent", "--server", server_ep, "--bootstrap-key",
                key_path, "--listen", ep, "--subscribe", pub_ep, "--cache",
                os.path.join(workdir, f"cache{i}" if i else "cache"), "--refuse", workdir,
                *agent_args], workdir, base_env)
            procs.append(agent)
            _wait(name, agent, aready, deadline, workdir, f"s3://{bucket}/{prefix}")
            pids.append(agent.pid)
        yield S3Stack(agent_ep, server_ep, workdir, state, server.pid, pids[0], tuple(endpoints))
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def push_tree(local: str | os.PathLike[str], be: Backend, workers: int = 16) -> None:
    """Copy the tree at ``local`` into the repository's root (modes, mtimes, symlinks).

    Directories are made top-down, then files and symlinks in parallel, then the
    directories' times set bottom-up (a create inside one would move its mtime).
    """
    root = Path(local)
    dirs: list[tuple[str, os.stat_result]] = []
    leaves: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        wire_dir = "/" if rel == "." else "/" + rel
        for name in sorted(dirnames):
            path = Path(dirpath, name)
            st = path.lstat()
            wire = wire_dir.rstrip("/") + "/" + name
            if stat.S_ISLNK(st.st_mode):
                leaves.append((wire, path, st))  # os.walk lists a symlink to a dir here
            else:
                be.mkdir(wire, stat.S_IMODE(st.st_mode))
                dirs.append((wire, st))
        for name in filenames:
            path = Path(dirpath, name)
            leaves.append((wire_dir.rstrip("/") + "/" + name, path, path.lstat()))

    def leaf(item: tuple[str, Path, os.stat_result]) -> None:
        wire, path, st = item
        if stat.S_ISLNK(st.st_mode):
            be.symlink(os.readlink(path), wire)
        elif stat.S_ISREG(st.st_mode):
            be.write_bytes(wire, path.read_bytes(), stat.S_IMODE(st.st_mode))
        else:
            return
        be.setattr(wire, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(leaf, leaves))
    for wire, st in reversed(dirs):
        be.setattr(wire, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
    st = root.lstat()
    be.setattr("/", mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns)


def pull_tree(be: Backend, local: str | os.PathLike[str], path: str = "/") -> None:
    """Copy the repository's tree at ``path`` into the directory ``local`` (made here)."""
    out = Path(local)
    out.mkdir(exist_ok=True)
    _own, entries = be.list(path)
    for e in entries:
        wire = path.rstrip("/") + "/" + e.name
        dst = out / e.name
        a = e.attrs
        if a.kind is Kind.SYMLINK:
            os.symlink(be.readlink(wire), dst)
            os.utime(dst, ns=(a.mtime_ns, a.mtime_ns), follow_symlinks=False)
            continue
        if a.kind is Kind.DIR:
            pull_tree(be, dst, wire)
        else:
            dst.write_bytes(be.read_bytes(wire))
            os.utime(dst, ns=(a.mtime_ns, a.mtime_ns))
        os.chmod(dst, a.mode)
    if path == "/":
        os.chmod(out, be.stat("/").mode)
