"""Handlers as pure functions: fake guest memory, a dict repository, no ptrace."""

from __future__ import annotations

import errno
import os
import signal
import struct

import pytest

from synthfs.interposer import abi
from synthfs.interposer.actions import Continue, Fail, Return, RunChecked, Scratch
from synthfs.interposer.namespace import Namespace
from synthfs.interposer.ports import Call, DirHandle, FsState, Proc
from synthfs.policy.engine import NetworkMode
from synthfs.protocol.messages import Attrs, DirEntry, Listing, Opened, RenameFlags

AT_FDCWD = abi.AT_FDCWD & (2**64 - 1)


def _a(kind: str, ino: int, size: int = 0) -> Attrs:
    return Attrs(
        kind=kind,
        size=size,
        mode=0o644 if kind == "file" else 0o755,
        mtime_ns=10**18,
        ctime_ns=10**18,
        ino=ino,
    )


class FakeGuest:
    tid = tgid = 4242

    def __init__(self) -> None:
        self.strings: dict[int, str] = {}
        self.fds: dict[int, str] = {}
        self.pidfds: dict[int, int] = {}
        self.memory: dict[int, bytes] = {}
        self.cwd = "/home/u"

    def put(self, addr: int, text: str) -> int:
        self.strings[addr] = text
        return addr

    def read_path(self, addr: int) -> str:
        if addr not in self.strings:
            raise OSError(errno.EFAULT, "bad address")
        return self.strings[addr]

    def read(self, addr: int, size: int) -> bytes:
        data = self.memory.get(addr, b"")
        if len(data) < size:
            raise OSError(errno.EFAULT, "bad address")
        return data[:size]

    def fd_target(self, fd: int) -> str | None:
        return self.fds.get(fd)

    def fd_writable(self, fd: int) -> bool:
        return fd in self.fds

    def fd_path_only(self, fd: int) -> bool:
        return False

    def fd_pid(self, fd: int) -> int | None:
        return self.pidfds.get(fd)

    def host_cwd(self) -> str:
        return self.cwd

    def umask(self) -> int:
        return 0o022

    def open_fds(self) -> list[int]:
        return list(self.fds)

    def touches_scratch(self, addr: int, length: int) -> bool:
        return addr < 0x10000


class FakeRepo:
    def __init__(self) -> None:
        self.tree = {
            "/": _a("dir", 1),
            "/d": _a("dir", 2),
            "/d/f": _a("file", 3, 5),
            "/secret": _a("file", 4, 1),
        }
        self.calls: list[str] = []
        self.local: dict[str, str] = {}

    def lstat(self, path: str) -> Attrs | None:
        return self.tree.get(path)

    def listdir(self, path: str) -> Listing:
        self.calls.append(f"list {path}")
        prefix = path.rstrip("/") + "/"
        names = sorted(
            p[len(prefix) :]
            for p in self.tree
            if p.startswith(prefix) and "/" not in p[len(prefix) :] and p != path
        )
        return Listing(
            attrs=self.tree[path], entries=[DirEntry(n, self.tree[prefix + n]) for n in names]
        )

    def readlink(self, path: str) -> str:
        raise OSError(errno.EINVAL, "not a link")

    def open(self, path: str, flags: int, mode: int, claim: bool = False) -> Opened:
        self.calls.append(f"open {path}")
        if path not in self.tree:
            self.tree[path] = _a("file", 99)
        host = f"/cache/objects/{path.strip('/').replace('/', '_')}"
        self.local[path] = host
        return Opened(host_path=host, attrs=self.tree[path])

    def commit(self, path: str, wait: bool = False) -> None:
        self.calls.append(f"commit {path}" + (" wait" if wait else ""))

    def sync(self, wait: bool = False) -> None:
        self.calls.append("sync" + (" wait" if wait else ""))

    def mkdir(self, path: str, mode: int) -> None:
        self.calls.append(f"mkdir {path} {mode:o}")
        self.tree[path] = _a("dir", 50)

    def remove(self, path: str, directory: bool) -> None:
        self.calls.append(f"remove {path} {directory}")
        del self.tree[path]

    def rename(self, src: str, dst: str, flags: RenameFlags) -> None:
        self.calls.append(f"rename {src} {dst}")

    def symlink(self, target: str, path: str) -> None:
        self.calls.append(f"symlink {target} {path}")

    def link(self, src: str, dst: str) -> None:
        self.calls.append(f"link {src} {dst}")

    def setattr(self, path: str, **kw: object) -> None:
        self.calls.append(
            f"setattr {path} {sorted((k, v) for k, v in kw.items() if v is not None)}"
        )

    def repo_path_of(self, host_path: str) -> str | None:
        return next((p for p, h in self.local.items() if h == host_path), None)

    def unhomed_write(self, host_path: str, link: str) -> bool:
        return False

    def known_dir(self, path: str) -> bool:
        return False

    def local_copy(self, path: str) -> str | None:
        return None

    def written_copy(self, path: str) -> None:
        return None


class FakeHost:
    def __init__(self) -> None:
        self.handles: dict[str, DirHandle] = {}
        self.signalled: list[tuple[int, int]] = []

    def realpath(self, path: str, follow: bool, guest: tuple[int, int] = (0, 0)) -> str:
        return path

    def take_checked(self, real_path: str, follow: bool) -> int | None:
        return None

    def refused(self, real_path: str) -> bool:
        return real_path.startswith("/cache")

    def holds_refused(self, real_path: str) -> bool:
        return real_path in ("/", "/cache")

    def new_dir_handle(self, repo_path: str, symlink: bool = False) -> str:
        path = f"/run/dirs/{len(self.handles)}"
        self.handles[path] = DirHandle(repo_path)
        return path

    def dir_handle(self, host_path: str) -> DirHandle | None:
        return self.handles.get(host_path)

    def placeholder_root(self) -> str:
        return "/run/dirs"

    def trusted(self, pid: int) -> bool:
        return pid == 1

    def outsider(self, pid: int) -> bool:
        return pid == 5  # a process of the user outside the sandbox, in these tests

    def group_of(self, pid: int) -> int:
        return 9

    def signal_guests(self, pgid: int, sig: int) -> None:
        self.signalled.append((pgid, sig))

    def trusted_group(self, pgid: int) -> bool:
        return pgid == 7

    def foreign_group(self, pgid: int, own: bool = False) -> bool:
        return pgid == 7

    def supervisor_group(self, pid: int, target: int) -> bool:
        return target == -9  # the guest's group is 9 in these tests: the supervisor's

    def survives(self, sig: int) -> bool:
        return sig == signal.SIGTSTP  # as synthfs run, which catches it


class FakeEnv:
    uid = gid = 1000
    reads_undumpable = True  # a supervisor with CAP_SYS_PTRACE (prctl runs natively)

    def __init__(self) -> None:
        self.ns = Namespace("/data")
        self.repo = FakeRepo()
        self.host = FakeHost()
        self.denied: list[tuple[str, str]] = []
        self.bound_names: dict[int, bytes] = {}

    def check(self, call: Call, op: str, guest_path: str) -> int:
        if guest_path.startswith("/data/secret"):
            self.denied.append((op, guest_path))
            return errno.EACCES
        return 0

    def hides(self, call: Call, guest_path: str) -> bool:
        return False

    network = NetworkMode.ALLOW
    host_rules = False

    def check_host(self, call: Call, op: str, path: str, via: str = "") -> int:
        return 0

    def check_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        return 0

    def check_host_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        return 0

    def check_net(self, call: Call, op: str, address: str, local: bool) -> int:
        return 0

    def pin(self, real_path: str, whole: bool, via: str | None = None) -> tuple[str, int] | None:
        return None

    def unpin(self, fd: int) -> None:
        pass


@pytest.fixture
def world():
    guest, env = FakeGuest(), FakeEnv()
    proc = Proc(tgid=guest.tgid, fs=FsState())

    def call(name: str, *args: int):
        from synthfs.interposer.syscalls import BY_NAME

        spec = BY_NAME[name]
        full = (list(args) + [0] * 6)[:6]
        return spec.handler(Call(spec.nr, name, tuple(full), guest, proc), env)

    return guest, env, proc, call


def _scratch_path(result: RunChecked, index: int = 1) -> bytes:
    arg = result.args[index]
    assert isinstance(arg, Scratch)
    return arg.data


def test_open_of_a_synthetic_file_runs_on_the_cached_copy(world) -> None:
    guest, env, proc, call = world
    r = call("openat", AT_FDCWD, guest.put(100, "/data/d/f"), os.O_RDONLY, 0)
    assert isinstance(r, RunChecked) and r.nr == 437
    assert _scratch_path(r) == b"/cache/objects/d_f\0"
    flags, mode, resolve = abi.OPEN_HOW.unpack(_scratch_path(r, 2))
    assert resolve & abi.RESOLVE_NO_SYMLINKS and flags == os.O_RDONLY
    assert env.repo.calls == ["open /d/f"]


def test_a_denied_open_never_reaches_the_repository(world) -> None:
    guest, env, proc, call = world
    r = call("open", guest.put(100, "/data/secret"), os.O_RDONLY, 0)
    assert r == Fail(errno.EACCES)
    assert env.repo.calls == [] and env.denied[0] == ("read", "/data/secret")


def test_host_open_uses_the_checked_copy_and_refuses_the_cache(world) -> None:
    guest, env, proc, call = world
    r = call("open", guest.put(100, "/etc/hostname"), os.O_RDONLY | os.O_CLOEXEC, 0o777)
    assert isinstance(r, RunChecked) and _scratch_path(r) == b"/etc/hostname\0"
    _flags, mode, _resolve = abi.OPEN_HOW.unpack(_scratch_path(r, 2))
    assert mode == 0  # openat2 refuses a mode without O_CREAT
    assert call("open", guest.put(101, "/cache/objects/d_f"), os.O_RDWR, 0) == Fail(errno.EACCES)


def test_stat_of_a_synthetic_file_is_emulated(world) -> None:
    guest, env, proc, call = world
    r = call("newfstatat", AT_FDCWD, guest.put(100, "/data/d/f"), 0x7000, 0)
    assert isinstance(r, Return) and r.value == 0
    ((addr, data),) = r.writes
    assert addr == 0x7000 and len(data) == 144
    dev, ino, nlink, mode, uid = struct.unpack_from("<QQQII", data)
    assert (dev, ino, uid) == (abi.SYNTH_DEV, 3, 1000) and mode == 0o100644
    assert struct.unpack_from("<q", data, 48)[0] == 5  # st_size
    assert call("stat", guest.put(101, "/data/nope"), 0x7000) == Fail(errno.ENOENT)


def test_cwd_inside_the_mount(world) -> None:
    guest, env, proc, call = world
    assert call("chdir", guest.put(100, "/data/d")) == Return(0)
    assert proc.fs.cwd == "/data/d"
    r = call("getcwd", 0x8000, 4096)
    assert r == Return(len(b"/data/d\0"), ((0x8000, b"/data/d\0"),))
    r = call("openat", AT_FDCWD, guest.put(101, "f"), os.O_RDONLY, 0)
    assert isinstance(r, RunChecked) and _scratch_path(r) == b"/cache/objects/d_f\0"
    assert call("getcwd", 0x8000, 3) == Fail(errno.ERANGE)


def test_directories_list_through_a_placeholder(world) -> None:
    guest, env, proc, call = world
    r = call("openat", AT_FDCWD, guest.put(100, "/data/d"), os.O_RDONLY | os.O_DIRECTORY, 0)
    assert isinstance(r, RunChecked)
    placeholder = _scratch_path(r).rstrip(b"\0").decode()
    guest.fds[3] = placeholder
    r = call("getdents64", 3, 0x9000, 4096)
    assert isinstance(r, Return)
    data = r.writes[0][1]
    names = []
    off = 0
    while off < len(data):
        _ino, _doff, reclen, _type = struct.unpack_from("<QqHB", data, off)
        names.append(data[off + 19 : off + reclen].split(b"\0")[0].decode())
        off += reclen
    assert names == [".", "..", "f"]
    assert call("getdents64", 3, 0x9000, 4096) == Return(0)
    assert call("lseek", 3, 0, 0) == Return(0)  # rewinddir
    assert isinstance(call("getdents64", 3, 0x9000, 4096), Return)
    assert call("fchdir", 3) == Return(0) and proc.fs.cwd == "/data/d"


def test_namespace_changes(world) -> None:
    guest, env, proc, call = world
    assert call("mkdir", guest.put(100, "/data/new"), 0o777) == Return(0)
    assert env.repo.calls[-1] == "mkdir /new 755"  # umask applied
    assert call("mkdir", guest.put(101, "/data/d"), 0o777) == Fail(errno.EEXIST)
    assert call("rmdir", guest.put(102, "/data/d/f")) == Fail(errno.ENOTDIR)
    assert call("unlink", guest.put(103, "/data/d")) == Fail(errno.EISDIR)
    assert call("rename", guest.put(104, "/data/d/f"), guest.put(105, "/tmp/f")) == Fail(
        errno.EXDEV
    )
    assert call("rename", guest.put(106, "/data/d/f"), guest.put(107, "/data/g")) == Return(0)
    assert env.repo.calls[-1] == "rename /d/f /g"
    assert call("unlink", guest.put(110, "/data/secret")) == Fail(errno.EACCES)


def test_link(world) -> None:
    guest, env, proc, call = world
    assert call("link", guest.put(100, "/data/d/f"), guest.put(101, "/data/h")) == Return(0)
    assert env.repo.calls[-1] == "link /d/f /h"
    n = len(env.repo.calls)
    assert call("link", guest.put(102, "/data/d"), guest.put(103, "/data/dl")) == Fail(errno.EPERM)
    assert call("link", guest.put(104, "/data/d/f"), guest.put(105, "/data/d")) == Fail(
        errno.EEXIST)
    assert call("link", guest.put(106, "/data/secret"), guest.put(107, "/data/s2")) == Fail(
        errno.EACCES)  # the policy judges the source too: a new name must not open a way in
    assert env.denied[-1] == ("link", "/data/secret")
    assert call("link", guest.put(108, "/data/d/f"), guest.put(109, "/data/secret2")) == Fail(
        errno.EACCES)
    assert call("link", guest.put(110, "/data/d/f"), guest.put(111, "/tmp/h")) == Fail(errno.EXDEV)
    assert call("link", guest.put(112, "/data/nope"), guest.put(113, "/data/n")) == Fail(
        errno.ENOENT)
    assert env.repo.calls[n:] == []


def test_names_that_are_not_utf8_reach_the_repository(world) -> None:
    guest, env, proc, call = world
    raw = os.fsdecode(b"/data/raw-\xff")
    assert call("mkdir", guest.put(100, raw), 0o755) == Return(0)
    assert env.repo.calls[-1] == "mkdir /raw-\udcff 755"


def test_close_commits_only_for_writers(world) -> None:
    guest, env, proc, call = world
    guest.fds[5] = "/cache/objects/d_f"
    env.repo.local["/d/f"] = "/cache/objects/d_f"
    assert call("close", 5) == Continue()
    assert "commit /d/f" not in env.repo.calls
    proc.wrote = True
    assert call("close", 5) == Continue()
    assert env.repo.calls[-1] == "commit /d/f"


def test_scratch_guards(world) -> None:
    guest, env, proc, call = world
    assert call("mprotect", 0x1000, 4096, 7) == Fail(errno.EPERM)
    assert call("munmap", 0x100000, 4096) == Continue()


def test_bad_pointers_give_efault(world) -> None:
    guest, env, proc, call = world
    assert call("open", 0xDEAD, 0, 0) == Fail(errno.EFAULT)
    assert call("stat", 0xDEAD, 0x7000) == Fail(errno.EFAULT)


def test_entries_hidden_with_enoent_are_not_listed(world) -> None:
    guest, env, proc, call = world
    env.repo.tree["/d/hidden"] = _a("file", 7)
    real_check = env.check
    env.check = lambda c, op, path: (
        errno.ENOENT if path == "/data/d/hidden" else real_check(c, op, path)
    )
    r = call("openat", AT_FDCWD, guest.put(100, "/data/d"), os.O_RDONLY | os.O_DIRECTORY, 0)
    guest.fds[3] = _scratch_path(r).rstrip(b"\0").decode()
    data = call("getdents64", 3, 0x9000, 4096).writes[0][1]
    assert b"hidden" not in data and b"f\0" in data
    assert call("stat", guest.put(101, "/data/d/hidden"), 0x7000) == Fail(errno.ENOENT)


def test_no_signal_reaches_a_trusted_process(world) -> None:
    guest, env, proc, call = world
    assert call("kill", 1, 9) == Fail(errno.EPERM)
    assert call("tgkill", 1, 1, 15) == Fail(errno.EPERM)
    assert call("pidfd_open", 1, 0) == Fail(errno.EPERM)
    assert call("kill", 4243, 15) == Continue()
    assert call("kill", 0, 15) == Continue()  # its own process group
    assert call("kill", -1, 15) == Fail(errno.EPERM)  # every process the user may signal
    assert call("kill", -1, 0) == Continue()  # signal 0 only asks whether any exists
    assert call("kill", -7, 9) == Fail(errno.EPERM)  # the agent's process group
    assert call("kill", -8, 9) == Continue()
    assert call("kill", (-7) & 0xFFFFFFFF, 9) == Fail(errno.EPERM)  # an int in a 64-bit register
    # a stop toward the supervisor's group: only one the supervisor survives
    assert call("kill", -9, signal.SIGSTOP) == Fail(errno.EPERM)
    assert call("kill", -9, signal.SIGTTIN) == Fail(errno.EPERM)
    assert call("kill", -9, signal.SIGTSTP) == Continue()


def test_open_flags_the_kernel_refuses_or_ignores() -> None:
    from synthfs.interposer.handlers import legacy_open_flags, open_flags_valid

    rdwr_tmp = abi.O_TMPFILE | abi.O_RDWR
    assert open_flags_valid(rdwr_tmp) and open_flags_valid(abi.O_PATH | abi.O_DIRECTORY)
    for bad in (
        abi.O_TMPFILE,  # O_RDONLY
        rdwr_tmp | abi.O_CREAT,
        (abi.O_TMPFILE & ~abi.O_DIRECTORY) | abi.O_RDWR,  # __O_TMPFILE alone
        abi.O_CREAT | abi.O_DIRECTORY,
        abi.O_PATH | abi.O_TRUNC,  # as openat2 sees it
    ):
        assert not open_flags_valid(bad), oct(bad)
    # open(2) drops what O_PATH does not keep (O_PATH|O_TMPFILE is an O_DIRECTORY lookup).
    assert legacy_open_flags(abi.O_PATH | abi.O_TRUNC | abi.O_RDWR) == abi.O_PATH
    assert legacy_open_flags(abi.O_PATH | rdwr_tmp) == abi.O_PATH | abi.O_DIRECTORY
    assert legacy_open_flags(abi.O_RDWR | abi.O_TRUNC) == abi.O_RDWR | abi.O_TRUNC
