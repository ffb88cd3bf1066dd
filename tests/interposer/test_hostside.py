"""interposer.hostside: who is trusted, learned from the kernel (no ptrace needed).

The listeners here are real processes listening on real unix sockets (a
plain ``listen()``, and a ZeroMQ ROUTER as the agent uses); the "guests" are
a set of pids the test names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthfs.interposer.hostside import HostSide, Listener, peer_pid
from synthfs.private_dirs import private_dir_name

#: Listens on argv[1] (a plain unix socket, or ZeroMQ with argv[2] == "zmq"), says
#: "ready", then sleeps until killed.
LISTEN = r"""
import socket, sys, time
if sys.argv[2:] == ["zmq"]:
    import zmq
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind("ipc://" + sys.argv[1])
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[1])
    s.listen(8)
print("ready", flush=True)
time.sleep(600)
"""


class Listening:
    """A process listening on ``path``; started and killed by the test."""

    def __init__(self, path: Path, zmq: bool = False) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LISTEN, str(path), *(["zmq"] if zmq else [])],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.popen.stdout is not None
        assert self.popen.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


@pytest.fixture
def procs() -> Iterator[list[Listening]]:
    started: list[Listening] = []
    yield started
    for p in started:
        p.kill()


def _host(tmp_path: Path, sock: Path, pid: int | None, guests: set[int]) -> HostSide:
    host = HostSide(str(tmp_path / "private"), (), (os.getpid(),), [Listener(str(sock), pid)])
    host.is_guest = guests.__contains__
    return host


def test_peer_pid_names_the_listener(tmp_path: Path, procs: list[Listening]) -> None:
    sock = tmp_path / "s.sock"
    assert peer_pid(str(sock)) is None  # no file
    procs.append(Listening(sock))
    assert peer_pid(str(sock)) == procs[0].pid
    procs[0].kill()
    assert peer_pid(str(sock)) is None  # a stale file: refused


def test_a_restarted_listener_is_trusted_and_its_predecessor_forgotten(
    tmp_path: Path, procs: list[Listening]
) -> None:
    sock = tmp_path / "agent.sock"
    first = Listening(sock, zmq=True)
    procs.append(first)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        host = _host(tmp_path, sock, first.pid, set())
        assert host.trusted(first.pid)
        assert not host.trusted(bystander.pid)
        assert host.refused(f"/proc/{first.pid}/stat")
        first.kill()
        # nobody listens: fail closed, every pid that is not a guest is refused
        assert host.trusted(bystander.pid)
        assert host.refused(f"/proc/{bystander.pid}/stat")
        second = Listening(sock, zmq=True)
        procs.append(second)
        assert host.trusted(second.pid)
        assert host.refused(f"/proc/{second.pid}/stat")
        assert host.refused(f"/proc/{second.pid}/task/{second.pid}/fd")
        tids = [int(t) for t in os.listdir(f"/proc/{second.pid}/task")]
        assert len(tids) > 1  # ZeroMQ's I/O threads
        for tid in tids:
            assert host.trusted(tid), tid  # /proc/TID reaches the process as /proc/PID does
            assert host.refused(f"/proc/{tid}/stat")
        assert first.pid not in host.trusted_pids  # dead: its pid may return as a guest's
        assert not host.trusted(bystander.pid)
        assert not host.refused(f"/proc/{bystander.pid}/stat")  # what ps reads of anyone
        # what the kernel guards with a ptrace check stays refused: it is not a guest's
        assert host.refused(f"/proc/{bystander.pid}/environ")
        assert host.foreign_group(os.getpgid(second.pid))
    finally:
        bystander.kill()
        bystander.wait()


def test_guests_never_pay_for_a_probe(tmp_path: Path, procs: list[Listening]) -> None:
    sock = tmp_path / "agent.sock"
    procs.append(Listening(sock))
    guest = subprocess.Popen(["sleep", "60"])
    try:
        host = _host(tmp_path, sock, None, {guest.pid})
        listener = host.listeners[0]
        assert not host.trusted(guest.pid)
        assert not host.refused(f"/proc/{guest.pid}/status")
        assert listener.probes == 0
        procs[0].kill()  # the agent is away: guests are still not trusted
        assert not host.trusted(guest.pid)
        assert listener.probes == 0
    finally:
        guest.kill()
        guest.wait()


def test_the_learned_listener_is_cached(tmp_path: Path, procs: list[Listening]) -> None:
    sock = tmp_path / "agent.sock"
    procs.append(Listening(sock, zmq=True))
    listener = Listener(str(sock))
    assert listener.current() == procs[0].pid
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        assert listener.current() == procs[0].pid
    cached = (time.perf_counter() - t0) / n
    assert listener.probes == 1
    print(f"cached check {cached * 1e6:.1f} µs")


def test_a_dead_server_the_agent_named_is_failed_closed(
    tmp_path: Path, procs: list[Listening]
) -> None:
    sock = tmp_path / "agent.sock"
    procs.append(Listening(sock))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        host = _host(tmp_path, sock, procs[0].pid, set())
        answer: list[tuple[int, ...] | None] = [(procs[0].pid,)]
        host.also_trusted = lambda: answer[0]
        assert not host.trusted(bystander.pid)
        answer[0] = None  # the agent cannot say who its server is now
        assert host.trusted(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_every_runs_private_directories_are_refused(tmp_path: Path) -> None:
    """A private directory's name (``synthfs-`` or ``synthfs-run-`` and 12 hex digits)
    is refused wherever it is, below it too (another run's may be in any $TMPDIR);
    other names, and names that only look alike, are not."""
    host = HostSide(str(tmp_path / "private"), (), (os.getpid(),))
    name = private_dir_name("synthfs-")
    assert host.refused(f"/tmp/{name}")
    assert host.refused(f"/home/u/elsewhere/{private_dir_name('synthfs-run-')}/agent.sock")
    assert host.refused(f"/srv/x/{name}/sub/dir")
    assert not host.refused("/tmp/synthfs-mine")
    assert not host.refused(f"/tmp/{name}x")
    assert not host.refused("/usr/lib/python3/site-packages/synthfs-0.2.0.dist-info/RECORD")
