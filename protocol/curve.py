"""CURVE keys for tcp:// links between agents and servers: key files, socket options, ZAP.

Over ``tcp://`` the agent and the server speak ZeroMQ's CURVE (CurveZMQ:
Curve25519 key exchange, every frame encrypted and authenticated), so the
session token and the paths never cross the network in clear, a client must
know the server's public key, and the server serves only the agents whose
public keys it was given.

Key files are ZeroMQ certificates (the ZPL text that ``zmq.auth`` and czmq's
``zcert`` write): ``NAME.key`` holds the public key and may be shared;
``NAME.key_secret`` holds both keys and follows the bootstrap key file's rules
(a regular file of this user, mode 0600; anything looser is refused, see
:func:`protocol.bootstrap.check_key_fd`). Keys are Z85 text (40 characters).

Client authentication is ZAP (RFC 27): libzmq asks an ``inproc`` REP socket of
the same context about every new CURVE peer before any of its frames reach the
application. :func:`zap_reply` is that decision, pure of sockets; the server
answers it from its own I/O loop (no thread). An unknown key gets status 400
and the connection is dropped during the handshake.

Trusts: the key files it is given (their owner chose them).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import stat
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import zmq
from zmq.utils import z85

from synthfs.protocol.bootstrap import check_key_fd
from synthfs.protocol.monitor import monitor_event

__all__ = [
    "ZAP_ENDPOINT",
    "CurveServer",
    "KeyPair",
    "apply",
    "client_sockopts",
    "handshake",
    "load_allowed",
    "load_keypair",
    "load_public",
    "remote_tcp",
    "server_sockopts",
    "write_keypair",
    "zap_reply",
]

#: Where libzmq sends its ZAP requests (fixed by RFC 27, one per context).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"synthfs"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"  # noqa: S105 (a file name suffix)
_MAX_FILE = 64 * 1024
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_LINE = re.compile(rb'^\s*(public-key|secret-key)\s*=\s*"?([^"\s]*)"?\s*$')


@attrs.frozen(repr=False)
class KeyPair:
    """A CURVE key pair (Z85 bytes); the secret never appears in a repr."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.decode()!r})"


@attrs.frozen(repr=False)
class CurveServer:
    """What a CURVE server needs: its own key pair and the client public keys it serves."""

    keys: KeyPair
    allowed: frozenset[bytes]

    def __repr__(self) -> str:
        return f"CurveServer({self.keys!r}, {len(self.allowed)} client keys)"


# -- key files -------------------------------------------------------------------------


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    kind = "secret" if secret else "public"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"#   ****  synthfs CURVE {kind} key, generated {now}  ****",
        "#   ZeroMQ CURVE certificate (ZPL), readable by zmq.auth and czmq zcert",
        *(["#   THIS FILE IS SECRET: keep it mode 0600, never copy it to another machine"]
          if secret else ["#   give this file to the other side (it holds no secret)"]),
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
        *([f'    secret-key = "{secret.decode()}"'] if secret else []),
    ]
    return ("\n".join(lines) + "\n").encode()


def write_keypair(prefix: str) -> tuple[str, str]:
    """Create ``PREFIX.key`` (public, 0644) and ``PREFIX.key_secret`` (0600); never overwrite.

    Returns the two paths. Raises ``FileExistsError`` when either exists.
    """
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = prefix + PUBLIC_SUFFIX, prefix + SECRET_SUFFIX
    for p in (pub_path, sec_path):
        if os.path.lexists(p):
            raise FileExistsError(errno.EEXIST, f"{p} exists (not overwritten)", p)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(sec_path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, _certificate(public, secret))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        fd = os.open(pub_path, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, _certificate(public, None))
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(sec_path)
        raise
    return pub_path, sec_path


def _read(fd: int, path: str) -> bytes:
    data = os.read(fd, _MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise ValueError(f"{path}: too large for a key file")
    return data


def _parse(data: bytes, path: str) -> tuple[bytes | None, bytes | None]:
    found: dict[bytes, bytes] = {}
    for line in data.splitlines():
        if line.lstrip().startswith(b"#"):
            continue
        match = _LINE.match(line)
        if match:
            name, value = match.groups()
            if not _Z85_KEY.fullmatch(value):
                raise ValueError(f"{path}: {name.decode()} is not a 40-character Z85 key")
            found[name] = value
    return found.get(b"public-key"), found.get(b"secret-key")


def load_keypair(path: str) -> KeyPair:
    """Our own key pair from a ``.key_secret`` file (mode 0600, ours; else PermissionError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = _read(fd, path)
        public, secret = _parse(data, path)
        if secret is None:
            raise ValueError(f"{path}: no secret-key (is this the public .key file? the "
                             f"secret one is {SECRET_SUFFIX})")
        check_key_fd(fd, path, what="CURVE secret key")
    finally:
        os.close(fd)
    derived = zmq.curve_public(secret)
    if public is not None and public != derived:
        raise ValueError(f"{path}: its public-key does not match its secret-key")
    return KeyPair(public=derived, secret=secret)


def load_public(path: str) -> bytes:
    """The public key in a certificate file (a ``.key``; a ``.key_secret`` is refused)."""
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise ValueError(f"{path}: too large for a key file")
    public, secret = _parse(data, path)
    if secret is not None:
        raise ValueError(f"{path} holds a secret key: give the public {PUBLIC_SUFFIX} file")
    if public is None:
        raise ValueError(f"{path}: no public-key line (expected a ZeroMQ certificate)")
    return public


def load_allowed(path: str) -> frozenset[bytes]:
    """The client public keys in ``path``: one ``.key`` file, or every ``*.key`` of a directory."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(PUBLIC_SUFFIX))
        files = [os.path.join(path, n) for n in names
                 if stat.S_ISREG(os.stat(os.path.join(path, n)).st_mode)]
    else:
        files = [path]
    keys = frozenset(load_public(f) for f in files)
    if not keys:
        raise ValueError(f"{path}: no client public keys (*{PUBLIC_SUFFIX} files)")
    return keys


# -- sockets ---------------------------------------------------------------------------


def server_sockopts(keys: KeyPair) -> dict[int, int | bytes]:
    """Options for a CURVE server socket (ROUTER, PUB), set before ``bind``.

    ``ZAP_ENFORCE_DOMAIN``: without a ZAP handler in the context, libzmq would
    admit every client key; with it, such a handshake fails instead.
    """
    return {zmq.CURVE_SERVER: 1, zmq.CURVE_SECRETKEY: keys.secret, zmq.ZAP_DOMAIN: ZAP_DOMAIN,
            zmq.ZAP_ENFORCE_DOMAIN: 1}


def client_sockopts(keys: KeyPair, server_public: bytes) -> dict[int, int | bytes]:
    """Options for a CURVE client socket (DEALER, SUB), set before ``connect``."""
    return {zmq.CURVE_SERVERKEY: server_public, zmq.CURVE_PUBLICKEY: keys.public,
            zmq.CURVE_SECRETKEY: keys.secret}


def apply(sock: zmq.Socket[Any], sockopts: Mapping[int, int | bytes]) -> None:
    for opt, value in sockopts.items():
        sock.setsockopt(opt, value)


def zap_reply(frames: list[bytes], allowed: frozenset[bytes]) -> tuple[list[bytes], str]:
    """Answer one ZAP request (RFC 27): 200 for a CURVE client whose key is allowed, else 400.

    Returns the reply frames and a line for the log (the client's key in Z85 and address).
    """
    if len(frames) < 6 or frames[0] != b"1.0":
        request_id = frames[1] if len(frames) > 1 else b""
        return [b"1.0", request_id, b"400", b"malformed ZAP request", b"", b""], \
            "malformed ZAP request"
    request_id, _domain, address, _identity, mechanism = frames[1:6]
    credentials = frames[6:]
    who = address.decode(errors="replace")
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        return [b"1.0", request_id, b"400", b"CURVE required", b"", b""], \
            f"refused a {mechanism.decode(errors='replace')} peer from {who}"
    key = z85.encode(credentials[0])
    if key not in allowed:
        return [b"1.0", request_id, b"400", b"unknown client key", b"", b""], \
            f"refused unknown CURVE client key {key.decode()} from {who}"
    return [b"1.0", request_id, b"200", b"OK", key, b""], \
        f"CURVE client {key.decode()} from {who}"


def remote_tcp(endpoint: str) -> bool:
    """True for a tcp:// endpoint whose host is not a loopback address."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return False
    with contextlib.suppress(ValueError):
        return not ipaddress.ip_address(host).is_loopback
    return True


def handshake(ctx: zmq.Context[Any], endpoint: str, sockopts: Mapping[int, int | bytes],
              timeout: float) -> None:
    """Complete one CURVE handshake with ``endpoint`` or say why not (an OSError).

    PermissionError when the server refused our key (ZAP 400); TimeoutError when
    no handshake completed within ``timeout`` (unreachable, a server that is not
    CURVE, or a wrong server key: the server drops a HELLO it cannot open).
    """
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    apply(sock, sockopts)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = monitor_event(monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise PermissionError(
                    errno.EACCES, f"the server at {endpoint} refused this agent's CURVE key "
                    "(its public .key file must be in the server's --curve-clients)")
            # a protocol failure: retried by the reconnect, reported at the deadline
        raise TimeoutError(
            errno.ETIMEDOUT, f"no CURVE handshake with {endpoint} within {timeout:g} s "
            "(is the server up, started with --curve-secret, and is --server-key its "
            "public key?)")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
