"""agent/direct.py against a store that misbehaves on the wire.

SeaweedFS (``tests/s3/test_s3_direct.py``) always answers whole and at once; this
store is a real HTTP/1.1 server on a loopback socket that answers the ranges
asked with the headers a store gives, and then sends a body as told: in pieces
with the first bytes in the same segment as the headers, cut short, or stalled.
It checks the byte path (the spliced one, and its reuse of a keep-alive
connection) where SeaweedFS cannot be made to fail.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from synthfs.agent import direct

ETAG = '"0123abcd"'


class _Store:
    """Serves ``body`` by ranges on 127.0.0.1; ``mode`` says how a body is sent."""

    def __init__(self, body: bytes, mode: str) -> None:
        self.body, self.mode = body, mode
        self.requests = 0
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/b/o?X-Amz-Signature=s"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._done.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            while not self._done.is_set():
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = f.readline()
                    if not line:
                        return
                    head += line
                self.requests += 1
                m = re.search(rb"(?i)\r\nrange: bytes=(\d+)-(\d+)\r\n", head)
                assert m is not None, head
                a, b = int(m[1]), int(m[2])
                data = self.body[a:b + 1]
                headers = (f"HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\n"
                           f"Content-Range: bytes {a}-{b}/{len(self.body)}\r\n"
                           f"Content-Length: {len(data)}\r\n\r\n").encode()
                if self.mode == "short":
                    conn.sendall(headers + data[: len(data) // 2])
                    return
                if self.mode == "stall":
                    conn.sendall(headers + data[:100])
                    self._done.wait()
                    return
                # "pieces": the first bytes with the headers, the rest in three pieces
                conn.sendall(headers + data[:1000])
                for i in range(3):
                    time.sleep(0.01)
                    conn.sendall(data[1000 + i * (len(data) - 1000) // 3:
                                      1000 + (i + 1) * (len(data) - 1000) // 3])

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def store() -> Iterator[Callable[[bytes, str], _Store]]:
    made: list[_Store] = []

    def make(body: bytes, mode: str) -> _Store:
        s = _Store(body, mode)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _fetch(tmp_path: Path, url: str, size: int, *, streams: int, part: int) -> bytes:
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        direct.fetch_into(fd, url, ETAG, size, streams=streams, part=part)
    finally:
        os.close(fd)
    return (tmp_path / "copy").read_bytes()


def test_bodies_in_pieces_land_whole_over_one_kept_alive_connection(store, tmp_path):
    """Four ranges on one stream: the bytes that came with each range's headers and
    the spliced rest are all at their offsets, and one connection served all four."""
    body = secrets.token_bytes(4 * 65536 - 777)
    s = store(body, "pieces")
    assert _fetch(tmp_path, s.url, len(body), streams=1, part=65536) == body
    assert (s.requests, s.connections) == (4, 1)


def test_a_body_cut_short_is_unusable(store, tmp_path):
    body = secrets.token_bytes(200_000)
    s = store(body, "short")
    with pytest.raises(direct.Unusable, match="cut the body short"):
        _fetch(tmp_path, s.url, len(body), streams=1, part=len(body))


def test_a_stalled_body_times_out_as_unusable(store, tmp_path, monkeypatch):
    """The socket has a timeout (so it is non-blocking): a store that stops sending
    ends the fetch after READ_S with "broke off", never an error of its own."""
    monkeypatch.setattr(direct, "READ_S", 0.3)
    body = secrets.token_bytes(200_000)
    s = store(body, "stall")
    t = time.monotonic()
    with pytest.raises(direct.Unusable, match=r"broke off \(TimeoutError\)"):
        _fetch(tmp_path, s.url, len(body), streams=1, part=len(body))
    assert time.monotonic() - t < 5


def test_without_a_pipe_the_body_goes_through_a_buffer(store, tmp_path, monkeypatch):
    """No pipe to be had (EMFILE): the same bytes, read into a buffer and written."""

    def no_pipe() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(direct, "_Pipe", no_pipe)
    body = secrets.token_bytes(3 * 65536)
    s = store(body, "pieces")
    assert _fetch(tmp_path, s.url, len(body), streams=2, part=65536) == body


def test_a_file_is_cut_into_as_few_ranges_as_keep_the_streams_busy(store, tmp_path,
                                                                   monkeypatch):
    """Whole multiples of PART, one per stream up to MAX_PART: 256 MiB is 8 GETs of
    32 MiB (each GET costs the store a lookup), 24 MiB still three of 8."""
    mib = 1 << 20
    assert [direct.part_size(n * mib) // mib for n in (1, 24, 40, 64, 256, 4096)] == [
        8, 8, 16, 16, 32, 32]
    assert direct.part_size(256 * mib, streams=1) == 32 * mib
    monkeypatch.setattr(direct, "PART", 65536)
    monkeypatch.setattr(direct, "MAX_PART", 4 * 65536)
    body = secrets.token_bytes(20 * 65536 - 5)
    s = store(body, "pieces")
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        direct.fetch_into(fd, s.url, ETAG, len(body), streams=2)
    finally:
        os.close(fd)
    assert (tmp_path / "copy").read_bytes() == body
    assert (s.requests, s.connections) == (5, 2)
