"""Trying a policy: ``synthfs run --warn`` / ``--permissive`` and the end-of-run summary.

Real server, agent and guests (``synthfs run --data``). What is shown: under
``--warn`` the policy denies nothing and reports every denial (audit record
``"enforced": false``, the summary); ``--read-only`` still holds; a run whose
policy denied something ends with one short summary on stderr after the
guest's own bytes, unchanged, and ``--quiet`` prints none. The trusted paths
and the guards under ``--permissive``: tests/escape (``test_permissive_*``).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

SYNTHFS = helpers.synthfs_command()

POLICY = textwrap.dedent("""\
    version = 1
    name = "trying"
    description = "cat may read /data/x.txt only; nothing else on /data"
    default = "deny"

    [[mount]]
    path = "/data"

    [[app]]
    name = "reader"
    match.exe = ["/usr/bin/cat"]
    allow = [{ paths = ["/data/x.txt"], ops = ["read", "stat"] }]
    """)

HOST_POLICY = POLICY.replace('name = "trying"', 'name = "trying-host"') + textwrap.dedent("""\

    [host]
    write = ["/dev/null", "/dev/tty"]
    """)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNTHFS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "d").mkdir(parents=True)
    (root / "x.txt").write_text("the x file\n")
    (root / "secret.txt").write_text("top secret\n")
    return root


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "trying.toml"
    path.write_text(POLICY)
    return path


def _records(audit: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in audit.read_text().splitlines()]


@pytest.mark.parametrize("flag", ["--warn", "--permissive"])
def test_warn_denies_nothing_and_reports_what_it_would_have(
    flag: str, repo: Path, policy: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    script = "cat /data/x.txt /data/secret.txt; echo made > /data/d/new.txt; echo status=$?"
    enforced = run("run", "--data", str(repo), "--policy", str(policy), "--", "sh", "-c", script)
    assert enforced.stdout == "the x file\nstatus=2\n", enforced.stderr
    assert not (repo / "d" / "new.txt").exists()

    r = run("run", "--data", str(repo), "--policy", str(policy), flag, "--audit", str(audit),
            "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the x file\ntop secret\nstatus=0\n", r.stderr
    assert (repo / "d" / "new.txt").read_text() == "made\n"
    # Every would-be denial is in the log, marked as not enforced, with the policy's errno.
    denied = [rec for rec in _records(audit) if rec["decision"] == "deny"]
    assert denied and all(rec["enforced"] is False for rec in denied), denied
    seen = {(rec["app"], rec["op"], rec["path"]) for rec in denied}
    assert ("reader", "read", "/data/secret.txt") in seen, seen
    assert ("(unmatched)", "create", "/data/d/new.txt") in seen, seen
    assert all(rec["errname"] == "EACCES" and rec["rule"] == "default" for rec in denied)
    # ... and the summary says so, naming the audit file.
    assert "synthfs: the policy would have denied" in r.stderr, r.stderr
    assert "accesses (not enforced):" in r.stderr, r.stderr
    assert "app reader: read /data/secret.txt (would be EACCES; rule default)" in r.stderr
    assert str(audit) in r.stderr


def test_warn_keeps_read_only(repo: Path, policy: Path) -> None:
    """--read-only is the user's, not the policy's: --warn lets through no write."""
    r = run("run", "--data", str(repo), "--policy", str(policy), "--warn", "--read-only",
            "--", "sh", "-c", "cat /data/secret.txt; echo no > /data/x.txt; echo status=$?")
    assert r.stdout == "top secret\nstatus=2\n", r.stderr
    assert "Read-only file system" in r.stderr
    assert (repo / "x.txt").read_text() == "the x file\n"
    assert "app (unmatched): create /data/x.txt (EROFS; rule --read-only)" in r.stderr, r.stderr


def test_warn_relaxes_host_rules_too(repo: Path, tmp_path: Path) -> None:
    """[host] rules are the policy's: a host write they deny is reported and let through."""
    pol = tmp_path / "host.toml"
    pol.write_text(HOST_POLICY)
    out = tmp_path / "out.txt"
    script = f"echo host > {out}; echo status=$?"
    enforced = run("run", "--data", str(repo), "--policy", str(pol), "--", "sh", "-c", script)
    assert enforced.stdout == "status=2\n" and not out.exists(), enforced.stderr
    r = run("run", "--data", str(repo), "--policy", str(pol), "--warn", "--", "sh", "-c", script)
    assert r.stdout == "status=0\n", r.stderr
    assert out.read_text() == "host\n"
    assert f"app (unmatched): create {out} (would be EACCES; rule host.toml:" in r.stderr, r.stderr


GUEST = "printf 'to stdout'; printf 'to stderr' >&2; cat /data/secret.txt 2>/dev/null; exit 3"


def test_a_denial_is_summarised_after_the_guests_own_output(
    repo: Path, policy: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    r = run("run", "--data", str(repo), "--policy", str(policy), "--audit", str(audit),
            "--", "sh", "-c", GUEST)
    assert r.returncode == 3  # the guest's status
    assert r.stdout == "to stdout"  # untouched
    assert r.stderr.startswith("to stderr"), r.stderr  # the guest's bytes first, unchanged
    summary = r.stderr.removeprefix("to stderr")
    assert summary.startswith("synthfs: the policy denied 1 access:\n"), summary
    assert "  app reader: read /data/secret.txt (EACCES; rule default)\n" in summary
    assert f"(recorded in {audit})" in summary
    assert len(summary.splitlines()) <= 6  # short


def test_the_summary_counts_and_shows_the_first_few(repo: Path, policy: Path) -> None:
    script = "for f in a b c d e; do cat /data/no-$f 2>/dev/null; done; exit 0"
    r = run("run", "--data", str(repo), "--policy", str(policy), "--", "sh", "-c", script)
    assert r.returncode == 0
    lines = r.stderr.splitlines()
    assert lines[0] == "synthfs: the policy denied 5 accesses:", r.stderr
    assert lines[1:4] == [f"  app reader: read /data/no-{f} (EACCES; rule default)"
                          for f in "abc"], r.stderr
    assert lines[4] == "  ... and 2 more (--audit FILE records every one)", r.stderr
    assert len(lines) == 5


def test_quiet_prints_no_summary(repo: Path, policy: Path) -> None:
    r = run("run", "--data", str(repo), "--policy", str(policy), "--quiet",
            "--", "sh", "-c", GUEST)
    assert (r.returncode, r.stdout, r.stderr) == (3, "to stdout", "to stderr")
    r = run("run", "-q", "--warn", "--data", str(repo), "--policy", str(policy),
            "--", "sh", "-c", GUEST)
    assert (r.returncode, r.stdout, r.stderr) == (3, "to stdouttop secret\n", "to stderr")


def test_no_denial_no_summary(repo: Path, policy: Path) -> None:
    r = run("run", "--data", str(repo), "--policy", str(policy), "--", "cat", "/data/x.txt")
    assert (r.returncode, r.stdout, r.stderr) == (0, "the x file\n", "")


@pytest.mark.parametrize("flags", [(), ("-v",)], ids=["summary", "summary-and-v"])
def test_a_closed_stderr_does_not_change_the_status(
    flags: tuple[str, ...], repo: Path, policy: Path
) -> None:
    """``synthfs run ... 2>&1 | head -1``: the reader gone, the summary (and the -v lines)
    cannot be written; the status is still the guest's."""
    import os

    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # every write to stderr now fails with EPIPE
    try:
        p = subprocess.run(
            [*SYNTHFS, "run", *flags, "--data", str(repo), "--policy", str(policy), "--",
             "sh", "-c", "cat /data/secret.txt 2>/dev/null; cat /data/x.txt; exit 3"],
            stdout=subprocess.PIPE, stderr=w_fd, timeout=60,
        )
    finally:
        os.close(w_fd)
    assert (p.returncode, p.stdout) == (3, b"the x file\n")
