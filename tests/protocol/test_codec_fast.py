"""The codec's generated fast paths: exact types, ranges, trusted construction, joined blobs.

The decoders build instances without running the attrs validators (they check
each field themselves), so these tests hold them to the validators: whatever a
decoder accepts, the validating constructor accepts too, with an equal result;
and every slot refuses wrong types, bools for ints, out-of-range and huge ints.
"""

from __future__ import annotations

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import EXAMPLES  # one example of every kind

from synthfs.protocol import codec
from synthfs.protocol import messages as m
from synthfs.protocol.codec import DecodeError, decode, decoder_source, encode

A = m.Attrs(kind=m.FileKind.FILE, size=12, mode=0o644, mtime_ns=-1, ctime_ns=2, ino=7, nlink=1,
            version="v1", blocks=8)
ATTRS_WIRE = ["file", 12, 0o644, -1, 2, 7, 1, "v1", 8]
SLOTS = [f.name for f in attrs.fields(m.Attrs)]

#: Values of the wrong type for every kind of slot (a bool for an int, bytes for a str...).
WRONG = [None, True, False, 1.0, "1", b"1", [], {}, [1], 2**64 - 1, -(2**63)]


def frame(kind: str, body: object, rid: object = 1, token: object = "") -> bytes:
    out = msgpack.packb([m.PROTOCOL_VERSION, kind, rid, token, body], use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def accepts(field: str, value: object) -> bool:
    """Whether the validating constructor takes ``value`` for ``Attrs.field``."""
    try:
        attrs.evolve(A, **{field: value})
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("slot", range(len(SLOTS)), ids=SLOTS)
@pytest.mark.parametrize("value", WRONG, ids=repr)
def test_every_attrs_slot_refuses_wrong_types(slot: int, value: object) -> None:
    raw = list(ATTRS_WIRE)
    raw[slot] = value
    for kind, body in [("stat_reply", {"attrs": raw}),
                       ("listing", {"attrs": ATTRS_WIRE, "entries": [["a", ATTRS_WIRE],
                                                                     ["b", raw]]})]:
        if accepts(SLOTS[slot], value) and type(value) is type(ATTRS_WIRE[slot]):
            assert decode(frame(kind, body)).msg  # a right type in range: fine
        else:
            with pytest.raises(DecodeError):
                decode(frame(kind, body))


@pytest.mark.parametrize("raw", [ATTRS_WIRE[:7], [*ATTRS_WIRE, "x"], "file", b"file",
                                 {"kind": "file"}, None, ["FILE", *ATTRS_WIRE[1:]],
                                 [1, *ATTRS_WIRE[1:]]])
def test_attrs_shape_and_kind(raw: object) -> None:
    with pytest.raises(DecodeError):
        decode(frame("stat_reply", {"attrs": raw}))


def _int_fields() -> list[tuple[str, str, m.WireInt]]:
    out = []
    for kind, cls in sorted(m.REGISTRY.items()):
        for f in attrs.fields(cls):  # type: ignore[arg-type]
            t = f.validator
            if isinstance(t, m.WireOptional):
                t = t.inner
            if isinstance(t, m.WireInt):
                out.append((kind, f.name, t))
    return out


INT_FIELDS = _int_fields()


def _valid_body(cls: type[m.Message]) -> dict[str, object]:
    example = next(x for x in EXAMPLES if type(x) is cls)
    body: dict[str, object] = msgpack.unpackb(encode(example))[4]
    return body


@pytest.mark.parametrize(("kind", "name", "t"), INT_FIELDS, ids=[f"{k}.{n}" for k, n, _ in
                                                                 INT_FIELDS])
def test_int_fields_refuse_bools_and_out_of_range(kind: str, name: str, t: m.WireInt) -> None:
    body = _valid_body(m.REGISTRY[kind])
    assert decode(frame(kind, body)).msg
    for bad in [True, False, t.lo - 1, t.hi + 1, 1.5, str(t.lo), None if name != "mode" else "x"]:
        if bad is None or (isinstance(bad, int) and not -(2**63) <= bad < 2**64):
            continue  # None is a valid SetAttr value; msgpack cannot carry ints past 64 bits
        with pytest.raises(DecodeError):
            decode(frame(kind, {**body, name: bad}))
    for good in (t.lo, t.hi):
        got = decode(frame(kind, {**body, name: good})).msg
        assert getattr(got, name) == good and type(getattr(got, name)) is not bool


@pytest.mark.parametrize(("kind", "name"), [
    ("upload_commit", "size"), ("read", "offset"), ("read", "length"), ("setattr", "size"),
    ("synced", "uploaded"), ("open", "flags"), ("upload_chunk", "offset"),
])
def test_negative_sizes_and_huge_ints(kind: str, name: str) -> None:
    body = _valid_body(m.REGISTRY[kind])
    for bad in (-1, -(2**63)):
        with pytest.raises(DecodeError):
            decode(frame(kind, {**body, name: bad}))
    if kind != "read":  # u64 fields take the largest msgpack int
        assert getattr(decode(frame(kind, {**body, name: 2**64 - 1})).msg, name) == 2**64 - 1


def test_signed_fields_refuse_past_i64() -> None:
    body = _valid_body(m.SetAttr)
    with pytest.raises(DecodeError):
        decode(frame("setattr", {**body, "mtime_ns": 2**63}))
    with pytest.raises(DecodeError):
        decode(frame("stat_reply", {"attrs": ["file", 1, 0, 2**63, 0, 1, 1, "", 0]}))


def test_bools_are_bools_and_strs_are_strs() -> None:
    body = _valid_body(m.Data)
    for bad in (0, 1, "true", None):
        with pytest.raises(DecodeError):
            decode(frame("data", {**body, "eof": bad}))
    with pytest.raises(DecodeError):
        decode(frame("data", {**body, "version": b"v1"}))
    with pytest.raises(DecodeError):
        decode(frame("data", {**body, "data": "text"}))
    # A path is the one str that may come as bin: a name whose bytes are not UTF-8.
    assert decode(frame("stat", {"path": b"/a\xff"})).msg == m.Stat(path="/a\udcff")
    assert decode(frame("stat", {"path": b"/a"})).msg == m.Stat(path="/a")
    with pytest.raises(DecodeError):
        decode(frame("stat", {"path": b"/a" * 3000}))  # its limit holds for bin too
    with pytest.raises(DecodeError):
        decode(frame("error", {"errno": 5, "message": b"text"}))  # other strs stay str
    out = encode(m.Stat(path="/a\udcff"))
    assert b"\xc4\x03/a\xff" in out  # bin 8 of the name's exact bytes
    with pytest.raises(ValueError):
        m.Stat(path="/a\ud800")  # no byte string gives it: refused when built
    with pytest.raises(ValueError):
        m.Error(errno=5, message="\udcff")  # only names carry bytes that are not UTF-8


def test_envelope_refuses_bools_for_ints() -> None:
    with pytest.raises(DecodeError):
        decode(frame("stat", {"path": "/a"}, rid=True))
    with pytest.raises(DecodeError):
        decode(frame("stat", {"path": "/a"}, token=b"tok"))
    with pytest.raises(DecodeError):
        # an unhashable kind
        decode(msgpack.packb([m.PROTOCOL_VERSION, ["stat"], 1, "", {"path": "/a"}]))


def test_rename_flags_are_u32_and_decode_to_the_enum() -> None:
    for bad in (-1, 2**32, True):
        with pytest.raises(DecodeError):
            decode(frame("rename", {"src": "/a", "dst": "/b", "flags": bad}))
        with pytest.raises((TypeError, ValueError)):
            m.Rename(src="/a", dst="/b", flags=bad)
    got = decode(frame("rename", {"src": "/a", "dst": "/b", "flags": 2})).msg
    assert isinstance(got, m.Rename) and got.flags is m.RenameFlags.EXCHANGE
    assert decode(frame("rename", {"src": "/a", "dst": "/b"})).msg.flags is m.RenameFlags.NONE


def test_missing_and_unknown_fields() -> None:
    with pytest.raises(DecodeError):
        decode(frame("read", {"path": "/a", "offset": 0}))  # length missing
    with pytest.raises(DecodeError):
        decode(frame("stat", {"path": "/a", b"path": "/a"}))  # a bytes key is not a field
    got = decode(frame("read", {"path": "/a", "offset": 0, "length": 1})).msg
    assert got == m.Read(path="/a", offset=0, length=1)  # version defaults to ""
    with pytest.raises(DecodeError):
        decode(frame("welcome", {"version": 1, "refused_paths": ["/a", 3]}))
    with pytest.raises(DecodeError):
        decode(frame("welcome", {"version": 1, "refused_paths": "/a"}))


def test_decoded_values_are_exact_and_hashable() -> None:
    got = decode(frame("stat_reply", {"attrs": ATTRS_WIRE})).msg
    assert isinstance(got, m.StatReply)
    assert got.attrs.kind is m.FileKind.FILE
    assert got == m.StatReply(attrs=A) and hash(got) == hash(m.StatReply(attrs=A))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        got.attrs.size = 3  # type: ignore[misc]
    listing = decode(encode(m.Listing(attrs=A, entries=[m.DirEntry(name="x", attrs=A)]))).msg
    assert isinstance(listing, m.Listing) and isinstance(listing.entries, tuple)


def test_constructors_refuse_bools_for_ints() -> None:
    for name in ("size", "mode", "mtime_ns", "ino", "nlink"):
        with pytest.raises(TypeError):
            attrs.evolve(A, **{name: True})
    with pytest.raises(TypeError):
        m.Error(errno=True)


@pytest.mark.parametrize("size", [0, codec._JOIN_MIN - 1, codec._JOIN_MIN, m.CHUNK_SIZE])
def test_large_blobs_are_joined_into_valid_frames(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    for msg in (m.Data(data=data, eof=False, version="v9"),
                m.UploadChunk(upload_id="u", offset=5, data=data)):
        out = encode(msg, 77, "tok")
        assert decode(out).msg == msg
        assert decode(memoryview(out)).msg == msg
        plain = msgpack.unpackb(out, raw=False)  # any msgpack reader sees the same frame
        assert plain[:4] == [m.PROTOCOL_VERSION, msg.kind, 77, "tok"] and plain[4]["data"] == data


def test_oversized_blob_is_refused() -> None:
    body = _valid_body(m.Data)
    with pytest.raises(DecodeError):
        decode(frame("data", {**body, "data": b"x" * (m.CHUNK_SIZE + 1)}))


def test_every_class_has_generated_code_checking_every_field() -> None:
    for cls in (m.Attrs, m.DirEntry, *m.REGISTRY.values()):
        src = decoder_source(cls)
        for f in attrs.fields(cls):
            assert f"f_{f.name}" in src


# -- the fast path never admits what the validators refuse -----------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=8), st.binary(max_size=8),
    st.sampled_from(["file", "dir", "symlink", "/a", "", 0, 1, 0o7777, 0o10000, 4096, 4095]),
)
_attrs_raw = st.lists(_scalars, min_size=9, max_size=9)
_values = st.one_of(_scalars, _attrs_raw, st.lists(st.one_of(_scalars, st.tuples(
    st.text(max_size=4), _attrs_raw).map(list)), max_size=3))


def _valid(t: m.WireType) -> st.SearchStrategy[object]:
    """Wire values ``t`` accepts, edges included."""
    if isinstance(t, m.WireInt):
        return st.integers(t.lo, t.hi) | st.sampled_from([t.lo, t.hi])
    if isinstance(t, m.WireStr) and t.fs:  # a name: text, or bin (its bytes, not UTF-8)
        return st.text(max_size=6) | st.just("é" * t.max_len) | st.binary(max_size=6)
    if isinstance(t, m.WireStr):
        return st.text(max_size=6) | st.just("é" * t.max_len)
    if isinstance(t, m.WireBytes):
        return st.binary(max_size=6)
    if isinstance(t, m.WireBool):
        return st.booleans()
    if isinstance(t, m.WireOptional):
        return st.none() | _valid(t.inner)
    if isinstance(t, m.WireTuple):
        return st.lists(_valid(t.item), max_size=3)
    if issubclass(t.cls, m.FileKind):
        return st.sampled_from([k.value for k in m.FileKind])
    return st.tuples(*(_valid(f.validator) for f in attrs.fields(t.cls))).map(list)


def _break(v: object, bad: object, i: int) -> object:
    if isinstance(v, list) and v:
        v = list(v)
        v[i % len(v)] = bad if not isinstance(v[i % len(v)], list) else _break(v[i % len(v)],
                                                                              bad, i // 7)
        return v
    return bad


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[str, dict[str, object], bool]:
    kind = draw(st.sampled_from(sorted(m.REGISTRY)))
    fields = attrs.fields(m.REGISTRY[kind])  # type: ignore[arg-type]
    body = {}
    all_valid = True
    for f in fields:  # mostly valid values; sometimes missing, anything, or one bad slot
        how = draw(st.sampled_from(["valid"] * 8 + ["missing", "anything", "one bad slot"]))
        all_valid = all_valid and how == "valid"
        if how == "valid":
            body[f.name] = draw(_valid(f.validator))
        elif how == "anything":
            body[f.name] = draw(_values)
        elif how == "one bad slot":
            body[f.name] = _break(draw(_valid(f.validator)), draw(_scalars), draw(st.integers()))
    return kind, body, all_valid


def _construct(cls: type[m.Message], body: dict[str, object]) -> m.Message:
    """The slow, validating path from the same wire values."""
    values: dict[str, object] = {}
    types = {f.name: f.validator for f in attrs.fields(cls)}  # type: ignore[arg-type]

    def name(v: object) -> object:  # a name that came as bin: the str os.fsdecode gives
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v

    for key, v in body.items():
        t = types.get(key)
        if key == "attrs":
            v = m.Attrs(*v)  # type: ignore[misc]
        elif key == "entries":
            v = [m.DirEntry(name=name(e[0]), attrs=m.Attrs(*e[1])) for e in v]  # type: ignore[index,union-attr,arg-type]
        elif isinstance(t, m.WireStr) and t.fs:
            v = name(v)
        elif isinstance(t, m.WireTuple) and isinstance(t.item, m.WireStr) and t.item.fs:
            v = [name(x) for x in v] if isinstance(v, list) else v
        values[key] = v
    return cls(**values)


@settings(max_examples=800, deadline=None)
@given(_bodies())
def test_fast_decoder_agrees_with_the_validators(
    case: tuple[str, dict[str, object], bool],
) -> None:
    """Accepted: the validating constructor builds an equal message. Valid: accepted."""
    kind, body, all_valid = case
    try:
        got = decode(frame(kind, body)).msg
    except DecodeError:
        assert not all_valid, f"a valid {kind} was refused: {body!r}"[:500]
        return
    assert got == _construct(m.REGISTRY[kind], body)


def test_build_checks_values_as_the_decoder_does() -> None:
    from synthfs.protocol.codec import build

    assert build(m.Attrs, m.FileKind.FILE, 12, 0o644, -1, 2, 7, 1, "v1", 8) == A
    assert build(m.Attrs, *ATTRS_WIRE) == A
    assert build(m.DirEntry, "a", ATTRS_WIRE) == m.DirEntry(name="a", attrs=A)
    for slot, bad in [(1, -1), (1, True), (2, 0o10000), (0, "fifo"), (0, m.RenameFlags.NONE),
                      (7, b"v"), (3, 2**63)]:
        values = list(ATTRS_WIRE)
        values[slot] = bad
        with pytest.raises(DecodeError):
            build(m.Attrs, *values)
    with pytest.raises(DecodeError):
        build(m.Attrs, *ATTRS_WIRE[:8])
    with pytest.raises(TypeError):
        build(m.Stat, "/a")  # messages go through their constructors
