"""The content cache refuses a cache directory it cannot trust (agent/cache.py).

Another local user who made the cache directory first (or planted a symlink in
it) must not get the agent to read, write or upload through their files.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from agent_stack import Stack

from synthfs.agent.cache import ContentCache
from synthfs.protocol.messages import Commit, Committed, Open, Opened

OTHER_UID = 65534  # nobody: "another local user" (the tests run as root)


def test_a_fresh_cache_is_private(tmp_path: Path) -> None:
    c = ContentCache(str(tmp_path / "cache"), "repo")
    try:
        for d in (tmp_path / "cache", Path(c.dir), Path(c.objects), Path(c.tmp)):
            assert d.stat().st_mode & 0o777 == 0o700
    finally:
        c.close()


@pytest.mark.parametrize("where", ["root", "repo"])
def test_a_foreign_cache_directory_is_refused(tmp_path: Path, where: str) -> None:
    root = tmp_path / "cache"
    target = root if where == "root" else root / "repo"
    target.mkdir(parents=True, mode=0o700)
    os.chown(target, OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError, match="must be owned by this user"):
        ContentCache(str(root), "repo")


@pytest.mark.parametrize("where", ["root", "repo", "objects"])
def test_a_loose_cache_directory_is_refused(tmp_path: Path, where: str) -> None:
    root = tmp_path / "cache"
    target = {"root": root, "repo": root / "repo", "objects": root / "repo" / "objects"}[where]
    target.mkdir(parents=True, mode=0o700)
    os.chmod(target, 0o777)
    with pytest.raises(PermissionError, match="mode 0700"):
        ContentCache(str(root), "repo")


@pytest.mark.parametrize("where", ["root", "repo", "objects", "tmp"])
def test_a_symlinked_cache_directory_is_refused(tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "cache"
    link = {"root": root, "repo": root / "repo", "objects": root / "repo" / "objects",
            "tmp": root / "repo" / "tmp"}[where]
    link.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    link.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symlink"):
        ContentCache(str(root), "repo")
    assert list(elsewhere.iterdir()) == []  # nothing was made through the link


@pytest.mark.parametrize("name", ["lock", "index.sqlite", "index.sqlite-wal"])
def test_a_planted_symlink_file_is_refused(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's file")
    repo = tmp_path / "cache" / "repo"
    repo.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "cache", 0o700)
    (repo / name).symlink_to(victim)
    with pytest.raises(OSError) as info:
        ContentCache(str(tmp_path / "cache"), "repo")
    assert info.value.errno in (errno.ELOOP, errno.EPERM)
    assert victim.read_bytes() == b"someone else's file"


def test_a_foreign_lock_file_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "cache" / "repo"
    repo.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "cache", 0o700)
    (repo / "lock").write_bytes(b"")
    os.chown(repo / "lock", OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError, match="must be owned by this user"):
        ContentCache(str(tmp_path / "cache"), "repo")


def test_a_foreign_cache_is_refused_by_the_agent_with_one_line(stack: Stack) -> None:
    stack.cache.mkdir(parents=True, mode=0o755, exist_ok=True)
    os.chmod(stack.cache, 0o755)
    stack.start_server()
    agent = stack.start_agent(wait=False)
    assert agent.popen.wait(10) == 1
    out = agent.output()
    assert f"cannot use the cache at {stack.cache}" in out and "mode 0700" in out
    assert "Traceback" not in out


def test_upload_never_follows_a_symlink_planted_for_the_object(running: Stack,
                                                              tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOP SECRET")
    (running.root / "f").write_bytes(b"old")
    o = running.call(Open(path="/f", flags=os.O_RDWR, mode=0o644))
    assert isinstance(o, Opened)
    os.unlink(o.host_path)
    os.symlink(secret, o.host_path)
    with pytest.raises(OSError):
        c = running.call(Commit(path="/f"))
        assert not isinstance(c, Committed)
    assert (running.root / "f").read_bytes() == b"old"


def test_a_refused_cache_leaves_no_fd_open(tmp_path: Path) -> None:
    repo = tmp_path / "cache" / "repo"
    repo.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "cache", 0o700)
    (repo / "objects").symlink_to(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(PermissionError):
            ContentCache(str(tmp_path / "cache"), "repo")
    assert len(os.listdir("/proc/self/fd")) == before
