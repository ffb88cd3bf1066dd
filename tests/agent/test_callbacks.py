"""Callback promises: the pure state machine, then real server and agent processes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from agent_stack import Proc, Stack, wait_until

from synthfs.agent.callbacks import Promises
from synthfs.agent.upstream import Upstream
from synthfs.protocol.client import Client
from synthfs.protocol.messages import (
    Attrs,
    Commit,
    List,
    Listing,
    Mkdir,
    Open,
    Opened,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
)
from synthfs.protocol.sealed import TOPIC, seal

RD, WR = os.O_RDONLY, os.O_WRONLY


# -- the state machine (no sockets) ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _live(clock: Clock | None = None) -> tuple[Promises, Clock]:
    clock = clock or Clock()
    p = Promises(clock=clock)
    p.beat("A", 7)
    return p, clock


def test_no_promise_before_the_channel_is_live() -> None:
    p = Promises(clock=Clock())
    assert p.stamp() is None
    p.hold("/f", p.stamp())
    assert not p.holds("/f")


def test_a_promise_holds_until_its_path_is_invalidated() -> None:
    p, _ = _live()
    p.hold("/f", p.stamp())
    p.hold("/g", p.stamp())
    assert p.holds("/f") and p.holds("/g")
    p.inval("/f", "v2", "A", 8, False)
    assert not p.holds("/f") and p.holds("/g")


def test_an_invalidation_processed_before_the_reply_still_cancels() -> None:
    p, _ = _live()
    stamp = p.stamp()  # request sent
    p.inval("/f", "v2", "A", 8, False)  # processed before the (older) reply
    p.hold("/f", stamp)
    assert not p.holds("/f")
    p.hold("/f", p.stamp())  # a request sent after it is fresh
    assert p.holds("/f")


def test_parent_invalidation_cancels_the_directory_only() -> None:
    p, _ = _live()
    for path in ("/d", "/d/f", "/d/e/g"):
        p.hold(path, p.stamp())
    p.inval("/d", "v", "A", 8, True)
    assert not p.holds("/d") and p.holds("/d/f") and p.holds("/d/e/g")
    p.inval("/d/e", "", "A", 9, False)  # a directory gone (or renamed): its subtree
    assert p.holds("/d/f") and not p.holds("/d/e/g")


def test_a_gap_a_restart_a_disconnect_or_silence_breaks_every_promise() -> None:
    p, clock = _live()
    p.hold("/f", p.stamp())
    p.inval("/x", "v", "A", 9, False)  # seq 8 was lost
    assert not p.holds("/f") and p.breaks == 1
    p.hold("/f", p.stamp())
    assert p.holds("/f")
    p.beat("A", 10)  # a beat says 10 invalidations, we saw 9
    assert not p.holds("/f")
    p.hold("/f", p.stamp())
    p.beat("B", 0)  # another server instance
    assert not p.holds("/f")
    p.hold("/f", p.stamp())
    p.disconnected()
    assert not p.holds("/f") and p.stamp() is None
    p.beat("B", 0)
    p.hold("/f", p.stamp())
    clock.t += 1.4
    assert p.holds("/f")
    clock.t += 0.2  # no message for 1.6 s
    assert not p.holds("/f") and p.stamp() is None
    p.beat("B", 0)  # the same instance, no gap: nothing was missed
    assert p.holds("/f")
    clock.t += p.max_age
    p.beat("B", 0)
    assert not p.holds("/f")  # too old


def test_the_agents_own_change_coming_back_cancels_nothing() -> None:
    p, _ = _live()
    known = {"/f": "v2"}
    p.known = known.get
    p.hold("/f", p.stamp())
    p.inval("/f", "v2", "A", 8, False)
    assert p.holds("/f")
    p.inval("/f", "v3", "A", 9, False)
    assert not p.holds("/f")


def test_entries_hold_with_the_directory_and_each_entry() -> None:
    p, clock = _live()
    st = p.stamp()
    for path in ("/d", "/d/a", "/d/b"):
        p.hold(path, st)
    assert p.holds_entries("/d", ["a", "b"])
    assert not p.holds_entries("/d", ["a", "b", "c"])  # no promise on c
    p.inval("/d/b", "v2", "A", 8, False)  # an entry changed
    assert not p.holds_entries("/d", ["a", "b"]) and p.holds_entries("/d", ["a"])
    st = p.stamp()
    p.hold("/d/b", st)
    assert p.holds_entries("/d", ["a", "b"])
    p.inval("/", "v3", "A", 9, True)  # the root's listing: nothing of /d
    assert p.holds_entries("/d", ["a", "b"])
    p.inval("/x", "v4", "A", 10, False)
    assert p.holds_entries("/d", ["a", "b"])
    clock.t += 1.0
    p.beat("A", 10)
    p.inval("/", "", "A", 11, False)  # an ancestor as an object: nothing below holds
    assert not p.holds_entries("/d", ["a", "b"])
    assert not p.holds_entries("/d", [])
    p, clock = _live()
    for path in ("/", "/a"):
        p.hold(path, p.stamp())
    assert p.holds_entries("/", ["a"])
    clock.t += 2.0  # silence
    assert not p.holds_entries("/", ["a"])
    p.beat("A", 7)
    assert p.holds_entries("/", ["a"])
    p.hold("/a", p.stamp())
    clock.t += p.max_age - 0.5
    p.beat("A", 7)
    assert p.holds_entries("/", []) is False  # "/" is past max_age; "/a" is not
    p.hold("/", p.stamp())
    assert p.holds_entries("/", ["a"])
    p.beat("A", 9)  # a gap
    assert not p.holds_entries("/", ["a"])


# -- real processes ----------------------------------------------------------------------------


def _requests(server: Proc) -> int:
    """Requests the server has dispatched so far (its -vv debug log: one line each)."""
    return len(re.findall(r"^\S.* (\w+) #\d+ token ", server.output(), re.M))


def _opened(c: Client, path: str, flags: int = RD) -> Opened:
    reply = c.call(Open(path=path, flags=flags, mode=0o644))
    assert isinstance(reply, Opened)
    return reply


@pytest.fixture
def promised(stack: Stack) -> Iterator[Stack]:
    """Server -vv --publish; agent --subscribe; returns once promises are live."""
    d = tempfile.mkdtemp(prefix="sfs-cb-", dir="/tmp")
    stack.pub_ep = f"ipc://{d}/pub.sock"  # type: ignore[attr-defined]
    stack.start_server("-vv", "--publish", stack.pub_ep)  # type: ignore[attr-defined]
    stack.start_agent("--subscribe", stack.pub_ep)  # type: ignore[attr-defined]
    (stack.root / "f").write_bytes(b"one")
    assert stack.server is not None
    # Promises hold once a beat arrived: an Open then needs no Stat.
    c = stack.client()
    assert wait_until(lambda: _promised_open(stack, c, "/f"), timeout=10)
    try:
        yield stack
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _promised_open(stack: Stack, c: Client, path: str) -> bool:
    assert stack.server is not None
    _opened(c, path)
    before = _requests(stack.server)
    _opened(c, path)
    time.sleep(0.05)
    return _requests(stack.server) == before


def _one_more_open_costs(stack: Stack, c: Client, path: str,
                         flags: int = RD) -> tuple[int, Opened]:
    assert stack.server is not None
    before = _requests(stack.server)
    o = _opened(c, path, flags)
    time.sleep(0.1)  # the server logs after it answers
    return _requests(stack.server) - before, o


def test_promised_open_and_stat_make_no_server_request(promised: Stack) -> None:
    c = promised.clients[0]
    assert promised.server is not None
    before = _requests(promised.server)
    for _ in range(20):
        o = _opened(c, "/f")
        assert Path(o.host_path).read_bytes() == b"one"
    time.sleep(1.2)  # past the attribute TTL: the promise alone answers the Stat
    st = c.call(Stat(path="/f"))
    assert isinstance(st, StatReply) and st.attrs.size == 3
    time.sleep(0.1)
    assert _requests(promised.server) == before


def _kinds(server: Proc) -> list[str]:
    """The kinds of the requests the server (-vv) dispatched so far, in order."""
    return re.findall(r"^\S.* (\w+) #\d+ token ", server.output(), re.M)


def test_a_cold_open_after_a_promised_stat_asks_no_second_stat(promised: Stack) -> None:
    """The interposer Stats a path before it opens it: under a promise, the Open of a
    file with no copy yet fetches at once (a Stat again was a round trip, and a store
    HEAD on S3, on every cold open)."""
    c = promised.clients[0]
    assert promised.server is not None
    (promised.root / "g").write_bytes(b"cold")
    st = c.call(Stat(path="/g"))
    assert isinstance(st, StatReply) and st.attrs.size == 4
    time.sleep(0.1)
    before = len(_kinds(promised.server))
    o = _opened(c, "/g")
    time.sleep(0.1)  # the server logs after it answers
    assert Path(o.host_path).read_bytes() == b"cold"
    assert _kinds(promised.server)[before:] == ["read"]


def test_a_change_between_the_stat_and_a_cold_open_is_seen(promised: Stack,
                                                          tmp_path: Path) -> None:
    """The promise the cold open relies on is broken by the server's news of a change."""
    c = promised.clients[0]
    (promised.root / "g").write_bytes(b"first")
    assert isinstance(c.call(Stat(path="/g")), StatReply)
    with _second_agent(promised, tmp_path) as c2:
        o = _opened(c2, "/g", WR | os.O_TRUNC)
        Path(o.host_path).write_bytes(b"second, from the other agent")
        c2.call(Commit(path="/g", wait=True))
        o = _opened(c, "/g")
        assert Path(o.host_path).read_bytes() == b"second, from the other agent"


@contextlib.contextmanager
def _second_agent(stack: Stack, tmp_path: Path) -> Iterator[Client]:
    """Another agent on the same server (its own socket and cache, no subscription)."""
    run2 = tmp_path / "run2"
    run2.mkdir(mode=0o700)
    ep2 = f"ipc://{run2}/agent.sock"
    agent2 = Proc("agent2", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                             "--bootstrap-key", str(stack.key), "--listen", ep2,
                             "--cache", str(tmp_path / "cache2")], tmp_path / "agent2.log")
    agent2.wait_ready()
    c2 = Client(ep2, timeout=10, retries=0)
    try:
        yield c2
    finally:
        c2.close()
        agent2.stop()


def test_a_change_through_another_agent_is_seen_by_the_next_open(promised: Stack,
                                                                  tmp_path: Path) -> None:
    c = promised.clients[0]
    with _second_agent(promised, tmp_path) as c2:
        o = _opened(c2, "/f", WR | os.O_TRUNC)
        Path(o.host_path).write_bytes(b"two, from the other agent")
        c2.call(Commit(path="/f", wait=True))  # on the server (fsync)
        # At once: the server published the invalidation before it acknowledged the commit.
        o = _opened(c, "/f")
        assert Path(o.host_path).read_bytes() == b"two, from the other agent"
    assert wait_until(lambda: _promised_open(promised, c, "/f"))


def test_a_directory_exchanged_elsewhere_voids_the_promises_below_it(promised: Stack,
                                                                     tmp_path: Path) -> None:
    c = promised.clients[0]
    for name in ("d", "e"):
        (promised.root / name).mkdir()
        (promised.root / name / "g").write_bytes(f"in {name}".encode())
    assert wait_until(lambda: _promised_open(promised, c, "/d/g"))
    with _second_agent(promised, tmp_path) as c2:
        # Published: /d and /e (objects), / (parent); nothing about /d/g itself.
        c2.call(Rename(src="/d", dst="/e", flags=RenameFlags.EXCHANGE))
        assert Path(_opened(c, "/d/g").host_path).read_bytes() == b"in e"


def test_a_change_in_the_directory_then_published_is_seen(promised: Stack,
                                                         tmp_path: Path) -> None:
    """Written behind the server's back, then a mutation through it publishes the path."""
    c = promised.clients[0]
    (promised.root / "f").write_bytes(b"behind the server's back")
    n, o = _one_more_open_costs(promised, c, "/f")
    assert n == 0 and Path(o.host_path).read_bytes() == b"one"  # promised: nobody said
    with _second_agent(promised, tmp_path) as c2:
        c2.call(SetAttr(path="/f", mode=0o640))  # publishes /f
        o = _opened(c, "/f")
        assert Path(o.host_path).read_bytes() == b"behind the server's back"


def test_server_restart_breaks_promises_and_the_next_open_revalidates(promised: Stack) -> None:
    c = promised.clients[0]
    assert promised.server is not None
    promised.server.stop()
    (promised.root / "f").write_bytes(b"changed while the server was down")
    promised.start_server("-vv", "--publish", promised.pub_ep)  # type: ignore[attr-defined]
    # The next open revalidates (one Stat) and sees the change, at once.
    o = _opened(c, "/f")
    assert Path(o.host_path).read_bytes() == b"changed while the server was down"
    assert wait_until(lambda: _promised_open(promised, c, "/f"), timeout=10)


def test_a_sequence_gap_breaks_promises(stack: Stack, tmp_path: Path) -> None:
    """A test publisher stands in for the server's PUB: a seq jump breaks every promise."""
    d = tempfile.mkdtemp(prefix="sfs-gap-", dir="/tmp")
    ep = f"ipc://{d}/pub.sock"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    try:
        stack.start_server("-vv")
        key = _channel_key(stack)
        stack.start_agent("--subscribe", ep)
        assert stack.server is not None
        (stack.root / "f").write_bytes(b"one")
        c = stack.client()
        seq = 0

        def beat() -> None:
            _publish(pub, key, "beat", "test", seq)

        def promised_now() -> bool:
            beat()
            time.sleep(0.05)
            return _promised_open(stack, c, "/f")

        assert wait_until(promised_now, timeout=10)
        beat()
        n, _ = _one_more_open_costs(stack, c, "/f")
        assert n == 0
        seq = 5  # invalidations 1..5 were lost
        _publish(pub, key, "inval", "/other", "v", "test", seq, False)
        time.sleep(0.1)
        (stack.root / "f").write_bytes(b"two")  # behind the fake publisher's back
        n, o = _one_more_open_costs(stack, c, "/f")
        assert n == 2 and Path(o.host_path).read_bytes() == b"two"  # Stat, Read
        # Silence: with no beat for > 1.5 s, promises are not honoured either.
        beat()
        time.sleep(0.05)
        _opened(c, "/f")
        time.sleep(1.7)
        n, _ = _one_more_open_costs(stack, c, "/f")
        assert n == 1
    finally:
        pub.close()
        shutil.rmtree(d, ignore_errors=True)


# -- listings under promises (agent.metadata: List answered from the agent's memory) ---------


def _listed(c: Client, path: str) -> dict[str, Attrs]:
    reply = c.call(List(path=path))
    assert isinstance(reply, Listing), reply
    return {d.name: d.attrs for d in reply.entries}


def _one_more_list_costs(stack: Stack, c: Client, path: str) -> tuple[int, dict[str, Attrs]]:
    assert stack.server is not None
    before = _requests(stack.server)
    names = _listed(c, path)
    time.sleep(0.1)  # the server logs after it answers
    return _requests(stack.server) - before, names


def _promised_list(stack: Stack, c: Client, path: str) -> bool:
    _listed(c, path)
    return _one_more_list_costs(stack, c, path)[0] == 0


@pytest.fixture
def listed(promised: Stack) -> Stack:
    """/d holds a, b and the directory sub; its listing is answered from memory."""
    d = promised.root / "d"
    d.mkdir()
    (d / "a").write_bytes(b"a")
    (d / "b").write_bytes(b"bb")
    (d / "sub").mkdir()
    assert wait_until(lambda: _promised_list(promised, promised.clients[0], "/d"))
    return promised


def test_a_promised_list_makes_no_server_request(listed: Stack) -> None:
    c = listed.clients[0]
    assert listed.server is not None
    before = _requests(listed.server)
    for _ in range(20):
        names = _listed(c, "/d")
        assert sorted(names) == ["a", "b", "sub"] and names["b"].size == 2
    time.sleep(0.1)
    assert _requests(listed.server) == before
    # A dirty local copy shows its size in the kept listing too (the reply is rebuilt).
    o = _opened(c, "/d/a", WR)
    Path(o.host_path).write_bytes(b"written here, not yet committed")
    assert _listed(c, "/d")["a"].size == len(b"written here, not yet committed")
    c.call(Commit(path="/d/a"))


def test_a_change_through_another_agent_shows_in_the_next_list(listed: Stack,
                                                               tmp_path: Path) -> None:
    c = listed.clients[0]
    with _second_agent(listed, tmp_path) as c2:

        def changed(change: object) -> dict[str, Attrs]:
            """``change`` through the other agent; /d as this agent lists it at once."""
            assert wait_until(lambda: _promised_list(listed, c, "/d"))  # from memory before
            change()  # type: ignore[operator]
            return _listed(c, "/d")

        def write(path: str, data: bytes, flags: int) -> None:
            o = _opened(c2, path, flags)
            Path(o.host_path).write_bytes(data)
            c2.call(Commit(path=path, wait=True))  # on the server (fsync)

        names = changed(lambda: write("/d/new", b"created", WR | os.O_CREAT))
        assert names["new"].size == len(b"created")
        names = changed(lambda: write("/d/a", b"new content", WR | os.O_TRUNC))
        assert names["a"].size == len(b"new content")
        names = changed(lambda: c2.call(SetAttr(path="/d/a", mode=0o600)))
        assert names["a"].mode == 0o600
        names = changed(lambda: c2.call(SetAttr(path="/d/a", mtime_ns=10**18)))
        assert names["a"].mtime_ns == 10**18
        sub = names["sub"]
        names = changed(lambda: write("/d/sub/x", b"x", WR | os.O_CREAT))
        assert names["sub"].mtime_ns != sub.mtime_ns or names["sub"].ctime_ns != sub.ctime_ns
        names = changed(lambda: c2.call(Rename(src="/d/a", dst="/d/c", flags=RenameFlags.NONE)))
        assert "a" not in names and names["c"].size == len(b"new content")
        names = changed(lambda: c2.call(Remove(path="/d/b")))
        assert sorted(names) == ["c", "new", "sub"]


def _channel_key(stack: Stack) -> str:
    """The server's channel key, as any holder of the bootstrap key learns it: register."""
    up = Upstream(stack.server_ep, stack.key.read_bytes().strip(), timeout=10)
    try:
        return up.register().publish_key
    finally:
        up.close()


def _publish(pub: zmq.Socket, key: str, *message: object) -> None:
    """What the server's PUB sends: one sealed publication."""
    pub.send_multipart([TOPIC, seal(key, msgpack.packb(list(message)))])


@pytest.fixture
def beaten(stack: Stack) -> Iterator[Stack]:
    """The agent follows a test publisher that only beats: no invalidation ever comes,
    so only the agent's own bookkeeping can drop what its mutations change."""
    d = tempfile.mkdtemp(prefix="sfs-beat-", dir="/tmp")
    ep = f"ipc://{d}/pub.sock"
    stop = threading.Event()
    key: list[str] = []

    def beat() -> None:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(ep)
        while not stop.wait(0.2):
            if key:
                _publish(pub, key[0], "beat", "test", 0)
        pub.close()

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        stack.start_server("-vv")
        key.append(_channel_key(stack))
        stack.start_agent("--subscribe", ep)
        d_ = stack.root / "d"
        d_.mkdir()
        (d_ / "a").write_bytes(b"a")
        (d_ / "b").write_bytes(b"bb")
        c = stack.client()
        assert wait_until(lambda: _promised_list(stack, c, "/d"), timeout=10)
        stack.silence = stop  # type: ignore[attr-defined]
        yield stack
    finally:
        stop.set()
        beater.join()
        shutil.rmtree(d, ignore_errors=True)


def test_this_agents_own_change_shows_in_the_next_list(beaten: Stack) -> None:
    listed = beaten
    c = listed.clients[0]
    (listed.root / "d" / "behind-its-back").write_bytes(b"")
    assert "behind-its-back" not in _listed(c, "/d")  # nobody said: from memory

    def changed(msg: object) -> dict[str, Attrs]:
        assert wait_until(lambda: _promised_list(listed, c, "/d"))
        if msg is not None:
            c.call(msg)  # type: ignore[arg-type]
        return _listed(c, "/d")

    c.call(Open(path="/d/new", flags=WR | os.O_CREAT, mode=0o644))
    names = _listed(c, "/d")
    assert names["new"].size == 0
    Path(_opened(c, "/d/new", WR).host_path).write_bytes(b"twelve bytes")
    c.call(Commit(path="/d/new"))
    assert _listed(c, "/d")["new"].size == 12
    assert changed(Mkdir(path="/d/m"))["m"].kind.name == "DIR"
    assert changed(Symlink(target="/d/a", path="/d/l"))["l"].kind.name == "SYMLINK"
    assert changed(SetAttr(path="/d/a", mode=0o640))["a"].mode == 0o640
    assert changed(SetAttr(path="/d/a", size=0))["a"].size == 0
    names = changed(Rename(src="/d/b", dst="/d/c", flags=RenameFlags.NONE))
    assert "b" not in names and names["c"].size == 2
    assert "c" not in changed(Remove(path="/d/c"))
    assert "m" not in changed(Remove(path="/d/m", directory=True))


def test_a_name_the_kept_listing_lacks_costs_no_server_request(listed: Stack,
                                                               tmp_path: Path) -> None:
    """Stat and Open of a missing name in a promised listing: ENOENT from memory; once
    another agent creates it (published), the next Stat and Open see it."""
    c = listed.clients[0]
    assert listed.server is not None
    before = _requests(listed.server)
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            c.call(Stat(path="/d/nope"))
        with pytest.raises(FileNotFoundError):
            c.call(Open(path="/d/nope", flags=RD, mode=0))
    time.sleep(0.1)
    assert _requests(listed.server) == before
    with _second_agent(listed, tmp_path) as c2:
        o = _opened(c2, "/d/nope", WR | os.O_CREAT)
        Path(o.host_path).write_bytes(b"here now")
        c2.call(Commit(path="/d/nope", wait=True))  # on the server (fsync)

        def seen() -> bool:
            try:
                return c.call(Stat(path="/d/nope")).attrs.size == 8  # type: ignore[attr-defined]
            except FileNotFoundError:
                return False

        assert wait_until(seen, timeout=5)
        assert Path(_opened(c, "/d/nope").host_path).read_bytes() == b"here now"


def test_a_create_is_one_exclusive_request_and_never_replaces(promised: Stack) -> None:
    """O_CREAT of a path the agent knows nothing of: one server request (an exclusive
    create); a file another client made meanwhile is opened, never truncated, and
    O_EXCL on it is EEXIST."""
    c = promised.clients[0]
    n, o = _one_more_open_costs(promised, c, "/made", WR | os.O_CREAT)
    assert n == 1 and Path(o.host_path).read_bytes() == b""
    assert (promised.root / "made").read_bytes() == b""
    (promised.root / "theirs").write_bytes(b"not yours")  # behind the agent's back
    o = _opened(c, "/theirs", WR | os.O_CREAT)
    assert Path(o.host_path).read_bytes() == b"not yours"
    assert (promised.root / "theirs").read_bytes() == b"not yours"
    (promised.root / "theirs2").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        c.call(Open(path="/theirs2", flags=WR | os.O_CREAT | os.O_EXCL, mode=0o644))


def test_server_restart_breaks_the_kept_listing(listed: Stack) -> None:
    c = listed.clients[0]
    assert listed.server is not None
    listed.server.stop()
    (listed.root / "d" / "while-down").write_bytes(b"")
    listed.start_server("-vv", "--publish", listed.pub_ep)  # type: ignore[attr-defined]
    n, names = _one_more_list_costs(listed, c, "/d")
    assert n >= 1 and "while-down" in names
    assert wait_until(lambda: _promised_list(listed, c, "/d"), timeout=10)


def test_silence_breaks_the_kept_listing(beaten: Stack) -> None:
    c = beaten.clients[0]
    (beaten.root / "d" / "behind-its-back").write_bytes(b"")
    n, names = _one_more_list_costs(beaten, c, "/d")
    assert n == 0 and "behind-its-back" not in names  # nobody said: from memory
    beaten.silence.set()  # type: ignore[attr-defined]
    time.sleep(1.7)  # > BEAT_TIMEOUT without a beat: no promise is honoured
    n, names = _one_more_list_costs(beaten, c, "/d")
    assert n == 1 and "behind-its-back" in names


def test_a_publisher_without_the_channel_key_cannot_keep_promises(stack: Stack) -> None:
    """Another local user binds a PUB where the agent subscribes and beats: without the
    key of the agent's registration its beats are refused, so no promise ever holds."""
    from synthfs.protocol.sealed import new_key

    d = tempfile.mkdtemp(prefix="sfs-forge-", dir="/tmp")
    ep = f"ipc://{d}/pub.sock"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    try:
        stack.start_server("-vv")
        stack.start_agent("--subscribe", ep)
        (stack.root / "f").write_bytes(b"one")
        c = stack.client()
        forged = new_key()

        def forged_beat_then_promised() -> bool:
            _publish(pub, forged, "beat", "test", 0)
            pub.send_multipart([b"beat", msgpack.packb(["test", 0])])  # the old clear form
            time.sleep(0.05)
            return _promised_open(stack, c, "/f")

        assert not wait_until(forged_beat_then_promised, timeout=3)
        # The same beats sealed with the real key do make promises (the test can fail).
        key = _channel_key(stack)

        def beat_then_promised() -> bool:
            _publish(pub, key, "beat", "test", 0)
            time.sleep(0.05)
            return _promised_open(stack, c, "/f")

        assert wait_until(beat_then_promised, timeout=10)
    finally:
        pub.close()
        shutil.rmtree(d, ignore_errors=True)
