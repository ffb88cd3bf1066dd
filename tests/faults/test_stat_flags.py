"""fstatat and statx refuse flags and masks the kernel refuses, on /data as on the host.

The stat handlers served any flags: ``newfstatat(fd, name, buf, 0x40000000)``,
``statx`` with a reserved mask bit (``STATX__RESERVED``), an unknown flag, or
both ``AT_STATX_FORCE_SYNC`` and ``AT_STATX_DONT_SYNC`` returned 0 where the
kernel says EINVAL (vfs_statx, do_statx): a program probing for a flag saw one
the kernel does not have. Both engines (the stat family is notified under
``--engine notify``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

GUEST = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(512)
NEWFSTATAT, STATX, AT_FDCWD = 262, 332, -100
for path in sys.argv[1:]:
    p = path.encode()
    calls = {
        "fstatat-unknown-flag": (NEWFSTATAT, AT_FDCWD, p, buf, 0x40000000, 0),
        "statx-reserved-mask": (STATX, AT_FDCWD, p, 0, 0x80000000, buf),
        "statx-unknown-flag": (STATX, AT_FDCWD, p, 0x40000000, 0x7FF, buf),
        "statx-both-sync": (STATX, AT_FDCWD, p, 0x6000, 0x7FF, buf),
        "statx-ok": (STATX, AT_FDCWD, p, 0x2000, 0x7FF, buf),
    }
    for name, (nr, *args) in calls.items():
        args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        r = libc.syscall(ctypes.c_long(nr), *args)
        print(name, "ok" if r == 0 else os.strerror(ctypes.get_errno()))
"""

EXPECTED = [
    "fstatat-unknown-flag Invalid argument",
    "statx-reserved-mask Invalid argument",
    "statx-unknown-flag Invalid argument",
    "statx-both-sync Invalid argument",
    "statx-ok ok",
]


@pytest.mark.parametrize("engine", ["ptrace", "notify"])
def test_stat_flags_the_kernel_refuses(synthfs, tmp_path: Path, engine: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f").write_text("x")
    host = tmp_path / "h"
    host.write_text("x")
    argv = [sys.executable, "-c", GUEST, "/data/f", str(host)]
    out = synthfs.run(repo, argv, cwd=tmp_path, extra=["--engine", engine])
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == EXPECTED * 2, out.show()
