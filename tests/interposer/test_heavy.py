"""Heavy and odd guests (issue #20): the run ends as it would natively, in bounded time.

Each case is a real guest under a real ``synthfs run`` (agent mode: one embedded
stack for the module's runs), with a hard timeout: a regression fails, it never
hangs CI.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

PROGRAMS = Path(__file__).parent / "heavy"


def _compile(name: str, out: Path) -> Path:
    exe = out / name
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-pthread", "-o", str(exe), str(PROGRAMS / f"{name}.c")],
        check=True,
        timeout=60,
    )
    return exe


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heavy-bin")


@pytest.fixture(scope="module")
def synthfs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[helpers.SynthfsLauncher, Path, object]]:
    if helpers.ptrace_unavailable_reason():
        pytest.skip(f"synthfs cannot run here: {helpers.ptrace_unavailable_reason()}")
    repo = tmp_path_factory.mktemp("heavy-repo")
    launcher = helpers.SynthfsLauncher(mode="agent")
    with launcher.stack(repo) as stack:
        yield launcher, repo, stack


def test_exit_group_while_threads_create_threads(synthfs, built: Path) -> None:
    """exit_group(7) while threads are in clone: status 7 at once, 20 runs out of 20.

    The threads born in those clones never get their parent's clone event
    reported (the parent died first); the supervisor must still resume them from
    their exit stops, or their zombie leader, and the run, wait forever.
    """
    launcher, repo, stack = synthfs
    exe = _compile("exit_while_cloning", built)
    for run in range(20):
        native = subprocess.run([str(exe), "7"], timeout=30)
        assert native.returncode == 7
        try:
            under = subprocess.run(launcher.argv(repo, [str(exe), "7"], stack=stack), timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {run}: synthfs hung after the guest's exit_group")
        assert under.returncode == 7, f"run {run}"


def test_leftovers_of_a_killed_run_are_swept(tmp_path: Path) -> None:
    """SIGKILL ``synthfs run --data`` mid-run: the next run leaves nothing of it in $TMPDIR."""
    if helpers.ptrace_unavailable_reason():
        pytest.skip(f"synthfs cannot run here: {helpers.ptrace_unavailable_reason()}")
    repo = tmp_path / "repo"
    repo.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    started = tmp_path / "started"
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp)
    cmd = [*helpers.synthfs_command(), "run", "--data", str(repo), "--"]
    first = subprocess.Popen([*cmd, "sh", "-c", f"touch {started}; exec sleep 60"], env=env)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert first.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline, "the first guest never started"
            time.sleep(0.05)
        left = sorted(p.name for p in tmp.iterdir())
        assert left, "the run made no private directory in $TMPDIR"
        # Another user's look-alike and a symlink are not ours to remove.
        decoy = tmp / "synthfs-decoy"
        decoy.symlink_to(tmp_path)
        first.kill()
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    second = subprocess.run([*cmd, "true"], env=env, timeout=60)
    assert second.returncode == 0
    assert sorted(p.name for p in tmp.iterdir()) == ["synthfs-decoy"]
    assert (tmp_path / "repo").is_dir()  # the symlink's target is untouched


def test_many_live_processes_under_a_low_fd_limit(synthfs, built: Path) -> None:
    """1,500 live guest processes under ``ulimit -n 1024`` (soft and hard) run to the end.

    The supervisor kept one /proc/PID/mem fd per process: the 1,000th fork's open
    failed with EMFILE and its traceback took every guest down.
    """
    launcher, repo, stack = synthfs
    exe = _compile("many_children", built)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    argv = launcher.argv(repo, [str(exe), "1500"], stack=stack)
    out = subprocess.run(argv, preexec_fn=low_limit, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "1500 children, 1500 reaped, 0 failed\n"
    assert "Traceback" not in out.stderr


def _fairness(argv: list[str]) -> list[int]:
    """Per-thread call counts that ``stat_threads`` printed for one run of ``argv``."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("counts:"))
    return [int(n) for n in line.split()[1:]]


@pytest.mark.parametrize("under_sh", [False, True], ids=["direct", "under_sh"])
def test_threads_in_stat_loops_are_served_fairly(synthfs, built: Path, under_sh: bool) -> None:
    """A main thread and 4 more call stat() for 3 s: each makes within 3x of the others.

    The supervisor served stops in the order the kernel reports them (the newest
    tracee first, the direct child before the rest): under ``sh`` the main thread
    made 83 calls and the others up to 43,000. Counts over a fixed wall time and
    their ratio, not a rate: the machine may be loaded.
    """
    launcher, repo, stack = synthfs
    exe = _compile("stat_threads", built)
    command = [str(exe), "/", "3", "5"]
    native = _fairness(command)
    assert max(native) <= 3 * min(native), f"natively already unfair: {native}"
    if under_sh:
        command = ["sh", "-c", f"{command[0]} / 3 5; true"]  # not exec'd: sh's child
    counts = _fairness(launcher.argv(repo, command, stack=stack))
    assert len(counts) == 5 and min(counts) > 0, counts
    assert max(counts) <= 3 * min(counts), f"per-thread calls {counts} (natively {native})"


def test_pointers_beyond_user_space_get_efault(synthfs, built: Path, tmp_path: Path) -> None:
    """Paths and buffers at 2**47, 2**63 and the vsyscall page: EFAULT as natively, and
    not one Python traceback on synthfs's stderr (600 of them, one per call, before)."""
    launcher, repo, stack = synthfs
    exe = _compile("high_pointers", built)
    native_root = tmp_path / "native"
    native_root.mkdir()
    (native_root / "link").symlink_to("target")
    if not (repo / "link").is_symlink():
        (repo / "link").symlink_to("target")
    native = subprocess.run([str(exe), str(native_root)], capture_output=True, text=True,
                            timeout=60)
    under = subprocess.run(launcher.argv(repo, [str(exe), helpers.MOUNT], stack=stack),
                           capture_output=True, text=True, timeout=120)
    assert native.returncode == 0 and "EFAULT" in native.stdout
    assert under.returncode == 0, under.stderr[-2000:]
    assert under.stdout == native.stdout
    assert "Traceback" not in under.stderr, under.stderr[-2000:]
