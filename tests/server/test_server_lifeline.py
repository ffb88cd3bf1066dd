"""``server --lifeline-fd``: the server stops once every holder of the pipe's write end has gone.

The embedded launcher (``agent.embedded``) and its agent hold the write end, so
the server outlives neither for long, and stops under an agent finishing an
upload in neither case.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from server_harness import REPO, make_key


def test_the_server_stops_when_the_lifeline_closes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    key = tmp_path / "key"
    make_key(key)
    life_r, life_w = os.pipe()
    ready_r, ready_w = os.pipe()
    holder = proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "synthfs.server", "--root", str(root), "--listen",
             f"ipc://{tmp_path}/s.sock", "--bootstrap-key", str(key),
             "--lifeline-fd", str(life_r), "--ready-fd", str(ready_w)],
            pass_fds=[life_r, ready_w], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, cwd=REPO,
        )
        os.close(life_r)
        os.close(ready_w)
        assert select.select([ready_r], [], [], 15)[0], "the server never became ready"
        assert os.read(ready_r, 16) == b"ready\n"
        # Another holder of the write end (the agent's part): closing ours is not enough.
        holder = subprocess.Popen(["sleep", "60"], pass_fds=[life_w])
        os.close(life_w)
        life_w = -1
        time.sleep(0.5)
        assert proc.poll() is None, "the server stopped while the lifeline was still held"
        t0 = time.monotonic()
        holder.kill()
        holder.wait()
        rc = proc.wait(timeout=5)
        took = time.monotonic() - t0
        assert rc == 0, proc.stderr.read() if proc.stderr else ""
        assert took < 2.0, f"the server took {took:.1f} s to notice"
    finally:
        os.close(ready_r)
        if life_w >= 0:
            os.close(life_w)
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
