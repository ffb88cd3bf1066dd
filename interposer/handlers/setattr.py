"""Attribute changes: chmod, chown, truncate, utimes."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return
from synthfs.interposer.handlers.locate import (
    NR_FCHMODAT,
    NR_FCHOWNAT,
    NR_FUTIMESAT,
    NR_TRUNCATE,
    NR_UTIMENSAT,
    Loc,
    Pin,
    fd_loc,
    guarded,
    host_check,
    locate,
    need,
    run_host,
    s32,
)
from synthfs.interposer.handlers.tree import synthetic_op
from synthfs.interposer.numbers import NR
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import FileKind

NR_FCHMODAT2 = NR["fchmodat2"]


def chmod_at(call: Call, env: Env, dirfd: int, addr: int, mode: int, atflags: int) -> Result:
    if atflags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return Fail(errno.EINVAL)
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
    if not loc.synthetic:
        assert loc.host is not None
        if follow or loc.link is not None:  # a path followed, or an fd's own object
            return run_host(env, NR_FCHMODAT, (AT_FDCWD, Pin(loc, whole=follow), mode))
        # fchmodat2's own no-follow on the pinned parent: a symlink there is EOPNOTSUPP
        # (Linux has no symlink modes), never a chmod of what it points to.
        return run_host(env, NR_FCHMODAT2,
                        (AT_FDCWD, Pin(loc, whole=False), mode, AT_SYMLINK_NOFOLLOW))
    attrs = need(loc)
    if attrs.kind is FileKind.SYMLINK:
        return Fail(errno.EOPNOTSUPP)
    denied = env.check(call, "chmod", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    return synthetic_op(lambda: env.repo.setattr(repo, mode=mode & 0o7777))


@guarded
def sys_chmod(call: Call, env: Env) -> Result:
    return chmod_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


@guarded
def sys_fchmodat(call: Call, env: Env) -> Result:
    a = call.args
    return chmod_at(call, env, s32(a[0]), a[1], a[2], 0)


@guarded
def sys_fchmodat2(call: Call, env: Env) -> Result:
    a = call.args
    return chmod_at(call, env, s32(a[0]), a[1], a[2], a[3])


def host_fd_op(call: Call, env: Env, loc: Loc, run: Callable[[Loc], Result]) -> Result:
    """fchmod, fchown, futimens, fsetxattr, fremovexattr on a host fd.

    Natively a read-only fd is enough for them; here they are judged as their
    path forms are (``chmod`` on the fd's file, under ``[host]`` rules) and run
    as the path form (``run``) on the object the fd holds, pinned: a guest
    thread cannot dup2 another file onto the fd after the check, neither a
    file the rules protect nor, with no rules, the agent's copy of a /data
    file opened read-only (its times and mode are the agent's record of it).
    """
    if env.host_rules and loc.real is not None:
        host_check(call, env, "chmod", loc)
    return run(loc)


@guarded
def sys_fchmod(call: Call, env: Env) -> Result:
    loc = fd_loc(call, env, s32(call.args[0]), io=True)
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        mode = call.args[1]
        return host_fd_op(
            call, env, loc, lambda fd: run_host(env, NR_FCHMODAT, (AT_FDCWD, Pin(fd, True), mode))
        )
    attrs = need(loc)
    denied = env.check(call, "chmod", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    del attrs
    return synthetic_op(lambda: env.repo.setattr(repo, mode=call.args[1] & 0o7777))


def chown_at(
    call: Call, env: Env, dirfd: int, addr: int, uid: int, gid: int, atflags: int
) -> Result:
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(
            env,
            NR_FCHOWNAT,
            (AT_FDCWD, Pin(loc, whole=follow), uid, gid, atflags & ~AT_EMPTY_PATH),
        )
    need(loc)
    denied = env.check(call, "chmod", loc.guest)
    return Fail(denied) if denied else Return(0)


@guarded
def sys_chown(call: Call, env: Env) -> Result:
    a = call.args
    return chown_at(call, env, AT_FDCWD, a[0], a[1], a[2], 0)


@guarded
def sys_lchown(call: Call, env: Env) -> Result:
    a = call.args
    return chown_at(call, env, AT_FDCWD, a[0], a[1], a[2], AT_SYMLINK_NOFOLLOW)


@guarded
def sys_fchownat(call: Call, env: Env) -> Result:
    a = call.args
    return chown_at(call, env, s32(a[0]), a[1], a[2], a[3], a[4])


@guarded
def sys_fchown(call: Call, env: Env) -> Result:
    a = call.args
    loc = fd_loc(call, env, s32(a[0]), io=True)
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        return host_fd_op(
            call,
            env,
            loc,
            lambda fd: run_host(env, NR_FCHOWNAT, (AT_FDCWD, Pin(fd, True), a[1], a[2], 0)),
        )
    need(loc)
    denied = env.check(call, "chmod", loc.guest)
    return Fail(denied) if denied else Return(0)


@guarded
def sys_truncate(call: Call, env: Env) -> Result:
    length = call.args[1]
    if length >> 63:
        return Fail(errno.EINVAL)
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_TRUNCATE, (Pin(loc, whole=True), length))
    attrs = need(loc)
    if attrs.kind is FileKind.DIR:
        return Fail(errno.EISDIR)
    denied = env.check(call, "write", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    return synthetic_op(lambda: env.repo.setattr(repo, size=length))


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _now_ns() -> int:
    import time

    return time.time_ns()


_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def utimens_at(
    call: Call,
    env: Env,
    dirfd: int,
    addr: int,
    times: list[tuple[int, int]] | None,
    atflags: int,
    *,
    raw: Callable[[Loc], Result],
) -> Result:
    """utimensat, futimesat, utimes, utime: a NULL path names ``dirfd`` itself."""
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    if (addr or dirfd == AT_FDCWD) and atflags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return Fail(errno.EINVAL)
    if addr == 0:
        if dirfd == AT_FDCWD:
            # A NULL path names the fd itself (futimens), and AT_FDCWD is no fd: EFAULT
            # from the kernel (utimes too), never a change of the cwd's times.
            return Fail(errno.EFAULT)
        if atflags:
            return Fail(errno.EINVAL)  # as the kernel says for a NULL path with flags
        loc = fd_loc(call, env, dirfd, io=True)
        if loc is None:
            return Fail(errno.EBADF)
        if not loc.synthetic:
            return host_fd_op(call, env, loc, raw)
    else:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
    if not loc.synthetic:
        return raw(loc)
    need(loc)
    denied = env.check(call, "chmod", loc.guest)
    if denied:
        return Fail(denied)
    now = _now_ns()
    values: list[int | None] = []
    for sec, nsec in times or [(0, UTIME_NOW), (0, UTIME_NOW)]:
        if nsec == UTIME_OMIT:
            values.append(None)
        elif nsec == UTIME_NOW:
            values.append(now)
        elif not 0 <= nsec < 1_000_000_000:
            return Fail(errno.EINVAL)
        else:
            # The kernel takes any seconds and clamps them to what the file system
            # holds; the protocol's times are int64 nanoseconds (1677 to 2262).
            values.append(max(_NS_MIN, min(_NS_MAX, sec * 1_000_000_000 + nsec)))
    assert loc.repo is not None
    repo = loc.repo
    if values[0] is None and values[1] is None:
        return Return(0)
    return synthetic_op(lambda: env.repo.setattr(repo, atime_ns=values[0], mtime_ns=values[1]))


def _read_times(call: Call, addr: int, usec: bool) -> list[tuple[int, int]] | None:
    if addr == 0:
        return None

    raw = call.guest.read(addr, 32)
    a_s, a_f, m_s, m_f = struct.unpack("<qqqq", raw)
    if usec:
        if not (0 <= a_f < 1_000_000 and 0 <= m_f < 1_000_000):
            raise OSError(errno.EINVAL, "bad timeval")
        return [(a_s, a_f * 1000), (m_s, m_f * 1000)]
    return [(a_s, a_f), (m_s, m_f)]


@guarded
def sys_utimensat(call: Call, env: Env) -> Result:
    a = call.args
    dirfd, addr, tptr, flags = s32(a[0]), a[1], a[2], a[3]
    times = _read_times(call, tptr, usec=False)

    def raw(loc: Loc) -> Result:
        assert loc.host is not None
        whole = not flags & AT_SYMLINK_NOFOLLOW
        return run_host(
            env, NR_UTIMENSAT, (AT_FDCWD, Pin(loc, whole=whole), tptr, flags & ~AT_EMPTY_PATH)
        )

    return utimens_at(call, env, dirfd, addr, times, flags, raw=raw)


def _utimes(call: Call, env: Env, dirfd: int, addr: int, tptr: int) -> Result:
    times = _read_times(call, tptr, usec=True)

    def raw(loc: Loc) -> Result:
        assert loc.host is not None
        return run_host(env, NR_FUTIMESAT, (AT_FDCWD, Pin(loc, whole=True), tptr))

    return utimens_at(call, env, dirfd, addr, times, 0, raw=raw)


@guarded
def sys_utimes(call: Call, env: Env) -> Result:
    return _utimes(call, env, AT_FDCWD, call.args[0], call.args[1])


@guarded
def sys_futimesat(call: Call, env: Env) -> Result:
    return _utimes(call, env, s32(call.args[0]), call.args[1], call.args[2])


@guarded
def sys_utime(call: Call, env: Env) -> Result:

    tptr = call.args[1]
    times = None
    if tptr:
        actime, modtime = struct.unpack("<qq", call.guest.read(tptr, 16))
        times = [(actime, 0), (modtime, 0)]
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR["utime"], (Pin(loc, whole=True), tptr))
    return utimens_at(call, env, AT_FDCWD, call.args[0], times, 0, raw=lambda _l: Fail(errno.EIO))
