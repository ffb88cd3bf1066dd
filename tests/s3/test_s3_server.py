"""``synthfs server --s3``: its command line, and a guest on a bucket through a real stack."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import helpers
import pytest

from synthfs.testing.s3stack import s3_stack


def _server(args: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "synthfs.server", *args, "--listen", f"ipc://{tmp_path}/s.sock",
         "--bootstrap-key", str(tmp_path / "key"), "--state", str(tmp_path / "state")],
        env={**base, "HOME": str(tmp_path), **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "creds", "message"), [
    (["--s3", "URL"], True, "--s3 needs --bucket NAME"),
    (["--root", "/", "--bucket", "b"], True, "--bucket, --prefix and --s3-profile go with --s3"),
    (["--s3", "ftp://x", "--bucket", "b"], True, "expected http://HOST:PORT"),
    (["--s3", "URL", "--bucket", "no-such-bucket"], True, "no bucket no-such-bucket at"),
    (["--s3", "URL", "--bucket", "BUCKET"], False, "no AWS credentials found"),
    (["--s3", "URL", "--bucket", "BUCKET", "--s3-profile", "nope"], True,
     "profile (nope) could not be found"),
])
def test_bad_s3_command_lines_get_one_line(seaweed, tmp_path, args, creds, message):
    bucket = seaweed.new_bucket("cli")
    args = [seaweed.endpoint if a == "URL" else bucket if a == "BUCKET" else a for a in args]
    p = _server(args, seaweed.env() if creds else {}, tmp_path)
    assert p.returncode == 2, p
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert seaweed.env()["AWS_SECRET_ACCESS_KEY"] not in p.stderr


@pytest.mark.ptrace
def test_a_guest_on_a_bucket(seaweed, synthfs, tmp_path):
    """Files, directories, symlinks, renames and removes land in the bucket as objects, and
    the credentials are the server's alone (not the agent's environment, no argv)."""
    bucket = seaweed.new_bucket("guest")
    s3 = seaweed.client()
    s3.put_object(Bucket=bucket, Key="repo/in/from-s3.txt", Body=b"put by another client\n")
    secret = seaweed.env()["AWS_SECRET_ACCESS_KEY"]
    with s3_stack(seaweed.endpoint, bucket, "repo", seaweed.env()) as stack:
        script = (
            "cat /data/in/from-s3.txt && mkdir -m 750 /data/out && "
            "printf hello > /data/out/a && mv /data/out/a /data/out/b && "
            "ln -s b /data/out/l && cat /data/out/l && echo && "
            "mkdir /data/gone && rmdir /data/gone && ls /data /data/out && "
            "stat -c '%a %s' /data/out /data/out/b")
        out = helpers.run_native([*helpers.synthfs_command(), "run", "--agent",
                                  stack.agent_endpoint, "--", "sh", "-c", script], cwd="/")
        with open(f"/proc/{stack.agent_pid}/environ", "rb") as f:
            environ = f.read()
        assert secret.encode() not in environ and seaweed.access_key.encode() not in environ
        for pid in (stack.agent_pid, stack.server_pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read()
    assert out.status == 0, out
    assert out.stdout == ("put by another client\nhello\n/data:\nin\nout\n\n/data/out:\nb\nl\n"
                          "750 0\n644 5\n"), out.stdout
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/")["Contents"])
    assert keys == ["repo/in/from-s3.txt", "repo/out/.synthfs-dir\u2400", "repo/out/b",
                    "repo/out/l"]
    assert s3.get_object(Bucket=bucket, Key="repo/out/b")["Body"].read() == b"hello"


def test_a_commit_publishes_the_version_it_made_without_a_stat(s3_env, tmp_path):
    """The news of a change carries the new version: the one the commit (mkdir, symlink,
    setattr) answered, not a stat of it again (a store round trip on S3, after every
    create's PUT); the parent's version is still looked up."""
    from synthfs.protocol import messages as m
    from synthfs.server.backends.s3 import S3Backend
    from synthfs.server.service import handle

    be = S3Backend(s3_env.endpoint, s3_env.new_bucket("news"), "p", state=tmp_path / "st")
    stats: list[str] = []
    stat = be.stat

    def counted(path):
        stats.append(path)
        return stat(path)

    be.stat = counted
    try:
        handle(be, m.UploadChunk(upload_id="u1", offset=0, data=b"hello"))
        reply, changed = handle(be, m.UploadCommit(upload_id="u1", path="/f", size=5),
                                want_changes=True)
        assert isinstance(reply, m.StatReply)
        assert changed[0] == ("/f", reply.attrs.version, False) and reply.attrs.version
        assert changed[1][0] == "/" and changed[1][2]
        reply, changed = handle(be, m.Mkdir(path="/d"), want_changes=True)
        assert changed[0] == ("/d", reply.attrs.version, False)
        assert "/f" not in stats and "/d" not in stats, stats
        reply, changed = handle(be, m.Remove(path="/f"), want_changes=True)
        assert changed[0] == ("/f", "", False)  # gone: looked up
    finally:
        be.close()


def test_a_stat_waiting_on_the_store_holds_no_other_client(s3_env, tmp_path):
    """A Stat on S3 is a HEAD: with the store not answering it waits for the client's
    timeouts, so it runs on the metadata pool, not the I/O thread. Before, a stat of one
    agent held every other request of every agent (here a refused token, answered at once
    by the I/O thread) until the store's timeouts ran out."""
    sys.path.insert(0, str(helpers.REPO / "tests" / "server"))
    from server_harness import RawClient, ServerProc, make_key, register

    from synthfs.protocol import messages as m

    class S3ServerProc(ServerProc):
        def argv(self) -> list[str]:
            return [sys.executable, "-m", "synthfs.server", "--s3", seaweed.endpoint,
                    "--bucket", bucket, "--prefix", "repo", "--listen", self.endpoint,
                    "--bootstrap-key", str(self.key_path), "--state", str(self.state)]

    seaweed = s3_env
    bucket = seaweed.new_bucket("inline")
    (tmp_path / "repo").mkdir()  # the state directory's place (the repository is the bucket)
    key = make_key(tmp_path / "key")
    server = S3ServerProc(tmp_path / "repo", tmp_path / "key", f"ipc://{tmp_path}/s.sock").start()
    try:
        with RawClient(server.bound) as waiting, RawClient(server.bound) as other:
            assert isinstance(register(waiting, key), m.Registered)
            seaweed.pause()
            try:
                waiting.send(m.Stat(path="/never-cached"))
                time.sleep(0.5)  # the server has taken it to the store
                t = time.monotonic()
                reply = other.call(m.Stat(path="/"), token="x" * 43, timeout=20)
                took = time.monotonic() - t
            finally:
                seaweed.resume()
            assert isinstance(reply, m.Error) and reply.errno == errno.EKEYREJECTED, reply
            assert took < 2.0, f"the refusal waited {took:.1f} s for another client's HEAD"
    finally:
        server.stop()
