"""The backend suite on the local-directory backend, plus what only it can show."""

from __future__ import annotations

import errno
import os

import pytest

from synthfs.server.backends.base import Backend
from synthfs.server.backends.local import LocalBackend
from synthfs.stamps import made_by
from synthfs.testing.backend_suite import BackendSuite


class TestLocalBackend(BackendSuite):
    holes = True

    @pytest.fixture(autouse=True)
    def _root(self, tmp_path):
        self.root = tmp_path / "repo"
        self.root.mkdir()

    def make_backend(self):
        return LocalBackend(self.root, state=self.root.parent / "state")


class _DenseLocalBackend(LocalBackend):
    """The local backend with the base class's sparse defaults (a store without holes)."""

    data_extents = Backend.data_extents
    upload_commit_sparse = Backend.upload_commit_sparse


class TestBackendDenseDefaults(TestLocalBackend):
    """The defaults an object store keeps: sparse files read back right, stored dense."""

    holes = False

    def make_backend(self):
        return _DenseLocalBackend(self.root, state=self.root.parent / "state")

    def test_the_defaults_store_dense(self):
        be = self.make_backend()
        try:
            a = be.upload_commit_sparse("u", "/s", 3 * 4096, [])
            assert be.read_bytes("/s") == bytes(3 * 4096)
            assert a.blocks * 512 >= 3 * 4096  # the holes were written as zeros
            assert be.data_extents("/s")[2] == [(0, 3 * 4096)]
        finally:
            be.close()


class TestLocalBackendWithoutOpenat2(TestLocalBackend):
    """The O_NOFOLLOW component walk, for kernels without openat2."""

    def make_backend(self):
        return LocalBackend(self.root, state=self.root.parent / "state", use_openat2=False)


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def outside(request, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_text("SECRET")
    os.chmod(out / "secret", 0o644)
    os.symlink(out, root / "link")
    os.symlink(out / "secret", root / "filelink")
    os.symlink("../outside", root / "rel")
    be = LocalBackend(root, state=tmp_path / "state", use_openat2=request.param)
    yield be, out
    be.close()


def test_symlink_out_of_root_is_never_followed(outside):
    be, out = outside
    for path in ("/link/secret", "/rel/secret", "/filelink"):
        with pytest.raises(OSError) as ei:
            be.read(path, 0, 100)
        assert ei.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
    with pytest.raises(OSError):
        be.list("/link")
    with pytest.raises(OSError):
        be.stat("/link/secret")
    for op in (
        lambda: be.mkdir("/link/made"),
        lambda: be.write_bytes("/link/written", b"x"),
        lambda: be.symlink("x", "/rel/sym"),
        lambda: be.rename("/filelink", "/link/moved"),
        lambda: be.remove("/link/secret"),
        lambda: be.setattr("/link/secret", mode=0o777),
        lambda: be.setattr("/filelink", mode=0o777),
        lambda: be.setattr("/filelink", size=0),
        lambda: be.upload_commit("x", "/link/empty", 0),
    ):
        with pytest.raises(OSError):
            op()
    assert sorted(os.listdir(out)) == ["secret"]
    assert (out / "secret").read_text() == "SECRET"
    assert os.stat(out / "secret").st_mode & 0o777 == 0o644
    # The links themselves are objects of the repository.
    assert be.readlink("/link") == str(out)
    assert be.stat("/link").kind == "symlink"


def test_etc_passwd_is_not_served(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    os.symlink("/etc", root / "link")
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        with pytest.raises(OSError) as ei:
            be.read("/link/passwd", 0, 4096)
        assert ei.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
    finally:
        be.close()


def test_special_files_are_not_served(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    os.mkfifo(root / "fifo")
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        assert be.list("/")[1] == []
        with pytest.raises(OSError) as ei:
            be.read("/fifo", 0, 10)  # must not block
        assert ei.value.errno == errno.EACCES
    finally:
        be.close()


def test_staging_is_cleaned_at_start(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state")
    be.upload_chunk("u", 0, b"partial")
    be.close()
    assert [n for n in os.listdir(tmp_path / "state") if n.startswith("up-")]
    LocalBackend(root, state=tmp_path / "state").close()
    assert os.listdir(tmp_path / "state") == ["committed.journal"]


@pytest.mark.parametrize("data", [b"", b"made elsewhere"], ids=["empty", "chunks"])
def test_a_refused_exclusive_commit_leaves_nothing_staged(tmp_path, data):
    """An exclusive create that finds its name taken never commits, and no abort follows
    when its agent takes the EEXIST as its own create's (made by a server that died after
    it): the staged upload goes at once, not after the idle expiry (a load test's second
    server kept an empty one)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "f").write_text("first")
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        if data:
            be.upload_chunk("u", 0, data)
        with pytest.raises(OSError) as exc:
            be.upload_commit("u", "/f", len(data), exclusive=True)
        assert exc.value.errno == errno.EEXIST
        assert [n for n in os.listdir(tmp_path / "state") if n.startswith("up-")] == []
        assert (root / "f").read_text() == "first"
    finally:
        be.close()


def test_upload_installs_a_new_inode(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        a = be.write_bytes("/f", b"one")
        b = be.write_bytes("/f", b"two")
        assert a.ino != b.ino
        assert (root / "f").read_bytes() == b"two"
    finally:
        be.close()


def test_large_truncate_in_place(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state", atomic_truncate_max=4)
    try:
        a = be.write_bytes("/f", b"0123456789")
        b = be.setattr("/f", size=3)
        assert b.ino == a.ino and b.size == 3 and b.version != a.version
        assert be.read_bytes("/f") == b"012"
    finally:
        be.close()


def test_commit_resent_after_restart_is_idempotent(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state")
    be.upload_chunk("u-1", 0, b"content")
    a = be.upload_commit("u-1", "/f", 7)
    be.close()
    # a restart: memory is gone, the journal is not
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        assert be.upload_commit("u-1", "/f", 7) == a
        be.upload_chunk("u-1", 0, b"late resend")  # ignored: already committed
        assert be.read_bytes("/f") == b"content"
        with pytest.raises(OSError) as ei:
            be.upload_commit("u-unknown", "/f", 7)
        assert ei.value.errno == errno.EIO
    finally:
        be.close()


def test_torn_journal_is_tolerated(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state")
    a = be.write_bytes("/f", b"x")
    be.close()
    with open(tmp_path / "state" / "committed.journal", "ab") as f:
        f.write(b"garbage\tnot json\n\xff\xfe\npartial-line-without-newline\t[1,")
    LocalBackend(root, state=tmp_path / "state").close()
    assert (root / "f").read_bytes() == b"x" and a.size == 1


def test_concurrent_resent_commits_install_once(tmp_path):
    import threading

    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state")
    try:
        be.upload_chunk("u", 0, b"x" * 1000)
        results, errors = [], []

        def commit():
            try:
                results.append(be.upload_commit("u", "/f", 1000))
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=commit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(results) == 8 and len(set(results)) == 1
        assert [n for n in os.listdir(tmp_path / "state") if n.startswith("up-")] == []
    finally:
        be.close()


def test_uncommitted_uploads_are_bounded_in_total(tmp_path):
    """A key holder that stages and never commits fills at most the staging bound."""
    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state", staged_max=1 << 20)
    try:
        for i in range(4):
            be.upload_chunk(f"hog-{i}", 0, b"x" * (256 << 10))
        with pytest.raises(OSError) as ei:
            be.upload_chunk("hog-4", 0, b"x")
        assert ei.value.errno == errno.ENOSPC
        be.upload_abort("hog-0")  # leaving staging frees its share
        be.upload_chunk("ok", 0, b"y" * 1000)
        be.upload_commit("ok", "/ok", 1000)
        be.upload_chunk("ok-2", 0, b"z" * (255 << 10))
    finally:
        be.close()


def test_idle_uploads_expire_without_a_new_upload_starting(tmp_path):
    import time

    root = tmp_path / "repo"
    root.mkdir()
    be = LocalBackend(root, state=tmp_path / "state", staged_max=1 << 20,
                      upload_idle_s=0.2)
    try:
        be.upload_chunk("idle", 0, b"x" * (1 << 20))
        staged = set(os.listdir(tmp_path / "state"))
        assert len(staged - {"committed.journal"}) == 1
        time.sleep(0.5)
        # The next upload request (here its own late commit) expires it first.
        with pytest.raises(OSError) as ei:
            be.upload_commit("idle", "/idle", 1 << 20)
        assert ei.value.errno == errno.EIO
        assert not (root / "idle").exists()
        assert set(os.listdir(tmp_path / "state")) <= {"committed.journal"}
        be.upload_chunk("next", 0, b"y" * (1 << 20))  # its share is free again
    finally:
        be.close()


def test_an_exclusive_create_writes_only_what_the_program_wrote(tmp_path):
    """The served directory is the user's: an exclusive create leaves ordinary times
    (no marker in the atime), and the same create through a second server over the
    directory answers EEXIST (never a second winner of a lock file)."""
    import time

    root = tmp_path / "repo"
    root.mkdir()
    a = LocalBackend(root, state=tmp_path / "state-a")
    b = LocalBackend(root, state=tmp_path / "state-b")
    try:
        before = time.time_ns()
        a.upload_commit("u1", "/x", 0, 0o640, exclusive=True)
        st = os.stat(root / "x")
        assert before - 10**9 <= st.st_atime_ns <= time.time_ns() + 10**9
        # the mtime is the creation time, its sub-millisecond digits the upload's stamp
        assert before - 10**6 <= st.st_mtime_ns <= time.time_ns()
        assert made_by("u1", st.st_mtime_ns, time.time_ns())
        assert not made_by("u2", st.st_mtime_ns, time.time_ns())
        with pytest.raises(FileExistsError):
            b.upload_commit("u1", "/x", 0, 0o640, exclusive=True)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("call", ["read", "read_into"])
def test_a_file_rewritten_while_it_is_read_is_estale(tmp_path, monkeypatch, call):
    """A writer that changes the file during the read: those bytes never go out under
    the version from before it (the fetch that asked for it starts again)."""
    root = tmp_path / "root"
    root.mkdir()
    f = root / "f"
    f.write_bytes(b"a" * 100_000)
    be = LocalBackend(root, state=tmp_path / "state")
    version = be.stat("/f").version

    def meanwhile(real):
        def pread(fd, *args):
            with open(f, "r+b") as w:  # another process rewrites it, as the read runs
                w.write(b"b" * 100_001)
            return real(fd, *args)
        return pread

    monkeypatch.setattr(os, "pread", meanwhile(os.pread))
    monkeypatch.setattr(os, "preadv", meanwhile(os.preadv))
    with pytest.raises(OSError) as ei:
        if call == "read":
            be.read("/f", 0, 100_000, version)
        else:
            be.read_into("/f", 0, memoryview(bytearray(100_000)), version)
    assert ei.value.errno == errno.ESTALE
    monkeypatch.undo()
    data, _eof, now = be.read("/f", 0, 200_000)
    assert data == b"b" * 100_001 and now != version
