"""Writes through an fd after a rename replaced its name while the file kept another.

The rename form of review round 9's finding 04 (tests/faults/test_unhomed_writes.py
covers ``unlink``): ``rename(b, a)`` removes the name ``a`` as ``unlink(a)`` does.
Natively, when ``a``'s file has a second name ``c`` (``link``), what an fd still
open on ``a`` writes after the rename is in ``c``. Under synthfs the fd writes the
replaced name's local copy, which no name reaches: ``fsync`` and ``close`` must
say EIO rather than acknowledge writes that are in no file (they said ok, and
``c`` lacked them, under write-through and write-back). A replaced name whose
file had no other name loses its later writes natively too: that stays silent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_unhomed_writes import FSYNC_CLOSE

pytestmark = pytest.mark.ptrace

GUEST = """
import errno, os, sys
os.chdir(sys.argv[1])
link, write_after = sys.argv[2] == "link", sys.argv[3] == "write"
fd = os.open("a", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"one,")
if link:
    os.link("a", "c")
with open("b", "w") as f:
    f.write("B")
os.rename("b", "a")
if write_after:
    os.write(fd, b"two")
""" + FSYNC_CLOSE + """print("a:", open("a").read())
print("c:", open("c").read() if os.path.exists("c") else None)
"""


@pytest.mark.parametrize("mode", ["--write-through", "--write-back"])
@pytest.mark.parametrize(
    ("link", "write", "expected"),
    [
        ("link", "write", ["fsync EIO", "close EIO", "a: B", "c: one,"]),
        ("link", "none", ["fsync ok", "close ok", "a: B", "c: one,"]),
        ("nolink", "write", ["fsync ok", "close ok", "a: B", "c: None"]),
    ],
)
def test_rename_over_a_linked_name_does_not_acknowledge_lost_writes(
    synthfs, tmp_path: Path, mode: str, link: str, write: str, expected: list[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = [sys.executable, "-c", GUEST, "/data", link, write]
    out = synthfs.run(repo, argv, cwd=tmp_path, extra=[mode])
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == expected, out.show()
    assert (repo / "a").read_text() == "B"
    if link == "link":
        assert (repo / "c").read_text() == "one,"  # what fsync acknowledged, no more


OLD_LINK = """
import errno, os, sys
os.chdir(sys.argv[1])
fd = os.open("a", os.O_WRONLY | os.O_APPEND)
os.write(fd, b"one,")
if sys.argv[2] == "unlink":
    os.unlink("a")
else:
    with open("b", "w") as f:
        f.write("B")
    os.rename("b", "a")
os.write(fd, b"two")
""" + FSYNC_CLOSE + """print("c:", open("c").read())
"""


@pytest.mark.parametrize("mode", ["--write-through", "--write-back"])
@pytest.mark.parametrize("how", ["unlink", "rename"])
def test_a_link_the_repository_held_before_the_run_counts(
    synthfs, tmp_path: Path, mode: str, how: str
) -> None:
    """``a`` and ``c`` were one file before the run and the guest never met ``c``: the
    run knew of no other name, and acknowledged writes ``c`` never got (natively
    ``c`` holds ``zero,one,two``)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a").write_text("zero,")
    (repo / "c").hardlink_to(repo / "a")
    argv = [sys.executable, "-c", OLD_LINK, "/data", how]
    out = synthfs.run(repo, argv, cwd=tmp_path, extra=[mode])
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == ["fsync EIO", "close EIO", "c: zero,one,"], out.show()


SAME_FILE = """
import errno, os, sys
os.chdir(sys.argv[1])
fd = os.open("a", os.O_WRONLY | os.O_APPEND)
os.write(fd, b"one,")
os.replace("c", "a")  # two names of one file: rename(2) does nothing
os.write(fd, b"two")
""" + FSYNC_CLOSE + """print("a:", open("a").read(), "c:", open("c").read(), os.stat("a").st_nlink)
"""


@pytest.mark.parametrize("mode", ["--write-through", "--write-back"])
def test_a_rename_over_another_name_of_the_same_file_does_nothing(
    synthfs, tmp_path: Path, mode: str
) -> None:
    """``a`` and ``c`` are one file (held by the repository before the run): renaming
    ``c`` over ``a`` changes nothing, and the fd open on ``a`` keeps writing the file
    both names hold (a quick outside review found the write after it lost, fsync ok)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a").write_text("zero,")
    (repo / "c").hardlink_to(repo / "a")
    argv = [sys.executable, "-c", SAME_FILE, "/data"]
    out = synthfs.run(repo, argv, cwd=tmp_path, extra=[mode])
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == [
        "fsync ok", "close ok", "a: zero,one,two c: zero,one,two 2"], out.show()
    assert (repo / "a").read_text() == (repo / "c").read_text() == "zero,one,two"
    assert (repo / "a").stat().st_ino == (repo / "c").stat().st_ino
