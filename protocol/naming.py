"""How the agent names the local copy of a repository path (shared with the interposer),
and how a name travels in msgpack.

Pure and light on imports: the interposer imports it at start-up to follow
renames of copies that guests hold open.

Names are bytes on Linux. In a synthfs process a name is the str ``os.fsdecode``
gives (a byte that is not UTF-8 is a lone surrogate U+DC80..U+DCFF); in msgpack
it is a str when it is UTF-8, else a bin of its exact bytes (:func:`wire_name`,
:func:`name_from_wire`): nothing is lost, and a UTF-8 name travels as before.
"""

from __future__ import annotations

import hashlib

__all__ = ["name_from_wire", "object_name", "wire_name"]


def object_name(path: str) -> str:
    """The file name of ``path``'s local copy in the cache's objects directory."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def wire_name(name: str) -> str | bytes:
    """The msgpack form of a name: itself when it is UTF-8, else its bytes (a bin)."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")
    return name


def name_from_wire(value: object) -> str:
    """The name a msgpack str or bin carries (ValueError for anything else)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    raise ValueError(f"a name is a str or bin, not {type(value).__name__}")
