"""Sparse files through a real agent and server (issue #20 item 6).

A cold fetch of a sparse file moves its data extents only and leaves a sparse
cache copy (the guest reads a native fd of it); an upload of a sparse copy
moves its data extents only and leaves a sparse file in the repository. The
bytes moved are measured on the processes themselves (``/proc/PID/io``).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent_stack import Stack

from synthfs.extents import MAX_EXTENTS
from synthfs.protocol.messages import Commit, Committed, Open, Opened, Stat, StatReply

MiB = 1024 * 1024
SIZE = 256 * MiB


def _io(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _open(stack: Stack, path: str, flags: int) -> Opened:
    reply = stack.call(Open(path=path, flags=flags, mode=0o644))
    assert isinstance(reply, Opened), reply
    return reply


def _write_sparse(path: Path | str, size: int, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.truncate(size)
        for off, data in writes:
            f.seek(off)
            f.write(data)


def test_a_cold_fetch_of_a_sparse_file_moves_and_allocates_its_data_only(running: Stack) -> None:
    _write_sparse(running.root / "s", SIZE, [(SIZE // 2, b"x" * 4096)])
    native = os.stat(running.root / "s").st_blocks
    assert running.server is not None and running.agent is not None
    read0, wrote0 = running.server.rchar(), _io(running.agent.pid, "wchar")
    o = _open(running, "/s", os.O_RDONLY)
    read, wrote = running.server.rchar() - read0, _io(running.agent.pid, "wchar") - wrote0
    st = os.stat(o.host_path)
    assert st.st_size == SIZE
    assert abs(st.st_blocks - native) * 512 <= MiB, (st.st_blocks, native)  # dense: 256 MiB
    assert o.attrs.blocks == native
    assert read <= MiB and wrote <= MiB, (read, wrote)  # the holes did not travel
    with open(o.host_path, "rb") as f:
        f.seek(SIZE // 2 - 1)
        assert f.read(4098) == b"\0" + b"x" * 4096 + b"\0"
        assert f.read(4096) == bytes(4096)


def test_an_upload_of_a_sparse_copy_moves_and_allocates_its_data_only(running: Stack) -> None:
    o = _open(running, "/new", os.O_WRONLY | os.O_CREAT)
    _write_sparse(o.host_path, SIZE, [(4096, b"a" * 4096), (SIZE - 4096, b"z" * 4096)])
    assert running.server is not None and running.agent is not None
    read0, wrote0 = _io(running.agent.pid, "rchar"), _io(running.server.pid, "wchar")
    c = running.call(Commit(path="/new"))
    read, wrote = _io(running.agent.pid, "rchar") - read0, _io(running.server.pid, "wchar") - wrote0
    assert isinstance(c, Committed), c
    st = os.stat(running.root / "new")
    assert (st.st_size, c.attrs.size) == (SIZE, SIZE)
    assert st.st_blocks * 512 <= MiB and c.attrs.blocks == st.st_blocks, st  # dense: 256 MiB
    assert read <= MiB and wrote <= MiB, (read, wrote)
    with open(running.root / "new", "rb") as f:
        assert f.read(8193) == bytes(4096) + b"a" * 4096 + b"\0"
        f.seek(SIZE - 4097)
        assert f.read() == b"\0" + b"z" * 4096
    # The guest's stat after the upload shows the server's allocation: still sparse.
    s = running.call(Stat(path="/new"))
    assert isinstance(s, StatReply) and s.attrs.blocks == st.st_blocks


def test_a_file_of_holes_only_round_trips(running: Stack) -> None:
    o = _open(running, "/h", os.O_WRONLY | os.O_CREAT)
    os.truncate(o.host_path, SIZE)
    c = running.call(Commit(path="/h"))
    assert isinstance(c, Committed) and c.attrs.size == SIZE and c.attrs.blocks == 0, c
    assert os.stat(running.root / "h").st_blocks == 0
    _write_sparse(running.root / "h2", SIZE, [])
    o = _open(running, "/h2", os.O_RDONLY)
    assert os.stat(o.host_path).st_blocks == 0 and os.stat(o.host_path).st_size == SIZE


def test_a_very_fragmented_file_round_trips_within_bounds(running: Stack) -> None:
    """More extents than one message names: some holes travel as zeros, content is exact."""
    n, step = MAX_EXTENTS + 300, 64 * 1024
    writes = [(i * step, bytes([i % 251 + 1]) * 4096) for i in range(n)]
    o = _open(running, "/frag", os.O_WRONLY | os.O_CREAT)
    _write_sparse(o.host_path, n * step, writes)
    c = running.call(Commit(path="/frag"))
    assert isinstance(c, Committed), c
    assert (running.root / "frag").read_bytes() == Path(o.host_path).read_bytes()
    native = os.stat(o.host_path).st_blocks
    # The holes taken in: (n - MAX_EXTENTS) of them, each under a step; dense: n steps.
    bound = native + (n - MAX_EXTENTS) * step // 512 + 2048
    assert os.stat(running.root / "frag").st_blocks < bound < n * step // 512
    (running.root / "frag2").write_bytes(b"")
    _write_sparse(running.root / "frag2", n * step, writes)
    o2 = _open(running, "/frag2", os.O_RDONLY)
    assert Path(o2.host_path).read_bytes() == (running.root / "frag2").read_bytes()
    assert os.stat(o2.host_path).st_blocks < bound
