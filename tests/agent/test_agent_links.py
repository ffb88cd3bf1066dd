"""Hard links through a real agent and server: one file, several names, one content."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from agent_stack import Stack

from synthfs.protocol.messages import Commit, Link, Open, Opened, Stat, StatReply


def _open(stack: Stack, path: str, flags: int = os.O_RDONLY) -> Opened:
    reply = stack.call(Open(path=path, flags=flags, mode=0o644))
    assert isinstance(reply, Opened)
    return reply


def _stat(stack: Stack, path: str) -> StatReply:
    reply = stack.call(Stat(path=path))
    assert isinstance(reply, StatReply)
    return reply


def test_link_makes_one_file_under_two_names(running: Stack) -> None:
    (running.root / "d").mkdir()
    (running.root / "a").write_bytes(b"first\n")
    _open(running, "/a")  # a cached copy of the first name, before the link
    reply = running.call(Link(src="/a", dst="/d/b"))
    assert isinstance(reply, StatReply) and reply.attrs.nlink == 2
    assert os.stat(running.root / "a").st_ino == os.stat(running.root / "d" / "b").st_ino
    assert _stat(running, "/a").attrs.nlink == 2  # the cached nlink 1 is not kept


def test_a_write_through_one_name_is_seen_through_the_other(running: Stack) -> None:
    (running.root / "a").write_bytes(b"first\n")
    running.call(Link(src="/a", dst="/b"))
    assert Path(_open(running, "/a").host_path).read_bytes() == b"first\n"
    w = _open(running, "/b", os.O_WRONLY)
    with open(w.host_path, "ab") as f:  # the guest's write; no Commit yet (a dup2 close)
        f.write(b"more\n")
    assert _stat(running, "/a").attrs.size == 11  # b's copy went to the server first
    assert Path(_open(running, "/a").host_path).read_bytes() == b"first\nmore\n"
    assert (running.root / "a").read_bytes() == b"first\nmore\n"
    assert os.stat(running.root / "a").st_nlink == 2  # rewritten in place: still one file
    running.call(Commit(path="/b"))
    assert (running.root / "b").read_bytes() == b"first\nmore\n"


def test_link_errors_come_back_as_the_kernel_gives_them(running: Stack) -> None:
    (running.root / "a").write_bytes(b"x")
    (running.root / "d").mkdir()
    for src, dst, want in [("/nope", "/n", errno.ENOENT), ("/a", "/d", errno.EEXIST),
                           ("/d", "/e", errno.EPERM), ("/a", "/nope/n", errno.ENOENT)]:
        with pytest.raises(OSError) as info:
            running.call(Link(src=src, dst=dst))
        assert info.value.errno == want, (src, dst)
