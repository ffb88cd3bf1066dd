"""protocol.client.Client against a scripted ROUTER peer in a thread.

The peer is a real ZeroMQ socket speaking the real codec; each test scripts
how it answers (normally, with an error, late, with a wrong id, not at all).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from synthfs.protocol.client import Client, Unreachable
from synthfs.protocol.codec import decode, encode
from synthfs.protocol.messages import (
    Attrs,
    Done,
    Error,
    Message,
    Progress,
    Read,
    Rename,
    Stat,
    StatReply,
)

A = Attrs(kind="file", size=1, mode=0o644, mtime_ns=0, ctime_ns=0, ino=1)
#: (request_id, message, token, attempt number for that id) -> list of (request_id, reply)
Script = Callable[[int, Message, str, int], list[tuple[int, Message]]]


class Peer:
    def __init__(self, endpoint: str, script: Script, *, delimiter: bool = False) -> None:
        self.endpoint = endpoint
        self.script = script
        self.delimiter = delimiter  # reply REQ-style: [identity, b"", envelope]
        self.seen: list[tuple[int, Message, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._bound = threading.Event()
        self._thread.start()
        self._bound.wait(5)

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._bound.set()
        attempts: dict[int, int] = {}
        while not self._stop.is_set():
            if not sock.poll(50):
                continue
            ident, frame = sock.recv_multipart()
            env = decode(frame)
            self.seen.append((env.request_id, env.msg, env.token))
            n = attempts.get(env.request_id, 0)
            attempts[env.request_id] = n + 1
            self._sock, self._ident = sock, ident
            for rid, reply in self.script(env.request_id, env.msg, env.token, n):
                self.sock_send(rid, reply)
        sock.close()

    def sock_send(self, rid: int, reply: Message) -> None:
        """Send ``reply`` to the request being answered (from the peer's thread)."""
        extra = [b""] if self.delimiter else []
        self._sock.send_multipart([self._ident, *extra, encode(reply, rid)])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Callable[[Script], Peer]]:
    peers: list[Peer] = []

    def make(script: Script) -> Peer:
        p = Peer(f"ipc://{tmp_path}/peer.sock", script)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.stop()


def test_round_trip_and_token(peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda rid, msg, tok, n: [(rid, StatReply(attrs=A))])
    with Client(p.endpoint, token_provider=lambda: "tok") as c:
        assert c.call(Stat(path="/a")) == StatReply(attrs=A)
    assert p.seen[0][1] == Stat(path="/a")
    assert p.seen[0][2] == "tok"


def test_error_reply_raises_oserror_with_errno(peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda rid, msg, tok, n: [(rid, Error(errno=errno.ENOENT, message="gone"))])
    with Client(p.endpoint) as c, pytest.raises(FileNotFoundError) as info:
        c.call(Stat(path="/a"))
    assert info.value.errno == errno.ENOENT


def test_progress_notes_precede_the_reply(peer: Callable[[Script], Peer]) -> None:
    notes = [Progress(path="/a", done=d, total=8) for d in (0, 4)]
    p = peer(lambda rid, msg, tok, n: [*((rid, x) for x in notes), (rid, StatReply(attrs=A))])
    got: list[Progress] = []
    with Client(p.endpoint, on_note=got.append) as c:
        assert c.call(Stat(path="/a")) == StatReply(attrs=A)
    assert got == notes
    with Client(p.endpoint) as c:  # no one to tell: the notes are skipped all the same
        assert c.call(Stat(path="/a")) == StatReply(attrs=A)


def test_notes_keep_a_slow_request_alive(peer: Callable[[Script], Peer]) -> None:
    # Each note restarts the wait: a reply after 3 x 0.3 s beats a 0.5 s budget.
    def script(rid: int, msg: Message, tok: str, n: int) -> list[tuple[int, Message]]:
        for done in range(3):
            time.sleep(0.3)
            p.sock_send(rid, Progress(path="/a", done=done, total=3))
        return [(rid, StatReply(attrs=A))]

    p = peer(script)
    with Client(p.endpoint, timeout=0.5, retries=0) as c:
        assert c.call(Stat(path="/a")) == StatReply(attrs=A)


def test_notes_keep_a_slow_request_alive_when_the_peer_is_watched(
        peer: Callable[[Script], Peer]) -> None:
    # With ``alive`` (the interposer's client of its agent), each note restarts the wait
    # too: an agent passing on its server's notes on a long rename is waited for (before,
    # Unreachable after the 0.5 s budget).
    def script(rid: int, msg: Message, tok: str, n: int) -> list[tuple[int, Message]]:
        for _ in range(4):
            time.sleep(0.3)
            p.sock_send(rid, Progress(path="/a", done=0, total=0))
        return [(rid, Done())]

    p = peer(script)
    with Client(p.endpoint, timeout=0.5, retries=0, alive=lambda: True) as c:
        assert isinstance(c.call(Rename(src="/a", dst="/b")), Done)
        assert c.notes == 4


def test_a_resend_keeps_its_request_id(peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda rid, msg, tok, n: [(rid, Done())])
    with Client(p.endpoint) as c:
        rid = c.new_request_id()
        for _ in range(2):
            assert isinstance(c.call(Rename(src="/a", dst="/b"), rid), Done)
        c.call(Rename(src="/a", dst="/b"))
    assert [seen[0] for seen in p.seen[:2]] == [rid, rid] and p.seen[2][0] != rid


def test_wrong_request_id_is_dropped(peer: Callable[[Script], Peer]) -> None:
    wrong = StatReply(attrs=Attrs(kind="dir", size=0, mode=0o755, mtime_ns=0, ctime_ns=0, ino=9))
    p = peer(lambda rid, msg, tok, n: [(rid + 1000, wrong), (rid, StatReply(attrs=A))])
    with Client(p.endpoint) as c:
        assert c.call(Stat(path="/a")).attrs == A  # type: ignore[attr-defined]


def test_lost_request_is_resent_with_the_same_id(peer: Callable[[Script], Peer]) -> None:
    # The first attempt is swallowed; the resend (same id) is answered.
    p = peer(lambda rid, msg, tok, n: [] if n == 0 else [(rid, StatReply(attrs=A))])
    with Client(p.endpoint, timeout=1.5, retries=2) as c:
        t0 = time.monotonic()
        assert c.call(Stat(path="/a")) == StatReply(attrs=A)
        assert time.monotonic() - t0 < 1.5
    assert [rid for rid, _, _ in p.seen] == [p.seen[0][0]] * 2


def test_silent_peer_is_unreachable_within_the_budget(peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda rid, msg, tok, n: [])
    with Client(p.endpoint, timeout=0.6, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(Unreachable) as info:
            c.call(Stat(path="/a"))
        took = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert info.value.errno == errno.ETIMEDOUT
    assert 0.5 < took < 1.5
    assert len(p.seen) == 3  # one send + two resends


def test_no_peer_at_all_is_unreachable(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/nobody.sock", timeout=0.3, retries=1) as c, \
            pytest.raises(Unreachable):
        c.call(Stat(path="/a"))


def test_pipeline_yields_in_order_despite_reordering(peer: Callable[[Script], Peer]) -> None:
    held: list[tuple[int, Message]] = []

    def script(rid: int, msg: Message, tok: str, n: int) -> list[tuple[int, Message]]:
        assert isinstance(msg, Read)
        reply = StatReply(attrs=Attrs(kind="file", size=msg.offset, mode=0, mtime_ns=0,
                                      ctime_ns=0, ino=1))
        held.append((rid, reply))
        if len(held) == 2:  # answer pairs in reverse order
            out = list(reversed(held))
            held.clear()
            return out
        return []

    p = peer(script)
    with Client(p.endpoint, timeout=3) as c:
        got = list(c.pipeline((Read(path="/a", offset=i, length=1) for i in range(10)), window=4))
    assert [r.attrs.size for r in got] == list(range(10))  # type: ignore[attr-defined]


def test_pipeline_error_raises_at_its_place(peer: Callable[[Script], Peer]) -> None:
    def script(rid: int, msg: Message, tok: str, n: int) -> list[tuple[int, Message]]:
        assert isinstance(msg, Read)
        if msg.offset == 3:
            return [(rid, Error(errno=errno.ESTALE))]
        return [(rid, StatReply(attrs=A))]

    p = peer(script)
    seen = 0
    with Client(p.endpoint) as c, pytest.raises(OSError) as info:
        for _ in c.pipeline(Read(path="/a", offset=i, length=1) for i in range(10)):
            seen += 1
    assert info.value.errno == errno.ESTALE
    assert seen == 3


def test_round_trip_latency_is_small(peer: Callable[[Script], Peer]) -> None:
    """Not a benchmark: a guard that the client adds no gross overhead."""
    p = peer(lambda rid, msg, tok, n: [(rid, StatReply(attrs=A))])
    with Client(p.endpoint) as c:
        for _ in range(50):
            c.call(Stat(path="/a"))
        t0 = time.perf_counter()
        n = 300
        for _ in range(n):
            c.call(Stat(path="/a"))
        per = (time.perf_counter() - t0) / n
    assert per < 0.002, f"{per * 1e6:.0f} us per round trip"


def test_unencodable_message_is_einval_and_nothing_is_sent(peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda rid, msg, tok, n: [(rid, StatReply(attrs=A))])
    bad = Stat(path="/ok")
    object.__setattr__(bad, "path", "/bad\ud800")  # what no byte string gives: a bug's value
    with Client(p.endpoint) as c:
        with pytest.raises(OSError) as info:
            c.call(bad)
        assert info.value.errno == errno.EINVAL
        assert c.call(Stat(path="/ok")) == StatReply(attrs=A)
        # A name that is not UTF-8 is no such bug: its bytes travel (protocol 2).
        assert c.call(Stat(path="/raw\udcff")) == StatReply(attrs=A)
    assert [m for _, m, _ in p.seen] == [Stat(path="/ok"), Stat(path="/raw\udcff")]


def test_a_req_style_delimiter_frame_is_tolerated(tmp_path: Path) -> None:
    p = Peer(f"ipc://{tmp_path}/req.sock", lambda rid, msg, tok, n: [(rid, StatReply(attrs=A))],
             delimiter=True)
    try:
        with Client(p.endpoint, timeout=2) as c:
            for _ in range(3):
                assert c.call(Stat(path="/a")) == StatReply(attrs=A)
    finally:
        p.stop()
