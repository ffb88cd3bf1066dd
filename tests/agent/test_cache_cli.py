"""``synthfs cache ls|clear`` and ``synthfs agent --cache-size SIZE`` (issue #13).

A real cache directory, made by :class:`agent.cache.ContentCache` as an agent
makes it, holds a clean copy and a dirty one (a guest wrote it, not uploaded);
the real ``synthfs cache`` command lists and clears it. ``clear`` removes the
clean copy only, and skips a cache a running agent holds (its lock).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import helpers
import pytest

from synthfs.agent.cache import ContentCache, parse_size, signature
from synthfs.protocol.messages import Attrs, FileKind

A = Attrs(kind=FileKind.FILE, size=5, mode=0o644, mtime_ns=1, ctime_ns=1, ino=9, version="v1")


def _copy(cache: ContentCache, path: str, data: bytes) -> str:
    fd, tmp = cache.new_temp()
    os.write(fd, data)
    os.close(fd)
    cache.install(path, tmp, A)
    return cache.object_path(path)


def _cache(root: Path) -> tuple[ContentCache, str, str]:
    c = ContentCache(str(root), "repo")
    clean = _copy(c, "/clean.bin", b"clean")
    dirty = _copy(c, "/dirty.bin", b"dirty")
    with open(dirty, "ab") as f:  # a guest's write, not uploaded
        f.write(b" and more")
    return c, clean, dirty


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*helpers.synthfs_command(), "cache", *args], capture_output=True,
                          text=True, timeout=60)


def test_ls_lists_every_copy_and_says_which_are_not_uploaded(tmp_path: Path) -> None:
    c, _, _ = _cache(tmp_path / "cache")
    c.close()
    r = _cli("ls", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert "2 copies" in r.stdout and "1 not uploaded" in r.stdout
    lines = {line.split()[-1]: line.split() for line in r.stdout.splitlines()[1:]}
    assert lines["/clean.bin"][:2] == ["5", "clean"]
    assert lines["/dirty.bin"][:2] == ["14", "dirty"]


def test_clear_removes_clean_copies_and_keeps_unuploaded_writes(tmp_path: Path) -> None:
    c, clean, dirty = _cache(tmp_path / "cache")
    c.close()
    r = _cli("clear", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert "removed 1 clean copies" in r.stdout and "kept 1" in r.stdout
    assert not os.path.exists(clean)
    assert Path(dirty).read_bytes() == b"dirty and more"
    again = ContentCache(str(tmp_path / "cache"), "repo")  # the next agent: still dirty
    try:
        assert again.get("/clean.bin") is None
        e = again.get("/dirty.bin")
        assert e is not None and again.is_dirty(e)
    finally:
        again.close()


def test_clear_skips_a_cache_a_running_agent_holds(tmp_path: Path) -> None:
    c, clean, _ = _cache(tmp_path / "cache")
    try:
        r = _cli("clear", "--cache", str(tmp_path / "cache"))
        assert r.returncode == 1
        assert "skipped, a running agent holds it" in r.stdout
        assert os.path.exists(clean)
        e = c.get("/clean.bin")
        assert e is not None and e.recorded == signature(os.stat(clean))
        listed = _cli("ls", "--cache", str(tmp_path / "cache"))
        assert "in use by a running agent" in listed.stdout
    finally:
        c.close()


def test_a_cache_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "loose"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    r = _cli("ls", "--cache", str(root))
    assert r.returncode == 2 and "not a cache directory" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("text", "value"), [("4096", 4096), ("512M", 512 << 20),
                                             ("10G", 10 << 30), ("1.5GiB", 3 << 29)])
def test_cache_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_a_bad_cache_size_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run([*helpers.synthfs_command(), "agent", "--server", "ipc:///nowhere",
                        "--bootstrap-key", "/nowhere", "--listen", f"ipc://{tmp_path}/s",
                        "--cache-size", "10Q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "'10Q' is not a size" in r.stderr and "Traceback" not in r.stderr


def test_an_index_without_its_table_is_an_empty_cache(tmp_path: Path) -> None:
    c, _, _ = _cache(tmp_path / "cache")
    c.close()
    other = tmp_path / "cache" / "other"
    other.mkdir(mode=0o700)
    (other / "lock").touch()
    sqlite3.connect(other / "index.sqlite").close()  # made, never written
    r = _cli("ls", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert f"{other}: 0 copies" in r.stdout and "2 copies" in r.stdout
    r = _cli("clear", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert f"{other}: removed 0 clean copies" in r.stdout
