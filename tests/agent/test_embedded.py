"""agent.embedded: a private server + agent pair that starts, serves and leaves nothing behind."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from synthfs.agent import embedded as emb
from synthfs.agent.embedded import EmbeddedError, TrustedStack, embedded
from synthfs.protocol.client import Client
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Commit,
    Hello,
    Open,
    Opened,
    Stat,
    StatReply,
    Welcome,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; embedded() waits for both.
    return Path(f"/proc/{pid}").exists()


def test_starts_serves_and_tears_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_bytes(b"hi there")
    t0 = time.monotonic()
    with embedded(data, cache_dir=tmp_path / "cache") as s:
        ready_in = time.monotonic() - t0
        assert isinstance(s, TrustedStack)
        work = Path(s.workdir)
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        assert not (work / "bootstrap.key").exists()  # deleted once both were ready
        assert s.agent_endpoint.startswith("ipc://") and s.server_endpoint.startswith("ipc://")
        with Client(s.agent_endpoint, timeout=10) as c:
            w = c.call(Hello(version=PROTOCOL_VERSION))
            assert isinstance(w, Welcome)
            assert str(tmp_path / "cache") in w.refused_paths
            assert s.workdir in w.refused_paths
            st = c.call(Stat(path="/hello.txt"))
            assert isinstance(st, StatReply) and st.attrs.size == 8
            o = c.call(Open(path="/hello.txt", flags=os.O_RDWR))
            assert isinstance(o, Opened)
            assert Path(o.host_path).read_bytes() == b"hi there"
            Path(o.host_path).write_bytes(b"changed")
            c.call(Commit(path="/hello.txt", wait=True))
        assert (data / "hello.txt").read_bytes() == b"changed"
        pids = (s.server_pid, s.agent_pid)
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            # The key is 64 hex digits: none in argv or the environment.
            assert not re.search(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", cmdline + environ)
    assert not any(_alive(pid) for pid in pids)
    assert not work.exists()
    print(f"embedded ready in {ready_in * 1000:.0f} ms")


def test_bad_data_dir_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    with pytest.raises(EmbeddedError, match="does not exist"), embedded(tmp_path / "nope"):
        pass
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(EmbeddedError, match="not a directory"), embedded(f):
        pass
    assert set(os.listdir(tmp_path)) == before | {"file"}


def test_startup_failure_reports_the_process_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # A cache "directory" that is a file: the agent cannot start and says why.
    bad_cache = tmp_path / "cache"
    bad_cache.write_bytes(b"")
    with pytest.raises(EmbeddedError) as info, embedded(data, cache_dir=bad_cache,
                                                        startup_timeout=15):
        pass
    assert "agent" in str(info.value)


def test_exception_inside_the_block_still_tears_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(RuntimeError, match="boom"), \
            embedded(data, cache_dir=tmp_path / "cache") as s:
        pids = (s.server_pid, s.agent_pid)
        work = s.workdir
        raise RuntimeError("boom")
    assert not any(_alive(pid) for pid in pids)
    assert not os.path.exists(work)


@pytest.mark.parametrize("fork", [False, True], ids=["exec", "fork"])
def test_killed_launcher_takes_server_and_agent_with_it(tmp_path: Path, fork: bool) -> None:
    """Both ways of starting the pair (fork: synthfs run's); the forked children also
    hold none of the launcher's fds but those passed to them (a fork keeps close-on-exec
    fds too), and run in a session of their own."""
    import signal
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    script = (
        "import os, sys, time\n"
        "from agent.embedded import starting\n"
        "r, w = os.pipe()  # the launcher's own: no child may hold it (at fd 200: above\n"
        "w = os.dup2(w, 200, inheritable=False)  # the fds passed, below them too)\n"
        f"with starting({str(data)!r}, cache_dir={str(tmp_path / 'cache')!r}, fork={fork}) as l:\n"
        "    s = l.ready()\n"
        "    print(s.server_pid, s.agent_pid, os.fstat(w).st_ino, flush=True)\n"
        "    time.sleep(60)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=str(repo))
    assert p.stdout is not None
    *pids, pipe = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    for pid, name in zip(pids, (b"synthfs.server", b"synthfs.agent"), strict=True):
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert f"pipe:[{pipe}]" not in held
        assert os.getsid(pid) == pid != os.getsid(p.pid)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        # Named as an exec'd one is (ps, pgrep -f), not by the launcher's command line.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert name in cmdline and b"sleep" not in cmdline
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_a_forked_child_that_fails_reports_its_output(tmp_path: Path) -> None:
    """starting(fork=True) in a process of one thread: a child's failure is the same clear
    EmbeddedError, with what the child said, and nothing is left behind."""
    import sys

    data = tmp_path / "data"
    data.mkdir()
    bad_cache = tmp_path / "cache"
    bad_cache.write_bytes(b"")  # a file: the agent cannot start and says why
    script = (
        "import os, sys\n"
        "from agent.embedded import EmbeddedError, starting\n"
        "try:\n"
        f"    with starting({str(data)!r}, cache_dir={str(bad_cache)!r}, fork=True) as l:\n"
        "        l.ready()\n"
        "except EmbeddedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=str(repo), timeout=60)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "synthfs agent failed to start" in p.stdout
    assert "cannot use the cache" in p.stdout
    assert p.stderr == ""


def test_embedded_agent_holds_callback_promises(tmp_path: Path) -> None:
    """The embedded pair is wired for promises: a warm Open then costs the server nothing."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"one")

    def requests(s: TrustedStack) -> int:
        log = Path(s.workdir, "server.log").read_text(errors="replace")
        return len(re.findall(r" #\d+ token ", log))

    with embedded(data, cache_dir=tmp_path / "cache", verbose=2) as s, \
            Client(s.agent_endpoint, timeout=10) as c:
        assert any(n.startswith("publish.sock") for n in os.listdir(s.workdir))
        deadline = time.monotonic() + 10
        while True:
            assert isinstance(c.call(Open(path="/f", flags=os.O_RDONLY)), Opened)
            before = requests(s)
            assert before > 0  # the log does count requests (the Open's Stat, Read)
            for _ in range(10):
                c.call(Open(path="/f", flags=os.O_RDONLY))
            time.sleep(0.1)
            if requests(s) == before:
                break
            assert time.monotonic() < deadline, "no Open was ever served on a promise"
            time.sleep(0.2)


def _leftover(base: Path, name: str) -> Path:
    """A private directory whose owner (a process that has exited) is gone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = base / name
    path.mkdir(mode=0o700)
    pid_ns = os.readlink("/proc/self/ns/pid")
    (path / emb.OWNER_FILE).write_text(f"{dead.pid} 1 {pid_ns}\n")
    return path


def test_a_base_is_swept_once_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``synthfs run --data`` makes two private directories, often in one base: the
    leftovers there (each an lstat, an open and a /proc read) are swept by the first."""
    monkeypatch.setattr(emb, "_swept", set(), raising=False)
    first = _leftover(tmp_path, "synthfs-dead1")
    made = emb.private_dir("synthfs-", str(tmp_path))
    assert not first.exists() and Path(made).is_dir()
    second = _leftover(tmp_path, "synthfs-dead2")
    emb.private_dir("synthfs-run-", str(tmp_path))
    assert second.exists()  # left for the next process's sweep
    assert emb.sweep_leftovers(str(tmp_path)) == [str(second)]
