"""The progress line of a long cold fetch (issue #13): on a terminal, never in a pipe.

A real ``synthfs run --data`` reads a cold file of several chunks with its
stderr on a pty, then on a pipe. ``SYNTHFS_PROGRESS_AFTER=0`` shows the line
from the agent's first note (the default waits a second, which a loopback fetch
of a few MiB does not last). The guest's own output is the same both ways.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import helpers
import pytest

from synthfs.interposer.progress import ProgressLine, human_bytes

MiB = 1024 * 1024


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "LC_ALL": "C", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
            "SYNTHFS_PROGRESS_AFTER": "0"}


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(24 * MiB))  # 6 chunks
    return data


def _run(tmp_path: Path, data: Path, stderr: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*helpers.synthfs_command(), "run", "--data", str(data), "--",
         "sh", "-c", "wc -c < /data/big.bin; echo guest-err >&2"],
        stdout=subprocess.PIPE, stderr=stderr, env=_env(tmp_path), cwd=tmp_path)


@pytest.mark.ptrace
def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    data = _data(tmp_path)
    master, slave = os.openpty()
    try:
        proc = _run(tmp_path, data, slave)
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=120)
        shown = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, shown
    assert out.strip() == str(24 * MiB).encode()
    assert b"synthfs: fetching /data/big.bin: " in shown, shown
    assert b"of 24.0 MiB (" in shown, shown
    assert shown.rstrip().endswith(b"guest-err"), shown  # the line was erased before it


@pytest.mark.ptrace
def test_no_progress_in_a_pipe(tmp_path: Path) -> None:
    data = _data(tmp_path)
    proc = _run(tmp_path, data, subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == str(24 * MiB).encode()
    assert err == b"guest-err\n"


def test_line_waits_then_is_erased() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    line = ProgressLine(stream, "/data/", after=0.05)
    line.start()
    line.update("/x", MiB, 4 * MiB)
    assert stream.getvalue() == ""  # not yet: short fetches show nothing
    time.sleep(0.06)
    line.update("/x", 2 * MiB, 4 * MiB)
    assert "synthfs: fetching /data/x: 2.0 MiB of 4.0 MiB (" in stream.getvalue()
    line.finish()
    assert stream.getvalue().endswith("\r\x1b[K")
    assert ProgressLine.for_terminal(io.StringIO(), "/data") is None
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
