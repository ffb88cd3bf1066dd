"""Register bits a call's C types do not have give the kernel's answer, not EIO.

Found by a syscall fuzzer (adversary9): ``mknod``/``mknodat`` with bits above
``umode_t`` in the mode register failed with EIO and a handler warning (the
kernel ignores them), and ``utime``/``utimes``/``utimensat`` on ``/data``
with seconds past 2262 failed with EIO (the kernel clamps them to what the
file system holds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import SynthfsLauncher

GUEST = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_mknod, SYS_mknodat, SYS_utime, SYS_utimes, SYS_utimensat = 133, 259, 132, 235, 280
S_IFREG, AT_FDCWD = 0o100000, -100
bad = []

def call(name, nr, *args):
    if libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a
                                         for a in args]) != 0:
        bad.append(f"{name}: {os.strerror(ctypes.get_errno())}")

for d in sys.argv[1:]:
    call(f"mknod {d}", SYS_mknod, f"{d}/n1".encode(), (1 << 32) | S_IFREG | 0o644, 0)
    call(f"mknodat {d}", SYS_mknodat, AT_FDCWD, f"{d}/n2".encode(),
         (7 << 32) | S_IFREG | 0o600, 0)
    open(f"{d}/n3", "w").close()
    far = struct.pack("<qqqq", 1 << 62, 0, 1 << 62, 0)
    for name, nr, args in (("utime", SYS_utime, ()), ("utimes", SYS_utimes, ()),
                           ("utimensat", SYS_utimensat, (AT_FDCWD,))):
        path = f"{d}/n3".encode()  # made by open: the utimes fail on their own
        call(f"{name} {d}", nr, *args, path, far, *((0,) if args else ()))
print("\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_high_register_bits_and_far_times(synthfs: SynthfsLauncher, tmp_path: Path) -> None:
    repo, host = tmp_path / "repo", tmp_path / "host"
    repo.mkdir()
    host.mkdir()
    out = synthfs.run(repo, [sys.executable, "-c", GUEST, "/data", str(host)], cwd=tmp_path)
    assert out.status == 0, out.show()
    assert "failed" not in out.stderr, out.show()
    assert (repo / "n1").is_file() and (repo / "n2").is_file()
    assert (host / "n1").is_file() and (host / "n2").is_file()
