"""The second file the kernel opens at an exec: ``#!`` interpreters and ``PT_INTERP``.

The kernel runs a script's interpreter, and maps an ELF's ``PT_INTERP`` loader,
on its own: a readable script or program in a writable directory can name a
program the ``[host]`` read rules hide, or one under a trusted path (the
served directory, refused under every policy). Each attack is a (policy,
program, expected) triple: the program is a shell command that prints the
secret marker when the second file ran. It runs natively first on the same
files (the control: it must print the marker), then under ``synthfs run``,
where it must not (the exec fails with EACCES, as for an interpreter the
kernel may not open). Twins run the legal forms (a script of /bin/sh, a
normal dynamic program, a program whose ``PT_INTERP`` names the system
loader) under the same policies: they must keep working.

* ``strict``: ``[host]`` reads of the system and of ``ok/`` only (not
  ``hidden/``); /data/secret denied;
* ``nohost``: the same /data rules and no ``[host]`` table (only the trusted
  paths are refused).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

_DATA_RULES = """\
version = 1
name = "interp-{name}"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "all"
match.exe = ["/**"]
allow = [
  {{ paths = ["/data"], ops = ["stat", "list"] }},
  {{ paths = ["/data/public/**"], ops = ["*"] }},
]
deny = [{{ paths = ["/data/secret/**"], ops = ["*"] }}]
"""
_HOST_RULES = """
[host]
read = ["/usr/**", "/lib/**", "/lib64/**", "/bin/**", "/etc/**", "/proc/**", "/sys/**",
        "/dev/**", "{base}", "{base}/ok/**"]
write = ["{base}/ok/**", "/dev/null"]
"""

#: a static-pie loader that prints the marker and exits (the PT_INTERP the kernel maps)
_LOADER = """\
.globl _start
_start:
 mov $1, %edi
 lea msg(%rip), %rsi
 mov $len, %edx
 mov $1, %eax
 syscall
 mov $0, %edi
 mov $231, %eax
 syscall
msg: .ascii "{marker}\\n"
len = . - msg
"""


@dataclass(frozen=True)
class World:
    base: Path
    repo: Path
    marker: str


@dataclass(frozen=True)
class Attack:
    name: str
    policies: tuple[str, ...]
    command: str  # {data}: the served directory natively, /data under synthfs


ATTACKS = [
    Attack("shebang_hidden", ("strict",), "./hidden.sh"),
    Attack("shebang_relative", ("strict",), "./relative.sh"),
    Attack("shebang_chain", ("strict",), "./chain.sh"),
    Attack("shebang_dataroot", ("strict", "nohost"), "./dataroot.sh"),
    Attack("ptinterp_hidden", ("strict",), "./main_hidden"),
    Attack("ptinterp_dataroot", ("strict", "nohost"), "./main_dataroot"),
    Attack("ptinterp_data_program", ("strict",), "{data}/public/prog"),
]
TWINS = ["./good.sh", "./main_system", "{data}/public/good", "/bin/echo fine"]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")
    base = Path(tempfile.mkdtemp(prefix="synthfs-interp-", dir="/var/tmp")).resolve()
    base.chmod(0o755)
    try:
        yield _build(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _build(base: Path) -> World:
    marker = f"INTERP-SECRET-{secrets.token_hex(8)}"
    repo, hidden, ok = base / "repo", base / "hidden", base / "ok"
    for d in (repo / "public", repo / "secret", hidden, ok):
        d.mkdir(parents=True)
    src = base / "src"
    src.mkdir()
    (src / "prog.c").write_text(f'#include <stdio.h>\nint main(){{puts("{marker}");}}\n')
    (src / "loader.S").write_text(_LOADER.format(marker=marker))
    (src / "main.c").write_text("int main(){return 0;}\n")
    (src / "good.c").write_text('#include <stdio.h>\nint main(){puts("fine");}\n')

    def cc(out: Path, *args: str) -> None:
        subprocess.run(["gcc", "-o", str(out), *args], check=True, timeout=120)

    for where in (hidden, repo / "secret"):
        cc(where / "prog", str(src / "prog.c"))
        cc(where / "loader", "-nostdlib", "-static-pie", "-fPIE", str(src / "loader.S"))
    main = str(src / "main.c")
    cc(ok / "main_hidden", f"-Wl,--dynamic-linker={hidden}/loader", main)
    cc(ok / "main_dataroot", f"-Wl,--dynamic-linker={repo}/secret/loader", main)
    cc(repo / "public" / "prog", f"-Wl,--dynamic-linker={hidden}/loader", main)
    system = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    cc(ok / "main_system", f"-Wl,--dynamic-linker={system}", str(src / "good.c"))
    cc(repo / "public" / "good", str(src / "good.c"))
    scripts = {
        "hidden.sh": f"#!{hidden}/prog\n",
        "relative.sh": "#!../hidden/prog\n",
        "chain.sh": f"#!{ok}/hop.sh\n",
        "hop.sh": f"#!{hidden}/prog\n",
        "dataroot.sh": f"#!{repo}/secret/prog\n",
        "good.sh": "#!/bin/sh\necho fine\n",
    }
    for name, text in scripts.items():
        (ok / name).write_text(text)
        (ok / name).chmod(0o755)
    return World(base, repo, marker)


def _policy(world: World, name: str) -> Path:
    text = _DATA_RULES.format(name=name)
    if name == "strict":
        text += _HOST_RULES.format(base=world.base)
    path = world.base / f"{name}.toml"
    path.write_text(text)
    return path


def _native(world: World, command: str) -> helpers.Outcome:
    cmd = command.format(data=world.repo)
    return helpers.run_native(["/bin/sh", "-c", cmd], cwd=world.base / "ok", timeout=60)


def _guest(world: World, policy: str, command: str) -> helpers.Outcome:
    argv = [
        *helpers.synthfs_command(), "run", "--data", str(world.repo),
        "--cache", str(world.base / "cache"), "--policy", str(_policy(world, policy)),
        "--", "/bin/sh", "-c", command.format(data="/data"),
    ]  # fmt: skip
    return helpers.run_native(argv, cwd=world.base / "ok", timeout=120)


@pytest.mark.parametrize(
    ("attack", "policy"),
    [(a, p) for a in ATTACKS for p in a.policies],
    ids=[f"{a.name}-{p}" for a in ATTACKS for p in a.policies],
)
def test_second_file_at_exec_is_checked(attack: Attack, policy: str, world: World) -> None:
    control = _native(world, attack.command)
    assert world.marker in control.stdout, f"the control did not escape\n{control.show()}"
    got = _guest(world, policy, attack.command)
    assert world.marker not in got.stdout + got.stderr, f"escaped\n{got.show()}"
    assert "Permission denied" in got.stderr, got.show()  # EACCES, as natively refused


@pytest.mark.parametrize("policy", ["strict", "nohost"])
@pytest.mark.parametrize("command", TWINS)
def test_legal_interpreters_still_run(command: str, policy: str, world: World) -> None:
    got = _guest(world, policy, command)
    assert got.status == 0 and got.stdout == "fine\n", got.show()
