"""Sparse files through the real server: extents on the wire, holes kept in the repository.

Issue #20 item 6. An upload names its data extents in ``UploadCommit.extents``
and the server stages only those, truncated to size; ``Extents`` answers where a
file's data is. Garbage extents get EINVAL with one clear line and install nothing.
"""

from __future__ import annotations

import errno
import os
import secrets

import pytest

from synthfs.extents import flatten
from synthfs.protocol.messages import (
    Done,
    Error,
    ExtentMap,
    Extents,
    Mkdir,
    Stat,
    StatReply,
    UploadChunk,
    UploadCommit,
)

MiB = 1024 * 1024


def _sparse_upload(c, path: str, size: int, writes: list[tuple[int, bytes]],
                   extents: tuple[int, ...] | None = None) -> object:
    uid = secrets.token_hex(8)
    for off, data in writes:
        assert isinstance(c.call(UploadChunk(upload_id=uid, offset=off, data=data)), Done)
    if extents is None:
        extents = flatten((off, len(data)) for off, data in writes)
    return c.call(UploadCommit(upload_id=uid, path=path, size=size, extents=extents))


def test_a_sparse_upload_keeps_its_holes(srv):
    c = srv.client()
    size = 256 * MiB
    reply = _sparse_upload(c, "/f", size, [(MiB, b"a" * 4096), (200 * MiB, b"b" * 8192)])
    assert isinstance(reply, StatReply), reply
    st = os.stat(srv.root / "f")
    assert st.st_size == size and reply.attrs.size == size
    assert st.st_blocks * 512 <= MiB, st  # dense: 256 MiB
    assert reply.attrs.blocks == st.st_blocks
    with open(srv.root / "f", "rb") as f:
        f.seek(MiB - 1)
        assert f.read(4098) == b"\0" + b"a" * 4096 + b"\0"
        f.seek(200 * MiB)
        assert f.read(8193) == b"b" * 8192 + b"\0"
    # A file of holes only (truncate -s): nothing sent, nothing allocated.
    reply = _sparse_upload(c, "/holes", 64 * MiB, [])
    assert isinstance(reply, StatReply) and reply.attrs.size == 64 * MiB, reply
    assert os.stat(srv.root / "holes").st_blocks == 0


def test_extents_name_the_data_of_a_file(srv):
    c = srv.client()
    with open(srv.root / "f", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(32 * MiB)
        f.write(b"x" * 4096)
    a = c.call(Stat(path="/f"))
    assert isinstance(a, StatReply)
    reply = c.call(Extents(path="/f", version=a.attrs.version))
    assert reply == ExtentMap(size=64 * MiB, version=a.attrs.version, extents=(32 * MiB, 4096))
    (srv.root / "dense").write_bytes(b"y" * 5000)
    reply = c.call(Extents(path="/dense"))
    assert isinstance(reply, ExtentMap) and reply.extents == (0, 5000)
    assert c.call(Mkdir(path="/d")).__class__ is StatReply
    for path, version, code in [("/f", "other", errno.ESTALE), ("/d", "", errno.EISDIR),
                                ("/nope", "", errno.ENOENT)]:
        err = c.call(Extents(path=path, version=version))
        assert isinstance(err, Error) and err.errno == code, (path, err)


def test_extents_of_a_very_fragmented_file_are_bounded(srv):
    """More than MAX_EXTENTS extents: fewer, larger ones that still cover every byte."""
    from synthfs.extents import MAX_EXTENTS

    c = srv.client()
    n = MAX_EXTENTS + 200
    with open(srv.root / "frag", "wb") as f:
        f.truncate(n * 64 * 1024)
        for i in range(n):
            f.seek(i * 64 * 1024)
            f.write(b"z" * 4096)
    reply = c.call(Extents(path="/frag"))
    assert isinstance(reply, ExtentMap)
    pairs = list(zip(reply.extents[::2], reply.extents[1::2], strict=True))
    assert len(pairs) <= MAX_EXTENTS
    covered = [(o, o + n) for o, n in pairs]
    for i in range(n):
        assert any(a <= i * 64 * 1024 and i * 64 * 1024 + 4096 <= b for a, b in covered), i


@pytest.mark.parametrize(("extents", "why"), [
    ((0, 4096, 100, 10), "overlaps"),
    ((MiB, 4096, 0, 10), "precedes"),
    ((0, 4096, 8 * MiB, 10), "beyond the size"),
    ((0, 4096, 10), "odd number"),
    ((0, 0), "empty"),
], ids=["overlapping", "unsorted", "beyond-size", "odd", "empty"])
def test_garbage_extents_are_einval_and_install_nothing(srv, extents, why):
    c = srv.client()
    reply = _sparse_upload(c, "/g", 8 * MiB, [(0, b"q" * 4096)], extents=extents)
    assert isinstance(reply, Error) and reply.errno == errno.EINVAL, reply
    assert why in reply.message and "bad data extents" in reply.message, reply.message
    assert not (srv.root / "g").exists()


def test_extents_that_differ_from_the_staged_chunks_are_eio(srv):
    """A lost chunk (or one the commit does not name) installs nothing."""
    c = srv.client()
    for sent, named in [([(0, b"q" * 4096)], (0, 4096, MiB, 4096)),  # a chunk lost
                        ([(0, b"q" * 4096), (MiB, b"r" * 10)], (0, 4096))]:  # one not named
        reply = _sparse_upload(c, "/g", 8 * MiB, sent, extents=named)
        assert isinstance(reply, Error) and reply.errno == errno.EIO, reply
        assert not (srv.root / "g").exists()


def test_a_sparse_upload_over_a_file_of_two_names_keeps_holes_in_place(srv):
    c = srv.client()
    (srv.root / "a").write_bytes(b"d" * (4 * MiB))
    os.link(srv.root / "a", srv.root / "b")
    reply = _sparse_upload(c, "/a", 64 * MiB, [(60 * MiB, b"e" * 4096)])
    assert isinstance(reply, StatReply), reply
    st = os.stat(srv.root / "b")
    assert st.st_ino == os.stat(srv.root / "a").st_ino and st.st_size == 64 * MiB
    assert st.st_blocks * 512 <= MiB, st
    with open(srv.root / "b", "rb") as f:
        assert f.read(4096) == bytes(4096)  # the old data is gone: a hole now
        f.seek(60 * MiB)
        assert f.read(4096) == b"e" * 4096


def test_truncating_a_sparse_file_keeps_its_holes(srv):
    """SetAttr.size of a small file copies the kept prefix (atomic): by its extents."""
    from synthfs.protocol.messages import SetAttr

    c = srv.client()
    with open(srv.root / "t", "wb") as f:
        f.truncate(32 * MiB)
        f.seek(16 * MiB)
        f.write(b"k" * 4096)
    reply = c.call(SetAttr(path="/t", size=20 * MiB))
    assert isinstance(reply, StatReply) and reply.attrs.size == 20 * MiB, reply
    st = os.stat(srv.root / "t")
    assert st.st_blocks * 512 <= MiB, st
    with open(srv.root / "t", "rb") as f:
        f.seek(16 * MiB)
        assert f.read(4097) == b"k" * 4096 + b"\0"
