"""Signals, exit status and the terminal: a guest starts and stops as it would natively.

The guest inherits the dispositions and the mask the caller gave ``synthfs``
(never the launcher's own: Python ignores SIGPIPE and SIGXFSZ, the supervisor
ignores SIGINT and SIGQUIT), and Ctrl-C in a terminal stops it, with
``synthfs`` reporting its status. Each run happens natively and under
``synthfs run`` from the same caller state, and both must agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

MODES = ("data", "agent")
#: what ``/proc/self/status`` says about a process's signals (pending ones vary)
STATUS_LINES = ("grep", "-E", "^Sig(Blk|Ign|Cgt):", "/proc/self/status")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "f").write_text("f\n")
    return root


@contextlib.contextmanager
def launcher(mode: str, repo: Path) -> Iterator[Callable[[Sequence[str]], list[str]]]:
    """``argv -> synthfs run ... -- argv`` in ``mode`` (``--data`` or ``--agent``)."""
    if helpers.ptrace_unavailable_reason():
        pytest.skip(f"synthfs cannot run here: {helpers.ptrace_unavailable_reason()}")
    synthfs = helpers.SynthfsLauncher(mode=mode)
    with synthfs.stack(repo) as stack:
        yield lambda argv: synthfs.argv(repo, argv, stack=stack)


def plain_caller() -> None:
    """What a shell gives a command it runs in the foreground (subprocess's default)."""


def nohup_background_caller() -> None:
    """``nohup cmd &`` in a script, with a few more ignored and blocked signals."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR2, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGWINCH, signal.SIGRTMIN})


#: seconds a signal may take to end everything (the guest, synthfs and its stack)
BOUND = 20.0
SLEEPER = (sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)")
CALLERS = {"plain": plain_caller, "nohup_background": nohup_background_caller}
#: Python ignores these two at start-up, so what the caller gave ``synthfs`` is lost:
#: the guest gets SIG_DFL (what subprocess gives a child, and a shell a command)
UNKNOWABLE = (signal.SIGPIPE, signal.SIGXFSZ)


def _unknowable_as_default(status_lines: str) -> str:
    """``status_lines`` with the :data:`UNKNOWABLE` signals not ignored."""
    bits = sum(1 << (sig - 1) for sig in UNKNOWABLE)
    lines = []
    for line in status_lines.splitlines(keepends=True):
        if line.startswith("SigIgn:"):
            line = f"SigIgn:\t{int(line.split()[1], 16) & ~bits:016x}\n"
        lines.append(line)
    return "".join(lines)


def _run(argv: Sequence[str], caller: Callable[[], None], cwd: Path) -> tuple[int, str, str]:
    p = subprocess.run(
        list(argv), preexec_fn=caller, capture_output=True, text=True, cwd=cwd,
        stdin=subprocess.DEVNULL, timeout=helpers.TIMEOUT,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("mode", MODES)
def test_the_guest_starts_with_the_callers_signals(
    mode: str, caller: str, repo: Path, tmp_path: Path
) -> None:
    native = _run(STATUS_LINES, CALLERS[caller], tmp_path)
    with launcher(mode, repo) as under:
        guest = _run(under(STATUS_LINES), CALLERS[caller], tmp_path)
    assert native[0] == 0, native
    expected = (0, _unknowable_as_default(native[1]), "")
    assert guest == expected, f"expected:\n{expected[1]}\nunder synthfs:\n{guest[1]}{guest[2]}"


@pytest.mark.parametrize("mode", MODES)
def test_a_closed_pipe_kills_the_writer_quietly(mode: str, repo: Path, tmp_path: Path) -> None:
    """``yes | head -1``: yes dies of SIGPIPE (141 with pipefail), nothing on stderr."""
    argv = ("bash", "-c", "set -o pipefail; yes | head -1")
    native = _run(argv, plain_caller, tmp_path)
    with launcher(mode, repo) as under:
        guest = _run(under(argv), plain_caller, tmp_path)
    assert native == (128 + signal.SIGPIPE, "y\n", "")
    assert guest == native


# -- signals sent to synthfs ------------------------------------------------------------------


def _signalled(argv: Sequence[str], caller: Callable[[], None], sig: int) -> int | None:
    """Send ``sig`` to the process running ``argv`` once its guest sleeps; then, if it
    still runs half a second later, SIGTERM. Its wait status (None: it never ended)."""
    p = subprocess.Popen(
        list(argv), preexec_fn=caller, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"sleeping\n"
        p.send_signal(sig)
        try:
            return p.wait(0.5)
        except subprocess.TimeoutExpired:
            p.terminate()
        return p.wait(BOUND)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize(
    ("caller", "sig"),
    [("plain", signal.SIGTERM), ("plain", signal.SIGHUP), ("nohup_background", signal.SIGHUP)],
    ids=["sigterm", "sighup", "sighup_under_nohup"],
)
def test_a_signal_to_synthfs_ends_it_as_it_ends_the_guest(
    caller: str, sig: int, repo: Path
) -> None:
    """SIGTERM and SIGHUP are passed on, and ``synthfs`` then dies of them as the guest
    did; under ``nohup`` SIGHUP is ignored by both (the later SIGTERM ends them)."""
    native = _signalled(SLEEPER, CALLERS[caller], sig)
    assert native == -(signal.SIGTERM if caller == "nohup_background" else sig)
    with launcher("data", repo) as under:
        assert _signalled(under(SLEEPER), CALLERS[caller], sig) == native




class Terminal:
    """A pty whose other side is the controlling terminal of ``argv``, a new session."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()

        def session() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # Ctrl-\ leaves no core file

        try:
            self.proc = subprocess.Popen(
                list(argv), stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                preexec_fn=session,
            )
        finally:
            os.close(slave)
        self.shown = b""

    def expect(self, text: bytes, timeout: float = BOUND) -> bool:
        """Read what the terminal shows until ``text`` appears (False: not in time)."""
        deadline = time.monotonic() + timeout
        while text not in self.shown:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: nobody holds the other side any more
                    chunk = b""
                if not chunk:
                    return text in self.shown
                self.shown += chunk
        return True

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = BOUND) -> int | None:
        """The wait status of ``argv`` (None: still running after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.expect(b"\0never\0", 0.1)  # keep the terminal drained
        return self.proc.poll()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


@contextlib.contextmanager
def terminal(
    argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> Iterator[Terminal]:
    t = Terminal(argv, cwd, env)
    try:
        yield t
    finally:
        t.close()


def _interrupted(argv: Sequence[str], key: bytes, cwd: Path) -> tuple[int | None, bytes, float]:
    """Type ``key`` once ``argv``'s guest sleeps: its wait status (None: it still ran
    :data:`BOUND` seconds later), what the terminal showed, the seconds it took."""
    with terminal(argv, cwd) as t:
        assert t.expect(b"sleeping\r\n", helpers.TIMEOUT), t.shown
        time.sleep(0.2)  # into time.sleep itself
        t.type(key)
        typed = time.monotonic()
        status = t.wait()
        return status, t.shown, time.monotonic() - typed


@pytest.mark.parametrize(
    ("key", "sig"),
    [(b"\x03", signal.SIGINT), (b"\x1c", signal.SIGQUIT)],
    ids=["ctrl_c", "ctrl_backslash"],
)
def test_the_terminals_interrupt_stops_the_guest(
    key: bytes, sig: int, repo: Path, tmp_path: Path
) -> None:
    """Ctrl-C (Ctrl-\\) in the terminal stops the guest as natively: Python's
    KeyboardInterrupt (death by SIGQUIT), and ``synthfs`` ends as the guest did."""
    native, native_shown, _ = _interrupted(SLEEPER, key, tmp_path)
    assert native == -sig, native_shown
    with launcher("data", repo) as under:
        status, shown, took = _interrupted(under(SLEEPER), key, tmp_path)
    assert status is not None, f"synthfs still ran {BOUND:g} s after the key:\n{shown!r}"
    assert status == native, f"exit {status}, natively {native}:\n{shown!r}"
    assert took < BOUND
    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in native_shown
        assert b"KeyboardInterrupt" in shown, shown
    assert b"synthfs" not in shown, shown  # no message, no traceback of ours


def _job_control(command: Sequence[str], cwd: Path) -> bytes:
    """In an interactive bash: run ``command``, Ctrl-Z, ``fg``, Ctrl-C, print ``$?``.
    What the terminal showed from the stop on (an assertion says where it stuck)."""
    env = {**os.environ, "PS1": "prompt$ ", "TERM": "dumb", "HISTFILE": "/dev/null"}
    with terminal(("bash", "--norc", "--noprofile", "-i"), cwd, env) as t:
        assert t.expect(b"prompt$ "), t.shown
        t.type(shlex.join(command).encode() + b"\n")
        assert t.expect(b"sleeping\r\n", helpers.TIMEOUT), t.shown
        start = len(t.shown)
        time.sleep(0.2)
        t.type(b"\x1a")  # Ctrl-Z
        assert t.expect(b"Stopped"), t.shown[start:]
        assert t.expect(b"prompt$ "), t.shown[start:]
        t.type(b"fg\n")
        time.sleep(0.5)
        t.type(b"\x03")
        assert t.expect(b"prompt$ "), t.shown[start:]
        t.type(b"echo status=$?\n")
        assert t.expect(b"status=1"), t.shown[start:]
        t.expect(b"prompt$ ")
        return t.shown[start:]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_job_control_in_an_interactive_shell(repo: Path, tmp_path: Path) -> None:
    """Ctrl-Z stops the job, ``fg`` resumes it, Ctrl-C then ends it: $? is 130, as natively."""
    native = _job_control(SLEEPER, tmp_path)
    assert b"status=130" in native, native
    with launcher("data", repo) as under:
        shown = _job_control(under(SLEEPER), tmp_path)
    assert b"KeyboardInterrupt" in shown and b"status=130" in shown, shown


#: a guest child stopped by its parent: the parent's wait sees it, it makes no progress,
#: SIGCONT resumes it (one line each; ``state`` is the letter /proc/PID/stat shows)
STOPPED_CHILD = r"""
import mmap, os, signal, struct, time
signal.alarm(60)
shared = mmap.mmap(-1, 8)
def count():
    return struct.unpack("q", shared[:8])[0]
pid = os.fork()
if pid == 0:
    n = 0
    while True:
        n += 1
        shared[:8] = struct.pack("q", n)
        time.sleep(0.001)
while count() == 0:
    time.sleep(0.01)
os.kill(pid, signal.SIGSTOP)
_, status = os.waitpid(pid, os.WUNTRACED)
print("stopped", os.WIFSTOPPED(status) and signal.Signals(os.WSTOPSIG(status)).name)
with open(f"/proc/{pid}/stat") as f:
    print("state", f.read().rsplit(")", 1)[1].split()[0])
before = count()
time.sleep(0.5)
print("progress while stopped", count() - before)
os.kill(pid, signal.SIGCONT)
_, status = os.waitpid(pid, os.WCONTINUED)
print("continued", os.WIFCONTINUED(status))
before, start = count(), time.monotonic()
while count() == before and time.monotonic() - start < 20:
    time.sleep(0.01)
print("progress after", count() > before)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""


def test_kill_stop_stops_a_guest_until_kill_cont(repo: Path, tmp_path: Path) -> None:
    """``kill -STOP`` of a guest child stops it (its parent's wait sees the stop, it
    makes no progress) until ``kill -CONT``, as natively.

    A traced guest ran on: its group-stop was resumed at once (``ps`` showed S).
    Stopped under a tracer, /proc shows ``t`` (a traced stop), natively ``T``.
    """
    argv = (sys.executable, "-c", STOPPED_CHILD)
    native = _run(argv, plain_caller, tmp_path)
    assert native == (0, "stopped SIGSTOP\nstate T\nprogress while stopped 0\n"
                      "continued True\nprogress after True\n", ""), native
    with launcher("data", repo) as under:
        status, out, err = _run(under(argv), plain_caller, tmp_path)
    assert (status, err) == (0, ""), (out, err)
    lines = out.splitlines()
    assert lines[1] in ("state T", "state t"), out
    del lines[1]
    assert lines == ["stopped SIGSTOP", "progress while stopped 0", "continued True",
                     "progress after True"], out


#: ticks until it has printed COUNT; with ``handler``, a SIGTSTP handler that says so and
#: stops itself as an editor does (default action, raise, wait for SIGCONT)
TICKER = r"""
import os, signal, sys, time
def on_tstp(sig, frame):
    print("suspending", flush=True)
    signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTSTP)
    signal.signal(signal.SIGTSTP, on_tstp)
    print("resumed", flush=True)
if sys.argv[2] == "handler":
    signal.signal(signal.SIGTSTP, on_tstp)
print("pid", os.getpid(), flush=True)
for i in range(int(sys.argv[1])):
    time.sleep(0.1)
    print("tick", i, flush=True)
print("done", flush=True)
"""


def _stopped_by_the_guests_stop(argv: Sequence[str], cwd: Path) -> tuple[str, float, int, str]:
    """Run ``argv`` (the :data:`TICKER`) as a child, SIGSTOP the guest it names: how the
    parent's wait saw ``argv`` stop, how long that took, and, after a SIGCONT to
    ``argv`` alone, its exit status and last output line."""
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True, cwd=cwd)
    try:
        guest = int(p.stdout.readline().split()[1])  # type: ignore[union-attr]
        p.stdout.readline()  # type: ignore[union-attr]
        os.kill(guest, signal.SIGSTOP)
        start = time.monotonic()
        seen = "still running"
        while time.monotonic() - start < BOUND:
            pid, status = os.waitpid(p.pid, os.WUNTRACED | os.WNOHANG)
            if pid:
                seen = (signal.Signals(os.WSTOPSIG(status)).name if os.WIFSTOPPED(status)
                        else f"ended {status:#x}")
                break
            time.sleep(0.01)
        took = time.monotonic() - start
        # Continue what stopped: synthfs alone (not its guest) when it did.
        with contextlib.suppress(ProcessLookupError):  # a guest that ran on has ended
            os.kill(p.pid if seen == "SIGSTOP" else guest, signal.SIGCONT)
        out = p.stdout.read()  # type: ignore[union-attr]
        return seen, took, p.wait(timeout=BOUND), out.splitlines()[-1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_stopped_guest_stops_synthfs(repo: Path, tmp_path: Path) -> None:
    """SIGSTOP to the main guest stops ``synthfs run`` too: its parent (a shell) sees its
    job stop, as it would see the guest stop natively; a SIGCONT to ``synthfs`` alone
    continues the guest, which finishes."""
    argv = (sys.executable, "-c", TICKER, "20", "plain")
    native = _stopped_by_the_guests_stop(argv, tmp_path)
    assert (native[0], *native[2:]) == ("SIGSTOP", 0, "done"), native
    with launcher("data", repo) as under:
        seen, took, status, last = _stopped_by_the_guests_stop(under(argv), tmp_path)
    assert seen == "SIGSTOP", f"synthfs {seen} {took:.1f} s after its guest stopped"
    assert (status, last) == (0, "done")


def _expect_after(t: Terminal, start: int, text: bytes, timeout: float = BOUND) -> bool:
    """Like :meth:`Terminal.expect`, for ``text`` shown after offset ``start`` only."""
    deadline = time.monotonic() + timeout
    while text not in t.shown[start:] and time.monotonic() < deadline:
        if not t.expect(b"\0never\0", 0.1) and t.proc.poll() is not None:
            break  # the shell is gone: nothing more will come
    return text in t.shown[start:]


def _suspended(
    command: Sequence[str], cwd: Path, said: bytes | None
) -> tuple[bytes, bytes, bytes]:
    """In an interactive bash, run ``sh -c 'COMMAND; echo after=$?'`` (the :data:`TICKER`),
    Ctrl-Z once it ticks, wait until the job is reported stopped and the guest has
    ``said`` so (or 5 s), let it settle, watch 1 s, ``fg``: what the terminal showed
    from Ctrl-Z to the watch, during it, and after ``fg`` (an assertion says where
    it stuck)."""
    env = {**os.environ, "PS1": "prompt$ ", "TERM": "dumb", "HISTFILE": "/dev/null"}
    with terminal(("bash", "--norc", "--noprofile", "-i"), cwd, env) as t:
        assert t.expect(b"prompt$ "), t.shown
        line = shlex.join(["sh", "-c", f"{shlex.join(command)}; echo after=$?"])
        t.type(line.encode() + b"\n")
        typed = len(t.shown)
        assert _expect_after(t, typed, b"tick 2\r\n", helpers.TIMEOUT), t.shown
        start = len(t.shown)
        t.type(b"\x1a")  # Ctrl-Z
        assert _expect_after(t, start, b"Stopped"), t.shown[start:]
        assert _expect_after(t, start, b"prompt$ "), t.shown[start:]
        if said is not None:  # sh stops at once, its guest soon after
            _expect_after(t, start, said, 5.0)
        t.expect(b"\0never\0", 0.5)
        watched = len(t.shown)
        t.expect(b"\0never\0", 1.0)
        quiet = len(t.shown)
        t.type(b"fg\n")
        assert _expect_after(t, quiet, b"after=0", helpers.TIMEOUT), t.shown[start:]
        assert _expect_after(t, quiet, b"prompt$ "), t.shown[start:]
        return t.shown[start:watched], t.shown[watched:quiet], t.shown[quiet:]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("handler", ["plain", "handler"])
def test_ctrl_z_suspends_synthfs_under_sh(handler: str, repo: Path, tmp_path: Path) -> None:
    """``sh -c 'synthfs run -- TICKER'`` in an interactive bash: Ctrl-Z reports the job
    stopped, nothing runs while it is, ``fg`` resumes it and it finishes (``after=0``).
    A guest's own SIGTSTP handler runs at Ctrl-Z, before ``fg``, as natively (it ran
    only at ``fg``: the supervisor stopped before it could deliver the signal)."""
    script = tmp_path / "ticker.py"
    script.write_text(TICKER)
    ticker = [sys.executable, str(script), "30", handler]
    said = b"suspending" if handler == "handler" else None
    results = {}
    with launcher("data", repo) as under:
        for how, command in (("native", ticker), ("synthfs", under(ticker))):
            stop, meanwhile, after = _suspended(command, tmp_path, said)
            results[how] = (stop, meanwhile, after)
            assert b"tick" not in meanwhile, (how, stop, meanwhile, after)
            assert b"done" in after and b"after=0" in after, (how, stop, meanwhile, after)
            if handler == "handler":
                assert b"suspending" in stop and b"resumed" in after, (how, stop, after)
    shown = b"".join(results["synthfs"])
    assert b"synthfs run:" not in shown and b"Traceback" not in shown, shown  # no message of ours


#: A guest that suspends its own job as vim's :suspend does (kill(0, SIGTSTP)), once.
SUSPENDER = r"""
import os, signal, time
for i in range(6):
    print("tick", i, flush=True)
    if i == 2:
        os.kill(0, signal.SIGTSTP)
        print("back", flush=True)
    time.sleep(0.1)
print("done", flush=True)
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_guest_suspends_its_own_job_as_vim_does(repo: Path, tmp_path: Path) -> None:
    """``kill(0, SIGTSTP)`` from the guest (its process group: the job, synthfs
    included) under ``sh -c`` in an interactive bash: the job is reported stopped
    and nothing runs until ``fg``, then it finishes, as natively. It was refused
    (EPERM) and the guest ran on, since the group holds the supervisor; the
    supervisor catches SIGTSTP, so it stops after its guests instead of freezing
    before them."""
    script = tmp_path / "suspender.py"
    script.write_text(SUSPENDER)
    argv = [sys.executable, str(script)]
    env = {**os.environ, "PS1": "prompt$ ", "TERM": "dumb", "HISTFILE": "/dev/null"}
    with launcher("data", repo) as under:
        for how, command in (("native", argv), ("synthfs", under(argv))):
            with terminal(("bash", "--norc", "--noprofile", "-i"), tmp_path, env) as t:
                assert t.expect(b"prompt$ "), t.shown
                line = shlex.join(["sh", "-c", f"{shlex.join(command)}; echo after=$?"])
                t.type(line.encode() + b"\n")
                typed = len(t.shown)
                assert _expect_after(t, typed, b"Stopped", helpers.TIMEOUT), (how, t.shown)
                assert _expect_after(t, typed, b"prompt$ "), (how, t.shown[typed:])
                stopped = len(t.shown)
                t.expect(b"\0never\0", 1.0)
                assert b"tick" not in t.shown[stopped:], (how, t.shown[typed:])
                assert b"back" not in t.shown[typed:], (how, t.shown[typed:])
                t.type(b"fg\n")
                assert _expect_after(t, stopped, b"after=0", helpers.TIMEOUT), (how, t.shown)
                after = t.shown[stopped:]
                assert b"back" in after and b"done" in after, (how, after)
                assert b"synthfs run:" not in after and b"Traceback" not in after, after


@pytest.mark.parametrize("stop", ["STOP", "TSTP"])
def test_a_guest_continued_by_its_own_child_goes_on(repo: Path, tmp_path: Path,
                                                    stop: str) -> None:
    """A guest stops itself and its child continues it: natively the job ends in about
    a second. synthfs must not stop with the guest while a guest process still runs
    (the child needed the supervisor for its next call: a hang, adversary round 4)."""
    script = f"(sleep 1; kill -CONT $$) & kill -{stop} $$; echo resumed; wait"
    native = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                            timeout=BOUND)
    assert (native.returncode, native.stdout) == (0, "resumed\n")
    with launcher("data", repo) as under:
        got = subprocess.run(under(["sh", "-c", script]), capture_output=True, text=True,
                             timeout=BOUND, cwd=tmp_path)
    assert (got.returncode, got.stdout) == (0, "resumed\n"), got.stderr[-2000:]


#: A guest that takes the terminal (its own process group in the foreground, SIGTTOU
#: ignored), sets TOSTOP, then makes trapped calls.
TAKES_THE_TERMINAL = """
import os, signal, termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
fd = os.open('/dev/tty', os.O_RDWR)
os.setpgid(0, 0)
os.tcsetpgrp(fd, os.getpgrp())
a = termios.tcgetattr(fd)
a[3] |= termios.TOSTOP
termios.tcsetattr(fd, termios.TCSANOW, a)
for _ in range(5):
    os.stat('/')
print('done', flush=True)
"""


def test_a_guest_that_takes_the_terminal_does_not_freeze_synthfs(repo: Path,
                                                                  tmp_path: Path) -> None:
    """With TOSTOP set and the terminal taken by its guest, synthfs writing its own lines
    (here -v's) got SIGTTOU and stopped while the guest waited for it: the shell showed
    the job Stopped (adversary round 4). It must end as natively: done, status 0."""
    env = {**os.environ, "PS1": "prompt$ ", "TERM": "dumb", "HISTFILE": "/dev/null"}
    with launcher("data", repo) as under:
        argv = [*under([sys.executable, "-c", TAKES_THE_TERMINAL])]
        argv.insert(argv.index("run") + 1, "-v")
        line = shlex.join(argv) + " ; echo after=$?"
        with terminal(("bash", "--norc", "--noprofile", "-i"), tmp_path, env) as t:
            assert t.expect(b"prompt$ "), t.shown
            start = len(t.shown)
            t.type(line.encode() + b"\n")
            assert _expect_after(t, start, b"after=0", BOUND), t.shown[start:][-2000:]
            assert b"Stopped" not in t.shown[start:]
            assert b"done" in t.shown[start:]
