"""The synthfs wire messages, shared by the interposer, the agent and the server.

Every message is a frozen attrs class registered under an explicit ``kind`` tag.
A duplicate tag is a ``TypeError`` at import time. The classes hold data only:
encoding lives in :mod:`protocol.codec`, which trusts nothing it receives and
checks every field against the wire type declared here as its validator
(:class:`WireInt`, :class:`WireStr`...): the constructor runs it, and the codec
generates its decoders from it.

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
import operator
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import attrs
from attrs import field, frozen

from synthfs.extents import MAX_EXTENTS

__all__ = [
    "CHUNK_SIZE",
    "MAX_EXTENTS",
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
    "ExtentMap",
    "Extents",
    "FileKind",
    "Hello",
    "Link",
    "LinkTarget",
    "List",
    "Listing",
    "Locate",
    "Located",
    "Message",
    "Mkdir",
    "Open",
    "Opened",
    "Progress",
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
    "WireBool",
    "WireBytes",
    "WireInt",
    "WireOptional",
    "WireStr",
    "WireTuple",
    "WireType",
    "WireValue",
    "message",
]

#: 2: names are bytes (a path that is not UTF-8 travels as bin), ``Attrs.blocks``, ``Link``.
#: 3: sparse files: ``UploadCommit.extents``, ``Extents``/``ExtentMap``.
PROTOCOL_VERSION = 3
#: Largest payload of one Read reply or UploadChunk (bulk data moves in chunks).
CHUNK_SIZE = 4 * 1024 * 1024
#: Longest path accepted on the wire (Linux PATH_MAX).
MAX_PATH = 4096

_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


# -- wire types of fields ------------------------------------------------------------
#
# Every field's validator is one of the small frozen classes below: one plain check
# when a message is built (not a chain of attrs validators: building an ``Attrs``
# through ``and_(instance_of, ge, le)`` chains cost tens of µs), and a description
# of the field's wire type that :mod:`protocol.codec` reads to build its decoders.
# A field's type and limits are declared once, here.


class _Value:
    """``repr``, ``==`` and ``hash`` of every class here, written once.

    attrs would generate and compile these three for each of the ~45 classes at
    import (half of its per-class cost; start-up matters, every synthfs process
    imports this module), so the classes say ``repr=False, eq=False`` and inherit
    these instead. They behave as attrs' own: ``Stat(path='/a')`` without the
    ``repr=False`` fields; equal when of the same class with equal fields
    (``NotImplemented`` for another class); a hash of the fields.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _shown(type(self)))
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        key = _key(type(self))
        return bool(key(self) == key(other))

    def __hash__(self) -> int:
        return hash((type(self), _key(type(self))(self)))


_KEYS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
_SHOWN: dict[type, tuple[str, ...]] = {}


def _key(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple of an instance's field values (what == and hash compare)."""
    key = _KEYS.get(cls)
    if key is None:
        names = tuple(f.name for f in attrs.fields(cls))
        if len(names) >= 2:
            key = operator.attrgetter(*names)
        else:
            key = lambda obj: tuple(getattr(obj, n) for n in names)  # noqa: E731
        _KEYS[cls] = key
    return key


def _shown(cls: type) -> tuple[str, ...]:
    shown = _SHOWN.get(cls)
    if shown is None:
        shown = _SHOWN[cls] = tuple(f.name for f in attrs.fields(cls) if f.repr)
    return shown


def _type_error(attribute: attrs.Attribute[Any], value: Any, want: str) -> TypeError:
    return TypeError(f"{attribute.name} must be {want}, not {type(value).__name__}")


@frozen(repr=False, eq=False)
class WireInt(_Value):
    """An int in ``[lo, hi]``; a bool is not an int here (``True`` is not a size)."""

    lo: int
    hi: int

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value.__class__ is not int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _type_error(attribute, value, "an int")
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{attribute.name} must be in [{self.lo}, {self.hi}], not {value}")

    def describe(self) -> str:
        return f"an int in [{self.lo}, {self.hi}]"


@frozen(repr=False, eq=False)
class WireStr(_Value):
    """A str of at most ``max_len`` characters.

    ``fs``: a Linux name or path, whose bytes need not be UTF-8. In a process it is
    the str ``os.fsdecode`` gives (a byte that is not UTF-8 is a lone surrogate
    U+DC80..U+DCFF, as Python's ``os`` functions take and give it); on the wire
    it is a msgpack str when it is UTF-8, else a bin of its exact bytes
    (``os.fsencode``). Either way no byte is lost or changed.
    """

    max_len: int
    fs: bool = False

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, str):
            raise _type_error(attribute, value, "a str")
        if len(value) > self.max_len:
            raise ValueError(f"{attribute.name} is longer than {self.max_len} characters")
        if not value.isascii():
            try:
                value.encode("utf-8", "surrogateescape" if self.fs else "strict")
            except UnicodeEncodeError:
                raise ValueError(f"{attribute.name} holds a character no byte string "
                                 "gives") from None

    def describe(self) -> str:
        if self.fs:
            return f"a name of at most {self.max_len} characters (str, or bin if not UTF-8)"
        return f"a str of at most {self.max_len} characters"


@frozen(repr=False, eq=False)
class WireBytes(_Value):
    """A bytes of at most ``max_len`` bytes."""

    max_len: int

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes):
            raise _type_error(attribute, value, "bytes")
        if len(value) > self.max_len:
            raise ValueError(f"{attribute.name} is longer than {self.max_len} bytes")

    def describe(self) -> str:
        return f"bytes of at most {self.max_len}"


@frozen(repr=False, eq=False)
class WireBool(_Value):
    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bool):
            raise _type_error(attribute, value, "a bool")

    def describe(self) -> str:
        return "a bool"


@frozen(repr=False, eq=False)
class WireValue(_Value):
    """An instance of ``cls``: a value class (``Attrs``, ``DirEntry``) or an enum."""

    cls: type

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, self.cls):
            raise _type_error(attribute, value, f"a {self.cls.__name__}")

    def describe(self) -> str:
        if issubclass(self.cls, enum.Enum):
            return f"one of {sorted(str(x.value) for x in self.cls)}"
        return f"a {self.cls.__name__}"


@frozen(repr=False, eq=False)
class WireOptional(_Value):
    """None, or what ``inner`` accepts."""

    inner: WireType

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            self.inner(inst, attribute, value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"


@frozen(repr=False, eq=False)
class WireTuple(_Value):
    """A tuple whose every item ``item`` accepts; of at most ``max_len`` items if given.

    A request's array must have a ``max_len`` (the codec bounds what an
    unauthenticated peer may declare by it); a reply's may be unbounded.
    """

    item: WireType
    max_len: int | None = None

    def __call__(self, inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple):
            raise _type_error(attribute, value, "a tuple")
        if self.max_len is not None and len(value) > self.max_len:
            raise ValueError(f"{attribute.name} has more than {self.max_len} items")
        check = self.item
        for v in value:
            check(inst, attribute, v)

    def describe(self) -> str:
        most = "" if self.max_len is None else f" of at most {self.max_len} items"
        return f"an array{most} of {self.item.describe()}"


WireType = WireInt | WireStr | WireBytes | WireBool | WireValue | WireOptional | WireTuple

_U64 = WireInt(0, _U64_MAX)
_I64 = WireInt(_I64_MIN, _I64_MAX)
_MODE = WireInt(0, 0o7777)
_PATH = WireStr(MAX_PATH, fs=True)
_NAME = WireStr(255, fs=True)
_SHORT = WireStr(1024)
_URL = WireStr(8192)
_DATA = WireBytes(CHUNK_SIZE)
_BOOL = WireBool()


class FileKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


class RenameFlags(enum.IntFlag):
    """renameat2 flags, with the kernel's values."""

    NONE = 0
    NOREPLACE = 1
    EXCHANGE = 2


def _rename_flags(value: Any) -> RenameFlags:
    """RenameFlags of an unsigned 32-bit int (``RenameFlags(-1)`` would quietly be 3)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"flags must be an int, not {type(value).__name__}")
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"flags must be in [0, {_U32_MAX}], not {value}")
    return RenameFlags(value)


class Message(_Value):
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


def _as_optional_tuple(values: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


#: Data extents on the wire: flat ``(offset0, length0, offset1, length1, ...)`` (one
#: array, not one per extent: a request holds few containers, see the codec).
#: The wire type checks the ints; ``synthfs.extents.check_extents`` their order,
#: overlap and bounds, where the size is known.
_EXTENTS = WireTuple(_U64, max_len=2 * MAX_EXTENTS)


# -- values carried inside messages -------------------------------------------------


@frozen(repr=False, eq=False)
class Attrs(_Value):
    """What a ``stat`` of one repository object says. ``version`` is its etag."""

    kind: FileKind = field(converter=FileKind, validator=WireValue(FileKind))
    size: int = field(validator=_U64)
    mode: int = field(validator=_MODE)
    mtime_ns: int = field(validator=_I64)
    ctime_ns: int = field(validator=_I64)
    ino: int = field(validator=_U64)
    nlink: int = field(validator=_U64, default=1)
    version: str = field(validator=_SHORT, default="")
    #: 512-byte blocks the repository allocates for it (st_blocks; what du counts)
    blocks: int = field(validator=_U64, default=0)


@frozen(repr=False, eq=False)
class DirEntry(_Value):
    name: str = field(validator=_NAME)
    attrs: Attrs = field(validator=WireValue(Attrs))


# -- connection set-up ---------------------------------------------------------------


@message("hello")
@frozen(repr=False, eq=False)
class Hello(Message):
    """interposer -> agent: first message on a connection."""

    version: int = field(validator=_U64)


@message("welcome")
@frozen(repr=False, eq=False)
class Welcome(Message):
    """agent -> interposer: the agent's version, the host paths no guest may name,
    and the pids no guest may signal or trace (the agent's own; the server's when local)."""

    version: int = field(validator=_U64)
    refused_paths: tuple[str, ...] = field(
        converter=_as_tuple, validator=WireTuple(_PATH)
    )
    trusted_pids: tuple[int, ...] = field(
        converter=_as_tuple, validator=WireTuple(_U64), default=()
    )
    #: the agent's lease channel (``synthfs.protocol.leases``): "" when it grants no leases
    leases: str = field(validator=_PATH, default="")


@message("register")
@frozen(repr=False, eq=False)
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
@frozen(repr=False, eq=False)
class Registered(Message):
    """server -> agent: a session token (secret), its id (public) and expiry."""

    token: str = field(validator=_SHORT, repr=False)
    token_id: str = field(validator=_SHORT)
    expires_at_ns: int = field(validator=_U64)
    repo_id: str = field(validator=_SHORT)
    #: the server's pid, which a local agent passes on as one no guest may signal
    server_pid: int = field(validator=_U64, default=0)
    #: the key of the server's sealed invalidation channel (secret; "" without one):
    #: synthfs.protocol.sealed
    publish_key: str = field(validator=_SHORT, default="", repr=False)
    #: the server's host paths (served directory, state directory, key files, sockets):
    #: an agent on the same host refuses them to every guest (``protocol.trusted``)
    trusted_paths: tuple[str, ...] = field(
        converter=_as_tuple, validator=WireTuple(_PATH), default=()
    )


# -- file operations (both links) -------------------------------------------------


@message("stat")
@frozen(repr=False, eq=False)
class Stat(Message):
    """Attributes of ``path`` without following a final symlink (lstat)."""

    path: str = field(validator=_PATH)


@message("stat_reply")
@frozen(repr=False, eq=False)
class StatReply(Message):
    attrs: Attrs = field(validator=WireValue(Attrs))


@message("list")
@frozen(repr=False, eq=False)
class List(Message):
    """Every entry of a directory with its attributes (READDIRPLUS)."""

    path: str = field(validator=_PATH)


@message("listing")
@frozen(repr=False, eq=False)
class Listing(Message):
    """A directory's attributes and entries (READDIRPLUS).

    agent -> interposer only, and optional: ``leased`` names the entries whose
    local copies in ``lease_dir`` the agent gives a lease on (as ``Opened`` does,
    with the same ``lease``, ``lease_seq`` and ``lease_until_ns`` for all).
    """

    attrs: Attrs = field(validator=WireValue(Attrs))
    entries: tuple[DirEntry, ...] = field(
        converter=_as_tuple, validator=WireTuple(WireValue(DirEntry))
    )
    lease: str = field(validator=_SHORT, default="")
    lease_seq: int = field(validator=_U64, default=0)
    lease_until_ns: int = field(validator=_U64, default=0)
    lease_dir: str = field(validator=_PATH, default="")
    leased: tuple[str, ...] = field(converter=_as_tuple, validator=WireTuple(_PATH), default=())


@message("read")
@frozen(repr=False, eq=False)
class Read(Message):
    """agent -> server: ``length`` bytes (at most CHUNK_SIZE) from ``offset``.

    ``version``, when not empty, must match the object's current version, or the
    server answers ESTALE (the object changed under a multi-chunk fetch).
    """

    path: str = field(validator=_PATH)
    offset: int = field(validator=_U64)
    length: int = field(validator=WireInt(0, CHUNK_SIZE))
    version: str = field(validator=_SHORT, default="")


@message("data")
@frozen(repr=False, eq=False)
class Data(Message):
    """server -> agent: the bytes of a ``Read``.

    Built here, ``data`` is bytes; decoded from a bulk reply (``Client.pipeline``),
    it is a read-only ``memoryview`` of the received frame (no copy).
    """

    data: bytes | memoryview = field(validator=_DATA, repr=False)
    eof: bool = field(validator=_BOOL)
    version: str = field(validator=_SHORT)


@message("extents")
@frozen(repr=False, eq=False)
class Extents(Message):
    """agent -> server: where the data of the file ``path`` is (its holes are the rest).

    ``version`` as in :class:`Read`. Asked before fetching a file whose allocation
    is smaller than its size, so that the fetch moves the data and not the holes.
    """

    path: str = field(validator=_PATH)
    version: str = field(validator=_SHORT, default="")


@message("extent_map")
@frozen(repr=False, eq=False)
class ExtentMap(Message):
    """server -> agent: the data extents of a file of ``size`` bytes at ``version``.

    At most ``MAX_EXTENTS`` of them, sorted and disjoint, within ``size``; a file of
    more is described with fewer, larger extents (some holes then read as data).
    """

    size: int = field(validator=_U64)
    version: str = field(validator=_SHORT)
    extents: tuple[int, ...] = field(converter=_as_tuple, validator=_EXTENTS, default=())


@message("locate")
@frozen(repr=False, eq=False)
class Locate(Message):
    """agent -> server: where the agent may read the file ``path`` at ``version`` itself.

    Answered by a backend whose store the agent can reach (S3: a presigned GET of
    that object version); any other backend answers EOPNOTSUPP, and the agent
    fetches with :class:`Read` as before.
    """

    path: str = field(validator=_PATH)
    version: str = field(validator=_SHORT, default="")


@message("located")
@frozen(repr=False, eq=False)
class Located(Message):
    """server -> agent: a GET ``url`` of the ``size`` bytes of ``path`` at ``version``.

    The request must carry ``If-Match: etag`` (it is signed in: without it, or with
    another ETag, the store refuses; a replaced object answers 412). The URL is good
    until ``expires_ns`` (wall clock); it is not shown in a repr or logged.
    """

    url: str = field(validator=_URL, repr=False)
    etag: str = field(validator=_SHORT)
    size: int = field(validator=_U64)
    version: str = field(validator=_SHORT)
    expires_ns: int = field(validator=_U64)


@message("upload_chunk")
@frozen(repr=False, eq=False)
class UploadChunk(Message):
    """agent -> server: one chunk of a whole-object upload (idempotent by offset)."""

    upload_id: str = field(validator=_SHORT)
    offset: int = field(validator=_U64)
    data: bytes = field(validator=_DATA, repr=False)


@message("upload_commit")
@frozen(repr=False, eq=False)
class UploadCommit(Message):
    """agent -> server: install the upload as ``path``'s new version, atomically.

    ``size`` is the total the agent sent; a mismatch is EIO and installs nothing.
    ``mode`` is used when the object is new. ``exclusive``: only if ``path``
    does not exist, else EEXIST (an ``O_CREAT`` that must never replace a file
    another client made meanwhile); the new file's mtime carries the upload's
    stamp (``synthfs.stamps``). Resending a committed upload id answers the
    same attributes again (idempotent).

    ``extents``: None, the chunks cover ``[0, size)``; else the data extents the
    chunks covered, exactly (flat, see ``ExtentMap``), and the rest of ``size`` is
    holes: the server keeps them holes where its store can. A list that is not
    sorted, overlaps, reaches beyond ``size`` or has more than ``MAX_EXTENTS`` is
    EINVAL; one that differs from what was staged is EIO; neither installs anything.
    """

    upload_id: str = field(validator=_SHORT)
    path: str = field(validator=_PATH)
    size: int = field(validator=_U64)
    mode: int = field(validator=_MODE, default=0o644)
    exclusive: bool = field(validator=_BOOL, default=False)
    extents: tuple[int, ...] | None = field(
        converter=_as_optional_tuple, validator=WireOptional(_EXTENTS), default=None)


@message("upload_abort")
@frozen(repr=False, eq=False)
class UploadAbort(Message):
    upload_id: str = field(validator=_SHORT)


@message("mkdir")
@frozen(repr=False, eq=False)
class Mkdir(Message):
    path: str = field(validator=_PATH)
    mode: int = field(validator=_MODE, default=0o755)


@message("remove")
@frozen(repr=False, eq=False)
class Remove(Message):
    """unlink (``directory`` False) or rmdir (True) of ``path``."""

    path: str = field(validator=_PATH)
    directory: bool = field(validator=_BOOL, default=False)


@message("rename")
@frozen(repr=False, eq=False)
class Rename(Message):
    src: str = field(validator=_PATH)
    dst: str = field(validator=_PATH)
    flags: RenameFlags = field(
        converter=_rename_flags, validator=WireInt(0, _U32_MAX), default=RenameFlags.NONE
    )


@message("symlink")
@frozen(repr=False, eq=False)
class Symlink(Message):
    """Create ``path`` as a symlink whose text is ``target`` (kept verbatim)."""

    target: str = field(validator=_PATH)
    path: str = field(validator=_PATH)


@message("link")
@frozen(repr=False, eq=False)
class Link(Message):
    """Give the file ``src`` a second name ``dst`` (link(2): never follows ``src``).

    A backend that holds no hard links answers EPERM, as link(2) does on a file
    system without them.
    """

    src: str = field(validator=_PATH)
    dst: str = field(validator=_PATH)


@message("readlink")
@frozen(repr=False, eq=False)
class Readlink(Message):
    path: str = field(validator=_PATH)


@message("link_target")
@frozen(repr=False, eq=False)
class LinkTarget(Message):
    target: str = field(validator=_PATH)


@message("setattr")
@frozen(repr=False, eq=False)
class SetAttr(Message):
    """chmod / utimensat / truncate of ``path``; None leaves a field as it is."""

    path: str = field(validator=_PATH)
    mode: int | None = field(validator=WireOptional(_MODE), default=None)
    atime_ns: int | None = field(validator=WireOptional(_I64), default=None)
    mtime_ns: int | None = field(validator=WireOptional(_I64), default=None)
    size: int | None = field(validator=WireOptional(_U64), default=None)


# -- materialisation (interposer -> agent only) ----------------------------------------


@message("open")
@frozen(repr=False, eq=False)
class Open(Message):
    """Materialise ``path`` in the agent's cache for a guest open.

    ``flags`` are the guest's open flags (O_CREAT, O_EXCL, O_TRUNC, access mode);
    the agent applies the creation and truncation semantics against the server.
    ``claim``: the O_EXCL is the interposer's own (it creates a name it saw absent
    and must learn the name is its own), not the guest's: it need only hold among
    the agent's sandboxes, so a write-back agent may create the file itself.
    """

    path: str = field(validator=_PATH)
    flags: int = field(validator=_U64)
    mode: int = field(validator=_MODE, default=0o644)
    claim: bool = field(validator=_BOOL, default=False)


@message("opened")
@frozen(repr=False, eq=False)
class Opened(Message):
    """The host path of the cache file to open, and the object's attributes.

    With a lease (``lease`` names the agent's lease channel instance, "" for
    none), the interposer may open the same copy again without asking, while the
    channel vouches for it (``synthfs.protocol.leases``): ``lease_seq`` is the channel's
    sequence number when it was granted, ``lease_until_ns`` its CLOCK_MONOTONIC end.
    """

    host_path: str = field(validator=_PATH)
    attrs: Attrs = field(validator=WireValue(Attrs))
    lease: str = field(validator=_SHORT, default="")
    lease_seq: int = field(validator=_U64, default=0)
    lease_until_ns: int = field(validator=_U64, default=0)


@message("progress")
@frozen(repr=False, eq=False)
class Progress(Message):
    """How far a long request has come: a note, not the reply.

    agent -> interposer: zero or more may precede the reply to an ``Open`` (a
    cold fetch), with its request id; ``done`` of ``total`` bytes of ``path``
    are in the cache. server -> agent (and passed on to the interposer): a
    mutation on ``path``, or a listing of it, still running (``done`` and
    ``total`` 0), sent every
    ``server.service.NOTE_EVERY`` seconds. A client waiting for the reply takes
    them as notes (``Client(on_note=...)``) and goes on waiting, its attempt's
    time started again.
    """

    path: str = field(validator=_PATH)
    done: int = field(validator=_U64)
    total: int = field(validator=_U64)


@message("commit")
@frozen(repr=False, eq=False)
class Commit(Message):
    """The local copy of ``path`` was closed: upload it if it changed since its last upload.

    A write-back agent makes the copy durable on its own disk and queues the
    upload (``close``); with ``wait`` it answers only once the server has it
    durably (``fsync``, ``fdatasync``), as a ``--write-through`` agent always does.
    """

    path: str = field(validator=_PATH)
    wait: bool = field(validator=_BOOL, default=False)


@message("committed")
@frozen(repr=False, eq=False)
class Committed(Message):
    attrs: Attrs = field(validator=WireValue(Attrs))


@message("sync")
@frozen(repr=False, eq=False)
class Sync(Message):
    """Queue every local copy that changed since its last upload; with ``wait`` (``sync``,
    ``syncfs``), answer once the server has everything queued, durably."""

    wait: bool = field(validator=_BOOL, default=True)


@message("synced")
@frozen(repr=False, eq=False)
class Synced(Message):
    """``uploaded``: files sent to the server by this request; ``queued`` files and their
    ``queued_bytes`` still wait for upload, the oldest for ``oldest_ms`` (write-back)."""

    uploaded: int = field(validator=_U64)
    queued: int = field(validator=_U64, default=0)
    queued_bytes: int = field(validator=_U64, default=0)
    oldest_ms: int = field(validator=_U64, default=0)


@message("done")
@frozen(repr=False, eq=False)
class Done(Message):
    """A request that succeeded with nothing to return (remove, rename, upload chunk)."""


# -- errors ----------------------------------------------------------------------------


@message("error")
@frozen(repr=False, eq=False)
class Error(Message):
    """A failed request: a Linux errno and a short human message, nothing else.

    EKEYREJECTED (missing, wrong or revoked token) and EKEYEXPIRED (expired
    token) tell the agent to register again and resend.
    """

    errno: int = field(validator=WireInt(1, 4095))
    message: str = field(validator=_SHORT, default="")
