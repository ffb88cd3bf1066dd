"""Host paths whose last component is '.' or '..', or that end in '/': as natively.

The supervisor resolves a host path before the kernel runs the call on it
(pinned), and the resolved path had lost both: ``rmdir("d/.")``,
``unlinkat("d/.", AT_REMOVEDIR)`` and ``rename("d/.", x)`` removed or moved
``d`` (natively EINVAL, EBUSY), ``unlink("f/")`` removed ``f`` and
``open("g/", O_CREAT)`` made a file ``g`` (natively ENOTDIR, EISDIR) (review
round 12, finding 17). /data already answered as the kernel does. Each guest
runs natively on one directory and under synthfs on another; their outputs
(each call's errno and the directory after it) must be the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

#: each call on a fresh directory (a file ``f`` and a directory ``d``): its errno, then
#: what the directory holds
GUEST = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
B = sys.argv[1]

def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr),
                     *[ctypes.c_long(x) if isinstance(x, int) else x for x in args])
    return "0" if r >= 0 else errno.errorcode.get(ctypes.get_errno())

def b(name):
    return ctypes.c_char_p((B + "/" + name).encode())

def reset():
    for n in os.listdir(B):
        p = B + "/" + n
        if os.path.isdir(p) and not os.path.islink(p):
            os.rmdir(p)
        else:
            os.unlink(p)
    open(B + "/f", "w").write("data")
    os.mkdir(B + "/d")

CALLS = [
    ("unlink f/", lambda: sc(87, b("f/"))),
    ("rename f/ -> g", lambda: sc(82, b("f/"), b("g"))),
    ("rename f -> g/", lambda: sc(82, b("f"), b("g/"))),
    ("link f -> g/", lambda: sc(86, b("f"), b("g/"))),
    ("symlink x -> g/", lambda: sc(88, ctypes.c_char_p(b"x"), b("g/"))),
    ("truncate f/", lambda: sc(76, b("f/"), 0)),
    ("chmod f/", lambda: sc(90, b("f/"), 0o777)),
    ("utimes f/", lambda: sc(235, b("f/"), None)),
    ("mknod g/ (fifo)", lambda: sc(133, b("g/"), 0o10644, 0)),
    ("open(O_CREAT) g/", lambda: sc(257, -100, b("g/"), os.O_CREAT | os.O_WRONLY, 0o644)),
    ("unlinkat d/ (no REMOVEDIR)", lambda: sc(263, -100, b("d/"), 0)),
    ("rmdir f/.", lambda: sc(84, b("f/."))),
    ("rename d -> f/", lambda: sc(82, b("d"), b("f/"))),
    ("rename d/.. -> z", lambda: sc(82, b("d/.."), b("z"))),
    ("unlink d/..", lambda: sc(87, b("d/.."))),
    ("rmdir d/..", lambda: sc(84, b("d/.."))),
    ("rmdir d/.", lambda: sc(84, b("d/."))),
    ("rename d/. -> e", lambda: sc(82, b("d/."), b("e"))),
    ("unlinkat d/. AT_REMOVEDIR", lambda: sc(263, -100, b("d/."), 0x200)),
    ("mkdir d/.", lambda: sc(83, b("d/."), 0o755)),
]
for name, call in CALLS:
    reset()
    print(f"{name}: {call()} -> {sorted(os.listdir(B))}")
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
def test_final_dots_and_slashes_on_the_host(synthfs, tmp_path: Path, rules: str) -> None:
    code = GUEST
    repo, native_dir, under = tmp_path / "repo", tmp_path / "n", tmp_path / "s"
    for d in (repo, native_dir, under):
        d.mkdir()
    native = helpers.run_native([sys.executable, "-c", code, str(native_dir)], cwd=tmp_path)
    assert native.status == 0 and native.stdout, native.show()
    extra: tuple[str, ...] = ()
    if rules == "host-rules":
        policy = tmp_path / "p.toml"
        policy.write_text(POLICY.format(w=under))
        extra = ("--policy", str(policy))
    out = synthfs.run(repo, [sys.executable, "-c", code, str(under)], cwd=tmp_path, extra=extra)
    assert (out.status, out.stdout) == (0, native.stdout), out.show()
