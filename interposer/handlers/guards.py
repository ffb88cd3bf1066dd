"""Guards: the scratch page, the trusted processes, devices."""

from __future__ import annotations

import errno
import fcntl
import re
import signal
import struct

from synthfs.interposer.actions import CONTINUE, Fail, Result, Return, RunChecked, Scratch
from synthfs.interposer.handlers.locate import NR_BRK, NR_FCNTL, NR_IOCTL, s32
from synthfs.interposer.numbers import (
    F_SETLEASE,
    F_SETOWN,
    REFUSED_IOCTLS,
    TIOCSPGRP,
)
from synthfs.interposer.ports import Call, Env


def sys_memguard(call: Call, env: Env) -> Result:
    """mprotect, pkey_mprotect, munmap, madvise, remap_file_pages, mmap(MAP_FIXED)."""
    addr, length = call.args[0], call.args[1]
    return Fail(errno.EPERM) if call.guest.touches_scratch(addr, length) else CONTINUE


def sys_landlock_guard(call: Call, env: Env) -> Result:
    """landlock_restrict_self: the process now has rules of its own, which the kernel
    enforces in its context only. Marked (its children inherit the mark): under
    ``--engine notify`` the supervisor would open files outside its domain, so its
    opens are refused there (the supervisor's ``_not_as_guest``)."""
    call.proc.own_rules = True
    return CONTINUE


def sys_creds_guard(call: Call, env: Env) -> Result:
    """setuid and the like: the process may now hold other credentials than synthfs.
    Marked (its children inherit the mark): under ``--engine notify`` a privileged
    supervisor then compares them at each open it would make for it."""
    call.proc.own_creds = True
    return CONTINUE


def sys_mremap_guard(call: Call, env: Env) -> Result:
    old, old_len, new_len, flags, new = call.args[:5]
    if call.guest.touches_scratch(old, old_len):
        return Fail(errno.EPERM)
    if flags & 0x2 and call.guest.touches_scratch(new, new_len):
        return Fail(errno.EPERM)
    return CONTINUE


def sys_memguard_shmat(call: Call, env: Env) -> Result:
    return Fail(errno.EPERM) if call.guest.touches_scratch(call.args[1], 1 << 30) else CONTINUE


def sys_brk_guard(call: Call, env: Env) -> Result:
    """A break below the scratch area's end (the filter traps no other).

    Shrinking the heap unmaps everything between the new and the old break,
    and growing it maps that range back writable: with the heap's start below
    the area (only PR_SET_MM can put it there, and it is refused) that would
    hand the area to the guest. The kernel's answer to a refused brk is the
    current break, so that is what the guest gets: ``brk(0)`` runs instead.
    """
    return RunChecked(NR_BRK, (0,))


PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_MM = 3, 4, 35


def sys_prctl(call: Call, env: Env) -> Result:
    """prctl's options the filter traps: PR_SET_MM, PR_SET_DUMPABLE, PR_GET_DUMPABLE.

    PR_SET_MM is refused (it would move the heap's break over the scratch
    area). A non-dumpable process's ``/proc/PID/fd`` links, ``fdinfo`` and
    ``mem`` are closed to a supervisor without CAP_SYS_PTRACE (being its tracer
    does not exempt it): such a supervisor answers PR_SET_DUMPABLE itself (the
    kernel's checks, then 0, the process stays dumpable) and PR_GET_DUMPABLE
    with what the process set. One with the capability lets both run.
    """
    option = call.args[0] & 0xFFFFFFFF
    if option == PR_SET_MM:
        return Fail(errno.EPERM)
    if env.reads_undumpable:
        return CONTINUE
    if option == PR_SET_DUMPABLE:
        if call.args[1] not in (0, 1):  # SUID_DUMP_DISABLE, SUID_DUMP_USER
            return Fail(errno.EINVAL)
        call.proc.dumpable = call.args[1]
        return Return(0)
    return Return(call.proc.dumpable)


def _refused_owner(call: Call, env: Env, who: int, group: bool) -> bool:
    """Whether ``who`` (a pid, or a process group when ``group``) is trusted, or (a pid)
    outside the sandbox; 0 is nobody.

    A group is refused too when it is the supervisor's (the guest shares it): a file
    owned by it gets F_SETSIG's signal, SIGSTOP included, which would freeze the sandbox."""
    if who <= 0:
        return False
    if group:
        return env.host.supervisor_group(call.guest.tgid, -who) or env.host.foreign_group(who)
    return env.host.outsider(who) or env.host.trusted(who)  # no process outside the sandbox


def sys_signal_guard(call: Call, env: Env) -> Result:
    """kill, tkill, tgkill, rt_(tg)sigqueueinfo, pidfd_open, and the calls that change
    another process (prlimit64, sched_set*, migrate_pages, move_pages) or read it
    (get_robust_list): never toward a trusted process, nor any process that is not a
    guest of this run.

    The first argument is the target (a pid, tgid or tid). kill(-1) (every
    process the user may signal) is refused, and so is kill(-PGID) of a group
    with a member that is no guest (the agent's or the server's, another run's,
    the user's shell's). The supervisor shares the guest's
    group (the terminal's Ctrl-C reaches both, and it forwards what reaches
    it), so a stop signal toward that group (kill(0), or kill(-PGID) from a
    child that moved to a group of its own) is refused when it would stop the
    supervisor (SIGSTOP, or one it does not catch): that would freeze the
    sandbox. One it catches (``synthfs run`` catches SIGTSTP and ignores
    SIGTTOU) goes through: the guests stop, and the supervisor after them, as
    at Ctrl-Z (vim suspends itself with kill(0, SIGTSTP)). Other signals to it
    are let through (the supervisor passes
    SIGTERM/SIGHUP on; SIGKILL ends the run, as it ends the guests natively).
    """
    pid = s32(call.args[0])
    if pid > 0:
        # Nor toward a process outside the sandbox: another run's supervisor, agent or
        # server (SIGSTOP one and that run hangs), the user's own shell.
        # (outsider first: it is enough for a live pid, without asking who serves the
        # trusted sockets now; trusted() still refuses a gone one it cannot tell)
        return Fail(errno.EPERM) if env.host.outsider(pid) or env.host.trusted(pid) else CONTINUE
    sig = s32(call.args[1])
    if call.name != "kill" or sig == 0:  # signal 0 only asks whether any exists
        return CONTINUE
    if pid == -1:
        return Fail(errno.EPERM)  # every process the user may signal
    own = env.host.supervisor_group(call.guest.tgid, pid)
    group = -pid if pid < 0 else env.host.group_of(call.guest.tgid)
    if not own:
        # Another run's group, the user's shell's (kill(0) too, after a setpgid that
        # joined one): refused when any member is no guest.
        return Fail(errno.EPERM) if env.host.foreign_group(group) else CONTINUE
    if sig in _STOPS:
        # A stop toward the job synthfs runs in stops it as at Ctrl-Z (vim suspends
        # itself with kill(0, SIGTSTP)): the supervisor must survive it.
        return CONTINUE if env.host.survives(sig) else Fail(errno.EPERM)
    if env.host.trusted_group(group):
        return Fail(errno.EPERM)  # the agent or the server shares it: not theirs to get
    if env.host.foreign_group(group, own=True):
        # The group synthfs was started in holds others too (a script or make that
        # ran it, without a terminal's job of its own): the guests alone get it.
        env.host.signal_guests(group, sig)
        return Return(0)
    return CONTINUE


#: the signals that stop a process (SIGSTOP cannot be caught, the others stop by default)
_STOPS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


def sys_pidfd_guard(call: Call, env: Env) -> Result:
    """pidfd_send_signal: not to a trusted process nor one outside the sandbox, whatever
    pidfd names it.

    A guest cannot get a pidfd of a trusted process (pidfd_open is guarded,
    ``/proc/PID`` of one is refused, pidfd_getfd is denied): this is the second
    lock. The fd is a pidfd (fdinfo ``Pid:``) or a ``/proc/PID`` directory.
    """
    fd = s32(call.args[0])
    pid = call.guest.fd_pid(fd)
    if pid is None:
        m = _PROC_DIR.match(call.guest.fd_target(fd) or "")
        pid = int(m.group(1)) if m else None
    if pid is not None and pid > 0 and (env.host.outsider(pid) or env.host.trusted(pid)):
        return Fail(errno.EPERM)
    return CONTINUE


_PROC_DIR = re.compile(r"^/proc/(\d+)$")
F_OWNER_PGRP = 2
_F_OWNER_EX = struct.Struct("ii")
_INT = struct.Struct("i")


def _owner(who: int) -> tuple[int, bool]:
    """F_SETOWN's and FIOSETOWN's argument: a pid, or -PGID for a process group."""
    return (-who, True) if who < 0 else (who, False)


def sys_fcntl_guard(call: Call, env: Env) -> Result:
    """F_SETOWN / F_SETOWN_EX: a file's SIGIO (or F_SETSIG's signal: SIGSTOP too) goes to
    its owner, so no trusted process or group may become one.

    F_SETOWN_EX points at a ``struct f_owner_ex`` a guest thread may rewrite
    after the check: the kernel gets the checked copy, in the scratch area.
    """
    fd, cmd, arg = s32(call.args[0]), call.args[1] & 0xFFFFFFFF, call.args[2]
    if cmd == F_SETLEASE:
        return _lease(call, env, fd)
    if cmd == F_SETOWN:
        return Fail(errno.EPERM) if _refused_owner(call, env, *_owner(s32(arg))) else CONTINUE
    raw = call.guest.read(arg, _F_OWNER_EX.size)
    kind, pid = _F_OWNER_EX.unpack(raw)
    if _refused_owner(call, env, pid, kind == F_OWNER_PGRP):
        return Fail(errno.EPERM)
    return RunChecked(NR_FCNTL, (fd, cmd, Scratch(raw)))


def _lease(call: Call, env: Env, fd: int) -> Result:
    """F_SETLEASE on a file synthfs opens as well (a /data fd is the agent's cache copy):
    EAGAIN, the kernel's answer when another open is in the way, which is so. A lease
    held there would put the agent (a truncation, an upload's read) or the supervisor
    to sleep until the holder lets go or the kernel's lease-break time (45 s) ends,
    serving no one meanwhile. Letting go (F_UNLCK) and host files run natively."""
    if call.args[2] & 0xFFFFFFFF == fcntl.F_UNLCK:
        return CONTINUE
    target = call.guest.fd_target(fd)
    if target is not None and (env.repo.repo_path_of(target) is not None
                               or env.host.refused(target)):
        return Fail(errno.EAGAIN)
    return CONTINUE


def sys_ioctl_guard(call: Call, env: Env) -> Result:
    """FIOSETOWN / SIOCSPGRP (a socket's owner, as F_SETOWN), TIOCSPGRP (a terminal's
    foreground group: who gets ^C and ^Z): never a trusted process or group; the
    kernel reads the checked copy of the ``int``. USERFAULTFD_IOC_NEW (a userfaultfd
    from ``/dev/userfaultfd``) is refused as the userfaultfd syscall is, and so are
    the rest of :data:`~synthfs.interposer.numbers.REFUSED_IOCTLS` (terminal
    injection, chattr through a read-only fd, freezing a file system)."""
    fd, req, arg = s32(call.args[0]), call.args[1] & 0xFFFFFFFF, call.args[2]
    if req in REFUSED_IOCTLS:
        return Fail(errno.EPERM)
    raw = call.guest.read(arg, _INT.size)
    (value,) = _INT.unpack(raw)
    who, group = (value, True) if req == TIOCSPGRP else _owner(value)
    if _refused_owner(call, env, who, group):
        return Fail(errno.EPERM)
    return RunChecked(NR_IOCTL, (fd, call.args[1], Scratch(raw)))


#: setpriority's and ioprio_set's ``which``: (the pid kind, the group kind, the user kind)
_WHICH = {"setpriority": (0, 1, 2), "ioprio_set": (1, 2, 3)}


def sys_priority_guard(call: Call, env: Env) -> Result:
    """setpriority / ioprio_set: not a trusted process or group; never a whole user
    (every process of the uid, the trusted ones among them). ``who`` 0 is the caller
    (or its own group, as kill(0))."""
    which, who = s32(call.args[0]), s32(call.args[1])
    pid_kind, group_kind, user_kind = _WHICH[call.name]
    if which == user_kind:
        return Fail(errno.EPERM)
    if which in (pid_kind, group_kind) and _refused_owner(call, env, who, which == group_kind):
        return Fail(errno.EPERM)
    return CONTINUE


def sys_kcmp_guard(call: Call, env: Env) -> Result:
    """kcmp compares two processes' files, memory and fs state: both must be guests."""
    for pid in (s32(call.args[0]), s32(call.args[1])):
        if pid > 0 and (env.host.outsider(pid) or env.host.trusted(pid)):
            return Fail(errno.EPERM)
    return CONTINUE
