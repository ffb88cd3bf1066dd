"""synthfs.extents: finding data extents, bounding them, refusing garbage from the wire."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from synthfs.extents import (
    MAX_EXTENTS,
    check_extents,
    coalesce,
    copy_extents,
    data_extents,
    flatten,
    pieces,
)

MiB = 1024 * 1024


def _sparse(path: Path, size: int, *writes: tuple[int, bytes]) -> int:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes:
            f.seek(off)
            f.write(data)
    return os.open(path, os.O_RDONLY)


def test_data_extents_of_a_sparse_file(tmp_path: Path) -> None:
    fd = _sparse(tmp_path / "f", 64 * MiB, (8 * MiB, b"a" * 4096), (40 * MiB, b"b" * 8192))
    try:
        assert data_extents(fd, 64 * MiB) == [(8 * MiB, 4096), (40 * MiB, 8192)]
        assert data_extents(fd, 0) == []
    finally:
        os.close(fd)


def test_data_extents_of_a_dense_file_and_of_holes_only(tmp_path: Path) -> None:
    (tmp_path / "dense").write_bytes(b"x" * 10000)
    fd = os.open(tmp_path / "dense", os.O_RDONLY)
    try:
        assert data_extents(fd, 10000) == [(0, 10000)]
    finally:
        os.close(fd)
    fd = _sparse(tmp_path / "empty", 16 * MiB)
    try:
        assert data_extents(fd, 16 * MiB) == []
    finally:
        os.close(fd)


def test_coalesce_takes_in_the_smallest_holes() -> None:
    ext = [(0, 10), (11, 10), (100, 10), (1000, 10)]
    assert coalesce(ext, 4) == ext
    assert coalesce(ext, 3) == [(0, 21), (100, 10), (1000, 10)]
    assert coalesce(ext, 2) == [(0, 110), (1000, 10)]
    assert coalesce(ext, 1) == [(0, 1010)]
    many = [(i * 3, 1) for i in range(MAX_EXTENTS * 3)]
    out = coalesce(many)
    assert len(out) <= MAX_EXTENTS
    assert out[0][0] == 0 and sum(out[-1]) == sum(many[-1])  # every byte of data covered


def test_check_extents_accepts_sorted_disjoint_ones_within_size() -> None:
    assert check_extents((), 0) == []
    assert check_extents(flatten([(0, 5), (5, 5), (20, 1)]), 21) == [(0, 5), (5, 5), (20, 1)]


@pytest.mark.parametrize(("flat", "size", "why"), [
    ((0,), 10, "odd number"),
    ((-1, 5), 10, "negative offset"),
    ((0, -5), 10, "negative offset or empty"),
    ((3, 0), 10, "empty"),
    ((0, 5, 4, 2), 10, "overlaps"),
    ((6, 2, 0, 2), 10, "overlaps or precedes"),
    ((8, 3), 10, "beyond the size"),
    ((2**63, 2**63), 2**64 - 1, "beyond the size"),
    (flatten((i * 2, 1) for i in range(MAX_EXTENTS + 1)), 10**9, "more than"),
    ((True, 1), 10, "ints"),
])
def test_check_extents_refuses_garbage_with_one_clear_line(flat, size, why) -> None:
    with pytest.raises(OSError) as ei:
        check_extents(flat, size)
    assert ei.value.errno == errno.EINVAL
    assert why in ei.value.strerror and ei.value.strerror.startswith("bad data extents")


def test_pieces_split_extents_into_chunks() -> None:
    assert list(pieces([(0, 10), (20, 3)], 4)) == [(0, 4), (4, 4), (8, 2), (20, 3)]


def test_copy_extents_keeps_the_holes(tmp_path: Path) -> None:
    src = _sparse(tmp_path / "src", 64 * MiB, (32 * MiB, b"z" * 4096))
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_extents(src, dst, data_extents(src, 64 * MiB), 4 * MiB)
        os.ftruncate(dst, 64 * MiB)
        assert os.fstat(dst).st_blocks * 512 <= MiB
    finally:
        os.close(src)
        os.close(dst)
    with open(tmp_path / "dst", "rb") as f:
        f.seek(32 * MiB - 1)
        assert f.read(4098) == b"\0" + b"z" * 4096 + b"\0"
