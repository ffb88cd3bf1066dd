"""Bad input and missing parts get one clear line on stderr: never a traceback, never a long wait.

Every test runs the ``synthfs`` command as a user would (a subprocess) and
checks its exit status and its stderr: one line saying what is wrong and
what to do, no ``Traceback``. Where the fault is a trusted part going away
(the server stopped under a running agent), the stack is real: a server and
an agent started separately (``tests/agent/agent_stack.py``), a guest under
``synthfs run --agent``.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "agent"))
from agent_stack import Stack

POLICIES = helpers.REPO / "policies"


def synthfs(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*helpers.synthfs_command(), *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, **kw,  # type: ignore[call-overload]
    )


def one_line(r: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """The one line ``r`` wrote on stderr; it exited ``status`` and the line holds ``needles``."""
    shown = f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, shown
    assert r.returncode == status, shown
    lines = r.stderr.splitlines()
    assert len(lines) == 1, shown
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing\n{shown}"
    return lines[0]


# -- synthfs run: where the data is ---------------------------------------------------------


def test_run_agent_that_is_not_an_endpoint() -> None:
    r = synthfs("run", "--agent", "foo", "--", "true")
    one_line(r, 2, "--agent foo", "ipc://PATH")
    r = synthfs("run", "--agent", "tcp://127.0.0.1:7700", "--", "true")
    one_line(r, 2, "ipc://PATH")


def test_run_agent_without_a_socket_fails_at_once(tmp_path: Path) -> None:
    """No socket file: fail within moments (it waited 10 s) and say how to get an agent."""
    t0 = time.monotonic()
    r = synthfs("run", "--agent", f"ipc://{tmp_path}/none.sock", "--", "true")
    took = time.monotonic() - t0
    one_line(r, 125, f"ipc://{tmp_path}/none.sock", "no such socket", "synthfs agent", "--data")
    assert took < 2.0, f"took {took:.2f} s"  # the CLI's own start-up included (~0.2 s)


def test_run_agent_on_a_stale_socket_fails_at_once(tmp_path: Path) -> None:
    """A socket file nobody listens on (a killed agent's): refused at once too."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    t0 = time.monotonic()
    r = synthfs("run", "--agent", f"ipc://{tmp_path}/stale.sock", "--", "true")
    took = time.monotonic() - t0
    one_line(r, 125, "nothing listens", "synthfs agent", "--data")
    assert took < 2.0, f"took {took:.2f} s"


# -- synthfs run: output files --------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--audit", "--stats"])
def test_run_output_file_in_a_missing_directory(flag: str, tmp_path: Path) -> None:
    """Refused before the guest runs (--stats failed after it, with a traceback)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    ran = tmp_path / "ran"
    target = tmp_path / "no" / "such" / "dir" / "out.json"
    r = synthfs("run", "--data", str(repo), flag, str(target), "--", "touch", str(ran))
    one_line(r, 2, f"{flag} {target}", "No such file or directory")
    assert not ran.exists(), "the guest ran before the error"


# -- the agent and the server -------------------------------------------------------------


def test_agent_server_that_is_not_an_endpoint(tmp_path: Path) -> None:
    r = synthfs("agent", "--server", "foo", "--bootstrap-key", str(tmp_path / "k"),
                "--listen", f"ipc://{tmp_path}/a.sock")
    one_line(r, 2, "--server foo", "ipc://PATH", "tcp://HOST:PORT")
    r = synthfs("agent", "--server", f"ipc://{tmp_path}/s.sock", "--subscribe", "tcp://x",
                "--bootstrap-key", str(tmp_path / "k"), "--listen", f"ipc://{tmp_path}/a.sock")
    one_line(r, 2, "--subscribe tcp://x", "tcp://HOST:PORT")
    assert not (tmp_path / "a.sock").exists()


def test_agent_server_lists_that_do_not_add_up(tmp_path: Path) -> None:
    s1, s2 = f"ipc://{tmp_path}/s1.sock", f"ipc://{tmp_path}/s2.sock"
    base = ["--bootstrap-key", str(tmp_path / "k"), "--listen", f"ipc://{tmp_path}/a.sock"]
    r = synthfs("agent", "--server", f"{s1},,{s2}", *base)
    one_line(r, 2, "--server", "EP1,EP2", "none empty")
    r = synthfs("agent", "--server", f"{s1},{s1}", *base)
    one_line(r, 2, "--server", "distinct")
    r = synthfs("agent", "--server", f"{s1},{s2}", "--subscribe", f"ipc://{tmp_path}/p.sock",
                *base)
    one_line(r, 2, "--subscribe names 1 endpoints and --server 2", "same order")
    r = synthfs("agent", "--server", s1, "--promise-max-age", "0", *base)
    one_line(r, 2, "--promise-max-age must be positive")
    assert not (tmp_path / "a.sock").exists()


def test_agent_bad_bootstrap_fd(tmp_path: Path) -> None:
    r = synthfs("agent", "--server", f"ipc://{tmp_path}/s.sock", "--bootstrap-fd", "77",
                "--listen", f"ipc://{tmp_path}/a.sock")
    one_line(r, 2, "--bootstrap-fd 77", "Bad file descriptor")


def test_agent_bad_ready_fd_still_serves(tmp_path: Path) -> None:
    """A --ready-fd that is not open: a warning, and the agent serves (as the server does)."""
    stack = Stack(tmp_path)
    stack.start_server()
    try:
        log = tmp_path / "agent2.log"
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [*helpers.synthfs_command(), "agent", "--server", stack.server_ep,
                 "--bootstrap-key", str(stack.key), "--listen", stack.agent_ep,
                 "--cache", str(tmp_path / "cache"), "--ready-fd", "77"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 20
            while "--ready-fd 77" not in log.read_text() and time.monotonic() < deadline:
                assert agent.poll() is None, log.read_text()
                time.sleep(0.05)
            time.sleep(0.3)
            text = log.read_text()
            assert agent.poll() is None, text
            assert "Traceback" not in text and "--ready-fd 77: Bad file descriptor" in text, text
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
    finally:
        stack.stop()


def test_server_bootstrap_key_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    key = tmp_path / "file" / "k"
    r = synthfs("server", "--root", str(tmp_path), "--listen", f"ipc://{tmp_path}/s.sock",
                "--bootstrap-key", str(key))
    one_line(r, 2, str(key), "Not a directory")


def test_server_stopped_under_a_running_agent(tmp_path: Path, synthfs_ok: None) -> None:
    """The guest gets EIO; synthfs says once that the agent cannot reach its server, and
    the agent logs it once (it gave the guest ETIMEDOUT, or EIO after 10 s, silently)."""
    stack = Stack(tmp_path)
    (stack.root / "a.txt").write_text("a\n")
    (stack.root / "b.txt").write_text("b\n")
    stack.start_server()
    stack.start_agent("--timeout", "1", "--attr-ttl", "0")
    try:
        assert stack.server is not None and stack.agent is not None
        stack.server.stop(signal.SIGKILL)
        guest = (
            "import errno, os\n"
            "for p in ('/data/a.txt', '/data/b.txt', '/data'):\n"
            "    try:\n"
            "        os.stat(p)\n"
            "        print('ok')\n"
            "    except OSError as e:\n"
            "        print(errno.errorcode[e.errno])\n"
        )
        t0 = time.monotonic()
        r = synthfs("run", "--agent", stack.agent_ep, "--", sys.executable, "-c", guest)
        took = time.monotonic() - t0
        assert r.stdout.split() == ["EIO", "EIO", "EIO"], r
        one_line(r, 0, "/data", "EIO", "cannot reach its server", stack.server_ep)
        assert took < 15, f"three calls took {took:.1f} s"
        agent_log = stack.agent.output()
        assert agent_log.count("does not answer") == 1, agent_log
        assert f"the server at {stack.server_ep} does not answer" in agent_log
        assert "Traceback" not in agent_log
    finally:
        stack.stop()


# -- synthfs policy ---------------------------------------------------------------------------


def test_policy_check_with_a_variable_unset_is_a_note() -> None:
    """docs/policy.md's own command: every shipped policy checks, an unset $WORKSPACE noted."""
    env = {k: v for k, v in os.environ.items() if k != "WORKSPACE"}
    files = sorted(str(p) for p in POLICIES.glob("*.toml"))
    r = synthfs("policy", "check", *files, env=env)
    note = one_line(r, 0, "ci.toml:", "note:", "$WORKSPACE is not set", "--var WORKSPACE=")
    assert note.startswith(str(POLICIES / "ci.toml"))
    assert r.stdout.splitlines() == [f"{f}: ok ({_counts(f)})" for f in files], r.stdout


def _counts(name: str) -> str:
    from synthfs.policy.engine import Policy

    policy = Policy.from_toml(name, env={"WORKSPACE": "/w"})
    return f"{len(policy.apps)} apps, {policy.rule_count} rules"


def test_policy_check_still_refuses_a_defect_near_an_unset_variable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[host]\nwrite = [\n  "$NOT_SET_X/**",\n  "/a//b",\n]\n')
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_X"}
    r = synthfs("policy", "check", str(bad), env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r
    assert lines[0].startswith(f"{bad}:5: ") and "'/a//b'" in lines[0], r
    assert lines[1].startswith(f"{bad}:4: note: $NOT_SET_X is not set"), r


def test_policy_explain_unbalanced_argv() -> None:
    r = synthfs("policy", "explain", str(POLICIES / "per-app.toml"), "--exe", "/bin/ls",
                "--op", "read", "--path", "/data/x", "--argv", "'unterminated")
    one_line(r, 2, "--argv", "No closing quotation")


# -- synthfs bench ---------------------------------------------------------------------------


def test_bench_report_from_a_bad_file(tmp_path: Path) -> None:
    r = synthfs("bench", "--report-from", str(tmp_path / "missing.json"))
    one_line(r, 2, "--report-from", "No such file or directory")
    (tmp_path / "text").write_text("not json")
    r = synthfs("bench", "--report-from", str(tmp_path / "text"))
    one_line(r, 2, "--report-from", "not JSON")
    (tmp_path / "other.json").write_text('{"a": 1}')
    r = synthfs("bench", "--report-from", str(tmp_path / "other.json"),
                "--out", str(tmp_path / "out"), "--results-md", str(tmp_path / "r.md"))
    one_line(r, 2, "--report-from", "not the results.json")
    assert not (tmp_path / "r.md").exists()


@pytest.fixture
def synthfs_ok(synthfs: helpers.SynthfsLauncher) -> None:
    """Skip where the kernel cannot ptrace/seccomp (tests/conftest.py says why)."""


def test_server_publish_on_the_listen_endpoint(tmp_path: Path) -> None:
    """One socket for both: the publisher's bind took the request socket's file over."""
    ep = f"ipc://{tmp_path}/s.sock"
    r = synthfs("server", "--root", str(tmp_path), "--listen", ep, "--publish", ep,
                "--bootstrap-key", str(tmp_path / "k"), timeout=20)
    one_line(r, 2, f"--publish {ep}", "--listen")


def test_keys_in_a_directory_it_cannot_write(tmp_path: Path) -> None:
    r = synthfs("keys", "/proc/synthfs-keys-test")
    one_line(r, 1, "/proc/synthfs-keys-test", "No such file or directory")


def test_run_agent_that_never_answers(tmp_path: Path) -> None:
    """Something listens but never speaks: after the agent timeout (10 s), one plain line."""
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(tmp_path / "mute.sock"))
    mute.listen(8)
    try:
        r = synthfs("run", "--agent", f"ipc://{tmp_path}/mute.sock", "--", "true")
    finally:
        mute.close()
    line = one_line(r, 125, f"ipc://{tmp_path}/mute.sock", "did not answer within 10 s")
    assert "[Errno" not in line, line


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`synthfs syscalls | head -1`: the pipe closes early; synthfs ends quietly (141)."""
    cmd = " ".join(shlex.quote(a) for a in helpers.synthfs_command())
    r = subprocess.run(["sh", "-c", f"{cmd} syscalls | head -1; {cmd} policy list | head -1"],
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stdout.startswith("nr ")
