"""open, openat, openat2, creat: one shared :func:`open_at`."""

from __future__ import annotations

import errno

from synthfs.interposer import abi
from synthfs.interposer.abi import AT_FDCWD
from synthfs.interposer.actions import Fail, Result, RunChecked, Scratch
from synthfs.interposer.handlers.locate import (
    CONFINE,
    NO_LINKS,
    NR_OPENAT,
    NR_OPENAT2,
    Loc,
    Pin,
    Refused,
    as_written,
    cstr,
    locate,
    log,
    looked_up,
    run_host,
    s32,
)
from synthfs.interposer.namespace import Final
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import FileKind

#: The flags O_PATH keeps: open(2) drops the others, openat2(2) refuses them (EINVAL).
O_PATH_FLAGS = abi.O_PATH | abi.O_DIRECTORY | abi.O_NOFOLLOW | abi.O_CLOEXEC
#: __O_TMPFILE (the bit without O_DIRECTORY) and what must come with it.
_O_TMPFILE_BIT = abi.O_TMPFILE & ~abi.O_DIRECTORY
_O_TMPFILE_MASK = abi.O_TMPFILE | abi.O_CREAT
#: the largest open_how openat2 takes (copy_struct_from_user: E2BIG beyond a page)
_PAGE = 4096


def open_flags_valid(flags: int) -> bool:
    """Whether the kernel accepts the flag combination (build_open_flags), before any lookup."""
    if flags & (abi.O_CREAT | abi.O_DIRECTORY) == abi.O_CREAT | abi.O_DIRECTORY:
        return False  # refused since Linux 6.4 (it used to create a regular file)
    if flags & _O_TMPFILE_BIT:
        if flags & _O_TMPFILE_MASK != abi.O_TMPFILE:
            return False
        if flags & abi.O_ACCMODE not in (abi.O_WRONLY, abi.O_RDWR):
            return False
    return not (flags & abi.O_PATH and flags & ~O_PATH_FLAGS)


def legacy_open_flags(flags: int) -> int:
    """open(2) and openat(2) ignore what O_PATH does not keep."""
    flags &= 0xFFFFFFFF
    return flags & O_PATH_FLAGS if flags & abi.O_PATH else flags


def open_at(
    call: Call, env: Env, dirfd: int, addr: int, flags: int, mode: int, resolve: int = 0
) -> Result:
    """The one open: open, openat, openat2 and creat end here."""
    flags &= 0xFFFFFFFF
    if not open_flags_valid(flags):
        return Fail(errno.EINVAL)
    if resolve & abi.RESOLVE_CACHED and flags & (abi.O_TRUNC | abi.O_CREAT | _O_TMPFILE_BIT):
        return Fail(errno.EAGAIN)  # the kernel's answer before any lookup
    # O_CREAT|O_EXCL never follows a final symlink (it fails with EEXIST).
    excl = flags & (abi.O_CREAT | abi.O_EXCL) == abi.O_CREAT | abi.O_EXCL
    follow = not (flags & abi.O_NOFOLLOW or excl)
    writing = flags & abi.O_ACCMODE in (abi.O_WRONLY, abi.O_RDWR) or bool(flags & abi.O_TRUNC)
    if flags & abi.O_DIRECTORY:
        ops: tuple[str, ...] = ("list", "read")
    elif flags & abi.O_CREAT:
        ops = ("create", "write")
    else:
        ops = ("write",) if writing else ("read", "list", "stat")
    # On the host: creating (O_CREAT, O_TMPFILE) is "create", any write access
    # "write" (both write class), the rest (O_RDONLY, O_PATH) "read".
    if flags & abi.O_CREAT or (flags & abi.O_TMPFILE) == abi.O_TMPFILE:
        host_op = "create"
    else:
        host_op = "write" if writing else "read"
    final = Final.ENTRY if flags & abi.O_CREAT else Final.LOOKUP
    try:
        loc = locate(
            call,
            env,
            dirfd,
            addr,
            follow=follow,
            ops=ops,
            host_op=host_op,
            final=final,
            confine=resolve & CONFINE,
        )
    except Refused:
        return Fail(errno.EACCES)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    if loc.synthetic:
        if resolve & abi.RESOLVE_CACHED:
            return Fail(errno.EAGAIN)  # a /data lookup asks the agent: it may block
        return _open_synthetic(call, env, loc, flags, mode)
    assert loc.host is not None
    creating = bool(flags & abi.O_CREAT) or (flags & abi.O_TMPFILE) == abi.O_TMPFILE
    kmode = mode & 0o7777 if creating else 0
    if loc.magic:
        # A magic link to a pipe, socket or deleted file: the kernel must follow it, on
        # the object checked (Pin: a dup2 onto the fd meanwhile fails the open, EACCES).
        return run_host(env, NR_OPENAT, (AT_FDCWD, Pin(loc, True), flags, kmode))
    # The confinement was judged on the guest's own walk (_confined_walk, the namespace);
    # the kernel walks the checked real path from '/', where only RESOLVE_CACHED still means
    # the same.
    how = abi.OPEN_HOW.pack(flags, kmode, (resolve & abi.RESOLVE_CACHED) | NO_LINKS)
    path = as_written(loc.host, loc)
    return RunChecked(NR_OPENAT2, (AT_FDCWD, cstr(path), Scratch(how), len(how)))


def _open_synthetic(call: Call, env: Env, loc: Loc, flags: int, mode: int) -> Result:
    assert loc.repo is not None
    acc = flags & abi.O_ACCMODE
    writing = acc in (abi.O_WRONLY, abi.O_RDWR) or bool(flags & abi.O_TRUNC)
    if flags & abi.O_CREAT:
        if loc.must_be_dir:
            return Fail(errno.EISDIR)  # before the name is looked up
        try:
            looked_up(loc)
        except OSError as exc:
            return Fail(exc.errno or errno.EIO)
    attrs = loc.attrs
    if attrs is None:
        if not flags & abi.O_CREAT:
            return Fail(errno.ENOENT)
        if loc.must_be_dir or flags & abi.O_DIRECTORY:
            return Fail(errno.EISDIR if loc.must_be_dir else errno.EINVAL)
        denied = env.check(call, "create", loc.guest)
        if denied:
            return Fail(denied)
    elif attrs.kind is FileKind.SYMLINK:
        if flags & abi.O_CREAT and flags & abi.O_EXCL:
            return Fail(errno.EEXIST)
        if flags & abi.O_DIRECTORY:
            return Fail(errno.ENOTDIR)
        if not flags & abi.O_PATH:
            return Fail(errno.ELOOP)
        # O_PATH|O_NOFOLLOW: an fd on the link itself (glibc's fchmodat and
        # lchown emulations fstat it): an fd on a placeholder symlink.
        call.proc.synthetic = True
        placeholder = env.host.new_dir_handle(loc.repo, symlink=True)
        kflags = abi.O_PATH | abi.O_NOFOLLOW | (flags & abi.O_CLOEXEC)
        how = abi.OPEN_HOW.pack(kflags, 0, NO_LINKS)
        return RunChecked(NR_OPENAT2, (AT_FDCWD, cstr(placeholder), Scratch(how), len(how)))
    elif attrs.kind is FileKind.DIR:
        if flags & abi.O_CREAT and not flags & abi.O_DIRECTORY:
            return Fail(errno.EISDIR)
        if flags & abi.O_TMPFILE == abi.O_TMPFILE:
            # A valid O_TMPFILE on a directory: an unnamed file the repository cannot hold.
            return Fail(errno.EOPNOTSUPP)
        if acc != 0 or flags & abi.O_TRUNC:
            return Fail(errno.EISDIR)
        denied = env.check(call, "list", loc.guest)
        if denied:
            return Fail(denied)
        call.proc.synthetic = True
        placeholder = env.host.new_dir_handle(loc.repo)
        kflags = abi.O_DIRECTORY | (flags & (abi.O_CLOEXEC | abi.O_NONBLOCK | abi.O_PATH))
        how = abi.OPEN_HOW.pack(kflags, 0, NO_LINKS)
        return RunChecked(NR_OPENAT2, (AT_FDCWD, cstr(placeholder), Scratch(how), len(how)))
    else:
        if flags & abi.O_CREAT and flags & abi.O_EXCL:
            return Fail(errno.EEXIST)
        if flags & abi.O_DIRECTORY or loc.must_be_dir:
            return Fail(errno.ENOTDIR)
        denied = env.check(call, "write" if writing else "read", loc.guest)
        if denied:
            return Fail(denied)
    if flags & abi.O_CREAT:
        mode = mode & 0o7777 & ~call.guest.umask()  # read from /proc: only when it matters
    # A name this call creates is removed again if the guest-side open fails (EMFILE,
    # ENFILE, ENOMEM): natively a failed open(O_CREAT) creates nothing. O_EXCL tells
    # us the name is ours; if another process created it meanwhile, it is not.
    created = attrs is None
    repo_path = loc.repo
    try:
        try:
            claim = created and not flags & abi.O_EXCL  # (the guest did not ask for it)
            opened = env.repo.open(loc.repo, flags | (abi.O_EXCL if created else 0), mode & 0o7777,
                                   claim)
        except FileExistsError:
            if flags & abi.O_EXCL or not created:
                raise
            created = False
            opened = env.repo.open(loc.repo, flags, mode & 0o7777)
    except OSError as exc:
        return Fail(exc.errno or errno.EIO)
    kflags = flags & ~(
        abi.O_CREAT | abi.O_EXCL | abi.O_TRUNC | abi.O_NOFOLLOW | abi.O_DIRECTORY | abi.O_NOCTTY
    )
    how = abi.OPEN_HOW.pack(kflags, 0, NO_LINKS)

    def after(ret: int) -> None:
        if ret >= 0:
            call.proc.synthetic = True
            call.proc.wrote = call.proc.wrote or writing
        elif created:
            try:
                env.repo.remove(repo_path, directory=False)
            except OSError as exc:
                log.warning("cannot undo the create of %s after a failed open: %s", loc.guest, exc)

    return RunChecked(
        NR_OPENAT2, (AT_FDCWD, cstr(opened.host_path), Scratch(how), len(how)), after
    )


def sys_open(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, AT_FDCWD, a[0], legacy_open_flags(a[1]), a[2])


def sys_openat(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, s32(a[0]), a[1], legacy_open_flags(a[2]), a[3])


def sys_creat(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, AT_FDCWD, a[0], abi.O_CREAT | abi.O_WRONLY | abi.O_TRUNC, a[1])


def sys_openat2(call: Call, env: Env) -> Result:
    a = call.args
    size = a[3]
    if size > _PAGE:
        return Fail(errno.E2BIG)
    if size < abi.OPEN_HOW.size:
        return Fail(errno.EINVAL)
    try:
        raw = call.guest.read(a[2], size)
    except OSError:
        return Fail(errno.EFAULT)
    if raw[abi.OPEN_HOW.size:].strip(b"\0"):
        return Fail(errno.E2BIG)  # a field of a later kernel the caller set: not ignored
    flags, mode, resolve = abi.OPEN_HOW.unpack(raw[:abi.OPEN_HOW.size])
    if flags >> 32 or mode & ~0o7777 or resolve & ~0x3F:
        return Fail(errno.EINVAL)
    if mode and not flags & (abi.O_CREAT | _O_TMPFILE_BIT):
        return Fail(errno.EINVAL)  # a mode only goes with a creating open
    if resolve & abi.RESOLVE_BENEATH and resolve & abi.RESOLVE_IN_ROOT:
        return Fail(errno.EINVAL)
    return open_at(call, env, s32(a[0]), a[1], flags, mode, resolve)
