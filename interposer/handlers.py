"""Syscall handlers: decode arguments by role, call one shared operation, return an action.

Thin and pure: a handler reads the guest only through :class:`~interposer.ports.Guest`,
reaches the repository only through :class:`~interposer.ports.Repo` and the host
through :class:`~interposer.ports.Host`, and returns an
:mod:`interposer.actions` value; the supervisor applies it. ``open``,
``openat``, ``openat2`` and ``creat`` end in :func:`open_at`; the stat family
in :func:`stat_at`; and so on.

The TOCTOU rule (DESIGN.md §4): a path is read out of the guest once. Host
queries (stat, access, readlink) are answered by the supervisor itself on the
object it opened with ``O_PATH`` and checked, so the kernel never re-reads a
guest path. Calls the kernel must run (open, mkdir, unlink, ...) run on the
checked copy in the scratch page; opens use ``openat2`` with
``RESOLVE_NO_SYMLINKS`` on the resolved path, so a symlink swapped in after the
check fails instead of escaping.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat as st
import struct
from collections.abc import Callable

from attrs import evolve, frozen

from synthfs.interposer import abi, binfmt
from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked, Scratch
from synthfs.interposer.namespace import MAX_SYMLINKS, NAME_MAX, Final, Target, last_name
from synthfs.interposer.ports import Call, Env
from synthfs.interposer.syscalls import BY_NAME, Role
from synthfs.policy.engine import NetworkMode
from synthfs.protocol.messages import Attrs, FileKind, RenameFlags

__all__ = ["HANDLERS", "Loc", "locate"]

log = logging.getLogger(__name__)

NR_OPENAT = BY_NAME["openat"].nr
NR_OPENAT2 = BY_NAME["openat2"].nr
NR_MKDIRAT = BY_NAME["mkdirat"].nr
NR_UNLINKAT = BY_NAME["unlinkat"].nr
NR_RENAMEAT2 = BY_NAME["renameat2"].nr
NR_LINKAT = BY_NAME["linkat"].nr
NR_SYMLINKAT = BY_NAME["symlinkat"].nr
NR_FCHMODAT = BY_NAME["fchmodat"].nr
NR_FCHOWNAT = BY_NAME["fchownat"].nr
NR_TRUNCATE = BY_NAME["truncate"].nr
NR_UTIMENSAT = BY_NAME["utimensat"].nr
NR_FUTIMESAT = BY_NAME["futimesat"].nr
NR_CHDIR = BY_NAME["chdir"].nr
NR_EXECVEAT = BY_NAME["execveat"].nr
NR_MKNODAT = BY_NAME["mknodat"].nr
NR_CONNECT = BY_NAME["connect"].nr
NR_BIND = BY_NAME["bind"].nr
NR_INOTIFY_ADD_WATCH = BY_NAME["inotify_add_watch"].nr
NR_NAME_TO_HANDLE_AT = BY_NAME["name_to_handle_at"].nr
NR_STATFS = BY_NAME["statfs"].nr
NR_BRK = BY_NAME["brk"].nr
NR_FCNTL = BY_NAME["fcntl"].nr
NR_IOCTL = BY_NAME["ioctl"].nr
IN_DONT_FOLLOW = 0x01000000

_NO_LINKS = abi.RESOLVE_NO_SYMLINKS | abi.RESOLVE_NO_MAGICLINKS

Handler = Callable[[Call, Env], Result]
HANDLERS: dict[str, Handler] = {}


def handler(fn: Handler) -> Handler:
    HANDLERS[fn.__name__] = fn
    return fn


def _s32(value: int) -> int:
    """An int argument as the kernel sees it (the low 32 bits, signed)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _cstr(path: str) -> Scratch:
    return Scratch(os.fsencode(path) + b"\0")


# -- locating a path ------------------------------------------------------------------------


@frozen
class Loc:
    """Where a guest path leads.

    Synthetic: ``repo`` is the repository path and ``attrs`` its attributes
    (None: does not exist). Host: ``host`` is the path the kernel will use (the
    resolved real path, or for a magic link to a non-file the ``/proc`` path).
    """

    guest: str
    repo: str | None = None
    attrs: Attrs | None = None
    host: str | None = None
    must_be_dir: bool = False
    #: the location of an fd (AT_EMPTY_PATH): ``host`` is its /proc magic link
    via_fd: bool = False
    #: host: the resolved path the ``[host]`` rules decide on (None: not a file-system
    #: object, e.g. a pipe or socket reached through a /proc magic link)
    real: str | None = None
    #: host: ``host`` is a /proc magic link to a pipe, socket or deleted file, which
    #: only the kernel can follow (no RESOLVE_NO_MAGICLINKS for it)
    magic: bool = False
    #: synthetic: the final component as the guest wrote it ('.' and '..' kept)
    last: str = ""
    #: host, ``host`` a /proc link to an fd or a cwd (``via_fd``, ``magic``): the
    #: link's text the check saw. The kernel's call runs on an fd the supervisor
    #: opens through the link and finds with this same text (:class:`Pin`): a
    #: guest thread cannot dup2 another file onto the fd in between.
    link: str | None = None
    #: host: the repository symlink that led here (``Target.via``), for the audit
    via: str = ""

    @property
    def synthetic(self) -> bool:
        return self.repo is not None


class Refused(OSError):
    pass


#: The standard /dev links into /proc/self: resolved in the guest's context, not
#: the supervisor's (the supervisor's own /proc/self is another process).
_DEV_SELF = {
    "/dev/stdin": "/proc/self/fd/0",
    "/dev/stdout": "/proc/self/fd/1",
    "/dev/stderr": "/proc/self/fd/2",
    "/dev/fd": "/proc/self/fd",
}


def _proc_self(path: str, call: Call) -> str:
    if path.startswith("/dev/"):
        for link, target in _DEV_SELF.items():
            if path == link or path.startswith(link + "/"):
                path = target + path[len(link) :]
                break
    if path == "/proc/self" or path.startswith("/proc/self/"):
        return f"/proc/{call.guest.tgid}" + path[len("/proc/self") :]
    if path == "/proc/thread-self" or path.startswith("/proc/thread-self/"):
        return f"/proc/{call.guest.tgid}/task/{call.guest.tid}" + path[len("/proc/thread-self") :]
    return path


def _whose(call: Call) -> tuple[int, int]:
    """The guest thread a host walk is for (its /proc/self, /proc/thread-self)."""
    return call.guest.tgid, call.guest.tid


def fd_loc(call: Call, env: Env, fd: int, target: str | None = None) -> Loc | None:
    """What an fd refers to; None when it is not open (EBADF). ``target``: its
    ``/proc`` link, when the caller has read it already."""
    if fd == AT_FDCWD:
        cwd = call.proc.fs.cwd
        if cwd is not None:
            return _synthetic_loc(env, cwd)
        cwd_path = call.guest.host_cwd()
        return Loc(
            guest=cwd_path,
            host=f"/proc/{call.guest.tgid}/cwd",
            via_fd=True,
            real=cwd_path,
            link=cwd_path,
        )
    if target is None:
        target = call.guest.fd_target(fd)
    if target is None:
        return None
    handle = env.host.dir_handle(target)
    if handle is not None:
        return Loc(
            guest=env.ns.guest_path(handle.repo_path),
            repo=handle.repo_path,
            attrs=env.repo.lstat(handle.repo_path),
        )
    repo = env.repo.repo_path_of(target)
    if repo is not None:
        return Loc(guest=env.ns.guest_path(repo), repo=repo, attrs=env.repo.lstat(repo))
    return Loc(
        guest=target,
        host=f"/proc/{call.guest.tgid}/fd/{fd}",
        via_fd=True,
        real=_decidable(target),
        link=target,
    )


def _decidable(target: str) -> str | None:
    """The host path the [host] rules decide on for a link target (None: not a path)."""
    target = target.removesuffix(" (deleted)")
    if not target.startswith("/") or target.startswith("/memfd:"):
        return None
    return target


def _synthetic_loc(env: Env, guest_path: str) -> Loc:
    repo = env.ns.repo_path(guest_path)
    assert repo is not None
    return Loc(guest=guest_path, repo=repo, attrs=env.repo.lstat(repo))


#: The policy operation a syscall's path is checked for before any lookup, so a
#: denied request never reaches the agent (open decides from its flags).
PRE_OPS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "stat",
            "lstat",
            "newfstatat",
            "statx",
            "access",
            "faccessat",
            "faccessat2",
            "readlink",
            "readlinkat",
            "statfs",
            "getxattr",
            "lgetxattr",
            "listxattr",
            "llistxattr",
        ),
        ("stat",),
    ),
    **dict.fromkeys(("mkdir", "mkdirat", "symlink", "symlinkat", "mknod", "mknodat"), ("create",)),
    **dict.fromkeys(("unlink", "unlinkat", "rmdir"), ("delete",)),
    **dict.fromkeys(("rename", "renameat", "renameat2"), ("rename",)),
    **dict.fromkeys(("link", "linkat"), ("link",)),
    **dict.fromkeys(
        (
            "chmod",
            "fchmodat",
            "fchmodat2",
            "chown",
            "lchown",
            "fchownat",
            "utime",
            "utimes",
            "utimensat",
            "futimesat",
            "setxattr",
            "lsetxattr",
            "removexattr",
            "lremovexattr",
        ),
        ("chmod",),
    ),
    "truncate": ("write",),
    "chdir": ("list",),
    **dict.fromkeys(("execve", "execveat"), ("read",)),
}


#: The policy operation a syscall does on a *host* path (docs/policy.md: ``read``,
#: ``stat`` and ``list`` are the read class, the rest the write class). Same as
#: :data:`PRE_OPS` where that names one op; open decides from its flags. A
#: syscall missing here is asked for ``write`` (fail closed).
HOST_OPS: dict[str, str] = {
    **{name: ops[0] for name, ops in PRE_OPS.items()},
    **dict.fromkeys(("getxattrat", "listxattrat", "file_getattr"), "stat"),
    **dict.fromkeys(("setxattrat", "removexattrat", "file_setattr"), "chmod"),
    "inotify_add_watch": "stat",
    "name_to_handle_at": "stat",
}


def host_check(call: Call, env: Env, op: str, loc: Loc) -> None:
    """The one host check: may this process do ``op`` on the host object ``loc`` leads to?

    Decided on the real path the supervisor resolved itself (``_host_loc``: its
    own O_PATH open and readlink), never on the guest's text; the kernel then
    runs on that same path, opens with RESOLVE_NO_SYMLINKS. Raises OSError
    with the policy's errno (the decision is audited by the Env).
    """
    if loc.real is None:
        return  # a pipe, socket or anonymous inode the process already holds
    err = env.check_host(call, op, loc.real, loc.via)
    if err:
        raise OSError(err, "denied by the host policy")


@frozen
class Pin:
    """A checked host path for a call the kernel runs (not an open).

    The kernel walks a path again; a symlink a guest swaps into a directory
    component after the check would redirect it, to a file the ``[host]`` rules
    protect or, with no rules, to the agent's socket or cache. So the supervisor
    opens the checked parent directory (or, for calls that follow the last
    component, the object itself) with ``RESOLVE_NO_SYMLINKS`` and the kernel is
    given ``/proc/SUPERVISOR/fd/N/name`` (``/proc/SUPERVISOR/fd/N``): a walk that
    cannot leave what was checked. A /proc link to an fd (``Loc.link``: an fd
    of the guest's, ``/proc/PID/fd/N`` to a pipe or a deleted file) is opened
    through the link instead and must still show the text the check saw.
    """

    loc: Loc
    whole: bool = False


def run_host(
    env: Env,
    nr: int,
    args: tuple[int | Scratch | Pin, ...],
    after: Callable[[int], Return | Fail | None] | None = None,
) -> Result:
    """RunChecked with every :class:`Pin` made a pinned path (see :class:`Pin`)."""
    fds: list[int] = []
    out: list[int | Scratch] = []
    try:
        for arg in args:
            if not isinstance(arg, Pin):
                out.append(arg)
                continue
            loc = arg.loc
            assert loc.host is not None
            pinned = None
            if loc.link is not None:
                pinned = env.pin(loc.link, True, via=loc.host)  # an fd: the object it holds
            elif loc.real is not None and loc.real == loc.host:
                pinned = env.pin(loc.host, arg.whole)
            if pinned is None:
                out.append(_cstr(loc.host))
            else:
                fds.append(pinned[1])
                out.append(_cstr(pinned[0]))
    except OSError as exc:
        for fd in fds:
            env.unpin(fd)
        return Fail(exc.errno or errno.EIO)
    if not fds:
        return RunChecked(nr, tuple(out), after)

    def done(ret: int) -> Return | Fail | None:
        for fd in fds:
            env.unpin(fd)
        return after(ret) if after is not None else None

    return RunChecked(nr, tuple(out), done)


def precheck(call: Call, env: Env, ops: tuple[str, ...], raw: str, base: str) -> None:
    """Refuse before any lookup when the path, as written, is denied for every op."""
    if not ops:
        return
    lexical = os.path.normpath(raw if raw.startswith("/") else base.rstrip("/") + "/" + raw)
    if lexical.startswith("//"):
        lexical = lexical[1:]
    if env.ns.repo_path(lexical) is None:
        return
    first = 0
    for op in ops:
        err = env.check(call, op, lexical)
        if not err:
            return
        first = first or err
    raise OSError(first, "denied by policy")


def locate(
    call: Call,
    env: Env,
    dirfd: int,
    addr: int,
    *,
    follow: bool,
    empty_ok: bool = False,
    ops: tuple[str, ...] | None = None,
    host_op: str | None = None,
    final: Final = Final.LOOKUP,
    confine: int = 0,
) -> Loc:
    """Resolve the guest path at ``addr`` relative to ``dirfd`` (raises OSError).

    ``ops`` (default: :data:`PRE_OPS` of the syscall) are checked on the path
    as written before anything is looked up; the handler checks the resolved
    path again once it knows what it is. A host location is checked here, once,
    for ``host_op`` (default: :data:`HOST_OPS` of the syscall) on its real path.
    ``final``: see :class:`~interposer.namespace.Final` (ENTRY: call
    :func:`_looked_up` where the kernel looks the final name up).
    ``confine``: openat2's RESOLVE_* confinement flags (:func:`_confined_walk`).
    """
    loc = _locate(
        call,
        env,
        dirfd,
        addr,
        follow=follow,
        empty_ok=empty_ok,
        ops=ops,
        final=final,
        confine=confine,
    )
    if not loc.synthetic:
        host_check(call, env, host_op or HOST_OPS.get(call.name, "write"), loc)
    return loc


def _locate(
    call: Call,
    env: Env,
    dirfd: int,
    addr: int,
    *,
    follow: bool,
    empty_ok: bool,
    ops: tuple[str, ...] | None,
    final: Final = Final.LOOKUP,
    confine: int = 0,
) -> Loc:
    raw = call.guest.read_path(addr)
    if not raw:
        if not empty_ok:
            raise OSError(errno.ENOENT, "empty path")
        loc = fd_loc(call, env, dirfd)
        if loc is None:
            raise OSError(errno.EBADF, "bad fd")
        return loc
    in_root = confine & abi.RESOLVE_IN_ROOT
    if raw.startswith("/") and not in_root:
        if (
            not confine
            and _CLEAN_ABS.match(raw)
            and not env.ns.covers(raw)
            and not raw.startswith(("/proc", "/dev/std", "/dev/fd"))
        ):
            # The common case: a normalised absolute host path (no '.', '..', '//').
            return _host_loc(call, env, raw, follow, False)
        base = "/"
    else:
        base = _base_dir(call, env, dirfd)
    host_start = not env.ns.covers(base) or (raw.startswith("/") and not in_root)
    if confine and host_start:
        # (an IN_ROOT walk reaches /data only from a root above the mount)
        above = env.ns.mount.startswith(base.rstrip("/") + "/")
        real = _confined_walk(call, dirfd, raw, confine, follow, above)
        if real is not None and not env.ns.covers(real):
            return _host_loc(call, env, real, False, raw.endswith("/"))
    if not in_root:  # an IN_ROOT path names another place than its text: checked resolved
        precheck(call, env, PRE_OPS.get(call.name, ()) if ops is None else ops, raw, base)
    last = last_name(raw)
    if not in_root and (
        raw.startswith(("/proc/", "/dev/"))
        or base.startswith(("/proc/", "/dev/"))
        or raw
        in (
            "/proc",
            "/proc/",
        )
    ):
        raw = _proc_self(raw if raw.startswith("/") else base.rstrip("/") + "/" + raw, call)
        base = "/"
    target = env.ns.resolve(
        raw,
        base,
        follow=follow,
        lstat=env.repo.lstat,
        readlink=env.repo.readlink,
        host_realpath=lambda p: env.host.realpath(p, True, _whose(call)),
        final=final,
        confine=confine,
    )
    if target.synthetic:
        return Loc(
            guest=env.ns.guest_path(target.path),
            repo=target.path,
            attrs=target.attrs,
            must_be_dir=target.must_be_dir,
            last=last,
        )
    if confine & _NO_LINKS and not host_start:
        # A walk from /data that left it ('..'): the host part is the kernel's to judge.
        _confined_walk(call, AT_FDCWD, target.path, confine & _NO_LINKS, follow, False)
    return _via(_host_loc(call, env, target.path, follow, target.must_be_dir), target)


#: openat2's confinement flags (RESOLVE_CACHED is not one: the kernel may answer EAGAIN).
_CONFINE = (
    abi.RESOLVE_BENEATH
    | abi.RESOLVE_IN_ROOT
    | abi.RESOLVE_NO_SYMLINKS
    | abi.RESOLVE_NO_MAGICLINKS
    | abi.RESOLVE_NO_XDEV
)
#: Paths that start with a symlink into /proc/self (a RESOLVE_NO_SYMLINKS walk fails there).
_SELF_LINKS = ("/proc/self", "/proc/thread-self", *_DEV_SELF)


def _confined_walk(
    call: Call, dirfd: int, raw: str, confine: int, follow: bool, reaches_mount: bool
) -> str | None:
    """The kernel's own walk of a guest path under openat2 confinement, on the host.

    The supervisor resolves paths itself, so the kernel never sees the guest's
    RESOLVE_* flags: this walk, an ``O_PATH`` open in the supervisor from the
    guest's own dirfd (``/proc/PID/fd/N``, ``/proc/PID/cwd``) with the guest's
    flags, gives the kernel's verdict. EXDEV and ELOOP (a confinement refusal)
    are raised; other errors are left to the ordinary resolution. For
    RESOLVE_IN_ROOT the path names another place than its text, so the real
    path this walk reached is returned (its parent's, plus the new name, when
    the name does not exist yet), and its failure is the answer unless the
    walk could have entered the mount (``reaches_mount``: the root is above
    it; the host has no /data to walk); None otherwise.
    """
    if confine & abi.RESOLVE_BENEATH and raw.startswith("/"):
        raise OSError(errno.EXDEV, "absolute path beneath a directory")
    if confine & abi.RESOLVE_NO_SYMLINKS and any(
        raw == p or raw.startswith(p + "/") for p in _SELF_LINKS
    ):
        raise OSError(errno.ELOOP, "a symlink on a RESOLVE_NO_SYMLINKS walk")
    in_root = confine & abi.RESOLVE_IN_ROOT
    # (under IN_ROOT an absolute path starts at the dirfd: /proc/self is not the proc's)
    text = _proc_self(raw, call) if raw.startswith(("/proc/", "/dev/")) and not in_root else raw
    tgid = call.guest.tgid
    base = -1
    if not raw.startswith("/") or in_root:
        where = f"/proc/{tgid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tgid}/fd/{dirfd}"
        try:
            base = os.open(where, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None  # the ordinary resolution reports the bad dirfd
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    dfd = base if base >= 0 else AT_FDCWD
    try:
        try:
            fd = abi.host_openat2(text, flags, confine & _CONFINE, dfd)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP):
                raise OSError(exc.errno, "refused by the guest's RESOLVE_* flags") from None
            if not in_root:
                return None
            head, _, name = text.rstrip("/").rpartition("/")
            if exc.errno == errno.ENOENT and name not in ("", ".", ".."):
                # a name to create, perhaps: where its directory is
                try:
                    fd = abi.host_openat2(head or ".", os.O_PATH | os.O_CLOEXEC, confine, dfd)
                except OSError as exc2:
                    if exc2.errno in (errno.EXDEV, errno.ELOOP):
                        raise OSError(exc2.errno, "refused by RESOLVE_* flags") from None
                else:
                    try:
                        parent = os.readlink(f"/proc/self/fd/{fd}")
                        os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        return parent.rstrip("/") + "/" + name  # a new name there
                    except OSError:
                        pass
                    finally:
                        os.close(fd)
                    # (a symlink dangling inside the root: ENOENT, not created through)
            if reaches_mount:
                return None
            raise OSError(exc.errno, "the guest's IN_ROOT walk fails") from None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return real if in_root and real.startswith("/") else None
    finally:
        if base >= 0:
            os.close(base)


def _base_dir(call: Call, env: Env, dirfd: int) -> str:
    """The absolute guest path a relative path starts from (raises OSError as the kernel).

    A synthetic directory the sandbox knows as one is taken without a lookup: only
    its kind matters here (a create in it forgets its attributes, and looking them
    up again cost a round trip per file), and a removal by another client shows in
    the lookup of the name below it (ENOENT), as it would natively.
    """
    target = None
    if dirfd == AT_FDCWD:
        known = call.proc.fs.cwd
    else:
        target = call.guest.fd_target(dirfd)
        handle = env.host.dir_handle(target) if target is not None else None
        known = env.ns.guest_path(handle.repo_path) if handle is not None else None
    if known is not None:
        repo = env.ns.repo_path(known)
        if repo is not None and env.repo.known_dir(repo):
            return known
    base_loc = fd_loc(call, env, dirfd, target)
    if base_loc is None:
        raise OSError(errno.EBADF, "bad dirfd")
    if base_loc.synthetic:
        if base_loc.attrs is None:
            raise OSError(errno.ENOENT, "directory vanished")
        if base_loc.attrs.kind is not FileKind.DIR:
            raise OSError(errno.ENOTDIR, "dirfd is not a directory")
    elif not base_loc.guest.startswith("/"):
        raise OSError(errno.ENOTDIR, "dirfd is not a directory")
    return base_loc.guest


_CLEAN_ABS = re.compile(r"^(?:/(?!\.\.?(?:/|$))[^/]+)+$")
_PROC_FD = re.compile(r"^/proc/(\d+)(?:/task/\d+)?/fd/(\d+)(/.*)?$")


def _host_loc(call: Call, env: Env, path: str, follow: bool, must_be_dir: bool) -> Loc:
    # /proc/PID/fd/N[/rest] of the guest's own fd on a synthetic object.
    m = _PROC_FD.match(path)
    if m and int(m.group(1)) == call.guest.tgid and (m.group(3) or follow):
        loc = fd_loc(call, env, int(m.group(2)))
        if loc is not None and loc.synthetic:
            return locate_guest_path(call, env, loc.guest + (m.group(3) or ""), follow)
    # Synthetic cwd seen through /proc: /proc/PID/cwd of a process whose cwd is on /data.
    cwd_link = f"/proc/{call.guest.tgid}/cwd"
    if call.proc.fs.cwd is not None and (path == cwd_link or path.startswith(cwd_link + "/")):
        if path == cwd_link and not follow:
            return Loc(guest=path, host=path, real=path)
        rest = path[len(cwd_link) :]
        return locate_guest_path(call, env, call.proc.fs.cwd + rest, follow)
    real = env.host.realpath(path, follow, _whose(call))
    if env.ns.covers(real):
        # A host symlink into the synthetic mount (/tmp/l -> /data/x).
        return locate_guest_path(call, env, real, follow)
    if env.host.refused(real):
        raise Refused(errno.EACCES, "refused path")
    handle = env.host.dir_handle(real)
    if handle is not None:
        return _synthetic_loc(env, env.ns.guest_path(handle.repo_path))
    repo = env.repo.repo_path_of(real.removesuffix(" (deleted)"))
    if repo is not None:
        return _synthetic_loc(env, env.ns.guest_path(repo))
    if not real.startswith("/") or real.endswith(" (deleted)") or real.startswith("/memfd:"):
        # A magic link to something that is not a path (pipe, socket, deleted file):
        # only the kernel can follow it, and only when the path names the magic link
        # itself (/proc/PID/fd/N): through any other symlink, the supervisor's
        # resolution and the guest's could name different objects.
        if not _PROC_FD.match(path) or m is None:
            raise Refused(errno.EACCES, "a magic link reached through another symlink")
        return Loc(guest=path, host=path, real=_decidable(real), magic=True, link=real)
    return Loc(guest=real, host=real, must_be_dir=must_be_dir, real=real)


def locate_guest_path(call: Call, env: Env, path: str, follow: bool) -> Loc:
    target = env.ns.resolve(
        path, "/", follow=follow, lstat=env.repo.lstat, readlink=env.repo.readlink
    )
    if target.synthetic:
        return Loc(guest=env.ns.guest_path(target.path), repo=target.path, attrs=target.attrs)
    global _hops
    if _hops >= MAX_SYMLINKS:  # a repository link and a host link naming each other
        raise OSError(errno.ELOOP, "too many levels of symbolic links")
    _hops += 1
    try:
        return _via(_host_loc(call, env, target.path, follow, target.must_be_dir), target)
    finally:
        _hops -= 1


#: host <-> /data hops of the lookup under way (the supervisor handles one call at a time)
_hops = 0


def _via(loc: Loc, target: Target) -> Loc:
    """``loc`` reached through the repository symlink ``target.via`` names (audited)."""
    return evolve(loc, via=target.via) if target.via and not loc.synthetic else loc


def _deny(call: Call, env: Env, op: str, loc: Loc) -> int:
    return env.check(call, op, loc.guest)


def guarded(fn: Callable[[Call, Env], Result]) -> Handler:
    """Turn OSError raised while locating into the guest's errno."""

    def run(call: Call, env: Env) -> Result:
        try:
            return fn(call, env)
        except OSError as exc:
            return Fail(exc.errno or errno.EIO)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    HANDLERS[fn.__name__] = run
    return run


# -- synthetic attributes ----------------------------------------------------------------------


def _live_attrs(env: Env, repo: str, attrs: Attrs) -> Attrs:
    """Attributes with size and times from the local copy when a guest wrote it.

    Not for a file of several names: another name's upload changes it without this
    sandbox knowing, and the agent's answer (never cached here) is the fresh one,
    with its own dirty copy's size and times."""
    if attrs.kind is not FileKind.FILE or attrs.nlink > 1:
        return attrs
    s = env.repo.written_copy(repo)
    if s is None:
        return attrs
    return Attrs(
        kind=attrs.kind,
        size=s.st_size,
        mode=attrs.mode,
        mtime_ns=s.st_mtime_ns,
        ctime_ns=max(attrs.ctime_ns, s.st_ctime_ns),
        ino=attrs.ino,
        nlink=attrs.nlink,
        version=attrs.version,
        blocks=s.st_blocks,
    )


def _looked_up(loc: Loc) -> Attrs | None:
    """The attributes of a location resolved with ``Final.ENTRY``, now that the kernel
    would look its final name up: a name longer than NAME_MAX fails here."""
    if loc.repo is not None and len(last_name(loc.repo)) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return loc.attrs


#: The final components that name no entry of their own (the kernel's LAST_DOT, LAST_DOTDOT).
_DOTS = (".", "..")


def _need(loc: Loc) -> Attrs:
    if loc.attrs is None:
        raise OSError(errno.ENOENT, "no such file or directory")
    if loc.must_be_dir and loc.attrs.kind is not FileKind.DIR:
        raise OSError(errno.ENOTDIR, "not a directory")
    return loc.attrs


# -- open ----------------------------------------------------------------------------------

#: The flags O_PATH keeps: open(2) drops the others, openat2(2) refuses them (EINVAL).
O_PATH_FLAGS = abi.O_PATH | abi.O_DIRECTORY | abi.O_NOFOLLOW | abi.O_CLOEXEC
#: __O_TMPFILE (the bit without O_DIRECTORY) and what must come with it.
_O_TMPFILE_BIT = abi.O_TMPFILE & ~abi.O_DIRECTORY
_O_TMPFILE_MASK = abi.O_TMPFILE | abi.O_CREAT


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
            confine=resolve & _CONFINE,
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
    how = abi.OPEN_HOW.pack(flags, kmode, (resolve & abi.RESOLVE_CACHED) | _NO_LINKS)
    return RunChecked(NR_OPENAT2, (AT_FDCWD, _cstr(loc.host), Scratch(how), len(how)))


def _open_synthetic(call: Call, env: Env, loc: Loc, flags: int, mode: int) -> Result:
    assert loc.repo is not None
    acc = flags & abi.O_ACCMODE
    writing = acc in (abi.O_WRONLY, abi.O_RDWR) or bool(flags & abi.O_TRUNC)
    if flags & abi.O_CREAT:
        if loc.must_be_dir:
            return Fail(errno.EISDIR)  # before the name is looked up
        try:
            _looked_up(loc)
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
        how = abi.OPEN_HOW.pack(kflags, 0, _NO_LINKS)
        return RunChecked(NR_OPENAT2, (AT_FDCWD, _cstr(placeholder), Scratch(how), len(how)))
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
        how = abi.OPEN_HOW.pack(kflags, 0, _NO_LINKS)
        return RunChecked(NR_OPENAT2, (AT_FDCWD, _cstr(placeholder), Scratch(how), len(how)))
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
            opened = env.repo.open(loc.repo, flags | (abi.O_EXCL if created else 0), mode & 0o7777)
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
    how = abi.OPEN_HOW.pack(kflags, 0, _NO_LINKS)

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
        NR_OPENAT2, (AT_FDCWD, _cstr(opened.host_path), Scratch(how), len(how)), after
    )


@handler
def sys_open(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, AT_FDCWD, a[0], legacy_open_flags(a[1]), a[2])


@handler
def sys_openat(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, _s32(a[0]), a[1], legacy_open_flags(a[2]), a[3])


@handler
def sys_creat(call: Call, env: Env) -> Result:
    a = call.args
    return open_at(call, env, AT_FDCWD, a[0], abi.O_CREAT | abi.O_WRONLY | abi.O_TRUNC, a[1])


@handler
def sys_openat2(call: Call, env: Env) -> Result:
    a = call.args
    size = a[3]
    if size < abi.OPEN_HOW.size:
        return Fail(errno.EINVAL)
    try:
        raw = call.guest.read(a[2], abi.OPEN_HOW.size)
    except OSError:
        return Fail(errno.EFAULT)
    flags, mode, resolve = abi.OPEN_HOW.unpack(raw)
    if flags >> 32 or mode & ~0o7777 or resolve & ~0x3F:
        return Fail(errno.EINVAL)
    if mode and not flags & (abi.O_CREAT | _O_TMPFILE_BIT):
        return Fail(errno.EINVAL)  # a mode only goes with a creating open
    if resolve & abi.RESOLVE_BENEATH and resolve & abi.RESOLVE_IN_ROOT:
        return Fail(errno.EINVAL)
    return open_at(call, env, _s32(a[0]), a[1], flags, mode, resolve)


# -- stat family --------------------------------------------------------------------------------


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


def stat_at(call: Call, env: Env, dirfd: int, addr: int, buf: int, atflags: int) -> Result:
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    try:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
        if loc.synthetic:
            assert loc.repo is not None
            attrs = _need(loc)
            denied = env.check(call, "stat", loc.guest)
            if denied:
                return Fail(denied)
            data = abi.pack_stat(_live_attrs(env, loc.repo, attrs), env.uid, env.gid)
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


@handler
def sys_stat(call: Call, env: Env) -> Result:
    return stat_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


@handler
def sys_lstat(call: Call, env: Env) -> Result:
    return stat_at(call, env, AT_FDCWD, call.args[0], call.args[1], AT_SYMLINK_NOFOLLOW)


@handler
def sys_newfstatat(call: Call, env: Env) -> Result:
    a = call.args
    return stat_at(call, env, _s32(a[0]), a[1], a[2], a[3])


@handler
def sys_fstat(call: Call, env: Env) -> Result:
    loc = fd_loc(call, env, _s32(call.args[0]))
    if loc is None or not loc.synthetic:
        return CONTINUE
    assert loc.repo is not None
    if loc.attrs is None:
        return CONTINUE  # removed while open: the kernel's view of the cache file
    return Return(
        0, ((call.args[1], abi.pack_stat(_live_attrs(env, loc.repo, loc.attrs), env.uid, env.gid)),)
    )


@handler
def sys_statx(call: Call, env: Env) -> Result:
    dirfd, addr, atflags, _mask, buf = (
        _s32(call.args[0]),
        call.args[1],
        call.args[2],
        call.args[3],
        call.args[4],
    )
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    try:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
        if loc.synthetic:
            assert loc.repo is not None
            attrs = _need(loc)
            denied = env.check(call, "stat", loc.guest)
            if denied:
                return Fail(denied)
            data = abi.pack_statx(_live_attrs(env, loc.repo, attrs), env.uid, env.gid)
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
    if mode & ~7:
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
        attrs = _need(loc)
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


@handler
def sys_access(call: Call, env: Env) -> Result:
    return access_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


@handler
def sys_faccessat(call: Call, env: Env) -> Result:
    return access_at(call, env, _s32(call.args[0]), call.args[1], call.args[2], 0)


@handler
def sys_faccessat2(call: Call, env: Env) -> Result:
    a = call.args
    return access_at(call, env, _s32(a[0]), a[1], a[2], a[3])


def readlink_at(call: Call, env: Env, dirfd: int, addr: int, buf: int, size: int) -> Result:
    size = _s32(size)
    if size <= 0:
        return Fail(errno.EINVAL)
    try:
        raw = call.guest.read_path(addr)
        text = _proc_link(call, env, raw, dirfd)
        if text is None:
            loc = locate(call, env, dirfd, addr, follow=False, empty_ok=True)
            if loc.synthetic:
                attrs = _need(loc)
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
    path = _proc_self(raw, call)
    own = f"/proc/{call.guest.tgid}"
    if path == own + "/cwd" and call.proc.fs.cwd is not None:
        return call.proc.fs.cwd
    if path == own + "/exe" and call.proc.exe and env.ns.repo_path(call.proc.exe) is not None:
        return call.proc.exe
    return None


@handler
def sys_readlink(call: Call, env: Env) -> Result:
    return readlink_at(call, env, AT_FDCWD, call.args[0], call.args[1], call.args[2])


@handler
def sys_readlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return readlink_at(call, env, _s32(a[0]), a[1], a[2], a[3])


@guarded
def sys_statfs(call: Call, env: Env) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    if loc.synthetic:
        _need(loc)
        return RunChecked(NR_STATFS, (_cstr(env.host.placeholder_root()), call.args[1]))
    return run_host(env, NR_STATFS, (Pin(loc, whole=True), call.args[1]))


# -- namespace changes -------------------------------------------------------------------------


def _created(loc: Loc) -> None:
    """The checks of a new name that is not a directory (mknod, symlink, link's target)."""
    if _looked_up(loc) is not None:
        raise OSError(errno.EEXIST, "file exists")
    if loc.must_be_dir:
        # A trailing slash asks for a directory, and this call does not make one.
        raise OSError(errno.ENOENT, "no such file or directory")


def _synthetic_op(fn: Callable[[], object]) -> Result:
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
    if _looked_up(loc) is not None:
        return Fail(errno.EEXIST)  # whatever it is, with or without a trailing slash
    denied = env.check(call, "create", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return _synthetic_op(lambda: env.repo.mkdir(repo, (mode & 0o7777) & ~call.guest.umask()))


@guarded
def sys_mkdir(call: Call, env: Env) -> Result:
    return mkdir_at(call, env, AT_FDCWD, call.args[0], call.args[1])


@guarded
def sys_mkdirat(call: Call, env: Env) -> Result:
    a = call.args
    return mkdir_at(call, env, _s32(a[0]), a[1], a[2])


def unlink_at(call: Call, env: Env, dirfd: int, addr: int, atflags: int) -> Result:
    if atflags & ~AT_REMOVEDIR:
        return Fail(errno.EINVAL)
    directory = bool(atflags & AT_REMOVEDIR)
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_UNLINKAT, (AT_FDCWD, Pin(loc), atflags))
    assert loc.repo is not None
    if loc.last in _DOTS:
        if not directory:
            return Fail(errno.EISDIR)
        return Fail(errno.EINVAL if loc.last == "." else errno.ENOTEMPTY)
    _looked_up(loc)
    if loc.repo == "/":
        return Fail(errno.EBUSY)
    attrs = _need(loc)
    if directory and attrs.kind is not FileKind.DIR:
        return Fail(errno.ENOTDIR)
    if not directory and attrs.kind is FileKind.DIR:
        return Fail(errno.EISDIR)
    denied = env.check(call, "delete", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return _synthetic_op(lambda: env.repo.remove(repo, directory))


@guarded
def sys_unlink(call: Call, env: Env) -> Result:
    return unlink_at(call, env, AT_FDCWD, call.args[0], 0)


@guarded
def sys_rmdir(call: Call, env: Env) -> Result:
    return unlink_at(call, env, AT_FDCWD, call.args[0], AT_REMOVEDIR)


@guarded
def sys_unlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return unlink_at(call, env, _s32(a[0]), a[1], a[2])


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
    if src.last in _DOTS:
        return Fail(errno.EBUSY)
    if dst.last in _DOTS:
        return Fail(errno.EEXIST if flags & 1 else errno.EBUSY)
    sattrs = _looked_up(src)
    if sattrs is None:
        return Fail(errno.ENOENT)
    dattrs = _looked_up(dst)
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
    return _synthetic_op(lambda: env.repo.rename(s, d, RenameFlags(flags & 3)))


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
    return rename_at(call, env, _s32(a[0]), a[1], _s32(a[2]), a[3], 0)


@guarded
def sys_renameat2(call: Call, env: Env) -> Result:
    a = call.args
    return rename_at(call, env, _s32(a[0]), a[1], _s32(a[2]), a[3], a[4] & 0xFFFFFFFF)


def link_at(
    call: Call, env: Env, olddirfd: int, oldaddr: int, newdirfd: int, newaddr: int, flags: int
) -> Result:
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
        sattrs = _need(src)
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
        return _synthetic_op(lambda: env.repo.link(s, d))
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
    return link_at(call, env, _s32(a[0]), a[1], _s32(a[2]), a[3], a[4])


def symlink_at(call: Call, env: Env, target_addr: int, dirfd: int, addr: int) -> Result:
    target = call.guest.read_path(target_addr)
    if not target:
        return Fail(errno.ENOENT)
    loc = locate(call, env, dirfd, addr, follow=False, final=Final.ENTRY)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_SYMLINKAT, (_cstr(target), AT_FDCWD, Pin(loc)))
    assert loc.repo is not None
    _created(loc)
    denied = env.check(call, "create", loc.guest)
    if denied:
        return Fail(denied)
    repo = loc.repo
    return _synthetic_op(lambda: env.repo.symlink(target, repo))


@guarded
def sys_symlink(call: Call, env: Env) -> Result:
    return symlink_at(call, env, call.args[0], AT_FDCWD, call.args[1])


@guarded
def sys_symlinkat(call: Call, env: Env) -> Result:
    a = call.args
    return symlink_at(call, env, a[0], _s32(a[1]), a[2])


def mknod_at(call: Call, env: Env, dirfd: int, addr: int, mode: int, dev: int) -> Result:
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
    return _synthetic_op(
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
    return mknod_at(call, env, _s32(a[0]), a[1], a[2], a[3])


# -- attributes changes ------------------------------------------------------------------------


def chmod_at(call: Call, env: Env, dirfd: int, addr: int, mode: int, atflags: int) -> Result:
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, NR_FCHMODAT, (AT_FDCWD, Pin(loc, whole=follow), mode))
    attrs = _need(loc)
    if attrs.kind is FileKind.SYMLINK:
        return Fail(errno.EOPNOTSUPP)
    denied = env.check(call, "chmod", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    return _synthetic_op(lambda: env.repo.setattr(repo, mode=mode & 0o7777))


@guarded
def sys_chmod(call: Call, env: Env) -> Result:
    return chmod_at(call, env, AT_FDCWD, call.args[0], call.args[1], 0)


@guarded
def sys_fchmodat(call: Call, env: Env) -> Result:
    a = call.args
    return chmod_at(call, env, _s32(a[0]), a[1], a[2], 0)


@guarded
def sys_fchmodat2(call: Call, env: Env) -> Result:
    a = call.args
    return chmod_at(call, env, _s32(a[0]), a[1], a[2], a[3])


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
    loc = fd_loc(call, env, _s32(call.args[0]))
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        mode = call.args[1]
        return host_fd_op(
            call, env, loc, lambda fd: run_host(env, NR_FCHMODAT, (AT_FDCWD, Pin(fd, True), mode))
        )
    attrs = _need(loc)
    denied = env.check(call, "chmod", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    del attrs
    return _synthetic_op(lambda: env.repo.setattr(repo, mode=call.args[1] & 0o7777))


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
    _need(loc)
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
    return chown_at(call, env, _s32(a[0]), a[1], a[2], a[3], a[4])


@guarded
def sys_fchown(call: Call, env: Env) -> Result:
    a = call.args
    loc = fd_loc(call, env, _s32(a[0]))
    if loc is None:
        return CONTINUE
    if not loc.synthetic:
        return host_fd_op(
            call,
            env,
            loc,
            lambda fd: run_host(env, NR_FCHOWNAT, (AT_FDCWD, Pin(fd, True), a[1], a[2], 0)),
        )
    _need(loc)
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
    attrs = _need(loc)
    if attrs.kind is FileKind.DIR:
        return Fail(errno.EISDIR)
    denied = env.check(call, "write", loc.guest)
    if denied:
        return Fail(denied)
    assert loc.repo is not None
    repo = loc.repo
    return _synthetic_op(lambda: env.repo.setattr(repo, size=length))


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _now_ns() -> int:
    import time

    return time.time_ns()


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
    follow = not atflags & AT_SYMLINK_NOFOLLOW
    if addr == 0:
        loc = fd_loc(call, env, dirfd)
        if loc is None:
            return Fail(errno.EBADF)
        if not loc.synthetic:
            if atflags:
                return Fail(errno.EINVAL)  # as the kernel says for a NULL path with flags
            return host_fd_op(call, env, loc, raw)
    else:
        loc = locate(call, env, dirfd, addr, follow=follow, empty_ok=bool(atflags & AT_EMPTY_PATH))
    if not loc.synthetic:
        return raw(loc)
    _need(loc)
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
            values.append(sec * 1_000_000_000 + nsec)
    assert loc.repo is not None
    repo = loc.repo
    if values[0] is None and values[1] is None:
        return Return(0)
    return _synthetic_op(lambda: env.repo.setattr(repo, atime_ns=values[0], mtime_ns=values[1]))


def _read_times(call: Call, addr: int, usec: bool) -> list[tuple[int, int]] | None:
    if addr == 0:
        return None
    import struct

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
    dirfd, addr, tptr, flags = _s32(a[0]), a[1], a[2], a[3]
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
    return _utimes(call, env, _s32(call.args[0]), call.args[1], call.args[2])


@guarded
def sys_utime(call: Call, env: Env) -> Result:
    import struct

    tptr = call.args[1]
    times = None
    if tptr:
        actime, modtime = struct.unpack("<qq", call.guest.read(tptr, 16))
        times = [(actime, 0), (modtime, 0)]
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    if not loc.synthetic:
        assert loc.host is not None
        return run_host(env, BY_NAME["utime"].nr, (Pin(loc, whole=True), tptr))
    return utimens_at(call, env, AT_FDCWD, call.args[0], times, 0, raw=lambda _l: Fail(errno.EIO))


# -- extended attributes -----------------------------------------------------------------------


def _xattr(call: Call, env: Env, follow: bool, synthetic_result: Result) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=follow)
    if not loc.synthetic:
        assert loc.host is not None
        args: list[int | Scratch | Pin] = list(call.args)
        args[0] = Pin(loc, whole=follow)
        return run_host(env, call.nr, tuple(args))
    _need(loc)
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
    loc = fd_loc(call, env, _s32(call.args[0]))
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
    loc = locate(call, env, _s32(a[0]), a[1], follow=follow, empty_ok=bool(a[at] & AT_EMPTY_PATH))
    if loc.synthetic:
        return Fail(errno.ENOTSUP)
    args: list[int | Scratch | Pin] = list(a)
    args[0], args[1] = AT_FDCWD, Pin(loc, whole=follow)
    args[at] = a[at] & ~AT_EMPTY_PATH
    return run_host(env, call.nr, tuple(args))


# -- cwd and exec ----------------------------------------------------------------------------


@guarded
def sys_chdir(call: Call, env: Env) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    return _chdir(call, env, loc)


def _chdir(call: Call, env: Env, loc: Loc) -> Result:
    if loc.synthetic:
        attrs = _need(loc)
        if attrs.kind is not FileKind.DIR:
            return Fail(errno.ENOTDIR)
        denied = env.check(call, "list", loc.guest)
        if denied:
            return Fail(denied)
        call.proc.fs.cwd = loc.guest
        call.proc.synthetic = True
        return Return(0)
    assert loc.host is not None
    fs = call.proc.fs

    def after(ret: int) -> None:
        if ret == 0:
            fs.cwd = None

    return RunChecked(NR_CHDIR, (_cstr(loc.host),), after)


@guarded
def sys_fchdir(call: Call, env: Env) -> Result:
    loc = fd_loc(call, env, _s32(call.args[0]))
    if loc is None:
        return Fail(errno.EBADF)
    if loc.synthetic:
        return _chdir(call, env, loc)
    fs = call.proc.fs
    if fs.cwd is None:
        return CONTINUE

    def after(ret: int) -> None:
        if ret == 0:
            fs.cwd = None

    return RunChecked(call.nr, call.args, after)


@handler
def sys_getcwd(call: Call, env: Env) -> Result:
    cwd = call.proc.fs.cwd
    if cwd is None:
        return CONTINUE
    data = os.fsencode(cwd) + b"\0"
    size = call.args[1]
    if size < len(data):
        return Fail(errno.ERANGE)
    return Return(len(data), ((call.args[0], data),))


def exec_at(
    call: Call, env: Env, dirfd: int, addr: int, argv: int, envp: int, flags: int
) -> Result:
    loc = locate(
        call,
        env,
        dirfd,
        addr,
        follow=not flags & AT_SYMLINK_NOFOLLOW,
        empty_ok=bool(flags & AT_EMPTY_PATH),
    )
    if loc.synthetic:
        attrs = _need(loc)
        if attrs.kind is FileKind.SYMLINK:
            return Fail(errno.ELOOP)  # AT_SYMLINK_NOFOLLOW on a symlink
        if attrs.kind is not FileKind.FILE or not attrs.mode & 0o111:
            return Fail(errno.EACCES)
        denied = env.check(call, "read", loc.guest)
        if denied:
            return Fail(denied)
        return _exec_synthetic(call, env, loc, _exec_filename(call, dirfd, addr), argv, envp)
    else:
        if call.guest.read_path(addr) == "" and flags & AT_EMPTY_PATH:
            # fexecve: the fd was opened (and checked) already
            _expect_exec(call, env, f"/proc/{call.guest.tgid}/fd/{dirfd}", True)
            return CONTINUE
        assert loc.host is not None
        path = loc.host
        _expect_exec(call, env, path, loc.via_fd or loc.magic or loc.real != loc.host)
    return RunChecked(NR_EXECVEAT, (AT_FDCWD, _cstr(path), argv, envp, flags & ~AT_EMPTY_PATH))


def _exec_filename(call: Call, dirfd: int, addr: int) -> str:
    """The name the kernel gives an exec'd file (bprm->filename): a script's interpreter
    gets it as its script argument, so it must be the guest's, never a cache path."""
    raw = call.guest.read_path(addr)
    if raw.startswith("/") or dirfd == AT_FDCWD:
        return raw
    return f"/dev/fd/{dirfd}" + (f"/{raw}" if raw else "")


def _fd_cloexec(call: Call, fd: int) -> bool:
    try:
        with open(f"/proc/{call.guest.tgid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except (OSError, ValueError):
        pass
    return False


def _exec_synthetic(
    call: Call, env: Env, loc: Loc, filename: str, argv: int, envp: int
) -> Result:
    """Run a checked file on /data: an ELF as is, a ``#!`` script as the kernel would.

    The kernel would run a script's interpreter with the *cache copy's* path as
    its script, which the interpreter cannot open (the sandbox refuses the
    cache) and which would leak into ``$0``. So the supervisor does
    binfmt_script's work itself (PRoot does the same): it reads the line from
    the checked copy (:func:`binfmt.parse`), follows interpreters on /data (each
    checked like an exec: a regular file with an exec bit, the policy's
    ``read``), and execs the first interpreter on the host, or an ELF on /data,
    with ``[interp, arg?, filename, argv[1:]...]``. The kernel is given a file
    the supervisor holds open (``/proc/SUPERVISOR/fd/N``: the object checked
    and read, and no cache path in ``AT_EXECFN``) or, for a host interpreter,
    its checked real path (pinned as any exec). The new argv array and the
    strings the supervisor adds live in the read-only scratch slot; the
    caller's own ``argv[1:]`` strings are the caller's, as natively.
    """
    held: list[int] = []
    try:
        return _exec_chain(call, env, loc, filename, argv, envp, held)
    except BaseException:
        _release(held)
        raise


def _exec_chain(
    call: Call, env: Env, loc: Loc, filename: str, argv: int, envp: int, held: list[int]
) -> Result:
    head: list[bytes] | None = None  # the new argv's start (None: the caller's argv as is)
    name = os.fsencode(filename)
    scripts = 0
    while True:
        assert loc.repo is not None
        fd = os.open(env.repo.open(loc.repo, 0, 0).host_path, os.O_RDONLY | os.O_CLOEXEC)
        held.append(fd)
        line = binfmt.parse(os.pread(fd, binfmt.BUF_SIZE, 0))
        if line is None:  # not a script: the kernel decides (ELF, or ENOEXEC)
            path = f"/proc/{os.getpid()}/fd/{fd}"
            _expect_exec(call, env, path, True)
            break
        if scripts == 0 and filename.startswith("/dev/fd/") and _fd_cloexec(
            call, int(filename.split("/")[3])
        ):
            raise OSError(errno.ENOENT, "the script's fd closes at exec")  # as the kernel
        scripts += 1
        if scripts >= binfmt.MAX_SCRIPTS:
            raise OSError(errno.ELOOP, "too many nested #! interpreters")
        interp, arg = line
        head = binfmt.rewrite_argv(head or [b""], name, interp, arg)
        name = interp
        loc = _interpreter(call, env, os.fsdecode(interp))
        if not loc.synthetic:
            assert loc.host is not None
            host_check(call, env, "read", loc)
            if scripts + _host_scripts(loc.host, call.guest.host_cwd()) >= binfmt.MAX_SCRIPTS:
                raise OSError(errno.ELOOP, "too many nested #! interpreters")
            path = loc.host
            _expect_exec(call, env, path, loc.via_fd or loc.magic or loc.real != loc.host)
            break
        attrs = _need(loc)
        if attrs.kind is not FileKind.FILE or not attrs.mode & 0o111:
            raise OSError(errno.EACCES, "the interpreter is not an executable file")
        denied = env.check(call, "read", loc.guest)
        if denied:
            raise OSError(denied, "denied by policy")
    new_argv: int | Scratch = argv if head is None else _argv_scratch(call, head, argv, path)
    # Only a file the kernel is given must stay open (the scripts were read already).
    kept = [fd for fd in held if path == f"/proc/{os.getpid()}/fd/{fd}"]
    _release([fd for fd in held if fd not in kept])
    held[:] = kept
    if not held:
        return RunChecked(NR_EXECVEAT, (AT_FDCWD, _cstr(path), new_argv, envp, 0))
    proc = call.proc
    proc.exec_fds = [*(proc.exec_fds or ()), *held]

    def after(ret: int) -> None:
        # The exec failed (a successful one closes them at its exec stop).
        proc.exec_fds = [fd for fd in proc.exec_fds or () if fd not in held] or None
        _release(held)

    return RunChecked(NR_EXECVEAT, (AT_FDCWD, _cstr(path), new_argv, envp, 0), after)


def _release(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _interpreter(call: Call, env: Env, name: str) -> Loc:
    """Where a ``#!`` line's interpreter leads: opened by the kernel as by open(2), so
    a relative name is from the cwd, and symlinks are followed."""
    if not name.startswith("/"):
        name = _base_dir(call, env, AT_FDCWD).rstrip("/") + "/" + name
    return locate_guest_path(call, env, name, True)


def _host_scripts(path: str, cwd: str) -> int:
    """How many ``#!`` scripts the kernel will go through from the host file ``path``
    (to apply its nesting limit to the whole chain); errors are the kernel's to give."""
    count = 0
    while count < binfmt.MAX_SCRIPTS:
        try:
            with open(path, "rb") as f:
                line = binfmt.parse(f.read(binfmt.BUF_SIZE))
        except OSError:
            return count
        if line is None:
            return count
        count += 1
        path = os.path.join(cwd, os.fsdecode(line[0]))
    return count


#: The scratch slot a RunChecked gets (supervisor.SLOT_SIZE): a rewritten exec's argv
#: array, the strings the supervisor adds and the path must fit in it (about 1,500
#: arguments); more gets E2BIG (natively ARG_MAX decides).
EXEC_SCRATCH = 3 * 4096


def _argv_scratch(call: Call, head: list[bytes], argv: int, path: str) -> Scratch:
    """The rewritten argv: ``head``'s strings (checked copies in the scratch slot), then
    the caller's ``argv[1:]`` (pointers to its own strings)."""
    used = sum(len(s) + 8 & ~7 for s in (*head, os.fsencode(path))) + 8 * (len(head) + 1)
    tail: list[int] = []
    if argv:
        i = 1
        while True:
            ptr = int.from_bytes(call.guest.read(argv + 8 * i, 8), "little")
            if not ptr:
                break
            tail.append(ptr)
            i += 1
            if used + 8 * len(tail) > EXEC_SCRATCH:
                raise OSError(errno.E2BIG, "too many arguments for a rewritten exec")
    array = bytearray(8 * (len(head) + len(tail) + 1))
    for i, ptr in enumerate(tail):
        array[8 * (len(head) + i) : 8 * (len(head) + i + 1)] = ptr.to_bytes(8, "little")
    links = tuple((8 * i, Scratch(s + b"\0")) for i, s in enumerate(head))
    return Scratch(bytes(array), links)


def _expect_exec(call: Call, env: Env, path: str, via: bool) -> None:
    """Remember the object a checked execve will run (docs/policy.md, exec).

    The kernel walks ``path`` again: a directory swapped for a symlink after
    the check would run a program from a place the ``[host]`` rules deny. So
    the supervisor pins the checked file (``RESOLVE_NO_SYMLINKS``: a swap
    already made fails with ELOOP) and notes its ``(st_dev, st_ino)`` (for a
    script, its interpreter's); at the exec stop, before the new image runs an
    instruction, the mapped executable must be one of the noted objects, or
    the process is killed. The kernel gets the checked path as text, so
    ``/proc/self/exe``, ``comm``, ``AT_EXECFN`` and a script's name stay native.
    ``via``: ``path`` is a magic link (an fd, ``/proc/PID/exe``) to open as is.
    With or without ``[host]`` rules: with none, the swap could still run a
    program from the agent's cache (a copy of a /data file the policy denies).
    """
    if via:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # the object, not a walk
        pinned: tuple[str, int] | None = ("", fd)
    else:
        pinned = env.pin(path, True)  # raises ELOOP when a symlink is in the way now
    if pinned is None:
        return
    try:
        obj = abi.executed_object(pinned[1], f"/proc/{call.guest.tgid}/cwd")
    finally:
        env.unpin(pinned[1])
    if call.proc.exec_checked is None:
        call.proc.exec_checked = set()
    if obj is not None:
        call.proc.exec_checked.add(obj)


@guarded
def sys_execve(call: Call, env: Env) -> Result:
    a = call.args
    return exec_at(call, env, AT_FDCWD, a[0], a[1], a[2], 0)


@guarded
def sys_execveat(call: Call, env: Env) -> Result:
    a = call.args
    return exec_at(call, env, _s32(a[0]), a[1], a[2], a[3], a[4])


# -- fds that may be synthetic ----------------------------------------------------------------


def _getdents(call: Call, env: Env, legacy: bool) -> Result:
    fd, buf, size = _s32(call.args[0]), call.args[1], call.args[2] & 0xFFFFFFFF
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


@handler
def sys_lseek(call: Call, env: Env) -> Result:
    target = call.guest.fd_target(_s32(call.args[0]))
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


def _commit_fd(call: Call, env: Env, fd: int) -> int:
    """Upload fd's local copy if it is one open for writing; 0 or an errno."""
    target = call.guest.fd_target(fd)
    if target is None:
        return 0
    repo = env.repo.repo_path_of(target)
    if repo is None or not call.guest.fd_writable(fd):
        return 0
    try:
        env.repo.commit(repo)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


@handler
def sys_close(call: Call, env: Env) -> Result:
    if not call.proc.wrote:
        return CONTINUE
    err = _commit_fd(call, env, _s32(call.args[0]))
    if not err:
        return CONTINUE

    def after(ret: int) -> Fail | None:
        return Fail(err) if ret == 0 else None

    return RunChecked(call.nr, call.args, after)


@handler
def sys_close_range(call: Call, env: Env) -> Result:
    if not call.proc.wrote:
        return CONTINUE
    first, last = call.args[0] & 0xFFFFFFFF, call.args[1] & 0xFFFFFFFF
    for fd in call.guest.open_fds():
        if first <= fd <= last:
            _commit_fd(call, env, fd)
    return CONTINUE


@handler
def sys_fsync(call: Call, env: Env) -> Result:
    if not call.proc.wrote:
        return CONTINUE
    err = _commit_fd(call, env, _s32(call.args[0]))
    return Fail(err) if err else CONTINUE


@handler
def sys_sync(call: Call, env: Env) -> Result:
    with contextlib.suppress(OSError):  # sync(2) cannot fail
        env.repo.sync()
    return CONTINUE


@guarded
def sys_inotify_add_watch(call: Call, env: Env) -> Result:
    follow = not call.args[2] & IN_DONT_FOLLOW
    loc = locate(call, env, AT_FDCWD, call.args[1], follow=follow)
    if loc.synthetic:
        _need(loc)
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
        _s32(a[0]),
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


# -- sockets -------------------------------------------------------------------------------------
#
# Two policies meet here. AF_UNIX paths are host paths: resolved by us, refused
# when private, checked by the [host] rules (connect and send: "write", as the
# kernel asks write permission on the socket inode; bind: "create"), and the
# kernel runs on the resolved path. IP families follow ``network``: "deny"
# refuses every IP socket and address, "loopback" lets through only
# 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104, "allow" everything. A checked
# address is passed to the kernel from the scratch page (our copy), so a guest
# thread cannot change it after the check.

AF_UNSPEC = 0
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NR_SENDTO = BY_NAME["sendto"].nr
NR_SENDMSG = BY_NAME["sendmsg"].nr
_LOCAL_FAMILIES = (AF_UNIX, AF_NETLINK)  # never leave the machine
_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_SUN_PATH = 108  # sizeof(sockaddr_un.sun_path)
_MSGHDR = 56  # sizeof(struct msghdr)
_V4_MAPPED = bytes(10) + b"\xff\xff"


@frozen
class SockAddr:
    """A sockaddr copied out of the guest once: its bytes, family and what it names."""

    raw: bytes
    family: int
    #: AF_UNIX: the path (None: abstract or unnamed); IP: "addr:port"
    text: str | None
    #: IP: the address stays on this machine (loopback)
    local: bool = False


def read_sockaddr(call: Call, addr: int, size: int) -> SockAddr | None:
    """The sockaddr at ``addr`` (None: no address). OSError EFAULT on a bad pointer."""
    if addr == 0 or size == 0:
        return None
    if size > _SOCKADDR_MAX:
        raise OSError(errno.EINVAL, "address too long")  # as the kernel says
    raw = call.guest.read(addr, size)
    if len(raw) < 2:
        return SockAddr(raw, -1, None)
    family = int.from_bytes(raw[:2], "little")
    if family == AF_UNIX:
        if len(raw) < 3 or raw[2] == 0:
            return SockAddr(raw, family, None)
        return SockAddr(raw, family, os.fsdecode(raw[2:].split(b"\0", 1)[0]))
    if family == AF_INET and len(raw) >= 8:
        port = int.from_bytes(raw[2:4], "big")
        ip = raw[4:8]
        return SockAddr(raw, family, f"{'.'.join(map(str, ip))}:{port}", ip[0] == 127)
    if family == AF_INET6 and len(raw) >= 24:
        import ipaddress

        port = int.from_bytes(raw[2:4], "big")
        ip6 = raw[8:24]
        local = ip6 == bytes(15) + b"\x01" or (ip6[:12] == _V4_MAPPED and ip6[12] == 127)
        return SockAddr(raw, family, f"[{ipaddress.IPv6Address(ip6)}]:{port}", local)
    return SockAddr(raw, family, None)


def net_check(call: Call, env: Env, op: str, sa: SockAddr) -> int:
    """0 when ``network`` lets ``op`` reach ``sa`` (an IP or other non-local family), else errno."""
    if sa.family in (AF_UNSPEC, *_LOCAL_FAMILIES):
        return 0
    what = sa.text or f"family {sa.family}"
    return env.check_net(call, op, what, sa.local)


def _unix_target(call: Call, env: Env, op: str, path: str) -> str:
    """The real host path of an AF_UNIX socket path, checked (raises OSError)."""
    base = call.proc.fs.cwd or call.guest.host_cwd()
    target = env.ns.resolve(
        path, base, follow=True, lstat=env.repo.lstat, readlink=env.repo.readlink
    )
    if target.synthetic:
        raise OSError(errno.ECONNREFUSED if op == "connect" else errno.EACCES, "on /data")
    real = env.host.realpath(target.path, True, _whose(call))
    if env.host.refused(real):
        raise Refused(errno.EACCES, "refused path")
    loc = Loc(guest=real, real=real, via=target.via)
    host_check(call, env, "create" if op == "bind" else "write", loc)
    return real


def _unix_sockaddr(real: str) -> bytes:
    return AF_UNIX.to_bytes(2, "little") + os.fsencode(real)[:107] + b"\0"


def _pinned_socket(env: Env, real: str) -> tuple[bytes, int | None]:
    """The sockaddr of a checked socket path, pinned on the socket itself
    (``/proc/SUPERVISOR/fd/N``: a swapped-in symlink cannot lead the kernel to the
    agent's socket), and the pin to drop after the call (None: not pinned)."""
    pinned = env.pin(real, True)
    if pinned is None:
        return _unix_sockaddr(real), None
    return _unix_sockaddr(pinned[0]), pinned[1]


def _unix_reach(
    env: Env, nr: int, real: str, args: Callable[[Scratch, int], tuple[int | Scratch, ...]]
) -> Result:
    """connect/sendto to a checked socket path: the kernel gets the pinned socket."""
    sockaddr, pin = _pinned_socket(env, real)
    if pin is None:
        return RunChecked(nr, args(Scratch(sockaddr), len(sockaddr)))

    def done(ret: int) -> None:
        env.unpin(pin)

    return RunChecked(nr, args(Scratch(sockaddr), len(sockaddr)), done)


def _sock_call(call: Call, env: Env, nr: int) -> Result:
    """connect and bind: (fd, sockaddr, addrlen)."""
    a = call.args
    op = "connect" if nr == NR_CONNECT else "bind"
    sa = read_sockaddr(call, a[1], a[2] & 0xFFFFFFFF)
    if sa is None:
        return CONTINUE
    if sa.family == AF_UNIX:
        if sa.text is None:
            return CONTINUE  # abstract or unnamed: no path
        real = _unix_target(call, env, op, sa.text)
        if nr == NR_CONNECT:
            return _unix_reach(env, nr, real, lambda sock, size: (a[0], sock, size))
        return _unix_bind(call, env, real, sa)
    if env.network is NetworkMode.ALLOW:
        return CONTINUE
    err = net_check(call, env, op, sa)
    if err:
        return Fail(err)
    return RunChecked(nr, (a[0], Scratch(sa.raw), len(sa.raw)))


def _unix_bind(call: Call, env: Env, real: str, sa: SockAddr) -> Result:
    """bind to a checked socket path: under ``[host]`` rules, in the pinned parent.

    The kernel keeps the path text it was given as the socket's name; the
    pinned ``/proc/SUPERVISOR/fd/N/name`` would show in getsockname, so the
    supervisor remembers the name the guest gave (by socket inode) and
    getsockname answers with it. A pinned path longer than sun_path allows is
    refused (ENAMETOOLONG) rather than walked unpinned. Without ``[host]`` rules
    getsockname is not trapped (syscalls.Need.HOST), so the kernel walks the
    checked path: bind creates a name, never follows or replaces one, so a race
    can at worst add a socket file beside a trusted one (docs/policy.md).
    """
    pinned = env.pin(real, False) if env.host_rules else None
    if pinned is None:
        sockaddr = _unix_sockaddr(real)
        return RunChecked(NR_BIND, (call.args[0], Scratch(sockaddr), len(sockaddr)))
    path, pin = pinned
    if len(os.fsencode(path)) > _SUN_PATH - 1:
        env.unpin(pin)
        return Fail(errno.ENAMETOOLONG)
    sockaddr = _unix_sockaddr(path)
    text = os.fsencode(sa.text or "")
    name = sa.raw[:2] + text + b"\0"  # what the kernel stores: family, path, NUL
    holder = f"/proc/{call.guest.tgid}/fd/{_s32(call.args[0])}"

    def done(ret: int) -> None:
        env.unpin(pin)
        if ret == 0:
            with contextlib.suppress(OSError):
                env.bound_names[os.stat(holder).st_ino] = name

    return RunChecked(NR_BIND, (call.args[0], Scratch(sockaddr), len(sockaddr)), done)


@guarded
def sys_getsockname(call: Call, env: Env) -> Result:
    """getsockname of a socket bound in a pinned directory: the name the guest gave."""
    if not env.bound_names:
        return CONTINUE
    fd, addr, lenp = _s32(call.args[0]), call.args[1], call.args[2]
    try:
        name = env.bound_names.get(os.stat(f"/proc/{call.guest.tgid}/fd/{fd}").st_ino)
    except OSError:
        return CONTINUE  # EBADF and the like: the kernel's answer
    if name is None:
        return CONTINUE
    room = int.from_bytes(call.guest.read(lenp, 4), "little")
    if room > 0x7FFFFFFF:
        return Fail(errno.EINVAL)
    return Return(0, ((addr, name[:room]), (lenp, len(name).to_bytes(4, "little"))))


@guarded
def sys_connect(call: Call, env: Env) -> Result:
    return _sock_call(call, env, NR_CONNECT)


@guarded
def sys_bind(call: Call, env: Env) -> Result:
    return _sock_call(call, env, NR_BIND)


@guarded
def sys_socket(call: Call, env: Env) -> Result:
    """socket(domain, ...): under "deny" no IP socket; no family that leaves the machine
    other than IP under "loopback" (connect/bind/send then check each address)."""
    domain = call.args[0] & 0xFFFFFFFF
    if domain in _LOCAL_FAMILIES or env.network is NetworkMode.ALLOW:
        return CONTINUE
    local = domain in (AF_INET, AF_INET6)  # creating one sends nothing; its uses are checked
    name = {AF_INET: "AF_INET", AF_INET6: "AF_INET6"}.get(domain, f"family {domain}")
    err = env.check_net(call, "socket", name, local)
    return Fail(err) if err else CONTINUE


@guarded
def sys_sendto(call: Call, env: Env) -> Result:
    """sendto(fd, buf, len, flags, dest, addrlen): the destination is checked and copied."""
    a = call.args
    sa = read_sockaddr(call, a[4], a[5] & 0xFFFFFFFF)
    if sa is None:
        return CONTINUE
    if sa.family == AF_UNIX:
        if sa.text is None:
            return CONTINUE
        real = _unix_target(call, env, "send", sa.text)
        return _unix_reach(env, NR_SENDTO, real, lambda sock, size: (*a[:4], sock, size))
    if env.network is NetworkMode.ALLOW:
        return CONTINUE
    err = net_check(call, env, "send", sa)
    if err:
        return Fail(err)
    return RunChecked(NR_SENDTO, (*a[:4], Scratch(sa.raw), len(sa.raw)))


def _checked_msghdr(call: Call, env: Env, msghdr: bytes) -> tuple[Scratch, int | None]:
    """A copy of one ``struct msghdr`` whose destination was checked, and the pin to drop.

    The copy, and the copy of ``msg_name`` it points to, go to the scratch page:
    a guest thread that rewrites the address (or sets one where there was none)
    after the check changes nothing the kernel reads. An AF_UNIX path is the
    pinned socket, as for sendto. Raises OSError with the errno of a denial.
    """
    name = int.from_bytes(msghdr[0:8], "little")
    namelen = int.from_bytes(msghdr[8:12], "little")
    sa = read_sockaddr(call, name, namelen)
    raw, pin = b"", None
    if sa is not None and sa.family == AF_UNIX and sa.text is not None:
        raw, pin = _pinned_socket(env, _unix_target(call, env, "send", sa.text))
    elif sa is not None:
        err = 0 if env.network is NetworkMode.ALLOW else net_check(call, env, "send", sa)
        if err:
            raise OSError(err, "denied by the network policy")
        raw = sa.raw
    header = bytes(8) + len(raw).to_bytes(4, "little") + msghdr[12:_MSGHDR]
    return Scratch(header, ((0, Scratch(raw)),) if raw else ()), pin


def _send_checked(
    env: Env,
    call: Call,
    msghdr: bytes,
    flags: int,
    after: Callable[[int], Return | None] | None = None,
) -> Result:
    """sendmsg(fd, checked copy of ``msghdr``, flags); ``after`` sees the result."""
    copy, pin = _checked_msghdr(call, env, msghdr)

    def done(ret: int) -> Return | None:
        if pin is not None:
            env.unpin(pin)
        return after(ret) if after is not None else None

    return RunChecked(NR_SENDMSG, (call.args[0], copy, flags), done)


@guarded
def sys_sendmsg(call: Call, env: Env) -> Result:
    """sendmsg(fd, msghdr, flags): the kernel reads a checked copy of the header."""
    return _send_checked(env, call, call.guest.read(call.args[1], _MSGHDR), call.args[2])


@guarded
def sys_sendmmsg(call: Call, env: Env) -> Result:
    """sendmmsg(fd, mmsghdr[], vlen, flags): the first message, as a checked sendmsg.

    The kernel stores each message's ``msg_len`` back into the table, which a
    read-only copy cannot take; so one message is sent per call (sendmmsg may
    send fewer than ``vlen``: callers send the rest again) and its ``msg_len``
    is stored in the guest's table at the exit.
    """
    table = call.args[1]
    if call.args[2] & 0xFFFFFFFF == 0:
        return CONTINUE

    def one(ret: int) -> Return | None:
        if ret < 0:
            return None
        return Return(1, ((table + _MSGHDR, ret.to_bytes(4, "little")),))

    return _send_checked(env, call, call.guest.read(table, _MSGHDR), call.args[3], one)


# -- guards of the scratch page -------------------------------------------------------------


@handler
def sys_memguard(call: Call, env: Env) -> Result:
    """mprotect, pkey_mprotect, munmap, madvise, remap_file_pages, mmap(MAP_FIXED)."""
    addr, length = call.args[0], call.args[1]
    return Fail(errno.EPERM) if call.guest.touches_scratch(addr, length) else CONTINUE


@handler
def sys_mremap_guard(call: Call, env: Env) -> Result:
    old, old_len, new_len, flags, new = call.args[:5]
    if call.guest.touches_scratch(old, old_len):
        return Fail(errno.EPERM)
    if flags & 0x2 and call.guest.touches_scratch(new, new_len):
        return Fail(errno.EPERM)
    return CONTINUE


@handler
def sys_memguard_shmat(call: Call, env: Env) -> Result:
    return Fail(errno.EPERM) if call.guest.touches_scratch(call.args[1], 1 << 30) else CONTINUE


@handler
def sys_brk_guard(call: Call, env: Env) -> Result:
    """A break below the scratch area's end (the filter traps no other).

    Shrinking the heap unmaps everything between the new and the old break,
    and growing it maps that range back writable: with the heap's start below
    the area (only PR_SET_MM can put it there, and it is refused) that would
    hand the area to the guest. The kernel's answer to a refused brk is the
    current break, so that is what the guest gets: ``brk(0)`` runs instead.
    """
    return RunChecked(NR_BRK, (0,))


# -- other processes: never the trusted ones ---------------------------------------------------


def _refused_owner(env: Env, who: int, group: bool) -> bool:
    """Whether ``who`` (a pid, or a process group when ``group``) is trusted; 0 is nobody."""
    if who <= 0:
        return False
    return env.host.trusted_group(who) if group else env.host.trusted(who)


@handler
def sys_signal_guard(call: Call, env: Env) -> Result:
    """kill, tkill, tgkill, rt_(tg)sigqueueinfo, pidfd_open, and the calls that change
    another process (prlimit64, sched_set*, migrate_pages, move_pages) or read it
    (get_robust_list): never toward a trusted process.

    The first argument is the target (a pid, tgid or tid). kill(-1) (every
    process the user may signal) is refused, and so is kill(-PGID) of the
    agent's or the server's process group; the guest's own group (pid 0) is
    left alone: the supervisor may share it (a shell's job) and forwards what
    reaches it.
    """
    pid = _s32(call.args[0])
    if pid > 0:
        return Fail(errno.EPERM) if env.host.trusted(pid) else CONTINUE
    if call.name != "kill" or pid == 0 or _s32(call.args[1]) == 0:
        return CONTINUE
    if pid == -1 or env.host.trusted_group(-pid):
        return Fail(errno.EPERM)
    return CONTINUE


@handler
def sys_pidfd_guard(call: Call, env: Env) -> Result:
    """pidfd_send_signal: not to a trusted process, whatever pidfd names it.

    A guest cannot get a pidfd of a trusted process (pidfd_open is guarded,
    ``/proc/PID`` of one is refused, pidfd_getfd is denied): this is the second
    lock. The fd is a pidfd (fdinfo ``Pid:``) or a ``/proc/PID`` directory.
    """
    fd = _s32(call.args[0])
    pid = call.guest.fd_pid(fd)
    if pid is None:
        m = _PROC_DIR.match(call.guest.fd_target(fd) or "")
        pid = int(m.group(1)) if m else None
    if pid is not None and pid > 0 and env.host.trusted(pid):
        return Fail(errno.EPERM)
    return CONTINUE


_PROC_DIR = re.compile(r"^/proc/(\d+)$")
F_SETOWN = 8
F_SETOWN_EX = 15
F_OWNER_PGRP = 2
_F_OWNER_EX = struct.Struct("ii")
_INT = struct.Struct("i")
FIOSETOWN = 0x8901
SIOCSPGRP = 0x8902
TIOCSPGRP = 0x5410
USERFAULTFD_IOC_NEW = 0xAA00
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


def _owner(who: int) -> tuple[int, bool]:
    """F_SETOWN's and FIOSETOWN's argument: a pid, or -PGID for a process group."""
    return (-who, True) if who < 0 else (who, False)


@handler
def sys_fcntl_guard(call: Call, env: Env) -> Result:
    """F_SETOWN / F_SETOWN_EX: a file's SIGIO (or F_SETSIG's signal: SIGSTOP too) goes to
    its owner, so no trusted process or group may become one.

    F_SETOWN_EX points at a ``struct f_owner_ex`` a guest thread may rewrite
    after the check: the kernel gets the checked copy, in the scratch area.
    """
    fd, cmd, arg = _s32(call.args[0]), call.args[1] & 0xFFFFFFFF, call.args[2]
    if cmd == F_SETOWN:
        return Fail(errno.EPERM) if _refused_owner(env, *_owner(_s32(arg))) else CONTINUE
    raw = call.guest.read(arg, _F_OWNER_EX.size)
    kind, pid = _F_OWNER_EX.unpack(raw)
    if _refused_owner(env, pid, kind == F_OWNER_PGRP):
        return Fail(errno.EPERM)
    return RunChecked(NR_FCNTL, (fd, cmd, Scratch(raw)))


@handler
def sys_ioctl_guard(call: Call, env: Env) -> Result:
    """FIOSETOWN / SIOCSPGRP (a socket's owner, as F_SETOWN), TIOCSPGRP (a terminal's
    foreground group: who gets ^C and ^Z): never a trusted process or group; the
    kernel reads the checked copy of the ``int``. USERFAULTFD_IOC_NEW (a userfaultfd
    from ``/dev/userfaultfd``) is refused as the userfaultfd syscall is. TIOCSTI and
    TIOCLINUX are refused: they type into the terminal the guest shares with the user."""
    fd, req, arg = _s32(call.args[0]), call.args[1] & 0xFFFFFFFF, call.args[2]
    if req in (USERFAULTFD_IOC_NEW, TIOCSTI, TIOCLINUX):
        return Fail(errno.EPERM)
    raw = call.guest.read(arg, _INT.size)
    (value,) = _INT.unpack(raw)
    who, group = (value, True) if req == TIOCSPGRP else _owner(value)
    if _refused_owner(env, who, group):
        return Fail(errno.EPERM)
    return RunChecked(NR_IOCTL, (fd, call.args[1], Scratch(raw)))


#: setpriority's and ioprio_set's ``which``: (the pid kind, the group kind, the user kind)
_WHICH = {"setpriority": (0, 1, 2), "ioprio_set": (1, 2, 3)}


@handler
def sys_priority_guard(call: Call, env: Env) -> Result:
    """setpriority / ioprio_set: not a trusted process or group; never a whole user
    (every process of the uid, the trusted ones among them). ``who`` 0 is the caller
    (or its own group, as kill(0))."""
    which, who = _s32(call.args[0]), _s32(call.args[1])
    pid_kind, group_kind, user_kind = _WHICH[call.name]
    if which == user_kind:
        return Fail(errno.EPERM)
    if which in (pid_kind, group_kind) and _refused_owner(env, who, which == group_kind):
        return Fail(errno.EPERM)
    return CONTINUE


@handler
def sys_kcmp_guard(call: Call, env: Env) -> Result:
    """kcmp compares two processes' files, memory and fs state: neither may be trusted."""
    for pid in (_s32(call.args[0]), _s32(call.args[1])):
        if pid > 0 and env.host.trusted(pid):
            return Fail(errno.EPERM)
    return CONTINUE
