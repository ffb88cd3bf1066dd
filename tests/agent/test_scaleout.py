"""Scale-out: several servers over one repository, agents given several of them.

Real processes throughout (no mocks): two ``synthfs server`` processes serve one
directory, each with its own ``--state`` and ``--publish``; agents are given
both (``--server S0,S1 --subscribe P0,P1``); a :class:`protocol.client.Client`
plays the interposer. What is shown:

* a file written through one agent and server is read by another agent through
  the other server right after the writer's close (the invalidation the first
  server published before acknowledging the close breaks the reader's promise);
* a request in flight on a server that dies moves to the other server: the
  caller sees a delay and the right answer, including when the dead server had
  applied a mutation before dying (the retry's "already done" is checked), and
  a RENAME_EXCHANGE whose outcome cannot be known is EIO;
* a hung server costs a read one attempt's timeout; a mutation stays with it;
* a change made directly in the repository, behind the servers' backs, is seen
  by an open within ``--promise-max-age``.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_stack import SERVER_CMD, Proc

from synthfs.protocol.client import SERVER_UNREACHABLE, Client
from synthfs.protocol.messages import (
    Commit,
    Committed,
    Done,
    Error,
    FileKind,
    Message,
    Mkdir,
    Open,
    Opened,
    Remove,
    Rename,
    RenameFlags,
    Stat,
    StatReply,
    Symlink,
)
from synthfs.server.backends.s3 import NODE_TTL

RD = os.O_RDONLY
WR_TRUNC = os.O_WRONLY | os.O_TRUNC


class Duo:
    """Two servers over one repository directory; agents made on demand."""

    #: How long a server may answer from memory after a change behind its back.
    lag = 0.0

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        self.root.mkdir()
        self.run = tmp / "run"
        self.run.mkdir(mode=0o700)
        self.key = self.run / "bootstrap.key"
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.close(fd)
        self.server_eps = [f"ipc://{self.run}/s{i}.sock" for i in range(2)]
        self.publish_eps = [f"ipc://{self.run}/p{i}.sock" for i in range(2)]
        self.servers: list[Proc | None] = [None, None]
        self.agents: list[Proc] = []
        self.clients: list[Client] = []

    def repo_args(self) -> list[str]:
        """What names the repository on a server's command line."""
        return ["--root", str(self.root)]

    def put(self, rel: str, data: bytes) -> None:
        """Write ``rel`` straight into the repository (no server sees it)."""
        (self.root / rel).write_bytes(data)

    def start_server(self, i: int) -> Proc:
        p = Proc(f"server{i}", [*SERVER_CMD, *self.repo_args(),
                                "--state", str(self.tmp / f"state{i}"),
                                "--listen", self.server_eps[i], "--publish", self.publish_eps[i],
                                "--bootstrap-key", str(self.key)], self.tmp / f"server{i}.log")
        p.wait_ready()
        self.servers[i] = p
        return p

    def server(self, i: int) -> Proc:
        p = self.servers[i]
        assert p is not None
        return p

    def agent(self, order: list[int], *extra: str) -> Client:
        """An agent given the servers in ``order`` (the first request goes to the first)."""
        n = len(self.agents)
        ep = f"ipc://{self.run}/agent{n}.sock"
        p = Proc(f"agent{n}", [sys.executable, "-m", "synthfs.agent",
                               "--server", ",".join(self.server_eps[i] for i in order),
                               "--subscribe", ",".join(self.publish_eps[i] for i in order),
                               "--bootstrap-key", str(self.key), "--listen", ep,
                               "--cache", str(self.tmp / f"cache{n}"), *extra],
                 self.tmp / f"agent{n}.log")
        p.wait_ready()
        self.agents.append(p)
        c = Client(ep, timeout=30, retries=0)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        for p in [*self.agents, *self.servers]:
            if p is not None:
                if p.popen.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)  # a stopped server must see SIGTERM
                p.stop()


class S3Duo(Duo):
    """Two servers over one fresh bucket of a SeaweedFS store (credentials: ``s3_env``)."""

    lag = NODE_TTL

    def __init__(self, tmp: Path, store: Any) -> None:
        super().__init__(tmp)
        self.store = store
        self.bucket = store.new_bucket("duo")
        self.s3 = store.client()

    def repo_args(self) -> list[str]:
        return ["--s3", self.store.endpoint, "--bucket", self.bucket]

    def put(self, rel: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=rel, Body=data)


def _started(d: Duo) -> Iterator[Duo]:
    try:
        d.start_server(0)
        d.start_server(1)
        yield d
    finally:
        d.stop()


@pytest.fixture
def duo(tmp_path: Path) -> Iterator[Duo]:
    """Two servers over one local directory."""
    yield from _started(Duo(tmp_path))


@pytest.fixture(params=["local", "s3"])
def any_duo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Duo]:
    """Two servers over a local directory, or (``s3``) over one SeaweedFS bucket."""
    yield from _started(S3Duo(tmp_path, request.getfixturevalue("s3_env"))
                        if request.param == "s3" else Duo(tmp_path))


def _opened(c: Client, path: str, flags: int = RD) -> Opened:
    reply = c.call(Open(path=path, flags=flags, mode=0o644))
    assert isinstance(reply, Opened), reply
    return reply


def _write(c: Client, path: str, data: bytes) -> None:
    """What a guest's open(O_WRONLY|O_TRUNC), write and close do through its agent."""
    o = _opened(c, path, WR_TRUNC)
    Path(o.host_path).write_bytes(data)
    assert isinstance(c.call(Commit(path=path)), Committed)


def test_a_file_written_through_one_server_is_read_through_the_other_right_after_close(
        any_duo: Duo) -> None:
    """Agent A uses server 0 only; agent B spreads over servers 1 and 0 and hears both
    channels. B holds a promise on /f (an open with no round trip); after each close of
    A's, B's very next open shows A's bytes (B's revalidations alternate between the
    servers, so both paths are taken)."""
    duo = any_duo
    duo.put("f", b"v0")
    a = duo.agent([0])
    b = duo.agent([1, 0])
    assert Path(_opened(b, "/f").host_path).read_bytes() == b"v0"
    for k in range(1, 13):
        time.sleep(0.3 if k % 3 == 0 else 0)  # sometimes long enough for promises to be live
        data = f"version {k} ".encode() * k
        _write(a, "/f", data)
        assert Path(_opened(b, "/f").host_path).read_bytes() == data, k
    assert "Traceback" not in duo.agents[1].output()


def _rename(src: str, dst: str, flags: RenameFlags = RenameFlags.NONE) -> Callable[[], Message]:
    return lambda: Rename(src=src, dst=dst, flags=flags)


#: (what the agent is asked, what the dead server is made to have done first (None:
#: nothing), what the repository must hold after, what the answer must be)
CASES = {
    "rename-applied": (_rename("/a", "/b"), lambda r: (r / "a").rename(r / "b"),
                       lambda r: not (r / "a").exists() and (r / "b").read_bytes() == b"A",
                       Done),
    "rename-not-applied": (_rename("/a", "/b"), None,
                           lambda r: not (r / "a").exists() and (r / "b").read_bytes() == b"A",
                           Done),
    "remove-applied": (lambda: Remove(path="/a"), lambda r: (r / "a").unlink(),
                       lambda r: not (r / "a").exists(), Done),
    "mkdir-applied": (lambda: Mkdir(path="/d", mode=0o755), lambda r: (r / "d").mkdir(),
                      lambda r: (r / "d").is_dir(), StatReply),
    "symlink-applied": (lambda: Symlink(target="a", path="/l"),
                        lambda r: (r / "l").symlink_to("a"),
                        lambda r: os.readlink(r / "l") == "a", StatReply),
    "create-not-applied": (lambda: Open(path="/new", flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                        mode=0o644), None,
                           lambda r: (r / "new").read_bytes() == b"", Opened),
    "exchange-applied": (_rename("/a", "/x", RenameFlags.EXCHANGE),
                         lambda r: os.rename(r / "a", r / "a.tmp") or os.rename(
                             r / "x", r / "a") or os.rename(r / "a.tmp", r / "x"),
                         lambda r: (r / "x").read_bytes() == b"A", Error),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_request_in_flight_on_a_killed_server_moves_to_the_other(duo: Duo, case: str) -> None:
    """Server 0 is stopped with the request in its queue (or, for the 'applied' cases,
    after what it would have done is done in the repository), then killed: the
    request is answered through server 1, a moment after the kill, as if nothing had
    happened; a mutation's "already done" (ENOENT, EEXIST) is checked, not passed on."""
    ask, did, after, answer = CASES[case]
    (duo.root / "a").write_bytes(b"A")
    (duo.root / "x").write_bytes(b"X")
    c = duo.agent([0, 1])
    s0 = duo.server(0)
    os.kill(s0.pid, signal.SIGSTOP)
    out: dict[str, object] = {}

    def send() -> None:
        try:
            out["reply"] = c.call(ask())
        except OSError as exc:
            out["reply"] = exc
        out["at"] = time.monotonic()

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.4)  # the request waits in server 0's queue
    assert t.is_alive()
    if did is not None:
        did(duo.root)
    killed = time.monotonic()
    s0.popen.kill()
    s0.popen.wait()
    t.join(10)
    assert not t.is_alive()
    delay = float(out["at"]) - killed  # type: ignore[arg-type]
    reply = out["reply"]
    print(f"\n{case}: answered {delay * 1000:.0f} ms after the kill: {reply!r}"[:300])
    if answer is Error:
        assert isinstance(reply, OSError) and reply.errno == 5, reply  # EIO: unknown outcome
    else:
        assert isinstance(reply, answer), reply
    assert after(duo.root)
    assert delay < 2.0
    log = duo.agents[0].output()
    assert "closed the connection" in log and "Traceback" not in log
    # and the agent goes on with server 1 alone, at once
    t0 = time.monotonic()
    assert isinstance(c.call(Stat(path="/")), StatReply)
    assert time.monotonic() - t0 < 0.5


def test_a_hung_server_costs_a_read_one_attempt_and_keeps_its_mutations(duo: Duo) -> None:
    """A stopped (not dead) server: a Stat moves to the other server after one attempt
    (timeout / 3), later requests avoid it; a rename sent to it is not sent elsewhere
    (the hung server could still apply it): it fails within the timeout instead."""
    (duo.root / "a").write_bytes(b"A")
    c = duo.agent([0, 1], "--timeout", "3")
    c2 = duo.agent([0, 1], "--timeout", "3")  # (its first request will go to server 0)
    s0 = duo.server(0)
    os.kill(s0.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    st = c.call(Stat(path="/a"))
    took = time.monotonic() - t0
    assert isinstance(st, StatReply) and st.attrs.kind == FileKind.FILE
    assert 0.9 < took < 2.0, took
    t0 = time.monotonic()
    for _ in range(5):
        assert isinstance(c.call(Stat(path="/a")), StatReply)
    assert time.monotonic() - t0 < 1.0  # server 0 is avoided now
    # A mutation that reaches the hung server stays with it.
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        c2.call(Rename(src="/a", dst="/b", flags=RenameFlags.NONE))
    assert info.value.errno == SERVER_UNREACHABLE
    assert 2.5 < time.monotonic() - t0 < 5.0
    assert (duo.root / "a").exists() and not (duo.root / "b").exists()


def test_a_change_made_behind_the_servers_is_seen_within_the_promise_bound(
        any_duo: Duo) -> None:
    """A write straight into the repository directory (another client of the store) is
    published by no server: an agent holding a promise on the file keeps serving its
    copy until the promise ends, within --promise-max-age (2 s here), then sees it; over
    S3 (a put by another boto3 client) within that plus the server's memory of what it
    found in the store (``NODE_TTL``, 1 s)."""
    duo = any_duo
    duo.put("f", b"v0")
    c = duo.agent([0, 1], "--promise-max-age", "2")
    seen = None
    deadline = time.monotonic() + 15
    k = 0
    while seen is None and time.monotonic() < deadline:
        k += 1
        _opened(c, "/f")  # fetched or revalidated: a promise is taken when channels are live
        taken = time.monotonic()
        data = f"v{k}".encode() * 100
        duo.put("f", data)
        if Path(_opened(c, "/f").host_path).read_bytes() == data:
            time.sleep(0.2)  # no promise held (channels not live yet): again
            continue
        while time.monotonic() - taken < 5:  # a promise held: the old copy is served
            if Path(_opened(c, "/f").host_path).read_bytes() == data:
                seen = time.monotonic() - taken
                break
            time.sleep(0.05)
        assert seen is not None, "a change behind the servers' backs was never seen"
    print(f"\na direct change seen {seen} s after the promise was taken")
    assert seen is not None and seen <= 2.0 + duo.lag + 0.3
    if not duo.lag:
        assert seen > 0.5  # a promise was held (over S3 the server's memory may hold it too)


def test_a_server_down_at_start_up_is_used_and_refused_to_guests_once_back(duo: Duo) -> None:
    """The agent starts with server 1 down; once server 1 is back the agent registers
    with it by itself (its channel key, its token), and its state directory joins the
    paths a new supervisor is told to refuse."""
    from synthfs.protocol.messages import PROTOCOL_VERSION, Hello, Welcome

    duo.server(1).stop()
    c = duo.agent([0, 1], "--timeout", "3")
    state1 = str(duo.tmp / "state1")

    def refused() -> tuple[str, ...]:
        w = c.call(Hello(version=PROTOCOL_VERSION))
        assert isinstance(w, Welcome)
        return w.refused_paths

    assert not any(p.startswith(state1) for p in refused())
    assert isinstance(c.call(Stat(path="/")), StatReply)  # served by server 0 meanwhile
    duo.start_server(1)
    deadline = time.monotonic() + 10
    while not any(p.startswith(state1) for p in refused()):
        assert time.monotonic() < deadline, "the agent never registered with server 1"
        time.sleep(0.2)
    for _ in range(4):  # both serve it now
        assert isinstance(c.call(Stat(path="/")), StatReply)


def test_an_upload_whose_server_is_killed_is_made_through_the_other(duo: Duo) -> None:
    """A close's upload (3 chunks and a commit) goes to server 0, which is stopped and
    then killed with the chunks in its queue: the transfer starts again on server 1 and
    the close succeeds with the whole file installed once."""
    (duo.root / "a").write_bytes(b"old")
    c = duo.agent([0, 1])
    o = _opened(c, "/a", WR_TRUNC)  # its Stat went to server 0: the next request to server 1
    assert isinstance(c.call(Stat(path="/")), StatReply)
    data = os.urandom(10 * 1024 * 1024 + 17)
    Path(o.host_path).write_bytes(data)
    s0 = duo.server(0)
    os.kill(s0.pid, signal.SIGSTOP)
    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.setdefault("reply", c.call(Commit(path="/a"))))
    t.start()
    time.sleep(0.5)
    assert t.is_alive()
    killed = time.monotonic()
    s0.popen.kill()
    s0.popen.wait()
    t.join(20)
    assert not t.is_alive()
    print(f"\nupload answered {time.monotonic() - killed:.2f} s after the kill")
    assert isinstance(out["reply"], Committed)
    assert (duo.root / "a").read_bytes() == data
    assert os.listdir(duo.tmp / "state1") == ["committed.journal"]


EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _in_thread(call: Callable[[], Message]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["reply"] = call()
        except OSError as exc:
            out["reply"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _tracer_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])


def test_an_exclusive_create_the_dead_server_made_succeeds_through_the_other(
        duo: Duo, tmp_path: Path) -> None:
    """Server 0 makes the file of an O_CREAT|O_EXCL open, then dies before it answers
    (strace holds it in the exit of its linkat, and it is killed there): the create
    resent to server 1 answers EEXIST, and the agent sees the file is its own (its
    size, its upload's stamp in the mtime): the open succeeds, as if nothing had
    happened. Before the stamp, the guest got EEXIST for a file it had made."""
    c = duo.agent([0, 1])
    s0 = duo.server(0)
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), "-p", str(s0.pid),
                               "-e", "trace=linkat", "-e", "inject=linkat:delay_exit=4000000"])
    try:
        deadline = time.monotonic() + 10
        while _tracer_of(s0.pid) == 0:
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        t, out = _in_thread(lambda: c.call(Open(path="/new", flags=EXCL, mode=0o640)))
        while not (duo.root / "new").exists():  # server 0 made it, and waits in linkat
            assert t.is_alive() and time.monotonic() < deadline, out
            time.sleep(0.02)
        s0.popen.kill()  # (the tracer's death lets it die at once: it holds no stop)
        tracer.kill()
        s0.popen.wait()
        t.join(10)
        assert not t.is_alive()
    finally:
        tracer.kill()
        tracer.wait()
    assert isinstance(out["reply"], Opened), out["reply"]
    assert (duo.root / "new").read_bytes() == b""
    assert stat.S_IMODE((duo.root / "new").stat().st_mode) == 0o640


def test_an_exclusive_create_of_a_file_another_client_made_stays_eexist(duo: Duo) -> None:
    """The same failover, but the file was made by another client while server 0 held
    the create (server 0 never made it): the resent create answers EEXIST, a lock
    file is never won twice."""
    c = duo.agent([0, 1])
    s0 = duo.server(0)
    os.kill(s0.pid, signal.SIGSTOP)
    t, out = _in_thread(lambda: c.call(Open(path="/lock", flags=EXCL, mode=0o644)))
    time.sleep(0.4)  # the create waits in server 0's queue
    assert t.is_alive()
    (duo.root / "lock").write_bytes(b"")  # another client's lock
    s0.popen.kill()
    s0.popen.wait()
    t.join(10)
    assert not t.is_alive()
    reply = out["reply"]
    assert isinstance(reply, OSError) and reply.errno == errno.EEXIST, reply
