"""One reusable test suite for every repository backend.

Subclass :class:`BackendSuite` and implement :meth:`make_backend` to return a
backend over an *empty* repository. Every test builds its content through the
backend's own interface, so the suite runs unchanged on any backend. A backend
that holds no hard links sets ``hard_links = False``: its ``link`` must then
answer EPERM (as link(2) on a file system without them). One that cannot
exchange two names sets ``rename_exchange = False`` (RENAME_EXCHANGE is then
EINVAL, as on file systems without it), and one that holds UTF-8 names only
(an object store) sets ``utf8_names_only = True`` (other names are EILSEQ).
A backend that keeps the holes of sparse files sets ``holes = True``: a
sparse upload must then allocate (``blocks``) no more than its data, and
``data_extents`` name exactly the data. Every backend must read a sparse
upload back right (zeros in its holes) and name extents that cover all of a
file's data.
"""

from __future__ import annotations

import errno
import secrets
import time

import pytest

from synthfs.server.backends.base import CHUNK_SIZE, Backend, Kind, RenameFlags
from synthfs.stamps import made_by

__all__ = ["BackendSuite"]


def _errno(excinfo: pytest.ExceptionInfo[OSError]) -> int | None:
    return excinfo.value.errno


class BackendSuite:
    """Behaviour every backend must have (errnos as a Linux file system gives them)."""

    #: whether the backend holds hard links (else ``link`` is EPERM)
    hard_links = True
    #: whether rename can exchange two names (else RENAME_EXCHANGE is EINVAL)
    rename_exchange = True
    #: whether names must be UTF-8 (else any bytes but "/" and NUL)
    utf8_names_only = False
    #: whether the backend keeps holes (else sparse files are stored dense)
    holes = False

    def make_backend(self) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def be(self):
        backend = self.make_backend()
        yield backend
        backend.close()

    # -- stat / list --------------------------------------------------------------

    def test_root_is_a_directory(self, be):
        a = be.stat("/")
        assert a.kind is Kind.DIR
        assert a.version

    def test_new_repository_lists_empty(self, be):
        own, entries = be.list("/")
        assert own.kind is Kind.DIR
        assert entries == []

    def test_stat_missing_is_enoent(self, be):
        with pytest.raises(OSError) as ei:
            be.stat("/nope")
        assert _errno(ei) == errno.ENOENT

    def test_stat_through_a_file_is_enotdir(self, be):
        be.write_bytes("/f", b"x")
        with pytest.raises(OSError) as ei:
            be.stat("/f/g")
        assert _errno(ei) == errno.ENOTDIR

    def test_list_carries_attrs_of_every_entry(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/a", b"hello")
        be.mkdir("/d/sub")
        be.symlink("a", "/d/l")
        own, entries = be.list("/d")
        assert own == be.stat("/d")
        by_name = {e.name: e.attrs for e in entries}
        assert sorted(by_name) == ["a", "l", "sub"]
        assert by_name["a"] == be.stat("/d/a")
        assert by_name["a"].size == 5
        assert by_name["sub"].kind is Kind.DIR
        assert by_name["l"].kind is Kind.SYMLINK

    def test_list_of_a_file_is_enotdir(self, be):
        be.write_bytes("/f", b"")
        with pytest.raises(OSError) as ei:
            be.list("/f")
        assert _errno(ei) == errno.ENOTDIR

    def test_list_hides_staged_uploads(self, be):
        be.upload_chunk("pending", 0, b"partial")
        _own, entries = be.list("/")
        assert entries == []
        be.upload_abort("pending")

    # -- read ---------------------------------------------------------------------

    def test_read_ranges(self, be):
        data = bytes(range(256)) * 10
        be.write_bytes("/f", data)
        assert be.read("/f", 0, 10, "")[0] == data[:10]
        d, eof, _v = be.read("/f", 100, 50)
        assert d == data[100:150] and not eof
        d, eof, _v = be.read("/f", len(data) - 5, 100)
        assert d == data[-5:] and eof
        d, eof, _v = be.read("/f", len(data) + 100, 10)
        assert d == b"" and eof
        assert be.read_bytes("/f") == data

    def test_read_into_fills_the_buffer_as_read_answers(self, be):
        # not a multiple of anything: a full read, a short last one, one past the end
        data = bytes(range(251)) * 4099
        v = be.write_bytes("/f", data).version
        for off, n in ((0, 4096), (1000, 300_000), (len(data) - 7, 4096), (len(data), 10),
                       (len(data) + 50, 10), (5, 0)):
            buf = bytearray(b"\xee" * (n + 3))
            got, eof, version = be.read_into("/f", off, memoryview(buf)[:n], v)
            want, want_eof, _v = be.read("/f", off, n, v)
            assert (bytes(buf[:got]), eof, version) == (want, want_eof, v)
            assert buf[n:] == b"\xee" * 3  # nothing written past the view it was given

    def test_read_into_of_a_changed_object_is_estale(self, be):
        a = be.write_bytes("/f", b"one")
        be.write_bytes("/f", b"two")
        with pytest.raises(OSError) as ei:
            be.read_into("/f", 0, memoryview(bytearray(3)), a.version)
        assert _errno(ei) == errno.ESTALE

    def test_read_of_empty_file(self, be):
        be.write_bytes("/e", b"")
        assert be.read("/e", 0, 10)[:2] == (b"", True)

    def test_read_version_mismatch_is_estale(self, be):
        a = be.write_bytes("/f", b"one")
        _d, _eof, v = be.read("/f", 0, 3, a.version)
        assert v == a.version
        be.write_bytes("/f", b"two")
        with pytest.raises(OSError) as ei:
            be.read("/f", 0, 3, a.version)
        assert _errno(ei) == errno.ESTALE

    def test_read_directory_is_eisdir(self, be):
        be.mkdir("/d")
        with pytest.raises(OSError) as ei:
            be.read("/d", 0, 1)
        assert _errno(ei) == errno.EISDIR

    def test_read_missing_is_enoent(self, be):
        with pytest.raises(OSError) as ei:
            be.read("/nope", 0, 1)
        assert _errno(ei) == errno.ENOENT

    def test_read_never_follows_a_symlink(self, be):
        be.write_bytes("/f", b"data")
        be.symlink("f", "/l")
        with pytest.raises(OSError) as ei:
            be.read("/l", 0, 4)
        assert _errno(ei) == errno.ELOOP

    # -- uploads ------------------------------------------------------------------

    def test_write_creates_with_mode(self, be):
        a = be.write_bytes("/f", b"abc", mode=0o640)
        assert (a.kind, a.size, a.mode) == (Kind.FILE, 3, 0o640)
        assert be.stat("/f") == a

    def test_rewrite_keeps_mode_and_changes_version(self, be):
        a1 = be.write_bytes("/f", b"abc", mode=0o600)
        a2 = be.write_bytes("/f", b"abc", mode=0o777)
        assert a2.mode == 0o600
        assert a2.version != a1.version
        a3 = be.write_bytes("/f", b"abcd")
        assert len({a1.version, a2.version, a3.version}) == 3

    def test_multi_chunk_upload_out_of_order_and_resent(self, be):
        data = secrets.token_bytes(CHUNK_SIZE * 2 + 123)
        chunks = [(o, data[o : o + CHUNK_SIZE]) for o in range(0, len(data), CHUNK_SIZE)]
        for off, chunk in reversed(chunks):
            be.upload_chunk("u1", off, chunk)
        be.upload_chunk("u1", *chunks[0])  # a resend is harmless
        a = be.upload_commit("u1", "/big", len(data))
        assert a.size == len(data)
        assert be.read_bytes("/big") == data

    def test_commit_is_idempotent(self, be):
        be.upload_chunk("u", 0, b"hello")
        a = be.upload_commit("u", "/f", 5)
        assert be.upload_commit("u", "/f", 5) == a
        be.upload_chunk("u", 0, b"hello")  # a late resent chunk changes nothing
        assert be.stat("/f") == a

    def test_commit_with_wrong_size_is_eio_and_installs_nothing(self, be):
        be.write_bytes("/f", b"old")
        be.upload_chunk("u", 0, b"new content")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/f", 3)
        assert _errno(ei) == errno.EIO
        assert be.read_bytes("/f") == b"old"

    def test_commit_with_a_hole_is_eio(self, be):
        be.upload_chunk("u", 5, b"tail")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/f", 9)
        assert _errno(ei) == errno.EIO
        with pytest.raises(OSError):
            be.stat("/f")

    def test_commit_unknown_upload(self, be):
        with pytest.raises(OSError) as ei:
            be.upload_commit("never-sent", "/f", 10)
        assert _errno(ei) == errno.EIO
        assert be.upload_commit("empty", "/e", 0).size == 0

    def test_abort_discards(self, be):
        be.upload_chunk("u", 0, b"abc")
        be.upload_abort("u")
        be.upload_abort("u")  # unknown: no error
        with pytest.raises(OSError):
            be.upload_commit("u", "/f", 3)

    def test_exclusive_commit_never_replaces(self, be):
        be.write_bytes("/f", b"theirs")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/f", 0, exclusive=True)
        assert _errno(ei) == errno.EEXIST
        assert be.read_bytes("/f") == b"theirs"
        be.mkdir("/d")
        with pytest.raises(OSError) as ei:
            be.upload_commit("v", "/d", 0, exclusive=True)
        assert _errno(ei) == errno.EEXIST
        a = be.upload_commit("w", "/new", 0, mode=0o640, exclusive=True)
        assert (a.size, a.mode) == (0, 0o640) and be.read_bytes("/new") == b""
        # its mtime carries the upload's stamp (how a resent create knows its file)
        st = be.stat("/new")
        assert made_by("w", st.mtime_ns, time.time_ns()) and st.mtime_ns <= time.time_ns()
        assert not made_by("v", st.mtime_ns, time.time_ns())

    def test_commit_onto_directory_is_eisdir(self, be):
        be.mkdir("/d")
        be.upload_chunk("u", 0, b"x")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/d", 1)
        assert _errno(ei) == errno.EISDIR

    def test_commit_in_missing_directory_is_enoent(self, be):
        be.upload_chunk("u", 0, b"x")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/no/f", 1)
        assert _errno(ei) == errno.ENOENT

    # -- mkdir / remove -----------------------------------------------------------

    def test_mkdir(self, be):
        a = be.mkdir("/d", 0o750)
        assert (a.kind, a.mode) == (Kind.DIR, 0o750)
        with pytest.raises(OSError) as ei:
            be.mkdir("/d")
        assert _errno(ei) == errno.EEXIST
        with pytest.raises(OSError) as ei:
            be.mkdir("/x/y")
        assert _errno(ei) == errno.ENOENT
        with pytest.raises(OSError) as ei:
            be.mkdir("/")
        assert _errno(ei) == errno.EEXIST

    def test_directory_attributes_last(self, be):
        """A directory's mode and times are the repository's, not the answer of one call."""
        be.mkdir("/d", 0o750)
        be.write_bytes("/d/f", b"x")
        be.mkdir("/d/e", 0o701)
        a = be.setattr("/d", mtime_ns=1_600_000_000_000_000_000)
        assert (a.mode, a.mtime_ns) == (0o750, 1_600_000_000_000_000_000)
        assert be.stat("/d") == a == be.list("/d")[0]
        assert {e.name: e.attrs.mode for e in be.list("/d")[1]} == {"e": 0o701, "f": 0o644}
        assert {e.name: e.attrs for e in be.list("/")[1]} == {"d": a}
        be.setattr("/", mode=0o711, mtime_ns=1_500_000_000_000_000_000)
        root = be.stat("/")
        assert (root.mode, root.mtime_ns) == (0o711, 1_500_000_000_000_000_000)

    def test_remove_errnos(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/f", b"x")
        with pytest.raises(OSError) as ei:
            be.remove("/d")
        assert _errno(ei) == errno.EISDIR
        with pytest.raises(OSError) as ei:
            be.remove("/d", directory=True)
        assert _errno(ei) == errno.ENOTEMPTY
        with pytest.raises(OSError) as ei:
            be.remove("/d/f", directory=True)
        assert _errno(ei) == errno.ENOTDIR
        with pytest.raises(OSError) as ei:
            be.remove("/nope")
        assert _errno(ei) == errno.ENOENT
        with pytest.raises(OSError) as ei:
            be.remove("/")
        assert _errno(ei) == errno.EBUSY
        be.remove("/d/f")
        be.remove("/d", directory=True)
        assert be.list("/")[1] == []

    def test_remove_symlink_removes_the_link_only(self, be):
        be.write_bytes("/f", b"x")
        be.symlink("f", "/l")
        be.remove("/l")
        assert be.read_bytes("/f") == b"x"

    # -- rename -------------------------------------------------------------------

    def test_rename_replaces(self, be):
        be.write_bytes("/a", b"A")
        be.write_bytes("/b", b"B")
        be.rename("/a", "/b")
        assert be.read_bytes("/b") == b"A"
        with pytest.raises(OSError) as ei:
            be.stat("/a")
        assert _errno(ei) == errno.ENOENT

    def test_rename_noreplace(self, be):
        be.write_bytes("/a", b"A")
        be.write_bytes("/b", b"B")
        with pytest.raises(OSError) as ei:
            be.rename("/a", "/b", RenameFlags.NOREPLACE)
        assert _errno(ei) == errno.EEXIST
        be.rename("/a", "/c", RenameFlags.NOREPLACE)
        assert be.read_bytes("/c") == b"A"

    def test_rename_exchange(self, be):
        be.write_bytes("/a", b"A")
        be.mkdir("/b")
        if not self.rename_exchange:
            with pytest.raises(OSError) as ei:
                be.rename("/a", "/b", RenameFlags.EXCHANGE)
            assert _errno(ei) == errno.EINVAL
            assert be.read_bytes("/a") == b"A" and be.stat("/b").kind is Kind.DIR
            return
        be.rename("/a", "/b", RenameFlags.EXCHANGE)
        assert be.stat("/a").kind is Kind.DIR
        assert be.read_bytes("/b") == b"A"
        with pytest.raises(OSError) as ei:
            be.rename("/a", "/missing", RenameFlags.EXCHANGE)
        assert _errno(ei) == errno.ENOENT

    def test_rename_errnos(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/f", b"x")
        be.write_bytes("/f", b"y")
        with pytest.raises(OSError) as ei:
            be.rename("/f", "/d")
        assert _errno(ei) == errno.EISDIR
        with pytest.raises(OSError) as ei:
            be.rename("/d", "/f")
        assert _errno(ei) == errno.ENOTDIR
        with pytest.raises(OSError) as ei:
            be.rename("/d", "/d/sub")
        assert _errno(ei) == errno.EINVAL
        with pytest.raises(OSError) as ei:
            be.rename("/nope", "/x")
        assert _errno(ei) == errno.ENOENT
        with pytest.raises(OSError) as ei:
            be.rename("/", "/x")
        assert _errno(ei) == errno.EBUSY
        with pytest.raises(OSError) as ei:
            be.rename("/f", "/f", RenameFlags.NOREPLACE | RenameFlags.EXCHANGE)
        assert _errno(ei) == errno.EINVAL

    def test_rename_directory_moves_content(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/f", b"x")
        be.rename("/d", "/e")
        assert be.read_bytes("/e/f") == b"x"
        assert [e.name for e in be.list("/")[1]] == ["e"]

    # -- symlinks -----------------------------------------------------------------

    def test_symlink_and_readlink_verbatim(self, be):
        for i, target in enumerate(["plain", "../../../etc/passwd", "/abs/path", "a//b/./c/"]):
            a = be.symlink(target, f"/l{i}")
            assert a.kind is Kind.SYMLINK
            assert be.readlink(f"/l{i}") == target
            assert be.stat(f"/l{i}").kind is Kind.SYMLINK

    def test_symlink_errnos(self, be):
        be.write_bytes("/f", b"")
        with pytest.raises(OSError) as ei:
            be.symlink("x", "/f")
        assert _errno(ei) == errno.EEXIST
        with pytest.raises(OSError) as ei:
            be.readlink("/f")
        assert _errno(ei) == errno.EINVAL
        with pytest.raises(OSError) as ei:
            be.readlink("/nope")
        assert _errno(ei) == errno.ENOENT

    def test_paths_through_a_symlink_fail(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/f", b"x")
        be.symlink("d", "/l")
        for op in (lambda: be.stat("/l/f"), lambda: be.read("/l/f", 0, 1),
                   lambda: be.list("/l"), lambda: be.mkdir("/l/new"),
                   lambda: be.write_bytes("/l/g", b"y")):
            with pytest.raises(OSError) as ei:
                op()
            assert _errno(ei) in (errno.ELOOP, errno.ENOTDIR)
        assert sorted(e.name for e in be.list("/d")[1]) == ["f"]

    def test_commit_onto_symlink_does_not_write_through(self, be):
        be.write_bytes("/f", b"orig")
        be.symlink("f", "/l")
        be.upload_chunk("u", 0, b"new")
        with pytest.raises(OSError) as ei:
            be.upload_commit("u", "/l", 3)
        assert _errno(ei) == errno.ELOOP
        assert be.read_bytes("/f") == b"orig"

    # -- setattr ------------------------------------------------------------------

    def test_chmod(self, be):
        be.write_bytes("/f", b"x", mode=0o644)
        a = be.setattr("/f", mode=0o600)
        assert a.mode == 0o600 == be.stat("/f").mode

    def test_chmod_symlink_is_eopnotsupp(self, be):
        be.write_bytes("/f", b"x", mode=0o644)
        be.symlink("f", "/l")
        with pytest.raises(OSError) as ei:
            be.setattr("/l", mode=0o600)
        assert _errno(ei) == errno.EOPNOTSUPP
        assert be.stat("/f").mode == 0o644

    def test_utimes(self, be):
        be.write_bytes("/f", b"x")
        a = be.setattr("/f", atime_ns=1_000_000_000, mtime_ns=2_000_000_123)
        assert a.mtime_ns == 2_000_000_123
        b = be.setattr("/f", atime_ns=5_000_000_000)  # mtime untouched
        assert b.mtime_ns == 2_000_000_123

    def test_truncate_changes_size_and_version(self, be):
        a = be.write_bytes("/f", b"0123456789", mode=0o640)
        b = be.setattr("/f", size=4)
        assert (b.size, b.mode) == (4, 0o640)
        assert b.version != a.version
        assert be.read_bytes("/f") == b"0123"
        c = be.setattr("/f", size=6)
        assert be.read_bytes("/f") == b"0123\0\0"
        assert c.version != b.version

    def test_truncate_directory_is_eisdir(self, be):
        be.mkdir("/d")
        with pytest.raises(OSError) as ei:
            be.setattr("/d", size=0)
        assert _errno(ei) == errno.EISDIR

    def test_setattr_missing_is_enoent(self, be):
        with pytest.raises(OSError) as ei:
            be.setattr("/nope", mode=0o600)
        assert _errno(ei) == errno.ENOENT

    # -- hard links ---------------------------------------------------------------

    def _links(self):
        if not self.hard_links:
            pytest.skip("this backend holds no hard links (link is EPERM: see the test below)")

    def test_link_without_hard_links_is_eperm(self, be):
        if self.hard_links:
            pytest.skip("this backend holds hard links")
        be.write_bytes("/f", b"x")
        with pytest.raises(OSError) as ei:
            be.link("/f", "/g")
        assert _errno(ei) == errno.EPERM
        assert [e.name for e in be.list("/")[1]] == ["f"]

    def test_link_is_one_file_under_two_names(self, be):
        self._links()
        be.mkdir("/d")
        a = be.write_bytes("/f", b"first")
        b = be.link("/f", "/d/g")
        assert (b.kind, b.size, b.nlink, b.ino) == (Kind.FILE, 5, 2, a.ino)
        assert be.stat("/f").nlink == be.stat("/d/g").nlink == 2
        assert {e.name: e.attrs.nlink for e in be.list("/d")[1]} == {"g": 2}
        # A rewrite or a truncation through one name is seen through the other: one
        # file (an install by rename would split the names).
        w = be.write_bytes("/d/g", b"second, longer")
        assert be.read_bytes("/f") == b"second, longer"
        assert (be.stat("/f").ino, be.stat("/f").nlink, be.stat("/f").version) == (
            w.ino, 2, w.version)
        be.setattr("/f", size=6)
        assert be.read_bytes("/d/g") == b"second"
        be.setattr("/d/g", mode=0o600)
        assert be.stat("/f").mode == 0o600
        be.remove("/f")
        assert be.stat("/d/g").nlink == 1
        assert be.read_bytes("/d/g") == b"second"

    def test_link_errnos(self, be):
        self._links()
        be.write_bytes("/f", b"x")
        be.write_bytes("/g", b"y")
        be.mkdir("/d")
        for src, dst, want in [
            ("/nope", "/n", errno.ENOENT),  # no source
            ("/f", "/g", errno.EEXIST),  # an existing name, whatever it is
            ("/f", "/d", errno.EEXIST),
            ("/d", "/dd", errno.EPERM),  # no hard link to a directory
            ("/f", "/nope/n", errno.ENOENT),  # no parent
            ("/f", "/g/n", errno.ENOTDIR),
        ]:
            with pytest.raises(OSError) as ei:
                be.link(src, dst)
            assert _errno(ei) == want, (src, dst)
        assert be.read_bytes("/g") == b"y"

    def test_link_to_a_symlink_links_the_symlink(self, be):
        self._links()
        be.write_bytes("/f", b"x")
        be.symlink("f", "/l")
        a = be.link("/l", "/l2")
        assert (a.kind, a.nlink) == (Kind.SYMLINK, 2)
        assert be.readlink("/l2") == "f"

    # -- names and allocation -----------------------------------------------------

    def test_names_that_are_not_utf8_are_eilseq(self, be):
        if not self.utf8_names_only:
            pytest.skip("this backend holds any name")
        be.mkdir("/d")
        for op in (lambda: be.mkdir("/d\udc80"), lambda: be.write_bytes("/raw-\udcff", b"x"),
                   lambda: be.symlink("t", "/l-\udcfc"), lambda: be.stat("/d/\udce9"),
                   lambda: be.rename("/d", "/e\udc80")):
            with pytest.raises(OSError) as ei:
                op()
            assert _errno(ei) == errno.EILSEQ
        assert [e.name for e in be.list("/")[1]] == ["d"]
        # a symlink's target is its content, not a name: any bytes
        be.symlink("t-\udcfb", "/l")
        assert be.readlink("/l") == "t-\udcfb"

    def test_names_need_not_be_utf8(self, be):
        if self.utf8_names_only:
            pytest.skip("this backend holds UTF-8 names only (see the test above)")
        raw = "/raw-\udcff\udcfe"  # b"/raw-\xff\xfe", as os.fsdecode gives it
        be.mkdir("/d\udc80")
        be.write_bytes(raw, b"bytes")
        be.write_bytes("/d\udc80/\udce9", b"inner")
        names = sorted(e.name for e in be.list("/")[1])
        assert names == ["d\udc80", "raw-\udcff\udcfe"]
        assert [e.name for e in be.list("/d\udc80")[1]] == ["\udce9"]
        assert be.read_bytes(raw) == b"bytes"
        be.rename(raw, "/d\udc80/moved-\udcfa")
        assert be.read_bytes("/d\udc80/moved-\udcfa") == b"bytes"
        be.symlink("t-\udcfb", "/l-\udcfc")
        assert be.readlink("/l-\udcfc") == "t-\udcfb"
        be.remove("/d\udc80/\udce9")
        assert [e.name for e in be.list("/d\udc80")[1]] == ["moved-\udcfa"]

    def test_blocks_count_the_allocation(self, be):
        a = be.write_bytes("/f", secrets.token_bytes(10_000))
        assert a.blocks * 512 >= 10_000
        assert be.stat("/f").blocks == a.blocks
        assert {e.name: e.attrs.blocks for e in be.list("/")[1]} == {"f": a.blocks}
        assert be.write_bytes("/e", b"").blocks == 0

    # -- sparse files -------------------------------------------------------------

    def _sparse_upload(self, be, path, size, writes):
        uid = secrets.token_hex(8)
        for off, data in writes:
            be.upload_chunk(uid, off, data)
        return be.upload_commit_sparse(uid, path, size, [(o, len(d)) for o, d in writes])

    def test_a_sparse_upload_reads_back_with_zeros_in_its_holes(self, be):
        size = CHUNK_SIZE * 2 + 100
        a = self._sparse_upload(be, "/s", size, [(10, b"head"), (CHUNK_SIZE + 7, b"mid")])
        assert a.size == size and be.stat("/s").size == size
        want = bytearray(size)
        want[10:14] = b"head"
        want[CHUNK_SIZE + 7 : CHUNK_SIZE + 10] = b"mid"
        assert be.read_bytes("/s") == bytes(want)
        assert self._sparse_upload(be, "/h", 1000, []).size == 1000  # holes only
        assert be.read_bytes("/h") == bytes(1000)

    def test_data_extents_cover_every_byte_of_data(self, be):
        size = CHUNK_SIZE * 3
        writes = [(CHUNK_SIZE + 4096, b"x" * 4096), (size - 4096, b"y" * 4096)]
        a = self._sparse_upload(be, "/s", size, writes)
        got_size, version, extents = be.data_extents("/s", a.version)
        assert (got_size, version) == (size, a.version)
        for off, data in writes:
            assert any(o <= off and off + len(data) <= o + n for o, n in extents), extents
        assert extents == sorted(extents) and all(n > 0 for _, n in extents)
        with pytest.raises(OSError) as ei:
            be.data_extents("/s", "not-the-version")
        assert _errno(ei) == errno.ESTALE
        be.mkdir("/d")
        with pytest.raises(OSError) as ei:
            be.data_extents("/d")
        assert _errno(ei) == errno.EISDIR
        be.write_bytes("/e", b"")
        assert be.data_extents("/e")[2] == []

    def test_a_sparse_commit_missing_a_chunk_is_eio(self, be):
        be.upload_chunk("u", 0, b"abc")
        with pytest.raises(OSError) as ei:
            be.upload_commit_sparse("u", "/s", CHUNK_SIZE * 2, [(0, 3), (CHUNK_SIZE, 3)])
        assert _errno(ei) == errno.EIO
        with pytest.raises(OSError):
            be.stat("/s")

    def test_a_sparse_upload_allocates_its_data_only(self, be):
        if not self.holes:
            pytest.skip("this backend stores sparse files dense")
        size = 64 * 1024 * 1024
        a = self._sparse_upload(be, "/s", size, [(32 * 1024 * 1024, b"d" * 4096)])
        assert a.blocks * 512 <= 1024 * 1024, a
        assert be.stat("/s").blocks == a.blocks
        assert be.data_extents("/s")[2] == [(32 * 1024 * 1024, 4096)]
        assert self._sparse_upload(be, "/h", size, []).blocks == 0

    # -- paths --------------------------------------------------------------------

    @pytest.mark.parametrize("bad", ["", "relative", "../x", "/../x", "/a/../../x", "/a\x00b"])
    def test_bad_wire_paths_are_einval(self, be, bad):
        with pytest.raises(OSError) as ei:
            be.stat(bad)
        assert _errno(ei) == errno.EINVAL

    def test_path_normalisation(self, be):
        be.mkdir("/d")
        be.write_bytes("/d/f", b"x")
        assert be.stat("//d/./f/") == be.stat("/d/f")

    def test_no_name_is_reserved(self, be):
        """A backend keeps its own state outside the repository: every name is the user's."""
        be.write_bytes("/.synthfs-staging", b"mine")
        be.mkdir("/.synthfs-x")
        assert be.read_bytes("/.synthfs-staging") == b"mine"
        assert [e.name for e in be.list("/")[1]] == [".synthfs-staging", ".synthfs-x"]
