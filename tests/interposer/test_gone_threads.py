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

import sys
from pathlib import Path

import helpers
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


def test_a_guest_killed_in_a_pinned_connect_leaks_no_supervisor_fd(synthfs,
                                                                    tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = [sys.executable, "-c", GUEST, str(tmp_path / "full.sock"), str(KILLS)]
    grew = helpers.supervisor_fd_growth(synthfs, repo, argv, cwd=tmp_path)
    assert grew < KILLS // 4, grew
