"""TOCTOU against a [host] write denial: symlinks swapped in a guest-writable directory.

Policy ``policies/ci.toml`` with ``WORKSPACE`` set: the guest may write its
workspace, not the directory beside it that holds the victim file. The guest
(one Python program, two threads) races:

* ``dir``: ``WS/d`` is exchanged (``renameat2(RENAME_EXCHANGE)``, atomic) again
  and again between a real directory holding ``f`` and a symlink to the
  victim's directory, while the other thread opens ``WS/d/f`` for writing. A
  check on ``WS/d/f`` followed by a kernel walk of the guest's path would
  write the victim whenever the swap lands between the two; synthfs decides
  on the real path it resolved and opens it with ``RESOLVE_NO_SYMLINKS``, so
  the late swap gives ELOOP.
* ``link``: ``WS/link`` is exchanged between a symlink to ``WS/ok`` and a
  symlink to the victim, while the other thread opens ``WS/link`` for writing.
* ``unlink`` and ``chmod``: the ``dir`` race against calls the kernel runs on
  a path (not opens). synthfs pins the checked parent (or object) with an
  ``O_PATH`` + ``RESOLVE_NO_SYMLINKS`` open in the supervisor and gives the
  kernel ``/proc/SUPERVISOR/fd/N/name``, which no swap can redirect.

* ``setxattrat``: the same race against the *xattrat syscalls (pinned too).
* ``fchmod``, ``futimens``, ``fsetxattr``: fd N flips (dup2) between a
  workspace file and the victim, both opened read-only, while the other
  thread changes N's file. A read-only fd is enough natively; synthfs judges
  the call as its path form on the fd's file and runs it on the object it
  checked (opened from the fd, compared with the decision).
* ``bind``: an AF_UNIX socket bound at ``WS/d/sN`` while ``d`` flips: the socket
  file must never appear beside the victim, and getsockname must show the
  name the guest gave (the kernel walked a pinned path).
* ``inotify``, ``handle``, ``stat`` (under a policy that hides OUT from reads):
  inotify_add_watch, name_to_handle_at and the supervisor's own stat answer
  must never reach the hidden victim (its inode never shows).

Exit 66 when the victim was written, removed, changed mode, times or xattrs,
or (read variants) showed its inode. Each
variant runs natively first as the control (it must escape there), then under
synthfs, where it must make zero escapes in N attempts while both sides of the
race were seen (opens that succeeded in the workspace, opens denied).
``SYNTHFS_TOCTOU_N`` sets N (default 2,000: CI-sized).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

ESCAPED = 66
ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("SYNTHFS_TOCTOU_N", "2000"))

GUEST = r"""
import ctypes, errno, os, socket, sys, threading
serial = 0
ws, out, variant, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD, RENAME_EXCHANGE, NR_RENAMEAT2 = -100, 2, 316
if variant == "link":
    a, b, target = ws + "/link", ws + "/link_alt", ws + "/link"
else:
    a, b, target = ws + "/d", ws + "/d_alt", ws + "/d/f"
READS = ("inotify", "handle", "stat", "exec")  # read-class calls: the policy hides OUT
victim = os.stat(out + "/f") if variant not in READS else None
victim_ino = int(sys.argv[5]) if variant in READS else victim.st_ino
stop = False


def hit():
    try:
        now = os.stat(out + "/f")
    except FileNotFoundError:
        return True
    return now.st_ino != victim.st_ino or now.st_ctime_ns != victim.st_ctime_ns or (
        variant in ("setxattrat", "fsetxattr") and "user.synthfs" in os.listxattr(out + "/f")
    )


def attempt():
    if variant == "unlink":
        os.unlink(target)
        if hit():
            return True
        for _ in range(1000):  # put it back (a create while d is the link is refused)
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
                break
            except OSError:
                pass
        return hit()
    if variant == "chmod":
        os.chmod(target, 0o600)
        os.chmod(target, 0o644)
        return hit()
    if variant in FD_CALLS:
        FD_CALLS[variant](flipping)
        return hit()
    if variant == "bind":  # a new socket file: never beside the victim
        global serial
        serial += 1
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(f"{ws}/d/s{serial}")
            if s.getsockname() != f"{ws}/d/s{serial}":
                raise SystemExit(f"getsockname shows {s.getsockname()!r}")
        finally:
            s.close()
        return os.listdir(out) != ["f"]
    if variant == "setxattrat":  # setxattrat(AT_FDCWD, path, 0, name, &{value, size, flags}, 16)
        value = ctypes.create_string_buffer(b"x")
        args = (ctypes.c_uint64 * 2)(ctypes.addressof(value), 1)  # u64 value; u32 size, flags
        name, size = b"user.synthfs", ctypes.c_long(16)
        r = libc.syscall(463, AT_FDCWD, target.encode(), 0, name, args, size)
        if r < 0:
            raise OSError(ctypes.get_errno(), "setxattrat")
        return hit()
    if variant == "inotify":  # the watched inode shows in /proc/self/fdinfo
        ino = inotify_fd = libc.inotify_init1(0o2000000)
        try:
            if libc.inotify_add_watch(inotify_fd, target.encode(), 0x4) < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            with open(f"/proc/self/fdinfo/{inotify_fd}") as info:
                ino = int(info.read().split(" ino:")[1].split()[0], 16)
        finally:
            os.close(inotify_fd)
        return ino == victim_ino
    if variant == "exec":  # WS/d/f is a copy of true, OUT/f of false: exit 1 ran OUT/f
        pid = os.posix_spawn(target, [target], {})
        status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status):
            return None  # killed at the exec stop: the checked file was not what was mapped
        return os.WEXITSTATUS(status) == 1
    if variant == "stat":  # answered by the supervisor itself, not by the kernel
        return os.stat(target).st_ino == victim_ino
    if variant == "handle":  # ext4's file handle starts with the inode number
        buf = ctypes.create_string_buffer(8 + 128)
        buf[0:4] = (128).to_bytes(4, "little")
        mount_id = ctypes.c_int()
        if libc.name_to_handle_at(AT_FDCWD, target.encode(), buf, ctypes.byref(mount_id), 0) < 0:
            raise OSError(ctypes.get_errno(), "name_to_handle_at")
        return int.from_bytes(buf.raw[8:12], "little") == victim_ino
    fd = os.open(target, os.O_WRONLY)
    try:
        if os.fstat(fd).st_ino == victim.st_ino:
            os.write(fd, b"ESCAPED\n")
            return True
        return False
    finally:
        os.close(fd)

FD_CALLS = {  # a read-only fd must not be enough to change a file the policy protects
    "fchmod": lambda fd: (os.chmod(fd, 0o600), os.chmod(fd, 0o644)),
    "futimens": lambda fd: os.utime(fd),
    "fsetxattr": lambda fd: os.setxattr(fd, "user.synthfs", b"x"),
}
if variant in FD_CALLS:  # fd N flips between a workspace file and the victim (dup2)
    mine = os.open(ws + "/ok", os.O_RDONLY)
    theirs = os.open(out + "/f", os.O_RDONLY)
    flipping = os.dup(mine)


def swap():
    while not stop:
        if variant in FD_CALLS:
            os.dup2(theirs, flipping)
            os.dup2(mine, flipping)
            continue
        libc.syscall(NR_RENAMEAT2, AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE)

t = threading.Thread(target=swap)
t.start()
counts = {"ok": 0, "escaped": 0}
try:
    for _ in range(n):
        try:
            escaped = attempt()
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            counts[name] = counts.get(name, 0) + 1
            continue
        if escaped is None:
            counts["killed"] = counts.get("killed", 0) + 1
            continue
        counts["escaped" if escaped else "ok"] += 1
        if escaped:
            break
finally:
    stop = True
    t.join()
print(counts)
sys.exit(66 if counts["escaped"] else 0)
"""


@pytest.fixture
def world() -> Iterator[tuple[Path, Path]]:
    """WS (the workspace) and OUT (beside it, not writable under ci.toml), outside /tmp."""
    base = Path(tempfile.mkdtemp(prefix="synthfs-toctou-", dir="/var/tmp"))
    ws, out = base / "ws", base / "out"
    ws.mkdir()
    (base / "data").mkdir()
    _reset(ws, out)
    try:
        yield ws, out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _reset(ws: Path, out: Path) -> None:
    """The starting position (a run leaves the swapped names in any state)."""
    for name in ("d", "d_alt", "link", "link_alt", "ok"):
        path = ws / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "f").write_text("victim\n")
    (ws / "d").mkdir()
    (ws / "d" / "f").write_text("mine\n")
    (ws / "d_alt").symlink_to(out)
    (ws / "ok").write_text("mine\n")
    (ws / "link").symlink_to(ws / "ok")
    (ws / "link_alt").symlink_to(out / "f")
    (ws / "guest.py").write_text(GUEST)


def _counts(stdout: str) -> dict[str, int]:
    return ast.literal_eval(stdout.strip().splitlines()[-1])


def _escapes_natively(ws: Path, out: Path, argv: list[str]) -> None:
    """The control: natively the race is won (the program sees its own escape).

    A loaded machine can keep the swapping thread from running at the right
    moment for one whole run: up to three runs, from the starting position.
    """
    for _ in range(3):
        native = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if native.returncode == ESCAPED:
            break
        _reset(ws, out)
    assert native.returncode == ESCAPED, (native.stdout, native.stderr)


@pytest.mark.parametrize(
    "variant",
    ["dir", "link", "unlink", "chmod", "setxattrat", "fchmod", "futimens", "fsetxattr", "bind"],
)
def test_symlink_swap_never_writes_a_write_denied_host_file(
    world: tuple[Path, Path], variant: str
) -> None:
    ws, out = world
    argv = [sys.executable, str(ws / "guest.py"), str(ws), str(out), variant]
    _escapes_natively(ws, out, [*argv, str(N)])
    _reset(ws, out)
    r = subprocess.run(
        [sys.executable, "-m", "synthfs.cli", "run", "--data", str(ws.parent / "data"),
         "--policy", str(ROOT / "policies" / "ci.toml"), "--", *argv, str(N)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "WORKSPACE": str(ws)},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    counts = _counts(r.stdout)
    assert counts["escaped"] == 0
    assert (out / "f").read_text() == "victim\n"
    # Both sides of the race were seen: writes in the workspace and denials.
    assert counts["ok"] > 0 and counts.get("EACCES", 0) > 0, counts
    assert set(counts) <= {"ok", "escaped", "EACCES", "ELOOP", "ENOENT"}, counts


#: A policy that hides OUT from reads (ci.toml lets the whole host be read).
READ_POLICY = """
version = 1
default = "allow"
[[mount]]
path = "/data"
[[app]]
name = "job"
match.exe = ["/**"]
allow = [{ paths = ["/data/**"], ops = ["*"] }]
[host]
read = ["/usr/**", "/lib/**", "/lib64/**", "/bin/**", "/etc/**", "/proc/**", "/dev/**",
        "/sys/**", "/", "/var", "/var/tmp", "$BASE", "$WORKSPACE/**", "$VENV/**"]
"""


@pytest.mark.parametrize("variant", ["inotify", "handle", "stat"])
def test_symlink_swap_never_reaches_a_read_denied_host_file(
    world: tuple[Path, Path], variant: str, tmp_path: Path
) -> None:
    """inotify_add_watch, name_to_handle_at and stat of WS/d/f while d flips to OUT (hidden)."""
    ws, out = world
    victim = str((out / "f").stat().st_ino)
    argv = [sys.executable, str(ws / "guest.py"), str(ws), str(out), variant]
    _escapes_natively(ws, out, [*argv, str(N), victim])
    _reset(ws, out)
    policy = tmp_path / "read.toml"
    policy.write_text(READ_POLICY)
    venv = Path(sys.prefix).resolve()
    r = subprocess.run(
        [sys.executable, "-m", "synthfs.cli", "run", "--data", str(ws.parent / "data"),
         "--policy", str(policy), "--", *argv, str(N), victim],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "WORKSPACE": str(ws), "BASE": str(ws.parent), "VENV": str(venv)},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    counts = _counts(r.stdout)
    assert counts["escaped"] == 0
    assert counts["ok"] > 0 and counts.get("EACCES", 0) > 0, counts
    assert set(counts) <= {"ok", "escaped", "EACCES", "ELOOP", "ENOENT"}, counts


def test_directory_swap_never_execs_a_read_denied_program(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    """execve of WS/d/f while d flips to OUT, which the [host] rules hide: the program
    in OUT never runs (the exec is pinned to the checked file: ELOOP, or killed at the
    exec stop when the kernel mapped another file)."""
    ws, out = world

    def programs() -> None:
        for path, prog in ((ws / "d" / "f", "true"), (out / "f", "false")):
            path.unlink()
            shutil.copy(shutil.which(prog) or f"/bin/{prog}", path)
            path.chmod(0o755)

    programs()
    argv = [sys.executable, str(ws / "guest.py"), str(ws), str(out), "exec"]
    _escapes_natively(ws, out, [*argv, str(N), "0"])
    _reset(ws, out)
    programs()
    policy = tmp_path / "read.toml"
    policy.write_text(READ_POLICY)
    venv = Path(sys.prefix).resolve()
    r = subprocess.run(
        [sys.executable, "-m", "synthfs.cli", "run", "--data", str(ws.parent / "data"),
         "--policy", str(policy), "--", *argv, str(N), "0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "WORKSPACE": str(ws), "BASE": str(ws.parent), "VENV": str(venv)},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    counts = _counts(r.stdout)
    print(counts)
    assert counts["escaped"] == 0
    assert counts["ok"] > 0 and counts.get("EACCES", 0) > 0, counts
    assert set(counts) <= {"ok", "escaped", "EACCES", "ELOOP", "ENOENT", "killed"}, counts
