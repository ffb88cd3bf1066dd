"""kill -9 of the server during a large upload: the old version survives, byte for byte.

A crash at any point must leave the old or the new version, never a torn
file, and a restarted server removes the staged leftovers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import time

import pytest

from synthfs.protocol.messages import (
    CHUNK_SIZE,
    Done,
    Error,
    Read,
    Stat,
    StatReply,
    UploadChunk,
    UploadCommit,
)

BIG = 64 * 1024 * 1024


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _staged(root) -> list[str]:
    """Staged upload files (the commit journal beside them is not one)."""
    return [n for n in os.listdir(root.parent / f"{root.name}.state") if n != "committed.journal"]


@pytest.fixture
def old_version(make_server):
    srv = make_server()
    old = secrets.token_bytes(3 * 1024 * 1024 + 17)
    (srv.root / "big").write_bytes(old)
    return srv, hashlib.sha256(old).hexdigest()


def _send_chunks(c, upload_id: str, data: bytes, count: int) -> None:
    for i in range(count):
        off = i * CHUNK_SIZE
        chunk = data[off : off + CHUNK_SIZE]
        reply = c.call(UploadChunk(upload_id=upload_id, offset=off, data=chunk))
        assert isinstance(reply, Done), reply


def test_kill_during_chunks_keeps_old_version(old_version, make_server):
    srv, old_sha = old_version
    c = srv.client()
    data = secrets.token_bytes(BIG)
    _send_chunks(c, "big-upload", data, 6)  # 24 of 64 MiB staged
    c.send(UploadChunk(upload_id="big-upload", offset=6 * CHUNK_SIZE,
                       data=data[6 * CHUNK_SIZE : 7 * CHUNK_SIZE]))  # in flight
    srv.proc.kill()
    assert _sha(srv.root / "big") == old_sha
    assert _staged(srv.root)  # the partial upload is on disk...
    srv2 = make_server(root=srv.root)
    assert _staged(srv.root) == []  # ...and the restart removed it
    assert _sha(srv.root / "big") == old_sha
    c2 = srv2.client()
    reply = c2.call(Stat(path="/big"))
    assert isinstance(reply, StatReply) and reply.attrs.size == 3 * 1024 * 1024 + 17


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02])
def test_kill_between_commit_and_reply_is_old_or_new(old_version, make_server, delay):
    srv, old_sha = old_version
    c = srv.client()
    data = secrets.token_bytes(BIG if delay == 0.0 else 16 * 1024 * 1024)
    new_sha = hashlib.sha256(data).hexdigest()
    _send_chunks(c, "u", data, len(data) // CHUNK_SIZE)
    c.send(UploadCommit(upload_id="u", path="/big", size=len(data)))
    if delay:
        time.sleep(delay)
    srv.proc.kill()
    assert _sha(srv.root / "big") in (old_sha, new_sha)
    srv2 = make_server(root=srv.root)
    assert _staged(srv.root) == []
    assert _sha(srv.root / "big") in (old_sha, new_sha)
    assert sorted(os.listdir(srv.root)) == ["big"]
    # The agent resends its commit: either the journal knows it (then the new
    # version is in place), or it is EIO and the agent uploads again.
    resent = srv2.client().call(UploadCommit(upload_id="u", path="/big", size=len(data)))
    if isinstance(resent, StatReply):
        assert _sha(srv.root / "big") == new_sha
    else:
        assert isinstance(resent, Error) and resent.errno == errno.EIO


def test_acknowledged_upload_survives_kill(old_version, make_server):
    srv, _old = old_version
    c = srv.client()
    data = secrets.token_bytes(2 * CHUNK_SIZE + 5)
    _send_chunks(c, "u", data, 3)
    reply = c.call(UploadCommit(upload_id="u", path="/big", size=len(data)))
    assert isinstance(reply, StatReply)
    srv.proc.kill()
    srv2 = make_server(root=srv.root)
    assert _sha(srv.root / "big") == hashlib.sha256(data).hexdigest()
    c2 = srv2.client()
    got = c2.call(Read(path="/big", offset=2 * CHUNK_SIZE, length=100))
    assert got.data == data[2 * CHUNK_SIZE :] and got.version == reply.attrs.version
    # A commit resent after the restart answers the same attributes (idempotent).
    assert c2.call(UploadCommit(upload_id="u", path="/big", size=len(data))) == reply
