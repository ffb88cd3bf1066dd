"""Faults injected into a running sandbox: nothing acknowledged is lost, nothing torn, no hang.

Every test runs real processes: a guest under ``synthfs run`` (embedded with
``--data``, or ``--agent`` on a separately started server and agent from
``tests/agent/agent_stack.py``), and injects one fault from outside: SIGKILL
of the guest, the agent, the server or the supervisor; a stopped server; a
token that expires; a full repository file system. What the guest saw comes
from its own report (one JSON line per call: errno and duration); what was
kept is read from the repository directory after every process has gone.

Every wait is bounded: a call that does not return within ``HANG`` seconds
fails the test as a hang (the run is killed), it never stalls the suite.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fault_stack import OPS_LOOP, Guest, Stack, alive, stray_files
from helpers import synthfs_command

#: Longest a single guest call may take under any fault (the agent's own
#: server timeout is 1-5 s, plus one resend): longer is a hang.
HANG = 20.0
#: Errnos a guest may see while a trusted part is away.
AWAY = {errno.EIO, errno.ETIMEDOUT}


@pytest.fixture
def stack(tmp_path: Path, synthfs: object) -> Stack:  # synthfs: skip where ptrace cannot run
    s = Stack(tmp_path)
    (s.root / "ref").write_bytes(os.urandom(100_000))
    (s.root / "out").mkdir()
    yield s  # type: ignore[misc]
    s.stop()


def _embedded(repo: Path) -> list[str]:
    """``synthfs run`` on its own server and agent for ``repo``, with a private cache
    and a known state directory (``repo.parent / "state"``: staged uploads)."""
    return ["--data", str(repo), "--cache", str(repo.parent / "cache"),
            "--state", str(repo.parent / "state")]


def _replayed(stack: Stack) -> None:
    """Write-back: what a close acknowledged may wait in the agent's journal. Start an
    agent on the same cache if none runs (it replays the journal), and wait until its
    server has everything queued (``synthfs agent sync``)."""
    if stack.agent is None or not alive(stack.agent.pid):
        stack.start_agent()
    done = subprocess.run([*synthfs_command(), "agent", "sync", "--agent", stack.agent_ep,
                           "--timeout", "60"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr


def _ops_guest(stack: Stack, seconds: float) -> tuple[Guest, Path]:
    stop = stack.tmp / "stop"
    g = Guest(["--agent", stack.agent_ep], OPS_LOOP, str(stop), str(seconds))
    return g, stop


def _check_ops(g: Guest, root: Path, allowed: set[int]) -> dict[str, int]:
    """Every call bounded, only ``allowed`` errnos, nothing torn, every acked write kept."""
    recs = [r for r in g.records() if "op" in r]
    assert recs, g.show()
    slow = [r for r in recs if r["dt"] > HANG]
    assert not slow, f"calls took longer than {HANG} s: {slow}\n{g.show()}"
    bad = [r for r in recs if r["errno"] and r["errno"] not in allowed]
    assert not bad, f"unexpected errnos {bad[:5]}\n{g.show()}"
    torn = [r for r in recs if "torn" in r]
    assert not torn, f"read back other bytes than /data/ref holds: {torn[:5]}"
    lost = []
    for r in recs:
        if "acked" in r:
            host = root / r["acked"].removeprefix("/data/")
            if not host.exists() or host.read_text() != r["body"]:
                lost.append(r["acked"])
    assert not lost, f"acknowledged writes lost or wrong: {lost}"
    return {
        "calls": len(recs),
        "failed": sum(1 for r in recs if r["errno"]),
        "acked": sum(1 for r in recs if "acked" in r),
    }


# -- the agent ---------------------------------------------------------------------------


def test_agent_killed_and_restarted(stack: Stack) -> None:
    """SIGKILL the agent mid-run: calls fail with EIO (bounded) until a new agent is up."""
    stack.start_server("-v")
    stack.start_agent("--timeout", "2")
    g, stop = _ops_guest(stack, 60)
    assert g.wait_for(lambda rs: sum("op" in r for r in rs) >= 8, 30), g.show()
    assert stack.agent is not None
    stack.agent.stop(signal.SIGKILL)
    t_killed = time.monotonic()
    # The guest keeps calling while no agent exists: at least one call must come back.
    n = len(g.records())
    assert g.wait_for(lambda rs: len(rs) > n + 2, HANG), f"guest stalled\n{g.show()}"
    first_agent_log = stack.agent.output()
    stack.start_agent("--timeout", "2")
    t_back = time.monotonic()
    # After the restart, calls succeed again.
    def recovered(rs: list[dict]) -> bool:
        tail = [r for r in rs if "op" in r][-8:]
        return len(tail) == 8 and not any(r["errno"] for r in tail)
    ok = g.wait_for(recovered, 2 * HANG)
    stop.touch()
    rc = g.finish(HANG)
    assert rc is not None, f"synthfs run hung\n{g.show()}"
    assert ok, f"calls did not recover after the agent restarted\n{g.show()}"
    stats = _check_ops(g, stack.root, AWAY)
    assert stats["failed"] > 0, "no call noticed the dead agent: the fault was not injected"
    # The restarted agent registered anew with the server, and served.
    assert "ready" in stack.agent.output().replace(first_agent_log, "", 1)
    assert stack.server is not None
    registrations = stack.server.output().count("registered: token")
    assert registrations == 2, f"{registrations} registrations for two agents"
    print(f"agent killed: {stats}, down {t_back - t_killed:.1f} s")


def test_agent_killed_while_serving(stack: Stack) -> None:
    """The agent dies holding a request (frozen, then SIGKILLed): EIO within seconds."""
    stack.start_server()
    stack.start_agent()
    g, stop = _ops_guest(stack, 60)
    assert g.wait_for(lambda rs: sum("op" in r for r in rs) >= 8, 30), g.show()
    assert stack.agent is not None
    stack.agent.popen.send_signal(signal.SIGSTOP)
    time.sleep(2.5)  # the guest's next call waits at the frozen (live) agent
    stack.agent.stop(signal.SIGKILL)
    t_killed = time.monotonic()
    came_back = g.wait_for(lambda rs: any(r.get("errno") for r in rs), HANG)
    took = time.monotonic() - t_killed
    stop.touch()
    rc = g.finish(HANG)
    assert came_back and rc is not None, f"the call in flight never came back\n{g.show()}"
    _replayed(stack)  # a new agent sends what the killed one had queued
    stats = _check_ops(g, stack.root, AWAY)
    assert stats["failed"] > 0, g.show()
    assert took < 3, f"the call on the dead agent took {took:.1f} s after its death"
    waited = max(r["dt"] for r in g.records() if r.get("errno"))
    assert waited > 2, f"a call on a live (frozen) agent gave up after {waited} s"
    print(f"agent killed while serving: {stats}, the call in flight returned {took:.1f} s later")


def test_embedded_agent_killed(tmp_path: Path, synthfs: object) -> None:
    """``synthfs run --data``: its own agent dies; every later call is EIO within seconds."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ref").write_bytes(os.urandom(100_000))
    (repo / "out").mkdir()
    stop = tmp_path / "stop"
    g = Guest(_embedded(repo), OPS_LOOP, str(stop), "60")
    assert g.wait_for(lambda rs: sum("op" in r for r in rs) >= 8, 30), g.show()
    agents = [p for p in _descendants(g.popen.pid)
              if b"-m\x00synthfs.agent\x00" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)
    n = len(g.records())
    assert g.wait_for(lambda rs: sum(1 for r in rs[n:] if r.get("errno")) >= 8, 2 * HANG), \
        f"the guest's calls did not fail promptly\n{g.show()}"
    stop.touch()
    rc = g.finish(HANG)
    assert rc == 0, f"exit {rc}\n{g.show()}"
    recs = [r for r in g.records() if "op" in r]
    after = [r for r in recs[n:] if r["errno"]]
    assert all(r["errno"] == errno.EIO for r in after), after[:5]
    assert max(r["dt"] for r in after) < 3, max(r["dt"] for r in after)
    # Write-back: closes acknowledged before the kill wait in the cache's journal; the
    # next run on that cache sends them.
    assert Guest(_embedded(repo), "pass").finish(HANG) == 0
    _check_ops(g, repo, AWAY)
    print(f"embedded agent killed: {len(after)} calls failed with EIO, "
          f"slowest {max(r['dt'] for r in after):.2f} s")


# -- the server ----------------------------------------------------------------------------


def _run_ops_around(stack: Stack, fault, seconds: float = 6.0) -> Guest:  # type: ignore[no-untyped-def]
    """Start the ops guest, let it work, call ``fault()``, let it work on; bounded throughout."""
    g, stop = _ops_guest(stack, 60)
    assert g.wait_for(lambda rs: sum("op" in r for r in rs) >= 8, 30), g.show()
    fault()
    n = len(g.records())
    # It goes on: a few more calls come back after the fault, then it is told to stop.
    g.wait_for(lambda rs: len(rs) > n + 16, seconds + HANG)
    time.sleep(max(0.0, seconds - 4))
    stop.touch()
    rc = g.finish(HANG)
    assert rc is not None, f"synthfs run hung\n{g.show()}"
    assert rc == 0, f"synthfs run: exit {rc}\n{g.show()}"
    return g


def test_server_restarted_during_a_run(stack: Stack) -> None:
    """The server stops and starts again mid-run: the guest notices nothing."""
    stack.start_server()
    stack.start_agent("-v")

    def restart() -> None:
        assert stack.server is not None
        stack.server.stop()
        stack.start_server()

    g = _run_ops_around(stack, restart)
    stats = _check_ops(g, stack.root, set())
    assert stack.agent is not None
    registrations = stack.agent.output().count("registered with")
    assert registrations >= 2, f"the agent registered {registrations} time(s): no restart seen"
    print(f"server restarted: {stats}")


def test_token_expiry_mid_run(stack: Stack) -> None:
    """Tokens live one second: the agent re-registers under a running guest, unnoticed."""
    stack.start_server("--token-ttl", "1", "-v")
    stack.start_agent("--attr-ttl", "0")
    g = _run_ops_around(stack, lambda: time.sleep(2.5))
    stats = _check_ops(g, stack.root, set())
    assert stack.server is not None
    registrations = stack.server.output().count("registered: token")
    assert registrations >= 3, f"only {registrations} registrations: did tokens expire?"
    print(f"token expiry: {stats}, {registrations} registrations")


def test_server_unreachable_for_5s(stack: Stack) -> None:
    """The server is frozen (SIGSTOP) for 5 s: calls fail within the bound, then work again."""
    stack.start_server()
    stack.start_agent("--timeout", "1", "--attr-ttl", "0")
    assert stack.server is not None

    def freeze() -> None:
        assert stack.server is not None
        stack.server.popen.send_signal(signal.SIGSTOP)
        try:
            time.sleep(5)
        finally:
            stack.server.popen.send_signal(signal.SIGCONT)

    g = _run_ops_around(stack, freeze)
    _replayed(stack)  # closes queued while it was frozen: sent once it answers again
    stats = _check_ops(g, stack.root, AWAY)
    assert stats["failed"] > 0, "no call noticed the frozen server: the fault was not injected"
    recs = [r for r in g.records() if "op" in r]
    assert not any(r["errno"] for r in recs[-8:]), f"calls did not recover\n{g.show()}"
    slow = max(r["dt"] for r in recs)
    assert slow < 5, f"a call waited {slow} s for a server the agent gives 1 s"
    print(f"server frozen 5 s: {stats}, slowest call {slow:.2f} s")


# -- the guest -----------------------------------------------------------------------------

#: Writes argv[1]'s new version in 64 KiB chunks (10 ms apart), printing its pid
#: after the first. With argv[2] == "rename" it writes argv[1].tmp and renames
#: it over argv[1] (the atomic-replace idiom).
SLOW_WRITER = r"""
import os, sys, time
path, how, chunks = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = path + ".tmp" if how == "rename" else path
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(chunks):
    os.write(fd, bytes([65 + i % 26]) * 65536)
    if i == 0:
        print(os.getpid(), flush=True)
    time.sleep(0.01)
os.close(fd)
if how == "rename":
    os.rename(target, path)
print("done", flush=True)
"""
CHUNKS = 40


def _new_version() -> bytes:
    return b"".join(bytes([65 + i % 26]) * 65536 for i in range(CHUNKS))


def _kill_writer_once(repo: Path, how: str, delay: float) -> bytes:
    """One guest killed ``delay`` s into its write; the file the repository then holds."""
    g = Guest(_embedded(repo), SLOW_WRITER, "/data/f", how, str(CHUNKS))
    try:
        assert g.wait_for(lambda _rs: bool(g.lines), 30), g.show()
        pid = int(g.lines[0])
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    finally:
        rc = g.finish(HANG)
    assert rc is not None, f"synthfs run hung after its guest was killed\n{g.show()}"
    assert rc == 128 + signal.SIGKILL, f"exit {rc}, expected the guest's SIGKILL\n{g.show()}"
    return (repo / "f").read_bytes()


@pytest.mark.parametrize("how", ["rename", "inplace"])
def test_guest_killed_mid_write(tmp_path: Path, synthfs: object, how: str) -> None:
    """SIGKILL a guest mid-write, three times: the repository holds a version, never a mix.

    ``rename`` (write a temp file, rename it over): the file is exactly the old
    or the new version. ``inplace`` (O_TRUNC, then write): as on a local file
    system the file holds what the guest wrote before it died (its exit uploads
    the copy), so the old version or a prefix of the new one; never old bytes
    after new ones, never bytes nobody wrote.
    """
    repo = tmp_path / "repo"
    repo.mkdir()
    old = b"old version\n" * 50_000
    new = _new_version()
    seen: list[str] = []
    for delay in (0.05, 0.15, 0.3):
        (repo / "f").write_bytes(old)
        got = _kill_writer_once(repo, how, delay)
        if how == "rename":
            assert got in (old, new), f"torn file: {len(got)} bytes, head {got[:20]!r}"
        else:
            assert got == old or new.startswith(got), \
                f"a mix: {len(got)} bytes, head {got[:20]!r}, tail {got[-20:]!r}"
        assert stray_files(repo, {"f", "f.tmp"}) == [], stray_files(repo, {"f", "f.tmp"})
        seen.append("old" if got == old else "new" if got == new else f"prefix {len(got)}")
    print(f"guest killed mid-write ({how}): {seen}")


# -- the supervisor ------------------------------------------------------------------------

#: Leaves a process tree behind (a sleeper, a forked child), prints every pid,
#: then writes /data/big in full and closes it (the upload), printing "closing".
TREE_WRITER = r"""
import os, subprocess, sys, time
sleeper = subprocess.Popen(["sleep", "300"])
child = os.fork()
if child == 0:
    time.sleep(300)
    os._exit(0)
print("pids", os.getpid(), sleeper.pid, child, flush=True)
fd = os.open("/data/big", os.O_WRONLY | os.O_TRUNC)
for i in range(int(sys.argv[1])):
    os.write(fd, bytes([65 + i % 26]) * 65536)
print("closing", flush=True)
os.close(fd)
print("closed", flush=True)
time.sleep(300)
"""


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return left
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


#: Seconds the embedded server and agent may outlive a SIGKILLed ``synthfs run``
#: (measured: 0.1-0.3 s; it was 10 s when the server stopped under the agent's upload).
TRUSTED_GONE = 3.0


@pytest.mark.parametrize(("when", "delay"), [("writing", 0.0), ("closing", 0.0),
                                           ("closing", 0.15)])
def test_supervisor_killed(tmp_path: Path, synthfs: object, when: str, delay: float) -> None:
    """SIGKILL ``synthfs run``: no guest survives, no partial upload is installed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    old = b"old\n" * 100_000
    (repo / "big").write_bytes(old)
    chunks = 160  # 10 MiB: its upload takes a while
    new = b"".join(bytes([65 + i % 26]) * 65536 for i in range(chunks))
    g = Guest(_embedded(repo), TREE_WRITER, str(chunks))
    try:
        assert g.wait_for(lambda _rs: any(x.startswith("pids") for x in g.lines), 30), g.show()
        guests = {int(p) for p in g.lines[0].split()[1:]}
        if when == "closing":
            assert g.wait_for(lambda _rs: "closing" in g.lines, 30), g.show()
        time.sleep(delay)  # 0.15 s after "closing": the upload is under way
        tree = _descendants(g.popen.pid)
        assert guests <= tree, (guests, tree)
        os.kill(g.popen.pid, signal.SIGKILL)
    finally:
        rc = g.finish(HANG)
    assert rc == -signal.SIGKILL
    survivors = _wait_gone(guests, 5)
    assert not survivors, f"guest processes outlived their supervisor: {survivors}"
    # The embedded agent (told by PDEATHSIG) finishes what it holds and goes; the
    # server follows it (its lifeline). Moments, not the agent's server timeouts.
    t_dead = time.monotonic()
    trusted_left = _wait_gone(tree - guests, TRUSTED_GONE)
    names = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in trusted_left if alive(p)}
    assert not trusted_left, f"embedded server/agent still running: {names}"
    print(f"trusted processes gone {time.monotonic() - t_dead:.1f} s after the supervisor")
    got = (repo / "big").read_bytes()
    assert got in (old, new), f"a partial upload was installed: {len(got)} bytes"
    assert stray_files(repo, {"big"}) == []
    print(f"supervisor killed while {when} (+{delay} s): file is {'new' if got == new else 'old'}")


def test_supervisor_killed_mid_upload(tmp_path: Path, synthfs: object) -> None:
    """SIGKILL ``synthfs run`` while the agent uploads a closed file: the upload
    is finished (the server waits for the agent), then both go within moments."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "big").write_bytes(b"old\n" * 100_000)
    chunks = 768  # 48 MiB: an upload long enough to be caught in flight
    new = b"".join(bytes([65 + i % 26]) * 65536 for i in range(chunks))
    staging = repo.parent / "state"
    # Write-through: the close itself uploads (write-back: tests/faults/test_writeback_faults.py).
    g = Guest([*_embedded(repo), "--write-through"], TREE_WRITER, str(chunks))
    try:
        assert g.wait_for(lambda _rs: "closing" in g.lines, 60), g.show()
        tree = _descendants(g.popen.pid)
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline and "closed" not in g.lines:
            with contextlib.suppress(OSError):
                if any(f.stat().st_size for f in staging.iterdir()):
                    break  # the server holds part of the upload
            time.sleep(0.005)
        assert "closed" not in g.lines, "the upload ended before it was seen in flight"
        held = sum(f.stat().st_size for f in staging.iterdir())
        os.kill(g.popen.pid, signal.SIGKILL)
        t_dead = time.monotonic()
    finally:
        rc = g.finish(HANG)
    assert rc == -signal.SIGKILL
    left = _wait_gone(tree, TRUSTED_GONE)
    took = time.monotonic() - t_dead
    names = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left if alive(p)}
    assert not left, f"still running {TRUSTED_GONE} s after synthfs run was killed: {names}"
    assert (repo / "big").read_bytes() == new, "the upload in flight was cut off"
    assert stray_files(repo, {"big"}) == []
    print(f"killed with {held >> 20} of {len(new) >> 20} MiB uploaded: "
          f"finished, server and agent gone {took:.1f} s after")


# -- the repository's disk -----------------------------------------------------------------

DISK_FILLER = r"""
import errno, os
def attempt(path, size, fsync=True):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"x" * size)
    e_sync = e_close = 0
    if fsync:
        try:
            os.fsync(fd)
        except OSError as e:
            e_sync = e.errno
    try:
        os.close(fd)
    except OSError as e:
        e_close = e.errno
    print(path, e_sync, e_close, flush=True)
attempt("/data/f", 3 << 20)
attempt("/data/g", 3 << 20, fsync=False)
attempt("/data/small", 1000)
print(len(open("/data/keep", "rb").read()), flush=True)
"""


def test_repository_disk_full(tmp_path: Path, synthfs: object) -> None:
    """A 1 MiB repository file system: ENOSPC to the guest, old data intact, still usable."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the repository needs root")
    # The repository is a directory of the small file system, beside the server's state
    # directory (the same mount, outside the served tree); the cache is elsewhere.
    fs = tmp_path / "fs"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    repo = fs / "repo"
    try:
        repo.mkdir()
        old, keep = b"old\n" * 25_000, os.urandom(300_000)
        (repo / "f").write_bytes(old)
        (repo / "keep").write_bytes(keep)
        # Write-through: a close reports the server's ENOSPC (write-back queues the file).
        stack = ["--data", str(repo), "--cache", str(tmp_path / "cache"),
                 "--state", str(fs / "state"), "--write-through"]
        g = Guest(stack, DISK_FILLER, cwd=tmp_path)
        rc = g.finish(60)
        assert rc == 0, f"exit {rc}\n{g.show()}"
        results = {line.split()[0]: line.split()[1:] for line in g.lines if line.startswith("/")}
        assert results["/data/f"] == [str(errno.ENOSPC)] * 2, g.show()
        assert results["/data/g"][1] == str(errno.ENOSPC), g.show()
        assert results["/data/small"] == ["0", "0"], f"a full disk broke later writes\n{g.show()}"
        assert g.lines[-1] == str(len(keep)), g.show()
        assert (repo / "f").read_bytes() == old, "the old version was damaged"
        assert (repo / "keep").read_bytes() == keep
        assert (repo / "small").read_bytes() == b"x" * 1000
        assert stray_files(repo, {"f", "g", "keep", "small"}) == []
        # Filled to the last block, the repository is still served (a new server reads it).
        with contextlib.suppress(OSError), open(repo / "filler", "wb") as filler:
            while filler.write(b"\0" * 4096):
                filler.flush()
        again = Guest(stack, "print(len(open('/data/keep', 'rb').read()))",
                      cwd=tmp_path)
        rc = again.finish(60)
        assert rc == 0 and again.lines == [str(len(keep))], \
            f"a full repository is not served\n{again.show()}"
    finally:
        subprocess.run(["umount", "-l", str(fs)], timeout=30, check=False)


#: Signals (0: a probe) the agent named in argv[1], then the pid a host file
#: argv[2] will name (a restarted agent); prints each errno.
SIGNAL_PROBE = r"""
import os, sys, time
def probe(pid):
    try:
        os.kill(pid, 0)
        return 0
    except OSError as e:
        return e.errno
print("first", probe(int(sys.argv[1])), flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
print("restarted", probe(int(open(sys.argv[2]).read())), flush=True)
"""


@pytest.mark.parametrize("who", ["agent", "server"])
def test_restarted_trusted_process_is_still_out_of_reach(stack: Stack, who: str) -> None:
    """Signals toward the agent (with --agent: its local server) get EPERM, and toward the
    process that replaced it too — a server before any guest request has made the agent
    register with it."""
    server = stack.start_server()
    agent = stack.start_agent()
    victim = agent if who == "agent" else server
    newpid = stack.tmp / "newpid"
    g = Guest(["--agent", stack.agent_ep], SIGNAL_PROBE, str(victim.pid), str(newpid))
    assert g.wait_for(lambda _rs: any(x.startswith("first") for x in g.lines), 30), g.show()
    assert g.lines[0] == f"first {errno.EPERM}", g.show()
    victim.stop(signal.SIGKILL)
    restarted = stack.start_agent() if who == "agent" else stack.start_server()
    newpid.with_suffix(".tmp").write_text(str(restarted.pid))
    newpid.with_suffix(".tmp").rename(newpid)  # whole: the guest reads it at once
    rc = g.finish(HANG)
    assert rc == 0, g.show()
    assert g.lines[-1] == f"restarted {errno.EPERM}", g.show()


# -- faults during an upload ---------------------------------------------------------------

#: Writes argv[1] MiB to /data/big (a pattern), prints "closing", closes (the
#: upload) and prints the close's errno; then prints the errno of a second,
#: small write (the stack still works).
BIG_WRITER = r"""
import os, sys, time
fd = os.open("/data/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(int(sys.argv[1])):
    os.write(fd, bytes([65 + i % 26]) * (1 << 20))
print("closing", flush=True)
try:
    os.close(fd)
    print("close 0", flush=True)
except OSError as e:
    print("close", e.errno, flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)  # the fault is over: is the stack usable again?
try:
    with open("/data/after", "w") as f:
        f.write("after")
    print("after 0", flush=True)
except OSError as e:
    print("after", e.errno, flush=True)
"""


def _big(mib: int) -> bytes:
    return b"".join(bytes([65 + i % 26]) * (1 << 20) for i in range(mib))


def _upload_fault(stack: Stack, fault, limit: float = HANG,  # type: ignore[no-untyped-def]
                  mib: int = 48) -> tuple[int, int]:
    """Run BIG_WRITER, inject ``fault()`` as it closes; (close errno, later write's errno).

    The agent runs ``--write-through``: the close itself uploads (the faults of
    write-back's later upload: tests/faults/test_writeback_faults.py).

    The close must return within ``limit`` seconds of the fault's start.
    """
    old = b"old\n" * 1000
    (stack.root / "big").write_bytes(old)
    over = stack.tmp / "fault-over"
    g = Guest(["--agent", stack.agent_ep], BIG_WRITER, str(mib), str(over))
    assert g.wait_for(lambda _rs: "closing" in g.lines, 60), g.show()
    t0 = time.monotonic()
    injector = threading.Thread(target=fault)
    injector.start()
    returned = g.wait_for(lambda _rs: any(x.startswith("close ") for x in g.lines), 2 * HANG)
    took = time.monotonic() - t0
    injector.join(2 * HANG)
    assert returned, f"the close never returned\n{g.show()}"
    over.touch()
    rc = g.finish(4 * HANG)
    assert rc is not None, f"synthfs run hung\n{g.show()}"
    assert rc == 0, g.show()
    close_err = int(next(x for x in g.lines if x.startswith("close")).split()[1])
    after_err = int(next(x for x in g.lines if x.startswith("after")).split()[1])
    got = (stack.root / "big").read_bytes()
    new = _big(mib)
    assert got in (old, new), f"a torn upload was installed: {len(got)} bytes"
    if close_err == 0:
        assert got == new, "close said 0 but the server holds the old version"
    assert stray_files(stack.root, {"big", "after", "out", "ref"}) == []
    print(f"close returned {took:.1f} s after the fault began")
    assert took < limit, f"the close took {took:.1f} s (bound {limit} s)"
    return close_err, after_err


def test_server_restarted_during_an_upload(stack: Stack) -> None:
    """The server restarts while a 48 MiB close uploads: the close succeeds, never torn."""
    stack.start_server()
    stack.start_agent("--write-through")

    def restart() -> None:
        time.sleep(0.1)
        assert stack.server is not None
        stack.server.stop(signal.SIGKILL)
        stack.start_server()

    close_err, after_err = _upload_fault(stack, restart)
    print(f"server restarted during an upload: close errno {close_err}")
    # The agent uploads again to the new server (which lost the staged chunks).
    assert close_err == 0, errno.errorcode.get(close_err, close_err)
    assert after_err == 0


def test_token_expiry_during_an_upload(stack: Stack) -> None:
    """Tokens live 0.25 s; a 96 MiB upload outlives several: the close succeeds."""
    stack.start_server("--token-ttl", "0.25", "-v")
    stack.start_agent("--write-through")
    close_err, after_err = _upload_fault(stack, lambda: None, mib=96)
    assert stack.server is not None
    registrations = stack.server.output().count("registered: token")
    print(f"token expiry during an upload: close errno {close_err}, {registrations} registrations")
    assert close_err == 0, f"close failed: {errno.errorcode.get(close_err, close_err)}"
    assert after_err == 0


def test_server_frozen_during_an_upload(stack: Stack) -> None:
    """The server freezes 5 s mid-upload: a bounded error (or success), never torn."""
    stack.start_server()
    stack.start_agent("--write-through", "--timeout", "1")

    def freeze() -> None:
        time.sleep(0.2)
        assert stack.server is not None
        stack.server.popen.send_signal(signal.SIGSTOP)
        time.sleep(5)
        stack.server.popen.send_signal(signal.SIGCONT)

    close_err, after_err = _upload_fault(stack, freeze, limit=4)  # the agent's timeout is 1 s
    assert close_err in {0} | AWAY, errno.errorcode.get(close_err, close_err)
    assert after_err == 0
    print(f"server frozen during an upload: close errno {close_err}")


def test_agent_killed_during_an_upload(stack: Stack) -> None:
    """The agent dies while a close uploads: EIO at once, old version kept, no stray files."""
    stack.start_server()
    stack.start_agent("--write-through")

    def kill() -> None:
        time.sleep(0.2)
        assert stack.agent is not None
        stack.agent.stop(signal.SIGKILL)

    close_err, after_err = _upload_fault(stack, kill, limit=3)
    print(f"agent killed during an upload: close errno {close_err}, after {after_err}")
    assert close_err in {0} | AWAY
    assert after_err in AWAY  # no agent any more


# -- longer variants (-m slow) -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rename", "inplace"])
def test_guest_killed_mid_write_many(tmp_path: Path, synthfs: object, how: str) -> None:
    """20 kills at random points of the write (and after it): old, new or a prefix, never a mix."""
    import random

    repo = tmp_path / "repo"
    repo.mkdir()
    old, new = b"old version\n" * 50_000, _new_version()
    rng = random.Random(5)
    seen: dict[str, int] = {}
    for _ in range(20):
        (repo / "f").write_bytes(old)
        g = Guest(_embedded(repo), SLOW_WRITER, "/data/f", how, str(CHUNKS))
        assert g.wait_for(lambda _rs, g=g: bool(g.lines), 30), g.show()
        time.sleep(rng.uniform(0, 0.5))
        with contextlib.suppress(ProcessLookupError):  # finished first: the new version
            os.kill(int(g.lines[0]), signal.SIGKILL)
        rc = g.finish(HANG)
        assert rc in (0, 128 + signal.SIGKILL), g.show()
        got = (repo / "f").read_bytes()
        if rc == 0:
            assert got == new
        elif how == "rename":
            assert got in (old, new), f"torn file: {len(got)} bytes"
        else:
            assert got == old or new.startswith(got), f"a mix: {len(got)} bytes"
        assert stray_files(repo, {"f", "f.tmp"}) == []
        kind = "old" if got == old else "new" if got == new else "prefix"
        seen[kind] = seen.get(kind, 0) + 1
    print(f"guest killed mid-write x20 ({how}): {seen}")


@pytest.mark.slow
def test_supervisor_killed_many(tmp_path: Path, synthfs: object) -> None:
    """10 supervisor kills at random points of a 10 MiB close: no survivor, old or new."""
    import random

    rng = random.Random(7)
    repo = tmp_path / "repo"
    repo.mkdir()
    chunks = 160
    old = b"old\n" * 100_000
    new = b"".join(bytes([65 + i % 26]) * 65536 for i in range(chunks))
    seen: dict[str, int] = {}
    for _ in range(10):
        (repo / "big").write_bytes(old)
        g = Guest(_embedded(repo), TREE_WRITER, str(chunks))
        assert g.wait_for(lambda _rs, g=g: "closing" in g.lines, 60), g.show()
        guests = {int(p) for p in g.lines[0].split()[1:]}
        tree = _descendants(g.popen.pid)
        time.sleep(rng.uniform(0, 0.4))
        os.kill(g.popen.pid, signal.SIGKILL)
        g.finish(HANG)
        assert not _wait_gone(guests, 5), "a guest outlived its supervisor"
        assert not _wait_gone(tree - guests, TRUSTED_GONE), "the embedded server or agent stayed"
        got = (repo / "big").read_bytes()
        assert got in (old, new), f"a partial upload was installed: {len(got)} bytes"
        assert stray_files(repo, {"big"}) == []
        kind = "old" if got == old else "new"
        seen[kind] = seen.get(kind, 0) + 1
    print(f"supervisor killed x10 during a close: {seen}")


@pytest.mark.slow
def test_server_killed_for_5s(stack: Stack) -> None:
    """The server is SIGKILLed (its socket goes) and comes back 5 s later."""
    stack.start_server()
    stack.start_agent("--timeout", "1", "--attr-ttl", "0", "-v")

    def outage() -> None:
        assert stack.server is not None
        stack.server.stop(signal.SIGKILL)
        time.sleep(5)
        stack.start_server()

    g = _run_ops_around(stack, outage, seconds=8)
    stats = _check_ops(g, stack.root, AWAY)
    assert stats["failed"] > 0, "no call noticed the dead server"
    recs = [r for r in g.records() if "op" in r]
    assert not any(r["errno"] for r in recs[-8:]), f"calls did not recover\n{g.show()}"
    assert max(r["dt"] for r in recs) < 5
    assert stack.agent is not None and stack.agent.output().count("registered with") >= 2
    print(f"server killed for 5 s: {stats}")


@pytest.mark.slow
def test_agent_killed_three_times(stack: Stack) -> None:
    """Three agent deaths and restarts in one run: EIO while down, success after each."""
    stack.start_server("-v")
    stack.start_agent()
    g, stop = _ops_guest(stack, 120)
    assert g.wait_for(lambda rs: sum("op" in r for r in rs) >= 8, 30), g.show()
    for _ in range(3):
        assert stack.agent is not None
        stack.agent.stop(signal.SIGKILL)
        n = len(g.records())
        assert g.wait_for(lambda rs, n=n: len(rs) > n + 2, HANG), g.show()
        stack.start_agent()
        n = len(g.records())

        def recovered(rs: list[dict], n: int = n) -> bool:
            tail = [r for r in rs[n:] if "op" in r][-8:]
            return len(tail) == 8 and not any(r["errno"] for r in tail)

        assert g.wait_for(recovered, 2 * HANG), f"no recovery\n{g.show()}"
    stop.touch()
    assert g.finish(HANG) is not None, g.show()
    stats = _check_ops(g, stack.root, AWAY)
    assert stack.server is not None
    assert stack.server.output().count("registered: token") == 4
    print(f"agent killed three times: {stats}")


CACHE_READER = r"""
import hashlib, os
for name in ("big", "small"):
    try:
        with open(f"/data/{name}", "rb") as f:
            print(name, 0, hashlib.sha256(f.read()).hexdigest(), flush=True)
    except OSError as e:
        print(name, e.errno, "-", flush=True)
"""


def test_cache_disk_full(tmp_path: Path, synthfs: object) -> None:
    """The agent's cache on a 1 MiB file system: a 2 MB file is refused, never served torn."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the cache needs root")
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    repo.mkdir()
    cache.mkdir()
    # mode=0700: the agent refuses a cache directory others may write (a tmpfs is 1777)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                              str(cache)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        big, small = os.urandom(2_000_000), b"small\n"
        (repo / "big").write_bytes(big)
        (repo / "small").write_bytes(small)
        g = Guest(["--data", str(repo), "--cache", str(cache)], CACHE_READER)
        rc = g.finish(60)
        assert rc == 0, g.show()
        got = {line.split()[0]: line.split()[1:] for line in g.lines}
        # The big file does not fit: ENOSPC (the errno kept), never other bytes.
        assert got["big"][0] == str(errno.ENOSPC), f"big: {got['big']}\n{g.show()}"
        # A failed fetch leaves nothing behind: the small file still fits.
        assert got["small"] == ["0", hashlib.sha256(small).hexdigest()], g.show()
    finally:
        subprocess.run(["umount", "-l", str(cache)], timeout=30, check=False)


#: Writes argv[1] MiB to /data/big, prints "written", waits for the host file
#: argv[2], then closes (the upload) and prints the close's errno.
WRITE_WAIT_CLOSE = r"""
import os, sys, time
fd = os.open("/data/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(int(sys.argv[1])):
    os.write(fd, bytes([65 + i % 26]) * (1 << 20))
print("written", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
try:
    os.close(fd)
    print("close 0", flush=True)
except OSError as e:
    print("close", e.errno, flush=True)
"""


def test_close_after_the_agent_restarted(stack: Stack) -> None:
    """A file written before an agent restart is closed after it: the new agent uploads it.

    The new agent is slow to answer (frozen 2 s): the supervisor must wait for it,
    not take the old agent's death for this call's.
    """
    stack.start_server()
    stack.start_agent()
    go = stack.tmp / "go"
    mib = 16
    g = Guest(["--agent", stack.agent_ep], WRITE_WAIT_CLOSE, str(mib), str(go))
    assert g.wait_for(lambda _rs: "written" in g.lines, 60), g.show()
    assert stack.agent is not None
    stack.agent.stop(signal.SIGKILL)
    new = stack.start_agent()
    t0 = time.monotonic()
    new.popen.send_signal(signal.SIGSTOP)  # a busy new agent: its answer takes 2 s
    go.touch()
    time.sleep(2)
    new.popen.send_signal(signal.SIGCONT)
    g.wait_for(lambda _rs: any(x.startswith("close") for x in g.lines), 4 * HANG)
    took = time.monotonic() - t0
    rc = g.finish(4 * HANG)
    assert rc == 0, g.show()
    print(f"close after the agent restarted: {g.lines[-1]} in {took:.1f} s")
    assert g.lines[-1] == "close 0", g.show()
    _replayed(stack)  # write-back: the close queued it
    got = (stack.root / "big").read_bytes()
    assert got == _big(mib), f"the server holds {len(got)} bytes"
