"""Data extents of sparse files: finding them, bounding them, checking them.

A sparse file keeps its holes through synthfs (the agent's cache, the wire and
the repository) because every copy moves only its *data extents*: ``(offset,
length)`` ranges, sorted and disjoint, outside which the file reads as zeros
and allocates nothing. Both sides use this module: the agent finds the extents
of a cache copy before an upload and writes only the extents the server names
into a fetched copy; the server's local backend finds the extents of a
repository file and stages an upload's extents into a file truncated to size.

Trusts nothing in a list that came from the wire (:func:`check_extents`
refuses it with one clear line); :func:`data_extents` trusts the fd it is
given, and falls back to one dense extent where the file system cannot tell
holes (SEEK_DATA/SEEK_HOLE unsupported), which is always correct (a hole read
back is zeros), only not sparse.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "MAX_EXTENTS",
    "Extents",
    "check_extents",
    "coalesce",
    "copy_extents",
    "data_extents",
    "flatten",
    "pieces",
    "received",
    "spans_whole",
]

#: The most extents one wire message names (a file with more is described with fewer,
#: larger extents that take in its smallest holes: :func:`coalesce`).
MAX_EXTENTS = 1024

#: Sorted, disjoint ``(offset, length)`` ranges of data, each of length > 0.
Extents = list[tuple[int, int]]


def data_extents(fd: int, size: int) -> Extents:
    """The data extents of the open regular file ``fd`` within ``[0, size)``.

    A file whose allocation covers its size (the usual case) is one extent
    without a single lseek; otherwise SEEK_DATA/SEEK_HOLE walk it. A file system
    that cannot tell (EINVAL, EOPNOTSUPP) gives one dense extent.
    """
    if size <= 0:
        return []
    if os.fstat(fd).st_blocks * 512 >= size:
        return [(0, size)]
    out: Extents = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole from pos on
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return [(0, size)]
        raise
    return out


def coalesce(extents: Extents, limit: int = MAX_EXTENTS) -> Extents:
    """``extents`` as at most ``limit`` extents: the smallest holes between them are
    taken in (sent as zeros), so a file of very many extents costs a bounded message."""
    if len(extents) <= limit:
        return list(extents)
    gaps = sorted(range(len(extents) - 1),
                  key=lambda i: extents[i + 1][0] - sum(extents[i]))
    filled = set(gaps[: len(extents) - max(limit, 1)])
    out: Extents = []
    start, end = extents[0][0], sum(extents[0])
    for i in range(1, len(extents)):
        off, length = extents[i]
        if i - 1 in filled:
            end = off + length
        else:
            out.append((start, end - start))
            start, end = off, off + length
    out.append((start, end - start))
    return out


def received(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``spans`` (sorted, disjoint ``[start, end)`` byte ranges an upload holds) with
    ``[start, end)`` added: overlapping and touching spans are merged."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*spans, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def spans_whole(spans: list[tuple[int, int]], size: int) -> bool:
    """Whether ``spans`` (from :func:`received`) hold every byte of a ``size``-byte file
    and none beyond it (size 0: nothing but empty spans)."""
    if size == 0:
        return all(a == b for a, b in spans)
    return spans == [(0, size)]


def flatten(extents: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """The wire form: ``(offset0, length0, offset1, length1, ...)``."""
    return tuple(v for ext in extents for v in ext)


def check_extents(flat: Sequence[int], size: int) -> Extents:
    """The extents of a wire list, refused (OSError EINVAL, one clear line) unless they
    are at most :data:`MAX_EXTENTS` pairs of non-negative ints, each of length > 0,
    sorted without overlap, and within ``[0, size)``."""
    def bad(why: str) -> OSError:
        return OSError(errno.EINVAL, f"bad data extents: {why}")

    if len(flat) % 2:
        raise bad("an odd number of values (offset, length pairs expected)")
    if len(flat) > 2 * MAX_EXTENTS:
        raise bad(f"{len(flat) // 2} extents, more than {MAX_EXTENTS}")
    out: Extents = []
    prev_end = 0
    for i in range(0, len(flat), 2):
        off, length = flat[i], flat[i + 1]
        if type(off) is not int or type(length) is not int:
            raise bad("offsets and lengths are ints")
        if off < 0 or length <= 0:
            raise bad(f"extent ({off}, {length}): negative offset or empty")
        if off < prev_end:
            raise bad(f"extent at {off} overlaps or precedes the one ending at {prev_end}")
        if off + length > size:
            raise bad(f"extent ({off}, {length}) ends beyond the size {size}")
        out.append((off, length))
        prev_end = off + length
    return out


def pieces(extents: Iterable[tuple[int, int]], chunk: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of at most ``chunk`` bytes covering ``extents``."""
    for off, length in extents:
        end = off + length
        while off < end:
            n = min(chunk, end - off)
            yield off, n
            off += n


def copy_extents(src: int, dst: int, extents: Iterable[tuple[int, int]], chunk: int) -> None:
    """Copy ``extents`` of ``src`` to the same offsets of ``dst`` (the holes stay holes:
    ``copy_file_range`` over a hole would write its zeros). Through memory when the
    two are on different file systems."""
    for off, length in extents:
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src, dst, length - done, off + done, off + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                data = os.pread(src, min(length - done, chunk), off + done)
                n = os.pwrite(dst, data, off + done) if data else 0
            if n == 0:
                raise OSError(errno.EIO, "the source is shorter than its extents")
            done += n
