"""Races between the check and the kernel's call: the kernel acts on what was checked.

Two classes, each an attack program run natively first (the control: it must
escape there) and then under synthfs (it must never escape):

* ``attacks/steal.py``, under a policy without ``[host]`` rules (the shipped
  ``default.toml``): ``rename(d/agent.sock, stolen)`` while a thread flips ``d``
  between a real directory and a symlink to the agent's private work
  directory. The check refuses the agent's socket; a kernel walk of the checked
  text after the flip would move it out of its directory (and the guest could
  then speak to the agent directly). synthfs pins the checked parent under
  every policy (``handlers.Pin``), so the late flip gives ELOOP.
  ``attacks/exec_swap.py`` is the same race against execve, toward the agent's
  cached copy of a /data program the policy denies.
* ``attacks/procfd.c``: ``open(/proc/self/fd/N, O_WRONLY)`` (and ``/dev/fd/N``,
  ``/proc/thread-self/fd/N``, ``/proc/PID/fd/N``) where N is a deleted file or a
  pipe, which only the kernel can follow, while a thread dup2()s a read-only fd
  of a protected file onto N: a host file the ``[host]`` rules keep read-only,
  or a read-only /data file (the agent's cached copy, which a later run would
  read). And ``futimens(N)`` on the same flip (a /data copy's times are the
  agent's record of it). synthfs opens the link itself, checks that it still
  leads to the object checked, and gives the kernel its own fd's link.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

ESCAPED = 66
ATTACKS = Path(__file__).resolve().parent / "attacks"
#: seconds each race runs (the controls escape within the first second)
SECONDS = os.environ.get("SYNTHFS_PINS_SECONDS", "4")
#: execs are slower: a few hundred attempts in these seconds
EXEC_SECONDS = str(max(float(SECONDS), 10.0))


@pytest.fixture(scope="module")
def kernel_ok() -> None:
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")


@pytest.fixture(scope="module")
def procfd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("pins-bin") / "procfd"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-pthread", "-o", str(exe), str(ATTACKS / "procfd.c")],
        check=True, timeout=120,
    )  # fmt: skip
    return exe


@pytest.fixture
def base() -> Iterator[Path]:
    """A private directory outside /tmp (the [host] policies below name it)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="synthfs-pins-", dir="/var/tmp")).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tree(repo: Path) -> Path:
    repo.mkdir()
    (repo / "ok").write_text("original\n")
    return repo


@contextlib.contextmanager
def _stack(base: Path) -> Iterator[object]:
    from synthfs.agent.embedded import embedded

    with embedded(_tree(base / "repo"), cache_dir=base / "cache") as stack:
        yield stack


def _synthfs(stack: object, argv: list[str], cwd: Path, extra: list[str]) -> helpers.Outcome:
    launcher = helpers.SynthfsLauncher(mode="agent")
    full = launcher.argv(cwd, argv, stack=stack, extra=extra)  # (agent mode: no repo)
    return helpers.run_native(full, cwd=cwd, timeout=180)


def _counts(out: helpers.Outcome) -> str:
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


# -- A: the agent's socket, no [host] rules ------------------------------------------------------


def test_a_swapped_directory_never_moves_the_agents_socket(kernel_ok: None, base: Path) -> None:
    steal = [sys.executable, "-I", str(ATTACKS / "steal.py")]
    # the control: a listening socket in a private directory, moved out by the race
    native = base / "native"
    (native / "work").mkdir(parents=True)
    (native / "guest").mkdir()
    stand_in = socket.socket(socket.AF_UNIX)
    stand_in.bind(str(native / "work" / "agent.sock"))
    stand_in.listen(1)
    try:
        control = helpers.run_native(
            [*steal, str(native / "work" / "agent.sock"), SECONDS], cwd=native / "guest"
        )
    finally:
        stand_in.close()
    assert control.status == ESCAPED, control.show()
    # under synthfs (default policy: no [host] table)
    guest = base / "guest"
    guest.mkdir()
    with _stack(base) as stack:
        sock = Path(stack.agent_endpoint.removeprefix("ipc://"))  # type: ignore[attr-defined]
        got = _synthfs(stack, [*steal, str(sock), SECONDS], guest, [])
        print(f"control: {_counts(control)}\nsynthfs: exit {got.status}: {_counts(got)}")
        assert got.status != ESCAPED, f"the agent's socket was moved\n{got.show()}"
        assert got.status == 0, got.show()
        assert sock.is_socket() and not (guest / "stolen").exists()
        counts = ast.literal_eval(_counts(got).rpartition(" ")[0])
        # the race reached the agent's directory: refused at the check (EACCES) or,
        # flipped after it, by the pinned walk (ELOOP)
        assert counts.get("ELOOP", 0) + counts.get("EACCES", 0) > 0, counts
        # the agent still answers the next run through its own socket
        again = _synthfs(stack, ["cat", "/data/ok"], guest, [])
        assert again.status == 0 and again.stdout == "original\n", again.show()


DENY_TOOL_POLICY = """\
version = 1
name = "pins-deny-tool"
default = "allow"

[[mount]]
path = "/data"

[[app]]
name = "all"
match.exe = ["/**"]
allow = [{ paths = ["/data", "/data/**"], ops = ["*"] }]
deny = [{ paths = ["/data/tool"], ops = ["*"], errno = "EACCES" }]
"""


def test_a_swapped_directory_never_execs_a_cached_copy(kernel_ok: None, base: Path) -> None:
    """No ``[host]`` rules: /data/tool (a copy of ``false``), cached by an earlier run
    that could read it, is denied to this one; ``exec d/OBJ`` while ``d`` flips to the
    agent's objects directory never runs the cached copy (ELOOP at the pin, or killed
    at the exec stop when the kernel mapped another file)."""
    swap = [sys.executable, "-I", str(ATTACKS / "exec_swap.py")]
    native = base / "native"
    (native / "objects").mkdir(parents=True)
    (native / "guest").mkdir()
    false = shutil.which("false") or "/bin/false"
    shutil.copy(false, native / "objects" / "obj")
    control = helpers.run_native(
        [*swap, str(native / "objects"), "obj", EXEC_SECONDS], cwd=native / "guest"
    )
    assert control.status == ESCAPED, control.show()
    guest = base / "guest"
    guest.mkdir()
    with _stack(base) as stack:
        shutil.copy(false, base / "repo" / "tool")
        (base / "repo" / "tool").chmod(0o755)
        warm = _synthfs(stack, ["cat", "/data/tool"], guest, [])  # the default policy
        assert warm.status == 0, warm.show()
        (objects,) = (base / "cache").glob("*/objects")
        (copy,) = [p for p in objects.iterdir() if p.read_bytes() == Path(false).read_bytes()]
        policy = base / "deny.toml"
        policy.write_text(DENY_TOOL_POLICY)
        got = _synthfs(
            stack, [*swap, str(objects), copy.name, EXEC_SECONDS], guest, ["--policy", str(policy)]
        )
        print(f"control: {_counts(control)}\nsynthfs: exit {got.status}: {_counts(got)}")
        assert got.status != ESCAPED, f"the cached copy of a denied file ran\n{got.show()}"
        assert got.status == 0, got.show()
        counts = ast.literal_eval(_counts(got).rpartition(" ")[0])
        assert counts["true"] > 0 and counts.get("EACCES", 0) > 0, counts


# -- B: /proc magic links to a deleted file or a pipe --------------------------------------------

HOST_POLICY = """\
version = 1
name = "pins-host"
default = "allow"

[[mount]]
path = "/data"

[[app]]
name = "all"
match.exe = ["/**"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]

[host]
read = ["/**"]
write = ["{guest}", "{guest}/**", "/dev/null", "/dev/pts/**"]
"""


def _control(procfd: Path, mode: str, victim: Path, cwd: Path) -> helpers.Outcome:
    """Natively the race is won: a writable fd on (or new times of) the read-only file."""
    victim.write_text("original\n")
    control = helpers.run_native([str(procfd), mode, str(victim), SECONDS], cwd=cwd)
    assert control.status == ESCAPED, control.show()
    return control


@pytest.mark.parametrize("mode", ["deleted", "pipe", "futimens"])
def test_a_redirected_fd_never_writes_a_read_only_host_file(
    kernel_ok: None, procfd: Path, base: Path, mode: str
) -> None:
    guest, other = base / "guest", base / "other"
    guest.mkdir()
    other.mkdir()
    victim = other / "v.txt"
    control = _control(procfd, mode, victim, guest)
    victim.write_text("original\n")
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    policy = base / "host.toml"
    policy.write_text(HOST_POLICY.format(guest=guest))
    with _stack(base) as stack:
        got = _synthfs(
            stack, [str(procfd), mode, str(victim), SECONDS], guest, ["--policy", str(policy)]
        )
        print(f"control: {_counts(control)}\nsynthfs: exit {got.status}: {_counts(got)}")
        assert got.status != ESCAPED, f"the read-only host file was changed\n{got.show()}"
        assert got.status == 0, got.show()
        assert victim.read_text() == "original\n"
        assert victim.stat().st_mtime == 1_000_000_000
        assert " own=0 " not in _counts(got), got.show()  # the guest's own object was reached


@pytest.mark.parametrize("mode", ["deleted", "pipe", "futimens"])
def test_a_redirected_fd_never_changes_a_read_only_data_file(
    kernel_ok: None, procfd: Path, base: Path, mode: str
) -> None:
    """``--read-only`` (no ``[host]`` rules): /data/ok opened read-only, then N flipped
    onto it: the agent's copy is never written, and a later run reads the original."""
    guest = base / "guest"
    guest.mkdir()
    native = _tree(base / "native")
    control = _control(procfd, mode, native / "ok", guest)
    with _stack(base) as stack:
        got = _synthfs(stack, [str(procfd), mode, "/data/ok", SECONDS], guest, ["--read-only"])
        print(f"control: {_counts(control)}\nsynthfs: exit {got.status}: {_counts(got)}")
        assert got.status != ESCAPED, f"the read-only /data file was changed\n{got.show()}"
        assert got.status == 0, got.show()
        assert " own=0 " not in _counts(got), got.show()
        later = _synthfs(
            stack, ["stat", "-c", "%Y", "/data/ok"], guest, []
        )  # a separate run on the same agent and cache
        assert later.status == 0 and later.stdout.strip() != "0", later.show()
        later = _synthfs(stack, ["cat", "/data/ok"], guest, [])
        assert later.status == 0 and later.stdout == "original\n", later.show()
    assert (base / "repo" / "ok").read_text() == "original\n"
