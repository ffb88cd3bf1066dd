"""Extended attributes: the repository has none; on the host, run on a pinned path."""

from __future__ import annotations

import errno

from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, Scratch
from synthfs.interposer.handlers.locate import Pin, fd_loc, guarded, locate, need, run_host, s32
from synthfs.interposer.handlers.setattr import host_fd_op
from synthfs.interposer.numbers import NR
from synthfs.interposer.ports import Call, Env


def _on_data(call: Call) -> Result:
    """What an xattr call gives on /data: the row's errno, or 0 (an empty list)."""
    err = call.spec.on_data
    return Fail(err) if err else Return(0)


@guarded
def sys_xattr(call: Call, env: Env) -> Result:
    """get/set/list/remove ``xattr`` and their ``l`` variants (the row says which follow)."""
    follow = call.spec.follow
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=follow)
    if not loc.synthetic:
        assert loc.host is not None
        args: list[int | Scratch | Pin] = list(call.args)
        args[0] = Pin(loc, whole=follow)
        return run_host(env, call.nr, tuple(args))
    need(loc)
    denied = env.check(call, "stat", loc.guest)
    return Fail(denied) if denied else _on_data(call)


@guarded
def sys_fxattr(call: Call, env: Env) -> Result:
    """The f*xattr calls; one that changes a host file is judged as its path call."""
    loc = fd_loc(call, env, s32(call.args[0]), io=True)
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        path_form = call.spec.judged_as
        if not path_form:
            return CONTINUE  # reading attributes of an fd the guest holds
        nr, rest = NR[path_form], call.args[1:]
        return host_fd_op(call, env, loc, lambda fd: run_host(env, nr, (Pin(fd, True), *rest)))
    return _on_data(call)


@guarded
def sys_xattrat(call: Call, env: Env) -> Result:
    """The *xattrat and file_*attr syscalls (Linux 6.13+): on the host only."""
    from synthfs.interposer.syscalls import Role  # the table imports this module

    a = call.args
    at = call.spec.args.index(Role.ATFLAGS)  # *xattrat: third argument; file_*attr: fifth
    follow = not a[at] & AT_SYMLINK_NOFOLLOW
    loc = locate(call, env, s32(a[0]), a[1], follow=follow, empty_ok=bool(a[at] & AT_EMPTY_PATH))
    if loc.synthetic:
        return Fail(errno.ENOTSUP)
    args: list[int | Scratch | Pin] = list(a)
    args[0], args[1] = AT_FDCWD, Pin(loc, whole=follow)
    args[at] = a[at] & ~AT_EMPTY_PATH
    return run_host(env, call.nr, tuple(args))
