"""Local creates (agent/writeback.py): a write-back agent creates a file the server is known
to lack in its own cache, queued; its remove before the upload never reaches the server.

Real server and agent processes (the server's -vv log counts its requests); the client
plays the interposer, which claims a name it saw absent with O_EXCL (``Open.claim``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_stack import Proc, Stack, wait_until

from synthfs.protocol.client import Client
from synthfs.protocol.messages import (
    Commit,
    Committed,
    List,
    Listing,
    Mkdir,
    Open,
    Opened,
    Remove,
    Rename,
    Stat,
    StatReply,
    Sync,
    Synced,
)

#: what the interposer sends for `> f` of a name it saw absent (its own O_EXCL)
CLAIM = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL


def _requests(stack: Stack) -> int:
    assert stack.server is not None
    time.sleep(0.1)  # the server logs after it answers
    return len(re.findall(r"^\S.* (\w+) #\d+ token ", stack.server.output(), re.M))


def _listed(c: Client, path: str) -> dict[str, int]:
    reply = c.call(List(path=path))
    assert isinstance(reply, Listing), reply
    return {d.name: d.attrs.size for d in reply.entries}


def _promised_list(stack: Stack, c: Client, path: str) -> bool:
    """Whether the agent answers a List of ``path`` from memory (promises live)."""
    _listed(c, path)
    before = _requests(stack)
    _listed(c, path)
    return _requests(stack) == before


@pytest.fixture
def wb(stack: Stack) -> Iterator[Stack]:
    """Server -vv --publish; a --write-back agent (nothing uploaded behind the test's
    back) --subscribe; /d listed from memory (promises live)."""
    d = tempfile.mkdtemp(prefix="sfs-lc-", dir="/tmp")
    pub = f"ipc://{d}/pub.sock"
    stack.pub_ep = pub  # type: ignore[attr-defined]
    stack.agent_defaults = ("--write-back", "--upload-delay", "600", "--subscribe", pub)
    (stack.root / "d").mkdir()
    (stack.root / "d" / "old").write_bytes(b"on the server")
    stack.start_server("-vv", "--publish", pub)
    stack.start_agent()
    c = stack.client()
    assert wait_until(lambda: _promised_list(stack, c, "/d"), 10)
    try:
        yield stack
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _create(c: Client, path: str, body: bytes, *, claim: bool = True,
            flags: int = CLAIM) -> Opened:
    o = c.call(Open(path=path, flags=flags, mode=0o640, claim=claim))
    assert isinstance(o, Opened), o
    Path(o.host_path).write_bytes(body)
    assert isinstance(c.call(Commit(path=path)), Committed)
    return o


def test_a_create_the_server_is_known_to_lack_needs_no_server(wb: Stack) -> None:
    c = wb.clients[0]
    before = _requests(wb)
    _create(c, "/d/new", b"created here")
    st = c.call(Stat(path="/d/new"))
    assert isinstance(st, StatReply) and st.attrs.size == 12 and st.attrs.mode == 0o640
    assert _listed(c, "/d") == {"old": 13, "new": 12}
    o = c.call(Open(path="/d/new", flags=os.O_RDONLY, mode=0))
    assert isinstance(o, Opened) and Path(o.host_path).read_bytes() == b"created here"
    assert _requests(wb) == before  # not one request
    assert not (wb.root / "d" / "new").exists()
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (wb.root / "d" / "new").read_bytes() == b"created here"
    assert (wb.root / "d" / "new").stat().st_mode & 0o777 == 0o640


def test_a_file_created_and_removed_before_its_upload_never_reaches_the_server(
        wb: Stack) -> None:
    c = wb.clients[0]
    before = _requests(wb)
    for i in range(5):
        _create(c, f"/d/tmp{i}", b"x" * 100)
        assert c.call(Remove(path=f"/d/tmp{i}")) is not None
        with pytest.raises(FileNotFoundError):
            c.call(Stat(path=f"/d/tmp{i}"))
    assert _listed(c, "/d") == {"old": 13}
    assert _requests(wb) == before
    assert c.call(Sync(wait=True)) == Synced(uploaded=0)
    assert sorted(p.name for p in (wb.root / "d").iterdir()) == ["old"]


def test_a_stat_that_found_nothing_lets_the_create_skip_the_server(wb: Stack) -> None:
    c = wb.clients[0]
    (wb.root / "e").mkdir()  # behind the server's back: nothing of /e is known yet
    c.call(Stat(path="/e"))  # (the interposer looks at every directory on the way)
    with pytest.raises(FileNotFoundError):
        c.call(Stat(path="/e/f"))
    before = _requests(wb)
    _create(c, "/e/f", b"after a stat")
    assert _requests(wb) == before
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (wb.root / "e" / "f").read_bytes() == b"after a stat"


def test_creates_stay_local_after_the_agents_own_upload_into_the_directory(
        wb: Stack) -> None:
    # The upload changes /d's listing (the kept one goes): /d is still the directory
    # it was, and a name its listing lacked (or the server said is absent) stays so.
    c = wb.clients[0]
    with pytest.raises(FileNotFoundError):
        c.call(Stat(path="/d/later"))  # from the kept listing
    _create(c, "/d/first", b"1")
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    before = _requests(wb)
    _create(c, "/d/later", b"2")
    with pytest.raises(FileNotFoundError):
        c.call(Stat(path="/d/third"))  # the listing is gone: the server says so
    _create(c, "/d/third", b"3")
    assert _requests(wb) == before + 1  # that Stat only
    assert not (wb.root / "d" / "later").exists() and not (wb.root / "d" / "third").exists()
    assert c.call(Sync(wait=True)) == Synced(uploaded=2)
    assert (wb.root / "d" / "third").read_bytes() == b"3"


def test_a_create_in_a_directory_the_server_lacks_fails_at_open(wb: Stack) -> None:
    c = wb.clients[0]
    with pytest.raises(FileNotFoundError):
        c.call(Stat(path="/nodir/f"))  # absent (promised): but so is its directory
    with pytest.raises(FileNotFoundError):
        c.call(Open(path="/nodir/f", flags=CLAIM, mode=0o644, claim=True))
    _create(c, "/d/file", b"")
    with pytest.raises(OSError):  # below a file created here: not a directory
        c.call(Open(path="/d/file/f", flags=CLAIM, mode=0o644, claim=True))


def test_a_guests_exclusive_create_is_decided_by_the_server(wb: Stack) -> None:
    c = wb.clients[0]
    _create(c, "/d/excl", b"", claim=False)
    assert (wb.root / "d" / "excl").exists()  # exclusive across agents: made there at once
    with pytest.raises(FileExistsError):
        c.call(Open(path="/d/excl", flags=CLAIM, mode=0o644))
    # A local create is exclusive among this agent's sandboxes too.
    _create(c, "/d/mine", b"")
    with pytest.raises(FileExistsError):
        c.call(Open(path="/d/mine", flags=CLAIM, mode=0o644))


def test_namespace_changes_find_a_local_create_on_the_server(wb: Stack) -> None:
    c = wb.clients[0]
    _create(c, "/d/a", b"renamed")
    assert c.call(Rename(src="/d/a", dst="/d/b")) is not None
    assert (wb.root / "d" / "b").read_bytes() == b"renamed"
    assert not (wb.root / "d" / "a").exists()
    c.call(Mkdir(path="/d/sub", mode=0o755))
    _create(c, "/d/sub/f", b"")  # (the server's /d/sub is empty)
    with pytest.raises(OSError) as busy:
        c.call(Remove(path="/d/sub", directory=True))
    assert busy.value.errno == errno.ENOTEMPTY


def test_a_created_file_no_writer_closed_still_reaches_the_server(wb: Stack) -> None:
    # flock(1) opens its lock file O_RDONLY|O_CREAT: its close sends no Commit. The
    # agent queues such a file itself (within a fifth of the bound), and at its exit.
    c = wb.clients[0]
    o = c.call(Open(path="/d/lock", flags=os.O_RDONLY | os.O_CREAT | os.O_EXCL, mode=0o644,
                    claim=True))
    assert isinstance(o, Opened)
    assert not (wb.root / "d" / "lock").exists()
    assert wb.agent is not None
    wb.agent.stop()  # SIGTERM: what is queued goes before it ends
    assert (wb.root / "d" / "lock").exists()
    c.close()
    wb.clients.clear()
    wb.start_agent("--upload-delay", "5")  # (queued by the loop 1 s after its create)
    c = wb.client()
    assert wait_until(lambda: _promised_list(wb, c, "/d"), 10)
    assert _listed(c, "/d") == {"old": 13, "lock": 0}
    o = c.call(Open(path="/d/lock2", flags=os.O_RDONLY | os.O_CREAT | os.O_EXCL, mode=0o644,
                    claim=True))
    assert isinstance(o, Opened)
    assert not (wb.root / "d" / "lock2").exists()  # created in the agent
    assert wait_until(lambda: (wb.root / "d" / "lock2").exists(), 10)


def test_local_creates_are_replayed_after_sigkill(wb: Stack) -> None:
    c = wb.clients[0]
    bodies = {f"/d/k{i}": os.urandom(50 + i) for i in range(20)}
    for path, body in bodies.items():
        _create(c, path, body)
    assert not any((wb.root / p[1:]).exists() for p in bodies)  # none on the server yet
    assert wb.agent is not None
    wb.agent.stop(signal.SIGKILL)
    c.close()
    wb.clients.clear()
    wb.start_agent("--upload-delay", "1")
    c = wb.client()
    st = c.call(Stat(path="/d/k3"))  # before or after its upload: the file is there
    assert isinstance(st, StatReply) and st.attrs.size == 53

    def arrived() -> bool:
        return all((wb.root / p[1:]).exists() and (wb.root / p[1:]).read_bytes() == b
                   for p, b in bodies.items())

    assert wait_until(arrived, 15), wb.agent.output()


@contextlib.contextmanager
def _other_agent(stack: Stack, tmp_path: Path) -> Iterator[Client]:
    """A write-through agent on the same server (its own socket and cache)."""
    run2 = tmp_path / "run2"
    run2.mkdir(mode=0o700)
    ep2 = f"ipc://{run2}/agent.sock"
    other = Proc("agent2", [sys.executable, "-m", "synthfs.agent", "--server", stack.server_ep,
                            "--bootstrap-key", str(stack.key), "--listen", ep2,
                            "--cache", str(tmp_path / "cache2")], tmp_path / "agent2.log")
    other.wait_ready()
    try:
        with Client(ep2, timeout=10, retries=0) as c2:
            yield c2
    finally:
        other.stop()


def _write_on_server(c2: Client, path: str, body: bytes) -> None:
    o = c2.call(Open(path=path, flags=CLAIM, mode=0o644))
    assert isinstance(o, Opened)  # the server had no such name
    Path(o.host_path).write_bytes(body)
    c2.call(Commit(path=path, wait=True))


def test_names_in_a_directory_made_here_are_known_absent_until_another_agent_adds_one(
        wb: Stack, tmp_path: Path) -> None:
    c = wb.clients[0]
    c.call(Mkdir(path="/d/n", mode=0o755))
    before = _requests(wb)
    with pytest.raises(FileNotFoundError):
        c.call(Stat(path="/d/n/x"))
    _create(c, "/d/n/x", b"x")
    assert _requests(wb) == before  # no Stat, no create
    with _other_agent(wb, tmp_path) as c2:
        _write_on_server(c2, "/d/n/y", b"theirs")
    assert _listed(c, "/d/n") == {"x": 1, "y": 6}
    st = c.call(Stat(path="/d/n/y"))
    assert isinstance(st, StatReply) and st.attrs.size == 6


def test_a_name_another_agent_created_meanwhile_gets_the_last_upload(
        wb: Stack, tmp_path: Path) -> None:
    # Two agents creating one name: as for any two writers, the server's commit order
    # decides: the last upload wins (README "Write-back"); until its upload this agent
    # shows its own file.
    c = wb.clients[0]
    _create(c, "/d/both", b"ours, queued")
    with _other_agent(wb, tmp_path) as c2:
        _write_on_server(c2, "/d/both", b"theirs, fsynced")
    assert (wb.root / "d" / "both").read_bytes() == b"theirs, fsynced"
    st = c.call(Stat(path="/d/both"))
    assert isinstance(st, StatReply) and st.attrs.size == len(b"ours, queued")
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (wb.root / "d" / "both").read_bytes() == b"ours, queued"


def test_a_closed_file_whose_directory_another_agent_removed_is_not_lost(
        wb: Stack, tmp_path: Path) -> None:
    """Another agent's guest saw the directory empty (the file was queued here) and
    removed it: the upload was refused for good and the closed content dropped for
    everyone (review round 15, finding 4). The directory is made again, the file kept."""
    c = wb.clients[0]
    c.call(Mkdir(path="/d/sub", mode=0o755))
    _create(c, "/d/sub/f", b"closed here")
    with _other_agent(wb, tmp_path) as c2:
        assert c2.call(Remove(path="/d/sub", directory=True)) is not None
    assert not (wb.root / "d" / "sub").exists()
    assert c.call(Sync(wait=True)) == Synced(uploaded=1)
    assert (wb.root / "d" / "sub" / "f").read_bytes() == b"closed here"
    o = c.call(Open(path="/d/sub/f", flags=os.O_RDONLY, mode=0))
    assert isinstance(o, Opened) and Path(o.host_path).read_bytes() == b"closed here"
