"""Escape suite: what a guest may see of processes that are not its run's.

A guest shares the user's uid with every other process of the user: another
run's agent and server (which hold a token and a cache), the user's shell,
an editor. Natively, the same uid reads their ``/proc/PID/environ``, opens
their files through ``/proc/PID/fd/N``, walks their cwd and root. Under
synthfs a guest reaches those guarded parts of ``/proc/PID`` (the ones the
kernel gates with a ptrace access check) only for its own run's processes;
of any other process it sees what ``ps`` shows (``stat``, ``status``,
``cmdline``).

The bystander stands for another run's trusted process: a process of the
same user, outside the sandbox, with a secret in its environment, an open
file, and its cwd in a directory. Each attack runs natively first (the
control: it must reach the bystander), then under ``synthfs run``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

SECRET = "bystander-secret-7f3a"

#: what the guest tries, with the bystander's pid as {pid} and its open fd as {fd};
#: each prints the secret (or the file's content) when it reaches the bystander
ATTACKS = {
    "environ": "print(open('/proc/{pid}/environ', 'rb').read().decode(errors='replace'))",
    "task_environ": "print(open('/proc/{pid}/task/{pid}/environ', 'rb').read().decode())",
    "fd_open": "print(open('/proc/{pid}/fd/{fd}').read())",
    "fd_list": "print(os.listdir('/proc/{pid}/fd'), SECRET_MARK)",
    "fd_readlink": "print(os.readlink('/proc/{pid}/fd/{fd}'), SECRET_MARK)",
    "cwd_walk": "print(open('/proc/{pid}/cwd/held.txt').read())",
    "root_walk": "print(open('/proc/{pid}/root' + HELD).read())",
    "symlink_to_fd": "os.symlink('/proc/{pid}/fd', LINK); print(open(LINK + '/{fd}').read())",
    "maps": "print(open('/proc/{pid}/maps').read()[:0] + SECRET_MARK)",
}


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """A process of this user outside any sandbox: (pid, an open fd's number, its file)."""
    held = tmp_path / "bystander" / "held.txt"
    held.parent.mkdir()
    held.write_text(SECRET + "\n")
    code = (
        "import os, sys, time\n"
        f"fd = os.open({str(held)!r}, os.O_RDONLY)\n"
        "print(fd, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=held.parent, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "BYSTANDER_TOKEN": SECRET},
    )
    try:
        assert proc.stdout is not None
        fd = int(proc.stdout.readline())
        yield proc.pid, fd, held
    finally:
        proc.kill()
        proc.wait()


def _program(attack: str, pid: int, fd: int, held: Path, link: Path) -> list[str]:
    body = ATTACKS[attack].format(pid=pid, fd=fd)
    prelude = f"import os\nSECRET_MARK = {SECRET!r}\nHELD = {str(held)!r}\nLINK = {str(link)!r}\n"
    return [sys.executable, "-c", prelude + body]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_guest_does_not_reach_another_process(
    attack: str, bystander: tuple[int, int, Path], synthfs, tmp_path: Path
) -> None:
    pid, fd, held = bystander
    repo = tmp_path / "repo"
    repo.mkdir()
    native = helpers.run_native(_program(attack, pid, fd, held, tmp_path / "n-link"), cwd=tmp_path)
    assert native.status == 0 and SECRET in native.stdout, native.show()  # the control

    out = synthfs.run(repo, _program(attack, pid, fd, held, tmp_path / "s-link"), cwd=tmp_path)
    assert SECRET not in out.stdout, out.show()
    assert out.status != 0, out.show()
    assert "Permission denied" in out.stderr or "Operation not permitted" in out.stderr, out.show()


def test_ps_still_sees_other_processes_and_a_guest_its_own(
    bystander: tuple[int, int, Path], synthfs, tmp_path: Path
) -> None:
    """What ``ps`` reads of any process stays readable, and a guest's own children's
    guarded parts too (they are guests of the same run)."""
    pid, _fd, _held = bystander
    repo = tmp_path / "repo"
    repo.mkdir()
    code = (
        "import os, subprocess, sys, time\n"
        f"print(open('/proc/{pid}/cmdline').read().split(chr(0))[0].endswith('python3') or "
        f"'python' in open('/proc/{pid}/cmdline').read())\n"
        f"print(open('/proc/{pid}/stat').read().split()[0])\n"
        "child = subprocess.Popen(['sleep', '30'], env={'CHILD_MARK': 'own-child'})\n"
        "time.sleep(0.2)\n"
        "print(open(f'/proc/{child.pid}/environ').read().rstrip(chr(0)))\n"
        "print(os.readlink(f'/proc/{child.pid}/cwd') == os.getcwd())\n"
        "child.kill(); child.wait()\n"
    )
    start = time.monotonic()
    out = synthfs.run(repo, [sys.executable, "-c", code], cwd=tmp_path)
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == ["True", str(pid), "CHILD_MARK=own-child", "True"], out.show()
    assert time.monotonic() - start < 60


SIGNALS = """
import fcntl, os, signal, subprocess, sys, time
pid = int(sys.argv[1])
for what, call in (("stop", lambda: os.kill(pid, signal.SIGSTOP)),
                   ("probe", lambda: os.kill(pid, 0)),
                   ("pidfd", lambda: os.close(os.pidfd_open(pid))),
                   ("affinity", lambda: os.sched_setaffinity(pid, {0})),
                   ("nice", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19)),
                   ("setown", lambda: fcntl.fcntl(os.pipe()[0], fcntl.F_SETOWN, pid)),
                   ("procfd", lambda: signal.pidfd_send_signal(
                       os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY), signal.SIGSTOP))):
    try:
        call()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
child = subprocess.Popen(["sleep", "30"])
os.kill(child.pid, signal.SIGTERM)
print("own child", child.wait())
"""


def test_a_guest_does_not_signal_another_process(
    bystander: tuple[int, int, Path], synthfs, tmp_path: Path
) -> None:
    """Another run's supervisor, agent or server is a process of the user like the
    bystander: a guest stopped them at will, hanging that run (review round 12, finding
    14). Processes outside the sandbox are not the guest's to signal or change; its own
    are."""
    pid, _fd, _held = bystander
    repo = tmp_path / "repo"
    repo.mkdir()
    out = synthfs.run(repo, [sys.executable, "-c", SIGNALS, str(pid)], cwd=tmp_path)
    os.kill(pid, 18)  # SIGCONT, whatever happened
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == ["stop 1", "probe 1", "pidfd 1", "affinity 1", "nice 1",
                                       "setown 1", "procfd 1", "own child -15"], out.show()
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().split()[2] != "T"


GROUPS = """
import ctypes, fcntl, os, signal, sys
pgid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def kcmp():
    if libc.syscall(312, os.getpid(), pgid, 0, 0, 0) < 0:  # kcmp(KCMP_FILE)
        raise OSError(ctypes.get_errno(), "kcmp")
for what, call in (("group stop", lambda: os.kill(-pgid, signal.SIGSTOP)),
                   ("group probe", lambda: os.kill(-pgid, 0)),
                   ("group setown", lambda: fcntl.fcntl(os.pipe()[0], fcntl.F_SETOWN, -pgid)),
                   ("kcmp", kcmp)):
    try:
        call()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
os.setpgid(0, 0)  # a group of the guest's own
os.kill(-os.getpid(), signal.SIGWINCH)
print("own group ok")
"""


def test_a_guest_does_not_signal_a_group_outside_the_sandbox(synthfs, tmp_path: Path) -> None:
    """kill(-PGID) reached another run's group, or the user's shell's: only the agent's
    and the server's groups were refused; kcmp compared another process's files (review
    round 14). A group with a member that is no guest is refused, as a pid is."""
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        out = synthfs.run(repo, [sys.executable, "-c", GROUPS, str(other.pid)], cwd=tmp_path)
        os.kill(other.pid, 18)  # SIGCONT, whatever happened
        assert out.status == 0, out.show()
        assert out.stdout.splitlines() == ["group stop 1", "group probe ok", "group setown 1",
                                           "kcmp 1", "own group ok"], out.show()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_guest_signals_its_exited_child_before_waiting_for_it(synthfs, tmp_path: Path) -> None:
    """A child that has exited, not yet waited for, is no longer a guest to the
    supervisor: kill() of it was EPERM (natively 0, a signal to a zombie does nothing)."""
    code = ("import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(3)\n"
            "time.sleep(0.5)\nos.kill(pid, 15)\nprint('kill ok', os.waitpid(pid, 0)[1] >> 8)")
    repo = tmp_path / "repo"
    repo.mkdir()
    out = synthfs.run(repo, [sys.executable, "-c", code], cwd=tmp_path)
    assert out.status == 0, out.show()
    assert out.stdout == "kill ok 3\n", out.show()


ZOMBIE_LEADER = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *run(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, run, 0);
    printf("%d\n", getpid());
    fflush(stdout);
    pthread_exit(0);  /* the leader shows Z; the process lives on in its thread */
}
"""


def test_a_process_whose_leader_exited_is_still_an_outsider(synthfs, tmp_path: Path) -> None:
    """A zombie is no outsider (a guest's exited child), but a leader that exited
    before its other threads shows Z too while the process runs on: a guest signalled
    such a process of the user (review round 16, finding 2)."""
    src, exe = tmp_path / "leader.c", tmp_path / "leader"
    src.write_text(ZOMBIE_LEADER)
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True,
                   timeout=60)
    victim = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        pid = int(victim.stdout.readline())
        repo = tmp_path / "repo"
        repo.mkdir()
        code = (f"import os\ntry:\n    os.kill({pid}, 9)\n    print('ok')\n"
                "except OSError as e:\n    print(e.errno)")
        out = synthfs.run(repo, [sys.executable, "-c", code], cwd=tmp_path)
        assert out.stdout == "1\n", out.show()
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_kill_0_reaches_only_the_guests_of_a_shared_group(tmp_path: Path) -> None:
    """Started by a script (no job of its own), synthfs shares the script's process
    group: a guest's kill(0, SIGTERM) reached the script and its other jobs (review round
    16, finding 1). The guests alone get it then."""
    repo = tmp_path / "repo"
    repo.mkdir()
    guest = "import os, signal, time\nos.kill(0, signal.SIGTERM)\ntime.sleep(5)\nprint('alive')"
    script = (f"sleep 300 >/dev/null 2>&1 & echo $! > {tmp_path}/bystander\n"
              f"{' '.join(helpers.synthfs_command())} run --data {repo} -- "
              f"{sys.executable} -c \"$GUEST\"\n"
              "echo synthfs $?\n")
    p = subprocess.run(["sh", "-c", script], env={**os.environ, "GUEST": guest},
                       capture_output=True, text=True, timeout=60, start_new_session=True)
    bystander = int((tmp_path / "bystander").read_text())
    try:
        assert p.stdout == "synthfs 143\n", (p.stdout, p.stderr)
        assert os.path.exists(f"/proc/{bystander}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bystander, 9)


def test_kill_0_after_joining_another_group_is_refused(synthfs, tmp_path: Path) -> None:
    """A guest joined another job's group of the same session with setpgid, then
    kill(0) reached that job (review round 16, finding 6): kill(0) is judged on the
    caller's group, as kill(-PGID) is."""
    other = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        code = ("import os, signal\n"
                f"os.setpgid(0, {other.pid})\n"
                "try:\n    os.kill(0, signal.SIGTERM)\n    print('ok')\n"
                "except OSError as e:\n    print(e.errno)")
        repo = tmp_path / "repo"
        repo.mkdir()
        out = synthfs.run(repo, [sys.executable, "-c", code], cwd=tmp_path)
        assert out.stdout == "1\n", out.show()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
