"""A guest thread killed inside a checked call (no exit stop) lets go of what the call
held in the supervisor.

A connect to an AF_UNIX path runs on a pin (an ``O_PATH`` fd of the checked
socket, held by the supervisor until the call's exit stop). A guest killed
while its connect blocks never reaches that stop: before, the pin stayed open
for the rest of the run, one more supervisor fd per kill, until the
supervisor ran out and every guest's host opens, pins and execs failed with
EMFILE (review round 12, finding 6).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

KILLS = 40

GUEST = """
import os, signal, socket, sys, time
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(0)
fill = []
for _ in range(3):  # the backlog full: the next connect blocks
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.setblocking(False)
    try:
        c.connect(path)
    except BlockingIOError:
        pass
    fill.append(c)
def killed_connect():
    pid = os.fork()
    if pid == 0:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)
        os._exit(3)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
killed_connect()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    killed_connect()
print("done", flush=True)
sys.stdin.readline()
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_guest_killed_in_a_pinned_connect_leaks_no_supervisor_fd(synthfs,
                                                                    tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with synthfs.stack(repo) as stack:
        p = subprocess.Popen(
            synthfs.argv(repo, [sys.executable, "-c", GUEST, str(tmp_path / "full.sock"),
                                str(KILLS)], stack=stack),
            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            assert p.stdout is not None and p.stdin is not None
            assert p.stdout.readline() == "ready\n"
            before = _fds(p.pid)
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline() == "done\n"
            after = _fds(p.pid)
            p.stdin.write("end\n")
            p.stdin.close()
            assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
        finally:
            p.kill()
            p.wait()
    assert after - before < KILLS // 4, (before, after)
