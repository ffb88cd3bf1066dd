"""Executables stored on /data, end to end (issue #19): what the guest sees of the
exec (no cache path anywhere) and whose policy identity a script runs under.

The behaviour against native runs is in tests/conformance (the ``script_*`` and
``elf_in_tree`` cases); these are the properties a native run cannot show.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import helpers
import pytest

from synthfs.agent.embedded import embedded

pytestmark = pytest.mark.ptrace

SYNTHFS = helpers.synthfs_command()
PATH = "/usr/local/bin:/usr/bin:/bin"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SYNTHFS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": PATH, "LC_ALL": "C", "HOME": "/nonexistent"},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "bin").mkdir(parents=True)
    shutil.copy(Path("/bin/cat").resolve(), root / "bin" / "cat")
    (root / "secret.txt").write_text("top secret\n")
    script = root / "show.sh"
    script.write_text(
        '#!/bin/sh\necho "0=$0"\ntr "\\0" " " < /proc/$$/cmdline; echo\n'
        "env | grep -v '^_=' | sort\n"
        "LD_SHOW_AUXV=1 /data/bin/cat /dev/null | grep AT_EXECFN\n"
        "/data/nope.sh; /data/show.sh/x\n"
    )
    script.chmod(0o755)
    tool = root / "tool.py"
    tool.write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        "print(sys.argv[0], open('/data/secret.txt').read(), end='')\n"
    )
    tool.chmod(0o755)
    return root


def test_no_cache_path_reaches_the_guest(repo: Path, tmp_path: Path) -> None:
    """argv, $0, the environment, error messages and the auxv's AT_EXECFN of a script
    and of an ELF on /data name /data, never the cache copy the kernel runs."""
    cache = tmp_path / "cache"
    with embedded(repo, cache_dir=cache) as stack:
        r = run("run", "--agent", stack.agent_endpoint, "--", "sh", "-c", "/data/show.sh arg")
    out = r.stdout + r.stderr
    assert "0=/data/show.sh\n/bin/sh /data/show.sh arg \n" in r.stdout, out
    assert "AT_EXECFN:" in r.stdout, out
    assert str(cache) not in out and "objects/" not in out, out


POLICY = """\
version = 1
name = "scripts"
description = "a script's identity is its interpreter's, told apart by argv"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "tool"
match.exe = ["{python}"]
match.argv = ["*tool.py"]  # the name the caller used: /data/tool.py or ./tool.py
allow = [{{ paths = ["/data/**"], ops = ["read", "stat", "list"] }}]

[[app]]
name = "launchers"
match.exe = ["{sh}", "{env}"]
allow = [
  {{ paths = ["/data/tool.py"], ops = ["read", "stat"] }},
  {{ paths = ["/data"], ops = ["list", "stat"] }},
]
"""


def test_a_script_is_its_interpreter_with_the_script_in_argv(repo: Path, tmp_path: Path) -> None:
    """/data/tool.py run by ``#!/usr/bin/env python3`` is the app of python3 whose argv
    names /data/tool.py (docs/policy.md): it reads what that app may; python3 run
    otherwise, and the shell that launched it, may not."""
    python = Path(shutil.which("python3", path=PATH) or "python3").resolve()
    policy = tmp_path / "scripts.toml"
    policy.write_text(
        POLICY.format(
            python=python, sh=Path("/bin/sh").resolve(), env=Path("/usr/bin/env").resolve()
        )
    )
    with embedded(repo, cache_dir=tmp_path / "cache") as stack:
        r = run(
            "run",
            "--agent",
            stack.agent_endpoint,
            "--policy",
            str(policy),
            "--",
            "sh",
            "-c",
            "/data/tool.py; cd /data && ./tool.py; cat /data/secret.txt; "
            "python3 -c 'open(\"/data/secret.txt\")' 2>/dev/null || echo python3-denied",
        )
    assert r.stdout == "/data/tool.py top secret\n./tool.py top secret\npython3-denied\n", (
        r.stdout + r.stderr
    )
    assert "cat: /data/secret.txt: Permission denied" in r.stderr, r.stderr


EXEC_CAT = "import os; os.execv('/data/bin/cat', ['cat', '/proc/self/cmdline'])"


def test_an_elf_on_data_shows_no_cache_path(repo: Path, tmp_path: Path) -> None:
    """An ELF on /data: argv and /proc/self/exe as natively; AT_EXECFN (the kernel's
    copy of the exec'd path) names a supervisor fd, not the cache copy (it did)."""
    cache = tmp_path / "cache"
    script = (
        "cd /data && LD_SHOW_AUXV=1 bin/cat /proc/self/cmdline | tr '\\0' ' ' "
        "| grep -aE 'AT_EXECFN|bin/cat'; bin/cat /proc/self/maps > /dev/null; "
        f'python3 -c "{EXEC_CAT}"'
    )
    with embedded(repo, cache_dir=cache) as stack:
        r = run("run", "--agent", stack.agent_endpoint, "--", "sh", "-c", script)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "AT_EXECFN:" in r.stdout, out
    assert "bin/cat /proc/self/cmdline" in r.stdout, out
    assert r.stdout.endswith("cat\0/proc/self/cmdline\0"), out
    assert str(cache) not in out, out


def test_a_script_takes_many_arguments(repo: Path, tmp_path: Path) -> None:
    """The rewritten argv (a pointer per argument) fits the scratch slot up to about
    1,500 arguments; beyond, E2BIG (docs/policy.md), never a wrong or cut argv."""
    (repo / "count.sh").write_text('#!/bin/sh\necho "$# ${1} ${1400}"\n')
    (repo / "count.sh").chmod(0o755)
    script = "/data/count.sh $(seq 1400); /data/count.sh $(seq 2000) || echo status=$?"
    with embedded(repo, cache_dir=tmp_path / "cache") as stack:
        r = run("run", "--agent", stack.agent_endpoint, "--", "sh", "-c", script)
    assert r.stdout == "1400 1 1400\nstatus=126\n", r.stdout + r.stderr
    assert "Argument list too long" in r.stderr, r.stderr


HOST_POLICY = """\
version = 1
name = "hostrules"
description = "scripts and ELFs on /data under [host] rules (exec pinning)"
default = "allow"

[[mount]]
path = "/data"

[host]
read = ["/**"]
write = ["/dev/null"]
"""


def test_scripts_under_host_rules_pass_the_exec_stop_check(repo: Path, tmp_path: Path) -> None:
    """Under [host] rules the image the kernel maps must be one the exec checked: the
    host interpreter of a rewritten script, and the held cache copy of an ELF, are."""
    (repo / "w").write_text("#!count.sh\n")  # an interpreter on /data that is a script
    (repo / "count.sh").write_text('#!/bin/sh\necho "$0 $#"\n')
    for name in ("w", "count.sh"):
        (repo / name).chmod(0o755)
    policy = tmp_path / "host.toml"
    policy.write_text(HOST_POLICY)
    script = "cd /data && ./w a b && ./bin/cat w && ./tool.py"
    with embedded(repo, cache_dir=tmp_path / "cache") as stack:
        r = run(
            "run",
            "--agent",
            stack.agent_endpoint,
            "--policy",
            str(policy),
            "--",
            "sh",
            "-c",
            script,
        )
    assert (r.returncode, r.stdout) == (0, "count.sh 3\n#!count.sh\n./tool.py top secret\n"), (
        r.stderr
    )
