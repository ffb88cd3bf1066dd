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

import helpers
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


#: maildir delivery: write tmp/N, link it to new/N, unlink tmp/N, close; then wait
DELIVER = """
import os, sys
os.makedirs("/data/md/tmp"); os.makedirs("/data/md/new")
for i in range(int(sys.argv[1])):
    fd = os.open(f"/data/md/tmp/{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"message %d\\n" % i)
    os.link(f"/data/md/tmp/{i}", f"/data/md/new/{i}")
    os.unlink(f"/data/md/tmp/{i}")
    os.close(fd)
    if i == 0:
        print("first", flush=True)
        sys.stdin.readline()
print("delivered", flush=True)
sys.stdin.readline()
"""


def test_link_then_unlink_deliveries_hold_no_supervisor_fd(synthfs, tmp_path: Path) -> None:
    """Before (review round 12, finding 5) the supervisor held an fd on each removed
    name's copy until the run ended: a maildir's deliveries ran it out of fds (EMFILE
    for every guest's exec and host open)."""
    import os

    repo = tmp_path / "repo"
    repo.mkdir()
    n = 40
    grew = helpers.supervisor_fd_growth(synthfs, repo, [sys.executable, "-c", DELIVER, str(n)],
                                        cwd=tmp_path)
    assert grew < n // 4, grew
    assert sorted(os.listdir(repo / "md" / "new"), key=int) == [str(i) for i in range(n)]
    assert (repo / "md" / "new" / "7").read_text() == "message 7\n"
    assert os.listdir(repo / "md" / "tmp") == []
