"""Write-back under faults: nothing a close acknowledged is lost, nothing torn.

A close on /data is acknowledged once the file is durable in the agent's
journal (agent/writeback.py); these runs check that every such file reaches
the server whatever happens after: the agent SIGKILLed with 1,000 closed files
queued and restarted, the server down while guests write, the cache's file
system full. Real processes throughout (guests under ``synthfs run``); what
was kept is read from the repository directory.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fault_stack import Guest, Stack
from helpers import synthfs_command

#: Longest a single guest call may take under any fault.
HANG = 20.0

#: Writes argv[1] files /data/out/<argv[2]><i>, each its own content; one JSON line a
#: file: {"name", "errno", "body"} (errno 0: every write and the close returned 0).
WRITER = r"""
import json, os, sys
n, prefix = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    name = f"/data/out/{prefix}{i}"
    body = f"{prefix}{i}:".encode() * (1 + i % 7)
    err = 0
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
    except OSError as e:
        err = e.errno
    print(json.dumps({"name": name, "errno": err, "body": body.decode()}), flush=True)
"""


@pytest.fixture
def stack(tmp_path: Path, synthfs: object) -> Stack:  # synthfs: skip where ptrace cannot run
    s = Stack(tmp_path)
    s.agent_defaults = ("--write-back",)
    (s.root / "out").mkdir()
    yield s  # type: ignore[misc]
    s.stop()


def _acked(g: Guest) -> dict[str, str]:
    return {r["name"]: r["body"] for r in g.records() if "name" in r and r["errno"] == 0}


def _missing(root: Path, acked: dict[str, str]) -> list[str]:
    out = []
    for name, body in acked.items():
        host = root / name.removeprefix("/data/")
        if not host.exists() or host.read_text() != body:
            out.append(name)
    return out


def _agent_sync(stack: Stack, *flags: str) -> tuple[int, str]:
    done = subprocess.run([*synthfs_command(), "agent", "sync", "--agent", stack.agent_ep,
                           "--timeout", "60", *flags], capture_output=True, text=True,
                          timeout=90)
    return done.returncode, done.stdout + done.stderr


def _queued(stack: Stack) -> int:
    rc, out = _agent_sync(stack, "--status")
    assert rc == 0, out
    return int(out.split("queued ")[1].split()[0])


def test_agent_sigkilled_with_1000_closed_files_queued(stack: Stack) -> None:
    """1,000 closes acknowledged, none uploaded yet; SIGKILL; restart: all reach the server."""
    stack.start_server()
    stack.start_agent("--upload-delay", "3600")  # nothing leaves before the kill
    g = Guest(["--agent", stack.agent_ep], WRITER, "1000", "q")
    rc = g.finish(600)
    assert rc == 0, g.show()
    acked = _acked(g)
    assert len(acked) == 1000, g.show()
    assert _queued(stack) == 1000
    assert stack.agent is not None
    stack.agent.stop(signal.SIGKILL)
    assert len(_missing(stack.root, acked)) == 1000  # the server has none of the contents
    t0 = time.monotonic()
    stack.start_agent()  # replays its journal
    deadline = time.monotonic() + 120
    while _missing(stack.root, acked) and time.monotonic() < deadline:
        time.sleep(0.5)
    lost = _missing(stack.root, acked)
    assert not lost, f"{len(lost)} acknowledged files never reached the server: {lost[:5]}"
    print(f"1,000 queued files uploaded {time.monotonic() - t0:.1f} s after the restart")


def _server_down_while_guests_write(stack: Stack, outage: float) -> None:
    stack.start_server()
    # A bound longer than the writes: the queue is full when the server goes away.
    stack.start_agent("--timeout", "1", "--upload-delay", str(outage + 10))
    before = Guest(["--agent", stack.agent_ep], WRITER, "100", "b")
    assert before.finish(300) == 0, before.show()
    acked = _acked(before)
    assert len(acked) == 100
    assert stack.server is not None
    stack.server.stop(signal.SIGKILL)
    t_down = time.monotonic()
    # Guests go on writing while the server is down: each call bounded, EIO at worst.
    during = Guest(["--agent", stack.agent_ep], WRITER, "200", "d")
    time.sleep(outage)
    stack.start_server()
    print(f"server down {time.monotonic() - t_down:.1f} s, "
          f"{_queued(stack)} closed files queued when it came back")
    rc = during.finish(300)
    assert rc == 0, during.show()
    errs = {r["errno"] for r in during.records() if "name" in r}
    assert errs <= {0, errno.EIO}, during.show()
    acked.update(_acked(during))
    rc, out = _agent_sync(stack)
    assert rc == 0, out
    lost = _missing(stack.root, acked)
    assert not lost, f"{len(lost)} acknowledged files lost: {lost[:5]}"
    assert _queued(stack) == 0


def test_server_down_while_guests_write(stack: Stack) -> None:
    """A 3 s outage with 100 closed files queued: the queue drains once it is back."""
    _server_down_while_guests_write(stack, 3.0)


@pytest.mark.slow
def test_server_down_30s_while_guests_write(stack: Stack) -> None:
    _server_down_while_guests_write(stack, 30.0)


#: Small files, then one too big for the cache, then small ones again; a JSON line
#: each (as WRITER), the big one's errno the first write or close that failed.
FILLER = r"""
import json, os
def put(name, body):
    err = 0
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        err = e.errno
    print(json.dumps({"name": name, "errno": err, "body": body.decode()}), flush=True)
for i in range(20):
    put(f"/data/out/s{i}", f"small {i}\n".encode())
put("/data/out/big", b"B" * 3_000_000)
for i in range(20, 40):
    put(f"/data/out/s{i}", f"small {i}\n".encode())
"""


def test_cache_disk_full_while_writing(tmp_path: Path, synthfs: object) -> None:
    """The cache's file system fills up: writes fail ENOSPC in the guest, every close that
    returned 0 reaches the server."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the cache needs root")
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    (repo / "out").mkdir(parents=True)
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                              str(cache)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        g = Guest(["--data", str(repo), "--cache", str(cache), "--write-back"], FILLER)
        rc = g.finish(300)
        assert rc == 0, g.show()
        recs = {r["name"]: r for r in g.records() if "name" in r}
        assert recs["/data/out/big"]["errno"] == errno.ENOSPC, g.show()
        acked = _acked(g)
        assert len(acked) >= 20, g.show()  # the small files before the big one at least
        lost = _missing(repo, acked)
        assert not lost, f"acknowledged files lost: {lost}\n{g.show()}"
        print(f"cache full: {len(acked)} of {len(recs)} closes acknowledged, all on the server")
    finally:
        subprocess.run(["umount", "-l", str(cache)], timeout=30, check=False)


def test_agent_sync_reports_and_waits(stack: Stack) -> None:
    """``synthfs agent sync --status`` shows the queue; ``synthfs agent sync`` empties it."""
    stack.start_server()
    stack.start_agent("--upload-delay", "600")
    g = Guest(["--agent", stack.agent_ep], WRITER, "5", "s")
    assert g.finish(120) == 0, g.show()
    rc, out = _agent_sync(stack, "--status")
    assert rc == 0 and "queued 5" in out, out
    assert _missing(stack.root, _acked(g))  # queued, not sent
    rc, out = _agent_sync(stack)
    assert rc == 0 and "uploaded 5, queued 0" in out, out
    assert not _missing(stack.root, _acked(g))
    json.dumps(out)  # (one line, printable)


#: Closes /data/out/a, fsyncs it through a read-only fd, says so and waits for the host
#: file argv[1]; closes /data/out/b, runs sync(1) (a process that wrote nothing), says
#: so and waits for argv[2].
FSYNCER = r"""
import os, subprocess, sys, time
def wait(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
def put(name, body):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, body)
    os.close(fd)
put("/data/out/a", b"fsynced")
ro = os.open("/data/out/a", os.O_RDONLY)
os.fsync(ro)
os.close(ro)
print("fsynced", flush=True)
wait(sys.argv[1])
put("/data/out/b", b"synced")
subprocess.run(["sync"], check=True)
print("synced", flush=True)
wait(sys.argv[2])
put("/data/out/c", b"synced by another sandbox")
print("closed", flush=True)
wait(sys.argv[3])
"""


def test_fsync_and_sync_return_once_the_server_has_it(stack: Stack) -> None:
    """With nothing uploaded behind its back (a bound of 10 min), what fsync (of any fd
    on the file) or sync (by another process, or another sandbox of the same agent)
    acknowledged is on the server at once."""
    stack.start_server()
    stack.start_agent("--upload-delay", "600")
    go = [stack.tmp / f"go{i}" for i in range(3)]
    g = Guest(["--agent", stack.agent_ep], FSYNCER, *map(str, go))
    try:
        assert g.wait_for(lambda _rs: "fsynced" in g.lines, 120), g.show()
        assert (stack.root / "out" / "a").read_bytes() == b"fsynced"
        go[0].touch()
        assert g.wait_for(lambda _rs: "synced" in g.lines, 120), g.show()
        assert (stack.root / "out" / "b").read_bytes() == b"synced"
        go[1].touch()
        assert g.wait_for(lambda _rs: "closed" in g.lines, 120), g.show()
        assert (stack.root / "out" / "c").read_bytes() == b""  # queued
        other = Guest(["--agent", stack.agent_ep], "import os; os.sync()")
        assert other.finish(HANG) == 0, other.show()
        assert (stack.root / "out" / "c").read_bytes() == b"synced by another sandbox"
    finally:
        for f in go:
            f.touch()
        assert g.finish(HANG) == 0, g.show()


#: Closes /data/out/f with the first version, reopens it (argv[1]: "rdwr", O_RDWR, and
#: writes the first half of the second version over it; "trunc", O_TRUNC, and writes
#: nothing yet), says "reopened" and waits for the host file argv[2]; then writes the
#: rest of the second version, closes, says "closed again" and waits for argv[3].
REOPENER = r"""
import os, sys, time
def wait(path):
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
first, second = b"first version\n" * 4000, b"SECOND VERSION\n" * 4000
name = "/data/out/f"
fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, first)
os.close(fd)
if sys.argv[1] == "rdwr":
    fd = os.open(name, os.O_RDWR)
    done = os.pwrite(fd, second[:len(second) // 2], 0)
else:
    fd = os.open(name, os.O_RDWR | os.O_TRUNC)
    done = 0
print("reopened", flush=True)
wait(sys.argv[2])
os.pwrite(fd, second[done:], done)
os.close(fd)
print("closed again", flush=True)
wait(sys.argv[3])
"""
FIRST, SECOND = b"first version\n" * 4000, b"SECOND VERSION\n" * 4000


@pytest.mark.parametrize("how", ["rdwr", "trunc"])
def test_reopened_before_its_upload_the_closed_version_survives_sigkill(
        stack: Stack, how: str) -> None:
    """Close, reopen for writing (O_RDWR and half a new version written; O_TRUNC), then
    SIGKILL the agent before the upload: after the restart the server gets exactly the
    closed version (not a mix, not an empty file) and nothing else while the guest still
    writes; the second close's version follows when it closes."""
    stack.start_server()
    stack.start_agent("--upload-delay", "600")  # nothing leaves before the kill
    go = [stack.tmp / "go0", stack.tmp / "go1"]
    g = Guest(["--agent", stack.agent_ep], REOPENER, how, *map(str, go))
    f = stack.root / "out" / "f"
    try:
        assert g.wait_for(lambda _rs: "reopened" in g.lines, 120), g.show()
        assert f.read_bytes() == b""  # created by the server, the content queued
        assert stack.agent is not None
        stack.agent.stop(signal.SIGKILL)
        stack.start_agent()  # replays its journal at once
        deadline = time.monotonic() + 10
        while f.read_bytes() == b"" and time.monotonic() < deadline:
            time.sleep(0.05)
        got = f.read_bytes()
        assert got == FIRST, (f"the server has {len(got)} bytes, head {got[:16]!r}, "
                              f"tail {got[-16:]!r}: not the closed version")
        # Nothing more goes while the guest writes: not the upload delay, not another
        # process's exit (``--status`` queues changed copies as an exit does).
        assert _queued(stack) == 0
        time.sleep(1.5)
        assert f.read_bytes() == FIRST
        go[0].touch()
        assert g.wait_for(lambda _rs: "closed again" in g.lines, 60), g.show()
        deadline = time.monotonic() + 10
        while f.read_bytes() != SECOND and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f.read_bytes() == SECOND, "the second close's version never arrived"
        assert _queued(stack) == 0
        assert not list((stack.cache).glob("*/snaps/*")), "a version kept aside stayed"
    finally:
        for p in go:
            p.touch()
        assert g.finish(HANG) == 0, g.show()


def test_a_file_an_exit_closes_is_queued_at_the_exit(stack: Stack) -> None:
    """A shell redirect writes through a dup2'd fd that only the exit closes: the exit
    queues it (no fd writes it any more), as a close would."""
    stack.start_server()
    stack.start_agent("--upload-delay", "600")
    argv = [*synthfs_command(), "run", "--agent", stack.agent_ep, "--", "/bin/sh", "-c",
            "echo redirected > /data/out/r"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _queued(stack) == 1
    rc, out = _agent_sync(stack)
    assert rc == 0, out
    assert (stack.root / "out" / "r").read_text() == "redirected\n"
