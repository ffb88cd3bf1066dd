"""Extended attributes: the repository has none; on the host, run on a pinned path."""

from __future__ import annotations

import errno

from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, Scratch
from synthfs.interposer.handlers.locate import Pin, fd_loc, guarded, locate, need, run_host, s32
from synthfs.interposer.handlers.setattr import host_fd_op
from synthfs.interposer.ports import Call, Env
from synthfs.interposer.syscalls import BY_NAME, Role


def _xattr(call: Call, env: Env, follow: bool, synthetic_result: Result) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=follow)
    if not loc.synthetic:
        assert loc.host is not None
        args: list[int | Scratch | Pin] = list(call.args)
        args[0] = Pin(loc, whole=follow)
        return run_host(env, call.nr, tuple(args))
    need(loc)
    denied = env.check(call, "stat", loc.guest)
    return Fail(denied) if denied else synthetic_result


@guarded
def sys_getxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, True, Fail(errno.ENODATA))


@guarded
def sys_lgetxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, False, Fail(errno.ENODATA))


@guarded
def sys_setxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, True, Fail(errno.ENOTSUP))


@guarded
def sys_lsetxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, False, Fail(errno.ENOTSUP))


@guarded
def sys_listxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, True, Return(0))


@guarded
def sys_llistxattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, False, Return(0))


@guarded
def sys_removexattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, True, Fail(errno.ENODATA))


@guarded
def sys_lremovexattr(call: Call, env: Env) -> Result:
    return _xattr(call, env, False, Fail(errno.ENODATA))


def _fxattr(call: Call, env: Env, synthetic_result: Result, path_form: str = "") -> Result:
    """An f*xattr call; ``path_form`` (the changes) judges a host fd by the path call."""
    loc = fd_loc(call, env, s32(call.args[0]))
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        if not path_form:
            return CONTINUE  # reading attributes of an fd the guest holds
        nr, rest = BY_NAME[path_form].nr, call.args[1:]
        return host_fd_op(call, env, loc, lambda fd: run_host(env, nr, (Pin(fd, True), *rest)))
    return synthetic_result


@guarded
def sys_fgetxattr(call: Call, env: Env) -> Result:
    return _fxattr(call, env, Fail(errno.ENODATA))


@guarded
def sys_fsetxattr(call: Call, env: Env) -> Result:
    return _fxattr(call, env, Fail(errno.ENOTSUP), "setxattr")


@guarded
def sys_flistxattr(call: Call, env: Env) -> Result:
    return _fxattr(call, env, Return(0))


@guarded
def sys_fremovexattr(call: Call, env: Env) -> Result:
    return _fxattr(call, env, Fail(errno.ENODATA), "removexattr")


@guarded
def sys_xattrat(call: Call, env: Env) -> Result:
    """The *xattrat and file_*attr syscalls (Linux 6.13+): on the host only."""
    a = call.args
    at = BY_NAME[call.name].args.index(Role.ATFLAGS)  # *xattrat: third argument; file_*attr: fifth
    follow = not a[at] & AT_SYMLINK_NOFOLLOW
    loc = locate(call, env, s32(a[0]), a[1], follow=follow, empty_ok=bool(a[at] & AT_EMPTY_PATH))
    if loc.synthetic:
        return Fail(errno.ENOTSUP)
    args: list[int | Scratch | Pin] = list(a)
    args[0], args[1] = AT_FDCWD, Pin(loc, whole=follow)
    args[at] = a[at] & ~AT_EMPTY_PATH
    return run_host(env, call.nr, tuple(args))
