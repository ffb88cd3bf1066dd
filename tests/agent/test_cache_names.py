"""The agent's content cache keeps copies of names that are not UTF-8 (names are bytes)."""

from __future__ import annotations

import os
from pathlib import Path

from synthfs.agent.cache import ContentCache
from synthfs.protocol.messages import Attrs, FileKind

A = Attrs(kind=FileKind.FILE, size=3, mode=0o644, mtime_ns=1, ctime_ns=1, ino=9, version="v",
          blocks=8)
RAW = os.fsdecode(b"/d/raw-\xff\xfe")  # '/d/raw-\udcff\udcfe'


def _install(cache: ContentCache, path: str, data: bytes) -> None:
    fd, tmp = cache.new_temp()
    os.write(fd, data)
    os.close(fd)
    cache.install(path, tmp, A)


def test_a_path_that_is_not_utf8_is_kept_across_restarts(tmp_path: Path) -> None:
    cache = ContentCache(str(tmp_path), "repo")
    _install(cache, RAW, b"raw")
    _install(cache, "/d/ok-\u00e9", b"utf")
    cache.touch(cache.get(RAW))  # type: ignore[arg-type]
    cache.flush_touches()
    cache.close()
    again = ContentCache(str(tmp_path), "repo")
    try:
        e = again.get(RAW)
        assert e is not None and e.attrs == A and e.path == RAW
        assert Path(again.object_path(RAW)).read_bytes() == b"raw"
        assert again.get("/d/ok-\u00e9") is not None
        again.drop(RAW)
        assert again.get(RAW) is None
    finally:
        again.close()
    third = ContentCache(str(tmp_path), "repo")
    try:
        assert third.get(RAW) is None and third.get("/d/ok-\u00e9") is not None
    finally:
        third.close()
