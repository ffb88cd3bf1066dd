"""Direct fetches: ranged GETs of a presigned URL straight into the cache copy.

Role: when the server answers a ``Locate`` (an S3 backend: a presigned GET of one
object version, :class:`synthfs.protocol.messages.Located`), the agent reads
the object from the store itself, :data:`STREAMS` ranges (:func:`part_size`: 8 to
32 MiB) in flight on keep-alive connections. Each body goes from the socket into the copy at
its offset with ``os.splice`` through a pipe (:func:`_splice_body`): the bytes never
enter this process (256 MiB from SeaweedFS on loopback: 0.16-0.19 s of CPU against
0.19-0.23 s read into a buffer and written out, most of what is left being the
kernel's filling of fresh page-cache pages); over https, or without ``os.splice``,
a small buffer and ``os.pwrite``. The server signs one URL and moves no byte of
the file (its hop cost as much CPU as the read itself).

Trusts: the URL the server gave (it is never logged: it is a bearer of a read of
that object until it expires). Checks every answer: a 206 of exactly the range
asked, of an object of the size located, under the ETag located (the store also
checks ``If-Match``, signed into the URL: a replaced object answers 412, which is
ESTALE here, as a ``Read`` of another version is). Anything else (the store not
reachable from here, 403, a cut or short body, a wrong header) is
:class:`Unusable`: the caller fetches through the server instead.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import http.client
import logging
import os
import queue
import select
import threading
import urllib.parse
from collections.abc import Callable

__all__ = ["MAX_PART", "PART", "STREAMS", "Unusable", "fetch_into", "part_size"]

log = logging.getLogger(__name__)

#: GETs in flight; the smallest and the largest range one GET asks for. A file is
#: cut into ranges of a multiple of :data:`PART` (a store's chunk: SeaweedFS's is
#: 8 MiB, and a range cut inside one costs it more), as few as keep :data:`STREAMS`
#: busy up to :data:`MAX_PART` each: every GET costs the store a lookup, so 256 MiB
#: as 8 ranges of 32 MiB cost SeaweedFS 0.45 s of CPU where 32 of 8 MiB cost
#: 0.51-0.52 (benchmarks/RESULTS.md).
STREAMS = 4
PART = 8 << 20
MAX_PART = 32 << 20
#: Bytes read from the socket before each ``pwrite`` (a buffer that stays in the CPU cache).
SLICE = 1 << 20
#: The capacity asked for the pipe a body is spliced through (Linux's default
#: ``pipe-max-size``; a smaller pipe works too, in more calls).
PIPE_SIZE = 1 << 20
#: Seconds to connect, and to wait for any one read of the socket.
CONNECT_S = 2.0
READ_S = 30.0


class Unusable(Exception):
    """The direct fetch could not be done (the message says why): fetch through the server."""


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Target:
    """The parsed URL: where to connect, and the request target (path and signed query)."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise Unusable("not an http(s) URL")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port
        self.target = (u.path or "/") + ("?" + u.query if u.query else "")

    def connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=CONNECT_S)
        return http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_S)


class _Pipe:
    """A pipe a body is spliced through from the socket to the copy (one per worker)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only costs more calls
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _splice_body(sock: int, pipe: _Pipe, fd: int, at: int, end: int) -> None:
    """Move the bytes ``at`` to ``end`` of the copy from ``sock`` into ``fd``, at their
    offset, through ``pipe`` (no copy into this process). The socket has a timeout, so
    it is non-blocking: wait for it with ``select`` (:data:`READ_S`)."""
    while at < end:
        try:
            got = os.splice(sock, pipe.w, min(end - at, PIPE_SIZE))
        except BlockingIOError:
            if not select.select([sock], [], [], READ_S)[0]:
                raise TimeoutError from None
            continue
        if not got:
            raise Unusable("the store cut the body short")
        while got:  # the pipe is emptied before the next splice fills it
            k = os.splice(pipe.r, fd, got, offset_dst=at)
            got -= k
            at += k


def _read_body(r: http.client.HTTPResponse, fd: int, at: int, end: int,
               buf: memoryview) -> None:
    """The same as :func:`_splice_body`, through ``buf`` (https, or no ``os.splice``)."""
    while at < end:
        k = min(len(buf), end - at)
        filled = 0
        while filled < k:
            got = r.readinto(buf[filled:k])
            if not got:
                raise Unusable("the store cut the body short")
            filled += got
        _pwrite_all(fd, buf[:k], at)
        at += k


def _get_range(c: http.client.HTTPConnection, t: _Target, etag: str, size: int, fd: int,
               offset: int, n: int, buf: memoryview, pipe: _Pipe | None) -> None:
    """GET ``n`` bytes at ``offset`` and write them at ``offset`` of ``fd`` (spliced
    through ``pipe`` when there is one)."""
    try:
        c.request("GET", t.target, headers={"If-Match": etag,
                                            "Range": f"bytes={offset}-{offset + n - 1}"})
        if c.sock is not None:
            c.sock.settimeout(READ_S)
        r = c.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        raise Unusable(f"the store did not answer ({type(exc).__name__})") from None
    if r.status == 412:
        raise OSError(errno.ESTALE, "the object changed during a fetch")
    if r.status != 206:
        raise Unusable(f"the store answered HTTP {r.status}")
    got_etag = r.getheader("etag")
    if got_etag is not None and got_etag != etag:
        raise OSError(errno.ESTALE, "the object changed during a fetch")
    want = f"bytes {offset}-{offset + n - 1}/{size}"
    if r.getheader("content-range") != want or r.length != n:
        raise Unusable("the store answered another range")
    try:
        if pipe is None or c.sock is None:
            _read_body(r, fd, offset, offset + n, buf)
            return
        # What the response's reader took in with the headers (peek reads at most once,
        # a few KiB) goes with pwrite; the rest straight from the socket. Closing the
        # response then leaves the connection ready for the next request (keep-alive).
        head = r.fp.peek(1)[:n]
        r.fp.read(len(head))
        _pwrite_all(fd, memoryview(head), offset)
        _splice_body(c.sock.fileno(), pipe, fd, offset + len(head), offset + n)
        r.close()
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise Unusable(f"the store broke off ({type(exc).__name__})") from None


def part_size(size: int, streams: int = STREAMS) -> int:
    """The bytes of each ranged GET of a ``size``-byte object (the last one: the rest)."""
    each = -(-size // max(1, streams))
    return min(MAX_PART, max(PART, -(-each // PART) * PART))


def fetch_into(fd: int, url: str, etag: str, size: int,
               progress: Callable[[int], None] | None = None, *,
               streams: int = STREAMS, part: int | None = None) -> None:
    """Read the ``size`` bytes at ``url`` into ``fd`` (ranges in parallel), or raise.

    Ranges of ``part`` bytes (by default :func:`part_size`), ``streams`` in flight.

    OSError ESTALE when the object was replaced (412, another ETag); :class:`Unusable`
    for any other failure; an OSError of ``pwrite`` (a full disk) as it is. Every
    worker has ended when this returns or raises (``fd`` is the caller's to close).
    ``progress(bytes done)`` is called on this thread after each range.
    """
    if size == 0:
        return
    t = _Target(url)
    each = part_size(size, streams) if part is None else part
    splice = not t.https and hasattr(os, "splice")
    parts = collections.deque((off, min(each, size - off)) for off in range(0, size, each))
    lock = threading.Lock()
    stop = threading.Event()
    done_q: queue.SimpleQueue[int | BaseException | None] = queue.SimpleQueue()

    def work() -> None:
        c = t.connect()
        pipe: _Pipe | None = None
        try:
            if splice:
                with contextlib.suppress(OSError):  # no pipe (EMFILE): through a buffer
                    pipe = _Pipe()
            buf = memoryview(bytearray(min(SLICE, each)))  # a store's Connection: close
            while not stop.is_set():
                with lock:
                    if not parts:
                        break
                    off, n = parts.popleft()
                _get_range(c, t, etag, size, fd, off, n, buf, pipe)
                done_q.put(n)
        except BaseException as exc:  # handed to the caller's thread
            stop.set()
            done_q.put(exc)
        finally:
            c.close()
            if pipe is not None:
                pipe.close()
            done_q.put(None)

    workers = [threading.Thread(target=work, name="direct-fetch", daemon=True)
               for _ in range(max(1, min(streams, len(parts))))]
    for w in workers:
        w.start()
    running = len(workers)
    done = 0
    failure: BaseException | None = None
    while running:
        item = done_q.get()
        if item is None:
            running -= 1
        elif isinstance(item, BaseException):
            failure = failure or item
        else:
            done += item
            if progress is not None and failure is None:
                try:
                    progress(done)
                except BaseException as exc:  # stop the workers first
                    stop.set()
                    failure = exc
    for w in workers:
        w.join()
    if failure is not None:
        raise failure
    if done != size:
        raise Unusable(f"read {done} of {size} bytes")
