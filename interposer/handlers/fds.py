"""fd calls that may meet a synthetic fd: getdents, lseek, close, fsync, inotify..."""

from __future__ import annotations

import contextlib
import errno
import os

from synthfs.interposer import abi
from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked
from synthfs.interposer.handlers.locate import (
    IN_DONT_FOLLOW,
    NR_INOTIFY_ADD_WATCH,
    NR_NAME_TO_HANDLE_AT,
    Pin,
    guarded,
    locate,
    need,
    run_host,
    s32,
)
from synthfs.interposer.ports import Call, Env


def _getdents(call: Call, env: Env, legacy: bool) -> Result:
    fd, buf, size = s32(call.args[0]), call.args[1], call.args[2] & 0xFFFFFFFF
    target = call.guest.fd_target(fd)
    handle = env.host.dir_handle(target) if target is not None else None
    if handle is None:
        return CONTINUE
    if handle.entries is None:
        try:
            listing = env.repo.listdir(handle.repo_path)
        except OSError as exc:
            return Fail(exc.errno or errno.EIO)
        parent = handle.repo_path.rsplit("/", 1)[0] or "/"
        pattrs = env.repo.lstat(parent) if handle.repo_path != "/" else None
        from synthfs.protocol.messages import DirEntry

        # Entries the policy hides (errno ENOENT) are not listed either.
        base = env.ns.guest_path(handle.repo_path).rstrip("/")
        visible = [
            e
            for e in listing.entries
            if env.check(call, "stat", f"{base}/{e.name}") != errno.ENOENT
        ]
        handle.entries = [
            DirEntry(".", listing.attrs),
            DirEntry("..", pattrs or listing.attrs),
            *visible,
        ]
    pack = abi.dirent if legacy else abi.dirent64
    out = bytearray()
    pos = handle.pos
    entries = handle.entries
    while pos < len(entries):
        e = entries[pos]
        rec = pack(e.attrs.ino or pos + 1, pos + 1, e.attrs.kind, os.fsencode(e.name))
        if len(out) + len(rec) > size:
            if not out:
                return Fail(errno.EINVAL)
            break
        out += rec
        pos += 1
    handle.pos = pos
    return Return(len(out), ((buf, bytes(out)),) if out else ())


@guarded
def sys_getdents64(call: Call, env: Env) -> Result:
    return _getdents(call, env, legacy=False)


@guarded
def sys_getdents(call: Call, env: Env) -> Result:
    return _getdents(call, env, legacy=True)


def sys_lseek(call: Call, env: Env) -> Result:
    target = call.guest.fd_target(s32(call.args[0]))
    handle = env.host.dir_handle(target) if target is not None else None
    if handle is None:
        return CONTINUE
    offset = call.args[1]
    if offset >> 63:
        return Fail(errno.EINVAL)
    handle.pos = offset
    if offset == 0:
        handle.entries = None  # rewinddir sees a fresh listing
    return Return(offset)


def _commit_fd(call: Call, env: Env, fd: int, wait: bool = False) -> int:
    """Commit fd's local copy if it is one open for writing (``wait``: any /data copy, and
    return once the server has it); 0 or an errno."""
    target = call.guest.fd_target(fd)
    if target is None:
        return 0
    repo = env.repo.repo_path_of(target)
    if repo is None:
        # A name of a hard-linked file removed while this fd wrote it: what it wrote
        # since is in no name here (native: the other name has it). Say so.
        link = f"/proc/{call.guest.tgid}/fd/{fd}"
        return errno.EIO if env.repo.unhomed_write(target, link) else 0
    if not (wait or call.guest.fd_writable(fd)):
        return 0
    try:
        env.repo.commit(repo, wait=wait)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def sys_close(call: Call, env: Env) -> Result:
    if not call.proc.wrote:
        return CONTINUE
    err = _commit_fd(call, env, s32(call.args[0]))
    if not err:
        return CONTINUE

    def after(ret: int) -> Fail | None:
        return Fail(err) if ret == 0 else None

    return RunChecked(call.nr, call.args, after)


def sys_close_range(call: Call, env: Env) -> Result:
    if not call.proc.wrote:
        return CONTINUE
    first, last = call.args[0] & 0xFFFFFFFF, call.args[1] & 0xFFFFFFFF
    for fd in call.guest.open_fds():
        if first <= fd <= last:
            _commit_fd(call, env, fd)
    return CONTINUE


def sys_recvmsg(call: Call, env: Env) -> Result:
    """recvmsg/recvmmsg: the caller may receive a /data fd (SCM_RIGHTS) and then close,
    fsync, fchmod... it without ever opening one, so its fd calls are looked at from
    now on (the Need.SYNTH_FD and Need.WROTE rows), as if it had opened one for
    writing. Whatever the call gets: a look at its msghdr first would be a check of
    memory a guest thread can rewrite before the kernel reads it, and a call that
    blocks may be waiting when another process opens something on /data."""
    call.proc.synthetic = call.proc.wrote = True
    return CONTINUE


def sys_fsync(call: Call, env: Env) -> Result:
    """fsync/fdatasync of a /data fd: returns once the server has the file durably
    (a write-back agent may have only queued it at close)."""
    err = _commit_fd(call, env, s32(call.args[0]), wait=True)
    return Fail(err) if err else CONTINUE


def sys_syncfs(call: Call, env: Env) -> Result:
    """syncfs of a /data fd: returns once the server has every file the agent queued."""
    target = call.guest.fd_target(s32(call.args[0]))
    if target is None or env.repo.repo_path_of(target) is None:
        return CONTINUE
    try:
        env.repo.sync(wait=True)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    return CONTINUE


def sys_sync(call: Call, env: Env) -> Result:
    with contextlib.suppress(OSError):  # sync(2) cannot fail
        env.repo.sync(wait=True)
    return CONTINUE


@guarded
def sys_inotify_add_watch(call: Call, env: Env) -> Result:
    follow = not call.args[2] & IN_DONT_FOLLOW
    loc = locate(call, env, AT_FDCWD, call.args[1], follow=follow)
    if loc.synthetic:
        need(loc)
        return Fail(errno.ENOTSUP)
    return run_host(
        env, NR_INOTIFY_ADD_WATCH, (call.args[0], Pin(loc, whole=follow), call.args[2])
    )


@guarded
def sys_name_to_handle_at(call: Call, env: Env) -> Result:
    a = call.args
    loc = locate(
        call,
        env,
        s32(a[0]),
        a[1],
        follow=bool(a[4] & abi.AT_SYMLINK_FOLLOW),
        empty_ok=bool(a[4] & AT_EMPTY_PATH),
    )
    if loc.synthetic:
        return Fail(errno.EOPNOTSUPP)
    follow = bool(a[4] & abi.AT_SYMLINK_FOLLOW)
    return run_host(
        env,
        NR_NAME_TO_HANDLE_AT,
        (AT_FDCWD, Pin(loc, whole=follow), a[2], a[3], a[4] & ~AT_EMPTY_PATH),
    )
