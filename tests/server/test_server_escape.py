"""Paths from the wire cannot leave the repository: the forbidden thing never happens."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest
from server_harness import RawClient, ServerProc, make_key, register

from synthfs.protocol.messages import (
    Error,
    List,
    Mkdir,
    Read,
    Readlink,
    Rename,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    UploadChunk,
    UploadCommit,
)

NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)


@pytest.fixture(scope="module")
def trap(tmp_path_factory):
    """A repository with symlinks pointing out of it, and an outside directory."""
    tmp_path = tmp_path_factory.mktemp("escape")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("SECRET")
    os.chmod(outside / "secret", 0o644)
    root = tmp_path / "repo"
    root.mkdir()
    os.symlink("/etc", root / "etc")
    os.symlink(outside, root / "out")
    os.symlink("../outside", root / "rel")
    os.symlink(outside / "secret", root / "secretlink")
    (root / "d").mkdir()
    os.symlink("../../outside", root / "d" / "up")
    key = make_key(tmp_path / "k")
    sockdir = tempfile.mkdtemp(prefix="sfs-", dir="/tmp")
    proc = ServerProc(root, tmp_path / "k", f"ipc://{sockdir}/s.sock").start()
    client = RawClient(proc.bound)
    register(client, key)
    yield proc, client, outside
    client.close()
    proc.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def _errno(reply) -> int:
    assert isinstance(reply, Error), f"expected an error, got {reply!r}"
    return reply.errno


def test_etc_passwd_through_a_symlink_is_never_served(trap):
    _srv, c, _out = trap
    reply = c.call(Read(path="/etc/passwd", offset=0, length=4096))
    assert _errno(reply) in NOT_FOLLOWED
    assert _errno(c.call(Stat(path="/etc/passwd"))) in NOT_FOLLOWED
    assert _errno(c.call(List(path="/etc"))) in NOT_FOLLOWED
    # The link itself is an object of the repository, shown as such.
    assert c.call(Stat(path="/etc")).attrs.kind == "symlink"
    assert c.call(Readlink(path="/etc")).target == "/etc"


@pytest.mark.parametrize("path", ["/out/secret", "/rel/secret", "/d/up/secret", "/secretlink"])
def test_reads_through_outward_links_fail(trap, path):
    _srv, c, _out = trap
    assert _errno(c.call(Read(path=path, offset=0, length=100))) in NOT_FOLLOWED


def test_writes_through_outward_links_create_nothing_outside(trap):
    _srv, c, out = trap
    c.call(UploadChunk(upload_id="u", offset=0, data=b"pwned"))
    replies = [
        c.call(UploadCommit(upload_id="u", path="/out/pwned", size=5)),
        c.call(UploadCommit(upload_id="u", path="/secretlink", size=5)),
        c.call(Mkdir(path="/rel/made")),
        c.call(Symlink(target="x", path="/d/up/sym")),
        c.call(Rename(src="/d", dst="/out/d")),
        c.call(SetAttr(path="/secretlink", mode=0o777)),
        c.call(SetAttr(path="/out/secret", size=0)),
        c.call(SetAttr(path="/secretlink", size=0)),
    ]
    for reply in replies:
        assert isinstance(reply, Error), reply
    assert sorted(os.listdir(out)) == ["secret"]
    assert (out / "secret").read_text() == "SECRET"
    assert os.stat(out / "secret").st_mode & 0o777 == 0o644


@pytest.mark.parametrize("path", ["../etc/passwd", "etc/passwd", "/../etc/passwd",
                                  "/d/../../etc/passwd", "/d/..", "", "/a\x00b", "/\x00"])
def test_bad_paths_are_einval(trap, path):
    _srv, c, _out = trap
    assert _errno(c.call(Read(path=path, offset=0, length=10))) == errno.EINVAL
    assert _errno(c.call(Mkdir(path=path))) == errno.EINVAL


def test_absolute_looking_paths_stay_inside(trap):
    srv, c, _out = trap
    # "//etc/passwd" is "/etc/passwd" of the repository (the symlink), not the host's.
    assert _errno(c.call(Read(path="//etc//passwd", offset=0, length=10))) in NOT_FOLLOWED
    assert _errno(c.call(Read(path="/tmp", offset=0, length=10))) == errno.ENOENT
    assert _errno(c.call(Read(path=str(srv.root / "d"), offset=0, length=1))) == errno.ENOENT


def test_server_files_are_unreachable(trap):
    """Staged uploads live in the state directory, outside the tree: no wire path
    reaches them, and a repository's own ``.synthfs-staging`` is an ordinary name."""
    srv, c, _out = trap
    c.call(UploadChunk(upload_id="hidden", offset=0, data=b"x"))
    assert [n for n in os.listdir(srv.state) if n.startswith("up-")]  # staged, out there
    assert _errno(c.call(List(path="/.synthfs-staging"))) == errno.ENOENT
    assert isinstance(c.call(Mkdir(path="/.synthfs-staging")), StatReply)
    assert ".synthfs-staging" in [e.name for e in c.call(List(path="/")).entries]
    assert os.listdir(srv.root / ".synthfs-staging") == []
