"""Escape suite: a file lease on a /data fd (fcntl F_SETLEASE).

A /data fd is an fd on the agent's cache copy, a file of the same uid, so a
guest could take a lease on it. Any other open of it then waits until the
holder lets go or the kernel's lease-break time (45 s) ends: the agent's
truncation for another guest's ``O_TRUNC`` open slept that long in its only
loop, and every run on that agent got EIO meanwhile, again at will (review
round 12, finding 2). A lease on a /data file is refused with EAGAIN (the
kernel's answer when another open is in the way, as the agent's is); host
files keep theirs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

GUEST = """
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
host = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(host, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print("host lease", fcntl.fcntl(host, fcntl.F_GETLEASE) == fcntl.F_RDLCK, flush=True)
fcntl.fcntl(host, fcntl.F_SETLEASE, fcntl.F_UNLCK)
fd = os.open("/data/a.txt", os.O_RDONLY)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    print("data lease taken", flush=True)
except OSError as e:
    print("data lease", e.errno, flush=True)
if os.fork() == 0:
    t = time.monotonic()
    os.close(os.open("/data/a.txt", os.O_WRONLY | os.O_TRUNC))
    print("truncated within 10 s", time.monotonic() - t < 10, flush=True)
    os._exit(0)
os.wait()
"""


def test_a_lease_on_a_data_file_is_refused(synthfs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("content\n")
    host = tmp_path / "host.txt"
    host.write_text("a host file\n")
    t = time.monotonic()
    out = synthfs.run(repo, [sys.executable, "-c", GUEST, str(host)], cwd=tmp_path)
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == ["host lease True", "data lease 11",
                                       "truncated within 10 s True"], out.show()
    assert (repo / "a.txt").read_text() == ""
    assert time.monotonic() - t < 40, out.show()
