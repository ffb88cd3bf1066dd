"""The codec: every message kind round-trips; any bytes decode or fail cleanly."""

from __future__ import annotations

import contextlib
import errno

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthfs.protocol import messages as m
from synthfs.protocol.codec import MAX_FRAME, DecodeError, decode, encode, error_from_exception

A = m.Attrs(kind=m.FileKind.FILE, size=12, mode=0o644, mtime_ns=1, ctime_ns=-2, ino=7,
            nlink=1, version="v1")
D = m.Attrs(kind="dir", size=0, mode=0o755, mtime_ns=0, ctime_ns=0, ino=1)

V = m.PROTOCOL_VERSION

#: One example of every registered message kind.
EXAMPLES: list[m.Message] = [
    m.Hello(version=1),
    m.Welcome(version=1, refused_paths=("/cache", "/run/agent.sock")),
    m.Register(version=1, agent_id="host:1", nonce="n", timestamp_ns=5, mac="ab" * 32),
    m.Registered(token="secret", token_id="t1", expires_at_ns=10, repo_id="r"),
    m.Stat(path="/a"),
    m.StatReply(attrs=A),
    m.List(path="/"),
    m.Listing(attrs=D, entries=(m.DirEntry(name="a", attrs=A), m.DirEntry(name="é", attrs=D),
                                m.DirEntry(name="raw-\udcff\udcfe", attrs=A))),
    m.Read(path="/a", offset=3, length=m.CHUNK_SIZE, version="v1"),
    m.Data(data=b"\x00\xff" * 10, eof=True, version="v1"),
    m.UploadChunk(upload_id="u", offset=0, data=b"xyz"),
    m.UploadCommit(upload_id="u", path="/a", size=3, mode=0o600),
    m.UploadCommit(upload_id="u", path="/a", size=2**31, extents=(0, 4096, 2**30, 4096)),
    m.Extents(path="/a", version="v1"),
    m.ExtentMap(size=2**31, version="v1", extents=(4096, 8192)),
    m.Locate(path="/big", version="v1"),
    m.Located(url="http://127.0.0.1:9/b/k?X-Amz-Signature=0", etag='"e"', size=2**28,
              version="v1", expires_ns=2**62),
    m.UploadAbort(upload_id="u"),
    m.Mkdir(path="/d", mode=0o700),
    m.Remove(path="/d", directory=True),
    m.Rename(src="/a", dst="/b", flags=m.RenameFlags.NOREPLACE),
    m.Symlink(target="../x", path="/l"),
    m.Symlink(target="x-\udcff", path="/l-\udce9"),  # names that are not UTF-8
    m.Link(src="/a", dst="/d/b-\udc80"),
    m.Readlink(path="/l"),
    m.LinkTarget(target="../x"),
    m.SetAttr(path="/a", mode=0o600, atime_ns=None, mtime_ns=-5, size=0),
    m.Open(path="/a", flags=0o102, mode=0o640),
    m.Opened(host_path="/cache/x", attrs=A),
    m.Progress(path="/x", done=4194304, total=536870912),
    m.Commit(path="/a"),
    m.Committed(attrs=A),
    m.Sync(),
    m.Synced(uploaded=3),
    m.Done(),
    m.Error(errno=errno.ENOENT, message="No such file or directory"),
]


def test_examples_cover_every_kind() -> None:
    assert {type(x) for x in EXAMPLES} == set(m.REGISTRY.values())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda x: x.kind)
def test_round_trip(msg: m.Message) -> None:
    env = decode(encode(msg, request_id=2**64 - 1, token="tok"))
    assert env.msg == msg
    assert type(env.msg) is type(msg)
    assert env.request_id == 2**64 - 1
    assert env.token == "tok"


def test_secrets_stay_out_of_repr() -> None:
    env = decode(encode(m.Registered(token="s3cr3t", token_id="t", expires_at_ns=1, repo_id="r"),
                        token="s3cr3t"))
    assert "s3cr3t" not in repr(env)


def test_decodes_from_a_memoryview() -> None:
    frame = encode(m.Stat(path="/x"), 9)
    assert decode(memoryview(frame)).msg == m.Stat(path="/x")


@pytest.mark.parametrize(
    "raw",
    [
        [1, "stat", 1, "", {"path": "/a"}],  # protocol 1 (names were text only)
        [True, "stat", 1, "", {"path": "/a"}],  # bool is not a version
        [V, "nope", 1, "", {}],  # unknown kind
        [V, "stat", -1, "", {"path": "/a"}],  # negative request id
        [V, "stat", 1, 5, {"path": "/a"}],  # token not a string
        [V, "stat", 1, "", {"path": "/a", "extra": 1}],  # unknown field
        [V, "stat", 1, "", {"path": 3}],  # wrong type
        [V, "stat", 1, "", {}],  # missing field
        [V, "stat_reply", 1, "", {"attrs": [1, 2]}],  # short attrs
        [V, "read", 1, "", {"path": "/a", "offset": 0, "length": m.CHUNK_SIZE + 1}],
        [V, "stat", 1, ""],  # short envelope
        {"a": 1},
    ],
)
def test_malformed_frames_are_decode_errors(raw: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(raw, use_bin_type=True))


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x00" * (MAX_FRAME + 1))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20),
                  st.binary(max_size=20), st.floats(allow_nan=True))
_values = st.recursive(_leaf, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(sorted(m.REGISTRY)), rid=st.integers(-5, 2**65), body=_values)
def test_structured_garbage_is_a_decode_error(kind: str, rid: int, body: object) -> None:
    """Well-formed msgpack envelopes with arbitrary bodies: DecodeError or a valid message."""
    try:
        frame = msgpack.packb([m.PROTOCOL_VERSION, kind, rid, "", body], use_bin_type=True)
    except (OverflowError, ValueError):
        return
    try:
        env = decode(frame)
    except DecodeError:
        return
    assert env.msg.kind == kind


def test_error_from_exception_keeps_errno_and_fails_closed() -> None:
    assert error_from_exception(FileNotFoundError(errno.ENOENT, "x")).errno == errno.ENOENT
    assert error_from_exception(KeyError("boom")).errno == errno.EIO


# -- requests are decoded within the schema's bounds ------------------------------------


def test_the_largest_legal_requests_decode_in_request_mode() -> None:
    path = "/" + "\U0001f600" * (m.MAX_PATH - 1)  # the longest path, 4 UTF-8 bytes a char
    for msg in (m.Stat(path=path), m.Rename(src=path, dst=path),
                m.UploadChunk(upload_id="u", offset=0, data=b"x" * m.CHUNK_SIZE),
                m.SetAttr(path=path, mode=0o644, atime_ns=1, mtime_ns=2, size=3)):
        assert decode(encode(msg, 7, "t" * 1024), request=True).msg == msg


@pytest.mark.parametrize("frame", [
    b"\xdd\x00\x80\x00\x00" + b"\x80" * 0x800000,  # 8M empty maps
    b"\x95\x01\xa4stat\x05\xa0\xdf\xff\xff\xff\xff",  # a body of 2^32-1 fields
    b"\x95\x01\xa4stat\x05\xa0" + b"\x91" * 100_000,  # nesting
    b"\x95\x01\xa4stat\x05\xa0\x81\xa4path" + b"\x92\x90\x90" * 100,  # many small arrays
    b"\x95\x01\xa4stat\x05\xa0\x81\xa4path\xc7\x01\x01x",  # an ext type
], ids=["maps", "fields", "deep", "containers", "ext"])
def test_a_request_that_declares_too_much_is_refused_early(frame: bytes) -> None:
    import time

    t = time.perf_counter()
    with pytest.raises(DecodeError):
        decode(frame, request=True)
    assert time.perf_counter() - t < 0.2


def test_a_bad_body_keeps_its_request_id_without_a_second_decode() -> None:
    with pytest.raises(DecodeError) as info:
        decode(msgpack.packb([1, "stat", 77, "", {"path": 5}]), request=True)
    assert info.value.request_id == 77
    with pytest.raises(DecodeError) as info:
        decode(b"\xc1", request=True)
    assert info.value.request_id == 0


def test_a_commit_of_the_most_extents_decodes_in_request_mode() -> None:
    most = tuple(range(2 * m.MAX_EXTENTS))
    msg = m.UploadCommit(upload_id="u", path="/a", size=2**40, extents=most)
    assert decode(encode(msg, 7, "t"), request=True).msg == msg
    assert m.UploadCommit(upload_id="u", path="/a", size=1).extents is None  # dense


def _commit_frame(extents: object) -> bytes:
    body = {"upload_id": "u", "path": "/a", "size": 10, "extents": extents}
    return msgpack.packb([V, "upload_commit", 9, "t", body])


@pytest.mark.parametrize(("extents", "why"), [
    ([-1, 5], r"int -1 is not an int in \[0, "),
    ([0, 1.5], "float is not an int"),
    (list(range(2 * m.MAX_EXTENTS + 2)), "exceeds max_array_len"),  # before any allocation
    ([[0, 5]], "list is not an int"),
    ("0,5", "str is not"),
], ids=["negative", "float", "too-many", "nested", "str"])
def test_garbage_extents_are_refused_by_the_codec(extents: object, why: str) -> None:
    """Negative, mis-typed, too many or mis-shaped extents never reach the server."""
    with pytest.raises(DecodeError, match=why):
        decode(_commit_frame(extents), request=True)
    with pytest.raises(ValueError, match="extents"):
        m.UploadCommit(upload_id="u", path="/a", size=10,
                       extents=tuple(range(2 * m.MAX_EXTENTS + 2)))


def test_a_reply_of_too_many_extents_is_refused() -> None:
    """The agent decodes replies without the request bounds: the field's own bound holds."""
    body = {"size": 10**9, "version": "v", "extents": list(range(2 * m.MAX_EXTENTS + 2))}
    with pytest.raises(DecodeError, match=f"array of at most {2 * m.MAX_EXTENTS} items"):
        decode(msgpack.packb([V, "extent_map", 3, "", body]))
