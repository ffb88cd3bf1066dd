"""Attacks from the second independent review (SECURITY.md, "Adversary log"), ported.

Each runs natively first against a stand-in (it must do the forbidden thing
there: the control), then under ``synthfs run --data``, where it must not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

#: Find the processes this one may not look into (/proc/N/cmdline: EACCES), or the
#: pids given, and write one byte into every pipe among their fds (opened blind by
#: number: listing /proc/PID/fd of a trusted process was already refused).
PIPE_WRITER = textwrap.dedent("""
    import os, sys
    targets = [int(a) for a in sys.argv[1:]]
    if not targets:
        for n in os.listdir("/proc"):
            if n.isdigit() and int(n) != os.getpid():
                try:
                    open(f"/proc/{n}/cmdline", "rb").read()
                except PermissionError:
                    targets.append(int(n))
                except OSError:
                    pass
    import stat
    wrote = 0
    for pid in targets:
        for fd in range(64):  # no listing, no readlink: open each number blind
            try:
                w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if stat.S_ISFIFO(os.fstat(w).st_mode):
                    os.write(w, b"x")
                    wrote += 1
            except OSError:
                pass
            os.close(w)
    print("wrote", wrote)
    sys.exit(66 if wrote else 0)
""")

#: A stand-in for the server: it ends when a byte reaches its wakeup pipe.
STAND_IN = textwrap.dedent("""
    import os, select
    r, w = os.pipe()
    print("ready", flush=True)
    select.select([r], [], [])
    print("woken", flush=True)
""")


def test_the_server_stop_pipe_is_out_of_reach(tmp_path: Path, synthfs: helpers.SynthfsLauncher
                                              ) -> None:
    """/proc/TRUSTED/fd/N of a pipe was followed (its text, ``pipe:[N]``, names no
    refused path): a guest wrote into the server's signal wakeup pipe and the server
    stopped serving. Refused now by the pid, before any walk."""
    # native control: the same program stops a same-uid stand-in
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert stand_in.stdout is not None and stand_in.stdout.readline() == "ready\n"
        native = subprocess.run([sys.executable, "-c", PIPE_WRITER, str(stand_in.pid)],
                                capture_output=True, text=True, timeout=30)
        assert native.returncode == 66, native
        assert stand_in.wait(timeout=10) == 0 and "woken" in stand_in.stdout.read()
    finally:
        stand_in.kill()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f").write_text("still served\n")
    script = PIPE_WRITER + "\nprint(open('/data/f').read(), end='')\n"
    argv = synthfs.argv(repo, [sys.executable, "-c", script.replace("sys.exit(66 if wrote else 0)",
                                                                     "pass")])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.stdout == "wrote 0\nstill served\n", (r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr


def test_a_guest_cannot_chattr_or_freeze_through_a_read_only_fd(
        tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    """FS_IOC_SETFLAGS needs only an open fd (any mode) and ownership: a root guest made
    host files, the agent's cached copies and the supervisor's placeholders immutable.
    FIFREEZE on any fd of a file system stalled the supervisor in the kernel."""
    if os.geteuid() != 0:
        pytest.skip("FS_IOC_SETFLAGS on another's file needs root")
    prog = textwrap.dedent("""
        import fcntl, os, struct, sys
        FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_NODUMP_FL = 0x80086601, 0x40086602, 0x40
        fd = os.open(sys.argv[1], os.O_RDONLY)
        try:
            flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\\0" * 8))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_NODUMP_FL))
        except OSError as exc:
            print("refused", exc.errno)
            sys.exit(0)
        print("changed")
        sys.exit(66)
    """)
    target = tmp_path / "host.txt"
    target.write_text("x")
    native = subprocess.run([sys.executable, "-c", prog, str(target)], capture_output=True,
                            text=True, timeout=30)
    if "Operation not supported" in native.stderr or native.stdout.startswith("refused 95"):
        pytest.skip("this file system keeps no inode flags")
    assert native.returncode == 66, native  # the control: a read-only fd was enough
    subprocess.run(["chattr", "-d", str(target)], check=False, capture_output=True)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f").write_text("x")
    for path in (str(target), "/data/f"):
        r = subprocess.run(synthfs.argv(repo, [sys.executable, "-c", prog, path]),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout == "refused 1\n", (path, r.stdout, r.stderr)


def test_a_stop_signal_to_the_supervisors_group_is_refused(
        tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    """The guest shares the supervisor's process group (Ctrl-C must reach both), so
    kill(0, SIGSTOP), kill(-pgid) from a child that moved to its own group, or a file
    owned by the group (F_SETOWN) whose SIGIO F_SETSIG makes SIGSTOP, stopped the
    supervisor and froze the whole sandbox. A stop signal toward a group that holds
    the supervisor is refused (EPERM) unless the supervisor catches it: SIGTSTP goes
    through (the guests stop, then the supervisor, as at Ctrl-Z; this group is
    orphaned, so nothing stops) and the run goes on."""
    prog = textwrap.dedent("""
        import os, signal, sys
        pg = os.getpgid(0)
        results = []
        for target, sig in ((0, signal.SIGSTOP), (0, signal.SIGTSTP), (-pg, signal.SIGSTOP)):
            try:
                os.kill(target, sig)
                results.append("sent")
            except PermissionError:
                results.append("refused")
        import fcntl
        r, w = os.pipe()
        try:  # SIGIO to the group, turned into SIGSTOP by F_SETSIG, on the next write
            fcntl.fcntl(r, fcntl.F_SETOWN, -pg)
            fcntl.fcntl(r, 10, signal.SIGSTOP)  # F_SETSIG
            fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
            os.write(w, b"x")
            results.append("sent")
        except PermissionError:
            results.append("refused")
        if os.fork() == 0:  # a child in a group of its own names the old group
            os.setpgid(0, 0)
            try:
                os.kill(-pg, signal.SIGSTOP)
                os._exit(66)
            except PermissionError:
                os._exit(0)
        _, status = os.wait()
        print(*results, os.waitstatus_to_exitcode(status))
    """)
    repo = tmp_path / "repo"
    repo.mkdir()
    start = time.monotonic()
    p = subprocess.Popen(synthfs.argv(repo, [sys.executable, "-c", prog]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGCONT)
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the sandbox was stopped by its own guest")
    assert out == "refused sent refused refused 0\n", (out, err)
    assert p.returncode == 0 and time.monotonic() - start < 60


def test_no_core_dump_of_a_guest(tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    """The kernel writes a core file itself, unchecked: into a directory the policy
    does not let the guest write (removing a ``core`` already there), and with the
    memory of a pinned app that read what the guest may not. Guests get RLIMIT_CORE 0
    (soft and hard), so no dump is written and none can be asked for."""
    prog = ("import resource, sys; s, h = resource.getrlimit(resource.RLIMIT_CORE); "
            "print(s, h); resource.setrlimit(resource.RLIMIT_CORE, (h, h))")
    repo = tmp_path / "repo"
    repo.mkdir()
    r = subprocess.run(synthfs.argv(repo, [sys.executable, "-c", prog + "\n"
                                           "try:\n resource.setrlimit(resource.RLIMIT_CORE, "
                                           "(1 << 20, 1 << 20)); print('raised')\n"
                                           "except ValueError: print('kept')"]),
                       capture_output=True, text=True, timeout=120)
    assert r.stdout == "0 0\nkept\n", (r.stdout, r.stderr)


#: Reach into another run's private directory: list it (its keys, its sockets), and
#: connect to its agent's socket (that agent serves whoever speaks to it).
OTHER_RUN = textwrap.dedent("""
    import os, socket, sys
    d = sys.argv[1]
    results = []
    try:
        os.listdir(d)
        results.append("listed")
    except PermissionError:
        results.append("refused")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(os.path.join(d, "agent.sock"))
        results.append("connected")
    except PermissionError:
        results.append("refused")
    print(*results)
""")


@pytest.mark.parametrize("tmpdir", ["same", "other"])
def test_a_guest_cannot_reach_another_runs_agent_or_keys(
        tmp_path: Path, synthfs: helpers.SynthfsLauncher, tmpdir: str) -> None:
    """Found by the sixth review: each run refused its own private directory only, so a
    guest whose policy lets it write /tmp (the shipped ``ci`` policy) connected to
    another concurrent run's agent socket in ``$TMPDIR/synthfs-*`` and, speaking the
    supervisor's protocol, read, removed and renamed files of that run's repository
    (the agent trusts its socket's peers: the policy lives in the supervisor); it
    could read that run's keys as well. Every run's ``synthfs-*``
    directory is refused to every guest by its name, wherever it is: the seventh
    review reached the other run's again when its $TMPDIR differed ("other")."""
    base = tmp_path / "tmp"
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(base), WORKSPACE=str(tmp_path))
    mine_env = dict(env)
    if tmpdir == "other":
        (tmp_path / "tmp2").mkdir()
        mine_env["TMPDIR"] = str(tmp_path / "tmp2")
    victim, mine = tmp_path / "victim", tmp_path / "mine"
    victim.mkdir()
    mine.mkdir()
    other = subprocess.Popen([*helpers.synthfs_command(), "run", "--data", str(victim), "--",
                              "sleep", "60"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (found := [d for d in base.glob("synthfs-*") if (d / "agent.sock").exists()]):
            assert other.poll() is None and time.monotonic() < deadline, "the other run"
            time.sleep(0.1)
        argv = [sys.executable, "-c", OTHER_RUN, str(found[0])]
        native = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert native.stdout == "listed connected\n", native  # the control
        r = subprocess.run([*helpers.synthfs_command(), "run", "--data", str(mine), "--policy",
                            "ci", "--", *argv], env=mine_env, capture_output=True, text=True,
                           timeout=120)
        assert r.stdout == "refused refused\n", (r.stdout, r.stderr)
    finally:
        other.kill()
        other.wait()
