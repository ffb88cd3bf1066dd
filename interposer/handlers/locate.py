"""Locating a path: the one resolution every handler uses, the host check, pins,
the handler registry and the argument helpers."""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable

from attrs import evolve, frozen

from synthfs.interposer import abi
from synthfs.interposer.abi import AT_FDCWD
from synthfs.interposer.actions import Fail, Result, Return, RunChecked, Scratch
from synthfs.interposer.namespace import MAX_SYMLINKS, NAME_MAX, Final, Target, last_name
from synthfs.interposer.numbers import NR
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import Attrs, FileKind

log = logging.getLogger(__name__)

NR_OPENAT = NR["openat"]
NR_OPENAT2 = NR["openat2"]
NR_MKDIRAT = NR["mkdirat"]
NR_UNLINKAT = NR["unlinkat"]
NR_RENAMEAT2 = NR["renameat2"]
NR_LINKAT = NR["linkat"]
NR_SYMLINKAT = NR["symlinkat"]
NR_FCHMODAT = NR["fchmodat"]
NR_FCHOWNAT = NR["fchownat"]
NR_TRUNCATE = NR["truncate"]
NR_UTIMENSAT = NR["utimensat"]
NR_FUTIMESAT = NR["futimesat"]
NR_CHDIR = NR["chdir"]
NR_EXECVEAT = NR["execveat"]
NR_MKNODAT = NR["mknodat"]
NR_CONNECT = NR["connect"]
NR_BIND = NR["bind"]
NR_INOTIFY_ADD_WATCH = NR["inotify_add_watch"]
NR_NAME_TO_HANDLE_AT = NR["name_to_handle_at"]
NR_STATFS = NR["statfs"]
NR_BRK = NR["brk"]
NR_FCNTL = NR["fcntl"]
NR_IOCTL = NR["ioctl"]
IN_DONT_FOLLOW = 0x01000000

NO_LINKS = abi.RESOLVE_NO_SYMLINKS | abi.RESOLVE_NO_MAGICLINKS

Handler = Callable[[Call, Env], Result]


def s32(value: int) -> int:
    """An int argument as the kernel sees it (the low 32 bits, signed)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def cstr(path: str) -> Scratch:
    return Scratch(os.fsencode(path) + b"\0")


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


def proc_self(path: str, call: Call) -> str:
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


def whose(call: Call) -> tuple[int, int]:
    """The guest thread a host walk is for (its /proc/self, /proc/thread-self)."""
    return call.guest.tgid, call.guest.tid


def fd_loc(
    call: Call, env: Env, fd: int, target: str | None = None, *, io: bool = False
) -> Loc | None:
    """What an fd refers to; None when it is not open (EBADF). ``target``: its
    ``/proc`` link, when the caller has read it already. ``io``: the call needs an
    fd opened for I/O (fchmod, fchown, futimens, the f*xattr calls): an ``O_PATH``
    one is EBADF, as from the kernel (never the object's change by its path)."""
    if io and fd != AT_FDCWD and call.guest.fd_path_only(fd):
        raise OSError(errno.EBADF, "an O_PATH fd")
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


def _pin_as_written(env: Env, loc: Loc, whole: bool) -> tuple[str, int] | None:
    """The pinned path of ``loc`` that ends as the guest's text did: a last component
    '.' or '..' (the kernel refuses rmdir, rename, unlink... of those) is kept, on the
    directory pinned whole; so is a trailing slash (a non-directory's ENOTDIR). The
    resolved path had lost both: ``rmdir("d/.")`` removed ``d``, ``unlink("f/")``
    removed ``f``."""
    if not whole and loc.last in DOTS:
        pinned = env.pin(loc.host or "/", True)
        return None if pinned is None else (f"{pinned[0]}/{loc.last}", pinned[1])
    pinned = env.pin(loc.host or "/", whole)
    return None if pinned is None else (as_written(pinned[0], loc), pinned[1])


def as_written(path: str, loc: Loc) -> str:
    """``path`` (``loc``'s host path, or its pin) ending in '/' when the guest's did: the
    kernel's ENOTDIR for a non-directory, EISDIR for a create."""
    return path + "/" if loc.must_be_dir and not path.endswith("/") else path


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
                pinned = _pin_as_written(env, loc, arg.whole)
            if pinned is None:
                out.append(cstr(loc.host))
            else:
                fds.append(pinned[1])
                out.append(cstr(pinned[0]))
    except OSError as exc:
        for fd in fds:
            env.unpin(fd)
        return Fail(exc.errno or errno.EIO)
    if not fds:
        return RunChecked(nr, tuple(out), after)

    def unpin() -> None:
        for fd in fds:
            env.unpin(fd)

    return RunChecked(nr, tuple(out), after, unpin)


def precheck(call: Call, env: Env, ops: tuple[str, ...], raw: str, base: str) -> None:
    """Refuse before any lookup when the path, as written, is denied for every op."""
    if not ops:
        return
    if _CLEAN_ABS.match(raw):
        lexical = raw  # already normal (normpath is pure Python here: ~1 us a call)
    else:
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

    ``ops`` (default: the row's ``ops``) are checked on the path
    as written before anything is looked up; the handler checks the resolved
    path again once it knows what it is. A host location is checked here, once,
    for ``host_op`` (default: the row's host operation) on its real path.
    ``final``: see :class:`~interposer.namespace.Final` (ENTRY: call
    :func:`looked_up` where the kernel looks the final name up).
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
        host_check(call, env, host_op or call.spec.host_operation, loc)
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
        base = base_dir(call, env, dirfd)
    host_start = not env.ns.covers(base) or (raw.startswith("/") and not in_root)
    if confine and host_start:
        # (an IN_ROOT walk reaches /data only from a root above the mount)
        above = env.ns.mount.startswith(base.rstrip("/") + "/")
        real = _confined_walk(call, dirfd, raw, confine, follow, above)
        if real is not None and not env.ns.covers(real):
            return _host_loc(call, env, real, False, raw.endswith("/"))
    if not in_root:  # an IN_ROOT path names another place than its text: checked resolved
        precheck(call, env, call.spec.ops if ops is None else ops, raw, base)
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
        raw = proc_self(raw if raw.startswith("/") else base.rstrip("/") + "/" + raw, call)
        base = "/"
    target = env.ns.resolve(
        raw,
        base,
        follow=follow,
        lstat=env.repo.lstat,
        readlink=env.repo.readlink,
        host_realpath=lambda p: env.host.realpath(p, True, whose(call)),
        final=final,
        confine=confine,
        hidden=lambda g: env.hides(call, g),
    )
    if target.synthetic:
        return Loc(
            guest=env.ns.guest_path(target.path),
            repo=target.path,
            attrs=target.attrs,
            must_be_dir=target.must_be_dir,
            last=last,
        )
    if confine & NO_LINKS and not host_start:
        # A walk from /data that left it ('..'): the host part is the kernel's to judge.
        _confined_walk(call, AT_FDCWD, target.path, confine & NO_LINKS, follow, False)
    # A trailing slash makes the kernel follow a final symlink in a lookup, NOFOLLOW or
    # not (the kernel gets the slash: as_written): the object checked is the one it reaches.
    lookup_follows = target.must_be_dir and final is Final.LOOKUP
    loc = _host_loc(call, env, target.path, follow or lookup_follows, target.must_be_dir)
    if last in DOTS and not loc.synthetic:
        loc = evolve(loc, last=last)  # the kernel's answer to a final '.' or '..'
    return _via(loc, target)


#: openat2's confinement flags (RESOLVE_CACHED is not one: the kernel may answer EAGAIN).
CONFINE = (
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
    text = proc_self(raw, call) if raw.startswith(("/proc/", "/dev/")) and not in_root else raw
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
            fd = abi.host_openat2(text, flags, confine & CONFINE, dfd)
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


def base_dir(call: Call, env: Env, dirfd: int) -> str:
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
#: /proc/PID/... as the guest wrote it (after its own /proc/self is made a pid)
_PROC_PID = re.compile(r"^/proc/(\d+)(?:/|$)")


def _host_loc(call: Call, env: Env, path: str, follow: bool, must_be_dir: bool) -> Loc:
    # Anything under /proc/PID of a trusted process is refused by its pid, before any
    # walk: its fd, cwd and root links lead to objects (a pipe, a socket) whose /proc
    # text names no path the refused list could catch.
    in_proc = path.startswith("/proc/")
    p = _PROC_PID.match(path) if in_proc else None
    if p and int(p.group(1)) != call.guest.tgid and env.host.trusted(int(p.group(1))):
        raise Refused(errno.EACCES, "a trusted process's /proc entry")
    # /proc/PID/fd/N[/rest] of the guest's own fd on a synthetic object.
    m = _PROC_FD.match(path) if in_proc else None
    if m and int(m.group(1)) == call.guest.tgid and (m.group(3) or follow):
        loc = fd_loc(call, env, int(m.group(2)))
        if loc is not None and loc.synthetic:
            return locate_guest_path(call, env, loc.guest + (m.group(3) or ""), follow)
    # Synthetic cwd seen through /proc: /proc/PID/cwd of a process whose cwd is on /data.
    if in_proc and call.proc.fs.cwd is not None:
        cwd_link = f"/proc/{call.guest.tgid}/cwd"
        if path == cwd_link or path.startswith(cwd_link + "/"):
            if path == cwd_link and not follow:
                return Loc(guest=path, host=path, real=path)
            rest = path[len(cwd_link) :]
            return locate_guest_path(call, env, call.proc.fs.cwd + rest, follow)
    real = env.host.realpath(path, follow, whose(call))
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
        path, "/", follow=follow, lstat=env.repo.lstat, readlink=env.repo.readlink,
        hidden=lambda g: env.hides(call, g),
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
    return run


def live_attrs(env: Env, repo: str, attrs: Attrs) -> Attrs:
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


def looked_up(loc: Loc) -> Attrs | None:
    """The attributes of a location resolved with ``Final.ENTRY``, now that the kernel
    would look its final name up: a name longer than NAME_MAX fails here."""
    if loc.repo is not None and len(last_name(loc.repo)) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return loc.attrs


#: The final components that name no entry of their own (the kernel's LAST_DOT, LAST_DOTDOT).
DOTS = (".", "..")


def need(loc: Loc) -> Attrs:
    if loc.attrs is None:
        raise OSError(errno.ENOENT, "no such file or directory")
    if loc.must_be_dir and loc.attrs.kind is not FileKind.DIR:
        raise OSError(errno.ENOTDIR, "not a directory")
    return loc.attrs
