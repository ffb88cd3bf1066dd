"""Repository symlinks that lead to the host (docs/namespace.md, ``[[mount]] symlinks``).

A repository is data someone else may have written. Its symlinks resolve as
on a real mount by default (``follow``), so a link to a host file reaches
that file and only the ``[host]`` rules stand between a guest and it (the
confused deputy: a repository plants ``out/report.html -> ~/.bashrc`` and a
job writing its report overwrites the user's file). Each case runs natively
first (a plain directory for ``/data``), where the attack must succeed:

* ``anchored`` and ``refuse-host``: a link to a host file (absolute, relative
  climbing out, to its directory) gives nothing, read or write: ENOENT
  (anchored: it names a path inside the mount) or EACCES (refused);
* ``follow`` with ``[host]`` write rules: a write through the link to a
  write-protected host file is EACCES, the audit record names the link, and a
  read through it works (the kernel's way, the positive twin);
* a race that swaps where the link leads after the check (the host link it
  names flips, or the repository link itself is exchanged) never writes the
  protected file in N attempts, while the native control does.

``SYNTHFS_TOCTOU_N`` sets N (default 2,000).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.ptrace

ESCAPED = 66
ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("SYNTHFS_TOCTOU_N", "2000"))
DEEP = "../" * 40
MARKER = "SYNTHFS-VICTIM"

POLICY = """
version = 1
name = "repo-symlinks"
description = "escape suite: repository symlinks to host files"
default = "allow"
[[mount]]
path = "/data"
{symlinks}
[[app]]
name = "job"
match.exe = ["/**"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]
{host}
"""
#: The host readable, writable only in the workspace and /tmp (as policies/ci.toml).
HOST_RULES = """
[host]
read = ["/**"]
write = ["$WORKSPACE/**", "/tmp/**", "/dev/null", "/dev/tty", "/dev/pts/**"]
"""

PROBE = r"""
import errno, os, sys
data, victim, want = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {}
for name in ("abs", "dir/victim", "rel", "dir_rel/victim"):
    for mode in ("r", "a"):
        try:
            with open(f"{data}/{name}", mode) as f:
                if mode == "a":
                    f.write("ESCAPED\n")
                elif "SYNTHFS-VICTIM" in f.read():
                    print(f"{name}: read the host file: ESCAPED")
                    sys.exit(66)
            seen[f"{name} {mode}"] = "opened"
        except OSError as e:
            seen[f"{name} {mode}"] = errno.errorcode[e.errno]
with open(victim) as f:
    if f.read() != "SYNTHFS-VICTIM\n":
        print("the host file was written: ESCAPED")
        sys.exit(66)
print(seen)
sys.exit(0 if set(seen.values()) == {want} else 3)
"""

RACE = r"""
import ctypes, errno, os, sys, threading
target, a, b, victim, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
victim_ino = os.stat(victim).st_ino
stop = False


def swap():  # renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    while not stop:
        libc.syscall(316, -100, a.encode(), -100, b.encode(), 2)


t = threading.Thread(target=swap)
t.start()
counts = {"ok": 0, "escaped": 0}
try:
    for _ in range(n):
        try:
            fd = os.open(target, os.O_WRONLY)
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            counts[name] = counts.get(name, 0) + 1
            continue
        try:
            if os.fstat(fd).st_ino == victim_ino:
                os.write(fd, b"ESCAPED\n")
                counts["escaped"] += 1
                break
            counts["ok"] += 1
        finally:
            os.close(fd)
finally:
    stop = True
    t.join()
print(counts)
sys.exit(66 if counts["escaped"] else 0)
"""


class World:
    """``BASE`` under /var/tmp (outside every write rule): ``home/.bashrc`` and
    ``out/f`` (the victims), ``ws`` (the workspace), ``data`` (the repository)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.victim = self.home / ".bashrc"
        self.out = base / "out"
        self.ws = base / "ws"
        self.data = base / "data"
        self.native = base / "native"
        self.reset()

    def reset(self) -> None:
        for d in (self.home, self.out, self.ws, self.data, self.native):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        self.victim.write_text(MARKER + "\n")
        (self.out / "f").write_text(MARKER + "\n")
        (self.ws / "ok").write_text("mine\n")
        (self.ws / "link").symlink_to(self.ws / "ok")
        (self.ws / "link_alt").symlink_to(self.out / "f")
        (self.ws / "probe.py").write_text(PROBE)
        (self.ws / "race.py").write_text(RACE)
        for repo in (self.data, self.native):
            self.plant(repo)

    def plant(self, repo: Path) -> None:
        """The malicious repository's links (the same in the native tree)."""
        (repo / "abs").symlink_to(self.victim)
        (repo / "dir").mkdir()
        (repo / "dir" / "victim").symlink_to(self.victim)
        (repo / "rel").symlink_to(DEEP + str(self.victim).lstrip("/"))
        (repo / "dir_rel").mkdir()
        (repo / "dir_rel" / "victim").symlink_to(DEEP + str(self.victim).lstrip("/"))
        (repo / "out").mkdir()
        (repo / "out" / "report.html").symlink_to(self.victim)
        (repo / "l").symlink_to(self.ws / "link")  # to a host link that flips
        (repo / "m").symlink_to(self.ws / "ok")  # exchanged with m_alt by the guest
        (repo / "m_alt").symlink_to(self.out / "f")

    def synthfs(
        self, policy: str, argv: list[str], audit: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        pol = self.base / "policy.toml"
        pol.write_text(policy)
        extra = ["--audit", str(audit), "--audit-all"] if audit is not None else []
        return subprocess.run(
            [sys.executable, "-m", "synthfs.cli", "run", "--data", str(self.data),
             "--policy", str(pol), *extra, "--", *argv],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
            env={**os.environ, "WORKSPACE": str(self.ws)},
        )  # fmt: skip


@pytest.fixture
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="synthfs-repolinks-", dir="/var/tmp"))
    try:
        yield World(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(("mode", "want"), [("anchored", "ENOENT"), ("refuse-host", "EACCES")])
@pytest.mark.parametrize("host", ["no [host]", "[host] rules"])
def test_a_repository_link_to_a_host_file_gives_nothing(
    world: World, mode: str, want: str, host: str
) -> None:
    probe = [sys.executable, str(world.ws / "probe.py")]
    native = subprocess.run(
        [*probe, str(world.native), str(world.victim), want], capture_output=True, text=True
    )
    assert native.returncode == ESCAPED, native.stdout + native.stderr
    world.reset()
    policy = POLICY.format(
        symlinks=f'symlinks = "{mode}"', host=HOST_RULES if host == "[host] rules" else ""
    )
    r = world.synthfs(policy, [*probe, "/data", str(world.victim), want])
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert world.victim.read_text() == MARKER + "\n"


def test_followed_link_writes_only_where_the_host_rules_allow(world: World) -> None:
    """The confused deputy: a job writes its report through a planted link."""
    script = (
        "import sys; print(open(sys.argv[1] + '/out/report.html').read().strip()); "
        "open(sys.argv[1] + '/out/report.html', 'w').write('report\\n')"
    )
    native = subprocess.run([sys.executable, "-c", script, str(world.native)])
    assert native.returncode == 0 and world.victim.read_text() == "report\n"  # overwritten
    world.reset()
    audit = world.base / "audit.jsonl"
    policy = POLICY.format(symlinks="", host=HOST_RULES)  # the default: follow
    r = world.synthfs(policy, [sys.executable, "-c", script, "/data"], audit)
    assert r.returncode == 1 and "PermissionError" in r.stderr, r.stdout + r.stderr
    assert r.stdout == MARKER + "\n"  # the read went through: the kernel's way
    assert world.victim.read_text() == MARKER + "\n"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    denied = [x for x in records if x["decision"] == "deny"]
    assert denied and all(x["path"] == str(world.victim) for x in denied), records
    assert all(x.get("via") == "/data/out/report.html" for x in denied), denied


@pytest.mark.parametrize("variant", ["host_link_flips", "repo_link_flips"])
def test_a_swap_after_the_check_never_writes_the_protected_file(
    world: World, variant: str
) -> None:
    """N writes through /data/l while where it leads flips between WS/ok and OUT/f."""

    def argv(data: str) -> list[str]:
        if variant == "host_link_flips":  # /data/l -> WS/link, which flips
            target, a, b = f"{data}/l", str(world.ws / "link"), str(world.ws / "link_alt")
        else:  # /data/m and /data/m_alt exchanged on the mount
            target, a, b = f"{data}/m", f"{data}/m", f"{data}/m_alt"
        return [sys.executable, str(world.ws / "race.py"), target, a, b, str(world.out / "f")]

    for _ in range(3):  # a loaded machine may keep the swapper from winning one run
        native = subprocess.run([*argv(str(world.native)), str(N)], capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        if native.returncode == ESCAPED:
            break
        world.reset()
    assert native.returncode == ESCAPED, native.stdout + native.stderr
    world.reset()
    n = N if variant == "host_link_flips" else max(N // 4, 200)  # a /data rename: ~ms
    r = world.synthfs(POLICY.format(symlinks="", host=HOST_RULES), [*argv("/data"), str(n)])
    assert r.returncode == 0, r.stdout + r.stderr
    counts = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    print(counts)
    assert counts["escaped"] == 0
    assert (world.out / "f").read_text() == MARKER + "\n"
    assert counts["ok"] > 0 and counts.get("EACCES", 0) > 0, counts
    assert set(counts) <= {"ok", "escaped", "EACCES", "ELOOP", "ENOENT"}, counts


def test_a_loop_through_the_host_is_eloop(world: World) -> None:
    """/data/loop -> WS/hl -> /data/loop: ELOOP, as a loop natively (the supervisor
    resolves each side itself: without a bound this would recurse until it died)."""
    (world.data / "loop").symlink_to(world.ws / "hl")
    (world.ws / "hl").symlink_to("/data/loop")
    script = (
        "import errno, os\n"
        "for p in ('/data/loop', '/data/loop/x', '" + str(world.ws / "hl") + "'):\n"
        "    try:\n"
        "        os.stat(p)\n"
        "        print(p, 'ok')\n"
        "    except OSError as e:\n"
        "        print(p, errno.errorcode[e.errno])\n"
    )
    r = world.synthfs(POLICY.format(symlinks="", host=""), [sys.executable, "-c", script])
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[-1] for line in r.stdout.splitlines()] == ["ELOOP"] * 3, r.stdout
