"""The interfaces handlers see: one guest thread, the repository, the host.

Handlers are pure functions of a :class:`Call` and an :class:`Env`; every
effect goes through these ports. The supervisor implements them with ptrace,
``/proc`` and the agent; unit tests implement them with dictionaries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from attrs import define, field

from synthfs.interposer.namespace import Namespace
from synthfs.policy.engine import NetworkMode
from synthfs.protocol.messages import Attrs, DirEntry, Listing, Opened, RenameFlags

if TYPE_CHECKING:
    from synthfs.interposer.syscalls import SyscallSpec

__all__ = ["Call", "DirHandle", "Env", "FsState", "Guest", "Host", "Proc", "Repo"]


class Guest(Protocol):
    """One stopped guest thread."""

    tid: int
    tgid: int

    def read_path(self, addr: int) -> str:
        """The NUL-terminated path at ``addr``; OSError EFAULT / ENAMETOOLONG."""

    def read(self, addr: int, size: int) -> bytes: ...

    def fd_target(self, fd: int) -> str | None:
        """What ``/proc/TGID/fd/FD`` links to, or None when the fd is not open;
        OSError EACCES when the link cannot be read (fail closed: the fd may be a
        /data one)."""

    def fd_writable(self, fd: int) -> bool:
        """Whether the fd is open for writing (False when it is not open)."""

    def fd_pid(self, fd: int) -> int | None:
        """The process a pidfd stands for (its fdinfo ``Pid:``); None for other fds."""

    def fd_path_only(self, fd: int) -> bool:
        """Whether the fd was opened with ``O_PATH`` (False when it is not open)."""

    def host_cwd(self) -> str: ...

    def umask(self) -> int:
        """The process's umask (read from /proc when a handler creates something)."""

    def open_fds(self) -> list[int]: ...

    def touches_scratch(self, addr: int, length: int) -> bool:
        """Whether [addr, addr+length) overlaps the supervisor's scratch area."""


class Repo(Protocol):
    """The synthetic tree, as the agent serves it (paths are repository paths)."""

    def lstat(self, path: str) -> Attrs | None: ...
    def listdir(self, path: str) -> Listing: ...
    def readlink(self, path: str) -> str: ...
    def open(self, path: str, flags: int, mode: int, claim: bool = False) -> Opened:
        """``claim``: O_EXCL in ``flags`` is the interposer's, not the guest's (messages.Open)."""
    def commit(self, path: str, wait: bool = False) -> None:
        """A written copy was closed (``wait``: fsync: return once the server has it)."""

    def sync(self, wait: bool = False) -> None:
        """Queue what this sandbox wrote (``wait``: sync: return once the server has it)."""

    def mkdir(self, path: str, mode: int) -> None: ...
    def remove(self, path: str, directory: bool) -> None: ...
    def rename(self, src: str, dst: str, flags: RenameFlags) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def link(self, src: str, dst: str) -> None:
        """A second name ``dst`` of the file ``src`` (EPERM where the repository has none)."""
    def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> None: ...
    def repo_path_of(self, host_path: str) -> str | None:
        """The repository path whose local copy is ``host_path``, if it is one."""

    def known_dir(self, path: str) -> bool:
        """Whether ``path`` was seen as a directory and not removed or renamed through
        this sandbox since (its attributes may be stale; its kind is not)."""

    def local_copy(self, path: str) -> str | None:
        """The host path of ``path``'s local copy, if this session has one."""

    def unhomed_write(self, host_path: str, link: str) -> bool:
        """Whether ``host_path`` (an fd's target, ``link`` its ``/proc`` link) is the local
        copy of a removed name whose file kept another name, and was written since: writes
        no name of the file holds."""

    def written_copy(self, path: str) -> os.stat_result | None:
        """The local copy's stat when a guest changed it since it matched the server."""


class Host(Protocol):
    """The host side: symlink resolution for checks, and the supervisor's private files."""

    def realpath(self, path: str, follow: bool, guest: tuple[int, int] = (0, 0)) -> str:
        """The path with every symlink resolved (magic links included), as the kernel
        would for the guest thread ``guest`` (tgid, tid)."""

    def take_checked(self, real_path: str, follow: bool) -> int | None:
        """The O_PATH fd the last :meth:`realpath` opened on ``real_path`` (resolved with
        ``follow``), handed over to the caller to use and close; None if it has none."""

    def refused(self, real_path: str) -> bool:
        """True for paths no guest may name (cache, sockets, keys, trusted processes)."""

    def holds_refused(self, real_path: str) -> bool:
        """True when ``real_path`` is a directory above a refused path: renaming it
        would give the refused path another name (refused like the path itself)."""

    def trusted(self, pid: int) -> bool:
        """Whether a pid or tid belongs to the supervisor, the agent or the server."""

    def outsider(self, pid: int) -> bool:
        """Whether a live pid or tid is no guest of this run (another run's supervisor,
        agent or server, the user's shell...): a guest may not signal or change it."""

    def supervisor_group(self, pid: int, target: int) -> bool:
        """Whether kill(``target`` <= 0) by ``pid`` names the supervisor's own group."""
        ...

    def group_of(self, pid: int) -> int:
        """The process group of ``pid`` (a guest)."""

    def signal_guests(self, pgid: int, sig: int) -> None:
        """Send ``sig`` to every guest of this run in process group ``pgid``."""

    def trusted_group(self, pgid: int) -> bool:
        """Whether the agent or the server (not this supervisor) is in group ``pgid``."""

    def foreign_group(self, pgid: int, own: bool = False) -> bool:
        """Whether a process group (not the supervisor's) holds a process that is no
        guest of this run: the agent's, the server's, another run's, the user's shell."""

    def survives(self, sig: int) -> bool:
        """Whether the supervisor catches or ignores the stop signal ``sig`` (then a
        stop toward its group stops the guests only, as the terminal's Ctrl-Z does)."""
        ...

    def new_dir_handle(self, repo_path: str, symlink: bool = False) -> str:
        """A fresh placeholder (an empty directory, or a symlink) standing for ``repo_path``."""

    def dir_handle(self, host_path: str) -> DirHandle | None: ...

    def placeholder_root(self) -> str: ...


@define
class DirHandle:
    """An open synthetic directory: the repository path and a getdents cursor."""

    repo_path: str
    entries: Sequence[DirEntry] | None = None
    pos: int = 0


@define
class FsState:
    """What CLONE_FS shares: the synthetic cwd (None when the kernel's cwd is the cwd)."""

    cwd: str | None = None


@define
class Proc:
    """One guest process (thread group) as the handlers know it."""

    tgid: int
    fs: FsState = field(factory=FsState)
    exe: str = ""
    argv: tuple[str, ...] = ()
    app: object = None
    #: set once the process opened a synthetic file for writing (close must commit)
    wrote: bool = False
    #: set once the process opened anything synthetic (its fd syscalls need a look)
    synthetic: bool = False
    #: under [host] rules: ``(st_dev, st_ino)`` of every executable an execve since the
    #: last exec checked (the image the kernel maps must be one of them), None: unchecked
    exec_checked: set[tuple[int, int]] | None = None
    #: set once the process restricted itself with Landlock (inherited by its children)
    own_rules: bool = False
    #: set once it may hold other credentials than synthfs (setuid...; inherited)
    own_creds: bool = False
    #: supervisor fds of the files an execve of this process runs from /data (the
    #: kernel execs ``/proc/SUPERVISOR/fd/N``): closed at its exec stop or failure
    exec_fds: list[int] | None = None
    #: what PR_GET_DUMPABLE answers where the supervisor answers PR_SET_DUMPABLE itself
    #: (handlers.guards.sys_prctl): kept by a fork, 1 again after an exec
    dumpable: int = 1


@define
class Call:
    """One trapped syscall."""

    nr: int
    name: str
    args: tuple[int, int, int, int, int, int]
    guest: Guest
    proc: Proc

    @property
    def spec(self) -> SyscallSpec:
        """The syscall's row of the table (its ops, host op and other row data)."""
        global _BY_NR
        if _BY_NR is None:  # bound once: the table imports the handlers, which import this
            from synthfs.interposer.syscalls import BY_NR

            _BY_NR = BY_NR
        return _BY_NR[self.nr]


#: the syscall table by number, once :attr:`Call.spec` is first asked
_BY_NR: dict[int, SyscallSpec] | None = None


class Env(Protocol):
    """Supervisor-wide services."""

    @property
    def ns(self) -> Namespace: ...
    @property
    def repo(self) -> Repo: ...
    @property
    def host(self) -> Host: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def reads_undumpable(self) -> bool:
        """Whether the supervisor may read a non-dumpable guest's ``/proc/PID/fd``,
        ``fdinfo`` and ``mem`` (it has CAP_SYS_PTRACE)."""

    @property
    def network(self) -> NetworkMode:
        """What the policy lets IP sockets reach (``[host] network``)."""

    def check(self, call: Call, op: str, guest_path: str) -> int:
        """0 when the policy allows ``op`` on ``guest_path`` for this process, else the errno."""

    def hides(self, call: Call, guest_path: str) -> bool:
        """Whether the policy hides ``guest_path`` from this process (a denied ``stat``
        with ENOENT that takes effect), audited only then."""

    def check_host(self, call: Call, op: str, path: str, via: str = "") -> int:
        """0 when the ``[host]`` rules allow ``op`` on the resolved host ``path``, else errno.
        ``via``: the repository symlink that led there (shown in the audit record)."""

    def check_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        """0 when renaming the guest path ``src`` to ``dst`` (``tree``: a directory)
        moves nothing from under a stricter rule, else the errno (EXDEV)."""

    def check_host_rename(self, call: Call, src: str, dst: str, tree: bool) -> int:
        """The same for two resolved host paths under ``[host]`` rules."""

    @property
    def host_rules(self) -> bool:
        """Whether the policy restricts host paths (``[host]`` read or write lists)."""

    @property
    def bound_names(self) -> dict[int, bytes]:
        """Socket inode -> the sockaddr a guest bound it to (bound via a pinned path)."""

    def pin(self, real_path: str, whole: bool, via: str | None = None) -> tuple[str, int] | None:
        """Pin a checked host path for a call the kernel runs (see ``handlers.Pin``).

        Opens the parent directory of ``real_path`` (``whole``: the object
        itself) with RESOLVE_NO_SYMLINKS in the supervisor and returns the path
        the kernel should walk instead and the fd to :meth:`unpin` after the
        call; None when there is nothing to pin (``/``). With or without
        ``[host]`` rules (the trusted paths are refused under every policy).
        ``via``: a /proc link to an fd (``/proc/PID/fd/N``, ``/proc/PID/cwd``),
        opened instead of walking a path; its text must still be ``real_path``
        (the link text the check saw). OSError (ELOOP when a symlink was
        swapped in, EACCES when the fd changed, ENOENT...) fails the call.
        """

    def unpin(self, fd: int) -> None: ...

    def check_net(self, call: Call, op: str, address: str, local: bool) -> int:
        """0 when ``network`` lets ``op`` (socket, connect, bind, send) reach ``address``
        (``local``: it stays on this machine), else the errno. Denials are audited."""
