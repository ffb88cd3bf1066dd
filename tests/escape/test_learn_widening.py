"""synthfs learn: files a run makes and removes do not widen what it learns.

A guest that makes and removes three files in ``/data/secrets`` (reading them
back) learned ``read /data/secrets/*``, the secrets there included, and three
directories made and removed at the root learned ``create, delete`` on
``/data/**`` (review round 9, finding 01). "Most" of a directory is
counted on what the repository held before and after the run; a path the run
made and removed counts only inside a directory the run made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import synthfs_command

from synthfs.policy.engine import Op
from synthfs.policy.learn import Access, Tree, collapse

_seq = iter(range(1_000_000))


def _touched(*paths: str, op: str) -> dict[str, Access]:
    return {p: Access(next(_seq), 42, "/usr/bin/python3", "learn", "openat", p, op, True,
                      "learn.toml:9") for p in paths}


TREE = Tree({
    "/data": frozenset({"fixtures", "secrets", "readme"}),
    "/data/fixtures": frozenset({"a", "sub"}),
    "/data/fixtures/sub": frozenset({"b"}),
    "/data/secrets": frozenset({"k1", "k2"}),
})


def test_temporaries_in_a_directory_of_the_user_do_not_make_its_star() -> None:
    made = ("/data/secrets/t0", "/data/secrets/t1", "/data/secrets/t2")
    out = collapse(_touched(*made, op="read"), Op.READ, TREE, "/data", fresh=made)
    assert set(out) == set(made)


def test_directories_made_and_removed_do_not_make_the_root_a_tree() -> None:
    made = tuple(p for i in range(3) for p in (f"/data/w{i}", f"/data/w{i}/f"))
    for op in (Op.CREATE, Op.DELETE):
        out = collapse(_touched(*made, op=op.value), op, TREE, "/data", fresh=made)
        assert "/data/**" not in out and "/data/*" not in out, out


def test_temporaries_still_count_in_a_directory_the_run_made() -> None:
    tree = Tree({**TREE.dirs, "/data/out": frozenset()})  # made by the run, kept (empty)
    made = ("/data/out", "/data/out/1", "/data/out/2", "/data/out/3")
    out = collapse(_touched(*made[1:], op="create"), Op.CREATE, tree, "/data", fresh=made)
    assert set(out) == {"/data/out/*"}


GUEST = """
import os
for i in range(3):
    p = f"/data/secrets/t{i}"
    open(p, "w").write("x"); open(p).read(); os.unlink(p)
for i in range(3):
    os.mkdir(f"/data/w{i}"); p = f"/data/w{i}/f"; open(p, "w").write("x"); os.unlink(p)
    os.rmdir(f"/data/w{i}")
print(open("/data/readme").read().strip())
"""

ATTACK = """
import os, sys
try:
    open("/data/secrets/k1").read(); sys.exit(66)
except PermissionError:
    pass
try:
    os.unlink("/data/fixtures/a"); sys.exit(66)
except PermissionError:
    pass
"""


@pytest.mark.usefixtures("synthfs")  # skips where the kernel cannot ptrace
def test_a_learned_policy_grants_nothing_the_temporaries_suggested(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for d in ("fixtures/sub", "secrets"):
        (repo / d).mkdir(parents=True)
    for f, text in (("fixtures/a", "f1"), ("fixtures/sub/b", "f2"), ("secrets/k1", "s1"),
                    ("secrets/k2", "s2"), ("readme", "pub")):
        (repo / f).write_text(text)
    learned = tmp_path / "learned.toml"
    done = subprocess.run([*synthfs_command(), "learn", "--data", str(repo), "-o", str(learned),
                           "--", sys.executable, "-c", GUEST],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = learned.read_text()
    assert '"/data/secrets/*"' not in text and '"/data/**"' not in text, text
    enforced = subprocess.run([*synthfs_command(), "run", "--data", str(repo), "--policy",
                               str(learned), "-q", "--", sys.executable, "-c", ATTACK],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert enforced.returncode == 0, (enforced.returncode, enforced.stderr)
    assert (repo / "fixtures/a").exists()
