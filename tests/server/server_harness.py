"""Test harness for the server: a real ``python -m server`` subprocess and a raw client.

The client is deliberately minimal (a DEALER socket and the codec) so tests
control every byte: the token sent, the request id, malformed frames.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from synthfs.protocol.codec import decode, encode
from synthfs.protocol.messages import PROTOCOL_VERSION, Message, Register, Registered
from synthfs.server.auth import register_mac

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "RawClient", "ServerProc", "make_key", "register"]


def make_key(path: Path) -> bytes:
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key + b"\n")
    os.close(fd)
    return key


class ServerProc:
    """One server process; ``start()`` returns once it wrote 'ready' on its ready fd."""

    def __init__(self, root: Path, key_path: Path, endpoint: str, *extra: str) -> None:
        self.root, self.key_path, self.endpoint, self.extra = root, key_path, endpoint, extra
        self.log_path = root.parent / f"server-{secrets.token_hex(3)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bound = endpoint

    def argv(self) -> list[str]:
        state = [] if "--state" in self.extra else ["--state", str(self.state)]
        return [sys.executable, "-m", "synthfs.server", "--root", str(self.root), "--listen",
                self.endpoint, "--bootstrap-key", str(self.key_path), *state, *self.extra]

    @property
    def state(self) -> Path:
        """The server's state directory (staging, journal): beside the root, outside it."""
        return self.root.parent / f"{self.root.name}.state"

    def start(self, timeout: float = 15.0) -> ServerProc:
        r, w = os.pipe()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.argv(), "--ready-fd", str(w)], pass_fds=[w],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=REPO)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], timeout)
            data = os.read(r, 64) if ready else b""
        finally:
            os.close(r)
        if data != b"ready\n":
            self.kill()
            raise RuntimeError(f"server not ready: {self.output()}")
        for line in self.output().splitlines():
            found = re.match(r"synthfs server: serving .* on (\S+)$", line)
            if found:
                self.bound = found.group(1)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self) -> int | None:
        return self.kill(signal.SIGTERM)


class RawClient:
    """A DEALER socket speaking the codec; one per test (not thread-safe)."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, token: str = "") -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.token = token
        self.publish_key = ""  # the sealed invalidation channel's, from Registered

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message, token: str | None = None, rid: int | None = None) -> int:
        rid = next(self._ids) if rid is None else rid
        self.sock.send(encode(msg, rid, self.token if token is None else token))
        return rid

    def recv_frames(self, timeout: float = 10.0) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the server")
        return self.sock.recv_multipart()

    def recv(self, timeout: float = 10.0) -> tuple[int, Message]:
        env = decode(self.recv_frames(timeout)[-1])
        return env.request_id, env.msg

    def call(self, msg: Message, token: str | None = None, timeout: float = 10.0) -> Message:
        rid = self.send(msg, token)
        while True:
            got, reply = self.recv(timeout)
            if got == rid:
                return reply


def register(client: RawClient, key: bytes, agent_id: str | None = None,
             nonce: str | None = None, ts: int | None = None, mac: str | None = None) -> Message:
    """Register ``client`` (a fresh agent id unless given: a registration supersedes
    the earlier token of the same agent id)."""
    agent_id = f"test-agent-{secrets.token_hex(4)}" if agent_id is None else agent_id
    nonce = secrets.token_hex(16) if nonce is None else nonce
    ts = time.time_ns() if ts is None else ts
    mac = register_mac(key, agent_id, nonce, ts) if mac is None else mac
    reply = client.call(Register(version=PROTOCOL_VERSION, agent_id=agent_id, nonce=nonce,
                                 timestamp_ns=ts, mac=mac), token="")
    if isinstance(reply, Registered):
        client.token = reply.token
        client.publish_key = reply.publish_key
    return reply
