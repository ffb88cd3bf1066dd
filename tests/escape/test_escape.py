"""Escape suite: (policy, command, expected exit) triples, nsjail style.

Every attack is a small program (``attacks/*.c`` compiled here with gcc, or
``attacks/paths.py``) that exits 66 when the forbidden thing happened. Each
attack runs twice:

1. **natively**, against an equivalent unprotected world (a plain directory
   for ``/data``, a canary file for the cache, a listening socket, a dummy
   process): it must exit 66 there. This is the control that proves the
   program can detect its own success; an attack whose control cannot
   succeed on this kernel (x32 disabled, io_uring disabled) is skipped with
   that reason rather than passing vacuously;
2. **under** ``synthfs run --agent`` on an embedded server + agent whose
   cache root and work directory (sockets, bootstrap key) the test knows:
   it must exit with one of the expected statuses and never 66.

The forbidden targets are a canary file the test writes into the agent's
cache root, the bootstrap key and agent socket in the stack's private work
directory (the bootstrap key is deleted once the stack is ready, so a canary
file stands in for it there; DESIGN.md mechanism 6: "refused to every guest by a rule no
policy can loosen"), a file denied by a per-app policy, host files named by
repository symlinks, the scratch page, and the trusted processes.

Run: ``.venv/bin/python -m pytest tests/escape`` (TOCTOU at 10,000 attempts;
``-m slow`` adds the 100,000-attempt runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

ESCAPED = 66
ATTACKS = Path(__file__).resolve().parent / "attacks"
#: Killed by the sandbox's filter (SIGSYS) or by the supervisor (SIGKILL).
KILLED = {128 + signal.SIGSYS, 128 + signal.SIGKILL}
DEEP = "../" * 40

DENY_SECRET_POLICY = """\
version = 1
name = "escape-deny-secret"
description = "escape suite: every program reads /data except /data/secret (EACCES)"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "everyone"
match.exe = ["/**"]
allow = [{ paths = ["/data", "/data/**"], ops = ["*"] }]
deny = [{ paths = ["/data/secret", "/data/secret/**"], ops = ["*"], errno = "EACCES" }]
"""


#: DENY_SECRET_POLICY with the mount's symlinks kept inside it, or refused when they
#: lead out of it (docs/namespace.md): a repository link to a host file gives nothing.
ANCHORED_POLICY = DENY_SECRET_POLICY.replace(
    'path = "/data"\n', 'path = "/data"\nsymlinks = "anchored"\n'
).replace("escape-deny-secret", "escape-anchored")
REFUSE_HOST_POLICY = DENY_SECRET_POLICY.replace(
    'path = "/data"\n', 'path = "/data"\nsymlinks = "refuse-host"\n'
).replace("escape-deny-secret", "escape-refuse-host")


#: Reads of /data/secret denied, every other operation allowed (link too): a new name
#: must still not give what the old one does not.
DENY_READ_SECRET_POLICY = DENY_SECRET_POLICY.replace(
    'ops = ["*"], errno = "EACCES" }]', 'ops = ["read"], errno = "EACCES" }]'
).replace("escape-deny-secret", "escape-deny-secret-read")


# -- the two worlds -------------------------------------------------------------------------


@dataclass
class World:
    """Everything an attack's argv can name, for one side (native control or synthfs)."""

    data: str  # the tree: /data under synthfs, a plain directory natively
    canary: Path  # forbidden file in the (real or stand-in) cache root
    key: Path  # forbidden: a canary in the stack's private work dir (beside sockets and key)
    sock: Path  # forbidden: the agent's socket (or a listening stand-in)
    server_sock: Path  # forbidden: the server's socket (or a listening stand-in)
    agent_pid: int
    server_pid: int
    marker: str
    repo: Path  # host directory holding the tree's contents
    stack: object = None  # the embedded TrustedStack (synthfs side only)

    def fill(self, arg: str) -> str:
        return arg.format(
            data=self.data, canary=self.canary, key=self.key, sock=self.sock,
            server_sock=self.server_sock,
            agent_pid=self.agent_pid, server_pid=self.server_pid, marker=self.marker,
            secret_size=len(self.marker) + 1, deep=DEEP,
        )

    def reset(self) -> None:
        """Put back the canaries (an escaped unlink/rename/write may have changed them)."""
        self.canary.write_text(self.marker + "\n")
        self.key.write_text(self.marker + "\n")
        secret = self.repo / "secret"
        if not secret.is_file() or secret.read_text() != self.marker + "\n":
            secret.write_text(self.marker + "\n")


def build_repo(repo: Path, canary: Path, marker: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "ok").write_text("ok\n")
    (repo / "sub").mkdir(exist_ok=True)
    (repo / "sub" / "f").write_text("f\n")
    (repo / "secret").write_text(marker + "\n")  # policy-denied in the policy cases
    os.makedirs(os.fsencode(repo) + b"/\xff\xfe", exist_ok=True)  # a non-UTF-8 name
    links = {
        "pw_link": "/etc/passwd",
        "etc_link": "/etc",
        "cache_abs": str(canary),
        "cache_rel": DEEP + str(canary).lstrip("/"),
        "cachedir_abs": str(canary.parent),
        "secret_link": "secret",
        "sub/up_secret": "../secret",
        # the served directory's own host path: followed, it is a trusted path
        # (refused), never a way around the per-app rules on /data/secret
        "host_secret": str(repo / "secret"),
    }
    for name, target in links.items():
        if not (repo / name).is_symlink():
            os.symlink(target, repo / name)


@pytest.fixture(scope="module")
def kernel_ok() -> None:
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")


@pytest.fixture(scope="module")
def native_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("native")
    marker = "SYNTHFS-CANARY-" + secrets.token_hex(8)
    cache = base / "cache"
    cache.mkdir()
    work = base / "work"
    work.mkdir()
    canary = cache / "canary"
    key = work / "canary"
    listeners = []
    for name in ("agent.sock", "server.sock"):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(work / name))
        listener.listen(8)
        listeners.append(listener)
    # stands in for the agent and the server (each in a session of its own, as they are)
    # (killed at teardown; it must outlive the module, which takes over 10 min when loaded)
    dummy = subprocess.Popen(["sleep", "86400"], start_new_session=True)
    repo = (base / "tree").resolve()
    build_repo(repo, canary, marker)
    world = World(
        str(repo), canary, key, work / "agent.sock", work / "server.sock",
        dummy.pid, dummy.pid, marker, repo,
    )
    world.reset()
    try:
        yield world
    finally:
        dummy.kill()
        dummy.wait()
        for listener in listeners:
            listener.close()


@pytest.fixture(scope="module")
def synthfs_world(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One embedded server + agent for the module, with known cache and work paths.

    A broken ``agent.embedded`` is an error of every synthfs-side test, not a skip.
    """
    from synthfs.agent.embedded import embedded

    base = tmp_path_factory.mktemp("synthfs")
    marker = "SYNTHFS-CANARY-" + secrets.token_hex(8)
    cache = (base / "cache").resolve()
    repo = (base / "repo").resolve()
    build_repo(repo, cache / "canary", marker)
    with embedded(repo, cache_dir=cache) as stack:
        work = Path(stack.workdir)
        world = World(
            "/data", cache / "canary", work / "canary",
            Path(stack.agent_endpoint.removeprefix("ipc://")),
            Path(stack.server_endpoint.removeprefix("ipc://")),
            stack.agent_pid, stack.server_pid, marker, repo,
        )
        world.stack = stack
        cache.mkdir(parents=True, exist_ok=True)
        world.reset()
        for sock in (world.sock, world.server_sock):
            assert sock.exists(), f"the embedded stack has no {sock}: update this suite"
        yield world


@pytest.fixture(scope="session")
def cbin(tmp_path_factory: pytest.TempPathFactory):
    """Compile ``attacks/NAME.c`` once per session; returns the binary's path."""
    out = tmp_path_factory.mktemp("attacks-bin")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            exe = out / name
            subprocess.run(
                ["gcc", "-O1", "-Wall", "-pthread", "-o", str(exe), str(ATTACKS / f"{name}.c")],
                check=True, timeout=120,
            )
            built[name] = exe
        return built[name]

    return get


# -- running one attack -----------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """(policy, command, expected exit): ``argv[0]`` is ``paths`` or a C program name."""

    name: str
    argv: tuple[str, ...]
    expect: frozenset[int] = frozenset({0})
    policy: str | None = None  # TOML text
    flags: tuple[str, ...] = ()  # more `synthfs run` options, e.g. --read-only
    #: what the unprotected native run must exit with: 66 (it escapes: the program
    #: detects success), or 0 for the few checks whose native answer is already a
    #: refusal that synthfs must reproduce exactly (e.g. ENAMETOOLONG, never a
    #: truncated path that resolves elsewhere)
    control: int = ESCAPED
    #: seconds each run may take (the long TOCTOU runs need more than the default)
    timeout: float = helpers.TIMEOUT


def _argv(attack: Attack, world: World, cbin) -> list[str]:
    prog, *args = attack.argv
    if prog in ("paths", "identity", "borrow", "rename", "confine", "terminal"):
        head = [sys.executable, "-I", str(ATTACKS / f"{prog}.py")]
    else:
        head = [str(cbin(prog))]
    return head + [world.fill(a) for a in args]


def run_attack(attack: Attack, native: World, guest: World, cbin, tmp_path: Path) -> None:
    # 1. the control: natively the attack must succeed, or it proves nothing
    for _ in range(3):  # a race control on a loaded machine may not race at all (exit 3)
        native.reset()
        control = helpers.run_native(_argv(attack, native, cbin), cwd=tmp_path,
                                     timeout=attack.timeout)
        if control.status != 3 or attack.control == 3:
            break
    if control.status != attack.control:
        if "not implemented" in control.stdout or "Function not implemented" in control.stdout:
            pytest.skip(f"this kernel lacks the feature: control said {control.stdout.strip()!r}")
        pytest.fail(f"control run exited {control.status}, not {attack.control}: "
                    "the attack proves nothing\n"
                    f"{control.show()}")
    # 2. under synthfs
    guest.reset()
    extra = list(attack.flags)
    if attack.policy is not None:
        pol = tmp_path / "policy.toml"
        pol.write_text(attack.policy)
        extra += ["--policy", str(pol)]
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(guest.repo, _argv(attack, guest, cbin), stack=guest.stack, extra=extra)
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    # the verdict line of both runs, shown by `pytest -rA` for passing attacks too
    print(f"control: exit {control.status}: {control.stdout.strip()}")
    print(f"synthfs: exit {got.status}: {got.stdout.strip()} {got.stderr.strip()[-300:]}")
    assert got.status != ESCAPED, f"ESCAPED: {attack.name}\n{got.show()}"
    assert got.status in attack.expect, (
        f"{attack.name}: exit {got.status}, expected one of {sorted(attack.expect)}\n{got.show()}"
    )
    if attack.expect == frozenset({0}):
        assert got.stdout.strip(), f"{attack.name}: the attack printed nothing\n{got.show()}"
    assert guest.canary.read_text() == guest.marker + "\n", "the canary was changed"


# -- the attack table ---------------------------------------------------------------------------


def paths(mode: str, target: str = "{canary}", **kw) -> Attack:
    argv = ("paths", mode, "{data}", target, "{marker}")
    return Attack(f"{mode}:{target.replace('{', '').replace('}', '')}", argv, **kw)


NAMESPACE = [
    # the cache root canary, every way a guest can name it
    paths("abs"),
    paths("dotdot"),
    paths("dotdot_relative"),
    paths("dotdot_subdir"),
    paths("dirfd_dotdot"),
    paths("chdir_dotdot"),
    paths("tmp_symlink"),
    paths("tmp_dir_symlink"),
    paths("tmp_symlink_via_data"),
    paths("guest_symlink_abs"),
    paths("guest_symlink_rel"),
    paths("proc_cwd"),
    paths("proc_root"),
    paths("proc_fd_dir"),
    paths("proc_thread_cwd"),
    paths("stat"),
    paths("listdir"),
    paths("rename_into_data"),
    paths("hardlink"),
    paths("unlink"),
    paths("write"),
    paths("openat2_dotdot"),
    paths("openat2_dirfd"),
    # the work directory (sockets; the bootstrap key lives there until both are ready)
    paths("abs", "{key}"),
    paths("dotdot", "{key}"),
    paths("tmp_symlink", "{key}"),
    paths("proc_root", "{key}"),
    paths("stat", "{key}"),
    paths("stat", "{sock}"),
    paths("connect", "{sock}"),
    paths("connect", "{server_sock}"),
    paths("stat", "{server_sock}"),
    # odd spellings of the path
    paths("long_dotdot"),
    paths("too_long", control=0),
    paths("nonutf8_dotdot"),
    # symlinks stored in the repository: followed by default, the cache stays refused
    paths("repo_link", "cache_abs"),
    paths("repo_link", "cache_rel"),
    paths("repo_link", "cachedir_abs/canary"),
    *(
        Attack(f"repo_link:{name}:{mode}", ("paths", "repo_link", "{data}", name, "{marker}"),
               policy=pol)
        for name in ("cache_abs", "cache_rel")
        for mode, pol in (("anchored", ANCHORED_POLICY), ("refuse-host", REFUSE_HOST_POLICY))
    ),
    # ...and a host file under "anchored" (it names a path inside the mount: ENOENT)
    # or "refuse-host" (EACCES), where no [host] rule protects it
    *(
        Attack(f"repo_link_host_file:{link}:{mode}",
               ("paths", "repo_link_host_file", "{data}", f"{link}:/etc/passwd", want),
               policy=pol)
        for link in ("pw_link", "etc_link/passwd")
        for mode, want, pol in (("anchored", "ENOENT", ANCHORED_POLICY),
                                ("refuse-host", "EACCES", REFUSE_HOST_POLICY))
    ),
    # what the cache's host path leaks through
    Attack("maps_leak:ok", ("paths", "maps_leak", "{data}", "ok")),
    Attack("proc_fd_reopen_write:ok", ("paths", "proc_fd_reopen_write", "{data}", "ok"),
           flags=("--read-only",)),
]

# repo_link cache_abs: the native control has the same symlink in a plain directory,
# where it does reach the canary; under synthfs the link is followed (or anchored, or
# refused) and the cache is a trusted path no policy opens.

# The same tricks against a file the per-app policy denies (/data/secret, EACCES),
# where the forbidden thing lives inside the namespace and only the policy stands
# between the guest and it. (listdir is left out: listing /data is allowed.)
POLICY_TRICKS = [
    paths(mode, "{data}/secret", policy=DENY_SECRET_POLICY)
    for mode in (
        "abs", "dotdot", "dotdot_relative", "dotdot_subdir", "dirfd_dotdot", "chdir_dotdot",
        "tmp_symlink", "tmp_dir_symlink", "guest_symlink_rel", "proc_cwd", "proc_fd_dir",
        "stat", "rename_into_data", "hardlink", "hardlink_in_data", "unlink", "write",
        "openat2_dotdot", "openat2_dirfd",
    )
] + [
    Attack("hardlink_in_data:read_denied", ("paths", "hardlink_in_data", "{data}",
                                            "{data}/secret", "{marker}"),
           policy=DENY_READ_SECRET_POLICY),
] + [
    paths("abs", spelled, policy=DENY_SECRET_POLICY)
    for spelled in ("{data}//secret", "{data}/./secret", "{data}/sub/../secret")
] + [
    paths("repo_link", name, policy=DENY_SECRET_POLICY)
    for name in ("secret_link", "sub/up_secret", "host_secret")
]

ABI = [
    Attack("int80_open", ("abi", "int80", "{canary}", "{marker}"), expect=frozenset({0} | KILLED)),
    Attack("x32_openat", ("abi", "x32", "{canary}", "{marker}"), expect=frozenset({0} | KILLED)),
    Attack("io_uring_enosys", ("abi", "io_uring", "-", "-")),
    Attack("clone3_enosys", ("abi", "clone3", "-", "-")),
]

STORMS = [
    Attack(f"storm_{m}", ("storm", m, "{canary}", "{marker}", "100"))
    for m in ("fork", "vfork", "thread")
]

SCRATCH = [
    Attack(f"scratch_{m}", ("scratch", m), expect=frozenset({0} | KILLED))
    for m in (
        "mprotect", "munmap", "madvise", "procmem", "mremap", "mmap_fixed",
        # issue #16 class 1: prctl(PR_SET_MM_MAP) (no capability) moves the heap's break
        # into the area, brk() unmaps it and maps it back writable; userfaultfd would let
        # the guest answer the faults of the kernel's reads of a checked copy
        "prctl_brk", "prctl_brk_nobody", "uffd",
    )
] + [
    # the whole class 1 escape: the area made writable, a thread rewrites the checked
    # copy of an allowed path (a file of the guest's own) with the cache canary's path
    # between the supervisor's check and the kernel's read
    Attack("scratch_prctl_brk_race", ("scratch", "prctl_brk_race", "{canary}", "{marker}"),
           expect=frozenset({0} | KILLED)),
]

TRUSTED = [
    Attack("signal_agent", ("paths", "signal", "{data}", "{agent_pid}")),
    Attack("signal_server", ("paths", "signal", "{data}", "{server_pid}")),
    Attack("signal_supervisor", ("paths", "signal", "{data}", "ppid")),
    Attack("signal_agent_group", ("paths", "signal_group", "{data}", "{agent_pid}")),
    Attack("signal_server_group", ("paths", "signal_group", "{data}", "{server_pid}")),
    Attack("ptrace_agent", ("paths", "ptrace_attach", "{data}", "{agent_pid}")),
    Attack("proc_mem_agent", ("paths", "proc_mem_read", "{data}", "{agent_pid}")),
    Attack("process_vm_readv_agent", ("paths", "process_vm_readv", "{data}", "{agent_pid}")),
    Attack("prlimit_agent", ("paths", "prlimit", "{data}", "{agent_pid}")),
    Attack("prlimit_server", ("paths", "prlimit", "{data}", "{server_pid}")),
    Attack("prlimit_supervisor", ("paths", "prlimit", "{data}", "ppid")),
    Attack("sched_setaffinity_agent", ("paths", "sched_setaffinity", "{data}", "{agent_pid}")),
    Attack("pidfd_agent", ("paths", "pidfd_signal", "{data}", "{agent_pid}")),
    # issue #16 class 2: a file's owner gets F_SETSIG's signal (SIGSTOP here)
    Attack("setown_stop_agent", ("paths", "setown", "{data}", "{agent_pid}")),
    Attack("setown_stop_server", ("paths", "setown", "{data}", "{server_pid}")),
    Attack("setown_group_stop_agent", ("paths", "setown_group", "{data}", "{agent_pid}")),
    Attack("setown_ex_stop_agent", ("paths", "setown_ex", "{data}", "{agent_pid}")),
    Attack("fiosetown_stop_agent", ("paths", "fiosetown", "{data}", "{agent_pid}")),
    Attack("setpriority_agent", ("paths", "setpriority", "{data}", "{agent_pid}")),
]

# The guest shares the user's terminal: typing into it (TIOCSTI, bubblewrap's
# CVE-2017-5226) or pasting a console selection (TIOCLINUX) reaches the user's shell.
TERMINAL = [
    Attack(f"terminal_{m}", ("terminal", m)) for m in ("tiocsti", "tiocsti_high", "tioclinux")
]


# The supervisor's answers land in guest memory as the kernel's own copy would: never
# where the guest itself cannot store (its read-only pages, the scratch area, where
# checked copies of paths wait for the kernel: a readlink or getcwd result aimed there
# would put guest-chosen bytes in another thread's checked path). Natively nothing is
# mapped at the scratch address, and a read-only page gives EFAULT.
ANSWERS = [
    Attack("answers_into_scratch", ("answers", "scratch", "{data}/secret_link", "{data}/sub"),
           control=0),
    Attack("answers_into_read_only", ("answers", "rofault", "{data}/ok"), control=0),
]


def _ids(attacks: list[Attack]) -> list[str]:
    return [a.name for a in attacks]


@pytest.mark.parametrize("attack", NAMESPACE, ids=_ids(NAMESPACE))
def test_namespace_escape(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)
    if attack.flags == ("--read-only",):
        assert (synthfs_world.repo / "ok").read_text() == "ok\n", "read-only file was changed"


@pytest.mark.parametrize("attack", POLICY_TRICKS, ids=_ids(POLICY_TRICKS))
def test_policy_denied_file(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)
    assert (synthfs_world.repo / "secret").read_text() == synthfs_world.marker + "\n"


READ_MODES = (
    "abs", "dotdot", "dotdot_relative", "dotdot_subdir", "dirfd_dotdot", "chdir_dotdot",
    "tmp_symlink", "tmp_dir_symlink", "guest_symlink_rel", "proc_cwd", "proc_fd_dir",
    "openat2_dotdot", "openat2_dirfd",
)


@pytest.mark.parametrize("mode", READ_MODES)
def test_policy_trick_positive_twin(mode, synthfs_world, cbin, tmp_path) -> None:
    """The same trick aimed at the allowed /data/ok must work under the same policy.

    Otherwise the refusal in test_policy_denied_file proves nothing (the trick
    is simply broken under synthfs). Exit 3 = "opened, read something other
    than the marker", i.e. the read went through.
    """
    attack = paths(mode, "{data}/ok", policy=DENY_SECRET_POLICY)
    pol = tmp_path / "policy.toml"
    pol.write_text(DENY_SECRET_POLICY)
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(
        synthfs_world.repo, _argv(attack, synthfs_world, cbin), stack=synthfs_world.stack,
        extra=["--policy", str(pol)],
    )
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    print(f"synthfs: exit {got.status}: {got.stdout.strip()}")
    assert got.status == 3 and "read something else: b'ok\\n'" in got.stdout, got.show()


@pytest.mark.parametrize("attack", ABI, ids=_ids(ABI))
def test_abi_escape(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def identity_policy() -> str:
    """This python may do anything on /data; cat may do nothing there."""
    py = os.path.realpath(sys.executable)
    return f"""\
version = 1
name = "escape-identity"
description = "escape suite: python reads /data, cat is denied /data whatever its name"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "python"
match.exe = ["{py}"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]

[[app]]
name = "cat"
match.exe = ["{os.path.realpath("/usr/bin/cat")}"]
deny = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]
"""


IDENTITY = [
    Attack(f"identity_{m}", ("identity", m, "{data}", "/usr/bin/cat", "{marker}"),
           policy=identity_policy())
    for m in ("plain", "argv0", "execveat", "proc_fd", "symlink")
]


@pytest.mark.parametrize("attack", IDENTITY, ids=_ids(IDENTITY))
def test_exec_identity(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def test_exec_identity_allowed_twin(synthfs_world, cbin, tmp_path) -> None:
    """Under the same policy an exec'd python does read /data/secret (exit 66 here is
    success): otherwise the identity refusals above prove nothing."""
    attack = Attack("twin", ("identity", "allowed_twin", "{data}", "/usr/bin/cat", "{marker}"))
    pol = tmp_path / "policy.toml"
    pol.write_text(identity_policy())
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(
        synthfs_world.repo, _argv(attack, synthfs_world, cbin), stack=synthfs_world.stack,
        extra=["--policy", str(pol)],
    )
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    assert got.status == ESCAPED, got.show()


def borrow_policy() -> str:
    """cat, pinned by its digest, reads /data; so do helpers under /usr/lib; nothing else."""
    cat = os.path.realpath("/usr/bin/cat")
    digest = hashlib.sha256(Path(cat).read_bytes()).hexdigest()
    return f"""\
version = 1
name = "escape-borrow"
description = "escape suite: only the pinned cat (and helpers under /usr/lib) read /data"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "cat"
match.exe = ["{cat}"]
match.sha256 = "{digest}"
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]

[[app]]
name = "helpers"
match.exe = ["/usr/lib/**"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]
"""


@pytest.fixture(scope="session")
def preload_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``attacks/preload.c`` built as a shared library (its constructor reads a file)."""
    so = tmp_path_factory.mktemp("attacks-so") / "preload.so"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-shared", "-fPIC", "-o", str(so), str(ATTACKS / "preload.c")],
        check=True, timeout=120,
    )
    return so


BORROW_MODES = ("ld_preload", "ld_audit", "ldso", "ldso_preload")


@pytest.mark.parametrize("mode", BORROW_MODES)
def test_borrowed_identity(mode, preload_so, native_world, synthfs_world, cbin, tmp_path) -> None:
    """Code the attacker chose (a preloaded library, or any program under ld.so) never
    runs with a pinned or exe-matched app's rules (docs/policy.md)."""
    attack = Attack(
        f"borrow_{mode}",
        ("borrow", mode, "{data}", "/usr/bin/cat", "{marker}", str(preload_so)),
        policy=borrow_policy(),
    )
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def test_borrowed_identity_twin(preload_so, synthfs_world, cbin, tmp_path) -> None:
    """Under the same policy the pinned cat itself does read /data/secret (exit 66 is
    success here): otherwise the refusals above prove nothing."""
    attack = Attack(
        "twin", ("borrow", "twin", "{data}", "/usr/bin/cat", "{marker}", str(preload_so))
    )
    pol = tmp_path / "policy.toml"
    pol.write_text(borrow_policy())
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(
        synthfs_world.repo, _argv(attack, synthfs_world, cbin), stack=synthfs_world.stack,
        extra=["--policy", str(pol)],
    )
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    assert got.status == ESCAPED, got.show()


RENAME_POLICY = """\
version = 1
name = "escape-rename"
description = "escape suite: /data is open except a subtree (and reads of another)"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "everyone"
match.exe = ["/**"]
allow = [{ paths = ["/data", "/data/**"], ops = ["*"] }]
deny = [
  { paths = ["/data/rn_subtree/dir/inner/**"], ops = ["*"] },
  { paths = ["/data/rn_into/private/**"], ops = ["read"] },
]
"""


def _rename_tree(repo: Path, mode: str, marker: str) -> None:
    top = repo / f"rn_{mode}"
    shutil.rmtree(top, ignore_errors=True)
    secret = top / ("dir/inner/secret" if mode == "subtree" else "private/secret")
    secret.parent.mkdir(parents=True)
    secret.write_text(marker + "\n")
    (top / "public").mkdir()


@pytest.mark.parametrize("mode", ["subtree", "into"])
def test_rename_moves_nothing_from_under_a_rule(
    mode, native_world, synthfs_world, cbin, tmp_path
) -> None:
    """Renaming an allowed directory must not make a denied path below it readable
    under its new name, nor a read-denied tree readable by moving it somewhere open."""
    for world in (native_world, synthfs_world):
        _rename_tree(world.repo, mode, world.marker)
    attack = Attack(f"rename_{mode}", ("rename", mode, "{data}", "{marker}"), policy=RENAME_POLICY)
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def test_rename_twin_moves_what_no_rule_tells_apart(synthfs_world, tmp_path) -> None:
    """The same policy lets a directory with no stricter rule inside be renamed."""
    top = synthfs_world.repo / "rn_twin"
    shutil.rmtree(top, ignore_errors=True)
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("f\n")
    pol = tmp_path / "policy.toml"
    pol.write_text(RENAME_POLICY)
    code = (
        "import os; os.rename('/data/rn_twin/a', '/data/rn_twin/c');"
        " print(open('/data/rn_twin/c/b/f').read())"
    )
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(
        synthfs_world.repo, [sys.executable, "-I", "-c", code], stack=synthfs_world.stack,
        extra=["--policy", str(pol)],
    )
    got = helpers.run_native(argv, cwd=tmp_path)
    assert got.status == 0 and got.stdout == "f\n\n", got.show()
    assert (top / "c" / "b" / "f").is_file()


HOST_RENAME_POLICY = """\
version = 1
name = "escape-host-rename"
description = "escape suite: BOX may be renamed, nothing below it read; PUB/** is readable"
default = "allow"

[[mount]]
path = "/data"

[host]
read = ["/usr/**", "/lib/**", "/lib64/**", "/bin/**", "/etc/**", "/proc/**", "/dev/**",
        "/sys/**", "/", "/var", "/var/tmp", "$BASE", "$BASE/box", "$BASE/pub/**", "$VENV/**",
        "$CWD/**", "$ATTACKS/**"]
write = ["$BASE/box", "$BASE/pub/**", "/dev/null", "/dev/tty"]
"""


def test_host_rename_moves_nothing_from_under_a_glob(native_world, tmp_path) -> None:
    """[host] rules: a writable directory whose contents are not readable is not
    renamed into a readable place (natively the secret is read under its new name)."""
    base = Path(tempfile.mkdtemp(prefix="synthfs-rename-", dir="/var/tmp"))
    try:
        (base / "box").mkdir()
        (base / "box" / "secret").write_text(native_world.marker + "\n")
        (base / "pub").mkdir()
        argv = [sys.executable, "-I", str(ATTACKS / "rename.py"), "host", str(base),
                native_world.marker]
        control = helpers.run_native(argv, cwd=tmp_path)
        assert control.status == ESCAPED, f"the control proves nothing\n{control.show()}"
        pol = tmp_path / "policy.toml"
        pol.write_text(HOST_RENAME_POLICY)
        env = {**os.environ, "BASE": str(base), "VENV": str(Path(sys.prefix).resolve()),
               "CWD": str(tmp_path), "ATTACKS": str(ATTACKS)}
        data = tmp_path / "data"
        data.mkdir()
        got = subprocess.run(
            [*helpers.synthfs_command(), "run", "--data", str(data), "--policy", str(pol),
             "--", *argv],
            capture_output=True, text=True, timeout=helpers.TIMEOUT, cwd=tmp_path, env=env,
        )
        print(f"synthfs: exit {got.returncode}: {got.stdout.strip()} {got.stderr.strip()[-300:]}")
        assert got.returncode != ESCAPED, got.stdout + got.stderr
        assert got.returncode == 0 and "rename refused: EXDEV" in got.stdout, (
            got.stdout + got.stderr
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: openat2 confinement (RESOLVE_*): natively refused, so the control must be refused
#: too (exit 0 with the kernel's errno); 66 under synthfs means the flag was dropped.
CONFINE = [
    Attack(f"confine_{m}", ("confine", m, "{data}"), control=0)
    for m in (
        "beneath_dotdot", "beneath_abs", "beneath_abs_link", "beneath_rel_link",
        "in_root_link", "no_symlinks", "no_magiclinks", "no_xdev",
        "data_beneath", "data_beneath_link", "data_in_root", "data_no_symlinks",
    )
]


@pytest.mark.parametrize("attack", CONFINE, ids=_ids(CONFINE))
def test_openat2_confinement_holds(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


@pytest.mark.parametrize("attack", STORMS, ids=_ids(STORMS))
def test_task_storm(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


@pytest.mark.parametrize("attack", SCRATCH, ids=_ids(SCRATCH))
def test_scratch_page(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


@pytest.mark.parametrize("attack", TERMINAL, ids=_ids(TERMINAL))
def test_terminal_injection(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


@pytest.mark.parametrize("attack", TRUSTED, ids=_ids(TRUSTED))
def test_trusted_process_attack(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def device_policy(workdir: Path) -> str:
    """The host may be read; only ``workdir`` and /tmp written; no mknod list."""
    return f"""\
version = 1
name = "escape-devices"
description = "escape suite: host writes only in the work directory; no device nodes"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "everyone"
match.exe = ["/**"]
allow = [{{ paths = ["/data", "/data/**"], ops = ["*"] }}]

[host]
read = ["/**"]
write = ["{workdir}", "{workdir}/**", "/tmp/**"]
"""


def test_device_node(native_world, synthfs_world, cbin, tmp_path) -> None:
    """Issue #16 class 3: a root guest makes a node of its own for a device the policy
    does not let it write, in a directory it may write, and writes the device through
    it. The device is /dev/null's (harmless to write, and not write-listed here): the
    same trick on a disk's block device rewrites any file. Under [host] rules a device
    node needs a [host] mknod glob, absent here: mknod is refused (EPERM)."""
    rdev = os.stat("/dev/null").st_rdev
    dev = f"{os.major(rdev)}:{os.minor(rdev)}"
    attack = Attack("mknod_dev", ("paths", "mknod_dev", "{data}", dev, "{marker}"),
                    policy=device_policy(tmp_path))
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def test_device_node_allowed_twin(synthfs_world, cbin, tmp_path) -> None:
    """With ``[host] mknod`` naming the directory, the same node is made and written
    (exit 66 here is success): otherwise the refusal above proves nothing."""
    rdev = os.stat("/dev/null").st_rdev
    attack = Attack("twin", ("paths", "mknod_dev", "{data}",
                             f"{os.major(rdev)}:{os.minor(rdev)}", "{marker}"))
    pol = tmp_path / "policy.toml"
    pol.write_text(device_policy(tmp_path) + f'mknod = ["{tmp_path}/*"]\n')
    launcher = helpers.SynthfsLauncher(mode="agent")
    argv = launcher.argv(
        synthfs_world.repo, _argv(attack, synthfs_world, cbin), stack=synthfs_world.stack,
        extra=["--policy", str(pol)],
    )
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    assert got.status == ESCAPED, got.show()


#: Attacks on a restarted agent (a new pid the supervisor did not know at start).
RESTARTED = ["signal", "signal_group", "proc_environ", "proc_fd_list", "proc_mem_read",
             "prlimit"]


@pytest.mark.parametrize("mode", RESTARTED)
def test_restarted_agent_attack(mode, native_world, kernel_ok, tmp_path) -> None:
    """The agent is killed and restarted while a guest waits: the guest attacks the
    new pid before it ever asks /data anything, and is refused as for the first."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
    from agent_stack import Stack

    def argv(data: str, pidfile: Path) -> list[str]:
        return [sys.executable, "-I", str(ATTACKS / "paths.py"), mode, data, f"@{pidfile}"]

    native_pid = tmp_path / "native.pid"
    native_pid.write_text(str(native_world.agent_pid))
    control = helpers.run_native(argv(native_world.data, native_pid), cwd=tmp_path)
    assert control.status == ESCAPED, f"the control proves nothing\n{control.show()}"
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack")
    pidfile = tmp_path / "agent.pid"
    guest = None
    try:
        stack.start_server()
        first = stack.start_agent()
        guest = subprocess.Popen(
            [*helpers.synthfs_command(), "run", "--agent", stack.agent_ep, "--",
             *argv("/data", pidfile)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        waiting = Path(f"{pidfile}.waiting")
        for _ in range(1500):
            if waiting.exists() or guest.poll() is not None:
                break
            time.sleep(0.02)
        assert waiting.exists(), "the guest never started waiting"
        first.stop(signal.SIGKILL)
        second = stack.start_agent()
        assert second.pid != first.pid
        pidfile.with_suffix(".tmp").write_text(str(second.pid))
        pidfile.with_suffix(".tmp").rename(pidfile)
        out, _ = guest.communicate(timeout=helpers.TIMEOUT)
        print(f"synthfs: exit {guest.returncode}: {out.strip()[-300:]}")
        assert guest.returncode != ESCAPED, f"ESCAPED: {mode} on the restarted agent\n{out}"
        assert guest.returncode == 0, out
        assert stack.agent is not None and stack.agent.popen.poll() is None, "agent killed"
    finally:
        if guest is not None and guest.poll() is None:
            guest.kill()
            guest.wait()
        stack.stop()


def _toctou(op: str, forbidden: str, n: int, policy: str | None = None) -> Attack:
    size = "{secret_size}" if op == "stat" else "{marker}"
    return Attack(
        f"toctou_{op}_{'policy_secret' if policy else 'canary'}_{n}",
        ("toctou", op, "{data}/ok", forbidden, size, str(n)),
        policy=policy,
        timeout=max(helpers.TIMEOUT, n * 0.06),  # unlink/rename: ~40 ms an attempt
    )


TOCTOU_SPECS = [
    ("open", "{canary}", None),
    ("openat", "{canary}", None),
    ("stat", "{canary}", None),
    ("symlink", "{canary}", None),
    ("open", "{data}/secret", DENY_SECRET_POLICY),
    ("symlink", "{data}/secret", DENY_SECRET_POLICY),
]
TOCTOU = [
    pytest.param(
        _toctou(op, target, n, pol),
        id=f"{op}-{'policy_secret' if pol else 'canary'}-{n}",
        marks=marks,
    )
    for op, target, pol in TOCTOU_SPECS
    for n, marks in ((10_000, ()), (100_000, (pytest.mark.slow,)))
] + [
    # unlink and rename create and upload a file per attempt (~40 ms under synthfs):
    # 500 attempts in CI, 20,000 with -m slow
    pytest.param(
        _toctou(op, target, n, pol),
        id=f"{op}-{'policy_secret' if pol else 'canary'}-{n}",
        marks=marks,
    )
    for op in ("unlink", "rename")
    for target, pol in (("{canary}", None), ("{data}/secret", DENY_SECRET_POLICY))
    for n, marks in ((500, ()), (20_000, (pytest.mark.slow,)))
]


@pytest.mark.parametrize("attack", ANSWERS, ids=_ids(ANSWERS))
def test_answers_land_as_the_kernels_would(
    attack, native_world, synthfs_world, cbin, tmp_path
) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


@pytest.mark.parametrize("attack", TOCTOU)
def test_toctou(attack, native_world, synthfs_world, cbin, tmp_path) -> None:
    """Zero successes in N attempts while a thread flips the path (or a symlink).

    The native control (same N, no sandbox) must escape. Exit 3 under synthfs
    means the race never ran both ways (no allowed open, or no refusal): the
    run proves nothing, and fails.
    """
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)
    assert (synthfs_world.repo / "secret").read_text() == synthfs_world.marker + "\n"


def test_policy_file_is_valid(tmp_path: Path) -> None:
    """The suite's own policy loads (else every policy case fails for the wrong reason)."""
    pol = tmp_path / "p.toml"
    pol.write_text(DENY_SECRET_POLICY)
    p = subprocess.run(
        [*helpers.synthfs_command(), "policy", "check", str(pol)], capture_output=True, text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr


# -- --permissive relaxes the policy, and nothing else -------------------------------------------

#: DENY_SECRET_POLICY with [host] rules and the network denied: under --permissive every
#: one of its denials is let through (and reported), so whatever still stops an attack
#: below is not the policy
PERMISSIVE_POLICY = DENY_SECRET_POLICY.replace("escape-deny-secret", "escape-permissive") + """
[host]
read = ["/usr/**"]
write = ["/dev/null"]
network = "deny"
"""

#: attacks on what no policy decides: the trusted paths (cache, the stack's work
#: directory and sockets, the served directory's host path), the trusted processes
#: (signals, ptrace, memory, a file's owner), the scratch page, the terminal, the ABI
PERMISSIVE = [
    dataclasses.replace(a, name=f"permissive:{a.name}", policy=PERMISSIVE_POLICY,
                        flags=("--permissive",))
    for a in (
        paths("abs"), paths("dotdot"), paths("tmp_symlink"), paths("proc_root"),
        paths("write"), paths("rename_into_data"), paths("openat2_dotdot"),
        paths("abs", "{key}"), paths("connect", "{sock}"), paths("connect", "{server_sock}"),
        paths("repo_link", "cache_abs"), paths("repo_link", "host_secret"),
        *(a for a in TRUSTED if a.name in (
            "signal_agent", "signal_supervisor", "signal_server_group", "ptrace_agent",
            "proc_mem_agent", "prlimit_agent", "setown_stop_agent", "fiosetown_stop_agent")),
        *(a for a in SCRATCH if a.name in ("scratch_mprotect", "scratch_procmem",
                                           "scratch_prctl_brk")),
        *TERMINAL[:1],
        *(a for a in ABI if a.name == "io_uring_enosys"),
    )
]


@pytest.mark.parametrize("attack", PERMISSIVE, ids=_ids(PERMISSIVE))
def test_permissive_holds_what_is_not_policy(attack, native_world, synthfs_world, cbin,
                                             tmp_path) -> None:
    run_attack(attack, native_world, synthfs_world, cbin, tmp_path)


def test_permissive_twin_lets_the_policy_denied_file_through(synthfs_world, cbin,
                                                             tmp_path) -> None:
    """The twin of the above: --permissive does relax the policy (the /data/secret it
    denies is read, and reported), so the refusals above are not the policy's."""
    attack = paths("abs", "{data}/secret", policy=PERMISSIVE_POLICY)
    pol = tmp_path / "policy.toml"
    pol.write_text(PERMISSIVE_POLICY)
    synthfs_world.reset()
    launcher = helpers.SynthfsLauncher(mode="agent")
    audit = tmp_path / "audit.jsonl"
    argv = launcher.argv(
        synthfs_world.repo, _argv(attack, synthfs_world, cbin), stack=synthfs_world.stack,
        extra=["--policy", str(pol), "--permissive", "--audit", str(audit)],
    )
    got = helpers.run_native(argv, cwd=tmp_path, timeout=attack.timeout)
    assert got.status == ESCAPED, got.show()
    assert "(not enforced)" in got.stderr, got.show()
    reported = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {(r["op"], r["path"], r["decision"], r["enforced"]) for r in reported} >= {
        ("read", "/data/secret", "deny", False)}
