"""interposer/inodes.py: one st_ino per file for the run, never two live files' one.

A dict plays the server's file system: path -> its inode number now, with the
reuse ext4 does (a number freed by a rewrite's rename goes to the next file).
"""

from __future__ import annotations

import errno

import pytest

from synthfs.interposer.inodes import FRESH_BASE, Inodes


class Server:
    """Paths -> inode numbers, handing out the lowest free number (ext4-like reuse)."""

    def __init__(self) -> None:
        self.ino: dict[str, int] = {}
        self.asked: list[str] = []
        self.fail: set[str] = set()
        self.ctime: dict[int, int] = {}
        self.clock = 0

    def _free(self) -> int:
        n = 12
        while n in self.ino.values():
            n += 1
        return n

    def create(self, path: str) -> int:
        self.ino[path] = self._free()
        return self.ino[path]

    def rewrite(self, path: str) -> int:
        """An upload: a staged file (a new number) renamed over ``path``."""
        staged = self._free()
        self.ino[path] = staged
        return staged

    def state(self, ino: int) -> tuple[int, int]:
        """What the server says of object ``ino`` now: its link count, and a ctime
        that moves whenever a name of it comes or goes (every change here does)."""
        return sum(n == ino for n in self.ino.values()), self.ctime.get(ino, 0)

    def touch(self, ino: int) -> None:
        """A name of ``ino`` came or went: its ctime moves."""
        self.ctime[ino] = self.clock = self.clock + 1

    def current(self, path: str) -> tuple[int, object] | None:
        self.asked.append(path)
        if path in self.fail:
            raise OSError(errno.EIO, "agent gone")
        ino = self.ino.get(path)
        return None if ino is None else (ino, self.state(ino))


@pytest.fixture
def srv() -> Server:
    return Server()


@pytest.fixture
def inodes(srv: Server) -> Inodes:
    return Inodes(srv.current)


def test_first_number_kept_across_rewrites(srv: Server, inodes: Inodes) -> None:
    first = inodes.show("/big", srv.create("/big"))
    assert inodes.show("/big", srv.rewrite("/big")) == first
    assert inodes.show("/big", srv.rewrite("/big")) == first


def test_a_number_freed_by_a_rewrite_and_reused_is_not_shown_twice(
    srv: Server, inodes: Inodes
) -> None:
    """The du case: big written (a new server file), then copy gets big's old number."""
    big = inodes.show("/big", srv.create("/big"))
    srv.rewrite("/big")
    copy_ino = srv.create("/copy")
    assert copy_ino == big  # the server reused it
    shown = inodes.show("/copy", copy_ino)
    assert shown != big and shown >= FRESH_BASE
    assert srv.asked == ["/big"]  # one question, only on the meeting
    assert inodes.show("/copy", copy_ino) == shown  # and kept
    assert inodes.show("/big", srv.ino["/big"]) == big


def test_many_reuses_give_distinct_numbers(srv: Server, inodes: Inodes) -> None:
    shown = set()
    for i in range(20):
        p = f"/g{i}"
        shown.add(inodes.show(p, srv.create(p)))
        inodes.show(p, srv.rewrite(p))
    assert len(shown) == 20


def test_a_server_number_in_the_fresh_range_is_checked_too(srv: Server, inodes: Inodes) -> None:
    srv.ino["/a"] = 5
    inodes.show("/a", 5)
    srv.ino["/a"] = 6  # rewritten
    srv.ino["/b"] = 5  # reused
    fresh = inodes.show("/b", 5)
    srv.ino["/c"] = fresh  # a server that counts up there as well
    assert inodes.show("/c", fresh) not in (fresh, 5)


def test_hard_links_share_one_number(srv: Server, inodes: Inodes) -> None:
    ino = srv.create("/h1")
    srv.ino["/h2"] = ino  # linked before this run: a listing shows both
    assert inodes.show("/h1", ino) == inodes.show("/h2", ino) == ino
    assert srv.asked == ["/h1"]


def test_link_shares_the_pinned_number_after_a_rewrite(srv: Server, inodes: Inodes) -> None:
    first = inodes.show("/a", srv.create("/a"))
    srv.rewrite("/a")
    srv.ino["/b"] = srv.ino["/a"]
    inodes.link("/a", "/b", srv.ino["/b"])
    assert inodes.get("/b") == first
    assert inodes.show("/b", srv.ino["/b"]) == first


def test_link_of_a_path_never_shown(srv: Server, inodes: Inodes) -> None:
    ino = srv.create("/a")
    srv.ino["/b"] = ino
    inodes.link("/a", "/b", ino)
    assert inodes.get("/a") == inodes.get("/b") == ino


def test_removed_path_gives_its_number_up(srv: Server, inodes: Inodes) -> None:
    a = inodes.show("/a", srv.create("/a"))
    del srv.ino["/a"]
    inodes.forget("/a")
    assert inodes.show("/b", srv.create("/b")) == a
    assert srv.asked == []


def test_a_path_removed_elsewhere_gives_its_number_up_at_the_meeting(
    srv: Server, inodes: Inodes
) -> None:
    a = inodes.show("/a", srv.create("/a"))
    del srv.ino["/a"]  # another process removed it: this sandbox never saw it go
    assert inodes.show("/b", srv.create("/b")) == a
    assert inodes.get("/a") is None


def test_cannot_tell_means_not_shared(srv: Server, inodes: Inodes) -> None:
    ino = srv.create("/h1")
    srv.ino["/h2"] = ino
    inodes.show("/h1", ino)
    srv.fail.add("/h1")
    assert inodes.show("/h2", ino) != ino  # split rather than risk two files' one number


def test_rename_moves_numbers_of_a_tree_and_replaces_the_target(
    srv: Server, inodes: Inodes
) -> None:
    d = inodes.show("/d", srv.create("/d"))
    f = inodes.show("/d/f", srv.create("/d/f"))
    t = inodes.show("/t", srv.create("/t"))
    inodes.show("/t/x", srv.create("/t/x"))
    inodes.move("/d", "/t")
    assert (inodes.get("/t"), inodes.get("/t/f")) == (d, f)
    assert inodes.get("/d") is None and inodes.get("/d/f") is None
    assert inodes.get("/t/x") is None
    assert t not in (inodes.get(p) for p in ("/t", "/t/f"))
    inodes.move("/t", "/t")  # onto itself: nothing changes
    assert (inodes.get("/t"), inodes.get("/t/f")) == (d, f)
    assert len(inodes) == 2


# -- meetings with known aliases cost nothing (a directory of N hard links) -------------------


def _links(srv: Server, n: int) -> int:
    ino = srv.create("/e/f0")
    for i in range(1, n):
        srv.ino[f"/e/l{i}"] = ino
    srv.touch(ino)
    return ino


def test_hard_links_listed_together_cost_no_question(srv: Server, inodes: Inodes) -> None:
    """``ls -li`` of N links: one listing's attributes say one object, one state: no
    request per pair (one each took N=300 links 130 s)."""
    ino = _links(srv, 300)
    state = srv.state(ino)
    assert {inodes.show(p, ino, state) for p in list(srv.ino)} == {ino}
    assert srv.asked == []


def test_a_new_state_is_asked_once_then_known(srv: Server, inodes: Inodes) -> None:
    ino = _links(srv, 50)
    paths = list(srv.ino)
    old = srv.state(ino)
    for p in paths[:10]:
        inodes.show(p, ino, old)
    srv.ino["/e/more"] = ino  # linked elsewhere: a new state
    srv.touch(ino)
    new = srv.state(ino)
    for p in [*paths[10:], "/e/more"]:
        assert inodes.show(p, ino, new) == ino
    assert sorted(srv.asked) == sorted(paths[:10])  # once each, at the first meeting


def test_a_link_rewritten_elsewhere_moves_the_state_and_splits(
    srv: Server, inodes: Inodes
) -> None:
    """A link of the group rewritten by another process: the object lost a name (its
    ctime and count moved), so the next meeting asks; the rewritten path is another
    file now, which shows the number: the new path does not join it."""
    ino = _links(srv, 3)
    state = srv.state(ino)
    inodes.show("/e/f0", ino, state)
    inodes.show("/e/l1", ino, state)
    srv.rewrite("/e/f0")
    srv.touch(ino)  # the old object lost the name /e/f0
    shown = inodes.show("/e/l2", ino, srv.state(ino))
    assert shown != ino and shown >= FRESH_BASE
    assert "/e/f0" in srv.asked


def test_a_stale_state_is_not_trusted_once_this_sandbox_changed_a_path(
    srv: Server, inodes: Inodes
) -> None:
    """The attributes of a listing taken before this sandbox rewrote a link still
    carry the old state: after :meth:`Inodes.changed` the next meeting asks."""
    ino = _links(srv, 3)
    state = srv.state(ino)
    inodes.show("/e/f0", ino, state)
    srv.rewrite("/e/f0")  # this sandbox's commit (the server takes it now or later)
    inodes.changed("/e/f0")
    assert inodes.show("/e/l1", ino, state) != ino
    assert srv.asked == ["/e/f0"]


def test_no_state_means_every_meeting_asks(srv: Server, inodes: Inodes) -> None:
    ino = _links(srv, 3)
    for p in list(srv.ino):
        assert inodes.show(p, ino, None) == ino
    assert len(srv.asked) == 3  # 0 + 1 + 2: as before, for a server that gives no state
