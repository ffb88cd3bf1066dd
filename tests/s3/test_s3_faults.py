"""Faults of the store under a real stack: SeaweedFS frozen for 20 s, then back.

What a guest sees while the store does not answer (documented in
server/backends/s3.py and the README): requests wait for the agent's timeout
(5 s) and then fail with EIO; nothing is acknowledged that the store did not
take, so after the outage every acknowledged write is there and the stack
serves again without a restart. (The crash of a server between the copy and
the delete of a rename is tests/s3/test_s3_backend.py's.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import helpers
import pytest

from synthfs.testing.s3stack import s3_stack

pytestmark = [pytest.mark.ptrace, pytest.mark.slow]

OUTAGE_S = 20.0

_SPANNING = textwrap.dedent("""
    import os, sys, time
    ready, go = sys.argv[1:]
    f = open('/data/span', 'w')
    f.write('written before the outage, closed during it\\n')
    f.flush()
    open(ready, 'w').close()
    while not os.path.exists(go):
        time.sleep(0.05)
    try:
        f.close()
        print('close ok')
    except OSError as exc:
        print('close', exc.errno)
""")


def _run(agent: str, argv: list[str], timeout: float = 120) -> helpers.Outcome:
    return helpers.run_native([*helpers.synthfs_command(), "run", "--agent", agent, "--", *argv],
                              cwd="/", timeout=timeout)


def test_store_down_for_20_s(seaweed, synthfs, tmp_path: Path) -> None:
    bucket = seaweed.new_bucket("fault")
    s3 = seaweed.client()
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env()) as stack:
        agent = stack.agent_endpoint
        before = _run(agent, ["sh", "-c", "echo before > /data/a && mkdir /data/d"])
        assert before.status == 0, before
        ready, go = tmp_path / "ready", tmp_path / "go"
        spanning = subprocess.Popen(
            [*helpers.synthfs_command(), "run", "--agent", agent, "--", sys.executable, "-c",
             _SPANNING, str(ready), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and spanning.poll() is None, spanning.stderr
            time.sleep(0.05)
        seaweed.pause()
        t0 = time.monotonic()
        try:
            go.touch()
            out, err = spanning.communicate(timeout=60)
            closed = time.monotonic() - t0
            t1 = time.monotonic()
            during = _run(agent, ["sh", "-c", "cat /data/a; echo new > /data/b; echo $?"])
            ran = time.monotonic() - t1
        finally:
            left = OUTAGE_S - (time.monotonic() - t0)
            if left > 0:
                time.sleep(left)
            seaweed.resume()
        # During: EIO after the agent's timeout (5 s a request), never a hang nor a false
        # success.
        print(f"close took {closed:.1f} s ({out.strip()}), a guest of two calls {ran:.1f} s")
        assert closed < 30, closed
        assert ran < 25, ran
        assert "Input/output error" in during.stderr, during
        acknowledged = out.strip() == "close ok"
        assert acknowledged or out.strip() == "close 5", (out, err)
        # After: the stack serves again, and every acknowledged write is in the bucket.
        after = _run(agent, ["sh", "-c", "cat /data/a; echo again > /data/c; cat /data/c"])
        assert after.status == 0, after
        assert after.stdout.startswith("before\n") and after.stdout.endswith("again\n")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/")["Contents"]}
    assert {"repo/a", "repo/c"} <= keys
    assert "repo/b" not in keys  # its create failed (EIO): nothing acknowledged
    if acknowledged:
        body = s3.get_object(Bucket=bucket, Key="repo/span")["Body"].read()
        assert body == b"written before the outage, closed during it\n"
