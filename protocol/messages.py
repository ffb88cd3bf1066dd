"""The synthfs wire messages, shared by the interposer, the agent and the server.

Every message is a frozen attrs class registered under an explicit ``kind`` tag.
A duplicate tag is a ``TypeError`` at import time. The classes hold data only:
encoding lives in :mod:`protocol.codec`, which trusts nothing it receives and
validates every field through the validators declared here.

Two links use these messages:

* interposer -> agent (``ipc://``, private): ``Hello`` first, then file
  operations and the materialisation calls (``Open``, ``Commit``, ``Sync``).
* agent -> server (``tcp://`` or ``ipc://``): ``Register`` first, then file
  operations, ranged ``Read`` and chunked uploads; every request after
  ``Register`` carries the session token in the envelope (see the codec).

Replies are ``Ok``-style messages or :class:`Error`, which carries a bare Linux
errno and never a traceback.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

from attrs import field, frozen
from attrs.validators import and_, deep_iterable, ge, instance_of, le, max_len, optional

__all__ = [
    "CHUNK_SIZE",
    "MAX_PATH",
    "PROTOCOL_VERSION",
    "REGISTRY",
    "Attrs",
    "Commit",
    "Committed",
    "Data",
    "DirEntry",
    "Done",
    "Error",
    "FileKind",
    "Hello",
    "LinkTarget",
    "List",
    "Listing",
    "Message",
    "Mkdir",
    "Open",
    "Opened",
    "Read",
    "Readlink",
    "Register",
    "Registered",
    "Remove",
    "Rename",
    "RenameFlags",
    "SetAttr",
    "Stat",
    "StatReply",
    "Symlink",
    "Sync",
    "Synced",
    "UploadAbort",
    "UploadChunk",
    "UploadCommit",
    "Welcome",
    "message",
]

PROTOCOL_VERSION = 1
#: Largest payload of one Read reply or UploadChunk (bulk data moves in chunks).
CHUNK_SIZE = 4 * 1024 * 1024
#: Longest path accepted on the wire (Linux PATH_MAX).
MAX_PATH = 4096

_U64 = and_(instance_of(int), ge(0), le(2**64 - 1))
_I64 = and_(instance_of(int), ge(-(2**63)), le(2**63 - 1))
_PATH = and_(instance_of(str), max_len(MAX_PATH))
_NAME = and_(instance_of(str), max_len(255))
_SHORT = and_(instance_of(str), max_len(1024))


class FileKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


class RenameFlags(enum.IntFlag):
    """renameat2 flags, with the kernel's values."""

    NONE = 0
    NOREPLACE = 1
    EXCHANGE = 2


class Message:
    """Base of every wire message; ``kind`` is set by :func:`message`."""

    kind: ClassVar[str]


REGISTRY: dict[str, type[Message]] = {}

_M = TypeVar("_M", bound=type[Message])


def message(kind: str) -> Any:
    """Register a frozen message class under ``kind``; a duplicate is a TypeError."""

    def register(cls: _M) -> _M:
        if kind in REGISTRY:
            raise TypeError(
                f"duplicate message kind {kind!r}: {REGISTRY[kind].__name__} and {cls.__name__}"
            )
        cls.kind = kind
        REGISTRY[kind] = cls
        return cls

    return register


def _as_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


# -- values carried inside messages -------------------------------------------------


@frozen
class Attrs:
    """What a ``stat`` of one repository object says. ``version`` is its etag."""

    kind: FileKind = field(converter=FileKind)
    size: int = field(validator=_U64)
    mode: int = field(validator=and_(instance_of(int), ge(0), le(0o7777)))
    mtime_ns: int = field(validator=_I64)
    ctime_ns: int = field(validator=_I64)
    ino: int = field(validator=_U64)
    nlink: int = field(validator=_U64, default=1)
    version: str = field(validator=_SHORT, default="")


@frozen
class DirEntry:
    name: str = field(validator=_NAME)
    attrs: Attrs = field(validator=instance_of(Attrs))


# -- connection set-up ---------------------------------------------------------------


@message("hello")
@frozen
class Hello(Message):
    """interposer -> agent: first message on a connection."""

    version: int = field(validator=_U64)


@message("welcome")
@frozen
class Welcome(Message):
    """agent -> interposer: the agent's version and the host paths no guest may name."""

    version: int = field(validator=_U64)
    refused_paths: tuple[str, ...] = field(
        converter=_as_tuple, validator=deep_iterable(_PATH, instance_of(tuple))
    )


@message("register")
@frozen
class Register(Message):
    """agent -> server: proof of the bootstrap key without sending it.

    ``mac`` is HMAC-SHA256(key, f"{agent_id}|{nonce}|{timestamp_ns}") in hex.
    """

    version: int = field(validator=_U64)
    agent_id: str = field(validator=_SHORT)
    nonce: str = field(validator=_SHORT)
    timestamp_ns: int = field(validator=_U64)
    mac: str = field(validator=_SHORT)


@message("registered")
@frozen
class Registered(Message):
    """server -> agent: a session token (secret), its id (public) and expiry."""

    token: str = field(validator=_SHORT, repr=False)
    token_id: str = field(validator=_SHORT)
    expires_at_ns: int = field(validator=_U64)
    repo_id: str = field(validator=_SHORT)


# -- file operations (both links) -------------------------------------------------


@message("stat")
@frozen
class Stat(Message):
    """Attributes of ``path`` without following a final symlink (lstat)."""

    path: str = field(validator=_PATH)


@message("stat_reply")
@frozen
class StatReply(Message):
    attrs: Attrs = field(validator=instance_of(Attrs))


@message("list")
@frozen
class List(Message):
    """Every entry of a directory with its attributes (READDIRPLUS)."""

    path: str = field(validator=_PATH)


@message("listing")
@frozen
class Listing(Message):
    attrs: Attrs = field(validator=instance_of(Attrs))
    entries: tuple[DirEntry, ...] = field(
        converter=_as_tuple, validator=deep_iterable(instance_of(DirEntry), instance_of(tuple))
    )


@message("read")
@frozen
class Read(Message):
    """agent -> server: ``length`` bytes (at most CHUNK_SIZE) from ``offset``.

    ``version``, when not empty, must match the object's current version, or the
    server answers ESTALE (the object changed under a multi-chunk fetch).
    """

    path: str = field(validator=_PATH)
    offset: int = field(validator=_U64)
    length: int = field(validator=and_(instance_of(int), ge(0), le(CHUNK_SIZE)))
    version: str = field(validator=_SHORT, default="")


@message("data")
@frozen
class Data(Message):
    data: bytes = field(validator=and_(instance_of(bytes), max_len(CHUNK_SIZE)), repr=False)
    eof: bool = field(validator=instance_of(bool))
    version: str = field(validator=_SHORT)


@message("upload_chunk")
@frozen
class UploadChunk(Message):
    """agent -> server: one chunk of a whole-object upload (idempotent by offset)."""

    upload_id: str = field(validator=_SHORT)
    offset: int = field(validator=_U64)
    data: bytes = field(validator=and_(instance_of(bytes), max_len(CHUNK_SIZE)), repr=False)


@message("upload_commit")
@frozen
class UploadCommit(Message):
    """agent -> server: install the upload as ``path``'s new version, atomically.

    ``size`` is the total the agent sent; a mismatch is EIO and installs nothing.
    ``mode`` is used when the object is new. Resending a committed upload id
    answers the same attributes again (idempotent).
    """

    upload_id: str = field(validator=_SHORT)
    path: str = field(validator=_PATH)
    size: int = field(validator=_U64)
    mode: int = field(validator=and_(instance_of(int), ge(0), le(0o7777)), default=0o644)


@message("upload_abort")
@frozen
class UploadAbort(Message):
    upload_id: str = field(validator=_SHORT)


@message("mkdir")
@frozen
class Mkdir(Message):
    path: str = field(validator=_PATH)
    mode: int = field(validator=and_(instance_of(int), ge(0), le(0o7777)), default=0o755)


@message("remove")
@frozen
class Remove(Message):
    """unlink (``directory`` False) or rmdir (True) of ``path``."""

    path: str = field(validator=_PATH)
    directory: bool = field(validator=instance_of(bool), default=False)


@message("rename")
@frozen
class Rename(Message):
    src: str = field(validator=_PATH)
    dst: str = field(validator=_PATH)
    flags: RenameFlags = field(converter=RenameFlags, default=RenameFlags.NONE)


@message("symlink")
@frozen
class Symlink(Message):
    """Create ``path`` as a symlink whose text is ``target`` (kept verbatim)."""

    target: str = field(validator=_PATH)
    path: str = field(validator=_PATH)


@message("readlink")
@frozen
class Readlink(Message):
    path: str = field(validator=_PATH)


@message("link_target")
@frozen
class LinkTarget(Message):
    target: str = field(validator=_PATH)


@message("setattr")
@frozen
class SetAttr(Message):
    """chmod / utimensat / truncate of ``path``; None leaves a field as it is."""

    path: str = field(validator=_PATH)
    mode: int | None = field(
        validator=optional(and_(instance_of(int), ge(0), le(0o7777))), default=None
    )
    atime_ns: int | None = field(validator=optional(_I64), default=None)
    mtime_ns: int | None = field(validator=optional(_I64), default=None)
    size: int | None = field(validator=optional(_U64), default=None)


# -- materialisation (interposer -> agent only) ----------------------------------------


@message("open")
@frozen
class Open(Message):
    """Materialise ``path`` in the agent's cache for a guest open.

    ``flags`` are the guest's open flags (O_CREAT, O_EXCL, O_TRUNC, access mode);
    the agent applies the creation and truncation semantics against the server.
    """

    path: str = field(validator=_PATH)
    flags: int = field(validator=_U64)
    mode: int = field(validator=and_(instance_of(int), ge(0), le(0o7777)), default=0o644)


@message("opened")
@frozen
class Opened(Message):
    """The host path of the cache file to open, and the object's attributes."""

    host_path: str = field(validator=_PATH)
    attrs: Attrs = field(validator=instance_of(Attrs))


@message("commit")
@frozen
class Commit(Message):
    """Upload the local copy of ``path`` if it changed since its last upload."""

    path: str = field(validator=_PATH)


@message("committed")
@frozen
class Committed(Message):
    attrs: Attrs = field(validator=instance_of(Attrs))


@message("sync")
@frozen
class Sync(Message):
    """Upload every local copy that changed since its last upload."""


@message("synced")
@frozen
class Synced(Message):
    uploaded: int = field(validator=_U64)


@message("done")
@frozen
class Done(Message):
    """A request that succeeded with nothing to return (remove, rename, upload chunk)."""


# -- errors ----------------------------------------------------------------------------


@message("error")
@frozen
class Error(Message):
    """A failed request: a Linux errno and a short human message, nothing else.

    EKEYREJECTED (missing, wrong or revoked token) and EKEYEXPIRED (expired
    token) tell the agent to register again and resend.
    """

    errno: int = field(validator=and_(instance_of(int), ge(1), le(4095)))
    message: str = field(validator=_SHORT, default="")
