"""Fixtures for the server tests: a real server process per test, and a registered client."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_harness import RawClient, ServerProc, make_key, register


class Running:
    def __init__(self, proc: ServerProc, key: bytes) -> None:
        self.proc, self.key = proc, key
        self.root = proc.root
        self.endpoint = proc.bound
        self._clients: list[RawClient] = []

    def client(self, registered: bool = True) -> RawClient:
        c = RawClient(self.endpoint)
        self._clients.append(c)
        if registered:
            register(c, self.key)
            assert c.token
        return c

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.proc.stop()


@pytest.fixture
def make_server(tmp_path):
    """make_server(*extra_args, root=None) -> Running; all stopped at the end."""
    running: list[Running] = []
    sockdir = tempfile.mkdtemp(prefix="sfs-", dir="/tmp")  # ipc paths must stay short

    def start(*extra: str, root: Path | None = None, endpoint: str | None = None) -> Running:
        if root is None:
            root = tmp_path / "repo"
            root.mkdir(exist_ok=True)
        key_path = tmp_path / "bootstrap.key"
        key = key_path.read_bytes().strip() if key_path.exists() else make_key(key_path)
        ep = endpoint or f"ipc://{sockdir}/server-{len(running)}.sock"
        r = Running(ServerProc(root, key_path, ep, *extra).start(), key)
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()
    shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def srv(make_server):
    return make_server()
