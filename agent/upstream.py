"""The agent's link to the server: registration, the session token, resends.

Trusts: the server it was pointed at (it proves itself by accepting our HMAC
and serving the repository). Holds the two secrets of the agent, in memory
only: the bootstrap key (to register) and the session token (attached to every
request through :class:`protocol.client.Client`'s ``token_provider``). Neither
appears in a repr or a log line.

Re-registration is transparent: shortly before the token expires, or when the
server answers EKEYEXPIRED / EKEYREJECTED (token expired, or the server
restarted and forgot it), the agent registers again and resends the request
once.

A server that stops answering is logged once (a warning naming it), and
once more when it answers again: not once per failed request.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from synthfs.protocol.bootstrap import register_mac
from synthfs.protocol.client import Client, Unreachable
from synthfs.protocol.messages import PROTOCOL_VERSION, Message, Register, Registered

__all__ = ["Upstream"]

log = logging.getLogger(__name__)

_AUTH_ERRNOS = (errno.EKEYEXPIRED, errno.EKEYREJECTED)
#: Register again when less than this much of the token's life is left.
_RENEW_MARGIN_NS = 200_000_000

_M = TypeVar("_M", bound=Message)


class Upstream:
    """A registered session with the server at ``endpoint``."""

    def __init__(self, endpoint: str, key: bytes, *, timeout: float = 5.0,
                 sockopts: Mapping[int, int | bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._key = key
        self._token = ""
        self._expires_at_ns = 0
        self.token_id = ""
        self.repo_id = ""
        self.server_pid = 0
        self.publish_key = ""  # the sealed invalidation channel's (synthfs.protocol.sealed)
        #: the server's own host paths (``Registered.trusted_paths``)
        self.server_paths: tuple[str, ...] = ()
        self.agent_id = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self.client = Client(endpoint, timeout=timeout, token_provider=self._current_token,
                             sockopts=sockopts)
        self.registrations = 0
        #: monotonic time of the first unanswered request of an outage (None: answering)
        self.down_since: float | None = None
        #: Called with the new repo id when a re-registration reports another one.
        self.on_repo_change: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.endpoint!r}, token_id={self.token_id!r})"

    def _current_token(self) -> str:
        return self._token

    def close(self) -> None:
        self.client.close()

    def register(self) -> Registered:
        """Prove the bootstrap key (HMAC, the key never travels) and take a token.

        A registration that reached a server started after it was made (it waited
        in the queue while the server started) is refused ESTALE: made again, once.
        """
        self._token = ""
        for attempt in range(2):
            nonce = secrets.token_hex(16)
            ts = time.time_ns()
            mac = register_mac(self._key, self.agent_id, nonce, ts)
            try:
                reply = self.client.call(
                    Register(
                        version=PROTOCOL_VERSION,
                        agent_id=self.agent_id,
                        nonce=nonce,
                        timestamp_ns=ts,
                        mac=mac,
                    )
                )
            except OSError as exc:
                if exc.errno == errno.ESTALE and attempt == 0:
                    continue
                raise
            break
        if not isinstance(reply, Registered):
            raise OSError(errno.EPROTO, f"server answered Register with {reply.kind}")
        self._token = reply.token
        self._expires_at_ns = reply.expires_at_ns
        self.token_id = reply.token_id
        self.registrations += 1
        log.info(
            "registered with %s as %s (token %s)", self.endpoint, self.agent_id, reply.token_id
        )
        if self.repo_id and reply.repo_id != self.repo_id and self.on_repo_change is not None:
            self.on_repo_change(reply.repo_id)
        self.repo_id = reply.repo_id
        self.server_pid = reply.server_pid
        self.publish_key = reply.publish_key
        self.server_paths = reply.trusted_paths
        return reply

    def _fresh(self) -> None:
        if not self._token or time.time_ns() > self._expires_at_ns - _RENEW_MARGIN_NS:
            self.register()

    def _unreachable(self, exc: Unreachable) -> None:
        """A request went unanswered: log the outage when it starts."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("the server at %s does not answer (no reply within %.3g s): requests "
                        "that need it fail until it does", self.endpoint, exc.seconds)

    def _answered(self) -> None:
        if self.down_since is not None:
            log.warning("the server at %s answers again (after %.1f s)", self.endpoint,
                        time.monotonic() - self.down_since)
            self.down_since = None

    def call(self, msg: Message, expect: type[_M]) -> _M:
        """Forward ``msg``; re-register and resend once on an authentication error."""
        try:
            reply = self._call(msg)
        except Unreachable as exc:
            self._unreachable(exc)
            raise
        self._answered()
        if not isinstance(reply, expect):
            raise OSError(errno.EPROTO, f"server answered {msg.kind} with {reply.kind}")
        return reply

    def _call(self, msg: Message) -> Message:
        self._fresh()
        try:
            return self.client.call(msg)
        except OSError as exc:
            if exc.errno not in _AUTH_ERRNOS or isinstance(exc, Unreachable):
                raise
            log.info("server refused the token (%s): registering again", errno.errorcode[exc.errno])
            self.register()
            return self.client.call(msg)

    def pipeline(
        self, count: int, make: Callable[[int], Message], expect: type[_M], window: int = 4
    ) -> Iterator[tuple[int, _M]]:
        """Send ``make(0) .. make(count-1)`` pipelined; yield ``(i, reply)`` in order.

        On an authentication error at ``i``, register again and go on from ``i``
        (again at a later ``i`` when the token expires again: a long transfer may
        outlive several tokens; twice at the same ``i`` is an error).
        """
        try:
            self._fresh()
        except Unreachable as exc:
            self._unreachable(exc)
            raise
        start = 0
        renewed_at = -1
        while start < count:
            base = start
            try:
                replies = self.client.pipeline((make(i) for i in range(base, count)), window)
                for n, reply in enumerate(replies):
                    if not isinstance(reply, expect):
                        raise OSError(errno.EPROTO, f"server answered with {reply.kind}")
                    yield base + n, reply
                    start = base + n + 1
            except OSError as exc:
                if isinstance(exc, Unreachable):
                    self._unreachable(exc)
                    raise
                if exc.errno not in _AUTH_ERRNOS or renewed_at == start:
                    raise
                renewed_at = start
                self.register()
