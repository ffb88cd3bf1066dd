"""A cold listing of a large directory on S3 (a LIST and a HEAD per entry: seconds) through a
real stack.

The server notes a listing that runs long as running (``Progress``, as it notes a slow
mutation: tests/s3/test_s3_slow_rename.py), so the agent waits for it instead of taking its
server for lost after one attempt (``--timeout`` / 3), resending it, and failing the guest's
``readdir`` with EIO once its budget is spent. Real SeaweedFS, real server, agent and guest.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path

import helpers
import pytest

from synthfs.testing.s3stack import s3_stack

#: Entries in the directory listed: a server's first listing of them (4 LIST pages and
#: this many HEADs, ~3 s on a quiet 2-CPU machine) takes longer than the whole budget of
#: an agent given ``--timeout`` :data:`BUDGET` (three attempts of a third of it).
N = 4000
BUDGET = 2.0


def test_a_slow_cold_listing_is_waited_for(seaweed, synthfs):
    """Before: the agent gave up on the List after three attempts of 0.67 s (the server
    still making its HEADs) and the guest's listdir failed with EIO."""
    bucket = seaweed.new_bucket("slowls")
    s3 = seaweed.client()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"repo/big/f{i:05d}",
                                              Body=b"x"), range(N)))
    script = ("import os, time; t = time.monotonic(); names = os.listdir('/data/big'); "
              "print(len(names), sorted(names)[-1], f'{time.monotonic() - t:.2f}')")
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env(),
                  agent_args=("--timeout", str(BUDGET))) as stack:
        t = time.monotonic()
        out = helpers.run_native([*helpers.synthfs_command(), "run", "--agent",
                                  stack.agent_endpoint, "--", sys.executable, "-c", script],
                                 cwd="/", timeout=300)
        took = time.monotonic() - t
        log = Path(stack.workdir, "agent.log").read_text(errors="replace")
    assert out.status == 0, (out, took, log[-2000:])
    count, last, listed = out.stdout.split()
    assert (int(count), last) == (N, f"f{N - 1:05d}"), out
    if float(listed) <= BUDGET:
        pytest.skip(f"the listing took {listed} s here: within the agent's budget, it shows "
                    "nothing (a faster machine: raise N)")
