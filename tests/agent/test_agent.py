"""The agent end to end: interposer-side client -> real agent -> real server -> directory."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
import zmq
from agent_stack import Stack, wait_until

from synthfs.protocol.client import SERVER_UNREACHABLE, Client, Unreachable
from synthfs.protocol.messages import (
    CHUNK_SIZE,
    PROTOCOL_VERSION,
    Commit,
    Committed,
    FileKind,
    Hello,
    LinkTarget,
    List,
    Listing,
    Mkdir,
    Open,
    Opened,
    Readlink,
    Remove,
    Rename,
    RenameFlags,
    SetAttr,
    Stat,
    StatReply,
    Symlink,
    Sync,
    Synced,
    Welcome,
)
from synthfs.server.statedir import default_state_dir

RD, WR, RW = os.O_RDONLY, os.O_WRONLY, os.O_RDWR


def errno_of(stack: Stack, msg: object) -> int:
    with pytest.raises(OSError) as info:
        stack.call(msg)  # type: ignore[arg-type]
    assert info.value.errno is not None
    return info.value.errno


def opened(stack: Stack, path: str, flags: int = RD, mode: int = 0o644) -> Opened:
    reply = stack.call(Open(path=path, flags=flags, mode=mode))
    assert isinstance(reply, Opened)
    return reply


# -- connection ---------------------------------------------------------------------------


def test_hello_welcome_lists_refused_paths(running: Stack) -> None:
    reply = running.call(Hello(version=PROTOCOL_VERSION))
    assert isinstance(reply, Welcome)
    assert reply.version == PROTOCOL_VERSION
    sock = str(running.run / "agent.sock")
    server_sock = str(running.run / "server.sock")
    # the agent's own, and the local server's (Registered.trusted_paths): protocol.trusted
    state = default_state_dir(running.root)
    assert set(reply.refused_paths) == {
        str(running.cache), sock, str(running.key), server_sock, str(running.root), state,
    }
    assert errno_of(running, Hello(version=PROTOCOL_VERSION + 1)) == errno.EPROTO


def test_socket_is_private(running: Stack) -> None:
    st = os.stat(running.run / "agent.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_make_undumpable_clears_the_dumpable_flag() -> None:
    """agent.main.main calls make_undumpable() first; here the call's effect, in a child."""
    import subprocess
    import sys

    probe = ("import ctypes, agent.main as m; libc = ctypes.CDLL(None)\n"
             "before = libc.prctl(3, 0, 0, 0, 0); m.make_undumpable()\n"
             "print(before, libc.prctl(3, 0, 0, 0, 0))")  # 3 = PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.split() == ["1", "0"]


def test_garbage_frames_do_not_kill_the_agent(running: Stack) -> None:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(running.agent_ep)
    for junk in (b"", b"\x00" * 100, b"\x95\x01\xa4stat\x01\xa0\x80", os.urandom(5000)):
        s.send(junk)
    s.close()
    assert isinstance(running.call(Stat(path="/")), StatReply)


# -- forwarded operations -----------------------------------------------------------------


def test_namespace_operations_round_trip(running: Stack) -> None:
    root = running.root
    (root / "f").write_bytes(b"hello")
    st = running.call(Stat(path="/f"))
    assert isinstance(st, StatReply)
    assert st.attrs.kind == FileKind.FILE and st.attrs.size == 5

    d = running.call(Mkdir(path="/d", mode=0o750))
    assert isinstance(d, StatReply) and d.attrs.kind == FileKind.DIR
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750

    ln = running.call(Symlink(target="../f", path="/d/l"))
    assert isinstance(ln, StatReply) and ln.attrs.kind == FileKind.SYMLINK
    assert os.readlink(root / "d" / "l") == "../f"
    assert running.call(Readlink(path="/d/l")) == LinkTarget(target="../f")

    listing = running.call(List(path="/"))
    assert isinstance(listing, Listing)
    assert {e.name: e.attrs.kind for e in listing.entries} == {"f": FileKind.FILE,
                                                                 "d": FileKind.DIR}

    sa = running.call(SetAttr(path="/f", mode=0o600))
    assert isinstance(sa, StatReply) and sa.attrs.mode == 0o600
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600

    running.call(Rename(src="/f", dst="/d/g"))
    assert (root / "d" / "g").read_bytes() == b"hello" and not (root / "f").exists()
    assert errno_of(running, Stat(path="/f")) == errno.ENOENT  # attr cache followed

    running.call(Remove(path="/d/g"))
    running.call(Remove(path="/d/l"))
    running.call(Remove(path="/d", directory=True))
    assert list(root.iterdir()) == []  # the server's state is kept outside the root
    assert errno_of(running, Stat(path="/d")) == errno.ENOENT
    assert errno_of(running, Remove(path="/nope")) == errno.ENOENT
    assert errno_of(running, Stat(path="relative")) == errno.EINVAL


def test_stat_is_served_from_list_within_ttl(running: Stack) -> None:
    (running.root / "a").write_bytes(b"1")
    running.call(List(path="/"))
    (running.root / "a").write_bytes(b"22")  # behind the agent's back
    reply = running.call(Stat(path="/a"))
    assert isinstance(reply, StatReply) and reply.attrs.size == 1  # READDIRPLUS hit
    time.sleep(1.1)  # default TTL is 1 s
    reply = running.call(Stat(path="/a"))
    assert isinstance(reply, StatReply) and reply.attrs.size == 2


# -- materialisation ----------------------------------------------------------------------


def test_open_materialises_content(running: Stack) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 12345)  # several pipelined chunks
    (running.root / "big").write_bytes(data)
    o = opened(running, "/big")
    assert Path(o.host_path).read_bytes() == data
    assert o.attrs.size == len(data)
    assert o.host_path.startswith(str(running.cache))
    # The same path keeps the same cache file name.
    assert opened(running, "/big").host_path == o.host_path


def test_open_errors_like_open2(running: Stack) -> None:
    (running.root / "f").write_bytes(b"x")
    (running.root / "d").mkdir()
    os.symlink("f", running.root / "l")
    assert errno_of(running, Open(path="/f", flags=WR | os.O_CREAT | os.O_EXCL)) == errno.EEXIST
    assert errno_of(running, Open(path="/missing", flags=RD)) == errno.ENOENT
    assert errno_of(running, Open(path="/d", flags=RD)) == errno.EISDIR
    assert errno_of(running, Open(path="/l", flags=RD)) == errno.ELOOP
    assert errno_of(running, Open(path="/nodir/x", flags=WR | os.O_CREAT)) == errno.ENOENT


def test_o_creat_creates_on_the_server_now(running: Stack) -> None:
    o = opened(running, "/new", WR | os.O_CREAT | os.O_EXCL, 0o640)
    assert (running.root / "new").read_bytes() == b""
    assert stat.S_IMODE((running.root / "new").stat().st_mode) == 0o640
    Path(o.host_path).write_bytes(b"content")
    c = running.call(Commit(path="/new", wait=True))
    assert isinstance(c, Committed) and c.attrs.size == 7
    assert (running.root / "new").read_bytes() == b"content"


def test_write_then_commit_uploads(running: Stack) -> None:
    (running.root / "f").write_bytes(b"old content")
    o = opened(running, "/f", RW)
    with open(o.host_path, "r+b") as f:
        f.seek(0)
        f.write(b"NEW")
    # Before the commit: Stat shows the dirty copy, the server still has the old bytes.
    st = running.call(Stat(path="/f"))
    assert isinstance(st, StatReply)
    assert (running.root / "f").read_bytes() == b"old content"
    c = running.call(Commit(path="/f", wait=True))
    assert isinstance(c, Committed)
    assert (running.root / "f").read_bytes() == b"NEW content"
    assert c.attrs.version != o.attrs.version
    # A clean commit answers the same attrs without uploading again.
    mtime = (running.root / "f").stat().st_mtime_ns
    assert running.call(Commit(path="/f")) == c
    assert (running.root / "f").stat().st_mtime_ns == mtime


def test_dirty_copy_shows_in_stat_and_wins_on_reopen(running: Stack) -> None:
    (running.root / "f").write_bytes(b"abc")
    o = opened(running, "/f", RW)
    with open(o.host_path, "ab") as f:
        f.write(b"defgh")
    st = running.call(Stat(path="/f"))
    assert isinstance(st, StatReply) and st.attrs.size == 8
    (running.root / "f").write_bytes(b"server side change")
    o2 = opened(running, "/f", RD)
    assert o2.host_path == o.host_path
    assert Path(o2.host_path).read_bytes() == b"abcdefgh"  # the dirty copy wins
    assert o2.attrs.size == 8


def test_o_trunc_truncates_the_local_copy(running: Stack) -> None:
    (running.root / "f").write_bytes(b"something long")
    o = opened(running, "/f", RD)
    o2 = opened(running, "/f", WR | os.O_TRUNC)
    assert o2.host_path == o.host_path
    assert os.path.getsize(o2.host_path) == 0
    assert (running.root / "f").read_bytes() == b"something long"
    running.call(Commit(path="/f", wait=True))
    assert (running.root / "f").read_bytes() == b""


def test_close_to_open_revalidation(running: Stack) -> None:
    (running.root / "f").write_bytes(b"version one")
    assert Path(opened(running, "/f").host_path).read_bytes() == b"version one"
    (running.root / "f").write_bytes(b"version two, longer")
    assert Path(opened(running, "/f").host_path).read_bytes() == b"version two, longer"


def test_refetch_keeps_old_inode_for_holders(running: Stack) -> None:
    (running.root / "f").write_bytes(b"one")
    o = opened(running, "/f")
    with open(o.host_path, "rb") as held:
        (running.root / "f").write_bytes(b"two!")
        assert Path(opened(running, "/f").host_path).read_bytes() == b"two!"
        assert held.read() == b"one"


def test_sync_uploads_every_dirty_copy(running: Stack) -> None:
    for name in ("a", "b", "c"):
        (running.root / name).write_bytes(b"0")
    for name in ("a", "b"):
        Path(opened(running, f"/{name}", RW).host_path).write_bytes(name.encode() * 3)
    opened(running, "/c")
    assert running.call(Sync()) == Synced(uploaded=2)
    assert (running.root / "a").read_bytes() == b"aaa"
    assert (running.root / "b").read_bytes() == b"bbb"
    assert running.call(Sync()) == Synced(uploaded=0)


def test_rename_moves_local_copies(running: Stack) -> None:
    (running.root / "d").mkdir()
    (running.root / "d" / "f").write_bytes(b"orig")
    o = opened(running, "/d/f", RW)
    Path(o.host_path).write_bytes(b"dirty")
    running.call(Rename(src="/d", dst="/e"))
    assert not os.path.exists(o.host_path)
    o2 = opened(running, "/e/f", RD)
    assert Path(o2.host_path).read_bytes() == b"dirty"  # moved, still dirty, still wins
    running.call(Commit(path="/e/f", wait=True))
    assert (running.root / "e" / "f").read_bytes() == b"dirty"


def test_rename_exchange_swaps_local_copies(running: Stack) -> None:
    (running.root / "a").write_bytes(b"A")
    (running.root / "b").write_bytes(b"B")
    opened(running, "/a")
    opened(running, "/b")
    try:
        running.call(Rename(src="/a", dst="/b", flags=RenameFlags.EXCHANGE))
    except OSError as exc:
        pytest.skip(f"server does not support RENAME_EXCHANGE here: {exc}")
    assert Path(opened(running, "/a").host_path).read_bytes() == b"B"
    assert Path(opened(running, "/b").host_path).read_bytes() == b"A"


def test_remove_drops_the_local_copy(running: Stack) -> None:
    (running.root / "f").write_bytes(b"x")
    o = opened(running, "/f")
    running.call(Remove(path="/f"))
    assert not os.path.exists(o.host_path)
    assert errno_of(running, Open(path="/f", flags=RD)) == errno.ENOENT


def test_setattr_size_truncates_local_copy_and_server(running: Stack) -> None:
    (running.root / "f").write_bytes(b"0123456789")
    o = opened(running, "/f", RW)
    with open(o.host_path, "r+b") as f:
        f.write(b"AB")
    reply = running.call(SetAttr(path="/f", size=4))
    assert isinstance(reply, StatReply) and reply.attrs.size == 4
    assert Path(o.host_path).read_bytes() == b"AB23"
    assert (running.root / "f").read_bytes() == b"AB23"


def test_setattr_without_local_copy_is_forwarded(running: Stack) -> None:
    (running.root / "f").write_bytes(b"0123456789")
    reply = running.call(SetAttr(path="/f", size=3, mtime_ns=10**18))
    assert isinstance(reply, StatReply)
    assert (running.root / "f").read_bytes() == b"012"
    assert (running.root / "f").stat().st_mtime_ns == 10**18


# -- cache across restarts, and its bound ---------------------------------------------------


def test_restart_is_warm_no_read_reaches_the_server(stack: Stack) -> None:
    """Proof by the server's own I/O counter: a warm open reads nothing from the file."""
    data = os.urandom(8 * 1024 * 1024)
    (stack.root / "big").write_bytes(data)
    server = stack.start_server()
    stack.start_agent()
    before = server.rchar()
    assert Path(opened(stack, "/big").host_path).read_bytes() == data
    cold = server.rchar() - before
    assert cold >= len(data)  # the cold fill read the whole file on the server side
    stack.stop()

    server = stack.start_server()
    stack.start_agent()
    before = server.rchar()
    o = opened(stack, "/big")
    warm = server.rchar() - before
    assert Path(o.host_path).read_bytes() == data
    assert warm < len(data) // 8, f"warm open made the server read {warm} bytes"


def test_restart_keeps_dirty_copies_for_sync(stack: Stack) -> None:
    (stack.root / "f").write_bytes(b"before")
    stack.start_server()
    stack.start_agent()
    Path(opened(stack, "/f", RW).host_path).write_bytes(b"written, not yet uploaded")
    assert stack.agent is not None
    stack.agent.stop()
    stack.clients.clear()
    stack.start_agent()
    assert stack.call(Sync()) == Synced(uploaded=1)
    assert (stack.root / "f").read_bytes() == b"written, not yet uploaded"


def test_lru_bound_evicts_clean_copies_only(stack: Stack) -> None:
    mib = 1024 * 1024
    for name in ("a", "b", "c", "d"):
        (stack.root / name).write_bytes(name.encode() * mib)
    stack.start_server()
    stack.start_agent("--cache-size", str(int(2.5 * mib)))
    dirty = opened(stack, "/a", RW)
    with open(dirty.host_path, "r+b") as f:
        f.write(b"dirty")
    paths = {n: opened(stack, f"/{n}").host_path for n in ("b", "c", "d")}
    assert os.path.exists(dirty.host_path)  # dirty: never evicted, though least recent
    assert not os.path.exists(paths["b"])  # least recently used clean copy: evicted
    assert os.path.exists(paths["d"])
    total = sum(os.path.getsize(p) for p in (dirty.host_path, *paths.values())
                if os.path.exists(p))
    assert total <= 2.5 * mib
    assert running_commit(stack, "/a").startswith(b"dirty")


def running_commit(stack: Stack, path: str) -> bytes:
    stack.call(Commit(path=path, wait=True))
    return (stack.root / path.lstrip("/")).read_bytes()


# -- the server's life: restarts, token expiry, absence --------------------------------------


def test_server_restart_is_transparent(running: Stack) -> None:
    (running.root / "f").write_bytes(b"x")
    assert isinstance(running.call(Stat(path="/f")), StatReply)
    assert running.server is not None
    running.server.stop()
    running.start_server()
    time.sleep(1.1)  # let the attribute cache expire, so the Stat goes upstream
    reply = running.call(Stat(path="/f"))
    assert isinstance(reply, StatReply) and reply.attrs.size == 1


def test_token_expiry_is_transparent(stack: Stack) -> None:
    (stack.root / "f").write_bytes(b"x")
    stack.start_server("--token-ttl", "1")
    stack.start_agent("--attr-ttl", "0")
    assert isinstance(stack.call(Stat(path="/f")), StatReply)
    time.sleep(1.5)
    assert isinstance(stack.call(Stat(path="/f")), StatReply)
    assert "expired" not in stack.agent.output() if stack.agent else True


def test_server_down_gives_bounded_server_unreachable(stack: Stack) -> None:
    """The agent answers within its --timeout, with the errno that says "its server"."""
    stack.start_server()
    stack.start_agent("--timeout", "1", "--attr-ttl", "0")
    assert isinstance(stack.call(Stat(path="/")), StatReply)
    assert stack.server is not None
    stack.server.stop(9)
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        stack.call(Stat(path="/"))
    took = time.monotonic() - t0
    assert info.value.errno == SERVER_UNREACHABLE
    assert stack.server_ep in str(info.value)
    assert took < 3, took
    assert not isinstance(info.value, Unreachable)  # the agent answered, in time


def test_start_without_server_fails_clearly(stack: Stack) -> None:
    agent = stack.start_agent("--timeout", "0.5", wait=False)
    assert agent.popen.wait(10) == 1
    assert f"server at {stack.server_ep} did not answer within 0.5 s" in agent.output()


def test_loose_key_file_is_refused(stack: Stack) -> None:
    os.chmod(stack.key, 0o644)
    agent = stack.start_agent(wait=False)
    assert agent.popen.wait(10) == 2
    assert "must be 0600" in agent.output()


def test_key_from_inherited_fd(stack: Stack, tmp_path: Path) -> None:
    stack.start_server()
    r, w = os.pipe()
    os.write(w, stack.key.read_bytes())
    os.close(w)
    import sys

    from agent_stack import Proc

    agent = Proc("agent", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                           "--bootstrap-fd", str(r), "--listen", stack.agent_ep,
                           "--cache", str(stack.cache)], tmp_path / "fd-agent.log", (r,))
    os.close(r)
    stack.agent = agent
    agent.wait_ready()
    assert isinstance(stack.call(Stat(path="/")), StatReply)
    assert stack.key.read_text().strip() not in agent.output()


def test_wrong_key_is_refused_at_start(stack: Stack) -> None:
    stack.start_server()
    os.chmod(stack.key, 0o600)
    other = stack.run / "other.key"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"0" * 64)
    os.close(fd)
    stack.key = other
    agent = stack.start_agent(wait=False)
    assert agent.popen.wait(10) == 1
    assert "registration" in agent.output()


def test_agent_stops_cleanly_on_sigterm(running: Stack) -> None:
    assert running.agent is not None
    assert running.agent.stop() == 0
    assert not (running.run / "agent.sock").exists()
    assert wait_until(lambda: (running.cache).exists())


def test_client_unreachable_when_agent_is_gone(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/none.sock", timeout=0.3, retries=0) as c, \
            pytest.raises(Unreachable):
        c.call(Stat(path="/"))


def test_copy_open_for_writing_stays_shared(running: Stack) -> None:
    (running.root / "f").write_bytes(b"v1")
    w = opened(running, "/f", RW)
    (running.root / "f").write_bytes(b"server v2")  # changes while a writer holds the copy
    r = opened(running, "/f", RD)
    assert r.host_path == w.host_path
    assert os.stat(r.host_path).st_ino == os.stat(w.host_path).st_ino  # same inode: shared
    running.call(Commit(path="/f"))  # the writer closes: no change, nothing uploaded
    assert Path(opened(running, "/f", RD).host_path).read_bytes() == b"server v2"


def test_two_agents_never_share_a_cache_directory(stack: Stack) -> None:
    (stack.root / "f").write_bytes(b"x")
    stack.start_server()
    stack.start_agent()
    first = opened(stack, "/f").host_path
    second_ep = f"ipc://{stack.run}/agent2.sock"
    import sys

    from agent_stack import Proc

    other = Proc("agent2", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                            "--bootstrap-key", str(stack.key), "--listen", second_ep,
                            "--cache", str(stack.cache)], stack.tmp / "agent2.log")
    try:
        other.wait_ready()
        with Client(second_ep, timeout=10) as c:
            o = c.call(Open(path="/f", flags=RD))
            assert isinstance(o, Opened)
        assert os.path.dirname(o.host_path) != os.path.dirname(first)
        assert o.host_path.startswith(str(stack.cache))
    finally:
        other.stop()


def test_random_requests_never_kill_the_agent(running: Stack) -> None:
    import random

    rng = random.Random(1234)
    (running.root / "f").write_bytes(b"data")
    (running.root / "d").mkdir()
    paths = ["/", "/f", "/d", "/d/x", "/missing", "/f/under-a-file", "//f", "/./f", "/d/../f",
             "", "relative", "/" + "n" * 300, "/\udcff", "/f\n"]
    makers = [
        lambda p: Stat(path=p), lambda p: List(path=p), lambda p: Readlink(path=p),
        lambda p: Open(path=p, flags=rng.choice([0, 1, 2, 0o100, 0o1101, 0o302, 0o200000]),
                       mode=rng.randrange(0o7777)),
        lambda p: Commit(path=p), lambda p: Mkdir(path=p, mode=0o755),
        lambda p: Remove(path=p, directory=rng.random() < 0.5),
        lambda p: Rename(src=p, dst=rng.choice(paths) or "/z"),
        lambda p: Symlink(target="t", path=p), lambda p: SetAttr(path=p, size=rng.randrange(9)),
        lambda p: Sync(), lambda p: Hello(version=rng.randrange(3)),
    ]
    with Client(running.agent_ep, timeout=10, retries=0) as c:
        for _ in range(300):
            try:
                msg = rng.choice(makers)(rng.choice(paths))
            except (TypeError, ValueError):
                continue
            try:
                c.call(msg)
            except OSError as exc:
                assert not isinstance(exc, Unreachable), f"agent stopped answering after {msg!r}"
                assert exc.errno != errno.EIO or "internal" not in str(exc), f"{msg!r}: {exc}"
    assert running.agent is not None and running.agent.popen.poll() is None
    assert "Traceback" not in running.agent.output()


def test_a_vanished_cache_file_is_fetched_again(running: Stack) -> None:
    (running.root / "f").write_bytes(b"content")
    o = opened(running, "/f")
    os.unlink(o.host_path)  # someone cleaned the cache behind the agent's back
    assert Path(opened(running, "/f").host_path).read_bytes() == b"content"
    c = running.call(Commit(path="/f"))
    assert isinstance(c, Committed) and c.attrs.size == 7
