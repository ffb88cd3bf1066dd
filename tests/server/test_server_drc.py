"""The server's duplicate request cache: a mutation resent under its request id runs once.

Against a real server process over its socket (``server_harness.RawClient``), and the
cache itself as a pure unit (its bound). The resend of a mutation that is still running
when its copy arrives is exercised on S3, where a directory rename takes seconds
(tests/s3/test_s3_slow_rename.py).
"""

from __future__ import annotations

import errno

from server_harness import RawClient

from synthfs.protocol.codec import encode
from synthfs.protocol.messages import (
    Done,
    Error,
    Mkdir,
    Remove,
    Rename,
    SetAttr,
    Stat,
    StatReply,
)


def _again(c: RawClient, rid: int) -> object:
    """The reply to request ``rid`` (a resend was sent under it)."""
    while True:
        got, reply = c.recv()
        if got == rid:
            return reply


def test_a_mutation_resent_after_it_ran_gets_its_first_answer(srv):
    """A rename, an rmdir and a mkdir resent with their request ids (an agent's resend
    after an attempt went unanswered) answer as the first time, and are not run again:
    before, the rename answered ENOENT, the rmdir ENOENT and the mkdir EEXIST."""
    (srv.root / "a").write_text("x")
    (srv.root / "gone").mkdir()
    c = srv.client()
    for msg, first in ((Rename(src="/a", dst="/b"), Done),
                       (Remove(path="/gone", directory=True), Done),
                       (Mkdir(path="/made", mode=0o750), StatReply)):
        rid = c.send(msg)
        reply = _again(c, rid)
        assert isinstance(reply, first), reply
        c.send(msg, rid=rid)
        assert encode(_again(c, rid), rid) == encode(reply, rid)  # the same answer
    assert sorted(p.name for p in srv.root.iterdir()) == ["b", "made"]


def test_the_resend_may_come_on_another_connection(srv):
    """The agent reopens its socket before it resends: the same agent (its token) on a
    new connection gets the first answer."""
    (srv.root / "a").write_text("x")
    c = srv.client()
    rid = c.send(Rename(src="/a", dst="/b"))
    assert isinstance(_again(c, rid), Done)
    with RawClient(srv.endpoint, token=c.token) as again:
        again.send(Rename(src="/a", dst="/b"), rid=rid)
        assert isinstance(_again(again, rid), Done)
    assert (srv.root / "b").read_text() == "x"


def test_another_request_or_another_agent_is_run(srv):
    """The cache answers only the same request of the same agent: another agent's request
    under the same id, or another request of this agent under a reused id, is run."""
    (srv.root / "a").write_text("x")
    c, other = srv.client(), srv.client()
    rid = c.send(Rename(src="/a", dst="/b"))
    assert isinstance(_again(c, rid), Done)
    other.send(Rename(src="/a", dst="/b"), rid=rid)
    reply = _again(other, rid)
    assert isinstance(reply, Error) and reply.errno == errno.ENOENT, reply
    c.send(Rename(src="/b", dst="/c"), rid=rid)
    assert isinstance(_again(c, rid), Done)
    c.send(SetAttr(path="/c", mode=0o600), rid=rid)
    assert isinstance(_again(c, rid), StatReply)
    assert oct((srv.root / "c").stat().st_mode & 0o777) == oct(0o600)


def test_reads_are_not_cached(srv):
    c = srv.client()
    rid = c.send(Stat(path="/f"))
    assert isinstance(_again(c, rid), Error)
    (srv.root / "f").write_text("x")
    c.send(Stat(path="/f"), rid=rid)
    assert isinstance(_again(c, rid), StatReply)


def test_the_cache_is_bounded():
    """It remembers the last ``size`` answers; an older resend is run again."""
    from synthfs.server.service import DuplicateCache

    drc = DuplicateCache(size=3)
    msgs = [Mkdir(path=f"/d{i}") for i in range(5)]
    for i, msg in enumerate(msgs):
        key = DuplicateCache.key("agent", i)
        assert drc.admit(key, msg, i, [b"route"]) == ("run", key)
        assert drc.admit(key, msg, i, [b"again"]) == ("wait", b"")
        assert drc.admit(key, msg, i, [b"more"]) == ("wait", b"")
        assert drc.finish(key, encode(Done(), i)) == [[b"again"], [b"more"]]
    assert not drc.running
    assert drc.admit(DuplicateCache.key("agent", 4), msgs[4], 4, [b"r"]) == (
        "again", encode(Done(), 4))
    key0 = DuplicateCache.key("agent", 0)
    assert drc.admit(key0, msgs[0], 0, [b"r"]) == ("run", key0)
    assert len(drc._done) == 3
