"""The write-back journal (agent/writeback.py ``Journal``) on its own: rows, versions kept
aside, and a journal an older agent left (no ``sig``/``snap`` columns)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from synthfs.agent.writeback import Journal


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
