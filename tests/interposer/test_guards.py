"""The guard rows (issue #16): which calls the filter traps, and what their handlers decide.

Pure: the filter's conditions are evaluated here as the kernel's BPF would
(64-bit compares), and the handlers run on the fakes of ``test_handlers``;
``tests/escape/test_escape.py`` runs the same attacks against real processes.
"""

from __future__ import annotations

import errno
import struct
import subprocess
import sys

import pytest
from test_handlers import FakeEnv, FakeGuest

from synthfs.interposer.actions import CONTINUE, Fail, Return, RunChecked, Scratch
from synthfs.interposer.ports import Call, FsState, Proc
from synthfs.interposer.syscalls import BY_NAME, SCRATCH_GUARD_END, Action, Cond, SyscallSpec

M64 = (1 << 64) - 1
TRUSTED, TRUSTED_GROUP, GUEST = 1, 7, 500  # what FakeHost trusts


def _holds(c: Cond, args: tuple[int, ...]) -> bool:
    a = args[c.index] & M64
    if c.op == "MASKED_EQ":
        return a & c.mask == c.value
    return {"LT": a < c.value, "GT": a > c.value, "EQ": a == c.value, "NE": a != c.value}[c.op]


def trapped(spec: SyscallSpec, *args: int) -> bool:
    """Whether the filter's rule for ``spec`` fires on these arguments."""
    full = (*args, 0, 0, 0, 0, 0, 0)[:6]
    return not spec.when or any(all(_holds(c, full) for c in alt) for alt in spec.when)


def run(name: str, *args: int, guest: FakeGuest | None = None, env: FakeEnv | None = None):
    guest = guest or FakeGuest()
    env = env or FakeEnv()
    spec = BY_NAME[name]
    full = (*[a & M64 for a in args], 0, 0, 0, 0, 0, 0)[:6]
    call = Call(spec.nr, name, full, guest, Proc(tgid=guest.tgid, fs=FsState()))
    assert spec.handler is not None
    return spec.handler(call, env)


# -- the scratch area --------------------------------------------------------------------------

LOW = 0x1000  # inside FakeGuest's scratch area


@pytest.mark.parametrize("name", ["pkey_mprotect", "remap_file_pages", "shmat", "brk"])
def test_memory_guards(name: str) -> None:
    spec = BY_NAME[name]
    if name == "shmat":
        assert trapped(spec, 3, LOW) and not trapped(spec, 3, 0)
        assert run(name, 3, LOW) == Fail(errno.EPERM)
        assert run(name, 3, 0x7F0000000000) is CONTINUE
        return
    if name == "brk":
        # brk(0) (every malloc start) and a normal break are never stopped
        assert not trapped(spec, 0) and not trapped(spec, 0x555555560000)
        assert not trapped(spec, SCRATCH_GUARD_END)
        for addr in (1, LOW, 0x10001, SCRATCH_GUARD_END - 1):
            assert trapped(spec, addr), hex(addr)
        assert run(name, 0x10001) == RunChecked(BY_NAME["brk"].nr, (0,))  # the current break
        return
    assert trapped(spec, LOW) and not trapped(spec, SCRATCH_GUARD_END)
    assert run(name, LOW, 4096) == Fail(errno.EPERM)
    assert run(name, 0x10000, 4096) is CONTINUE  # FakeGuest's area ends at 0x10000


def test_prctl() -> None:
    """PR_SET_MM is refused; PR_SET_DUMPABLE is answered, not done, by a supervisor
    that could not read a non-dumpable guest's /proc files (no CAP_SYS_PTRACE)."""
    spec = BY_NAME["prctl"]
    for option in (35, 4, 3):  # PR_SET_MM, PR_SET_DUMPABLE, PR_GET_DUMPABLE
        assert trapped(spec, option) and trapped(spec, option | 1 << 32)  # an int
    assert not trapped(spec, 15)  # PR_SET_NAME runs natively
    assert run("prctl", 35, 13) == Fail(errno.EPERM)
    env = FakeEnv()
    assert run("prctl", 4, 0, env=env) is CONTINUE  # with CAP_SYS_PTRACE: the kernel's
    env.reads_undumpable = False
    guest = FakeGuest()
    proc = Proc(tgid=guest.tgid, fs=FsState())

    def prctl(*args: int) -> object:
        call = Call(spec.nr, "prctl", (*args, 0, 0, 0, 0, 0, 0)[:6], guest, proc)
        return spec.handler(call, env)  # type: ignore[misc]

    assert prctl(3) == Return(1)
    assert prctl(4, 2) == Fail(errno.EINVAL) and prctl(4, 1 << 32) == Fail(errno.EINVAL)
    assert prctl(4, 0) == Return(0) and proc.dumpable == 0
    assert prctl(3) == Return(0)
    assert prctl(35, 13) == Fail(errno.EPERM)


def test_file_system_wide_ioctls_are_refused() -> None:
    for req in (0x40086602, 0xC0045877, 0xC0045878, 0x8004587D):  # SETFLAGS, (UN)FREEZE, SHUTDOWN
        assert trapped(BY_NAME["ioctl"], 3, req | 1 << 40)
        assert run("ioctl", 3, req, 0) == Fail(errno.EPERM)


def test_userfaultfd_is_refused() -> None:
    assert BY_NAME["userfaultfd"].action is Action.ERRNO
    assert run("ioctl", 3, 0xAA00, 0) == Fail(errno.EPERM)  # USERFAULTFD_IOC_NEW
    assert trapped(BY_NAME["ioctl"], 3, 0xAA00 | 1 << 40)


# -- other processes -----------------------------------------------------------------------------


PID_CALLS = [
    "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sched_setscheduler",
    "sched_setparam", "sched_setattr", "migrate_pages", "move_pages", "get_robust_list",
]


@pytest.mark.parametrize(
    "name",
    [*PID_CALLS, "kcmp", "pidfd_send_signal", "ioprio_set", "process_vm_writev",
     "process_madvise", "process_mrelease", "pidfd_getfd", "vhangup"],
)
def test_pid_guards(name: str) -> None:
    spec = BY_NAME[name]
    if spec.action is Action.ERRNO:
        assert spec.errno == errno.EPERM and not spec.when
        return
    if name in PID_CALLS:
        assert run(name, TRUSTED) == Fail(errno.EPERM)
        assert run(name, GUEST) is CONTINUE
        assert trapped(spec, TRUSTED)
    elif name == "kcmp":
        assert run(name, GUEST, TRUSTED) == Fail(errno.EPERM)
        assert run(name, TRUSTED, GUEST) == Fail(errno.EPERM)
        assert run(name, GUEST, GUEST + 1) is CONTINUE
    elif name == "pidfd_send_signal":
        guest = FakeGuest()
        guest.pidfds[5] = TRUSTED
        guest.pidfds[6] = GUEST
        guest.fds[7] = f"/proc/{TRUSTED}"
        assert run(name, 5, 9, guest=guest) == Fail(errno.EPERM)
        assert run(name, 7, 9, guest=guest) == Fail(errno.EPERM)
        assert run(name, 6, 9, guest=guest) is CONTINUE
    elif name == "ioprio_set":
        assert run(name, 1, TRUSTED) == Fail(errno.EPERM)  # IOPRIO_WHO_PROCESS
        assert run(name, 2, TRUSTED_GROUP) == Fail(errno.EPERM)  # IOPRIO_WHO_PGRP
        assert run(name, 3, 0) == Fail(errno.EPERM)  # IOPRIO_WHO_USER: every process of a uid
        assert run(name, 1, GUEST) is CONTINUE
        assert not trapped(spec, 1, 0) and trapped(spec, 3, 0)


def test_setpriority() -> None:
    assert run("setpriority", 0, TRUSTED, 19) == Fail(errno.EPERM)
    assert run("setpriority", 1, TRUSTED_GROUP, 19) == Fail(errno.EPERM)
    assert run("setpriority", 2, 0, 19) == Fail(errno.EPERM)
    assert run("setpriority", 0, GUEST, 19) is CONTINUE
    assert not trapped(BY_NAME["setpriority"], 0, 0, 5)  # nice(): the caller itself


def _mem(guest: FakeGuest, addr: int, data: bytes) -> int:
    guest.memory[addr] = data
    return addr


@pytest.mark.parametrize("cmd_bits", [0, 1 << 32])
def test_file_owner_toward_trusted_processes(cmd_bits: int) -> None:
    """F_SETOWN / F_SETOWN_EX / FIOSETOWN / SIOCSPGRP / TIOCSPGRP: a trusted pid or group
    is refused; anything else runs on a checked copy of the pointed-to value."""
    fcntl, ioctl = BY_NAME["fcntl"], BY_NAME["ioctl"]
    for cmd in (8, 15):
        assert trapped(fcntl, 3, cmd | cmd_bits)
    assert not trapped(fcntl, 3, 4)  # F_SETFL runs natively
    assert run("fcntl", 3, 8 | cmd_bits, TRUSTED) == Fail(errno.EPERM)
    assert run("fcntl", 3, 8, -TRUSTED_GROUP) == Fail(errno.EPERM)
    assert run("fcntl", 3, 8, GUEST) is CONTINUE
    guest = FakeGuest()
    bad = _mem(guest, 0x9000, struct.pack("ii", 1, TRUSTED))
    group = _mem(guest, 0x9100, struct.pack("ii", 2, TRUSTED_GROUP))
    ok = _mem(guest, 0x9200, struct.pack("ii", 1, GUEST))
    assert run("fcntl", 3, 15, bad, guest=guest) == Fail(errno.EPERM)
    assert run("fcntl", 3, 15, group, guest=guest) == Fail(errno.EPERM)
    r = run("fcntl", 3, 15 | cmd_bits, ok, guest=guest)
    assert isinstance(r, RunChecked) and r.args[2] == Scratch(struct.pack("ii", 1, GUEST))
    for req in (0x8901, 0x8902, 0x5410):
        assert trapped(ioctl, 3, req | cmd_bits)
        who = TRUSTED_GROUP if req == 0x5410 else TRUSTED
        bad_int = _mem(guest, 0xA000, struct.pack("i", who))
        assert run("ioctl", 3, req, bad_int, guest=guest) == Fail(errno.EPERM)
        r = run("ioctl", 3, req, _mem(guest, 0xA100, struct.pack("i", GUEST)), guest=guest)
        assert isinstance(r, RunChecked) and r.args[2] == Scratch(struct.pack("i", GUEST))
    assert run("ioctl", 3, 0x8901, _mem(guest, 0xA200, struct.pack("i", -TRUSTED_GROUP)),
               guest=guest) == Fail(errno.EPERM)
    assert not trapped(ioctl, 3, 0x5401)  # TCGETS runs natively


# -- device nodes ([host] mknod) -------------------------------------------------------------

_POLICY = """\
version = 1
name = "t"
description = "t"
[[mount]]
path = "/data"
[[app]]
name = "all"
match.exe = ["/**"]
allow = [{ paths = ["/data/**"], ops = ["*"] }]
[host]
write = ["/work/**", "/dev/**"]
"""


def test_device_nodes_need_a_mknod_glob() -> None:
    """A write-listed /dev/** means the nodes that exist: making one needs [host] mknod."""
    from synthfs.policy.engine import Op, Policy, PolicyError

    pol = Policy.from_text(_POLICY)
    app = pol.identify("/usr/bin/mknod", ["mknod"], lambda: "")
    assert pol.decide_host(app, Op.CREATE, "/dev/sdz").allowed
    for path in ("/dev/sdz", "/work/node"):
        d = pol.decide_mknod(app, path)
        assert not d.allowed and d.errno == errno.EPERM and "no mknod list" in d.reason
    pol = Policy.from_text(_POLICY + 'mknod = ["/work/nodes/*"]\n')
    assert pol.decide_mknod(app, "/work/nodes/null").allowed
    denied = pol.decide_mknod(app, "/dev/sdz")
    assert not denied.allowed and denied.errno == errno.EPERM
    assert Policy.default().decide_mknod(app, "/dev/x").allowed  # no [host]: untouched
    with pytest.raises(PolicyError, match="unknown op 'mknod'"):
        Policy.from_text(_POLICY.replace('ops = ["*"]', 'ops = ["mknod"]'))


def test_mknod_of_a_device_asks_the_mknod_rule() -> None:
    guest, env = FakeGuest(), FakeEnv()
    asked: list[tuple[str, str]] = []

    def check_host(call: Call, op: str, path: str, via: str | None = None) -> int:
        asked.append((op, path))
        return errno.EPERM if op == "mknod" else 0

    env.check_host = check_host  # type: ignore[method-assign]
    path = guest.put(0x100, "/work/node")
    assert run("mknod", path, 0o20600, 0x103, guest=guest, env=env) == Fail(errno.EPERM)
    assert ("mknod", "/work/node") in asked
    asked.clear()
    at_fdcwd = -100
    assert run("mknodat", at_fdcwd, path, 0o60600, 0x800, guest=guest, env=env) == Fail(errno.EPERM)
    assert ("mknod", "/work/node") in asked  # a block device too
    asked.clear()
    r = run("mknod", path, 0o10600, 0, guest=guest, env=env)  # a FIFO: create only
    assert isinstance(r, RunChecked) and [op for op, _ in asked] == ["create"]


# -- SECURITY.md's matrix is the table's ---------------------------------------------------------


def test_security_md_matrix_is_generated_from_the_table() -> None:
    """SECURITY.md's matrix is ``synthfs syscalls --security-matrix``, verbatim; every
    test a row names exists."""
    from pathlib import Path

    from synthfs.interposer.syscalls import TABLE
    from synthfs.interposer.syscalls_cli import matrix

    root = Path(__file__).resolve().parents[2]
    text = (root / "SECURITY.md").read_text()
    start, end = "<!-- matrix: synthfs syscalls --security-matrix -->\n", "<!-- matrix end -->"
    assert start in text and end in text
    shown = text.split(start, 1)[1].split(end, 1)[0]
    assert shown == matrix(), "SECURITY.md is stale: paste `synthfs syscalls --security-matrix`"
    named = {spec.shown_by for spec in TABLE if spec.shown_by}
    files = sorted({n.partition("::")[0] for n in named})
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *files],
        cwd=root, capture_output=True, text=True, timeout=120,
    ).stdout.splitlines()
    ids = set(collected) | {c.partition("[")[0] for c in collected}
    assert not named - ids, f"rows name tests that do not exist: {sorted(named - ids)}"
