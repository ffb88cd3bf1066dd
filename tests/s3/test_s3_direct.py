"""Direct fetches on S3: the server locates (a presigned GET), the agent reads the store.

Real SeaweedFS, real server and agent processes for the stack test; the
replaced-object tests drive :mod:`synthfs.agent.direct` against the real store
with a URL :meth:`S3Backend.locate` signed.
"""

from __future__ import annotations

import errno
import os
import re
import secrets

import pytest

from synthfs.agent import direct
from synthfs.protocol import messages as m
from synthfs.protocol.client import Client
from synthfs.server.backends.s3 import S3Backend
from synthfs.server.service import handle
from synthfs.testing.s3stack import s3_stack

MIB = 1 << 20


def _requests(workdir: str) -> list[str]:
    """The kinds of the requests the stack's server (-vv) dispatched so far, in order."""
    with open(os.path.join(workdir, "server.log")) as f:
        return re.findall(r"^\S.* (\w+) #\d+ token ", f.read(), re.M)


def test_the_agent_reads_the_object_from_the_store_not_through_the_server(seaweed, tmp_path):
    """A cold 24 MiB fetch: the copy is the object's bytes, and the server was asked to
    locate it, and for none of its bytes (no Read)."""
    bucket = seaweed.new_bucket("direct")
    body = secrets.token_bytes(24 * MIB + 12345)
    seaweed.client().put_object(Bucket=bucket, Key="repo/big", Body=body)
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env(),
                  server_args=("-vv",)) as stack:
        c = Client(stack.agent_endpoint, timeout=120)
        try:
            c.call(m.Stat(path="/big"))  # the server warm: its registration and the HEAD
            before = len(_requests(stack.workdir))
            reply = c.call(m.Open(path="/big", flags=os.O_RDONLY, mode=0))
            asked = _requests(stack.workdir)[before:]
        finally:
            c.close()
        assert isinstance(reply, m.Opened)
        with open(reply.host_path, "rb") as f:
            assert f.read() == body
        assert "locate" in asked and "read" not in asked, asked


@pytest.fixture
def located(s3_env, tmp_path):
    """(backend, bucket, the store's client): an object /o of 24 MiB, and its Located."""
    bucket = s3_env.new_bucket("loc")
    be = S3Backend(s3_env.endpoint, bucket, "p", state=tmp_path / "st")
    s3 = s3_env.client()
    first = secrets.token_bytes(24 * MIB)
    s3.put_object(Bucket=bucket, Key="p/o", Body=first)
    reply, _ = handle(be, m.Locate(path="/o", version=be.stat("/o").version))
    assert isinstance(reply, m.Located) and reply.size == len(first)
    try:
        yield be, bucket, s3, reply, first
    finally:
        be.close()


def test_a_located_url_reads_the_object_whole(located, tmp_path):
    _be, _bucket, _s3, loc, first = located
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        direct.fetch_into(fd, loc.url, loc.etag, loc.size, streams=3, part=4 * MIB)
    finally:
        os.close(fd)
    assert (tmp_path / "copy").read_bytes() == first


def test_an_object_replaced_during_a_direct_fetch_is_estale_never_torn(located, tmp_path):
    """The object is replaced after the first range landed: the next range's GET is
    refused (If-Match is signed in), so the fetch fails ESTALE and the agent starts again
    (as a Read of another version does); no mix of the two versions is ever kept."""
    _be, bucket, s3, loc, _first = located
    replaced = []

    def replace(done: int) -> None:
        if not replaced:
            s3.put_object(Bucket=bucket, Key="p/o", Body=b"new" * 1000)
            replaced.append(done)

    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as e:
            direct.fetch_into(fd, loc.url, loc.etag, loc.size, replace, streams=1,
                              part=4 * MIB)
    finally:
        os.close(fd)
    assert e.value.errno == errno.ESTALE
    assert replaced == [4 * MIB]
    # and the server no longer locates the old version
    reply, _ = handle(_be, m.Locate(path="/o", version=loc.version))
    assert isinstance(reply, m.Error) and reply.errno == errno.ESTALE


def test_a_url_the_store_refuses_is_unusable_not_a_failure(located, tmp_path):
    """A tampered (or expired) URL: 403, which the agent takes as "fetch through the
    server"; a store it cannot reach alike."""
    _be, _bucket, _s3, loc, _first = located
    fd = os.open(tmp_path / "copy", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(direct.Unusable, match="HTTP 403"):
            direct.fetch_into(fd, loc.url.replace("X-Amz-Signature=", "X-Amz-Signature=0"),
                              loc.etag, loc.size)
        with pytest.raises(direct.Unusable, match="did not answer"):
            direct.fetch_into(fd, "http://127.0.0.1:9/b/o", loc.etag, loc.size)
    finally:
        os.close(fd)


def test_only_files_are_located(located):
    be, _bucket, s3, _loc, _first = located
    be.mkdir("/d")
    for path, code in (("/d", errno.EISDIR), ("/none", errno.ENOENT), ("/", errno.EISDIR)):
        reply, _ = handle(be, m.Locate(path=path))
        assert isinstance(reply, m.Error) and reply.errno == code, (path, reply)


def test_an_agent_with_no_direct_fetches_through_the_server(seaweed):
    bucket = seaweed.new_bucket("nodirect")
    body = secrets.token_bytes(9 * MIB)
    seaweed.client().put_object(Bucket=bucket, Key="repo/big", Body=body)
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env(), server_args=("-vv",),
                  agent_args=("--no-direct",)) as stack:
        c = Client(stack.agent_endpoint, timeout=120)
        try:
            reply = c.call(m.Open(path="/big", flags=os.O_RDONLY, mode=0))
        finally:
            c.close()
        assert isinstance(reply, m.Opened)
        with open(reply.host_path, "rb") as f:
            assert f.read() == body
        asked = _requests(stack.workdir)
        assert "read" in asked and "locate" not in asked, asked
