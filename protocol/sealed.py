"""Sealed publications: the invalidation channel says nothing to an unregistered reader.

Trusts: the channel key, which the server makes at random per process and
hands to an agent only in its ``Registered`` reply (so only a holder of the
bootstrap key, which may register, learns it). Everything else on the channel
is hostile input: a reader without the key, and a writer who is not the server.

The server's PUB socket (``--publish``) sends every message as one topic,
``b"s"``, and one body ``nonce(16) || ciphertext || tag(16)``:

* the plaintext is ``msgpack([kind, ...fields])``: ``["inval", path, version,
  instance, seq, parent]`` or ``["beat", instance, seq]``;
* the ciphertext is the plaintext XOR SHAKE-256(enc_key || nonce) (an
  extendable-output function used as a stream cipher; the nonce is random);
* the tag is HMAC-SHA256(mac_key, nonce || ciphertext), first 16 bytes
  (encrypt-then-MAC); ``enc_key`` and ``mac_key`` are SHA-256 of the channel
  key with two labels.

Only the Python standard library (hashlib, hmac), since synthfs has no crypto
dependency; the construction uses each primitive as its standard permits
(SHAKE-256 keyed and nonced as a PRF, HMAC for integrity), and a tag is checked
before anything is decrypted or decoded. A reader without the key learns that
a message was sent, when, and how long it was (which bounds the length of a
path), never its kind, path, version, instance or sequence number; a writer
without the key cannot forge a beat (one that would keep promises alive).
Cost, measured on the 2-CPU development box under load: ~12 µs to seal and
~14 µs to open a 99-byte invalidation (msgpack of it: ~1.5 µs), 32 bytes more
on the wire. The server seals on its I/O thread, two publications per mutation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

__all__ = ["TOPIC", "SealError", "new_key", "open_sealed", "seal"]

#: The one topic every sealed publication carries (subscribe to this).
TOPIC = b"s"
_NONCE = 16
_TAG = 16
#: Length of a channel key in bytes (hex on the wire: ``Registered.publish_key``).
KEY_BYTES = 32


class SealError(ValueError):
    """A publication not sealed with this key (another server instance, or a forgery)."""


def new_key() -> str:
    """A fresh channel key, hex (as ``Registered.publish_key`` carries it)."""
    return secrets.token_hex(KEY_BYTES)


def _keys(key: str) -> tuple[bytes, bytes]:
    raw = bytes.fromhex(key)
    if len(raw) != KEY_BYTES:
        raise SealError("a channel key is 32 bytes")
    return (hashlib.sha256(b"synthfs-publish-enc\0" + raw).digest(),
            hashlib.sha256(b"synthfs-publish-mac\0" + raw).digest())


_derived: dict[str, tuple[bytes, bytes]] = {}


def _cached_keys(key: str) -> tuple[bytes, bytes]:
    k = _derived.get(key)
    if k is None:
        if len(_derived) > 16:
            _derived.clear()
        k = _derived[key] = _keys(key)
    return k


def _xor(data: bytes, enc: bytes, nonce: bytes) -> bytes:
    stream = hashlib.shake_256(enc + nonce).digest(len(data)) if data else b""
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little")


def seal(key: str, plaintext: bytes) -> bytes:
    """The body of a sealed publication of ``plaintext`` under ``key``."""
    enc, mac = _cached_keys(key)
    nonce = os.urandom(_NONCE)
    ct = _xor(plaintext, enc, nonce)
    tag = hmac.digest(mac, nonce + ct, "sha256")[:_TAG]
    return nonce + ct + tag


def open_sealed(key: str, body: bytes) -> bytes:
    """The plaintext of a sealed publication; :class:`SealError` if ``key`` did not seal it."""
    if not key:
        raise SealError("no channel key (not registered)")
    if len(body) < _NONCE + _TAG:
        raise SealError("too short for a sealed publication")
    enc, mac = _cached_keys(key)
    nonce, ct, tag = body[:_NONCE], body[_NONCE:-_TAG], body[-_TAG:]
    if not hmac.compare_digest(hmac.digest(mac, nonce + ct, "sha256")[:_TAG], tag):
        raise SealError("not sealed with this channel's key")
    return _xor(ct, enc, nonce)
