"""The stat family, access, readlink, statfs: answered on the checked object."""

from __future__ import annotations

import errno
import os

from synthfs.interposer import abi
from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked
from synthfs.interposer.handlers.locate import (
    NR_STATFS,
    Loc,
    Pin,
    Refused,
    cstr,
    fd_loc,
    guarded,
    host_check,
    live_attrs,
    locate,
    need,
    proc_self,
    run_host,
    s32,
)
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import Attrs, FileKind


class _CheckedFd:
    """An O_PATH fd on the checked host object, for the supervisor's own answers.

    The fd the host resolution opened on that very object when it has one (no
    second walk), else one opened on the real path following no symlink. None
    for a /proc magic link (an fd of the guest's, or what a /proc link leads to
    that is not a path): the kernel resolves those by the object, not by a
    walk a guest could redirect.
    """

    __slots__ = ("fd",)

    def __init__(self, env: Env, loc: Loc, follow: bool) -> None:
        self.fd: int | None = None
        if loc.via_fd or loc.magic:
            return
        assert loc.host is not None
        if not loc.must_be_dir:
            self.fd = env.host.take_checked(loc.host, follow)
        if self.fd is None:
            self.fd = abi.open_checked(loc.host, follow, loc.must_be_dir)

    def __enter__(self) -> int | None:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _host_stat(call: Call, env: Env, loc: Loc, follow: bool) -> os.stat_result:
    assert loc.host is not None
    with _CheckedFd(env, loc, follow) as fd:
        if fd is not None:
            return os.stat(fd)
        return os.stat(loc.host, follow_symlinks=follow or loc.via_fd)


def _stat_attrs(call: Call, env: Env, loc: Loc) -> Attrs:
    """What stat and statx show of a synthetic location: the policy's ``stat`` decides
    (OSError with its errno), and a copy this sandbox wrote gives size and times."""
    assert loc.repo is not None
    attrs = need(loc)
    denied = env.check(call, "stat", loc.guest)
    if denied:
        raise OSError(denied, "denied by the policy")
    return live_attrs(env, loc.repo, attrs)


#: the flags fstatat and statx take (the kernel's vfs_statx): any other is EINVAL
_STAT_FLAGS = AT_SYMLINK_NOFOLLOW | 0x800 | AT_EMPTY_PATH | 0x6000  # AT_NO_AUTOMOUNT, AT_STATX_*
_AT_STATX_SYNC_TYPE = 0x6000
_STATX__RESERVED = 0x80000000


def stat_at(call: Call, env: Env, dirfd: int, addr: int, buf: int, atflags: int) -> Result:
    if atflags & 0xFFFFFFFF & ~_STAT_FLAGS:
        return Fail(errno.EINVAL)  # the kernel's int: the register's high bits do not count
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    try:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
        if loc.synthetic:
            data = abi.pack_stat(_stat_attrs(call, env, loc), env.uid, env.gid)
        else:
            data = pack_host_stat(_host_stat(call, env, loc, follow))
    except Refused:
        return Fail(errno.EACCES)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    return Return(0, ((buf, data),))


def pack_host_stat(s: os.stat_result) -> bytes:
    return abi.STAT_STRUCT.pack(
        s.st_dev,
        s.st_ino,
        s.st_nlink,
        s.st_mode,
        s.st_uid,
        s.st_gid,
        0,
        s.st_rdev,
        s.st_size,
        s.st_blksize,
        s.st_blocks,
        s.st_atime_ns // 10**9,
        s.st_atime_ns % 10**9,
        s.st_mtime_ns // 10**9,
        s.st_mtime_ns % 10**9,
        s.st_ctime_ns // 10**9,
        s.st_ctime_ns % 10**9,
    )


def sys_stat(call: Call, env: Env) -> Result:
    return stat_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


def sys_lstat(call: Call, env: Env) -> Result:
    return stat_at(call, env, AT_FDCWD, call.args[0], call.args[1], AT_SYMLINK_NOFOLLOW)


def sys_newfstatat(call: Call, env: Env) -> Result:
    a = call.args
    return stat_at(call, env, s32(a[0]), a[1], a[2], a[3])


def sys_fstat(call: Call, env: Env) -> Result:
    loc = fd_loc(call, env, s32(call.args[0]))
    if loc is None or not loc.synthetic:
        return CONTINUE
    assert loc.repo is not None
    if loc.attrs is None:
        return CONTINUE  # removed while open: the kernel's view of the cache file
    return Return(
        0, ((call.args[1], abi.pack_stat(live_attrs(env, loc.repo, loc.attrs), env.uid, env.gid)),)
    )


def sys_statx(call: Call, env: Env) -> Result:
    dirfd, addr, atflags, _mask, buf = (
        s32(call.args[0]),
        call.args[1],
        call.args[2],
        call.args[3],
        call.args[4],
    )
    atflags &= 0xFFFFFFFF  # int and unsigned int in the kernel
    if (atflags & ~_STAT_FLAGS or atflags & _AT_STATX_SYNC_TYPE == _AT_STATX_SYNC_TYPE
            or _mask & 0xFFFFFFFF & _STATX__RESERVED):
        return Fail(errno.EINVAL)  # as do_statx and vfs_statx refuse them
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    try:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
        if loc.synthetic:
            data = abi.pack_statx(_stat_attrs(call, env, loc), env.uid, env.gid)
        else:
            assert loc.host is not None
            nofollow = (
                AT_SYMLINK_NOFOLLOW if (atflags & AT_SYMLINK_NOFOLLOW and not loc.via_fd) else 0
            )
            sync = atflags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)  # AT_STATX_* and the like
            with _CheckedFd(env, loc, follow) as fd:
                if fd is None:
                    data = abi.host_statx(loc.host, sync | nofollow, call.args[3])
                else:
                    data = abi.host_statx("", sync | AT_EMPTY_PATH, call.args[3], dirfd=fd)
    except Refused:
        return Fail(errno.EACCES)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    return Return(0, ((buf, data),))


def access_at(call: Call, env: Env, dirfd: int, addr: int, mode: int, atflags: int) -> Result:
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    if mode & ~7 or atflags & ~(abi.AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return Fail(errno.EINVAL)
    try:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
        if not loc.synthetic:
            assert loc.host is not None
            if mode & os.W_OK:
                host_check(call, env, "write", loc)  # writable here means: may open to write
            effective = bool(atflags & abi.AT_EACCESS)
            with _CheckedFd(env, loc, follow) as fd:
                if fd is not None:
                    ok = abi.host_access(fd, mode, effective)
                else:
                    ok = os.access(loc.host, mode, effective_ids=effective, follow_symlinks=follow)
                    if not ok:
                        os.stat(loc.host, follow_symlinks=follow)  # the errno the kernel gives
            return Return(0) if ok else Fail(errno.EACCES)
        attrs = need(loc)
    except Refused:
        return Fail(errno.EACCES)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    denied = env.check(call, "stat", loc.guest)
    if denied:
        return Fail(denied)
    if mode & os.W_OK:
        denied = env.check(call, "write", loc.guest)
        if denied:
            return Fail(denied)
    if mode & os.X_OK and attrs.kind is FileKind.FILE and not attrs.mode & 0o111:
        return Fail(errno.EACCES)
    if env.uid != 0:
        bits = (attrs.mode >> 6) & 7
        if mode & ~bits & 7:
            return Fail(errno.EACCES)
    return Return(0)


def sys_access(call: Call, env: Env) -> Result:
    return access_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


def sys_faccessat(call: Call, env: Env) -> Result:
    return access_at(call, env, s32(call.args[0]), call.args[1], call.args[2], 0)


def sys_faccessat2(call: Call, env: Env) -> Result:
    a = call.args
    return access_at(call, env, s32(a[0]), a[1], a[2], a[3])


def readlink_at(call: Call, env: Env, dirfd: int, addr: int, buf: int, size: int) -> Result:
    size = s32(size)
    if size <= 0:
        return Fail(errno.EINVAL)
    try:
        raw = call.guest.read_path(addr)
        text = _proc_link(call, env, raw, dirfd)
        if text is None:
            loc = locate(call, env, dirfd, addr, follow=False, empty_ok=True)
            if loc.synthetic:
                attrs = need(loc)
                if attrs.kind is not FileKind.SYMLINK:
                    return Fail(errno.EINVAL)
                denied = env.check(call, "stat", loc.guest)
                if denied:
                    return Fail(denied)
                assert loc.repo is not None
                text = env.repo.readlink(loc.repo)
            else:
                assert loc.host is not None
                with _CheckedFd(env, loc, False) as fd:
                    link = abi.host_readlink(fd) if fd is not None else os.readlink(loc.host)
                text = _translate_host_link(env, link)
    except Refused:
        return Fail(errno.EACCES)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    data = os.fsencode(text)[:size]
    return Return(len(data), ((buf, data),))


def _translate_host_link(env: Env, text: str) -> str:
    """A link text that names a cache copy or a placeholder shows the synthetic path."""
    handle = env.host.dir_handle(text)
    if handle is not None:
        return env.ns.guest_path(handle.repo_path)
    repo = env.repo.repo_path_of(text.removesuffix(" (deleted)"))
    if repo is not None:
        return env.ns.guest_path(repo) + (" (deleted)" if text.endswith(" (deleted)") else "")
    return text


def _proc_link(call: Call, env: Env, raw: str, dirfd: int) -> str | None:
    """The text of /proc/PID/{cwd,exe} when synthetic (handled before generic lookup)."""
    if not raw.startswith("/proc/"):
        return None
    path = proc_self(raw, call)
    own = f"/proc/{call.guest.tgid}"
    if path == own + "/cwd" and call.proc.fs.cwd is not None:
        return call.proc.fs.cwd
    if path == own + "/exe" and call.proc.exe and env.ns.repo_path(call.proc.exe) is not None:
        return call.proc.exe
    return None


def sys_readlink(call: Call, env: Env) -> Result:
    return readlink_at(call, env, AT_FDCWD, call.args[0], call.args[1], call.args[2])


def sys_readlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return readlink_at(call, env, s32(a[0]), a[1], a[2], a[3])


@guarded
def sys_statfs(call: Call, env: Env) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    if loc.synthetic:
        need(loc)
        return RunChecked(NR_STATFS, (cstr(env.host.placeholder_root()), call.args[1]))
    return run_host(env, NR_STATFS, (Pin(loc, whole=True), call.args[1]))
