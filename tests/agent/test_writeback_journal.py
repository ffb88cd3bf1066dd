"""The write-back journal (agent/writeback.py ``Journal``) on its own: rows, versions kept
aside, a journal an older agent left (no ``sig``/``snap`` columns), group commits."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from synthfs.agent.writeback import Journal, NotCommitted


def test_an_older_agents_journal_is_read_and_extended(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "writeback.sqlite", isolation_level=None)
    db.execute("CREATE TABLE queue (path TEXT PRIMARY KEY, queued REAL NOT NULL)")
    db.execute("INSERT INTO queue VALUES ('/old', 1.0)")
    db.close()
    unlinked: list[str] = []
    j = Journal(str(tmp_path), unlinked.append)
    assert j.rows == {"/old": 1.0} and j.sigs == {"/old": None} and j.snaps == {}
    j.keep("/old", "aside1")
    j.add("/new", (1, 2, 3))
    j.close()
    j = Journal(str(tmp_path), unlinked.append)
    assert j.snaps == {"/old": "aside1"} and j.sigs["/new"] == (1, 2, 3)
    j.add("/old", (4, 5, 6))  # a later close replaces the version kept aside
    assert unlinked == ["aside1"] and "/old" not in j.snaps and j.rows["/old"] == 1.0
    j.keep("/new", "aside2")
    j.done("/new")
    assert unlinked == ["aside1", "aside2"] and "/new" not in j
    j.close()


def _on_disk(tmp_path: Path) -> set[str]:
    db = sqlite3.connect(tmp_path / "writeback.sqlite", isolation_level=None)
    try:
        return {p for (p,) in db.execute("SELECT path FROM queue")}
    finally:
        db.close()


def test_a_batch_is_one_commit(tmp_path: Path) -> None:
    unlinked: list[str] = []
    j = Journal(str(tmp_path), unlinked.append)
    j.add("/a", (1, 1, 1))
    j.keep("/a", "aside")
    with j.batch():
        j.add("/b", (2, 2, 2))
        j.add("/c", (3, 3, 3))
        j.add("/a", (4, 4, 4))  # replaces the version kept aside: deleted after the commit
        assert _on_disk(tmp_path) == {"/a"} and unlinked == []  # nothing committed yet
    assert _on_disk(tmp_path) == {"/a", "/b", "/c"} and unlinked == ["aside"]
    with j.batch():
        j.done("/a")
        j.done("/b")
    assert _on_disk(tmp_path) == {"/c"} and set(j.rows) == {"/c"}
    j.close()


def test_a_batch_that_fails_changes_nothing(tmp_path: Path) -> None:
    unlinked: list[str] = []
    j = Journal(str(tmp_path), unlinked.append)
    j.add("/a", (1, 1, 1))
    j.keep("/a", "aside")
    with pytest.raises(RuntimeError), j.batch():
        j.add("/b", (2, 2, 2))
        j.done("/a")
        raise RuntimeError("between two rows")
    assert set(j.rows) == {"/a"} and j.snaps == {"/a": "aside"} and unlinked == []
    assert _on_disk(tmp_path) == {"/a"}
    # A commit the disk refuses (full) is NotCommitted, an OSError: the rows go back too.
    execute = j._exec

    def full_at_commit(sql: str, args: tuple[object, ...]) -> None:
        if sql == "COMMIT":
            raise OSError(errno.ENOSPC, "write-back journal: database or disk is full")
        execute(sql, args)

    j._exec = full_at_commit  # type: ignore[method-assign]
    with pytest.raises(NotCommitted) as err, j.batch():
        j.add("/b", (2, 2, 2))
        j.add("/a", (3, 3, 3))
    assert err.value.errno == errno.ENOSPC
    assert set(j.rows) == {"/a"} and j.snaps == {"/a": "aside"} and unlinked == []
    assert _on_disk(tmp_path) == {"/a"}
    j.close()
