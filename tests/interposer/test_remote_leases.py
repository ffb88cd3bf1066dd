"""Leases end to end: a real server, two real agents, a guest under ``synthfs run --agent``.

The guest (a python loop under ptrace) opens and reads ``/data/f`` on each line
it is sent. Its agent A1 grants a lease with the first open, so the next ones
never reach A1 (its debug log shows every request). Another client changes the
file through a second agent A2: the server publishes, A1 forwards, and the
guest's next open sees the new content. A killed A1 breaks the leases: the
guest gets an error, never the old content.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_stack import Proc, Stack, wait_until

from synthfs.interposer.remote import Remote
from synthfs.protocol.client import Client
from synthfs.protocol.messages import Commit, Open, Opened

SYNTHFS = helpers.synthfs_command()
GUEST = """
import os, sys
for line in sys.stdin:
    try:
        fd = os.open('/data/f', os.O_RDONLY | os.O_CLOEXEC)
        try:
            print(os.read(fd, 100).decode(), flush=True)
        finally:
            os.close(fd)
    except OSError as exc:
        print('ERR', exc.errno, flush=True)
"""


class Guest:
    """The guest loop under ``synthfs run --agent``: one line in, one read out."""

    def __init__(self, agent_ep: str, log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [*SYNTHFS, "run", "--agent", agent_ep, "--", sys.executable, "-S", "-c", GUEST],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
        )

    def read(self, timeout: float = 30.0) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(b"go\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f"the guest did not answer:\n{self.log.read_text(errors='replace')}"
        return self.p.stdout.readline().decode().rstrip("\n")

    def stop(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._err.close()


@pytest.fixture
def two_agents(stack: Stack) -> Iterator[tuple[Stack, Proc]]:
    """Server --publish; A1 (-vv, the stack's agent) and A2, both --subscribe."""
    d = tempfile.mkdtemp(prefix="sfs-lease-", dir="/tmp")
    pub = f"ipc://{d}/pub.sock"
    stack.start_server("--publish", pub)
    (stack.root / "f").write_bytes(b"one")
    stack.start_agent("-vv", "--subscribe", pub)
    a2 = Proc("agent2", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                         "--bootstrap-key", str(stack.key), "--listen",
                         f"ipc://{stack.run}/agent2.sock", "--cache", str(stack.tmp / "cache2"),
                         "--subscribe", pub], stack.tmp / "agent2.log")
    a2.wait_ready()
    try:
        yield stack, a2
    finally:
        a2.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _opens_seen(stack: Stack) -> int:
    """Open requests A1 received (its debug log has one line per request)."""
    assert stack.agent is not None
    return stack.agent.output().count("Open(path='/f'")


def _write_through(agent_ep: str, content: bytes) -> None:
    c = Client(agent_ep, timeout=10, retries=0)
    try:
        o = c.call(Open(path="/f", flags=os.O_WRONLY | os.O_TRUNC, mode=0))
        assert isinstance(o, Opened)
        Path(o.host_path).write_bytes(content)
        c.call(Commit(path="/f"))
    finally:
        c.close()


def _leased(stack: Stack, guest: Guest, want: str) -> None:
    """Reads until one is served from a lease (A1 saw no Open for it)."""

    def one_without_a_round_trip() -> bool:
        before = _opens_seen(stack)
        assert guest.read() == want
        time.sleep(0.05)  # A1 logs as it receives
        return _opens_seen(stack) == before

    assert wait_until(one_without_a_round_trip, timeout=10), "no read was served from a lease"


@pytest.mark.ptrace
def test_another_agents_change_is_seen_by_the_next_open(two_agents: tuple[Stack, Proc]) -> None:
    stack, _ = two_agents
    guest = Guest(stack.agent_ep, stack.tmp / "guest.log")
    try:
        assert guest.read() == "one"
        _leased(stack, guest, "one")
        for _ in range(5):
            assert guest.read() == "one"
        _write_through(f"ipc://{stack.run}/agent2.sock", b"two")
        # The server published before it acknowledged; A1 forwards at once.
        t0 = time.monotonic()
        seen = guest.read()
        while seen == "one" and time.monotonic() - t0 < 1.0:
            time.sleep(0.05)
            seen = guest.read()
        assert seen == "two", "the guest still reads the old content through its lease"
        _leased(stack, guest, "two")  # and it holds a lease again
    finally:
        guest.stop()


@pytest.mark.ptrace
def test_a_killed_agent_breaks_the_leases(two_agents: tuple[Stack, Proc]) -> None:
    stack, _ = two_agents
    assert stack.agent is not None
    guest = Guest(stack.agent_ep, stack.tmp / "guest.log")
    try:
        assert guest.read() == "one"
        _leased(stack, guest, "one")
        stack.agent.stop(signal.SIGKILL)
        _write_through(f"ipc://{stack.run}/agent2.sock", b"two")
        for _ in range(3):
            got = guest.read()
            assert got != "one", "a lease outlived its agent: stale read"
            assert got.startswith("ERR"), got
    finally:
        guest.stop()


# -- the interposer's Remote itself (no guest): what ends a lease on this side ---------------


def _remote_with_a_lease(stack: Stack, path: str = "/f") -> Remote:
    r = Remote(stack.agent_ep)

    def leased() -> bool:
        r.open(path, os.O_RDONLY, 0)
        n = r.requests
        r.open(path, os.O_RDONLY, 0)
        return r.requests == n

    assert wait_until(leased, timeout=10), "no lease"
    return r


def test_this_sandboxs_own_changes_drop_the_lease_at_once(two_agents: tuple[Stack, Proc]) -> None:
    stack, _ = two_agents
    r = _remote_with_a_lease(stack)
    try:
        n = r.requests
        o = r.open("/f", os.O_WRONLY | os.O_TRUNC, 0)  # never leased
        assert r.requests == n + 1
        assert r._leases is not None and r._leases.get("/f") is None  # dropped here, at once
        Path(o.host_path).write_bytes(b"mine")
        r.commit("/f")
        n = r.requests
        o = r.open("/f", os.O_RDONLY, 0)
        assert r.requests == n + 1, "an open after this sandbox's commit used the old lease"
        assert Path(o.host_path).read_bytes() == b"mine"
        for change in (lambda: r.setattr("/f", mode=0o600), lambda: r.rename("/f", "/g", 0)):
            r.open("/f", os.O_RDONLY, 0)
            change()
            assert r._leases.get("/f") is None  # before anything from the agent is drained
            n = r.requests
            with contextlib.suppress(FileNotFoundError):
                r.open("/f", os.O_RDONLY, 0)
            assert r.requests == n + 1
    finally:
        r.close()


def test_a_vanished_copy_costs_a_round_trip_not_an_error(two_agents: tuple[Stack, Proc]) -> None:
    stack, _ = two_agents
    r = _remote_with_a_lease(stack)
    try:
        host = r.open("/f", os.O_RDONLY, 0).host_path
        os.unlink(host)  # as an eviction would
        n = r.requests
        o = r.open("/f", os.O_RDONLY, 0)
        assert r.requests == n + 1
        assert Path(o.host_path).read_bytes() == b"one"
    finally:
        r.close()


def test_a_leased_copy_is_not_evicted(stack: Stack) -> None:
    d = tempfile.mkdtemp(prefix="sfs-lease-", dir="/tmp")
    try:
        pub = f"ipc://{d}/pub.sock"
        stack.start_server("--publish", pub)
        for name in ("a", "b", "c"):
            (stack.root / name).write_bytes(name.encode() * 100)
        stack.start_agent("--subscribe", pub, "--cache-size", "150")  # room for one copy
        r = _remote_with_a_lease(stack, "/a")
        try:
            host = r.open("/a", os.O_RDONLY, 0).host_path
            r.open("/b", os.O_RDONLY, 0)
            r.open("/c", os.O_RDONLY, 0)
            assert os.path.exists(host), "the agent evicted a copy under a lease"
            n = r.requests
            r.open("/a", os.O_RDONLY, 0)
            assert r.requests == n
        finally:
            r.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_listing_leases_warm_copies_for_their_first_open(two_agents: tuple[Stack, Proc]) -> None:
    stack, _ = two_agents
    for name in ("g", "h"):
        (stack.root / name).write_bytes(name.encode())
    warm = _remote_with_a_lease(stack)  # promises live; every copy in A1's cache
    for name in ("/g", "/h"):
        warm.open(name, os.O_RDONLY, 0)
    warm.close()
    r = Remote(stack.agent_ep)
    try:
        assert wait_until(lambda: r._feed is not None and (r._feed.drain() or True)
                          and r._leases is not None and r._leases.instance is not None)
        r.listdir("/")
        n = r.requests
        for name, want in (("/f", b"one"), ("/g", b"g"), ("/h", b"h")):
            assert Path(r.open(name, os.O_RDONLY, 0).host_path).read_bytes() == want
        assert r.requests == n, "a first open after the listing asked the agent"
        _write_through(f"ipc://{stack.run}/agent2.sock", b"new")
        assert wait_until(
            lambda: Path(r.open("/f", os.O_RDONLY, 0).host_path).read_bytes() == b"new",
            timeout=1.0), "a listing's lease outlived a change through another agent"
    finally:
        r.close()
