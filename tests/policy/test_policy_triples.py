"""Policy triples (policy, command, expected output and status) run for real.

A real server and agent (``synthfs run --data``), real guests under ptrace:
identity follows execve, a sha256 pin that does not match denies, ENOENT
hides an entry from listings and lookups alike.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

SYNTHFS = helpers.synthfs_command()
ROOT = Path(__file__).resolve().parents[2]
SH = os.path.realpath(shutil.which("sh") or "/bin/sh")
CAT = os.path.realpath(shutil.which("cat") or "/bin/cat")
HEAD = os.path.realpath(shutil.which("head") or "/usr/bin/head")
LS = os.path.realpath(shutil.which("ls") or "/bin/ls")
STAT = os.path.realpath(shutil.which("stat") or "/usr/bin/stat")


def synthfs_run(repo: Path, policy: Path, audit: Path, script: str):
    return subprocess.run(
        [*SYNTHFS, "run", "--data", str(repo), "--policy", str(policy), "--audit", str(audit),
         "--", SH, "-c", script],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )  # fmt: skip


def records(audit: Path) -> list[dict[str, object]]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines()]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pub").mkdir(parents=True)
    (root / "pub" / "a.txt").write_text("public a\n")
    (root / "pub" / "hidden.txt").write_text("you cannot see me\n")
    return root


def test_exec_changes_identity(repo: Path, tmp_path: Path) -> None:
    """sh and cat may read; sh execs head in the same process, which may not."""
    policy = tmp_path / "exec.toml"
    policy.write_text(
        textwrap.dedent(f"""\
        version = 1
        name = "exec"
        description = "sh and cat read /data; head reads nothing"
        default = "deny"

        [[mount]]
        path = "/data"

        [[app]]
        name = "shell"
        match.exe = ["{SH}"]
        allow = [{{ paths = ["/data/**"], ops = ["read", "stat", "list"] }}]

        [[app]]
        name = "cat"
        match.exe = ["{CAT}"]
        allow = [{{ paths = ["/data/**"], ops = ["read", "stat"] }}]

        [[app]]
        name = "head"
        match.exe = ["{HEAD}"]
        """)
    )
    audit = tmp_path / "audit.jsonl"
    script = (
        "read line < /data/pub/a.txt && echo sh:$line; cat /data/pub/a.txt; "
        "echo pid=$$; exec head -n1 /data/pub/a.txt"
    )
    r = synthfs_run(repo, policy, audit, script)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["sh:public a", "public a"], r.stderr
    pid = int(lines[2].removeprefix("pid="))
    assert "Permission denied" in r.stderr
    denied = [rec for rec in records(audit) if rec["decision"] == "deny"]
    assert denied and {rec["app"] for rec in denied} == {"head"}
    assert all(rec["pid"] == pid and rec["exe"] == HEAD for rec in denied)
    assert denied[0]["errno"] == errno.EACCES and denied[0]["path"] == "/data/pub/a.txt"


@pytest.mark.parametrize("pin_matches", [True, False])
def test_sha256_pin(repo: Path, tmp_path: Path, pin_matches: bool) -> None:
    digest = hashlib.sha256(Path(CAT).read_bytes()).hexdigest()
    pin = digest if pin_matches else "0" * 64
    policy = tmp_path / "pin.toml"
    policy.write_text(
        textwrap.dedent(f"""\
        version = 1
        name = "pin"
        description = "cat reads /data only when its binary is the pinned one"
        default = "allow"

        [[mount]]
        path = "/data"

        [[app]]
        name = "cat"
        match.exe = ["{CAT}"]
        match.sha256 = "{pin}"
        allow = [{{ paths = ["/data/**"], ops = ["*"] }}]
        """)
    )
    audit = tmp_path / "audit.jsonl"
    r = synthfs_run(repo, policy, audit, "cat /data/pub/a.txt; echo rc=$?")
    if pin_matches:
        assert r.stdout == "public a\nrc=0\n", r.stderr
        assert records(audit) == []
    else:
        assert r.stdout == "rc=1\n", r.stderr
        assert "Permission denied" in r.stderr
        denied = [rec for rec in records(audit) if rec["decision"] == "deny"]
        assert denied and all(rec["exe"] == CAT and rec["errname"] == "EACCES" for rec in denied)
        assert all(rec["rule"] == "pin.toml:12" for rec in denied)  # the line of match.sha256


def test_enoent_hides_an_entry_from_listings_and_lookups(repo: Path, tmp_path: Path) -> None:
    policy = tmp_path / "hide.toml"
    policy.write_text(
        textwrap.dedent("""\
        version = 1
        name = "hide"
        description = "everything visible but /data/pub/hidden.txt, which does not exist"
        default = "allow"

        [[mount]]
        path = "/data"

        [[app]]
        name = "everyone"
        match.exe = ["/**"]
        allow = [{ paths = ["/data/**"], ops = ["*"] }]
        deny = [{ paths = ["/data/pub/hidden.txt"], ops = ["*"], errno = "ENOENT" }]
        """)
    )
    audit = tmp_path / "audit.jsonl"
    script = (
        f"{LS} -a /data/pub; {STAT} -c %n /data/pub/hidden.txt; echo stat=$?; "
        "cat /data/pub/hidden.txt; echo cat=$?; "
        "test -e /data/pub/hidden.txt && echo exists || echo absent"
    )
    r = synthfs_run(repo, policy, audit, script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [".", "..", "a.txt", "stat=1", "cat=1", "absent"], r.stderr
    assert "No such file or directory" in r.stderr and "Permission denied" not in r.stderr
    denied = [rec for rec in records(audit) if rec["decision"] == "deny"]
    assert denied and all(rec["errname"] == "ENOENT" for rec in denied)
