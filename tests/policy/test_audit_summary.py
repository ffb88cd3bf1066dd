"""``synthfs audit summary FILE``: a table of an audit log; bad input is one clear line.

The log comes from a real ``synthfs run --audit`` (real server, agent and
guest); the summary is the real command.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import helpers
import pytest

SYNTHFS = helpers.synthfs_command()

POLICY = textwrap.dedent("""\
    version = 1
    name = "summary"
    description = "cat reads /data/pub; nothing else"
    default = "deny"

    [[mount]]
    path = "/data"

    [[app]]
    name = "cat"
    match.exe = ["/usr/bin/cat"]
    allow = [{ paths = ["/data/pub/**"], ops = ["read", "stat"] }]
    """)


def synthfs(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*SYNTHFS, *args], capture_output=True, timeout=60, input=stdin)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                       r.stderr.decode())


def _rows(out: str) -> set[tuple[str, ...]]:
    return {tuple(line.split()) for line in out.splitlines()[1:-1]}


@pytest.mark.ptrace
def test_summary_of_a_real_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pub").mkdir(parents=True)
    (repo / "priv").mkdir()
    for name in ("a", "b", "c"):
        (repo / "pub" / name).write_text(name)
        (repo / "priv" / name).write_text(name)
    pol = tmp_path / "p.toml"
    pol.write_text(POLICY)
    audit = tmp_path / "audit.jsonl"
    r = synthfs("run", "--data", str(repo), "--policy", str(pol), "--audit", str(audit),
                "--audit-all", "-q", "--", "sh", "-c",
                "cat /data/pub/a /data/pub/b /data/pub/c /data/priv/a; "
                "cat /data/priv/b /data/priv/c; exit 0")
    assert r.returncode == 0 and r.stdout == "abc", r.stderr
    s = synthfs("audit", "summary", str(audit))
    assert s.returncode == 0, s.stderr
    lines = s.stdout.splitlines()
    assert lines[0].split() == ["APP", "OP", "PATH", "DECISION", "COUNT"]
    rows = _rows(s.stdout)
    # three files of one directory are one glob; each row counts its decisions
    assert ("cat", "read", "/data/pub/*", "allow", "3") in rows, s.stdout
    assert ("cat", "read", "/data/priv/*", "deny", "EACCES", "3") in rows, s.stdout
    total = sum(1 for line in audit.read_text().splitlines() if line)
    denied = sum(json.loads(line)["decision"] == "deny"
                 for line in audit.read_text().splitlines())
    assert lines[-1] == f"{total} decisions, {denied} denied", s.stdout
    assert sum(int(row[-1]) for row in rows) == total

    # the same run under --warn: the denials are 'warn' rows, and the footer says so
    warned = tmp_path / "warned.jsonl"
    r = synthfs("run", "--data", str(repo), "--policy", str(pol), "--audit", str(warned),
                "--warn", "-q", "--", "cat", "/data/priv/a")
    assert r.returncode == 0 and r.stdout == "a", r.stderr
    s = synthfs("audit", "summary", str(warned))
    assert ("cat", "read", "/data/priv/a", "warn", "EACCES", "1") in _rows(s.stdout), s.stdout
    assert "let through by --warn" in s.stdout.splitlines()[-1]


RECORD = {"event": "policy/decision", "time": "2026-12-07T00:00:00.000000Z", "pid": 1,
          "exe": "/usr/bin/cat", "app": "cat", "syscall": "openat", "path": "/data/x",
          "op": "read", "decision": "deny", "rule": "default", "errno": 13, "errname": "EACCES",
          "latency_us": 1.0}


def _log(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD = json.dumps(RECORD).encode()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"garbage", "not JSON (Expecting value at column 1)"),
        (b'{"event": "policy/decision"', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event": "other"}', "not a policy decision (event 'other')"),
        (json.dumps({**RECORD, "app": 3}).encode(), "'app' is missing or not a string"),
        (json.dumps({**RECORD, "decision": "maybe"}).encode(), "decision 'maybe' is neither"),
        (json.dumps({**RECORD, "errno": "13"}).encode(), "errno '13' is not an errno"),
        (json.dumps({**RECORD, "enforced": "no"}).encode(), "enforced 'no' is not true"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=["garbage", "truncated", "array", "event", "app", "decision", "errno", "enforced",
         "bytes", "deep"],
)
def test_a_bad_line_is_one_clear_error(tmp_path: Path, line: bytes, says: str) -> None:
    log = _log(tmp_path, GOOD, line, GOOD)
    r = synthfs("audit", "summary", str(log))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"synthfs audit summary: {log}:2: {says}"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_unreadable_files_and_empty_logs(tmp_path: Path) -> None:
    r = synthfs("audit", "summary", str(tmp_path / "missing.jsonl"))
    assert (r.returncode, r.stdout) == (1, "")
    missing = tmp_path / "missing.jsonl"
    assert r.stderr == f"synthfs audit summary: {missing}: No such file or directory\n"
    r = synthfs("audit", "summary", str(tmp_path))
    assert r.stderr == f"synthfs audit summary: {tmp_path}: Is a directory\n"
    empty = _log(tmp_path, b"")
    r = synthfs("audit", "summary", str(empty))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"no decisions in {empty}\n", "")
    r = synthfs("audit", "summary", "-", stdin=GOOD + b"\n")
    assert r.returncode == 0 and ("cat", "read", "/data/x", "deny", "EACCES", "1") in _rows(
        r.stdout), r.stdout
    r = synthfs("audit")
    assert r.returncode == 2 and "synthfs audit summary FILE" in r.stderr


def test_control_characters_in_a_path_do_not_reach_the_terminal(tmp_path: Path) -> None:
    log = _log(tmp_path, json.dumps({**RECORD, "path": "/data/a\x1b[2Jb\nc"}).encode())
    r = synthfs("audit", "summary", str(log))
    assert r.returncode == 0
    assert "\x1b" not in r.stdout and "/data/a\\x1b[2Jb\\nc" in r.stdout, r.stdout
