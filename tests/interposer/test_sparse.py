"""Sparse files under ``synthfs run`` (issue #20 item 6): allocation within 1 MiB of native.

A real guest writes a sparse file on /data (or reads one already in the
repository) under a real ``synthfs run --data``; the same program runs
natively. The allocation the repository holds, the one the guest sees (``stat
%b``, ``du``) and the one of the agent's cache copy (the guest reads a native
fd of it) must each be within 1 MiB of the native file's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

MiB = 1024 * 1024
SIZE = 512 * MiB  # apparent size; 4 KiB of data in the middle
SLACK_BLOCKS = MiB // 512

#: Writes a sparse file and closes it (the close uploads it under synthfs); prints the
#: time that took. Then other processes report what they see.
WRITER = (
    "import sys, time; t = time.monotonic(); f = open(sys.argv[1], 'wb'); "
    f"f.truncate({SIZE}); f.seek({SIZE // 2}); f.write(b'x' * 4096); f.close(); "
    "print('%.3f' % (time.monotonic() - t), file=sys.stderr)"
)
REPORT = "stat -c '%s %b' \"$1\" && du -k \"$1\" | cut -f1"
#: Opens an existing file cold (the fetch), reads its data, reports its fstat blocks.
READER = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
    f"assert os.pread(fd, 4096, {SIZE // 2}) == b'x' * 4096; "
    f"assert os.pread(fd, 4096, {SIZE // 2 - 4096}) == bytes(4096); "
    "print(os.fstat(fd).st_blocks)"
)


def _write_and_report(argv_prefix: list[str], path: str, cwd: Path,
                      env: dict[str, str]) -> tuple[helpers.Outcome, float]:
    t = time.monotonic()
    out = helpers.run_native(
        [*argv_prefix, "sh", "-c", f'"$0" -c "$WRITER" "$1" && {REPORT}', sys.executable, path],
        cwd=cwd, env={**env, "WRITER": WRITER})
    return out, time.monotonic() - t


def _blocks(out: helpers.Outcome) -> tuple[int, int, int]:
    """(size, st_blocks, du KiB) of a report."""
    (size, blocks), du = out.stdout.split("\n")[0].split(), out.stdout.split("\n")[1]
    return int(size), int(blocks), int(du)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "LC_ALL": "C", "XDG_CACHE_HOME": str(tmp_path / "xdg")}


def test_a_sparse_file_written_on_data_keeps_its_allocation(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    env = _env(tmp_path)
    native_dir, repo = tmp_path / "native", tmp_path / "repo"
    native_dir.mkdir()
    repo.mkdir()
    native, _ = _write_and_report([], str(native_dir / "f"), tmp_path, env)
    assert native.status == 0, native.show()
    run = [*helpers.synthfs_command(), "run", "--data", str(repo), "--"]
    guest, elapsed = _write_and_report(run, f"{helpers.MOUNT}/f", tmp_path, env)
    assert guest.status == 0, guest.show()
    size, blocks, du = _blocks(native)
    g_size, g_blocks, g_du = _blocks(guest)
    served = os.stat(repo / "f")
    print(f"native {blocks} blocks; served {served.st_blocks}; guest sees {g_blocks} "
          f"({g_du} KiB); write+close {guest.stderr.strip()} s, run {elapsed:.1f} s")
    assert served.st_size == g_size == size == SIZE
    assert abs(served.st_blocks - blocks) <= SLACK_BLOCKS, (served.st_blocks, blocks)
    assert abs(g_blocks - blocks) <= SLACK_BLOCKS, guest.show()
    assert abs(g_du - du) * 1024 <= MiB, guest.show()
    with open(repo / "f", "rb") as f:
        f.seek(SIZE // 2 - 1)
        assert f.read(4098) == b"\0" + b"x" * 4096 + b"\0"


def test_a_sparse_file_in_the_repository_is_fetched_sparse(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    env = _env(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    with open(repo / "f", "wb") as f:
        f.truncate(SIZE)
        f.seek(SIZE // 2)
        f.write(b"x" * 4096)
    native = os.stat(repo / "f").st_blocks
    run = [*helpers.synthfs_command(), "run", "--data", str(repo), "--"]
    t = time.monotonic()
    guest = helpers.run_native(
        [*run, "sh", "-c", f'"$0" -c "$READER" "$1" && {REPORT}', sys.executable,
         f"{helpers.MOUNT}/f"], cwd=tmp_path, env={**env, "READER": READER})
    elapsed = time.monotonic() - t
    assert guest.status == 0, guest.show()
    fstat_blocks = int(guest.stdout.split("\n")[0])
    size, blocks, du = _blocks(helpers.Outcome(0, guest.stdout.split("\n", 1)[1], ""))
    copies = [p for p in (tmp_path / "xdg").rglob("*") if p.is_file() and
              p.stat().st_size == SIZE]
    assert len(copies) == 1, copies  # the agent's cache copy of /data/f
    cached = copies[0].stat().st_blocks
    print(f"native {native} blocks; cache copy {cached}; guest fstat {fstat_blocks}, "
          f"stat {blocks}, du {du} KiB; run {elapsed:.1f} s")
    assert size == SIZE
    assert abs(cached - native) <= SLACK_BLOCKS, (cached, native)
    for seen in (fstat_blocks, blocks, du * 2):
        assert abs(seen - native) <= SLACK_BLOCKS, guest.show()
