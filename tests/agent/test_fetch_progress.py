"""A cold fetch's Progress notes, and the stale copy it replaces (issue #13).

Real server and agent processes; the test's client plays the interposer. A
fetch of several chunks sends ``Progress`` notes on the ``Open`` before its
reply (counts that only grow, of the whole size); a fetch of one chunk sends
none. A refetch of a changed file drops the stale clean copy before it fetches
(its page-cache pages are reused, the cache never holds two copies of one path),
while a guest holding the old copy open keeps reading the old bytes.
"""

from __future__ import annotations

import os

from agent_stack import Stack

from synthfs.protocol.messages import CHUNK_SIZE, Open, Opened, Progress

MiB = 1024 * 1024


def _open(stack: Stack, path: str, notes: list[Progress]) -> Opened:
    c = stack.client(timeout=60)
    c.on_note = notes.append
    reply = c.call(Open(path=path, flags=os.O_RDONLY))
    assert isinstance(reply, Opened)
    return reply


def test_a_fetch_of_several_chunks_sends_progress_notes(running: Stack) -> None:
    size = 5 * CHUNK_SIZE + 123
    (running.root / "big.bin").write_bytes(os.urandom(size))
    (running.root / "small.bin").write_bytes(b"x" * 1000)
    notes: list[Progress] = []
    opened = _open(running, "/big.bin", notes)
    assert os.path.getsize(opened.host_path) == size
    assert notes, "no Progress note before the reply"
    assert all(n.path == "/big.bin" and n.total == size for n in notes)
    done = [n.done for n in notes]
    assert done == sorted(done) and done[0] == 0 and done[-1] < size
    small: list[Progress] = []
    _open(running, "/small.bin", small)
    assert small == []


def test_a_refetch_drops_the_stale_copy_first(running: Stack) -> None:
    big = running.root / "big.bin"
    old = os.urandom(3 * CHUNK_SIZE)
    big.write_bytes(old)
    first = _open(running, "/big.bin", [])
    held = os.open(first.host_path, os.O_RDONLY)  # a guest reading the old copy
    try:
        new = os.urandom(4 * CHUNK_SIZE)
        big.write_bytes(new)
        seen: list[bool] = []

        def note(n: Progress) -> None:
            seen.append(os.path.exists(first.host_path))

        c = running.client(timeout=60)
        c.on_note = note
        second = c.call(Open(path="/big.bin", flags=os.O_RDONLY))
        assert isinstance(second, Opened)
        assert seen and not any(seen), "the stale copy was still there during the refetch"
        with open(second.host_path, "rb") as f:
            assert f.read() == new
        assert os.pread(held, len(old) + 1, 0) == old  # the guest's fd: the old bytes
    finally:
        os.close(held)
