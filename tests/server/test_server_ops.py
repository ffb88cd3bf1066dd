"""Every operation round trip over the real socket, concurrency and invalidations."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import time

import msgpack
import pytest
import zmq

from synthfs.protocol.codec import decode, encode
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Data,
    Done,
    Error,
    FileKind,
    Hello,
    LinkTarget,
    List,
    Listing,
    Mkdir,
    Read,
    Readlink,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    UploadAbort,
    UploadChunk,
    UploadCommit,
)
from synthfs.protocol.sealed import TOPIC, open_sealed


def _upload(c, path: str, data: bytes, mode: int = 0o644) -> StatReply:
    uid = secrets.token_hex(8)
    for off in range(0, len(data), CHUNK_SIZE):
        assert isinstance(c.call(UploadChunk(upload_id=uid, offset=off,
                                             data=data[off : off + CHUNK_SIZE])), Done)
    reply = c.call(UploadCommit(upload_id=uid, path=path, size=len(data), mode=mode))
    assert isinstance(reply, StatReply), reply
    return reply


def _err(reply) -> int:
    assert isinstance(reply, Error), reply
    return reply.errno


def test_every_operation_round_trip(srv):
    c = srv.client()
    root = srv.root
    # Mkdir -> StatReply
    r = c.call(Mkdir(path="/d", mode=0o750))
    assert isinstance(r, StatReply) and r.attrs.kind is FileKind.DIR and r.attrs.mode == 0o750
    assert (root / "d").is_dir()
    # Upload -> StatReply, file on disk
    r = _upload(c, "/d/f", b"hello world", mode=0o640)
    assert r.attrs.size == 11 and r.attrs.mode == 0o640
    assert (root / "d" / "f").read_bytes() == b"hello world"
    # Stat
    s = c.call(Stat(path="/d/f"))
    assert isinstance(s, StatReply) and s.attrs == r.attrs
    # Read (ranged, pinned version)
    d = c.call(Read(path="/d/f", offset=6, length=100, version=r.attrs.version))
    assert isinstance(d, Data) and d.data == b"world" and d.eof and d.version == r.attrs.version
    # Symlink / Readlink
    s = c.call(Symlink(target="f", path="/d/l"))
    assert isinstance(s, StatReply) and s.attrs.kind is FileKind.SYMLINK
    assert c.call(Readlink(path="/d/l")) == LinkTarget(target="f")
    assert os.readlink(root / "d" / "l") == "f"
    # List (READDIRPLUS)
    lst = c.call(List(path="/d"))
    assert isinstance(lst, Listing)
    assert {e.name: e.attrs.kind for e in lst.entries} == {"f": FileKind.FILE,
                                                          "l": FileKind.SYMLINK}
    assert lst.attrs.kind is FileKind.DIR
    # SetAttr: chmod, utimes, truncate
    s = c.call(SetAttr(path="/d/f", mode=0o600, mtime_ns=1_500_000_000_000_000_000, size=5))
    assert isinstance(s, StatReply)
    assert (s.attrs.mode, s.attrs.size, s.attrs.mtime_ns) == (0o600, 5, 1_500_000_000_000_000_000)
    assert (root / "d" / "f").read_bytes() == b"hello"
    # Rename (plain, NOREPLACE, EXCHANGE)
    assert isinstance(c.call(Rename(src="/d/f", dst="/d/g")), Done)
    _upload(c, "/d/h", b"H")
    assert _err(c.call(Rename(src="/d/g", dst="/d/h", flags=RenameFlags.NOREPLACE))) == (
        errno.EEXIST)
    assert isinstance(c.call(Rename(src="/d/g", dst="/d/h", flags=RenameFlags.EXCHANGE)), Done)
    assert (root / "d" / "h").read_bytes() == b"hello" and (root / "d" / "g").read_bytes() == b"H"
    # Remove
    assert isinstance(c.call(Remove(path="/d/g")), Done)
    assert _err(c.call(Remove(path="/d", directory=True))) == errno.ENOTEMPTY
    for name in ("h", "l"):
        assert isinstance(c.call(Remove(path=f"/d/{name}")), Done)
    assert isinstance(c.call(Remove(path="/d", directory=True)), Done)
    assert sorted(os.listdir(root)) == []
    # UploadAbort
    assert isinstance(c.call(UploadChunk(upload_id="ab", offset=0, data=b"x")), Done)
    assert isinstance(c.call(UploadAbort(upload_id="ab")), Done)
    assert _err(c.call(UploadCommit(upload_id="ab", path="/x", size=1))) == errno.EIO


def test_errnos_cross_the_wire(srv):
    c = srv.client()
    assert _err(c.call(Stat(path="/nope"))) == errno.ENOENT
    _upload(c, "/f", b"x")
    assert _err(c.call(Stat(path="/f/x"))) == errno.ENOTDIR
    assert _err(c.call(List(path="/f"))) == errno.ENOTDIR
    assert _err(c.call(Remove(path="/", directory=True))) == errno.EBUSY
    assert _err(c.call(Mkdir(path="/f"))) == errno.EEXIST
    assert _err(c.call(Readlink(path="/f"))) == errno.EINVAL
    c.call(Mkdir(path="/d"))
    assert _err(c.call(Remove(path="/d"))) == errno.EISDIR
    assert _err(c.call(Read(path="/d", offset=0, length=1))) == errno.EISDIR


def test_multi_chunk_read_with_version_and_estale(srv):
    c = srv.client()
    data = secrets.token_bytes(CHUNK_SIZE + 1000)
    a = _upload(c, "/big", data).attrs
    first = c.call(Read(path="/big", offset=0, length=CHUNK_SIZE, version=a.version))
    assert isinstance(first, Data) and not first.eof and len(first.data) == CHUNK_SIZE
    _upload(c, "/big", b"changed")
    assert _err(c.call(Read(path="/big", offset=CHUNK_SIZE, length=CHUNK_SIZE,
                            version=a.version))) == errno.ESTALE


def test_version_changes_on_every_write(srv):
    c = srv.client()
    versions = {_upload(c, "/f", b"same").attrs.version for _ in range(20)}
    assert len(versions) == 20


def test_commit_resend_returns_same_attrs(srv):
    c = srv.client()
    c.call(UploadChunk(upload_id="once", offset=0, data=b"abc"))
    a = c.call(UploadCommit(upload_id="once", path="/f", size=3))
    b = c.call(UploadCommit(upload_id="once", path="/f", size=3))
    assert isinstance(a, StatReply) and a == b


def test_a_commit_resent_for_another_path_is_an_error(srv):
    """A committed upload's id named with another path: an error, never success with
    the first path's attributes (nothing is written to the second path)."""
    c = srv.client()
    c.call(UploadChunk(upload_id="once", offset=0, data=b"abc"))
    a = c.call(UploadCommit(upload_id="once", path="/f", size=3))
    assert isinstance(a, StatReply)
    assert _err(c.call(UploadCommit(upload_id="once", path="/victim", size=3))) == errno.EEXIST
    assert not (srv.root / "victim").exists()
    assert c.call(UploadCommit(upload_id="once", path="//f", size=3)) == a  # same path


def test_not_a_server_request(srv):
    c = srv.client()
    assert _err(c.call(Hello(version=1))) == errno.EOPNOTSUPP


def test_reply_echoes_request_id_and_req_envelope_works(srv):
    c = srv.client()
    rid = c.send(Stat(path="/"), rid=2**64 - 1)
    got, reply = c.recv()
    assert got == rid and isinstance(reply, StatReply)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(srv.endpoint)
    try:
        req.send(encode(Stat(path="/"), 7, c.token))
        assert req.poll(5000)
        env = decode(req.recv())
        assert env.request_id == 7 and isinstance(env.msg, StatReply)
    finally:
        req.close()


def test_special_files_are_refused(srv):
    os.mkfifo(srv.root / "fifo")
    c = srv.client()
    assert _err(c.call(Read(path="/fifo", offset=0, length=10))) == errno.EACCES
    assert [e.name for e in c.call(List(path="/")).entries] == []


def test_a_slow_client_does_not_stall_another(srv):
    """A pipelines 32 chunk-sized reads; B's stat is answered while A's reads are still running.

    Replies land in A's socket queue whether or not A reads them, so counting
    what A has received when B gets its answer shows whether the server
    served B in the middle of A's work (not after it).
    """
    a, b = srv.client(), srv.client()
    data = secrets.token_bytes(CHUNK_SIZE)
    _upload(a, "/big", data)
    n = 32
    rids = [a.send(Read(path="/big", offset=0, length=CHUNK_SIZE)) for _ in range(n)]
    time.sleep(0.01)
    assert isinstance(b.call(Stat(path="/big")), StatReply)  # answered on the I/O thread
    assert isinstance(b.call(List(path="/")), Listing)  # the metadata pool
    done_when_b_answered = 0
    while a.sock.poll(0):
        _rid, msg = a.recv()
        assert isinstance(msg, Data)
        done_when_b_answered += 1
    print(f"{done_when_b_answered} of A's {n} reads were done when B was answered")
    # A shared FIFO of 8 workers would answer B after at least n - 8 of A's reads.
    assert done_when_b_answered < n // 2
    for _ in range(n - done_when_b_answered):
        _rid, msg = a.recv(timeout=30)
        assert isinstance(msg, Data) and msg.data == data
    assert len(rids) == n


def test_many_clients_at_once(srv):
    clients = [srv.client() for _ in range(8)]
    for i, c in enumerate(clients):
        _upload(c, f"/f{i}", str(i).encode())
    rids = {c: c.send(Stat(path=f"/f{i}")) for i, c in enumerate(clients)}
    for i, c in enumerate(clients):
        rid, msg = c.recv()
        assert rid == rids[c] and isinstance(msg, StatReply) and msg.attrs.size == len(str(i))


class _Sub:
    """A SUB socket on the sealed channel that opens each publication with ``key``."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.key = ""

    def poll(self, ms: int) -> bool:
        return bool(self.sock.poll(ms))

    def recv(self) -> list:
        topic, body = self.sock.recv_multipart()
        assert topic == TOPIC
        return msgpack.unpackb(open_sealed(self.key, body))

    def recv_inval(self, ms: int) -> list | None:
        """The next invalidation's [path, version, instance, seq, parent] (beats skipped)."""
        deadline = time.monotonic() + ms / 1000
        while self.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            kind, *fields = self.recv()
            if kind == "inval":
                return fields
        return None


@pytest.fixture
def published(make_server, tmp_path):
    d = tempfile.mkdtemp(prefix="sfs-pub-", dir="/tmp")
    srv = make_server("--publish", f"ipc://{d}/pub.sock")
    sub = _Sub(f"ipc://{d}/pub.sock")
    # PUB drops messages until the subscription has reached it: probe until one arrives.
    c = srv.client()
    sub.key = c.publish_key
    made = 0
    while sub.recv_inval(100) is None:
        assert made < 100, "no invalidation ever arrived"
        c.call(Mkdir(path=f"/probe{made}"))
        made += 1
    for i in range(made):
        c.call(Remove(path=f"/probe{i}", directory=True))
    while sub.poll(300):
        sub.recv()
    yield srv, sub, d
    sub.sock.close()
    shutil.rmtree(d, ignore_errors=True)


def test_invalidations_are_published(published):
    srv, sub, _d = published
    c = srv.client()
    assert c.publish_key == sub.key  # one channel key per server process
    a = _upload(c, "/f", b"v1").attrs
    seen = {}
    deadline = time.monotonic() + 5
    while not {"/f", "/"} <= set(seen) and time.monotonic() < deadline:
        got = sub.recv_inval(500)
        if got is not None:
            seen[got[0]] = got[1]
    assert seen["/f"] == a.version
    assert "/" in seen
    c.call(Remove(path="/f"))
    while (got := sub.recv_inval(2000)) is not None:
        seen[got[0]] = got[1]
        if got[0] == "/f":
            break
    assert seen["/f"] == ""


def test_heartbeat_and_sequence_numbers(published):
    """Beats every ~0.5 s carry the instance and the last inval's seq; invals count 1, 2..."""
    srv, sub, _d = published
    beats = []
    deadline = time.monotonic() + 5
    while len(beats) < 3 and time.monotonic() < deadline:
        if sub.poll(1000):
            kind, *fields = sub.recv()
            if kind == "beat":
                beats.append((time.monotonic(), *fields))
    assert len(beats) == 3
    (t0, inst, seq0), (_, inst1, seq1), (t2, inst2, seq2) = beats
    assert inst == inst1 == inst2 and len(inst) == 16
    assert seq0 == seq1 == seq2 > 0  # the fixture's probes were published
    assert 0.6 < t2 - t0 < 2.0
    c = srv.client()
    _upload(c, "/g", b"x")
    invals = []
    while len(invals) < 2 and (got := sub.recv_inval(2000)) is not None:
        invals.append(got)
    assert [i[3] for i in invals] == [seq0 + 1, seq0 + 2]
    assert {i[2] for i in invals} == {inst}
    assert invals[0][0] == "/g" and invals[0][4] is False
    assert invals[1][0] == "/" and invals[1][4] is True
    while sub.poll(1500):
        kind, *fields = sub.recv()
        if kind == "beat":
            assert fields == [inst, seq0 + 2]
            break
    else:
        raise AssertionError("no beat after the invalidations")


def test_a_reader_that_did_not_register_learns_nothing(make_server):
    """Another local user subscribes to the channel (no key): it sees that messages
    pass, never a path, a version, the instance or a sequence number."""
    d = tempfile.mkdtemp(prefix="sfs-pub-", dir="/tmp")
    srv = make_server("--publish", f"ipc://{d}/pub.sock")
    spy = zmq.Context.instance().socket(zmq.SUB)
    spy.setsockopt(zmq.LINGER, 0)
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.connect(f"ipc://{d}/pub.sock")
    try:
        c = srv.client()
        heard: list[bytes] = []
        names = []
        deadline = time.monotonic() + 2.0  # several beats, and a change every 0.1 s
        while time.monotonic() < deadline:
            names.append("/secret-name-" + secrets.token_hex(4))
            versions = [_upload(c, names[-1], b"payload").attrs.version]
            while spy.poll(100):
                heard.extend(spy.recv_multipart())
        assert len(heard) > 10, "the spy heard nothing (so the test could not fail)"
        text = b"".join(heard)
        for leak in (*(n.encode() for n in names), *(v.encode() for v in versions),
                     b"inval", b"beat", c.publish_key.encode()):
            assert leak not in text, leak
        if c.publish_key:
            assert bytes.fromhex(c.publish_key) not in text
    finally:
        spy.close()
        shutil.rmtree(d, ignore_errors=True)
