"""Encode and decode synthfs messages as msgpack frames; trusts no input.

A frame is one msgpack array ``[version, kind, request_id, token, body]``:

* ``version`` is :data:`PROTOCOL_VERSION`; another version is refused.
* ``kind`` names a registered message class.
* ``request_id`` is chosen by the client and echoed in the reply. A client
  resends a request under its id; a server runs a mutation resent so (by the
  same agent) only once (``server.service.DuplicateCache``). No version bump:
  an older server runs the resend again, as before, and an older agent gives
  every resend a new id.
* ``token`` is the session token on agent -> server requests, else ``""``.
* ``body`` maps field names to values; ``Attrs`` travel as arrays in field
  order and ``DirEntry`` as ``[name, attrs]`` (listings are large).

:func:`decode` turns any malformed input into :class:`DecodeError` (a
``ValueError``); it never executes anything from the frame (no pickle) and
never raises anything else. Unknown fields are refused, missing ones without a
default are refused, and every value is checked against its field's wire type
(:class:`~protocol.messages.WireInt` and the others, declared once in
:mod:`protocol.messages`): exact types (a bool is not an int, bytes are not a
str) and ranges.

How it is fast (the interposer pays a round trip on every open of a /data
file): for each class the codec generates a plain Python decoder and encoder
from the fields' wire types (as attrs generates ``__init__``): one inline
type-and-range check per field, no validator chains, no per-message dict
comprehensions. A class's code is generated the first time a frame of its kind
is encoded or decoded, not at import: a process pays only for the kinds it
speaks (start-up matters: ``synthfs run`` speaks a handful of the ~35). A
decoded value has been checked by the decoder itself, so the instance is built
through a trusted path (``object.__new__`` and ``object.__setattr__``, as
attrs' own ``__init__`` sets frozen slots) instead of running the validators a
second time. Messages built by hand still go through their validating
``__init__``. A large bytes field (``Data``, ``UploadChunk``) is written last
in its frame with one copy (``b"".join``) instead of msgpack's growing buffer.
:func:`decoder_source` shows the code generated for a class.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import msgpack

from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    REGISTRY,
    Error,
    Message,
    WireBool,
    WireBytes,
    WireInt,
    WireOptional,
    WireStr,
    WireTuple,
    WireType,
    WireValue,
)
from synthfs.protocol.naming import wire_name

__all__ = [
    "HEAD_ROOM",
    "MAX_FRAME",
    "DecodeError",
    "Envelope",
    "build",
    "decode",
    "decoder_source",
    "encode",
    "encode_around",
    "error_from_exception",
]

_V = TypeVar("_V")

#: Largest frame accepted: one chunk of data plus generous room for the envelope.
MAX_FRAME = 8 * 1024 * 1024
_U64_MAX = 2**64 - 1
#: A bytes field at least this long is joined into its frame rather than packed.
_JOIN_MIN = 64 * 1024


class DecodeError(ValueError):
    """A frame that is not a valid synthfs message of this protocol version.

    ``request_id`` is the frame's request id when its envelope got that far (so a
    reply can name it without decoding the frame a second time), else 0.
    """

    request_id: int = 0


@attrs.frozen
class Envelope:
    """A decoded frame: who asked (request id), with what token, and the message."""

    request_id: int
    msg: Message
    token: str = attrs.field(default="", repr=False)


# -- code generation -------------------------------------------------------------------
#
# Value classes (Attrs, DirEntry) travel as arrays in field order, messages as maps.
# For each class we write the source of ``_dec_<Name>(raw)`` and ``_enc_<Name>(obj)``
# and exec it once into a namespace holding only the helpers below, the classes and
# per-field constants (``_c_*``). Nothing from a frame ever reaches this step.


def _bad(where: str, value: Any, want: str) -> None:
    got = type(value).__name__
    if type(value) is int:
        got = f"int {value}" if abs(value) < 10**30 else "a huge int"
    raise DecodeError(f"{where}: {got} is not {want}")


def _unknown(where: str, body: dict[Any, Any], names: frozenset[str]) -> None:
    extra = sorted(repr(k)[:40] for k in body if k not in names)
    raise DecodeError(f"{where}: unknown fields {extra}")


_MISSING = object()


def _fsdecode(raw: bytes) -> str:
    """A name that came as bin (not UTF-8), as the str ``os.fsdecode`` gives."""
    return raw.decode("utf-8", "surrogateescape")


class _Gen:
    """The source of every decoder and encoder, and the namespace it runs in."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {
            "_bad": _bad, "_unknown": _unknown, "_new": object.__new__,
            "_set": object.__setattr__, "_MISSING": _MISSING, "_tuple": tuple,
            "_fsdecode": _fsdecode, "_fsencode": wire_name,
        }
        self.source: dict[type, str] = {}
        self.decoders: dict[type, Callable[[Any], Any]] = {}
        self.encoders: dict[type, Callable[[Any], Any]] = {}
        self._n = 0

    def const(self, value: Any) -> str:
        self._n += 1
        name = f"_c_{self._n}"
        self.ns[name] = value
        return name

    # -- checks: lines that leave the checked, final value in ``var`` --------------------

    def check(self, t: WireType, var: str, where: str, indent: str) -> list[str]:
        bad = f"_bad({where!r}, {var}, {t.describe()!r})"
        if isinstance(t, WireInt):
            return [f"{indent}if {var}.__class__ is not int or not {t.lo} <= {var} <= {t.hi}:",
                    f"{indent}    {bad}"]
        if isinstance(t, WireStr) and t.fs:
            # A name that is not UTF-8 comes as bin: back to the str os.fsdecode gives.
            return [f"{indent}if {var}.__class__ is bytes:",
                    f"{indent}    {var} = _fsdecode({var})",
                    f"{indent}if {var}.__class__ is not str or len({var}) > {t.max_len}:",
                    f"{indent}    {bad}"]
        if isinstance(t, WireStr | WireBytes):
            typ = "str" if isinstance(t, WireStr) else "bytes"
            return [f"{indent}if {var}.__class__ is not {typ} or len({var}) > {t.max_len}:",
                    f"{indent}    {bad}"]
        if isinstance(t, WireBool):
            return [f"{indent}if {var}.__class__ is not bool:", f"{indent}    {bad}"]
        if isinstance(t, WireOptional):
            return [f"{indent}if {var} is not None:",
                    *self.check(t.inner, var, where, indent + "    ")]
        if isinstance(t, WireTuple):
            item = self.item_fn(t.item, where + "[]")
            most = "" if t.max_len is None else f" or len({var}) > {t.max_len}"
            return [f"{indent}if {var}.__class__ is not list{most}:", f"{indent}    {bad}",
                    f"{indent}{var} = _tuple([{item}(x) for x in {var}])"]
        if isinstance(t, WireValue) and issubclass(t.cls, enum.Enum):
            # The wire carries the value (a str); build() may also pass the member itself.
            members = self.const({x.value: x for x in t.cls})
            types = self.const((type(next(iter(t.cls)).value), t.cls))
            return [f"{indent}_m = {members}.get({var}) if {var}.__class__ in {types} else None",
                    f"{indent}if _m is None:", f"{indent}    {bad}", f"{indent}{var} = _m"]
        if isinstance(t, WireValue) and attrs.has(t.cls):
            return [f"{indent}{var} = {self.decoder_name(t.cls)}({var})"]
        raise TypeError(f"{where}: the codec has no decoder for {t!r}")

    def item_fn(self, t: WireType, where: str) -> str:
        if isinstance(t, WireValue) and attrs.has(t.cls):
            return self.decoder_name(t.cls)
        self._n += 1
        name = f"_item_{self._n}"
        src = "\n".join([f"def {name}(v):", *self.check(t, "v", where, "    "), "    return v"])
        exec(compile(src, f"<codec item {where}>", "exec"), self.ns)  # noqa: S102
        return name

    def assign(self, cls: type, name: str) -> str:
        """The line setting field ``name`` of the new frozen instance ``obj``.

        Through the slot's own descriptor when the class has slots (attrs' default;
        ~15% faster than ``object.__setattr__``, which looks the same descriptor up
        by name), else through ``object.__setattr__``.
        """
        slot = cls.__dict__.get(name)
        if isinstance(slot, types.MemberDescriptorType):
            setter = f"_set_{cls.__name__}_{name}"
            self.ns[setter] = slot.__set__
            return f"    {setter}(obj, f_{name})"
        return f"    _set(obj, {name!r}, f_{name})"

    def decoder_name(self, cls: type) -> str:
        if cls not in self.decoders:
            self.build(cls)
        return f"_dec_{cls.__name__}"

    def encoder_name(self, cls: type) -> str:
        if cls not in self.encoders:
            self.build(cls)
        return f"_enc_{cls.__name__}"

    def encode_expr(self, t: WireType, expr: str) -> str:
        """An expression for the wire form of ``expr`` (enums and str/int pass as they are)."""
        if isinstance(t, WireValue) and attrs.has(t.cls):
            return f"{self.encoder_name(t.cls)}({expr})"
        if isinstance(t, WireTuple) and isinstance(t.item, WireValue) and attrs.has(t.item.cls):
            return f"[{self.encoder_name(t.item.cls)}(x) for x in {expr}]"
        if isinstance(t, WireOptional) and isinstance(t.inner, WireValue | WireTuple):
            return f"(None if {expr} is None else {self.encode_expr(t.inner, expr)})"
        if isinstance(t, WireStr) and t.fs:
            return f"({expr} if {expr}.isascii() else _fsencode({expr}))"
        if isinstance(t, WireTuple) and isinstance(t.item, WireStr) and t.item.fs:
            return f"[x if x.isascii() else _fsencode(x) for x in {expr}]"
        return expr

    # -- one class ------------------------------------------------------------------

    def build(self, cls: type) -> None:
        """Generate the decoder and encoder of ``cls`` (and of the classes it holds)."""
        self.decoders[cls] = self.encoders[cls] = _unbuilt  # recursion guard
        try:
            self._write(cls)
        except BaseException:
            del self.decoders[cls], self.encoders[cls]  # a later use tries again, and fails alike
            raise

    def _write(self, cls: type) -> None:
        name = cls.__name__
        self.ns[name] = cls
        fields = attrs.fields(cls)
        if issubclass(cls, Message):
            as_map, kind = True, cls.kind
        else:
            as_map, kind = False, name
        dec: list[str] = [f"def _dec_{name}(raw):"]
        if as_map:
            names = self.const(frozenset(f.name for f in fields))
            dec += ["    if raw.__class__ is not dict:",
                    f"        _bad({kind!r}, raw, 'a map of fields')",
                    f"    if not raw.keys() <= {names}:",
                    f"        _unknown({kind!r}, raw, {names})"]
        else:
            dec += [f"    if raw.__class__ is not list or len(raw) != {len(fields)}:",
                    f"        _bad({name!r}, raw, 'an array of {len(fields)} values')"]
            if fields:
                dec.append(f"    {', '.join(f'f_{f.name}' for f in fields)}, = raw")
        for f in fields:
            t = f.validator
            if not isinstance(t, WireInt | WireStr | WireBytes | WireBool | WireValue
                              | WireOptional | WireTuple):
                raise TypeError(f"{name}.{f.name}: its validator must be a wire type, not {t!r}")
            if isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
                raise TypeError(f"{name}.{f.name}: the codec takes plain defaults only")
            var, where = f"f_{f.name}", f"{kind}.{f.name}"
            lines = self.check(t, var, where, "    ")
            final = isinstance(t, WireTuple) or (isinstance(t, WireValue)
                                                 and issubclass(t.cls, enum.Enum))
            if f.converter is not None and not final:
                lines.append(f"    {var} = {self.const(f.converter)}({var})")
            if not as_map:
                dec += lines
            elif f.default is attrs.NOTHING:
                if isinstance(t, WireOptional):
                    raise TypeError(f"{name}.{f.name}: a required field cannot accept None")
                dec += [f"    {var} = raw.get({f.name!r})", *lines]  # missing: None, refused
            else:
                dec += [f"    {var} = raw.get({f.name!r}, _MISSING)",
                        f"    if {var} is _MISSING:",
                        f"        {var} = {self.const(f.default)}",
                        "    else:", *("    " + line for line in lines)]
        dec += [f"    obj = _new({name})",
                *(self.assign(cls, f.name) for f in fields),
                "    return obj"]
        values = [(f.name, self.encode_expr(f.validator, f"obj.{f.name}")) for f in fields]
        if as_map:
            body = ", ".join(f"{n!r}: {e}" for n, e in values)
            enc = [f"def _enc_{name}(obj):", f"    return {{{body}}}"]
        else:
            enc = [f"def _enc_{name}(obj):",
                   f"    return ({''.join(e + ', ' for _, e in values)})"]
        src = "\n".join(dec) + "\n\n\n" + "\n".join(enc) + "\n"
        exec(compile(src, f"<codec {name}>", "exec"), self.ns)  # noqa: S102
        self.source[cls] = src
        self.decoders[cls] = self.ns[f"_dec_{name}"]
        self.encoders[cls] = self.ns[f"_enc_{name}"]


def _unbuilt(raw: Any) -> Any:  # pragma: no cover - only seen while a class is being built
    raise DecodeError("codec: a class refers to itself")


_GEN = _Gen()
#: Held while code is generated: the agent and the server decode on several threads,
#: and a half-built class (``_unbuilt``) must never be seen by another one.
_GEN_LOCK = threading.RLock()
#: kind -> (class, decoder of its body, encoder of its body), filled on first use
_KINDS: dict[str, tuple[type[Message], Callable[[Any], Any], Callable[[Any], Any]]] = {}
#: message class -> the name of its bytes field, if it has one (written last in a frame)
_BLOB: dict[type[Message], str] = {}
#: message class -> the most bytes its bytes field holds
_BLOB_MAX: dict[type[Message], int] = {}


def _coders(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The decoder and encoder of ``cls``, generated now if this is their first use."""
    dec = _GEN.decoders.get(cls)
    if dec is None or dec is _unbuilt:
        with _GEN_LOCK:
            if cls not in _GEN.decoders:  # else built meanwhile, or being built by this thread
                _GEN.build(cls)
    return _GEN.decoders[cls], _GEN.encoders[cls]


def _kind(kind: str) -> tuple[type[Message], Callable[[Any], Any], Callable[[Any], Any]] | None:
    """The codec entry of ``kind``, its code generated on first use (None: no such kind)."""
    entry = _KINDS.get(kind)
    if entry is None and kind in REGISTRY:
        cls = REGISTRY[kind]
        dec, enc = _coders(cls)
        for f in attrs.fields(cls):  # type: ignore[arg-type]
            if isinstance(f.validator, WireBytes):
                _BLOB[cls] = f.name
                _BLOB_MAX[cls] = f.validator.max_len
        entry = _KINDS[kind] = (cls, dec, enc)
    return entry


def build(cls: type[_V], *values: Any) -> _V:
    """A value class (``Attrs``, ``DirEntry``) from its field values in order, checked.

    The checks are the decoder's (exact types, ranges; a nested value may be given
    as its list of field values), at a third of the cost of the attrs validators:
    for producers of many values, such as a backend listing a directory. A value
    that does not pass raises :class:`DecodeError` (a ``ValueError``).
    """
    if issubclass(cls, Message):
        raise TypeError("build() makes value classes; a message is built by its constructor")
    decoder = _GEN.decoders.get(cls)
    if decoder is None or decoder is _unbuilt:
        decoder = _coders(cls)[0]
    out: _V = decoder(list(values))
    return out


def decoder_source(cls: type) -> str:
    """The generated decoder and encoder of ``cls`` (a message or value class), as text."""
    _coders(cls)
    return _GEN.source[cls]


# -- frames ------------------------------------------------------------------------------

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_new = object.__new__
_set = object.__setattr__


def encode(msg: Message, request_id: int = 0, token: str = "") -> bytes:
    """One frame for ``msg``."""
    cls = type(msg)
    entry = _KINDS.get(msg.kind)
    if entry is None or entry[0] is not cls:
        entry = _kind(msg.kind)
        if entry is None or entry[0] is not cls:
            raise TypeError(f"{cls.__name__} is not a registered message class")
    body = entry[2](msg)
    blob = _BLOB.get(cls)
    if blob is not None and len(body[blob]) >= _JOIN_MIN:
        return _encode_joined(msg.kind, request_id, token, body, blob)
    out = _packb([PROTOCOL_VERSION, msg.kind, request_id, token, body], use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _encode_joined(kind: str, request_id: int, token: str, body: dict[str, Any],
                   blob: str) -> bytes:
    """The frame of a message with a large bytes field: that field last, one copy of it."""
    data = body.pop(blob)
    return b"".join((_blob_head(kind, request_id, token, body, blob, len(data)), data))


def _blob_head(kind: str, request_id: int, token: str, body: dict[str, Any], blob: str,
               n: int) -> bytes:
    """Every byte of a frame before its ``n``-byte field ``blob``, which ends the frame."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_array_header(5)
    for v in (PROTOCOL_VERSION, kind, request_id, token):
        packer.pack(v)
    packer.pack_map_header(len(body) + 1)
    for k, v in body.items():
        packer.pack(k)
        packer.pack(v)
    packer.pack(blob)
    if n > 0xFFFFFFFF:
        raise ValueError(f"{kind}.{blob}: {n} bytes do not fit a msgpack bin")
    head: bytes = packer.bytes()
    return b"".join((head, b"\xc6", n.to_bytes(4, "big")))


#: Bytes to leave before a bulk field read in place, for its frame's header
#: (:func:`encode_around`): the envelope, a version string of 1,024 characters, the rest.
HEAD_ROOM = 8192


def encode_around(msg: Message, request_id: int, token: str, buf: bytearray, start: int,
                  n: int) -> memoryview:
    """The frame of ``msg`` whose bytes field is ``buf[start:start + n]``, without copying it.

    ``msg`` carries ``b""`` in that field (a placeholder); the frame's header is
    written into ``buf`` just before ``start`` (at most :data:`HEAD_ROOM` bytes; a
    ``ValueError`` when it does not fit) and the frame is the returned view of
    ``buf``: it decodes to the message holding that data (for 64 KiB or more, it is
    byte for byte the frame :func:`encode` gives).
    The bulk path of the server: a read lands in the buffer it is sent from.
    """
    entry = _kind(msg.kind)
    if entry is None or entry[0] is not type(msg):
        raise TypeError(f"{type(msg).__name__} is not a registered message class")
    blob = _BLOB.get(type(msg))
    if blob is None:
        raise TypeError(f"{msg.kind} has no bytes field")
    body = entry[2](msg)
    if body.pop(blob) != b"":
        raise ValueError(f"{msg.kind}.{blob} must be the b\"\" placeholder")
    if not 0 <= n <= _BLOB_MAX[type(msg)] or start + n > len(buf):
        raise ValueError(f"{msg.kind}.{blob}: {n} bytes at {start} do not fit")
    head = _blob_head(msg.kind, request_id, token, body, blob, n)
    first = start - len(head)
    if first < 0:
        raise ValueError(f"{msg.kind}: a header of {len(head)} bytes does not fit in {start}")
    buf[first:start] = head
    return memoryview(buf)[first:start + n]


# -- the bounds of a request --------------------------------------------------------------
#
# A frame from a peer that has not shown a token yet (the server's socket, the agent's)
# is decoded with msgpack's limits set from the message schema, and with a budget of
# containers, so that no frame costs more than a small constant per byte: a declared
# length beyond the schema's is refused when its header is read (before anything is
# allocated for it), and a frame of many tiny arrays or maps (each a Python object of
# ~60 bytes for one byte of input) is refused after ``_REQUEST_CONTAINERS`` of them. A
# request's containers are the envelope, the body, a few value classes and flat arrays
# of bounded length (WireTuple with ``max_len``: an UploadCommit's extents), whose items
# each take at least a byte of the frame.


def _schema_bounds() -> tuple[int, int, int, int]:
    """(longest str in bytes, longest bytes, most fields of a message, most of a value)."""
    strs, blobs, fields, values = 1024, 0, 0, 5  # kind and token; the envelope's 5
    seen: set[type] = set()

    def walk(t: Any) -> None:
        nonlocal strs, blobs, values
        if isinstance(t, WireStr):
            strs = max(strs, 4 * t.max_len)  # characters -> UTF-8 bytes
        elif isinstance(t, WireBytes):
            blobs = max(blobs, t.max_len)
        elif isinstance(t, WireOptional):
            walk(t.inner)
        elif isinstance(t, WireTuple):
            if t.max_len is not None:
                values = max(values, t.max_len)
            walk(t.item)
        elif isinstance(t, WireValue) and attrs.has(t.cls) and t.cls not in seen:
            seen.add(t.cls)
            values = max(values, len(attrs.fields(t.cls)))
            for f in attrs.fields(t.cls):
                walk(f.validator)

    for cls in REGISTRY.values():
        fields = max(fields, len(attrs.fields(cls)))  # type: ignore[arg-type]
        for f in attrs.fields(cls):  # type: ignore[arg-type]
            walk(f.validator)
    return strs, blobs, fields, values


_MAX_STR, _MAX_BIN, _MAX_FIELDS, _MAX_VALUE = _schema_bounds()
#: Containers (arrays and maps) a request may hold: the envelope, the body, value classes.
_REQUEST_CONTAINERS = 16
_REQUEST_LIMITS: dict[str, int] = {
    "max_str_len": _MAX_STR, "max_bin_len": _MAX_BIN, "max_array_len": _MAX_VALUE,
    "max_map_len": _MAX_FIELDS, "max_ext_len": 0,
}


class _TooManyContainers(Exception):
    pass


def _unpack_request(frame: bytes | memoryview) -> Any:
    """msgpack of a request, within the schema's bounds (see above)."""
    count = 0

    def counted(x: Any) -> Any:
        nonlocal count
        count += 1
        if count > _REQUEST_CONTAINERS:
            raise _TooManyContainers
        return x

    return _unpackb(frame, raw=False, use_list=True, strict_map_key=True,
                    list_hook=counted, object_hook=counted, **_REQUEST_LIMITS)


def decode(frame: bytes | memoryview, *, request: bool = False, views: bool = False
           ) -> Envelope:
    """The envelope in ``frame``; any malformed input raises :class:`DecodeError`.

    ``request``: the frame comes from a peer that has not been authenticated yet (the
    server's and the agent's sockets): decode it within the schema's bounds, so it
    costs at most a small constant per byte whatever it declares.

    ``views`` (replies only): a large bytes field that ends the frame, as
    :func:`encode` writes it, is given as a read-only ``memoryview`` of ``frame``
    instead of a copy (the agent writes a fetched chunk from the received frame
    itself). Every other field is decoded and checked as usual, and the field's
    length against its bound; a frame of any other shape is decoded as usual.
    """
    if frame.__class__ is not bytes and not isinstance(frame, bytes | bytearray | memoryview):
        raise DecodeError("a frame is bytes")
    if len(frame) > MAX_FRAME:
        raise DecodeError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    if views and not request and len(frame) >= _JOIN_MIN:
        env = _decode_tail(frame)
        if env is not None:
            return env
    try:
        if request:
            raw = _unpack_request(frame)
        else:
            raw = _unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except _TooManyContainers:
        raise DecodeError(f"more than {_REQUEST_CONTAINERS} arrays or maps in a request") \
            from None
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}"[:200]) from None
    if raw.__class__ is not list or len(raw) != 5:
        raise DecodeError("a frame is [version, kind, request_id, token, body]")
    version, kind, request_id, token, body = raw
    try:
        return _envelope(version, kind, request_id, token, body)
    except DecodeError as exc:
        if request_id.__class__ is int and 0 <= request_id <= _U64_MAX:
            exc.request_id = request_id
        raise


#: How much of a frame's start :func:`_decode_tail` reads for the header before its field.
_TAIL_SCAN = 2 * HEAD_ROOM


def _decode_tail(frame: bytes | bytearray | memoryview) -> Envelope | None:
    """``frame`` decoded with its trailing bytes field as a view of it; None: not that shape.

    Only the header (at most :data:`_TAIL_SCAN` bytes) is unpacked; the last field of
    the body must be the message's bytes field, a msgpack bin ending exactly at the
    frame's end. Anything else, garbage included, is left to the ordinary decode
    (which gives the usual errors): this path accepts no frame that one refuses.
    """
    view = memoryview(frame).toreadonly()
    try:
        u = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True,
                             max_buffer_size=_TAIL_SCAN)
        u.feed(view[:_TAIL_SCAN])
        if u.read_array_header() != 5:
            return None
        version, kind, request_id, token = u.unpack(), u.unpack(), u.unpack(), u.unpack()
        entry = _kind(kind) if kind.__class__ is str else None
        blob = _BLOB.get(entry[0]) if entry is not None else None
        if blob is None or entry is None:
            return None
        fields = u.read_map_header()
        if not 1 <= fields <= _MAX_FIELDS:
            return None
        body: dict[str, Any] = {}
        for _ in range(fields - 1):
            k = u.unpack()
            if k.__class__ is not str or k == blob:
                return None
            body[k] = u.unpack()
        if u.unpack() != blob:
            return None
        at = u.tell()
        tag = view[at]
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(tag)
        if width is None:
            return None
        n = int.from_bytes(view[at + 1:at + 1 + width], "big")
        start = at + 1 + width
        if start + n != len(view):
            return None
    except Exception:  # torn, garbage, too long a header: the ordinary decode says why
        return None
    body[blob] = b""
    try:
        env = _envelope(version, kind, request_id, token, body)
    except DecodeError as exc:
        if request_id.__class__ is int and 0 <= request_id <= _U64_MAX:
            exc.request_id = request_id
        raise
    most = _BLOB_MAX[type(env.msg)]
    if n > most:
        too_long = DecodeError(f"{kind}.{blob}: bytes of {n} is not bytes of at most {most}")
        too_long.request_id = env.request_id
        raise too_long
    _set(env.msg, blob, view[start:])
    return env


def _envelope(version: Any, kind: Any, request_id: Any, token: Any, body: Any) -> Envelope:
    if version.__class__ is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"protocol version {version!r} is not {PROTOCOL_VERSION}"[:200])
    entry = _KINDS.get(kind) if kind.__class__ is str else None
    if entry is None and (kind.__class__ is not str or (entry := _kind(kind)) is None):
        raise DecodeError(f"unknown message kind {kind!r}"[:200])
    if request_id.__class__ is not int or not 0 <= request_id <= _U64_MAX:
        raise DecodeError("request_id must be an unsigned 64-bit integer")
    if token.__class__ is not str or len(token) > 1024:
        raise DecodeError("token must be a short string")
    try:
        msg = entry[1](body)
    except DecodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # a converter refusing a value
        raise DecodeError(f"{kind}: {exc}"[:200]) from None
    env: Envelope = _new(Envelope)
    _set(env, "request_id", request_id)
    _set(env, "msg", msg)
    _set(env, "token", token)
    return env


def error_from_exception(exc: BaseException) -> Error:
    """The one place an exception becomes a wire errno.

    An ``OSError`` keeps its errno. Anything else is a bug on our side: it
    becomes EIO, and the caller must log it (fail closed, never guess).
    """
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and 0 < exc.errno < 4096:
        # (a name in the text may hold bytes that are not UTF-8: shown escaped, \udcff)
        text = (exc.strerror or "")[:200].encode("utf-8", "backslashreplace").decode()
        return Error(errno=exc.errno, message=text[:200])
    return Error(errno=errno_mod.EIO, message=f"internal error: {type(exc).__name__}")
