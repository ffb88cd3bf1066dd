"""The bulk path of the codec: a frame built around data read in place, data decoded as a view.

``encode_around`` must give the very bytes ``encode`` gives, and ``decode(views=True)``
must accept exactly the frames ``decode`` accepts, with the same values: only the
copy of the data is gone (the view shares the frame's memory).
"""

from __future__ import annotations

import random

import msgpack
import pytest

from synthfs.protocol import messages as m
from synthfs.protocol.codec import HEAD_ROOM, DecodeError, decode, encode, encode_around

SIZES = [0, 1, 65535, 65536, 3 * 1024 * 1024 + 17, m.CHUNK_SIZE]


def _around(data: bytes, *, eof: bool, version: str, rid: int) -> memoryview:
    buf = bytearray(HEAD_ROOM + len(data) + 5)  # more room after the data than it needs
    buf[HEAD_ROOM:HEAD_ROOM + len(data)] = data
    return encode_around(m.Data(data=b"", eof=eof, version=version), rid, "", buf,
                         HEAD_ROOM, len(data))


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_built_around_the_data_is_the_encoded_frame(size: int) -> None:
    data = random.Random(size).randbytes(size)
    for eof, version in ((False, "v1"), (True, "é" * 1024)):
        want = encode(m.Data(data=data, eof=eof, version=version), 2**64 - 1)
        got = bytes(_around(data, eof=eof, version=version, rid=2**64 - 1))
        if size >= 65536:  # encode writes a large field last, as encode_around does
            assert got == want
        env = decode(got)
        assert (env.request_id, env.msg.data, env.msg.eof, env.msg.version) == (
            2**64 - 1, data, eof, version)


def test_a_frame_around_refuses_what_does_not_fit() -> None:
    msg = m.Data(data=b"", eof=True, version="v")
    with pytest.raises(ValueError):  # no room for the header
        encode_around(msg, 1, "", bytearray(100), 10, 5)
    with pytest.raises(ValueError):  # more data than a chunk
        encode_around(msg, 1, "", bytearray(HEAD_ROOM + m.CHUNK_SIZE + 1), HEAD_ROOM,
                      m.CHUNK_SIZE + 1)
    with pytest.raises(ValueError):  # past the buffer's end
        encode_around(msg, 1, "", bytearray(HEAD_ROOM + 10), HEAD_ROOM, 11)
    with pytest.raises(ValueError):  # the data field must be the placeholder
        encode_around(m.Data(data=b"x", eof=True, version="v"), 1, "", bytearray(HEAD_ROOM),
                      HEAD_ROOM, 0)
    with pytest.raises(TypeError):  # a message without a bytes field
        encode_around(m.Stat(path="/a"), 1, "", bytearray(HEAD_ROOM), HEAD_ROOM, 0)


@pytest.mark.parametrize("size", SIZES)
def test_views_decode_the_same_values_without_a_copy(size: int) -> None:
    data = random.Random(size).randbytes(size)
    frame = bytearray(encode(m.Data(data=data, eof=False, version="v9"), 77))
    plain = decode(bytes(frame))
    env = decode(memoryview(frame), views=True)
    assert env.request_id == 77 and env.msg.eof is False and env.msg.version == "v9"
    assert env.msg.data == plain.msg.data == data
    if size >= 65536:  # a large field is a view of the frame: no copy was made
        assert isinstance(env.msg.data, memoryview) and env.msg.data.readonly
        frame[-1] ^= 0xFF
        assert env.msg.data[-1] == frame[-1]
    else:
        assert isinstance(env.msg.data, bytes)


def test_views_apply_to_replies_only() -> None:
    frame = encode(m.UploadChunk(upload_id="u", offset=0, data=b"x" * 100_000), 3, "tok")
    assert isinstance(decode(frame, views=True).msg.data, memoryview)
    assert isinstance(decode(frame, request=True, views=True).msg.data, bytes)


def _agree(frame: bytes) -> None:
    """decode and decode(views=True) both refuse ``frame``, or give the same message."""
    try:
        want = decode(frame)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as ei:
            decode(frame, views=True)
        assert ei.value.request_id == exc.request_id
        return
    got = decode(frame, views=True)
    assert (got.request_id, got.token, type(got.msg)) == (want.request_id, want.token,
                                                          type(want.msg))
    assert isinstance(got.msg, m.Data) and isinstance(want.msg, m.Data)
    assert (bytes(got.msg.data), got.msg.eof, got.msg.version) == (
        bytes(want.msg.data), want.msg.eof, want.msg.version)


def _frame(body: object, kind: object = "data", version: object = m.PROTOCOL_VERSION,
           tail: bytes = b"") -> bytes:
    out = msgpack.packb([version, kind, 5, "", body], use_bin_type=True)
    assert isinstance(out, bytes)
    return out + tail


BIG = b"z" * 70_000


@pytest.mark.parametrize("frame", [
    _frame({"eof": True, "version": "v", "data": BIG}),  # the usual shape
    _frame({"data": BIG, "eof": True, "version": "v"}),  # data not last: decoded as usual
    _frame({"eof": True, "version": "v", "data": BIG}, tail=b"\x00"),  # a byte after it
    _frame({"eof": True, "version": "v", "data": BIG})[:-1],  # torn
    _frame({"eof": 1, "version": "v", "data": BIG}),  # a bad field before the data
    _frame({"eof": True, "version": "v", "bogus": 1, "data": BIG}),  # unknown field
    _frame({"eof": True, "data": BIG}),  # a required field missing
    _frame({"eof": True, "version": "v", "data": BIG}, version=1),  # another protocol
    _frame({"eof": True, "version": "v", "data": BIG}, kind="nope"),  # unknown kind
    _frame({"eof": True, "version": "v", "data": BIG}, kind="stat"),  # a kind without data
    _frame({"eof": True, "version": "v", "data": "s" * 70_000}),  # a str, not bytes
    _frame({"eof": True, "version": "v", "data": b"z" * (m.CHUNK_SIZE + 1)}),  # too long
    _frame({"eof": True, "version": "v", "data": BIG, "data ": 1}),  # unknown last field
    _frame({"eof": True, "version": "v", 7: 1, "data": BIG}),  # a key that is no str
    _frame({"version": "v" * 20_000, "eof": True, "data": BIG}),  # a header past the scan
])
def test_views_refuse_what_decode_refuses(frame: bytes) -> None:
    _agree(frame)


def test_views_agree_with_decode_on_damaged_frames() -> None:
    good = encode(m.Data(data=random.Random(1).randbytes(100_000), eof=True, version="v1"), 9)
    rnd = random.Random(2)
    for _ in range(300):
        frame = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(0, 64) if rnd.random() < 0.8 else rnd.randrange(len(frame))
            frame[at] = rnd.randrange(256)
        _agree(bytes(frame))
