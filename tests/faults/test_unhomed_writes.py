"""Writes through an fd after its name was removed while the file kept another name.

Natively the file's other name holds what the fd writes after the remove (a
log rotated with ``link`` + ``unlink`` while its writer keeps the fd). Under
synthfs the fd writes the local copy of the removed name, which no name
reaches any more: ``fsync`` and ``close`` say EIO instead of acknowledging
writes that are in no file (review round 9, finding 04). What was written
before the remove is in the other name, as natively; a removed name whose file
had no other name loses its later writes natively too, and fsync stays silent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

#: the guest's last step: fsync and close the fd ``fd``, printing what each said
FSYNC_CLOSE = """
for name, call in (("fsync", os.fsync), ("close", os.close)):
    try:
        call(fd)
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
"""

GUEST = """
import errno, os, sys
os.chdir(sys.argv[1])
link, write_after = sys.argv[2] == "link", sys.argv[3] == "write"
fd = os.open("c", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"one,")
if link:
    os.link("c", "d")
os.unlink("c")
if write_after:
    os.write(fd, b"two")
""" + FSYNC_CLOSE + """print("d:", open("d").read() if os.path.exists("d") else None)
"""


@pytest.mark.parametrize("mode", ["--write-through", "--write-back"])
@pytest.mark.parametrize(
    ("link", "write", "expected"),
    [
        ("link", "write", ["fsync EIO", "close EIO", "d: one,"]),
        ("link", "none", ["fsync ok", "close ok", "d: one,"]),
        ("nolink", "write", ["fsync ok", "close ok", "d: None"]),
    ],
)
def test_writes_no_name_reaches_are_not_acknowledged(
    synthfs, tmp_path: Path, mode: str, link: str, write: str, expected: list[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = [sys.executable, "-c", GUEST, "/data", link, write]
    out = synthfs.run(repo, argv, cwd=tmp_path, extra=[mode])
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == expected, out.show()
    if link == "link":
        assert (repo / "d").read_text() == "one,"  # what fsync acknowledged, no more
    assert not (repo / "c").exists()
