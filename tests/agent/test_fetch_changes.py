"""A fetch that meets a change: the copy installed is one version of the file, never a mix.

Real server and agent processes; strace holds every read the server makes for a
second at its entry (after the server checked the version it was asked for), and
the file is rewritten meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from agent_stack import Stack

from synthfs.protocol.messages import CHUNK_SIZE, Message, Open, Opened

pytestmark = pytest.mark.skipif(not Path("/usr/bin/strace").exists(), reason="needs strace")


def _tracer_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])


def test_a_file_rewritten_while_the_server_reads_it_is_fetched_again(
        running: Stack, tmp_path: Path) -> None:
    """Three chunks (the last one short) are read while the file is rewritten with other
    bytes of the same size: before, the agent installed the new bytes as the old
    version (the server checked the version before its read only); now the server
    checks it after the read too, ESTALE, and the agent fetches the new version."""
    size = 2 * CHUNK_SIZE + 12345
    old, new = b"o" * size, b"n" * size
    f = running.root / "big"
    f.write_bytes(old)
    assert running.server is not None
    pid = running.server.pid
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(tmp_path / "strace.log"),
                               "-p", str(pid), "-e", "trace=preadv,preadv2,pread64",
                               "-e", "inject=preadv,preadv2,pread64:delay_enter=1000000"])
    out: dict[str, Message | OSError] = {}

    def fetch() -> None:
        try:
            out["reply"] = running.call(Open(path="/big", flags=os.O_RDONLY))
        except OSError as exc:
            out["reply"] = exc

    try:
        deadline = time.monotonic() + 10
        while _tracer_of(pid) == 0:
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        t = threading.Thread(target=fetch)
        t.start()
        time.sleep(0.4)  # the reads of the three chunks are held at their entry
        with open(f, "r+b") as w:  # rewritten in place, as another writer would
            w.write(new)
        t.join(30)
        assert not t.is_alive()
    finally:
        tracer.kill()
        tracer.wait()
    reply = out["reply"]
    assert isinstance(reply, Opened), reply
    got = Path(reply.host_path).read_bytes()
    assert got in (old, new), "a mix of two versions was installed"
    st = f.stat()
    if got == new:  # the content it holds is the version it names
        assert reply.attrs.mtime_ns == st.st_mtime_ns
    assert got == new  # (the reads were held until after the rewrite)
