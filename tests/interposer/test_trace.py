"""``synthfs run -v``: strace-like lines decoded from the syscall table's roles.

The decoders are pure (flags, modes, strings, results); the lines themselves
come from real guests under a real server and agent. Without ``-v`` nothing
is decoded: the supervisor loop holds no tracer and never imports the module.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers
import pytest

from synthfs.interposer import trace
from synthfs.interposer.syscalls import BY_NAME, Role

SYNTHFS = helpers.synthfs_command()

POLICY = textwrap.dedent("""\
    version = 1
    name = "traced"
    description = "cat reads /data but not /data/secret.txt; ls lists /data"
    default = "deny"

    [[mount]]
    path = "/data"

    [[app]]
    name = "cat"
    match.exe = ["/usr/bin/cat"]
    allow = [{ paths = ["/data/**"], ops = ["read", "stat"] }]
    deny = [{ paths = ["/data/secret.txt"], ops = ["*"] }]

    [[app]]
    name = "ls"
    match.exe = ["/usr/bin/ls"]
    allow = [{ paths = ["/data", "/data/**"], ops = ["stat", "list"] }]

    [[app]]
    name = "shell"
    match.exe = ["/usr/bin/dash", "/usr/bin/bash"]
    allow = [{ paths = ["/data/**"], ops = ["*"] }]
    """)


# -- the decoders ---------------------------------------------------------------------------


def test_open_flags_as_strace_names_them() -> None:
    assert trace.open_flags(0) == "O_RDONLY"
    assert trace.open_flags(0o2000000) == "O_RDONLY|O_CLOEXEC"
    assert trace.open_flags(0o1 | 0o100 | 0o1000) == "O_WRONLY|O_CREAT|O_TRUNC"
    assert trace.open_flags(0o2 | 0o4010000) == "O_RDWR|O_SYNC"
    assert trace.open_flags(0o2 | 0o20200000) == "O_RDWR|O_TMPFILE"
    assert trace.open_flags(0o10000000 | 0o400000) == "O_RDONLY|O_NOFOLLOW|O_PATH"
    assert trace.open_flags(0o200000 | 0x80000000) == "O_RDONLY|O_DIRECTORY|0x80000000"


def test_at_flags_modes_and_results() -> None:
    assert trace.at_flags(0) == "0"
    assert trace.at_flags(0x1100) == "AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH"
    assert trace.at_flags(0x200, "unlinkat") == "AT_REMOVEDIR"
    assert trace.at_flags(0x200, "faccessat2") == "AT_EACCESS"
    assert trace.mode(0o644) == "0644"
    assert trace.mode(0) == "0000"
    assert trace.mode(0o20000 | 0o600) == "S_IFCHR|0600"
    assert trace.result(3) == "3"
    assert trace.result(-2) == "-1 ENOENT (No such file or directory)"
    assert trace.result((-13) & ((1 << 64) - 1)) == "-1 EACCES (Permission denied)"
    assert trace.result(-512) == "? ERESTARTSYS"
    assert trace.result(0x7F0000001000, "brk") == "0x7f0000001000"


def test_strings_are_escaped_like_strace() -> None:
    assert trace.escape(b"/data/x") == '"/data/x"'
    assert trace.escape(b'a"b\\c\n\t') == '"a\\"b\\\\c\\n\\t"'
    assert trace.escape("é".encode()) == '"\\303\\251"'
    assert trace.escape(b"\x01" + b"7") == '"\\0017"'  # an octal digit follows: three digits
    assert trace.escape(b"abcdef", limit=3) == '"abc"...'


def test_the_table_gives_openat2_its_open_how() -> None:
    assert BY_NAME["openat2"].args[2] is Role.HOW
    assert BY_NAME["openat"].args == (Role.DIRFD, Role.PATH, Role.FLAGS, Role.MODE)


def test_no_tracer_no_decoding() -> None:
    """Without -v the supervisor holds no tracer, and the decoders are never imported:
    the loop's only cost is one attribute test per handled call."""
    probe = (
        "import sys, synthfs.interposer.run, synthfs.interposer.runenv, "
        "synthfs.interposer.supervisor as s\n"
        "print(s.Supervisor.__init__.__code__.co_names.count('tracer') > 0, "
        "'synthfs.interposer.trace' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out == "True False\n"


# -- lines from real guests --------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "d").mkdir(parents=True)
    (root / "x.txt").write_text("the x file\n")
    (root / "secret.txt").write_text("top secret\n")
    (root / "odd\nname").write_text("odd\n")
    return root


def _traced(repo: Path, tmp_path: Path, script: str, *flags: str) -> list[str]:
    pol = tmp_path / "traced.toml"
    pol.write_text(POLICY)
    # The guest's stderr goes elsewhere: its messages would cut into the lines.
    r = subprocess.run([*SYNTHFS, "run", *flags, "--data", str(repo), "--policy", str(pol),
                        "--", "sh", "-c", "exec 2>/dev/null; " + script],
                       capture_output=True, text=True, timeout=60)
    return r.stderr.splitlines()


def _line(lines: list[str], pattern: str) -> str:
    rx = re.compile(r"\[pid \d+\] " + pattern)
    found = [line for line in lines if rx.fullmatch(line)]
    assert found, f"no line matches {pattern!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.ptrace
def test_v_shows_decoded_calls_results_and_decisions(repo: Path, tmp_path: Path) -> None:
    lines = _traced(
        repo, tmp_path,
        "cat /data/x.txt /data/secret.txt /data/nope > /dev/null; ls /data > /dev/null; "
        "cat '/data/odd\nname' > /dev/null; echo new > /data/d/new.txt; mkdir -m 750 /data/d/sub",
        "-v",
    )
    q = re.escape
    _line(lines, q('openat(AT_FDCWD, "/data/x.txt", O_RDONLY) = 3 [allow: app cat]'))
    _line(lines, q('openat(AT_FDCWD, "/data/secret.txt", O_RDONLY) = -1 EACCES '
                   "(Permission denied) [deny: app cat, rule traced.toml:") + r"\d+\]")
    _line(lines, q('openat(AT_FDCWD, "/data/nope", O_RDONLY) = -1 ENOENT '
                   "(No such file or directory) [allow: app cat]"))
    _line(lines, q('openat(AT_FDCWD, "/data", O_RDONLY|O_NONBLOCK|O_DIRECTORY|O_CLOEXEC)')
          + r" = \d+ " + q("[allow: app ls]"))
    _line(lines, r"getdents64\(\d+, 0x[0-9a-f]+, \d+\) = \d+ " + q("[allow: app ls]"))
    _line(lines, q('openat(AT_FDCWD, "/data/odd\\nname", O_RDONLY) = 3 [allow: app cat]'))
    _line(lines, q('openat(AT_FDCWD, "/data/d/new.txt", O_WRONLY|O_CREAT|O_TRUNC, 0666) = ')
          + r"\d+" + q(" [allow: app shell]"))
    _line(lines, q('mkdir("/data/d/sub", 0750) = -1 EACCES (Permission denied) '
                   "[deny: app (unmatched), rule default]"))
    # host calls the kernel runs show the kernel's result
    _line(lines, r'execve\("/usr/bin/cat", 0x[0-9a-f]+, 0x[0-9a-f]+\) = 0')
    # no raw pointer where a path belongs
    assert not [line for line in lines if re.search(r"openat\(AT_FDCWD, 0x", line)]


@pytest.mark.ptrace
def test_v_shows_what_warn_let_through(repo: Path, tmp_path: Path) -> None:
    lines = _traced(repo, tmp_path, "cat /data/secret.txt > /dev/null", "-v", "--warn")
    _line(lines, re.escape('openat(AT_FDCWD, "/data/secret.txt", O_RDONLY) = 3 '
                           "[warn: app cat, rule traced.toml:") + r"\d+, would be EACCES\]")


@pytest.mark.ptrace
def test_without_v_no_line(repo: Path, tmp_path: Path) -> None:
    lines = _traced(repo, tmp_path, "cat /data/x.txt > /dev/null")
    assert lines == []
