"""A directory rename on S3 (a copy and a delete per key: seconds) through a real stack.

A slow rename is neither resent nor failed: the server notes it as running (Progress), so
the agent waits for it instead of resending it after one attempt, and a resend would be
answered from the server's duplicate request cache (tests/server/test_server_drc.py). A
file rewritten below the directory while it moves is not lost: the server holds the
writes below a tree being moved until the move ends (server/backends/treelock.py).
Real SeaweedFS, real server, agent and guests.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import helpers

from synthfs.protocol.messages import Done, Progress, Rename
from synthfs.testing.s3stack import s3_stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # server_harness

#: Keys in the directory renamed: its copy and delete take longer than one attempt of
#: an agent given ``--timeout 3`` (1 s), and longer than its whole budget.
N = 400


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _run(stack, script: str) -> helpers.Outcome:
    return helpers.run_native([*helpers.synthfs_command(), "run", "--agent",
                               stack.agent_endpoint, "--", sys.executable, "-c", script],
                              cwd="/", timeout=300)


def test_a_slow_directory_rename_is_waited_for_and_run_once(seaweed, synthfs):
    """Before: the agent resent the Rename after 1 s to its busy server, which ran it a
    second time alongside the first; the guest got ENOTEMPTY, ENOENT or EIO for a rename
    that happened (or a half-moved tree)."""
    bucket = seaweed.new_bucket("slowmv")
    s3 = seaweed.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"repo/big/f{i:04d}",
                                              Body=b"x"), range(N)))
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env(),
                  agent_args=("--timeout", "3"), server_args=("-v",)) as stack:
        out = _run(stack, "import os; os.rename('/data/big', '/data/big2'); print('renamed')")
        log = Path(stack.workdir, "server.log").read_text(errors="replace")
    assert out.status == 0 and out.stdout == "renamed\n", (out, log[-2000:])
    keys = _keys(s3, bucket, "repo/")
    assert sum(k.startswith("repo/big2/f") for k in keys) == N
    assert not [k for k in keys if k.startswith("repo/big/")]
    assert "S3 backend on" in log and "resent" not in log  # (INFO lines are on) noted as
    # running, the Rename was never resent: the cache had nothing to answer


def _answer(c, rid: int):
    """The reply to ``rid`` on ``c`` (its Progress notes skipped)."""
    while True:
        got, reply = c.recv(timeout=120)
        if got == rid and not isinstance(reply, Progress):
            return reply


def test_a_rename_resent_while_it_runs_gets_the_first_answer(seaweed):
    """An agent's resend (same agent, same request id, on a new connection) that comes
    while the rename runs waits for it and gets its answer, and both connections get
    Progress notes meanwhile. Without the cache the resend ran too: once the first had
    moved the tree (the server's tree lock holds it back until then) it answered ENOENT
    for a rename that happened; with neither (the base) it ran alongside the first."""
    from server_harness import RawClient, register

    bucket = seaweed.new_bucket("resend")
    s3 = seaweed.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"repo/big/f{i:04d}",
                                              Body=b"x"), range(N)))
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env()) as stack:
        key = Path(stack.workdir, "bootstrap.key").read_bytes().strip()
        with RawClient(stack.server_endpoint) as first:
            register(first, key)
            rid = first.send(Rename(src="/big", dst="/big2"))
            with RawClient(stack.server_endpoint, token=first.token) as again:
                again.send(Rename(src="/big", dst="/big2"), rid=rid)
                resent = _answer(again, rid)
            answer = _answer(first, rid)
    assert isinstance(answer, Done) and isinstance(resent, Done), (answer, resent)
    keys = _keys(s3, bucket, "repo/")
    assert sum(k.startswith("repo/big2/f") for k in keys) == N
    assert not [k for k in keys if k.startswith("repo/big/")]


WRITER = r"""
import os
i, after = 0, 0
while i < 5000:  # rewrite d/zzz in place until a write fails (d moved away)
    if os.path.exists("/data/e"):
        after += 1
        if after > 20:  # d/zzz outlived the rename (before: a write brought it back)
            print("writer: still writing d/zzz after the rename", flush=True)
            break
    try:
        fd = os.open("/data/d/zzz", os.O_WRONLY)
        try:
            os.write(fd, b"%06d\n" % i)
        finally:
            os.close(fd)  # the upload: acknowledged when close returns 0
    except OSError as exc:
        print("writer:", exc.strerror, flush=True)
        break
    print("ack", i, flush=True)
    i += 1
"""


def test_a_write_below_a_directory_being_renamed_is_not_lost(seaweed, synthfs):
    """A guest on one agent rewrites d/zzz while a guest on another agent of the same
    server renames d to e. Before: a rewrite acknowledged during the copy was deleted
    with the source (or came back as d/zzz), and e/zzz held an older content."""
    bucket = seaweed.new_bucket("mvwrite")
    s3 = seaweed.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"repo/d/f{i:03d}",
                                              Body=b"filler"), range(N)))
    s3.put_object(Bucket=bucket, Key="repo/d/zzz", Body=b"start\n")
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env(), agents=2) as stack:
        writer = subprocess.Popen(
            [*helpers.synthfs_command(), "run", "--agent", stack.agent_endpoints[0], "--",
             sys.executable, "-c", WRITER], cwd="/", stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None
            lines = [writer.stdout.readline() for _ in range(3)]  # it is under way
            assert lines == [f"ack {i}\n" for i in range(3)], lines
            out = helpers.run_native(
                [*helpers.synthfs_command(), "run", "--agent", stack.agent_endpoints[1],
                 "--", "mv", "/data/d", "/data/e"], cwd="/", timeout=300)
            rest, err = writer.communicate(timeout=300)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert out.status == 0, out
    acked = [int(line.split()[1]) for line in [*lines, *rest.splitlines()]
             if line.startswith("ack ")]
    assert rest.splitlines()[-1] == "writer: No such file or directory", (rest[-300:], err)
    body = s3.get_object(Bucket=bucket, Key="repo/e/zzz")["Body"].read()
    assert body == b"%06d\n" % acked[-1], (body, acked[-1], rest[-300:])
    assert not _keys(s3, bucket, "repo/d/"), rest[-300:]
