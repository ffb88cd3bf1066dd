"""Leases: the agent's board and the interposer's state, pure (no sockets, a fake clock)."""

from __future__ import annotations

import msgpack

from synthfs.agent.callbacks import Promises
from synthfs.protocol.leases import BEAT_TIMEOUT, LeaseBoard, Leases
from synthfs.protocol.messages import Attrs, FileKind, Opened

_NS = 1_000_000_000
A = Attrs(kind=FileKind.FILE, size=3, mode=0o644, mtime_ns=1, ctime_ns=1, ino=7, nlink=1,
          version="v1")
SIG = (7, 3, 1, 1)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Wire:
    """Stands in for the XPUB socket: what the board sent, fed to an interposer's Leases."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def __call__(self, frames: list[bytes]) -> None:
        self.sent.append(frames)

    def deliver(self, leases: Leases, *, skip: int = 0) -> None:
        for kind, body in self.sent[skip:]:
            m = msgpack.unpackb(body)
            if kind == b"beat":
                leases.beat(m[0], m[1], m[2])
            elif kind == b"inval":
                leases.inval(m[0], m[1], m[2], m[3])
            else:
                leases.broken(m[0], m[1])
        self.sent.clear()


def _stack(live: bool = True) -> tuple[LeaseBoard, Leases, Wire, Clock]:
    clock = Clock()
    wire = Wire()
    board = LeaseBoard(wire, clock=clock, instance="I")
    board.vouched = (lambda: clock.t + 1.0) if live else (lambda: float("-inf"))
    return board, Leases(clock=clock), wire, clock


def _opened(grant: tuple[str, int, int] | None, host: str = "/cache/f") -> Opened:
    assert grant is not None
    return Opened(host_path=host, attrs=A, lease=grant[0], lease_seq=grant[1],
                  lease_until_ns=grant[2])


def _held(board: LeaseBoard, leases: Leases, wire: Wire, path: str = "/d/f") -> None:
    """A lease on ``path`` granted, installed, and a beat delivered."""
    assert leases.install(path, _opened(board.grant(path, board.clock() + 30)), SIG)
    board.beat(force=True)
    wire.deliver(leases)


def test_a_lease_needs_a_beat_then_holds_until_voided() -> None:
    board, leases, wire, _ = _stack()
    assert leases.install("/d/f", _opened(board.grant("/d/f", 130.0)), SIG)
    assert leases.get("/d/f") is None  # nothing heard from the channel yet
    board.beat(force=True)
    wire.deliver(leases)
    lease = leases.get("/d/f")
    assert lease is not None and lease.opened.host_path == "/cache/f" and lease.sig == SIG
    board.void("/d/f")
    wire.deliver(leases)
    assert leases.get("/d/f") is None


def test_no_lease_while_the_agents_promises_are_not_live() -> None:
    board, _, wire, _ = _stack(live=False)
    assert board.grant("/f", 130.0) is None
    board.beat(force=True)
    assert msgpack.unpackb(wire.sent[-1][1])[2] == 0  # the beat vouches for nothing


def test_a_silent_channel_ends_every_lease() -> None:
    board, leases, wire, clock = _stack()
    _held(board, leases, wire)
    clock.t += 0.9
    assert leases.get("/d/f") is not None
    clock.t += 0.2  # past what the last beat vouched for (vouched() = t + 1.0)
    assert leases.get("/d/f") is None
    board.beat(force=True)  # the channel speaks again: the lease holds again
    wire.deliver(leases)
    assert leases.get("/d/f") is not None


def test_a_beat_never_vouches_beyond_its_timeout() -> None:
    board, leases, wire, clock = _stack()
    board.vouched = lambda: float("inf")
    _held(board, leases, wire)
    clock.t += BEAT_TIMEOUT + 0.01
    assert leases.get("/d/f") is None


def test_a_lease_ends_at_its_own_deadline() -> None:
    board, leases, wire, clock = _stack()
    board.vouched = lambda: float("inf")
    assert leases.install("/f", _opened(board.grant("/f", clock.t + 2.0)), SIG)
    for _ in range(3):
        clock.t += 0.9
        board.beat(force=True)
        wire.deliver(leases)
    assert leases.get("/f") is None


def test_a_sequence_gap_or_a_new_instance_or_a_disconnect_drops_every_lease() -> None:
    for fault in ("gap", "instance", "disconnect", "break"):
        board, leases, wire, _ = _stack()
        _held(board, leases, wire, "/a")
        _held(board, leases, wire, "/b")
        if fault == "gap":
            board.void("/a")
            wire.sent.clear()  # lost by ZeroMQ
            board.beat(force=True)
            wire.deliver(leases)
        elif fault == "instance":
            leases.beat("J", 0, int(1e18))
        elif fault == "disconnect":
            leases.disconnected()
        else:
            board.break_all("the server restarted")
            wire.deliver(leases)
        assert leases.get("/b") is None, fault
        assert len(leases) == 0, fault


def test_an_inval_granted_before_the_lease_does_not_void_it() -> None:
    """The reply (DEALER) can overtake earlier publications (SUB): only later ones count."""
    board, leases, wire, _ = _stack()
    _held(board, leases, wire, "/other")
    board.void("/other")  # seq 1: published before the grant below
    assert leases.install("/f", _opened(board.grant("/f", 130.0)), SIG)
    board.beat(force=True)
    wire.deliver(leases)
    assert leases.get("/f") is not None
    board.void("/f")  # after the grant
    wire.deliver(leases)
    assert leases.get("/f") is None


def test_the_first_message_drops_leases_that_may_have_missed_an_inval() -> None:
    """A lease installed before the SUB caught up: the first message seen says from where."""
    board, leases, wire, _ = _stack()
    assert leases.install("/f", _opened(board.grant("/f", 130.0)), SIG)  # granted at seq 0
    board.void("/f")  # seq 1: lost (the subscriber had not joined yet)
    wire.sent.clear()
    assert leases.install("/g", _opened(board.grant("/g", 130.0)), SIG)  # at seq 1
    board.beat(force=True)  # seq 1: the agent had published through 1
    wire.deliver(leases)
    assert leases.get("/f") is None
    assert leases.get("/g") is not None


def test_a_lease_granted_before_processed_messages_is_not_taken() -> None:
    board, leases, wire, _ = _stack()
    _held(board, leases, wire, "/x")
    stale = board.grant("/f", 130.0)
    board.void("/f")
    wire.deliver(leases)
    assert not leases.install("/f", _opened(stale), SIG)
    assert not leases.install("/f", _opened(("J", 9, 130 * _NS)), SIG)  # another instance


def test_a_tree_inval_voids_what_is_below_and_only_that() -> None:
    board, leases, wire, _ = _stack()
    for p in ("/d/a", "/d/e/b", "/dd/c"):
        _held(board, leases, wire, p)
    board.void("/d", tree=True)
    wire.deliver(leases)
    assert leases.get("/d/a") is None and leases.get("/d/e/b") is None
    assert leases.get("/dd/c") is not None


def test_a_local_drop_is_immediate() -> None:
    board, leases, wire, _ = _stack()
    _held(board, leases, wire, "/d/f")
    _held(board, leases, wire, "/e/g")
    leases.drop("/d/f")
    assert leases.get("/d/f") is None
    leases.drop("/e", tree=True)
    assert leases.get("/e/g") is None and len(leases) == 0


def test_the_board_publishes_only_for_granted_paths_and_spares_them_from_eviction() -> None:
    board, _, wire, clock = _stack()
    board.void("/never-leased")
    board.void("/d", tree=True)  # nothing granted: nothing to say
    assert wire.sent == []
    board.grant("/f", clock.t + 5)
    assert board.granted("/f") and not board.granted("/g")
    board.void("/g")
    assert wire.sent == []
    board.void("/", tree=True)  # something below may be leased: said, whatever it is
    assert [f[0] for f in wire.sent] == [b"inval"]
    board.void("/f", tree=True)
    assert not board.granted("/f")
    wire.sent.clear()
    board.grant("/f", clock.t + 5)
    clock.t += 6
    assert not board.granted("/f")
    board.expire()
    board.void("/f")  # the lease ended by itself: nothing to void
    assert wire.sent == []


def test_promises_forward_every_inval_and_break() -> None:
    """The agent's promises feed the board: a change of a known version, a break."""
    clock = Clock()
    p = Promises(clock=clock)
    seen: list[tuple[str, str, bool]] = []
    breaks: list[str] = []
    p.on_change = lambda path, version, parent: seen.append((path, version, parent))
    p.on_break = breaks.append
    p.known = lambda path: "v2"
    p.beat("S", 1)
    p.hold("/f", p.stamp())
    assert p.deadline("/f") == clock.t + p.max_age
    p.inval("/f", "v2", "S", 2, False)  # the agent's own change coming back: still seen
    assert seen == [("/f", "v2", False)]
    p.inval("/f", "v3", "S", 4, False)  # a gap
    assert breaks and p.deadline("/f") is None
