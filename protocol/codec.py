"""Encode and decode synthfs messages as msgpack frames; trusts no input.

A frame is one msgpack array ``[version, kind, request_id, token, body]``:

* ``version`` is :data:`PROTOCOL_VERSION`; another version is refused.
* ``kind`` names a registered message class.
* ``request_id`` is chosen by the client and echoed in the reply.
* ``token`` is the session token on agent -> server requests, else ``""``.
* ``body`` maps field names to values; ``Attrs`` travel as arrays in field
  order and ``DirEntry`` as ``[name, attrs]`` (listings are large).

:func:`decode` turns any malformed input into :class:`DecodeError` (a
``ValueError``); it never executes anything from the frame (no pickle) and
never raises anything else.
"""

from __future__ import annotations

import enum
import errno as errno_mod
from typing import Any

import attrs
import msgpack

from protocol.messages import (
    PROTOCOL_VERSION,
    REGISTRY,
    Attrs,
    DirEntry,
    Error,
    Message,
)

__all__ = [
    "MAX_FRAME",
    "DecodeError",
    "Envelope",
    "decode",
    "encode",
    "error_from_exception",
]

#: Largest frame accepted: one chunk of data plus generous room for the envelope.
MAX_FRAME = 8 * 1024 * 1024
_ATTR_FIELDS = tuple(f.name for f in attrs.fields(Attrs))


class DecodeError(ValueError):
    """A frame that is not a valid synthfs message of this protocol version."""


@attrs.frozen
class Envelope:
    """A decoded frame: who asked (request id), with what token, and the message."""

    request_id: int
    msg: Message
    token: str = attrs.field(default="", repr=False)


def _fields(cls: type[Message]) -> tuple[attrs.Attribute[Any], ...]:
    return attrs.fields(cls)  # type: ignore[arg-type]  # every registered Message is attrs


def _plain(value: Any) -> Any:
    if isinstance(value, Attrs):
        return [_plain(getattr(value, name)) for name in _ATTR_FIELDS]
    if isinstance(value, DirEntry):
        return [value.name, _plain(value.attrs)]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def encode(msg: Message, request_id: int = 0, token: str = "") -> bytes:
    """One frame for ``msg``."""
    body = {f.name: _plain(getattr(msg, f.name)) for f in _fields(type(msg))}
    out = msgpack.packb([PROTOCOL_VERSION, msg.kind, request_id, token, body], use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _attrs_from(raw: Any) -> Attrs:
    if not isinstance(raw, list) or len(raw) != len(_ATTR_FIELDS):
        raise DecodeError(f"attrs must be an array of {len(_ATTR_FIELDS)} values")
    return Attrs(**dict(zip(_ATTR_FIELDS, raw, strict=True)))


def _entry_from(raw: Any) -> DirEntry:
    if not isinstance(raw, list) or len(raw) != 2:
        raise DecodeError("a directory entry must be [name, attrs]")
    return DirEntry(name=raw[0], attrs=_attrs_from(raw[1]))


def _field_value(name: str, raw: Any) -> Any:
    if name == "attrs":
        return _attrs_from(raw)
    if name == "entries":
        if not isinstance(raw, list):
            raise DecodeError("entries must be an array")
        return tuple(_entry_from(e) for e in raw)
    if name == "refused_paths":
        if not isinstance(raw, list):
            raise DecodeError("refused_paths must be an array")
        return tuple(raw)
    return raw


def decode(frame: bytes) -> Envelope:
    """The envelope in ``frame``; any malformed input raises :class:`DecodeError`."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise DecodeError("a frame is bytes")
    if len(frame) > MAX_FRAME:
        raise DecodeError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        raw = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise DecodeError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(raw, list) or len(raw) != 5:
        raise DecodeError("a frame is [version, kind, request_id, token, body]")
    version, kind, request_id, token, body = raw
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise DecodeError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise DecodeError(f"unknown message kind {kind!r}")
    if (
        not isinstance(request_id, int)
        or isinstance(request_id, bool)
        or not 0 <= request_id < 2**64
    ):
        raise DecodeError("request_id must be an unsigned 64-bit integer")
    if not isinstance(token, str) or len(token) > 1024:
        raise DecodeError("token must be a short string")
    if not isinstance(body, dict):
        raise DecodeError("body must be a map")
    cls = REGISTRY[kind]
    names = {f.name for f in _fields(cls)}
    unknown = set(body) - names
    if unknown:
        raise DecodeError(f"{kind}: unknown fields {sorted(map(str, unknown))}")
    try:
        values = {name: _field_value(name, value) for name, value in body.items()}
        msg = cls(**values)
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{kind}: {exc}") from None
    return Envelope(request_id=request_id, msg=msg, token=token)


def error_from_exception(exc: BaseException) -> Error:
    """The one place an exception becomes a wire errno.

    An ``OSError`` keeps its errno. Anything else is a bug on our side: it
    becomes EIO, and the caller must log it (fail closed, never guess).
    """
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and 0 < exc.errno < 4096:
        return Error(errno=exc.errno, message=(exc.strerror or "")[:200])
    return Error(errno=errno_mod.EIO, message=f"internal error: {type(exc).__name__}")
