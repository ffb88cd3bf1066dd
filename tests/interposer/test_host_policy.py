"""[host] rules in the interposer: one check on the resolved real path, audited.

Pure units (FakeEnv's repository and guest, the real policy engine and the
real ``RunEnv.check_host``) first, then policy triples run for real under
``synthfs run --data`` (real server, agent and guests).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from test_handlers import FakeEnv, FakeGuest

from synthfs.interposer import abi
from synthfs.interposer.actions import Fail, Return, RunChecked, Scratch
from synthfs.interposer.ports import Call, FsState, Proc
from synthfs.interposer.run import RunEnv
from synthfs.interposer.syscalls import BY_NAME, TABLE, Action, Role
from synthfs.policy.engine import READ_OPS, WRITE_OPS, Op, Policy

AT_FDCWD = abi.AT_FDCWD & (2**64 - 1)

HOST_POLICY = """\
version = 1
name = "host"
description = "unit tests: host readable except {ws}/hidden, writable only in {ws}/out"
default = "allow"

[[mount]]
path = "/data"

[host]
read = ["/usr/**", "/etc/**", "/proc/**", "{ws}", "{ws}/in/**", "{ws}/out/**"]
write = ["{ws}/out/**"]
"""


class RealPaths(FakeEnv):
    """FakeEnv with the host side resolving real paths, and the real RunEnv checks."""

    def __init__(self, ws: Path, audit_all: bool = False) -> None:
        super().__init__()
        self.policy = Policy.from_text(HOST_POLICY.format(ws=ws), name="host.toml")
        self.log = io.StringIO()
        self.run_env = RunEnv(self.ns, self.repo, self.host, self.policy, self.log, audit_all)  # type: ignore[arg-type]
        self.host.realpath = lambda p, follow, guest=(0, 0): _realpath(p, follow)  # type: ignore[method-assign]
        self.network = self.policy.network

    def check_host(self, call: Call, op: str, path: str, via: str = "") -> int:
        return self.run_env.check_host(call, op, path)

    def check_host_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        return self.run_env.check_host_rename(call, src, dst, tree)

    @property
    def host_rules(self) -> bool:
        return self.run_env.host_rules

    def pin(self, real_path: str, whole: bool, via: str | None = None) -> tuple[str, int] | None:
        return self.run_env.pin(real_path, whole, via)

    def unpin(self, fd: int) -> None:
        self.run_env.unpin(fd)

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def _realpath(path: str, follow: bool) -> str:
    if follow:
        return os.path.realpath(path)
    head, _, name = path.rpartition("/")
    return os.path.join(os.path.realpath(head or "/"), name)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "hidden").mkdir()
    (tmp_path / "in" / "r.txt").write_text("read me\n")
    (tmp_path / "out" / "w.txt").write_text("write me\n")
    (tmp_path / "hidden" / "h.txt").write_text("hidden\n")
    # a symlink in the writable dir that leads to a read-only file
    (tmp_path / "out" / "to_in").symlink_to(tmp_path / "in" / "r.txt")
    return tmp_path


@pytest.fixture
def world(ws: Path):
    guest, env = FakeGuest(), RealPaths(ws)
    proc = Proc(tgid=guest.tgid, fs=FsState(), exe="/usr/bin/tool", app=env.policy.unmatched)
    addr = iter(range(0x1000, 0x100000, 0x100))

    def call(name: str, *args: int | str):
        spec = BY_NAME[name]
        values = [guest.put(next(addr), a) if isinstance(a, str) else a for a in args]
        full = (values + [0] * 6)[:6]
        assert spec.handler is not None
        return spec.handler(Call(spec.nr, name, tuple(full), guest, proc), env)

    return ws, env, call


def _path(result: RunChecked, index: int = 1) -> str:
    arg = result.args[index]
    assert isinstance(arg, Scratch)
    return arg.data.rstrip(b"\0").decode()


def test_every_path_syscall_has_a_host_op_in_the_right_class() -> None:
    opens = {"open", "openat", "openat2", "creat"}
    for spec in TABLE:
        if spec.action is Action.TRACE and Role.PATH in spec.args and spec.name not in opens:
            assert spec.ops or spec.host_op, f"{spec.name}: no host op (would be asked 'write')"
        if spec.host_op or spec.ops:
            assert Op(spec.host_operation) in READ_OPS | WRITE_OPS
        assert all(Op(op) for op in spec.ops)
    # queries are read class, mutations write class (docs/policy.md)
    for name in ("stat", "lstat", "statx", "access", "readlink", "getxattr", "statfs", "execve"):
        assert Op(BY_NAME[name].host_operation) in READ_OPS, name
    for name in ("mkdir", "unlink", "rename", "link", "symlink", "chmod", "truncate", "utimensat"):
        assert Op(BY_NAME[name].host_operation) in WRITE_OPS, name


def test_opens_are_decided_by_their_access_on_the_real_path(world) -> None:
    ws, env, call = world
    r = call("openat", AT_FDCWD, f"{ws}/in/r.txt", os.O_RDONLY, 0)
    assert isinstance(r, RunChecked) and _path(r) == f"{ws}/in/r.txt"
    _f, _m, resolve = abi.OPEN_HOW.unpack(r.args[2].data)  # type: ignore[union-attr]
    assert resolve & abi.RESOLVE_NO_SYMLINKS  # the kernel may not follow a swapped-in link
    assert call("openat", AT_FDCWD, f"{ws}/in/r.txt", os.O_WRONLY, 0) == Fail(errno.EACCES)
    assert call("open", f"{ws}/in/r.txt", os.O_RDONLY | os.O_TRUNC, 0) == Fail(errno.EACCES)
    assert call("open", f"{ws}/in/new", os.O_RDONLY | os.O_CREAT, 0o644) == Fail(errno.EACCES)
    assert isinstance(call("open", f"{ws}/out/w.txt", os.O_RDWR, 0), RunChecked)
    assert isinstance(call("creat", f"{ws}/out/new", 0o644), RunChecked)
    assert call("open", f"{ws}/hidden/h.txt", os.O_RDONLY, 0) == Fail(errno.EACCES)
    ops = [(r["op"], r["path"], r["errname"]) for r in env.records()]
    assert ops == [
        ("write", f"{ws}/in/r.txt", "EACCES"),
        ("write", f"{ws}/in/r.txt", "EACCES"),
        ("create", f"{ws}/in/new", "EACCES"),
        ("read", f"{ws}/hidden/h.txt", "EACCES"),
    ]


def test_a_symlink_in_a_writable_dir_is_decided_on_its_target(world) -> None:
    ws, env, call = world
    # out/to_in -> in/r.txt: the link's directory is writable, its target is not.
    assert call("open", f"{ws}/out/to_in", os.O_WRONLY, 0) == Fail(errno.EACCES)
    assert env.records()[-1]["path"] == f"{ws}/in/r.txt"
    r = call("open", f"{ws}/out/to_in", os.O_RDONLY, 0)
    assert isinstance(r, RunChecked) and _path(r) == f"{ws}/in/r.txt"  # the checked real path
    # the link itself (no follow) lives in the writable dir: deleting it is fine
    r = call("unlink", f"{ws}/out/to_in")
    assert isinstance(r, RunChecked) and _path(r, 1).endswith("/to_in")
    assert r.release is not None
    r.release()
    # '..' resolves before the decision
    assert call("open", f"{ws}/out/../in/r.txt", os.O_WRONLY, 0) == Fail(errno.EACCES)


def test_queries_are_read_class_and_mutations_write_class(world) -> None:
    ws, env, call = world
    assert isinstance(call("stat", f"{ws}/in/r.txt", 0x7000), Return)
    assert call("stat", f"{ws}/hidden/h.txt", 0x7000) == Fail(errno.EACCES)
    assert call("statx", AT_FDCWD, f"{ws}/hidden/h.txt", 0, 0xFFF, 0x7000) == Fail(errno.EACCES)
    assert call("readlink", f"{ws}/hidden/h.txt", 0x7000, 100) == Fail(errno.EACCES)
    assert call("access", f"{ws}/in/r.txt", os.R_OK) == Return(0)
    assert call("access", f"{ws}/in/r.txt", os.W_OK) == Fail(errno.EACCES)  # would be denied
    assert call("access", f"{ws}/out/w.txt", os.W_OK) == Return(0)
    assert call("access", f"{ws}/hidden/h.txt", os.F_OK) == Fail(errno.EACCES)
    denied = Fail(errno.EACCES)
    assert call("mkdir", f"{ws}/in/d", 0o755) == denied
    assert isinstance(call("mkdir", f"{ws}/out/d", 0o755), RunChecked)
    assert call("unlink", f"{ws}/in/r.txt") == denied
    assert call("rmdir", f"{ws}/in") == denied
    assert call("chmod", f"{ws}/in/r.txt", 0o600) == denied
    assert call("chown", f"{ws}/in/r.txt", 0, 0) == denied
    assert call("truncate", f"{ws}/in/r.txt", 0) == denied
    assert call("utimensat", AT_FDCWD, f"{ws}/in/r.txt", 0, 0) == denied
    assert call("symlink", "/etc/passwd", f"{ws}/in/l") == denied
    assert isinstance(call("symlink", "/etc/passwd", f"{ws}/out/l"), RunChecked)
    assert call("setxattr", f"{ws}/in/r.txt", "user.x", 0, 0, 0) == denied
    assert call("mknod", f"{ws}/in/fifo", 0o10644, 0) == denied
    # rename needs write on both ends
    assert call("rename", f"{ws}/in/r.txt", f"{ws}/out/r.txt") == denied
    assert call("rename", f"{ws}/out/w.txt", f"{ws}/in/w.txt") == denied
    assert isinstance(call("rename", f"{ws}/out/w.txt", f"{ws}/out/w2.txt"), RunChecked)
    assert {r["op"] for r in env.records()} == {
        "stat", "write", "create", "delete", "chmod", "rename",
    }  # fmt: skip


def test_mutations_run_on_a_pinned_path(world) -> None:
    """The kernel walks /proc/SUPERVISOR/fd/N[/name]: an fd opened with RESOLVE_NO_SYMLINKS."""
    ws, env, call = world
    r = call("unlink", f"{ws}/out/w.txt")
    assert isinstance(r, RunChecked) and r.release is not None
    pinned = _path(r)
    prefix = f"/proc/{os.getpid()}/fd/"
    assert pinned.startswith(prefix) and pinned.endswith("/w.txt")
    fd = int(pinned[len(prefix) :].split("/")[0])
    assert os.readlink(f"/proc/self/fd/{fd}") == f"{ws}/out"  # the checked parent
    r.release()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed after the call
    r = call("chmod", f"{ws}/out/w.txt", 0o600)  # follows the last component: pin the object
    assert isinstance(r, RunChecked) and r.release is not None
    fd = int(_path(r)[len(prefix) :])
    assert os.readlink(f"/proc/self/fd/{fd}") == f"{ws}/out/w.txt"
    r.release()
    # a symlink where the checked path had a directory: ELOOP, nothing runs
    os.rename(ws / "out", ws / "out.real")
    (ws / "out").symlink_to(ws / "in")
    with pytest.raises(OSError) as exc:
        env.run_env.pin(f"{ws}/out/w.txt", False)
    assert exc.value.errno == errno.ELOOP


def test_a_hard_link_to_a_read_only_file_is_refused(world) -> None:
    """ln in/r.txt out/r would let a later write to out/r change in/r.txt."""
    ws, env, call = world
    assert call("link", f"{ws}/in/r.txt", f"{ws}/out/r") == Fail(errno.EACCES)
    assert env.records()[-1]["path"] == f"{ws}/in/r.txt" and env.records()[-1]["op"] == "link"
    r = call("link", f"{ws}/out/w.txt", f"{ws}/out/w2")
    assert isinstance(r, RunChecked)


def test_private_paths_stay_refused_whatever_the_policy(world) -> None:
    ws, env, call = world
    assert call("open", "/cache/objects/x", os.O_RDONLY, 0) == Fail(errno.EACCES)


@pytest.fixture
def own_fds(ws: Path):
    """A guest that is this process (its /proc/PID/fd is real), and a call maker."""
    guest, env = FakeGuest(), RealPaths(ws)
    guest.tgid = guest.tid = os.getpid()  # type: ignore[misc]
    proc = Proc(tgid=guest.tgid, fs=FsState(), exe="/usr/bin/tool", app=env.policy.unmatched)
    addr = iter(range(0x1000, 0x100000, 0x100))

    def call(name: str, *args: int | str):
        spec = BY_NAME[name]
        values = [guest.put(next(addr), a) if isinstance(a, str) else a for a in args]
        assert spec.handler is not None
        full = tuple((values + [0] * 6)[:6])
        return spec.handler(Call(spec.nr, name, full, guest, proc), env)

    return env, call


def _link_text(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_pipes_through_magic_links_are_not_host_paths(own_fds) -> None:
    env, call = own_fds
    r, w = os.pipe()
    try:
        env.host.realpath = lambda p, follow, guest=(0, 0): _link_text(w)  # type: ignore[method-assign]
        result = call("open", f"/proc/self/fd/{w}", os.O_WRONLY, 0)
        assert isinstance(result, RunChecked)
        # the kernel opens the supervisor's own fd on the pipe, not the guest's fd N
        pinned = int(_path(result).rpartition("/")[2])
        assert _link_text(pinned) == _link_text(w) and pinned != w
        assert result.release is not None
        result.release()
        with pytest.raises(OSError):
            os.fstat(pinned)  # unpinned after the call
        assert env.records() == []
    finally:
        os.close(r)
        os.close(w)


def test_a_magic_link_that_changed_since_the_check_is_not_opened(own_fds, ws: Path) -> None:
    """open(/proc/self/fd/N) with N a pipe at the check, then (a guest thread's dup2)
    a read-only fd of a file the rules keep from writing: refused, never handed on."""
    env, call = own_fds
    r, w = os.pipe()
    ro = os.open(ws / "in" / "r.txt", os.O_RDONLY)
    checked = _link_text(w)
    try:

        def swapped(p: str, follow: bool, guest: tuple[int, int] = (0, 0)) -> str:
            os.dup2(ro, w)  # lands between the check and the kernel's open
            return checked

        env.host.realpath = swapped  # type: ignore[method-assign]
        assert call("open", f"/proc/self/fd/{w}", os.O_WRONLY, 0) == Fail(errno.EACCES)
        # the same race against a call the kernel runs on the path (truncate)
        r2, w2 = os.pipe()
        os.dup2(w2, w)
        os.close(r2)
        os.close(w2)
        checked = _link_text(w)
        assert call("truncate", f"/proc/self/fd/{w}", 0) == Fail(errno.EACCES)
        assert (ws / "in" / "r.txt").read_text() != ""
    finally:
        for fd in (r, w, ro):
            os.close(fd)


def test_audit_all_records_host_allows(ws: Path) -> None:
    guest, env = FakeGuest(), RealPaths(ws, audit_all=True)
    proc = Proc(tgid=guest.tgid, fs=FsState(), exe="/usr/bin/tool", app=env.policy.unmatched)
    spec = BY_NAME["open"]
    guest.put(0x100, f"{ws}/in/r.txt")
    call = Call(spec.nr, "open", (0x100, os.O_RDONLY, 0, 0, 0, 0), guest, proc)
    assert isinstance(BY_NAME["open"].handler(call, env), RunChecked)
    (rec,) = env.records()
    assert rec["decision"] == "allow" and rec["errno"] == 0 and rec["errname"] == ""
    assert rec["rule"].startswith("host.toml:") and rec["op"] == "read"  # type: ignore[union-attr]
    assert set(rec) == {
        "event", "time", "pid", "exe", "app", "syscall", "path", "op", "decision", "rule",
        "errno", "errname", "latency_us",
    }  # fmt: skip


def test_no_host_section_means_no_host_decision(ws: Path) -> None:
    policy = Policy.default("/data")
    log = io.StringIO()
    env = FakeEnv()
    run_env = RunEnv(env.ns, env.repo, env.host, policy, log, True)  # type: ignore[arg-type]
    proc = Proc(tgid=1, fs=FsState(), app=policy.unmatched)
    call = Call(2, "open", (0, 0, 0, 0, 0, 0), FakeGuest(), proc)
    assert run_env.check_host(call, "write", "/etc/passwd") == 0
    assert log.getvalue() == ""


# -- policy triples, run for real -------------------------------------------------------------

SYNTHFS = helpers.synthfs_command()
ROOT = Path(__file__).resolve().parents[2]
CI_TOML = ROOT / "policies" / "ci.toml"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 90):
    return subprocess.run(
        [*SYNTHFS, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (ci.toml lets guests write /tmp/**), holding the workspace."""
    base = Path(tempfile.mkdtemp(prefix="synthfs-host-", dir="/var/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ci_data(tmp_path: Path) -> Path:
    data = tmp_path / "ci-data"
    (data / "fixtures").mkdir(parents=True)
    (data / "artifacts").mkdir()
    (data / "fixtures" / "in.txt").write_text("fixture\n")
    return data


@pytest.mark.ptrace
def test_ci_toml_host_writes_only_in_the_workspace(outside: Path, ci_data: Path) -> None:
    ws = outside / "ws"
    ws.mkdir()
    (outside / "victim.txt").write_text("untouched\n")
    audit = outside / "audit.jsonl"
    script = textwrap.dedent(f"""\
        cat /data/fixtures/in.txt > {ws}/copy.txt && echo inside=ok
        echo x > {outside}/new.txt || echo outside-create=denied
        echo x >> {outside}/victim.txt || echo outside-append=denied
        rm -f {outside}/victim.txt || echo outside-rm=denied
        mkdir {outside}/d || echo outside-mkdir=denied
        cat {outside}/victim.txt
        cp /data/fixtures/in.txt /data/artifacts/out.txt && echo artifact=ok
        """)
    env = {**os.environ, "WORKSPACE": str(ws)}
    r = run(
        "run", "--data", str(ci_data), "--policy", str(CI_TOML), "--audit", str(audit),
        "--", "sh", "-c", script, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "inside=ok",
        "outside-create=denied",
        "outside-append=denied",
        "outside-rm=denied",
        "outside-mkdir=denied",
        "untouched",
        "artifact=ok",
    ], r.stderr
    assert (ws / "copy.txt").read_text() == "fixture\n"
    assert (outside / "victim.txt").read_text() == "untouched\n"
    assert not (outside / "new.txt").exists() and not (outside / "d").exists()
    assert (ci_data / "artifacts" / "out.txt").read_text() == "fixture\n"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert records and all(rec["decision"] == "deny" for rec in records)
    assert {(rec["op"], rec["path"]) for rec in records} >= {
        ("create", f"{outside}/new.txt"),
        ("create", f"{outside}/victim.txt"),  # >> opens with O_CREAT
        ("delete", f"{outside}/victim.txt"),
        ("create", f"{outside}/d"),
    }
    assert all(rec["errno"] == errno.EACCES and rec["errname"] == "EACCES" for rec in records)
    assert all(rec["app"] == "ci-job" and rec["rule"].startswith("ci.toml:") for rec in records)


def test_execve_notes_what_it_checked_and_a_changed_image_is_killed(world) -> None:
    """An execve under [host] rules notes the checked file's (dev, ino) (a script's
    interpreter's); at the exec stop another mapped image is a reason to kill."""
    ws, env, call = world
    prog = ws / "out" / "prog"
    shutil.copy("/bin/true", prog)
    script = ws / "out" / "s.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    for path, want in ((prog, prog), (script, Path("/bin/sh"))):
        proc = Proc(tgid=os.getpid(), fs=FsState(), app=env.policy.unmatched)
        guest = FakeGuest()
        guest.tgid = os.getpid()
        addr = guest.put(0x1000, str(path))
        spec = BY_NAME["execve"]
        args = (addr, 0, 0, 0, 0, 0)
        result = spec.handler(Call(spec.nr, "execve", args, guest, proc), env)
        assert isinstance(result, RunChecked)
        s = want.stat()
        assert proc.exec_checked is not None
        assert {(s.st_dev, s.st_ino), _obj(LOADER)} <= proc.exec_checked
    # at the exec stop (this process stands in for the new image): the mapped file
    me = Path(f"/proc/{os.getpid()}/exe").stat()
    proc = Proc(tgid=os.getpid(), fs=FsState(), exe=sys.executable)
    proc.exec_checked = {(me.st_dev, me.st_ino), _obj(LOADER)}
    assert env.run_env.identify(proc) is None and proc.exec_checked is None
    proc.exec_checked = {(me.st_dev, me.st_ino)}  # the PT_INTERP loader was not checked
    assert env.run_env.identify(proc) is not None
    proc.exec_checked = {(s.st_dev, s.st_ino)}  # /bin/sh: not what is mapped
    assert env.run_env.identify(proc) is not None


def test_executed_objects_follows_interpreters_as_the_kernel(tmp_path: Path) -> None:
    sh = Path("/bin/sh").stat()
    loader, ld = LOADER, _obj(LOADER)

    def objs(path: Path) -> list[tuple[str, tuple[int, int]]] | None:
        fd = os.open(path, os.O_PATH)
        try:
            return abi.executed_objects(fd, str(tmp_path))
        finally:
            os.close(fd)

    def last(path: Path) -> list[tuple[str, tuple[int, int]]] | None:
        found = objs(path)
        return None if found is None else found[-2:]  # the ELF the kernel runs, its loader

    shell = [("/usr/bin/dash", (sh.st_dev, sh.st_ino)), (str(loader), ld)]
    (tmp_path / "a.sh").write_text("#!  /bin/sh -e\n")
    (tmp_path / "b").write_text("#!a.sh\n")  # a relative interpreter (from the cwd), a script
    (tmp_path / "c").write_text("#!/nonexistent\n")
    assert last(tmp_path / "a.sh") == shell
    assert objs(tmp_path / "b") == [
        ("", _obj(tmp_path / "b")),
        (str(tmp_path / "a.sh"), _obj(tmp_path / "a.sh")),
        *shell,
    ]
    assert objs(tmp_path / "c") is None
    elf = Path("/bin/true").stat()
    assert objs(Path("/bin/true")) == [("", (elf.st_dev, elf.st_ino)), (str(loader), ld)]
    # the kernel's limit: five scripts then the ELF run; a sixth script is ELOOP
    (tmp_path / "n1").write_text("#!/bin/sh\n")
    for i in range(2, 7):
        (tmp_path / f"n{i}").write_text(f"#!n{i - 1}\n")
    assert last(tmp_path / "n5") == shell
    assert objs(tmp_path / "n6") is None
    (tmp_path / "d").write_text("#!/bin/sh\0 junk\n")  # a NUL ends the name, as natively
    assert last(tmp_path / "d") == shell


#: The loader the kernel maps for this machine's dynamic ELFs (their PT_INTERP).
LOADER = Path(os.path.realpath("/lib64/ld-linux-x86-64.so.2"))


def _obj(path: Path) -> tuple[int, int]:
    s = path.stat()
    return (s.st_dev, s.st_ino)
