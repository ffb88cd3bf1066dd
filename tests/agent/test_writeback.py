"""Write-back (agent/writeback.py): close is durable in the agent's journal and queued;
fsync/sync wait for the server; the queue keeps order, coalesces, and survives SIGKILL.

Real server and agent processes; the client plays the interposer.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from agent_stack import Proc, Stack, wait_until

from synthfs.protocol.client import Client
from synthfs.protocol.messages import (
    Commit,
    Committed,
    List,
    Listing,
    Open,
    Opened,
    Remove,
    Rename,
    Stat,
    StatReply,
    Sync,
    Synced,
)

CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
#: a delay long enough that nothing is uploaded behind the test's back
HOLD = ("--upload-delay", "600")


def _write(client: Client, path: str, body: bytes, *, wait: bool = False) -> Committed:
    o = client.call(Open(path=path, flags=CREATE, mode=0o644))
    assert isinstance(o, Opened)
    Path(o.host_path).write_bytes(body)
    c = client.call(Commit(path=path, wait=wait))
    assert isinstance(c, Committed)
    return c


@pytest.fixture(autouse=True)
def _write_back(stack: Stack) -> None:
    """Write-back is opt-in (``--write-back``): every agent of these tests has it."""
    stack.agent_defaults = ("--write-back",)


def _start(stack: Stack, *agent: str) -> Client:
    stack.start_server()
    stack.start_agent(*agent)
    return stack.client()


def test_close_is_queued_and_reaches_the_server_within_the_bound(stack: Stack) -> None:
    c = _start(stack)
    t0 = time.monotonic()
    committed = _write(c, "/f", b"closed content")
    assert committed.attrs.size == 14  # the guest's view: its own write, at once
    st = c.call(Stat(path="/f"))
    assert isinstance(st, StatReply) and st.attrs.size == 14
    assert wait_until(lambda: (stack.root / "f").read_bytes() == b"closed content", 5)
    took = time.monotonic() - t0
    print(f"close -> on the server: {took:.3f} s")
    assert took < 2.0  # the bound is 1 s while the server answers (slack for a loaded CI)


def test_close_does_not_wait_but_fsync_does(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    _write(c, "/queued", b"queued")
    assert (stack.root / "queued").read_bytes() == b""  # created by the server, content queued
    _write(c, "/synced", b"fsynced", wait=True)
    assert (stack.root / "synced").read_bytes() == b"fsynced"
    assert (stack.root / "queued").read_bytes() == b""


def test_sync_waits_for_every_queued_file(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    for i in range(20):
        _write(c, f"/f{i}", f"body {i}".encode())
    status = c.call(Sync(wait=False))
    assert isinstance(status, Synced) and status.queued == 20 and status.uploaded == 0
    assert status.queued_bytes == sum(len(f"body {i}") for i in range(20))
    done = c.call(Sync(wait=True))
    assert done == Synced(uploaded=20)
    for i in range(20):
        assert (stack.root / f"f{i}").read_bytes() == f"body {i}".encode()


def test_created_written_removed_file_never_sends_its_content(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    _write(c, "/keep", b"kept")
    _write(c, "/gone", b"never sent")
    c.call(Remove(path="/gone"))
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)  # /keep only
    assert (stack.root / "keep").read_bytes() == b"kept"
    assert not (stack.root / "gone").exists()


def test_a_second_close_coalesces_and_the_last_content_wins(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    _write(c, "/f", b"first version, longer")
    _write(c, "/f", b"second")
    assert c.call(Sync(wait=False)).queued == 1  # type: ignore[attr-defined]
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (stack.root / "f").read_bytes() == b"second"


def test_rename_after_close_keeps_the_order(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    (stack.root / "d").mkdir()
    _write(c, "/d/tmp", b"renamed content")
    c.call(Rename(src="/d/tmp", dst="/d/final"))
    assert not (stack.root / "d" / "tmp").exists()
    assert (stack.root / "d" / "final").read_bytes() == b"renamed content"
    assert c.call(Sync(wait=True)) == Synced(uploaded=0)
    assert not (stack.root / "d" / "tmp").exists()  # nothing resurrected the old name


def test_the_journal_survives_sigkill(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    bodies = {f"/f{i}": os.urandom(100 + i) for i in range(50)}
    for path, body in bodies.items():
        _write(c, path, body)
    assert stack.agent is not None
    stack.agent.stop(signal.SIGKILL)
    assert all((stack.root / p[1:]).read_bytes() == b"" for p in bodies)  # none sent yet
    c.close()
    stack.clients.clear()
    stack.start_agent()  # the default bound: the replayed queue goes out at once

    def arrived() -> bool:
        return all((stack.root / p[1:]).read_bytes() == b for p, b in bodies.items())

    assert wait_until(arrived, 10), stack.agent.output()


def test_an_exit_queues_many_copies_in_one_group_commit_that_survives_sigkill(
        stack: Stack) -> None:
    # A process exit's Sync queues every copy it wrote and did not close through a
    # Commit (a shell's `> f` closes the written fd with dup2): one flush and one
    # journal commit for all of them, as durable as a close each.
    c = _start(stack, *HOLD)
    bodies = {f"/g{i}": os.urandom(200 + i) for i in range(12)}
    for path, body in bodies.items():
        o = c.call(Open(path=path, flags=CREATE, mode=0o644))
        assert isinstance(o, Opened)
        Path(o.host_path).write_bytes(body)
    status = c.call(Sync(wait=False))
    assert isinstance(status, Synced) and status.queued == len(bodies)
    assert stack.agent is not None
    stack.agent.stop(signal.SIGKILL)
    c.close()
    stack.clients.clear()
    stack.start_agent()

    def arrived() -> bool:
        return all((stack.root / p[1:]).read_bytes() == b for p, b in bodies.items())

    assert wait_until(arrived, 10), stack.agent.output()


def test_a_queued_copy_as_its_close_left_it_is_leased(stack: Stack) -> None:
    # Until its upload the agent's copy is the file's content: an open and a listing
    # lease it (the guest's next opens, `cat` after a shell's `>`, ask nothing), with
    # the copy's size; a writer's open voids that, and a copy being written gets none.
    pub = f"ipc://{stack.run}/pub.sock"
    stack.start_server("--publish", pub)
    stack.start_agent(*HOLD, "--subscribe", pub)
    c = stack.client()
    body = b"closed, queued, not uploaded"
    _write(c, "/f", body)
    assert (stack.root / "f").read_bytes() == b""  # queued only

    def leased() -> Opened:
        o = c.call(Open(path="/f", flags=os.O_RDONLY, mode=0))
        assert isinstance(o, Opened)
        return o

    assert wait_until(lambda: leased().lease != "", 10), "no lease on the queued copy"
    assert leased().attrs.size == len(body)
    listing = c.call(List(path="/"))
    assert isinstance(listing, Listing) and listing.leased == ("f",), listing
    w = c.call(Open(path="/f", flags=os.O_WRONLY, mode=0))  # open for writing: pinned
    assert isinstance(w, Opened)
    assert leased().lease == ""
    c.call(Commit(path="/f"))
    Path(w.host_path).write_bytes(b"written through an fd kept across its close")
    assert leased().lease == ""  # not as its close left it
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)


def test_sigterm_uploads_the_queue_before_the_agent_ends(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    _write(c, "/f", b"at exit")
    assert stack.agent is not None
    assert stack.agent.stop(signal.SIGTERM) == 0
    assert (stack.root / "f").read_bytes() == b"at exit"


def test_write_through_keeps_close_waiting_for_the_server(stack: Stack) -> None:
    c = _start(stack, "--write-through")
    _write(c, "/f", b"through")
    assert (stack.root / "f").read_bytes() == b"through"
    assert c.call(Sync(wait=False)) == Synced(uploaded=0)


def test_bad_upload_delay_is_refused(stack: Stack) -> None:
    stack.start_server()
    p = stack.start_agent("--upload-delay", "0", wait=False)
    assert p.popen.wait(20) == 2
    assert "--upload-delay" in p.output() and "Traceback" not in p.output()


def _second_agent(stack: Stack, *extra: str) -> tuple[Proc, Client]:
    ep = f"ipc://{stack.run}/agent2.sock"
    p = Proc("agent2", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                        "--bootstrap-key", str(stack.key), "--listen", ep,
                        "--cache", str(stack.tmp / "cache2"), "--write-back", *extra],
              stack.tmp / "agent2.log")
    p.wait_ready()
    c = Client(ep, timeout=10, retries=0)
    stack.clients.append(c)
    return p, c


def test_two_agents_the_servers_commit_order_wins(stack: Stack) -> None:
    """Both close /f; the upload the server commits last is what /f holds, whichever
    close came first; the other agent sees it at its next open (close-to-open)."""
    a = _start(stack, *HOLD)
    p2, b = _second_agent(stack, *HOLD)
    try:
        (stack.root / "f").write_bytes(b"original")
        _write(a, "/f", b"from agent one (closed first)")
        _write(b, "/f", b"from agent two (closed second)")
        assert b.call(Sync(wait=True)) == Synced(uploaded=1)
        assert a.call(Sync(wait=True)) == Synced(uploaded=1)  # committed last: it wins
        assert (stack.root / "f").read_bytes() == b"from agent one (closed first)"
        o = b.call(Open(path="/f", flags=os.O_RDONLY))
        assert isinstance(o, Opened)
        assert Path(o.host_path).read_bytes() == b"from agent one (closed first)"
    finally:
        p2.stop()


def test_exclusive_create_stays_exclusive_across_agents(stack: Stack) -> None:
    a = _start(stack, *HOLD)
    p2, b = _second_agent(stack, *HOLD)
    try:
        excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        assert isinstance(a.call(Open(path="/lock", flags=excl, mode=0o644)), Opened)
        with pytest.raises(OSError) as raised:
            b.call(Open(path="/lock", flags=excl, mode=0o644))
        assert raised.value.errno == errno.EEXIST
    finally:
        p2.stop()


def test_reopened_then_removed_sends_nothing_and_keeps_nothing(stack: Stack) -> None:
    """Coalescing holds with a reopen: create, close, reopen (its closed version kept
    aside), rewrite, close, remove: nothing reaches the server, nothing stays aside."""
    c = _start(stack, *HOLD)
    _write(c, "/gone", b"first")
    o = c.call(Open(path="/gone", flags=os.O_RDWR))
    assert isinstance(o, Opened)
    assert len(list(stack.cache.glob("*/snaps/*"))) == 1  # the closed version, aside
    Path(o.host_path).write_bytes(b"second")
    c.call(Commit(path="/gone"))
    assert not list(stack.cache.glob("*/snaps/*"))  # the second close replaced it
    c.call(Remove(path="/gone"))
    assert c.call(Sync(wait=True)) == Synced(uploaded=0)
    assert not (stack.root / "gone").exists()


def test_reopened_and_closed_again_the_last_close_wins(stack: Stack) -> None:
    c = _start(stack, *HOLD)
    _write(c, "/f", b"first version")
    o = c.call(Open(path="/f", flags=os.O_WRONLY | os.O_TRUNC))
    assert isinstance(o, Opened)
    Path(o.host_path).write_bytes(b"second")
    c.call(Commit(path="/f"))
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (stack.root / "f").read_bytes() == b"second"


def test_a_copy_written_through_an_fd_kept_across_its_close_waits_for_that_fd(
        stack: Stack) -> None:
    """A writer that keeps its fd across another fd's close (a dup, a fork) rewrites the
    closed version in place: the upload waits until no fd writes the copy, and sends
    what that left, never the mix in between."""
    c = _start(stack, "--upload-delay", "0.2")
    o = c.call(Open(path="/f", flags=CREATE, mode=0o644))
    assert isinstance(o, Opened)
    fd = os.open(o.host_path, os.O_WRONLY)
    try:
        os.write(fd, b"A" * 1000)
        c.call(Commit(path="/f"))  # one fd's close; this one stays open
        os.pwrite(fd, b"B" * 500, 0)  # half of the next version
        time.sleep(1.5)  # well past the upload delay
        assert (stack.root / "f").read_bytes() == b"", "a mix of two versions was sent"
        os.pwrite(fd, b"B" * 500, 500)
    finally:
        os.close(fd)
    assert wait_until(lambda: (stack.root / "f").read_bytes() == b"B" * 1000, 10)


def test_sync_sends_a_reopened_copy_as_it_is(stack: Stack) -> None:
    """``sync`` means every changed file as it is then: a reopened copy's new content
    goes, not the closed version kept aside (and none stays aside)."""
    c = _start(stack, *HOLD)
    _write(c, "/f", b"closed version")
    o = c.call(Open(path="/f", flags=os.O_RDWR))
    assert isinstance(o, Opened)
    with open(o.host_path, "r+b") as f:
        f.write(b"SYNCED")
        f.flush()
        assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (stack.root / "f").read_bytes() == b"SYNCED version"
    assert not list(stack.cache.glob("*/snaps/*"))


def test_a_sparse_file_kept_aside_keeps_its_holes(stack: Stack) -> None:
    """Reopened before its upload, a sparse file's closed version is kept aside and sent
    with its holes (the copy aside is not filled with zeros)."""
    c = _start(stack, "--upload-delay", "0.2")
    size = 16 << 20
    o = c.call(Open(path="/sparse", flags=CREATE, mode=0o644))
    assert isinstance(o, Opened)
    with open(o.host_path, "r+b") as f:
        f.truncate(size)
        f.seek(size - 5)
        f.write(b"tail\n")
    c.call(Commit(path="/sparse"))
    o = c.call(Open(path="/sparse", flags=os.O_RDWR))
    assert isinstance(o, Opened)
    (aside,) = stack.cache.glob("*/snaps/*")
    assert aside.stat().st_blocks * 512 < (1 << 20)
    fd = os.open(o.host_path, os.O_RDWR)  # a writer: the copy itself is not sent meanwhile
    try:
        os.pwrite(fd, b"head", 0)
        on_server = stack.root / "sparse"
        assert wait_until(lambda: on_server.stat().st_size == size, 10)
        assert on_server.stat().st_blocks * 512 < (1 << 20)
        with open(on_server, "rb") as f:
            assert f.read(4) == b"\0" * 4
    finally:
        os.close(fd)
