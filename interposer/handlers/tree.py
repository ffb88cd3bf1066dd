"""Calls that make or remove names: mkdir, unlink, rmdir, rename, link, symlink, mknod."""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable

from synthfs.interposer import abi
from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR
from synthfs.interposer.actions import Fail, Result, Return
from synthfs.interposer.handlers.locate import (
    DOTS,
    NR_LINKAT,
    NR_MKDIRAT,
    NR_MKNODAT,
    NR_RENAMEAT2,
    NR_SYMLINKAT,
    NR_UNLINKAT,
    Loc,
    Pin,
    cstr,
    guarded,
    host_check,
    locate,
    looked_up,
    need,
    run_host,
    s32,
)
from synthfs.interposer.namespace import Final
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import FileKind, RenameFlags


def _created(loc: Loc) -> None:
    """The checks of a new name that is not a directory (mknod, symlink, link's target)."""
    if looked_up(loc) is not None:
        raise OSError(errno.EEXIST, "file exists")
    if loc.must_be_dir:
        # A trailing slash asks for a directory, and this call does not make one.
        raise OSError(errno.ENOENT, "no such file or directory")


def synthetic_op(fn: Callable[[], object]) -> Result:
    try:
        fn()
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    return Return(0)


def mkdir_at(call: Call, env: Env, dirfd: int, addr: int, mode: int) -> Result:
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_MKDIRAT, (AT_FDCWD, Pin(loc), mode))
    assert loc.repo is not None
    if looked_up(loc) is not None:
        return Fail(errno.EEXIST)  # whatever it is, with or without a trailing slash
    denied = env.check(call, "create", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return synthetic_op(lambda: env.repo.mkdir(repo, (mode & 0o7777) & ~call.guest.umask()))


@guarded
def sys_mkdir(call: Call, env: Env) -> Result:
    return mkdir_at(call, env, AT_FDCWD, call.args[0], call.args[1])


@guarded
def sys_mkdirat(call: Call, env: Env) -> Result:
    a = call.args
    return mkdir_at(call, env, s32(a[0]), a[1], a[2])


def unlink_at(call: Call, env: Env, dirfd: int, addr: int, atflags: int) -> Result:
    if atflags & ~AT_REMOVEDIR:
        return Fail(errno.EINVAL)
    directory = bool(atflags & AT_REMOVEDIR)
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_UNLINKAT, (AT_FDCWD, Pin(loc), atflags))
    assert loc.repo is not None
    if loc.last in DOTS:
        if not directory:
            return Fail(errno.EISDIR)
        return Fail(errno.EINVAL if loc.last == "." else errno.ENOTEMPTY)
    looked_up(loc)
    if loc.repo == "/":
        return Fail(errno.EBUSY)
    attrs = need(loc)
    if directory and attrs.kind is not FileKind.DIR:
        return Fail(errno.ENOTDIR)
    if not directory and attrs.kind is FileKind.DIR:
        return Fail(errno.EISDIR)
    denied = env.check(call, "delete", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return synthetic_op(lambda: env.repo.remove(repo, directory))


@guarded
def sys_unlink(call: Call, env: Env) -> Result:
    return unlink_at(call, env, AT_FDCWD, call.args[0], 0)


@guarded
def sys_rmdir(call: Call, env: Env) -> Result:
    return unlink_at(call, env, AT_FDCWD, call.args[0], AT_REMOVEDIR)


@guarded
def sys_unlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return unlink_at(call, env, s32(a[0]), a[1], a[2])


def rename_at(
    call: Call, env: Env, olddirfd: int, oldaddr: int, newdirfd: int, newaddr: int, flags: int
) -> Result:
    if flags & ~0x7 or (flags & 1 and flags & 2):
        return Fail(errno.EINVAL)
    src = locate(call, env, olddirfd, oldaddr, follow=False, final=Final.ENTRY)
    dst = locate(call, env, newdirfd, newaddr, follow=False, final=Final.ENTRY)
    if src.synthetic != dst.synthetic:
        if src.synthetic and src.attrs is None:
            return Fail(errno.ENOENT)
        return Fail(errno.EXDEV)
    if not src.synthetic:
        assert src.host is not None and dst.host is not None
        if any(loc.real is not None and env.host.holds_refused(loc.real) for loc in (src, dst)):
            return Fail(errno.EACCES)  # moving a directory above a trusted path renames it
        if env.host_rules and src.real is not None and dst.real is not None:
            denied = _host_rename_check(call, env, src.real, dst.real, flags)
            if denied:
                return Fail(denied)
        return run_host(env, NR_RENAMEAT2, (AT_FDCWD, Pin(src), AT_FDCWD, Pin(dst), flags))
    assert src.repo is not None and dst.repo is not None
    # The kernel's order: '.' and '..', the source's name, the target's, then the types.
    if src.last in DOTS:
        return Fail(errno.EBUSY)
    if dst.last in DOTS:
        return Fail(errno.EEXIST if flags & 1 else errno.EBUSY)
    sattrs = looked_up(src)
    if sattrs is None:
        return Fail(errno.ENOENT)
    dattrs = looked_up(dst)
    if flags & 4:
        return Fail(errno.EINVAL)  # RENAME_WHITEOUT
    if flags & 1 and dattrs is not None:
        return Fail(errno.EEXIST)
    if flags & 2 and dattrs is None:
        return Fail(errno.ENOENT)
    if flags & 2 and dst.must_be_dir and dattrs is not None and dattrs.kind is not FileKind.DIR:
        return Fail(errno.ENOTDIR)
    # A trailing slash is a non-directory's ENOTDIR (the target's too, unless exchanged).
    slash = src.must_be_dir or (dst.must_be_dir and not flags & 2)
    if slash and sattrs.kind is not FileKind.DIR:
        return Fail(errno.ENOTDIR)
    if src.repo == "/" or dst.repo == "/":
        return Fail(errno.EBUSY)
    if dst.repo.startswith(src.repo + "/"):
        return Fail(errno.EINVAL)
    if dattrs is not None and not flags & 2:
        if sattrs.kind is FileKind.DIR and dattrs.kind is not FileKind.DIR:
            return Fail(errno.ENOTDIR)
        if sattrs.kind is not FileKind.DIR and dattrs.kind is FileKind.DIR:
            return Fail(errno.EISDIR)
    for loc in (src, dst):
        denied = env.check(call, "rename", loc.guest)
        if denied:
            return Fail(denied)
    if src.repo == dst.repo:
        return Return(0)
    # Rules are about paths: nothing may leave a stricter rule by the move (and an
    # exchange moves the target the other way).
    denied = env.check_rename(call, src.guest, dst.guest, sattrs.kind is FileKind.DIR)
    if not denied and flags & 2 and dattrs is not None:
        denied = env.check_rename(call, dst.guest, src.guest, dattrs.kind is FileKind.DIR)
    if denied:
        return Fail(denied)
    s, d = src.repo, dst.repo
    return synthetic_op(lambda: env.repo.rename(s, d, RenameFlags(flags & 3)))


def _host_rename_check(call: Call, env: Env, src: str, dst: str, flags: int) -> int:
    """The [host] side of :meth:`Env.check_rename` (and the other way for an exchange)."""

    def tree(path: str) -> bool:
        try:
            return st.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return False  # the kernel answers for a name that is not there

    denied = env.check_host_rename(call, src, dst, tree(src))
    if not denied and flags & 2:
        denied = env.check_host_rename(call, dst, src, tree(dst))
    return denied


@guarded
def sys_rename(call: Call, env: Env) -> Result:
    return rename_at(call, env, AT_FDCWD, call.args[0], AT_FDCWD, call.args[1], 0)


@guarded
def sys_renameat(call: Call, env: Env) -> Result:
    a = call.args
    return rename_at(call, env, s32(a[0]), a[1], s32(a[2]), a[3], 0)


@guarded
def sys_renameat2(call: Call, env: Env) -> Result:
    a = call.args
    return rename_at(call, env, s32(a[0]), a[1], s32(a[2]), a[3], a[4] & 0xFFFFFFFF)


def link_at(
    call: Call, env: Env, olddirfd: int, oldaddr: int, newdirfd: int, newaddr: int, flags: int
) -> Result:
    if flags & ~(abi.AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        return Fail(errno.EINVAL)
    src = locate(
        call,
        env,
        olddirfd,
        oldaddr,
        follow=bool(flags & abi.AT_SYMLINK_FOLLOW),
        empty_ok=bool(flags & AT_EMPTY_PATH),
    )
    dst = locate(call, env, newdirfd, newaddr, follow=False, final=Final.ENTRY)
    if src.synthetic or dst.synthetic:
        if src.synthetic != dst.synthetic:
            return Fail(errno.EXDEV)
        sattrs = need(src)
        _created(dst)
        if sattrs.kind is FileKind.DIR:
            return Fail(errno.EPERM)  # as link(2): no hard link to a directory
        # Both names, and a new name must give nothing the old one does not: the
        # source must be readable and writable by this app (what a copy would need).
        for op, loc in (("link", src), ("link", dst), ("read", src), ("write", src)):
            denied = env.check(call, op, loc.guest)
            if denied:
                return Fail(denied)
        s, d = src.repo, dst.repo
        assert s is not None and d is not None
        return synthetic_op(lambda: env.repo.link(s, d))
    assert src.host is not None and dst.host is not None
    follow = bool(flags & abi.AT_SYMLINK_FOLLOW)
    return run_host(
        env,
        NR_LINKAT,
        (AT_FDCWD, Pin(src, whole=follow), AT_FDCWD, Pin(dst), flags & ~AT_EMPTY_PATH),
    )


@guarded
def sys_link(call: Call, env: Env) -> Result:
    return link_at(call, env, AT_FDCWD, call.args[0], AT_FDCWD, call.args[1], 0)


@guarded
def sys_linkat(call: Call, env: Env) -> Result:
    a = call.args
    return link_at(call, env, s32(a[0]), a[1], s32(a[2]), a[3], a[4])


def symlink_at(call: Call, env: Env, target_addr: int, dirfd: int, addr: int) -> Result:
    target = call.guest.read_path(target_addr)
    if not target:
        return Fail(errno.ENOENT)
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_SYMLINKAT, (cstr(target), AT_FDCWD, Pin(loc)))
    assert loc.repo is not None
    _created(loc)
    denied = env.check(call, "create", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return synthetic_op(lambda: env.repo.symlink(target, repo))


@guarded
def sys_symlink(call: Call, env: Env) -> Result:
    return symlink_at(call, env, call.args[0], AT_FDCWD, call.args[1])


@guarded
def sys_symlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return symlink_at(call, env, a[0], s32(a[1]), a[2])


def mknod_at(call: Call, env: Env, dirfd: int, addr: int, mode: int, dev: int) -> Result:
    # The kernel's types: ``umode_t mode, unsigned dev`` (the register's high bits are
    # not the call's; a mode past 32 bits made the host call fail with EIO).
    mode, dev = mode & 0xFFFF, dev & 0xFFFFFFFF
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if loc.synthetic:
        _created(loc)
        if st.S_IFMT(mode) in (0, st.S_IFREG):
            return open_synthetic_create(call, env, loc, mode)
        return Fail(errno.EPERM)
    assert loc.host is not None
    if st.S_IFMT(mode) in (st.S_IFCHR, st.S_IFBLK):
        # A device node is a new way into a device, not a file: under [host] rules it
        # needs a [host] mknod glob (write-listed /dev/** means the nodes that exist).
        if loc.real is None:
            return Fail(errno.EPERM)
        host_check(call, env, "mknod", loc)
    return run_host(env, NR_MKNODAT, (AT_FDCWD, Pin(loc), mode, dev))


def open_synthetic_create(call: Call, env: Env, loc: Loc, mode: int) -> Result:
    assert loc.repo is not None
    denied = env.check(call, "create", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return synthetic_op(
        lambda: env.repo.open(
            repo, abi.O_CREAT | abi.O_EXCL | abi.O_WRONLY, (mode & 0o7777) & ~call.guest.umask()
        )
    )


@guarded
def sys_mknod(call: Call, env: Env) -> Result:
    a = call.args
    return mknod_at(call, env, AT_FDCWD, a[0], a[1], a[2])


@guarded
def sys_mknodat(call: Call, env: Env) -> Result:
    a = call.args
    return mknod_at(call, env, s32(a[0]), a[1], a[2], a[3])
