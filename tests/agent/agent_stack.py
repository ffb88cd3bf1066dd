"""Real server and agent processes for the agent tests (no mocks of either).

:class:`Stack`: a repository directory served by ``python -m server`` and an
agent (``python -m agent``) on private ``ipc://`` sockets, plus
:class:`protocol.client.Client` connections playing the interposer. The
fixtures in ``conftest.py`` hand them out.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from synthfs.protocol.client import Client
from synthfs.protocol.messages import Message

REPO = Path(__file__).resolve().parents[2]
STARTUP = 20.0
SERVER_CMD = [sys.executable, "-m", "synthfs.server"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class Proc:
    """A started synthfs process, its log, and how it stops."""

    def __init__(self, name: str, argv: list[str], log: Path, pass_fds: tuple[int, ...] = ()):
        self.name = name
        self.log = log
        r, w = os.pipe()
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [*argv, "--ready-fd", str(w)], stdout=out, stderr=out, env=_env(),
                pass_fds=(w, *pass_fds), stdin=subprocess.DEVNULL,
            )
        os.close(w)
        self._ready_r = r

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = STARTUP) -> None:
        try:
            ready, _, _ = select.select([self._ready_r], [], [], timeout)
            data = os.read(self._ready_r, 16) if ready else b""
        finally:
            os.close(self._ready_r)
        if not data.startswith(b"ready"):
            self.stop()
            raise AssertionError(f"{self.name} did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def rchar(self) -> int:
        """Bytes this process has read through read()/pread() (from /proc/PID/io)."""
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar")


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        self.root.mkdir()
        self.run = tmp / "run"
        self.run.mkdir(mode=0o700)
        self.cache = tmp / "cache"
        #: flags every start_agent gives before its own (e.g. ("--write-back",))
        self.agent_defaults: tuple[str, ...] = ()
        self.key = self.run / "bootstrap.key"
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.close(fd)
        self.server_ep = f"ipc://{self.run}/server.sock"
        self.agent_ep = f"ipc://{self.run}/agent.sock"
        self.server: Proc | None = None
        self.agent: Proc | None = None
        self.clients: list[Client] = []

    def start_server(self, *extra: str, wait: bool = True) -> Proc:
        self.server = Proc("server", [*SERVER_CMD, "--root", str(self.root),
                                      "--listen", self.server_ep, "--bootstrap-key",
                                      str(self.key), *extra], self.tmp / "server.log")
        if wait:
            self.server.wait_ready()
        return self.server

    def start_agent(self, *extra: str, wait: bool = True) -> Proc:
        self.agent = Proc("agent", [sys.executable, "-m", "synthfs.agent",
                                    "--server", self.server_ep, "--bootstrap-key", str(self.key),
                                    "--listen", self.agent_ep,
                                    "--cache", str(self.cache), *self.agent_defaults, *extra],
                           self.tmp / "agent.log")
        if wait:
            self.agent.wait_ready()
        return self.agent

    def client(self, timeout: float = 10.0) -> Client:
        c = Client(self.agent_ep, timeout=timeout, retries=0)
        self.clients.append(c)
        return c

    def call(self, msg: Message) -> Message:
        if not self.clients:
            self.client()
        return self.clients[0].call(msg)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        for p in (self.agent, self.server):
            if p is not None:
                p.stop()


def wait_until(pred: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False

