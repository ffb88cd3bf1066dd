"""Escape suite: fchmodat2(AT_SYMLINK_NOFOLLOW) on a host symlink.

Linux has no symlink modes: the kernel answers EOPNOTSUPP and changes nothing.
The supervisor checked the link (in a directory the guest may write) and then
ran fchmodat, which follows it: the mode of what it points to changed, a file
the ``[host]`` rules protect or the served directory itself (review round 12,
finding 16). It now runs fchmodat2's own no-follow on the pinned parent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

GUEST = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
w, protected, served = sys.argv[1:4]
os.symlink(protected, w + "/l-protected")
os.symlink(served, w + "/l-served")
open(w + "/plain", "w").close()
for name, mode, flags in ((w + "/l-protected", 0o777, 0x100), (w + "/l-served", 0o700, 0x100),
                          (w + "/plain", 0o640, 0x100), (w + "/plain", 0o600, 1)):
    r = libc.syscall(452, -100, name.encode(), mode, flags)  # fchmodat2
    print(os.path.basename(name), 0 if r == 0 else ctypes.get_errno())
print(oct(os.stat(w + "/plain").st_mode & 0o777))
"""

POLICY = """\
version = 1
default = "allow"

[[mount]]
path = "/data"

[host]
read = ["/**"]
write = ["{w}/**", "/dev/null"]
"""


@pytest.mark.parametrize("rules", ["host-rules", "no-rules"])
def test_fchmodat2_nofollow_never_reaches_the_target(synthfs, tmp_path: Path, rules: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o755)
    repo.chmod(0o755)
    protected = tmp_path / "protected"
    protected.write_text("keep\n")
    protected.chmod(0o644)
    native_w, w = tmp_path / "nw", tmp_path / "w"
    native_w.mkdir()
    w.mkdir()
    native = helpers.run_native([sys.executable, "-c", GUEST, str(native_w), str(protected),
                                 str(repo)], cwd=tmp_path)
    assert native.stdout == "l-protected 95\nl-served 95\nplain 0\nplain 22\n0o640\n", \
        native.show()
    extra: tuple[str, ...] = ()
    if rules == "host-rules":
        policy = tmp_path / "p.toml"
        policy.write_text(POLICY.format(w=w))
        extra = ("--policy", str(policy))
    out = synthfs.run(repo, [sys.executable, "-c", GUEST, str(w), str(protected), str(repo)],
                      cwd=tmp_path, extra=extra)
    assert (out.status, out.stdout) == (0, native.stdout), out.show()
    assert protected.stat().st_mode & 0o777 == 0o644
    assert repo.stat().st_mode & 0o777 == 0o755


SLASHED = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
w, protected_dir, served = sys.argv[1:4]
os.symlink(protected_dir, w + "/l-dir")
os.symlink(served, w + "/l-served")
for name in (w + "/l-dir/", w + "/l-served/"):
    r = libc.syscall(452, -100, name.encode(), 0o700, 0x100)  # fchmodat2, NOFOLLOW
    print("fchmodat2", 0 if r == 0 else ctypes.get_errno())
    r = libc.fchownat(-100, name.encode(), 65534, 65534, 0x100)
    print("fchownat", 0 if r == 0 else ctypes.get_errno())
"""


def test_a_trailing_slash_follows_and_is_judged_on_the_target(synthfs, tmp_path: Path) -> None:
    """With a trailing slash the kernel follows a final symlink, NOFOLLOW or not: the
    check must be of what it reaches. Review round 14: the link (in a writable
    directory) was checked, and the target (a protected directory, the served one)
    got the guest's mode and owner."""
    repo = tmp_path / "repo"
    repo.mkdir()
    repo.chmod(0o755)
    protected = tmp_path / "protected"
    protected.mkdir()
    protected.chmod(0o755)
    w = tmp_path / "w"
    w.mkdir()
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY.format(w=w))
    out = synthfs.run(repo, [sys.executable, "-c", SLASHED, str(w), str(protected), str(repo)],
                      cwd=tmp_path, extra=("--policy", str(policy)))
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == ["fchmodat2 13", "fchownat 13"] * 2, out.show()
    for d in (protected, repo):
        st = d.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o755, 0), d
