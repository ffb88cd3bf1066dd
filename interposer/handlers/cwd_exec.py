"""chdir, fchdir, getcwd, execve, execveat."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from synthfs.interposer import abi, binfmt
from synthfs.interposer.abi import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked, Scratch
from synthfs.interposer.handlers.locate import (
    NR_CHDIR,
    NR_EXECVEAT,
    Loc,
    base_dir,
    cstr,
    fd_loc,
    guarded,
    host_check,
    locate,
    locate_guest_path,
    need,
    s32,
)
from synthfs.interposer.ports import Call, Env
from synthfs.protocol.messages import FileKind


@guarded
def sys_chdir(call: Call, env: Env) -> Result:
    loc = locate(call, env, AT_FDCWD, call.args[0], follow=True)
    return _chdir(call, env, loc)


def _chdir(call: Call, env: Env, loc: Loc) -> Result:
    if loc.synthetic:
        attrs = need(loc)
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

    return RunChecked(NR_CHDIR, (cstr(loc.host),), after)


@guarded
def sys_fchdir(call: Call, env: Env) -> Result:
    loc = fd_loc(call, env, s32(call.args[0]))
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
        attrs = need(loc)
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
    return RunChecked(NR_EXECVEAT, (AT_FDCWD, cstr(path), argv, envp, flags & ~AT_EMPTY_PATH))


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
        attrs = need(loc)
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
        return RunChecked(NR_EXECVEAT, (AT_FDCWD, cstr(path), new_argv, envp, 0))
    proc = call.proc
    proc.exec_fds = [*(proc.exec_fds or ()), *held]

    def after(ret: int) -> None:
        # The exec failed (a successful one closes them at its exec stop).
        proc.exec_fds = [fd for fd in proc.exec_fds or () if fd not in held] or None
        _release(held)

    return RunChecked(NR_EXECVEAT, (AT_FDCWD, cstr(path), new_argv, envp, 0), after)


def _release(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _interpreter(call: Call, env: Env, name: str) -> Loc:
    """Where a ``#!`` line's interpreter leads: opened by the kernel as by open(2), so
    a relative name is from the cwd, and symlinks are followed."""
    if not name.startswith("/"):
        name = base_dir(call, env, AT_FDCWD).rstrip("/") + "/" + name
    return locate_guest_path(call, env, name, True)


def _head_of_regular(path: str) -> bytes:
    """The first bytes of the regular file ``path`` (OSError EACCES for anything else, as
    execve says): looked at through an O_PATH fd first, so that the supervisor never
    opens a FIFO (which waits for a writer: the supervisor would serve no one) or a
    device (an open may act) a guest named."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EACCES, "not a regular file")
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            return f.read(binfmt.BUF_SIZE)
    finally:
        os.close(fd)


def _host_scripts(path: str, cwd: str) -> int:
    """How many ``#!`` scripts the kernel will go through from the host file ``path``
    (to apply its nesting limit to the whole chain); errors are the kernel's to give."""
    count = 0
    while count < binfmt.MAX_SCRIPTS:
        try:
            line = binfmt.parse(_head_of_regular(path))
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
    instruction, the mapped executable (and the loader the kernel mapped for
    its ``PT_INTERP``) must be one of the noted objects, or the process is
    killed. Each ``#!`` interpreter and ``PT_INTERP`` loader the kernel will
    open must pass a direct exec's checks (:func:`_check_loaded`). The kernel
    gets the checked path as text, so ``/proc/self/exe``, ``comm``,
    ``AT_EXECFN`` and a script's name stay native.
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
        objs = abi.executed_objects(pinned[1], f"/proc/{call.guest.tgid}/cwd")
    finally:
        env.unpin(pinned[1])
    for real, _ in objs or ():
        if real:
            _check_loaded(call, env, real)
    if call.proc.exec_checked is None:
        call.proc.exec_checked = set()
    call.proc.exec_checked.update(obj for _, obj in objs or ())


def _check_loaded(call: Call, env: Env, real: str) -> None:
    """The checks of a direct exec for a file the kernel opens on its own at an exec
    (a ``#!`` interpreter, an ELF's ``PT_INTERP`` loader): a trusted path is
    refused under every policy, and ``[host]`` rules must allow ``read``. EACCES
    otherwise, what the kernel gives for an interpreter it may not open."""
    if env.host.refused(real) or env.check_host(call, "read", real):
        raise OSError(errno.EACCES, "the interpreter is denied")


@guarded
def sys_execve(call: Call, env: Env) -> Result:
    a = call.args
    return exec_at(call, env, AT_FDCWD, a[0], a[1], a[2], 0)


@guarded
def sys_execveat(call: Call, env: Env) -> Result:
    a = call.args
    return exec_at(call, env, s32(a[0]), a[1], a[2], a[3], a[4])
