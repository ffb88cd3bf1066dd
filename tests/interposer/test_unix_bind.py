"""bind of an AF_UNIX path by a real guest, without ``[host]`` rules: the socket is
made where the kernel would make it natively, under the name the guest gave.

Before (review round 12, finding 3), the supervisor gave the kernel the whole
resolved path cut at 107 bytes: a short relative name in a deep directory made a
socket under another name in the parent directory, bind said 0, and getsockname
showed the cut path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

GUEST = """
import os, socket, sys
os.chdir(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("sock")
s.listen()
print("name", s.getsockname())
print("made", sorted(os.listdir(".")))
c = socket.socket(socket.AF_UNIX)
c.connect("sock")
print("connected")
"""


def test_a_relative_name_in_a_deep_directory(synthfs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    runs = {}
    for how in ("native", "synthfs"):
        deep = tmp_path / how / ("D" * 60) / ("E" * 60)
        deep.mkdir(parents=True)
        assert len(str(deep / "sock")) > 107
        argv = [sys.executable, "-c", GUEST, str(deep)]
        runs[how] = (helpers.run_native(argv, cwd=tmp_path) if how == "native"
                     else synthfs.run(repo, argv, cwd=tmp_path))
        assert sorted(p.name for p in deep.iterdir()) == ["sock"], runs[how].show()
        assert sorted(p.name for p in deep.parent.iterdir()) == ["E" * 60], runs[how].show()
    native, under = runs["native"], runs["synthfs"]
    assert native.status == 0 and native.stdout == "name sock\nmade ['sock']\nconnected\n", \
        native.show()
    assert (under.status, under.stdout) == (native.status, native.stdout), under.show()
