"""The warm start end to end: a real ``synthfs warm``, a real agent and server, real guests.

``synthfs run --warm --agent EP`` hands itself to the warm supervisor and
becomes the guest: its pid, parent, stdio, cwd, environment and exit status
are what they would be natively, and everything else is what a cold
``synthfs run`` gives (the policy, /data through the agent, the trusted paths).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

from synthfs.agent.embedded import embedded

pytestmark = pytest.mark.ptrace

SYNTHFS = helpers.synthfs_command()


class Warm:
    """A running ``synthfs warm`` and an agent; :meth:`run` is a ``synthfs run --warm``."""

    def __init__(self, sock: Path, endpoint: str, daemon: subprocess.Popen[str]) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.daemon = daemon
        self.env = {**os.environ, "SYNTHFS_WARM_SOCKET": str(sock)}

    def popen(
        self, *command: str, opts: tuple[str, ...] = (), **kw: object
    ) -> subprocess.Popen[str]:
        kw.setdefault("env", self.env)
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [*SYNTHFS, "run", "--agent", self.endpoint, "--warm", *opts, "--", *command],
            stdin=kw.pop("stdin", subprocess.DEVNULL), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, **kw,
        )

    def run(self, *command: str, opts: tuple[str, ...] = (), input: str | None = None,
            **kw: object) -> subprocess.CompletedProcess[str]:
        p = self.popen(*command, opts=opts, stdin=subprocess.PIPE if input else None, **kw)
        out, err = p.communicate(input, timeout=60)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "x.txt").write_text("the x file\n")
    return root


@pytest.fixture
def warm(repo: Path, tmp_path: Path) -> Iterator[Warm]:
    sock = tmp_path / "warm" / "w.sock"
    with embedded(repo, cache_dir=tmp_path / "cache") as stack:
        daemon = subprocess.Popen([*SYNTHFS, "warm", "--socket", str(sock),
                                   "--agent", str(stack.agent_endpoint)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert daemon.stderr is not None
            line = daemon.stderr.readline()  # "serving PATH": it listens
            assert "serving" in line, line
            yield Warm(sock, str(stack.agent_endpoint), daemon)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)


def test_the_guest_is_the_client_itself(warm: Warm) -> None:
    """Same pid, same parent (this test), traced by a child of the warm supervisor;
    its exit status straight to its parent."""
    p = warm.popen("sh", "-c", "echo $$ $PPID; grep TracerPid /proc/$$/status; read x; exit 3",
                   stdin=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    pid, ppid = p.stdout.readline().split()
    tracer = p.stdout.readline().split()[1]
    with open(f"/proc/{tracer}/stat") as f:  # read while the run goes on: it is reaped after
        tracer_parent = int(f.read().rsplit(")", 1)[1].split()[1])
    out, err = p.communicate("go\n", timeout=60)
    assert p.returncode == 3, err
    assert (int(pid), int(ppid)) == (p.pid, os.getpid())
    assert tracer_parent == warm.daemon.pid
    assert "cold" not in err


def test_death_by_a_signal_is_the_guests_own(warm: Warm) -> None:
    r = warm.run("sh", "-c", "kill -9 $$")
    assert r.returncode == -signal.SIGKILL  # natively so: no 128+N from a wrapper


def test_stdio_cwd_and_environment_are_the_callers(warm: Warm, tmp_path: Path) -> None:
    env = {**warm.env, "SYNTHFS_PROBE": "kept"}
    r = warm.run("sh", "-c", 'cat; echo "$SYNTHFS_PROBE $(pwd)"; echo to-stderr >&2; exit 0',
                 input="from stdin\n", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"from stdin\nkept {tmp_path}\n"
    assert r.stderr == "to-stderr\n"


def test_data_through_the_agent_and_a_host_denial(warm: Warm, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "in").mkdir(parents=True)
    (ws / "hidden").write_text("no\n")
    policy = tmp_path / "p.toml"
    policy.write_text(textwrap.dedent(f"""\
        version = 1
        name = "warm"
        description = "test: host readable but {ws}/hidden"
        default = "allow"

        [[mount]]
        path = "/data"

        [host]
        read = ["/usr/**", "/etc/**", "/proc/**", "/lib/**", "/lib64/**", "/bin/**",
                "{ws}/in/**"]
        write = ["{ws}/in/**"]
        """))
    r = warm.run("sh", "-c", f"cat /data/x.txt; cat {ws}/hidden", opts=("--policy", str(policy)))
    assert r.stdout == "the x file\n"
    assert r.returncode == 1
    assert "Permission denied" in r.stderr


@pytest.mark.parametrize("start", ["warm", "cold"])
def test_the_warm_socket_is_refused_to_the_guest(warm: Warm, start: str) -> None:
    """To a warm run's guests, and to a cold run's (whose guest could otherwise ask
    the warm supervisor for a run of its own choosing)."""
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
        "else:\n    print('connected')\n"
        "try:\n    __import__('os').listdir(sys.argv[2])\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    import errno as E
    import sys

    argv = (sys.executable, "-c", probe, str(warm.sock), str(warm.sock.parent))
    if start == "warm":
        r = warm.run(*argv)
    else:
        r = subprocess.run([*SYNTHFS, "run", "--agent", warm.endpoint, "--", *argv],
                           capture_output=True, text=True, env=warm.env, timeout=60)
    assert r.stdout.split() == [str(E.EACCES), str(E.EACCES)], r.stderr


def test_concurrent_clients(warm: Warm) -> None:
    runs = [warm.popen("sh", "-c", f"sleep 0.5; cat /data/x.txt; exit {i}") for i in range(3)]
    for i, p in enumerate(runs):
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out) == (i, "the x file\n"), err


def test_no_warm_supervisor_starts_cold_and_says_so(warm: Warm, tmp_path: Path) -> None:
    env = {**warm.env, "SYNTHFS_WARM_SOCKET": str(tmp_path / "none" / "w.sock")}
    r = warm.run("cat", "/data/x.txt", env=env)
    assert (r.returncode, r.stdout) == (0, "the x file\n"), r.stderr
    assert "no warm supervisor at" in r.stderr and "starting cold" in r.stderr


def test_a_socket_directory_others_can_enter_is_not_trusted(warm: Warm) -> None:
    os.chmod(warm.sock.parent, 0o755)
    try:
        r = warm.run("true")
    finally:
        os.chmod(warm.sock.parent, 0o700)
    assert r.returncode == 0
    assert "is not a private directory of this user" in r.stderr


def test_a_hostile_client_gets_nothing_and_the_next_one_runs(warm: Warm) -> None:
    """Junk, a wrong version, a client gone mid-request: each is answered (or not) alone."""
    for junk in (b"\xff\xff\xff\x7f", b"\x05\x00\x00\x00hello", b"\x02\x00"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(warm.sock))
            s.sendmsg([junk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                os.open(os.devnull, os.O_WRONLY).to_bytes(4, "little"))])
            s.settimeout(15)
            s.shutdown(socket.SHUT_WR)
            try:
                reply = s.recv(64)
            except TimeoutError:
                reply = b"timeout"
            assert reply[:1] in (b"", b"E"), reply
    time.sleep(0.2)
    r = warm.run("cat", "/data/x.txt")
    assert (r.returncode, r.stdout) == (0, "the x file\n"), r.stderr


def test_a_bad_argument_is_the_cold_runs_error(warm: Warm) -> None:
    r = warm.run("true", opts=("--policy", "/nonexistent.toml"))
    assert r.returncode == 2
    assert r.stderr.startswith("synthfs run: ")


def test_the_notify_engine(warm: Warm) -> None:
    r = warm.run("sh", "-c", "cat /data/x.txt; stat -c %s /data/x.txt",
                 opts=("--engine", "notify"))
    assert (r.returncode, r.stdout) == (0, "the x file\n11\n"), r.stderr


def test_a_stop_is_seen_by_the_parent_as_natively(warm: Warm) -> None:
    """The guest's stop reaches its parent (this test: a shell's job control) and a
    SIGCONT from it goes on."""
    p = warm.popen("sh", "-c", "kill -STOP $$; echo resumed")
    pid, status = os.waitpid(p.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
    os.kill(p.pid, signal.SIGCONT)
    pid, status = os.waitpid(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.stdout is not None
    assert (p.returncode, p.stdout.read()) == (0, "resumed\n")


def test_the_guest_dies_with_its_supervisor(warm: Warm) -> None:
    p = warm.popen("sh", "-c", "grep TracerPid /proc/$$/status; sleep 30")
    assert p.stdout is not None
    tracer = int(p.stdout.readline().split()[1])
    os.kill(tracer, signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL  # PTRACE_O_EXITKILL: never unsupervised


def test_an_unreachable_agent_is_said_as_cold(warm: Warm, tmp_path: Path) -> None:
    r = subprocess.run([*SYNTHFS, "run", "--warm", "--agent", f"ipc://{tmp_path}/none.sock",
                        "--", "true"], capture_output=True, text=True, env=warm.env, timeout=60)
    assert r.returncode == 125
    assert "cannot reach the agent at" in r.stderr


def test_verbose_runs_warm_too(warm: Warm) -> None:
    r = subprocess.run([*SYNTHFS, "-v", "run", "--agent", warm.endpoint, "--warm", "--",
                        "cat", "/data/x.txt"], capture_output=True, text=True, env=warm.env,
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, "the x file\n"), r.stderr
    assert "/data/x.txt" in r.stderr and "cold" not in r.stderr  # the strace-like lines


def test_a_client_gone_mid_handshake_costs_nothing(warm: Warm) -> None:
    """A client that sends its request and exits at once (killed, say): its supervisor
    finds it gone and ends; the warm supervisor serves the next one."""
    import sys

    script = (
        "import os, socket\n"
        "from synthfs.interposer import warm_client as w\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(w.default_socket())\n"
        "body = w.VERSION + w._strings([os.getcwd(), '4', '--agent', os.environ['EP'], '--',"
        " 'true'])\n"
        "s.sendmsg([len(body).to_bytes(4, 'little'), body],"
        " [(socket.SOL_SOCKET, socket.SCM_RIGHTS, (2).to_bytes(4, 'little'))])\n"
        "os._exit(7)\n"
    )
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", script], env={**warm.env, "EP": warm.endpoint},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 7, r.stderr
    time.sleep(0.5)
    r = warm.run("cat", "/data/x.txt")
    assert (r.returncode, r.stdout) == (0, "the x file\n"), r.stderr
    assert warm.daemon.poll() is None


def test_ctrl_c_is_a_death_by_sigint_before_the_command_too(warm: Warm, tmp_path: Path) -> None:
    """Natively a Ctrl-C ends the command by SIGINT: so it does while the client waits
    for a supervisor that does not answer (here a socket that never does), and once the
    command runs."""
    mute = tmp_path / "mute"
    mute.mkdir(mode=0o700)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(mute / "w.sock"))
    server.listen()
    runs = []
    for env in ({**warm.env, "SYNTHFS_WARM_SOCKET": str(mute / "w.sock")}, warm.env):
        # (as a terminal's foreground job: this test may run where SIGINT is ignored)
        p = warm.popen("sleep", "30", env=env,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(1.5)
        os.kill(p.pid, signal.SIGINT)
        assert p.wait(timeout=60) == -signal.SIGINT
        runs.append(p)
    server.close()  # it held the first client's stderr, sent but never received
    for p in runs:
        _, err = p.communicate(timeout=60)
        assert "Traceback" not in err, err


def test_a_supervisor_that_never_answers_is_said(warm: Warm, tmp_path: Path) -> None:
    mute = tmp_path / "mute"
    mute.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(mute / "w.sock"))
        server.listen()
        p = warm.popen("true", env={**warm.env, "SYNTHFS_WARM_SOCKET": str(mute / "w.sock"),
                                    "SYNTHFS_WARM_TIMEOUT": "2"})
        assert p.wait(timeout=60) == 125
        conn, _ = server.accept()
        conn.close()
    _, err = p.communicate(timeout=60)
    assert "the warm supervisor did not answer in 2 s" in err


def test_a_pid_that_is_no_longer_the_clients_is_let_go_untouched() -> None:
    """adopt() seizes by pid; when the client's pidfd says it is gone (its pid since
    another process's), that process is detached and runs on, not killed."""
    from typing import cast

    from synthfs.interposer.filter import build_filter
    from synthfs.interposer.ports import Env
    from synthfs.interposer.supervisor import Supervisor

    sup = Supervisor(cast(Env, None), build_filter(None))
    r, w = os.pipe()
    other = subprocess.Popen(["sh", "-c", "read x; echo still-here $x"], stdin=r,
                             stdout=subprocess.PIPE, text=True)
    os.close(r)
    try:
        with pytest.raises(ProcessLookupError):
            sup.adopt(other.pid, lambda: False, -1, b"")
        with open(f"/proc/{other.pid}/status") as f:
            assert "TracerPid:\t0\n" in f.read()
        os.write(w, b"ok\n")
        out, _ = other.communicate(timeout=30)
        assert (other.returncode, out) == (0, "still-here ok\n")
    finally:
        os.close(w)
        if other.poll() is None:
            other.kill()


def test_a_second_warm_supervisor_on_the_same_socket_is_refused(warm: Warm) -> None:
    r = subprocess.run([*SYNTHFS, "warm", "--socket", str(warm.sock)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "a warm supervisor already serves" in r.stderr and str(warm.sock) in r.stderr
    assert warm.run("true").returncode == 0  # the first one still serves


#: a guest that binds a socket of its own where a warm supervisor's would be, and says
#: what (if anything) connected and asked it for a run
FAKE_WARM = """
import os, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
os.chmod(os.path.dirname(path), 0o700)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
print("listening", flush=True)
s.settimeout(30)
try:
    c, _ = s.accept()
    c.settimeout(5)
    print("got", len(c.recv(65536)), "bytes", flush=True)
except OSError as e:
    print("nothing", e, flush=True)
"""


def test_a_guest_posing_as_the_warm_supervisor_gets_no_run(warm: Warm, tmp_path: Path) -> None:
    """Review round 13, finding 3: a guest that may write where a client looks for the
    warm socket bound its own there; the client sent it its command and environment and
    ran what the guest answered, unsupervised. A client now asks for an untraced peer
    (every guest is traced) and starts cold otherwise."""
    import sys

    fake = tmp_path / "fake" / "w.sock"
    guest = subprocess.Popen([*SYNTHFS, "run", "--agent", warm.endpoint, "--", sys.executable,
                              "-c", FAKE_WARM, str(fake)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={k: v for k, v in warm.env.items()
                                  if k != "SYNTHFS_WARM_SOCKET"})
    try:
        assert guest.stdout is not None
        assert guest.stdout.readline() == "listening\n", guest.stderr
        env = {**warm.env, "SYNTHFS_WARM_SOCKET": str(fake), "MY_SECRET": "s3cr3t"}
        r = warm.run("cat", "/data/x.txt", env=env)
        out, err = guest.communicate(timeout=60)
    finally:
        guest.kill()
        guest.wait()
    assert (r.returncode, r.stdout) == (0, "the x file\n"), r.stderr
    assert "served by a sandboxed process" in r.stderr and "starting cold" in r.stderr
    assert out.startswith(("got 0 bytes", "nothing")), out  # it sent the guest nothing


def test_a_guest_connecting_to_the_warm_socket_gets_nothing(warm: Warm, tmp_path: Path) -> None:
    """Review round 13, finding 1: a guest that reached a warm supervisor's socket (one
    its run did not refuse) had its options acted on before the seize failed (--stats
    FILE written). The supervisor now refuses a traced client at once."""
    import sys

    probe = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "args = ['--agent', sys.argv[3], '--stats', sys.argv[2], '--', 'true']\n"
        "body = b'synthfs-warm/1\\0' + b''.join(x.encode() + b'\\0' for x in"
        " [os.getcwd(), str(len(args)), *args])\n"
        "s.settimeout(15)\n"
        "try:\n"
        "    s.sendmsg([len(body).to_bytes(4, 'little'), body],"
        " [(socket.SOL_SOCKET, socket.SCM_RIGHTS, (2).to_bytes(4, 'little'))])\n"
        "    print('answer', len(s.recv(64)))\n"
        "except OSError:\n    print('answer 0')\n"
    )
    stats = tmp_path / "stats.json"
    # a cold run whose policy does not refuse the warm socket's directory: a [host] rule
    # cannot loosen a trusted path, so the run is given another XDG_RUNTIME_DIR and the
    # socket is named by its own path (SYNTHFS_WARM_SOCKET unset in the guest's run)
    env = {k: v for k, v in warm.env.items() if k != "SYNTHFS_WARM_SOCKET"}
    r = subprocess.run([*SYNTHFS, "run", "--agent", warm.endpoint, "--", sys.executable,
                        "-c", probe, str(warm.sock), str(stats), warm.endpoint],
                       capture_output=True, text=True, env=env, timeout=60)
    if "Permission denied" in r.stderr:
        pytest.skip("this run refuses the warm socket by its directory: nothing to reach")
    assert r.stdout == "answer 0\n", (r.stdout, r.stderr)
    assert not stats.exists()


def _wait_socket(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_spare_greets_a_restarted_agent_again(repo: Path, tmp_path: Path) -> None:
    """A spare supervisor greets the agent ahead of its run: after the agent was
    restarted with another cache, the next warm run enforced the old agent's refused
    list, and its guest read and rewrote the new agent's cache (review round 15,
    finding 10). The spare now checks who listens before its run, and greets again."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    key, srv, ep = run / "key", run / "srv.sock", run / "agent.sock"
    server = subprocess.Popen([*SYNTHFS, "server", "--root", str(repo),
                               "--state", str(tmp_path / "state"),
                               "--listen", f"ipc://{srv}", "--bootstrap-key", str(key)],
                              stderr=subprocess.PIPE, text=True)
    procs = [server]

    def agent(cache: Path) -> subprocess.Popen[str]:
        p = subprocess.Popen([*SYNTHFS, "agent", "--server", f"ipc://{srv}",
                              "--bootstrap-key", str(key), "--listen", f"ipc://{ep}",
                              "--cache", str(cache)], stderr=subprocess.PIPE, text=True)
        procs.append(p)
        _wait_socket(ep, p)
        return p

    try:
        _wait_socket(srv, server)
        first = agent(tmp_path / "cache1")
        sock = tmp_path / "warm" / "w.sock"
        daemon = subprocess.Popen([*SYNTHFS, "warm", "--socket", str(sock), "--agent",
                                   f"ipc://{ep}"], stderr=subprocess.PIPE, text=True)
        procs.append(daemon)
        assert daemon.stderr is not None and "serving" in daemon.stderr.readline()
        w = Warm(sock, f"ipc://{ep}", daemon)
        assert w.run("cat", "/data/x.txt").stdout == "the x file\n"  # a spare greets agent 1
        time.sleep(1)  # the next spare is forked and greets agent 1 too
        first.terminate()
        first.wait(timeout=30)
        ep.unlink(missing_ok=True)
        cache2 = tmp_path / "cache2"
        agent(cache2)
        assert subprocess.run([*SYNTHFS, "run", "--agent", f"ipc://{ep}", "--", "cat",
                               "/data/x.txt"], capture_output=True, text=True,
                              timeout=60).stdout == "the x file\n"  # fills cache 2
        r = w.run("sh", "-c", f"ls {cache2} >/dev/null 2>&1; echo $?; cat /data/x.txt")
        assert r.stdout == "2\nthe x file\n", (r.stdout, r.stderr)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)
