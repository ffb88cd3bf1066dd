"""Escape suite for the one list of trusted paths (``protocol/trusted.py``).

A server and an agent run as separate processes, the way a fleet runs them
(``synthfs run --agent``): the server with ``--root``, ``--state``, a bootstrap
key file and its ``ipc://`` sockets; the agent with its cache and socket,
reading the key from an inherited fd (so only the server names the key file:
the agent learns it, with the root and the state directory, from the
server's ``Registered.trusted_paths``). Each trusted item sits in a directory
of its own, so that an attack on one is not stopped by the refusal of another.

Every attack is a (policy, program, expected) triple as in ``test_escape.py``:
``attacks/paths.py MODE DATA TARGET MARKER`` exits 66 when it reached the
target. It runs natively first against the same files (the control: it must
escape), then under ``synthfs run`` with each policy:

* ``host-read``: the guest may read the whole host (``[host] read = ["/**"]``)
  and write under /tmp, and may do anything on /data except ``/data/secret*``;
* ``no-host``: the same /data rules and no ``[host]`` table (the host is
  unconfined, except the trusted paths);
* ``host-read`` under ``synthfs run --permissive`` (a sample of the attacks,
  every target): the policy denies nothing, the trusted paths are refused all
  the same.

The targets: a file of the served directory that the /data rules deny (read,
stat, list, write, unlink, rename into it, exec from it, by any path trick),
the server's state directory, the agent's cache, the bootstrap key file, the
server's sockets and the agent's; attacks include renaming a directory above a
target and a second thread exchanging a directory with a symlink to the
target's directory between the supervisor's check and the kernel's walk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

ESCAPED = 66
ATTACKS = Path(__file__).resolve().parent / "attacks"
REPO = Path(__file__).resolve().parents[2]

_RULES = """\
version = 1
name = "escape-trusted-{name}"
description = "trusted-path escapes: all of /data but /data/secret*; {what}"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "everyone"
match.exe = ["/**"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]
deny = [
  {{ paths = ["/data/secret", "/data/secret/**", "/data/secret_exe"], ops = ["*"], errno = "EACCES" }},
]
"""  # noqa: E501 - a TOML inline table is one line
POLICIES = {
    "host-read": _RULES.format(name="host-read", what="the host readable, /tmp writable")
    + '\n[host]\nread = ["/**"]\nwrite = ["/tmp/**", "/dev/null"]\n',
    "no-host": _RULES.format(name="no-host", what="no [host] table"),
}


def _server_has_state() -> bool:
    """Whether this checkout's server has --state (the base commit's does not)."""
    r = subprocess.run([sys.executable, "-m", "synthfs.server", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    return "--state" in r.stdout


@dataclass
class Stack:
    base: Path
    repo: Path
    state: Path | None
    cache: Path
    key: Path
    server_socks: Path
    agent_socks: Path
    marker: str
    key_text: str
    procs: list[subprocess.Popen[bytes]]
    standins: Path | None = None  # listening sockets named as the real ones (the controls')

    @property
    def agent_endpoint(self) -> str:
        return f"ipc://{self.agent_socks}/agent.sock"

    def target(self, name: str) -> tuple[str, str]:
        """(host path, marker) of a named target."""
        state = self.state if self.state is not None else self.repo / ".synthfs-staging"
        return {
            "data": (str(self.repo / "secret"), self.marker),
            "data_exe": (str(self.repo / "secret_exe"), self.marker),
            "state": (str(state / "canary"), self.marker),
            "cache": (str(self.cache / "canary"), self.marker),
            "key": (str(self.key), self.key_text),
            "server_sock": (str(self.server_socks / "server.sock"), ""),
            "publish_sock": (str(self.server_socks / "publish.sock"), ""),
            "agent_sock": (str(self.agent_socks / "agent.sock"), ""),
        }[name]

    def reset(self) -> None:
        """Put every canary back (an escaped write, unlink or chmod changed it)."""
        for name in ("data", "state", "cache"):
            path = Path(self.target(name)[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.marker + "\n")
            os.chmod(path, 0o644)
        exe = self.repo / "secret_exe"
        exe.write_text(f"#!/bin/sh\necho ran {self.marker}\nexit {ESCAPED}\n")
        os.chmod(exe, 0o755)
        self.key.write_text(self.key_text + "\n")
        os.chmod(self.key, 0o600)


def _ready(p: subprocess.Popen[bytes], r: int, log: Path) -> None:
    import select

    ready, _, _ = select.select([r], [], [], 30)
    data = os.read(r, 16) if ready else b""
    os.close(r)
    if not data.startswith(b"ready"):
        p.kill()
        raise AssertionError(f"not ready: {log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")
    base = tmp_path_factory.mktemp("trusted").resolve()
    short = Path(tempfile.mkdtemp(prefix="sfs-", dir="/tmp"))  # ipc paths stay short
    dirs = {}
    for name in ("box_data/repo", "box_state/state", "box_cache/cache", "box_key/keys"):
        d = base / name
        d.mkdir(parents=True, mode=0o700)
        dirs[name.split("/")[1]] = d
    server_socks, agent_socks = short / "srv", short / "agent"
    server_socks.mkdir(mode=0o700)
    agent_socks.mkdir(mode=0o700)
    key_text = secrets.token_hex(32)
    st = Stack(base, dirs["repo"], dirs["state"] if _server_has_state() else None,
               dirs["cache"], dirs["keys"] / "bootstrap.key", server_socks, agent_socks,
               "SYNTHFS-CANARY-" + secrets.token_hex(8), key_text, [])
    (st.repo / "ok").write_text("ok\n")
    (st.repo / "sub").mkdir()
    st.reset()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server_argv = [sys.executable, "-m", "synthfs.server", "--root", str(st.repo),
                   "--listen", f"ipc://{server_socks}/server.sock",
                   "--publish", f"ipc://{server_socks}/publish.sock",
                   "--bootstrap-key", str(st.key)]
    if st.state is not None:
        server_argv += ["--state", str(st.state)]
    logs = base / "logs"
    logs.mkdir()
    try:
        for name, argv, fds in (("server", server_argv, ()), ("agent", None, ())):
            r, w = os.pipe()
            extra: tuple[int, ...] = fds
            if argv is None:
                kr, kw = os.pipe()
                os.write(kw, key_text.encode())
                os.close(kw)
                argv = [sys.executable, "-m", "synthfs.agent",
                        "--server", f"ipc://{server_socks}/server.sock",
                        "--subscribe", f"ipc://{server_socks}/publish.sock",
                        "--bootstrap-fd", str(kr), "--listen", st.agent_endpoint,
                        "--cache", str(st.cache)]
                extra = (kr,)
            with open(logs / f"{name}.log", "wb") as log:
                p = subprocess.Popen([*argv, "--ready-fd", str(w)], pass_fds=(w, *extra),
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=env, cwd=REPO)
            os.close(w)
            for fd in extra:
                os.close(fd)
            st.procs.append(p)
            _ready(p, r, logs / f"{name}.log")
        st.reset()  # the server empties its state directory at start
        yield st
    finally:
        for p in reversed(st.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(short, ignore_errors=True)


def _listen(st: Stack) -> None:
    """(Re)make the stand-in sockets the controls attack."""
    import socket

    if st.standins is None:
        st.standins = st.base / "standins"
        st.standins.mkdir()
    for name in ("server.sock", "publish.sock", "agent.sock"):
        path = st.standins / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(8)
        _SOCKETS.append(s)


_SOCKETS: list[object] = []


@dataclass(frozen=True)
class Attack:
    mode: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.mode}:{self.target}"


#: attacks on a file of a trusted directory (and on the directory: list, plant, move)
DIR_MODES = ("abs", "stat", "tmp_symlink", "tmp_dir_symlink", "listdir", "hardlink", "write",
             "unlink", "rename_into", "rename_ancestor", "swap_read", "swap_chmod")
#: attacks on a trusted file in a directory of the user's (the key file)
KEY_MODES = ("abs", "stat", "tmp_symlink", "tmp_dir_symlink", "hardlink", "write", "unlink",
             "rename_over", "rename_ancestor", "swap_read")
#: attacks on a trusted socket (natively on a listening stand-in: replacing the live
#: one would cut the stack off)
SOCKET_MODES = ("stat", "connect", "unlink", "rename_over")
ATTACKS_TABLE = [
    *(Attack(m, t) for t in ("data", "state", "cache") for m in DIR_MODES),
    *(Attack(m, "key") for m in KEY_MODES),
    Attack("exec", "data_exe"),
    *(Attack(m, t) for t in ("server_sock", "publish_sock", "agent_sock") for m in SOCKET_MODES),
]


def _argv(attack: Attack, data: str, st: Stack, native: bool = False) -> list[str]:
    target, marker = st.target(attack.target)
    if native and attack.target.endswith("_sock"):
        assert st.standins is not None
        target = str(st.standins / os.path.basename(target))
    argv = [sys.executable, "-I", str(ATTACKS / "paths.py"), attack.mode, data, target]
    return argv + ([marker] if marker else [])


def _victim(st: Stack, attack: Attack) -> tuple[int, int] | None:
    try:
        s = os.stat(st.target(attack.target)[0])
    except OSError:
        return None
    return s.st_ino, s.st_ctime_ns


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("attack", ATTACKS_TABLE, ids=[a.name for a in ATTACKS_TABLE])
def test_trusted_path(attack: Attack, policy: str, stack: Stack, tmp_path: Path) -> None:
    _attack(attack, policy, stack, tmp_path)


#: --permissive lets through every denial of the policy, [host] rules included: the
#: trusted paths are refused all the same (a sample of the table: every target)
PERMISSIVE_TABLE = [
    a for a in ATTACKS_TABLE
    if a.mode in ("abs", "write", "rename_ancestor", "swap_read", "exec", "connect")
]


@pytest.mark.parametrize("attack", PERMISSIVE_TABLE, ids=[a.name for a in PERMISSIVE_TABLE])
def test_trusted_path_under_permissive(attack: Attack, stack: Stack, tmp_path: Path) -> None:
    _attack(attack, "host-read", stack, tmp_path, ("--permissive",))


def _attack(attack: Attack, policy: str, stack: Stack, tmp_path: Path,
            flags: tuple[str, ...] = ()) -> None:
    if attack.target == "state" and stack.state is None:
        pytest.skip("this server has no --state (its staging is inside the root)")
    # 1. the control: natively the attack reaches the target
    stack.reset()
    if attack.target.endswith("_sock"):
        _listen(stack)
    control = helpers.run_native(_argv(attack, str(stack.repo), stack, native=True),
                                 cwd=tmp_path)
    assert control.status == ESCAPED, f"the control did not escape:\n{control.show()}"
    # 2. under synthfs, with the policy
    stack.reset()
    before = _victim(stack, attack)
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICIES[policy])
    argv = [*helpers.synthfs_command(), "run", "--agent", stack.agent_endpoint,
            "--policy", str(pol), *flags, "--", *_argv(attack, "/data", stack)]
    got = helpers.run_native(argv, cwd=tmp_path)
    print(f"control: {control.stdout.strip()}\nsynthfs: exit {got.status}: {got.stdout.strip()}")
    assert got.status != ESCAPED, f"ESCAPED: {attack.name} ({policy})\n{got.show()}"
    assert got.status == 0, f"{attack.name}: exit {got.status}\n{got.show()}"
    # what the guest cannot see for itself: the target is untouched
    assert _victim(stack, attack) == before, f"ESCAPED: {attack.name} changed the target"
    if attack.target in ("data", "state", "cache", "key"):
        path, marker = stack.target(attack.target)
        assert marker in Path(path).read_text(), f"ESCAPED: {attack.name} changed the target"
    planted = [p for p in Path(stack.target(attack.target)[0]).parent.iterdir()
               if p.name.startswith("planted-")]
    assert planted == [], f"ESCAPED: {attack.name} planted {planted}"
    if attack.target.endswith("_sock"):
        assert stat.S_ISSOCK(os.stat(stack.target(attack.target)[0]).st_mode), "replaced"
