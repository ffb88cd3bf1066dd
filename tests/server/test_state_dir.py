"""The served directory is the user's: the server's state lives outside it.

* a run that writes, creates, renames and deletes leaves the served tree
  exactly as the same program leaves a copy natively (``diff -r``: no
  difference, no extra entry);
* a root on a read-only mount is served for reading (writes are EROFS);
* a state directory the staging cannot use (inside the root, on another
  mount) is refused at start-up with a message naming both paths and
  ``--state``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helpers
import pytest
from server_harness import REPO, RawClient, ServerProc, make_key, register

from synthfs.protocol.messages import Error, List, Mkdir, Read, UploadChunk

WRITER = r"""
set -e
cd "$1"
echo new > created.txt
mkdir -p made/deeper
echo inner > made/deeper/f
echo more >> existing.txt
mv existing.txt renamed.txt
mv sub moved_sub
rm gone.txt
rmdir empty
: > made/emptyfile
truncate -s 3 keep.txt
"""


def _tree(base: Path) -> None:
    base.mkdir()
    (base / "existing.txt").write_text("old\n")
    (base / "gone.txt").write_text("bye\n")
    (base / "keep.txt").write_text("0123456789\n")
    (base / "empty").mkdir()
    (base / "sub").mkdir()
    (base / "sub" / "f").write_text("f\n")


def test_served_tree_equals_the_native_tree(tmp_path: Path, synthfs) -> None:
    native, served = tmp_path / "native", tmp_path / "served"
    _tree(native)
    _tree(served)
    nat = helpers.run_native(["sh", "-c", WRITER, "sh", str(native)], cwd=tmp_path)
    assert nat.status == 0, nat.show()
    got = synthfs.run(served, ["sh", "-c", WRITER, "sh", helpers.MOUNT], cwd=tmp_path)
    assert got.status == 0, got.show()
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(native), str(served)],
                          capture_output=True, text=True)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr
    assert sorted(os.listdir(served)) == sorted(os.listdir(native))


def test_repository_may_hold_the_old_staging_name(tmp_path: Path, synthfs) -> None:
    """``.synthfs-staging`` is an ordinary name: listed, read and written through /data."""
    repo = tmp_path / "repo"
    (repo / ".synthfs-staging").mkdir(parents=True)
    (repo / ".synthfs-staging" / "mine").write_text("user data\n")
    prog = (f"ls -A {helpers.MOUNT} && cat {helpers.MOUNT}/.synthfs-staging/mine && "
            f"echo more >> {helpers.MOUNT}/.synthfs-staging/mine")
    got = synthfs.run(repo, ["sh", "-c", prog], cwd=tmp_path)
    assert got.status == 0, got.show()
    assert got.stdout == ".synthfs-staging\nuser data\n"
    assert (repo / ".synthfs-staging" / "mine").read_text() == "user data\nmore\n"
    assert os.listdir(repo / ".synthfs-staging") == ["mine"]


# -- start-up checks ---------------------------------------------------------------------


def test_state_inside_the_root_is_refused(tmp_path: Path) -> None:
    from synthfs.server.backends.local import LocalBackend, StateDirError

    root = tmp_path / "repo"
    root.mkdir()
    with pytest.raises(StateDirError) as ei:
        LocalBackend(root, state=root / "state")
    assert str(root) in str(ei.value) and "--state" in str(ei.value)
    assert os.listdir(root) == []


def _tmpfs_dir() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat("/tmp").st_dev:
        pytest.skip("no second file system (tmpfs /dev/shm) to put the state on")
    return shm


def test_state_on_another_file_system_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    other = _tmpfs_dir() / f"synthfs-test-{os.getpid()}"
    key = tmp_path / "key"
    make_key(key)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "synthfs.server", "--root", str(root), "--listen",
             f"ipc://{tmp_path}/s.sock", "--bootstrap-key", str(key), "--state", str(other)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(root) in lines[0] and str(other) in lines[0] and "--state" in lines[0]
    assert os.listdir(root) == []
    assert not other.exists()  # not left behind on the wrong file system


def _can_unshare() -> bool:
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


def test_read_only_root_is_served_for_reading(tmp_path: Path) -> None:
    """A root on a read-only bind mount (in a private mount namespace): read, not written."""
    if not _can_unshare():
        pytest.skip("no private mount namespace here (unshare -m)")
    root = tmp_path / "repo"
    root.mkdir()
    (root / "f").write_text("hello\n")
    key_path = tmp_path / "key"
    key = make_key(key_path)
    wrapper = (f'mount --bind "{root}" "{root}" && mount -o remount,ro,bind "{root}" '
               '&& exec "$@"')
    sockdir = tempfile.mkdtemp(prefix="sfs-", dir="/tmp")  # ipc paths must stay short
    srv = ServerProc(root, key_path, f"ipc://{sockdir}/s.sock")
    plain = [sys.executable, "-m", "synthfs.server", "--root", str(root), "--listen",
             srv.endpoint, "--bootstrap-key", str(key_path)]  # the default state directory
    srv.argv = lambda: ["unshare", "-m", "--propagation", "private", "sh", "-c", wrapper,
                        "sh", *plain]  # type: ignore[method-assign]
    srv.start()
    try:
        with RawClient(srv.bound) as c:
            register(c, key)
            got = c.call(Read(path="/f", offset=0, length=100))
            assert not isinstance(got, Error), got
            assert got.data == b"hello\n"
            assert [e.name for e in c.call(List(path="/")).entries] == ["f"]
            for req in (Mkdir(path="/d"), UploadChunk(upload_id="u", offset=0, data=b"x")):
                reply = c.call(req)
                assert isinstance(reply, Error) and reply.errno == errno.EROFS, reply
        assert "read-only" in srv.output()
    finally:
        srv.kill()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert os.listdir(root) == ["f"]
