"""Conformance: the same real program natively and under ``synthfs run`` must agree.

For each case in :data:`conformance_cases.CASES`: build the starting tree
twice (a native temporary directory, and the repository directory served as
``/data``), run the program on each, and require the same exit status,
stdout, stderr (native root shown as ``/data``) and resulting tree. The
synthfs side fails, never skips, when synthfs does not work; it skips only
when the kernel cannot ptrace/seccomp at all (see ``tests/conftest.py``).

Run: ``.venv/bin/python -m pytest tests/conformance`` (``SYNTHFS_TEST_MODE=agent``
to go through an embedded stack and ``--agent`` instead of ``--data``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import helpers
import pytest
from conformance_cases import (
    CASES,
    PY,
    Case,
    Side,
    compare,
    env_for,
    finish,
    run_case_native,
)

pytestmark = pytest.mark.ptrace


def run_case_synthfs(
    case: Case, base: Path, outside: Path, home: Path, synthfs: helpers.SynthfsLauncher
) -> Side:
    repo = (base / "repo").resolve()
    case.tree(repo)
    with synthfs.stack(repo) as stack:
        out = synthfs.run(
            repo,
            case.render(helpers.MOUNT),
            cwd=outside,
            stack=stack,
            env=env_for(home),
            umask=case.umask,
        )
    # Nothing maps back here: a host path (repository, cache) in the output is a leak.
    return finish(case, out, helpers.MOUNT, repo, repo=True)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    outside, home = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    home.mkdir()
    return outside, home


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.diverges))
        if c.diverges
        else c
        for c in CASES
    ],
    ids=[c.name for c in CASES],
)
def test_conformance(case: Case, tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    missing = [t for t in case.needs if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (add to .ci/setup to run this case)")
    outside, home = _dirs(tmp_path)
    native = run_case_native(case, tmp_path / "native", outside, home)
    guest = run_case_synthfs(case, tmp_path / "synthfs", outside, home, synthfs)
    problems = compare(case, native, guest)
    shown = " ".join(a if len(a) < 100 else a[:60].strip() + " ..." for a in case.render("/data"))
    assert not problems, f"case {case.name}: {shown}\n" + "\n".join(problems)


def test_second_run_sees_first_runs_writes(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    """Writes reach the repository at exit; a fresh run (and the host) sees them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    outside, home = _dirs(tmp_path)
    env = env_for(home)
    with synthfs.stack(repo) as stack:
        w = synthfs.run(
            repo,
            ["sh", "-c", "echo first > /data/f && mkdir /data/g && echo 2 > /data/g/h"],
            cwd=outside,
            stack=stack,
            env=env,
        )
        assert w.status == 0, w.show()
        r = synthfs.run(repo, ["cat", "/data/f", "/data/g/h"], cwd=outside, stack=stack, env=env)
    assert (r.status, r.stdout, r.stderr) == (0, "first\n2\n", ""), r.show()
    assert (repo / "f").read_text() == "first\n"
    assert (repo / "g" / "h").read_text() == "2\n"


def test_host_change_between_runs_is_seen(tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    """Close-to-open: a file changed in the repository between two runs reads new."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "v").write_text("old\n")
    outside, home = _dirs(tmp_path)
    env = env_for(home)
    with synthfs.stack(repo) as stack:
        a = synthfs.run(repo, ["cat", "/data/v"], cwd=outside, stack=stack, env=env)
        (repo / "v").write_text("new content\n")
        b = synthfs.run(repo, ["cat", "/data/v"], cwd=outside, stack=stack, env=env)
    assert (a.status, a.stdout) == (0, "old\n"), a.show()
    assert (b.status, b.stdout) == (0, "new content\n"), b.show()


def test_stdin_reaches_the_guest(tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    outside, home = _dirs(tmp_path)
    with synthfs.stack(repo) as stack:
        argv = synthfs.argv(
            repo, ["sh", "-c", "cat > /data/in.txt && wc -c < /data/in.txt"], stack=stack
        )
        p = subprocess.run(
            argv, input=b"piped through\n", capture_output=True, cwd=outside,
            env=env_for(home), timeout=helpers.TIMEOUT,
        )
    assert (p.returncode, p.stdout, p.stderr) == (0, b"14\n", b""), p
    assert (repo / "in.txt").read_bytes() == b"piped through\n"


def test_read_only_refuses_writes_and_keeps_tree(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    """``--read-only``: reads work, every kind of write gets an error, the tree is unchanged."""
    from conformance_cases import build_standard

    repo = tmp_path / "repo"
    build_standard(repo)
    before = helpers.snapshot(repo)
    outside, home = _dirs(tmp_path)
    script = (
        "cat /data/a.txt; "
        "echo x > /data/new 2>/dev/null && echo WROTE-NEW; "
        "echo x >> /data/a.txt 2>/dev/null && echo APPENDED; "
        "mkdir /data/m 2>/dev/null && echo MKDIR; "
        "rm /data/lines.txt 2>/dev/null && echo REMOVED; "
        "mv /data/a.txt /data/b 2>/dev/null && echo RENAMED; "
        "chmod 777 /data/a.txt 2>/dev/null && echo CHMOD; "
        "ln -s a /data/l2 2>/dev/null && echo SYMLINK; "
        "touch /data/a.txt 2>/dev/null && echo TOUCHED; "
        "truncate -s 0 /data/a.txt 2>/dev/null && echo TRUNCATED; "
        "echo done"
    )
    with synthfs.stack(repo) as stack:
        out = synthfs.run(
            repo,
            ["sh", "-c", script],
            cwd=outside,
            stack=stack,
            env=env_for(home),
            extra=["--read-only"],
        )
    assert (out.status, out.stdout) == (0, "hello\nworld\ndone\n"), out.show()
    assert helpers.diff_trees(before, helpers.snapshot(repo)) == []


#: Paths at PATH_MAX, names at NAME_MAX, and a tree deeper than PATH_MAX reached by
#: relative paths. argv[1] is the root.
PY_PATH_MAX = """
import errno, os, sys
r = sys.argv[1]
def t(label, f):
    try:
        f()
        print(label, "ok")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno))
def of_length(n):
    s = r
    while len(s) + 201 < n:
        s += "/" + "y" * 200
    return s + "/" + "z" * (n - len(s) - 1)
for n in (4095, 4096, 5000):
    t(f"stat {n} bytes", lambda: os.stat(of_length(n)))
    t(f"mkdir {n} bytes", lambda: os.mkdir(of_length(n)))
    t(f"creat {n} bytes", lambda: os.open(of_length(n), os.O_CREAT | os.O_WRONLY))
for n in (255, 256):
    t(f"creat name of {n}", lambda: os.close(os.open(f"{r}/" + "n" * n, os.O_CREAT | os.O_WRONLY)))
    t(f"stat name of {n} inside", lambda: os.stat(f"{r}/" + "n" * n + "/x"))
os.chdir(r)
depth = 0
try:
    while depth < 25:
        os.mkdir("d" * 200)
        os.chdir("d" * 200)
        depth += 1
    print("deep: mkdir and chdir 25 levels ok")
except OSError as e:
    print("deep: beyond PATH_MAX", errno.errorcode.get(e.errno, e.errno))
"""


def test_paths_at_and_beyond_path_max(tmp_path: Path, synthfs: helpers.SynthfsLauncher) -> None:
    """Absolute paths of 4096 bytes and names of 256: the kernel's ENAMETOOLONG on both
    sides. A tree deeper than PATH_MAX (relative mkdir+chdir): the kernel walks on; synthfs
    says ENAMETOOLONG where a repository path would pass 4095 bytes (docs/namespace.md).
    It was EIO, with a supervisor traceback on stderr."""
    outside, home = _dirs(tmp_path)
    native_root = tmp_path / "native"
    native_root.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = [PY, "-c", PY_PATH_MAX]
    native = helpers.run_native([*argv, str(native_root)], cwd=outside, env=env_for(home))
    guest = synthfs.run(repo, [*argv, helpers.MOUNT], cwd=outside, env=env_for(home))
    assert native.status == 0 and native.stderr == "", native.show()
    assert (guest.status, guest.stderr) == (0, ""), guest.show()
    *same, deep = native.stdout.splitlines()
    assert "ENAMETOOLONG" in native.stdout and deep == "deep: mkdir and chdir 25 levels ok"
    assert guest.stdout.splitlines() == [*same, "deep: beyond PATH_MAX ENAMETOOLONG"], guest.show()
