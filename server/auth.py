"""Who may talk to the server: the bootstrap key, registration and session tokens.

Trusts only the bootstrap key file (it must be private to this user). An
agent proves it holds the key without sending it: ``Register.mac`` is
HMAC-SHA256(key, f"{agent_id}|{nonce}|{timestamp_ns}") in hex, where *key*
is the key file's content with surrounding whitespace removed (as bytes; a
fresh file holds 64 hex digits and a newline). A registration is accepted
only with a correct mac, a timestamp within ±120 s of the server's clock and
a nonce never seen before (a replay cache covers the whole window). The
replay cache is in memory, so a registration made before this server process
started is refused too (ESTALE: an agent sends a fresh one at once); an agent
whose clock runs d seconds behind the server's cannot register during the
first d seconds of a server process (d <= 120 s). The
answer is a session token (``secrets.token_urlsafe(32)``, secret), its id
(public: the only thing ever logged) and its expiry.

Tokens are held in memory only (a restarted server forgets them: agents
register again). A registration revokes the earlier token of the same agent
id, so a token replayed after its agent re-registered is refused. Tokens
are looked up by their SHA-256 and compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time

import attrs

from synthfs.protocol.bootstrap import check_key_fd, register_mac
from synthfs.protocol.messages import PROTOCOL_VERSION, Register, Registered
from synthfs.protocol.ratelimit import RateLimitedLog

__all__ = [
    "CLOCK_SKEW_NS",
    "AuthError",
    "Authority",
    "Session",
    "default_key_path",
    "load_or_create_key",
    "register_mac",
]

log = logging.getLogger(__name__)

#: How far a Register timestamp may be from the server's clock.
CLOCK_SKEW_NS = 120 * 10**9
_MAX_KEY = 4096
_MAX_NONCES = 1_000_000
_MAX_SESSIONS = 100_000


class AuthError(PermissionError):
    """A refused registration or token; ``errno`` is what the wire reply carries."""


def default_key_path() -> str:
    """``$XDG_CONFIG_HOME/synthfs/bootstrap.key`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "synthfs", "bootstrap.key")


def load_or_create_key(path: str) -> tuple[bytes, bool]:
    """The bootstrap key in ``path``, creating it (32 random bytes, hex, 0600) if absent.

    Returns (key, created). Refuses (PermissionError) a key file that is not a
    regular file, that group or others can access, or that another user owns.
    """
    created = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        try:
            wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600)
        except FileExistsError:  # someone created it meanwhile: read theirs
            pass
        else:
            try:
                os.fchmod(wfd, 0o600)  # whatever the umask
                os.write(wfd, secrets.token_hex(32).encode() + b"\n")
                os.fsync(wfd)
            finally:
                os.close(wfd)
            created = True
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check_key_fd(fd, path)
        raw = os.read(fd, _MAX_KEY + 1)
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY:
        raise PermissionError(errno.EINVAL, f"bootstrap key {path} is too long")
    key = raw.strip()
    if len(key) < 16:
        raise PermissionError(errno.EINVAL, f"bootstrap key {path} is empty or too short")
    return key, created


@attrs.frozen
class Session:
    token: str = attrs.field(repr=False)
    token_id: str
    agent_id: str
    expires_at_ns: int
    revoked: bool = False


class Authority:
    """Registrations and live sessions. Thread-safe."""

    def __init__(self, key: bytes, repo_id: str, token_ttl_s: float = 3600.0,
                 trusted_paths: tuple[str, ...] = (), *, boot_ns: int | None = None) -> None:
        self._key = key
        # The nonces seen live in memory only: a registration made before this process
        # started could be replayed to it. So none older than the start is accepted.
        self._boot_ns = time.time_ns() if boot_ns is None else boot_ns
        self._refused = RateLimitedLog(log, "refused registrations")
        self._repo_id = repo_id
        #: the server's host paths, told to every agent (``protocol.trusted``)
        self.trusted_paths = trusted_paths
        self._ttl_ns = int(token_ttl_s * 1e9)
        self._lock = threading.Lock()
        self._nonces: dict[str, int] = {}  # nonce -> forget after (ns)
        self._sessions: dict[bytes, Session] = {}  # sha256(token) -> session
        self._latest: dict[str, bytes] = {}  # agent id -> its newest session's digest

    def __repr__(self) -> str:
        return f"Authority(repo={self._repo_id}, sessions={len(self._sessions)})"

    def register(self, msg: Register, now_ns: int | None = None) -> Registered:
        """A new session for a correct, fresh, never-seen registration; else AuthError."""
        now = time.time_ns() if now_ns is None else now_ns
        if msg.version != PROTOCOL_VERSION:
            raise AuthError(errno.EPROTONOSUPPORT, f"protocol version {msg.version} unsupported")
        expected = register_mac(self._key, msg.agent_id, msg.nonce, msg.timestamp_ns)
        if not hmac.compare_digest(expected, msg.mac):
            self._refused.warning("registration of agent %r refused: bad mac",
                                  msg.agent_id[:64])
            raise AuthError(errno.EACCES, "registration refused: bad mac")
        if abs(msg.timestamp_ns - now) > CLOCK_SKEW_NS:
            self._refused.warning("registration of agent %r refused: clock skew",
                                  msg.agent_id[:64])
            raise AuthError(errno.EACCES, "registration refused: timestamp outside ±120 s")
        if msg.timestamp_ns < self._boot_ns:
            self._refused.warning("registration of agent %r refused: made before the server "
                                  "started", msg.agent_id[:64])
            raise AuthError(errno.ESTALE, "registration refused: older than the server's start "
                            "(a replay, or this host's clock is behind the server's)")
        if not msg.nonce:
            raise AuthError(errno.EACCES, "registration refused: empty nonce")
        with self._lock:
            self._purge(now)
            if msg.nonce in self._nonces:
                self._refused.warning("registration of agent %r refused: replayed nonce",
                                      msg.agent_id[:64])
                raise AuthError(errno.EACCES, "registration refused: replayed nonce")
            if len(self._nonces) >= _MAX_NONCES:
                raise AuthError(errno.EAGAIN, "too many registrations, retry later")
            # Remembered while its timestamp could still pass the skew check.
            self._nonces[msg.nonce] = msg.timestamp_ns + CLOCK_SKEW_NS
            token = secrets.token_urlsafe(32)
            session = Session(
                token=token,
                token_id=secrets.token_hex(8),
                agent_id=msg.agent_id,
                expires_at_ns=now + self._ttl_ns,
            )
            digest = self._digest(token)
            self._sessions[digest] = session
            # A new registration supersedes the agent's older token: replaying it fails.
            older = self._latest.get(msg.agent_id)
            if older is not None and older in self._sessions:
                self._sessions[older] = attrs.evolve(self._sessions[older], revoked=True)
            self._latest[msg.agent_id] = digest
        log.info("agent %r registered: token %s, expires in %.0f s",
                 msg.agent_id[:64], session.token_id, self._ttl_ns / 1e9)
        return Registered(
            token=token,
            token_id=session.token_id,
            expires_at_ns=session.expires_at_ns,
            repo_id=self._repo_id,
            server_pid=os.getpid(),
            trusted_paths=self.trusted_paths,
        )

    def check(self, token: str, now_ns: int | None = None) -> Session:
        """The live session of ``token``; AuthError EKEYREJECTED or EKEYEXPIRED otherwise."""
        if not token:
            raise AuthError(errno.EKEYREJECTED, "no session token")
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            session = self._sessions.get(self._digest(token))
        if session is None or not hmac.compare_digest(session.token, token) or session.revoked:
            raise AuthError(errno.EKEYREJECTED, "invalid session token")
        if now >= session.expires_at_ns:
            raise AuthError(errno.EKEYEXPIRED, "session token expired")
        return session

    def revoke(self, token_id: str) -> bool:
        """Revoke the session with ``token_id``; True if there was one."""
        with self._lock:
            for digest, session in self._sessions.items():
                if session.token_id == token_id:
                    self._sessions[digest] = attrs.evolve(session, revoked=True)
                    log.info("token %s revoked", token_id)
                    return True
        return False

    def revoke_all(self) -> int:
        with self._lock:
            n = 0
            for digest, session in self._sessions.items():
                if not session.revoked:
                    self._sessions[digest] = attrs.evolve(session, revoked=True)
                    n += 1
        return n

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def _purge(self, now: int) -> None:
        """Forget old nonces, and sessions expired for long (kept a while to say EKEYEXPIRED)."""
        if len(self._nonces) > 1024:
            for nonce in [n for n, t in self._nonces.items() if t < now]:
                del self._nonces[nonce]
        if len(self._sessions) > 1024:
            grace = max(self._ttl_ns, 3600 * 10**9)
            for d in [d for d, s in self._sessions.items() if s.expires_at_ns + grace < now]:
                del self._sessions[d]
            if len(self._sessions) >= _MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda d: self._sessions[d].expires_at_ns)
                del self._sessions[oldest]
            self._latest = {a: d for a, d in self._latest.items() if d in self._sessions}
