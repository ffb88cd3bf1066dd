"""The backend suite on the S3 backend against a real SeaweedFS, plus what only it shows."""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import sys
import textwrap

import pytest

from synthfs.server.backends.base import Kind, RenameFlags
from synthfs.server.backends.s3 import DIR_OBJECT, MULTIPART_MIN, S3Backend
from synthfs.testing.backend_suite import BackendSuite

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def bucket(seaweed):
    return seaweed.new_bucket("suite")


class TestS3Backend(BackendSuite):
    hard_links = False
    rename_exchange = False
    utf8_names_only = True

    @pytest.fixture(autouse=True)
    def _store(self, s3_env, bucket, tmp_path):
        self.store, self.bucket, self.state = s3_env, bucket, tmp_path / "state"

    def make_backend(self):
        return S3Backend(self.store.endpoint, self.bucket, f"t{next(_prefixes)}",
                         state=self.state)


@pytest.fixture
def be(s3_env, bucket, tmp_path):
    backend = S3Backend(s3_env.endpoint, bucket, f"x{next(_prefixes)}", state=tmp_path / "st")
    yield backend
    backend.close()


def test_the_layout_in_the_bucket(be, s3_env, bucket):
    """Files are objects, a directory its DIR_OBJECT, attributes metadata."""
    be.mkdir("/d", 0o750)
    be.write_bytes("/d/f", b"hello", mode=0o600)
    be.symlink("f", "/d/l")
    s3 = s3_env.client()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=be.prefix)["Contents"])
    assert keys == [be.prefix + k for k in (f"d/{DIR_OBJECT}", "d/f", "d/l")]
    head = s3.head_object(Bucket=bucket, Key=f"{be.prefix}d/{DIR_OBJECT}")
    assert head["Metadata"]["synthfs-mode"] == "750"
    head = s3.head_object(Bucket=bucket, Key=be.prefix + "d/f")
    assert head["Metadata"]["synthfs-mode"] == "600"
    assert s3.get_object(Bucket=bucket, Key=be.prefix + "d/l")["Body"].read() == b"f"


def test_objects_written_by_another_client_are_served(be, s3_env, bucket):
    s3 = s3_env.client()
    s3.put_object(Bucket=bucket, Key=be.prefix + "plain/data.csv", Body=b"a,b\n")
    assert be.stat("/plain").kind is Kind.DIR  # a prefix without a marker
    a = be.stat("/plain/data.csv")
    assert (a.kind, a.size, a.mode) == (Kind.FILE, 4, 0o644) and a.mtime_ns > 0
    assert [e.name for e in be.list("/plain")[1]] == ["data.csv"]
    assert be.read_bytes("/plain/data.csv") == b"a,b\n"


def test_two_servers_of_one_bucket_see_each_others_changes_at_once(be, s3_env, bucket,
                                                                   tmp_path):
    """Two backends (two servers) over one prefix: what one changes, the other's stat,
    read, remove and rename see at once, though it looked the object up a moment before
    (its memory of lookups serves ancestors, never the object a request names: the
    agents were told of the change and revalidate through whichever server)."""
    other = S3Backend(s3_env.endpoint, bucket, be.prefix, state=tmp_path / "other")
    try:
        be.write_bytes("/f", b"v1")
        be.mkdir("/d")
        v1 = other.stat("/f").version
        assert other.stat("/d").kind is Kind.DIR
        be.write_bytes("/f", b"version 2")
        a = other.stat("/f")
        assert (a.size, a.version != v1) == (9, True)
        data, _eof, version = other.read("/f", 0, 100, a.version)
        assert (data, version) == (b"version 2", a.version)
        be.remove("/f")
        with pytest.raises(OSError) as ei:
            other.stat("/f")
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(OSError) as ei:
            other.remove("/f")  # not a silent success of a delete of nothing
        assert ei.value.errno == errno.ENOENT
        be.remove("/d", directory=True)
        with pytest.raises(OSError) as ei:
            other.rename("/d", "/e")
        assert ei.value.errno == errno.ENOENT
        other.mkdir("/d")  # the other server's memory does not make it EEXIST
    finally:
        other.close()


def test_large_file_is_multipart_and_read_by_ranges(be):
    data = os.urandom(MULTIPART_MIN + 3 * 1024 * 1024 + 17)
    a = be.write_bytes("/big", data)
    assert a.size == len(data) == be.stat("/big").size
    assert be.read_bytes("/big") == data
    d, eof, _v = be.read("/big", 5 * 1024 * 1024, 4 * 1024 * 1024)  # four parallel ranges
    assert d == data[5 * 1024 * 1024 : 9 * 1024 * 1024] and not eof


def test_an_object_fetched_by_ranges_equals_the_object(be, s3_env, bucket):
    """Pinned reads of every chunk, several at once and out of order, as a fetch makes
    them: answered from read-ahead blocks (fewer GETs than chunks), the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from synthfs.server.backends.base import CHUNK_SIZE
    from synthfs.server.backends.s3 import READ_AHEAD

    data = os.urandom(2 * READ_AHEAD + CHUNK_SIZE + 12345)  # not a multiple of anything
    v = be.write_bytes("/big", data).version
    gets = []
    real = be._get

    def counted(*args, **kw):
        gets.append(args[2])
        return real(*args, **kw)

    be._get = counted
    offsets = list(range(0, len(data), CHUNK_SIZE))
    order = offsets[1::2] + offsets[::2]

    def one(off):
        buf = bytearray(CHUNK_SIZE)
        n, eof, version = be.read_into("/big", off, memoryview(buf), v)
        return off, bytes(buf[:n]), eof, version

    with ThreadPoolExecutor(6) as pool:
        got = sorted(pool.map(one, order))
    assert b"".join(d for _off, d, _eof, _v in got) == data
    assert [eof for *_x, eof, _v in got] == [False] * (len(offsets) - 1) + [True]
    assert {version for *_x, version in got} == {v}
    assert sorted(gets) == [0, READ_AHEAD, 2 * READ_AHEAD]  # one GET per block
    # past the end, and a version that is gone
    assert be.read_into("/big", len(data) + 10, memoryview(bytearray(10)), v)[:2] == (0, True)
    new = be.write_bytes("/big", b"x" * len(data)).version
    with pytest.raises(OSError) as ei:
        be.read_into("/big", READ_AHEAD + CHUNK_SIZE, memoryview(bytearray(CHUNK_SIZE)), v)
    assert ei.value.errno == errno.ESTALE
    n, _eof, version = be.read_into("/big", 0, memoryview(bytearray(8)), new)
    assert (n, version) == (8, new)


def test_names_s3_cannot_hold(be):
    """A key holds 1,024 bytes: a longer path (each name < 256) is ENAMETOOLONG."""
    be.mkdir("/a")
    deep = "/a/" + "/".join(["x" * 250] * 5)
    for op in (lambda: be.stat(deep), lambda: be.write_bytes(deep, b""),
               lambda: be.mkdir(deep)):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.ENAMETOOLONG


def test_the_directory_object_name_is_refused(be):
    for op in (lambda: be.mkdir("/" + DIR_OBJECT), lambda: be.write_bytes("/" + DIR_OBJECT, b"")):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.EINVAL
    assert be.list("/")[1] == []


def test_credentials_never_in_repr(be, s3_env):
    secret = s3_env.env()["AWS_SECRET_ACCESS_KEY"]
    assert secret not in repr(be) and s3_env.access_key not in repr(be)


_CRASH = textwrap.dedent("""
    import os, sys
    from synthfs.server.backends.s3 import S3Backend
    endpoint, bucket, prefix, state, src, dst = sys.argv[1:]
    be = S3Backend(endpoint, bucket, prefix, state=state)
    be.after_copy = lambda: os._exit(9)   # killed between the copies and the deletes
    be.rename(src, dst)
    os._exit(0)
""")


@pytest.mark.parametrize("what", ["file", "dir"])
def test_a_rename_cut_between_copy_and_delete_is_finished_at_restart(
        s3_env, bucket, tmp_path, what):
    prefix, state = f"crash{next(_prefixes)}", tmp_path / "state"
    be = S3Backend(s3_env.endpoint, bucket, prefix, state=state)
    if what == "file":
        be.write_bytes("/a", b"moved")
        be.write_bytes("/b", b"replaced")
    else:
        be.mkdir("/a")
        for i in range(5):
            be.write_bytes(f"/a/{i}", b"x" * i)
    be.close()
    proc = subprocess.run([sys.executable, "-c", _CRASH, s3_env.endpoint, bucket, prefix,
                           str(state), "/a", "/b"], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    # What the crash left: both names (the copy done, the source not deleted).
    be = S3Backend.__new__(S3Backend)  # look without recovering: a plain client
    s3 = s3_env.client()
    keys = sorted(o["Key"][len(prefix) + 1:] for o in
                  s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"])
    if what == "file":
        assert keys == ["a", "b"]
        assert s3.get_object(Bucket=bucket, Key=prefix + "/b")["Body"].read() == b"moved"
    else:
        assert keys == sorted([f"{d}/{n}" for d in "ab" for n in [*"01234", DIR_OBJECT]])
    # The restart finishes it.
    be = S3Backend(s3_env.endpoint, bucket, prefix, state=state)
    try:
        names = [e.name for e in be.list("/")[1]]
        assert names == ["b"]
        if what == "file":
            assert be.read_bytes("/b") == b"moved"
        else:
            assert [e.name for e in be.list("/b")[1]] == [str(i) for i in range(5)]
            assert be.read_bytes("/b/3") == b"xxx"
    finally:
        be.close()
    # ... and only once: the journal is empty after it.
    assert (state / "rename.journal").read_bytes() == b""


def test_a_noreplace_rename_the_store_refuses_is_not_finished_at_restart(
        s3_env, bucket, tmp_path):
    """Another client creates the destination between the check and the copy: the
    conditional copy refuses it (EEXIST), and the journal must not finish it later."""
    prefix, state = f"race{next(_prefixes)}", tmp_path / "state"
    be = S3Backend(s3_env.endpoint, bucket, prefix, state=state)
    be.write_bytes("/a", b"mine")
    node = be._node

    def racing(parts, fresh=False, dir_memory=False):
        if parts == ("b",):  # the check sees no /b; another client makes it right after
            s3_env.client().put_object(Bucket=bucket, Key=f"{prefix}/b", Body=b"theirs")
            return None
        return node(parts, fresh, dir_memory)

    be._node = racing
    with pytest.raises(OSError) as ei:
        be.rename("/a", "/b", RenameFlags.NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    be.close()
    be = S3Backend(s3_env.endpoint, bucket, prefix, state=state)  # the restart
    try:
        assert be.read_bytes("/b") == b"theirs"
        assert be.read_bytes("/a") == b"mine"
    finally:
        be.close()
