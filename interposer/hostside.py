"""The host side of the namespace: symlink resolution for checks, refused paths, placeholders.

Implements :class:`interposer.ports.Host`. Trusts the host kernel. The
supervisor resolves a guest's host path itself — ``open(O_PATH)`` in its own
process, then ``readlink`` of its ``/proc/self/fd`` entry — so symlinks and
``/proc`` magic links are followed exactly as the kernel follows them, and the
answer is checked against the paths no guest may name: the agent's cache,
socket and key, the supervisor's private directory, ``/proc/PID/mem`` of any
process and ``/proc/PID`` of the trusted processes.

Trusted processes: the supervisor, and whoever serves the agent's (and, with
``--data``, the server's) ``ipc://`` socket *now*. A restarted agent has a new
pid; the kernel says whose it is (:class:`Listener`: ``SO_PEERCRED`` of a
connection to the socket), asked only when a guest names a pid that is
neither trusted nor a guest, and cached until the socket file or its
listener changes. While nobody listens (the agent is away), every such pid is
refused: a starting agent is protected before its first answer.

Placeholders: an open synthetic directory is, to the kernel, an fd on a fresh
empty directory under the private directory; the supervisor maps it back to
the repository path (getdents, fchdir, ``*at`` calls are emulated).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable

from synthfs.interposer import abi
from synthfs.interposer.ports import DirHandle
from synthfs.private_dirs import PRIVATE_DIR

__all__ = ["HostSide", "Listener", "links_on"]

_PROC_PID = re.compile(r"^/proc/(\d+)(/.*)?$")
_MEM = re.compile(r"^/proc/\d+(/task/\d+)?/mem$")
#: what of a process the kernel guards with a ptrace access check (its memory, environment,
#: open files, cwd and root): a guest reaches these of its own run's processes only
_PROC_PRIVATE = re.compile(
    r"^/proc/(\d+)(?:/task/\d+)?/(?:environ|auxv|mem|stack|syscall|personality|fd|fdinfo"
    r"|map_files|maps|smaps|smaps_rollup|numa_maps|pagemap|io|cwd|root|exe|timers"
    r"|timerslack_ns|ns|attr|clear_refs|coredump_filter|wchan)(?:/|$)"
)
#: the text of a /proc magic link to what is not a path (``pipe:[7]``, ``anon_inode:[eventfd]``)
_NOT_A_PATH = re.compile(r"^[\w-]+:")
#: an absolute path without '.', '..', '//' or a trailing '/'
_CLEAN_ABS = re.compile(r"^(?:/(?!\.\.?(?:/|$))[^/]+)+$")
_GC_EVERY = 512
_KEEP = 64


def _members(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` (zombies do not count: a signal does nothing
    to them)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(name)) == pgid and abi.pid_running(int(name)):
                    out.append(int(name))
    return out


def links_on(path: str) -> list[str]:
    """Where each symlink the kernel follows to resolve ``path`` lies (not followed), in order.

    A refused path spelled through a symlink (``ws/lnk/policy.toml``, ``ws/lnk ->
    real``) is refused by its real path, but a guest that replaced the link would
    make the same spelling name a file of its own to the next run that reads it:
    the links on the way are refused too (only they: what lies behind them stays
    the policy's).
    """
    links: list[str] = []
    # (joined, never normalised: 'lnk/..' is the parent of lnk's target, as the kernel
    # walks it, not the directory that holds lnk)
    todo = [c for c in reversed(os.path.join(os.getcwd(), path).split("/")) if c]
    cur = ""
    while todo and len(links) <= 40:
        comp = todo.pop()
        if comp == ".":
            continue
        if comp == "..":
            cur = cur.rpartition("/")[0]
            continue
        here = f"{cur}/{comp}"
        try:
            target = os.readlink(here)
        except OSError:  # not a symlink, or absent: the rest is as spelled
            cur = here
            continue
        links.append(here)
        if target.startswith("/"):
            cur = ""
        todo.extend(c for c in reversed(target.split("/")) if c)
    return links


def _guest_self(path: str, guest: tuple[int, int]) -> str:
    """``/proc/self...`` and ``/proc/thread-self...`` as the guest thread means them."""
    for link, real in (
        ("/proc/self", f"/proc/{guest[0]}"),
        ("/proc/thread-self", f"/proc/{guest[0]}/task/{guest[1]}"),
    ):
        if path == link or path.startswith(link + "/"):
            return real + path[len(link) :]
    return path


#: How long :func:`peer_pid` retries a listener whose backlog is full (seconds).
_BACKLOG_WAIT = 0.05


def peer_pid(path: str) -> int | None:
    """The pid of the process listening on the unix socket ``path`` (None: nobody).

    The kernel records the listener's credentials at ``listen()`` and hands
    them to every client as ``SO_PEERCRED``. The connection closes at once,
    before any byte is sent: a ZeroMQ listener drops it silently. Never
    blocks: a full backlog is retried for up to ``_BACKLOG_WAIT`` seconds,
    then answers None (the caller fails closed).
    """
    deadline = time.monotonic() + _BACKLOG_WAIT
    while True:
        probe = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        try:
            probe.connect(path)
            cred = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid = struct.unpack("3i", cred)[0]
            return pid if pid > 0 else None
        except BlockingIOError:  # the backlog is full: the listener accepts in a moment
            if time.monotonic() > deadline:
                return None
        except OSError:  # ENOENT, ECONNREFUSED (a stale socket file): nobody listens
            return None
        finally:
            probe.close()
        time.sleep(0.002)


class Listener:
    """Who serves a unix socket now: learned from the kernel, kept while it holds.

    The answer is cached with the socket file's inode (a restarted ZeroMQ
    listener binds a new file): a check costs a ``stat`` and a ``kill(pid, 0)``
    while the file and its listener stay; a connection (:func:`peer_pid`) when
    either changed.
    """

    def __init__(self, path: str, pid: int | None = None) -> None:
        self.path = path
        #: the last listener learned (or the one the caller knew at start)
        self.pid = pid
        self._ino: int | None = None
        #: connections made to learn the listener (for tests and ``--stats``)
        self.probes = 0

    def current(self) -> int | None:
        """The listener's pid now; None when nobody listens (or it cannot be told)."""
        try:
            ino = os.stat(self.path).st_ino
        except OSError:
            return None
        if ino == self._ino and self.pid is not None and abi.pid_alive(self.pid):
            return self.pid
        self.probes += 1
        pid = peer_pid(self.path)
        if pid is not None:
            self.pid, self._ino = pid, ino
        return pid


class HostSide:
    def __init__(
        self,
        private_dir: str,
        refused: Iterable[str],
        trusted_pids: Iterable[int],
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.private_dir = os.path.realpath(private_dir)
        self._dirs = os.path.join(self.private_dir, "dirs")
        os.makedirs(self._dirs, mode=0o700, exist_ok=True)
        self.refused_roots: tuple[str, ...] = (self.private_dir,)
        self._refused_below: tuple[str, ...] = ()
        self.refuse_more(refused)
        self.trusted_pids = {int(p) for p in trusted_pids}
        #: the trusted sockets (the agent's, the server's): their listeners are trusted
        self.listeners = tuple(listeners)
        for listener in self.listeners:
            if listener.pid is not None:
                self.trusted_pids.add(listener.pid)
        #: whether a pid or tid is a guest's (set by the supervisor; a guest is never trusted)
        self.is_guest: Callable[[int], bool] = lambda _pid: False
        #: more trusted pids, read when asked (the agent's latest Welcome, set by run.py);
        #: None when one of them cannot be told now (a dead server not yet replaced)
        self.also_trusted: Callable[[], Iterable[int] | None] = lambda: ()
        self._handles: dict[str, DirHandle] = {}
        #: (real path, follow, O_PATH fd) of the last resolution, for :meth:`take_checked`
        self._kept: tuple[str, bool, int] | None = None
        self._own = f"/proc/{os.getpid()}"
        self._own_prefix = self._own + "/"
        self._next = 0
        #: called to learn which placeholders guests still hold (set by the supervisor)
        self.live_fd_targets: Callable[[], Iterable[str]] | None = None

    # -- resolution ---------------------------------------------------------------------------

    def realpath(self, path: str, follow: bool, guest: tuple[int, int] = (0, 0)) -> str:
        """See :class:`interposer.ports.Host`; ``guest`` (tgid, tid) is whose
        ``/proc/self`` and ``/proc/thread-self`` a symlink on the way means."""
        kept, self._kept = self._kept, None
        if kept is not None:
            os.close(kept[2])  # an earlier walk's object: never what this path names now
        if path == "/":
            return "/"
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        if _CLEAN_ABS.match(path):
            # The common case first: a walk that meets no symlink at all names what the
            # text names (no '.', '..' or '//' in it), so no readlink of the fd is needed.
            # ENOENT there: what exists of it holds no symlink either (the walk stops at
            # the first one, ELOOP), so the path as written is what :meth:`_walk` gives.
            # Any other outcome (a symlink on the way) takes the full resolution below.
            try:
                fd = abi.host_openat2(path, flags, abi.RESOLVE_NO_SYMLINKS)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return path
            else:
                self._keep(path, follow, fd)
                return path
        try:
            # No magic link on this walk: /proc/self/fd/N would be the supervisor's fd.
            fd = abi.host_openat2(path, flags, abi.RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES,
                                 errno.EXDEV):  # fmt: skip
                raise
            return self._walk(path, follow, guest)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            os.close(fd)
            raise
        if guest[0] and (real == self._own or real.startswith(self._own_prefix)):
            os.close(fd)
            return self._walk(path, follow, guest)  # a symlink to /proc/self: the guest's
        self._keep(real, follow, fd)
        return real

    def _keep(self, real: str, follow: bool, fd: int) -> None:
        """Hold ``fd`` (on ``real``) for :meth:`take_checked`, closing the one held before."""
        kept, self._kept = self._kept, (real, follow, fd)
        if kept is not None:
            os.close(kept[2])

    def take_checked(self, real: str, follow: bool) -> int | None:
        """See :class:`interposer.ports.Host`: the fd the last :meth:`realpath` opened."""
        kept = self._kept
        if kept is None or kept[0] != real or kept[1] != follow:
            return None
        self._kept = None
        return kept[2]

    def _walk(self, path: str, follow: bool, guest: tuple[int, int] = (0, 0)) -> str:
        """Resolve what exists of ``path`` component by component, following symlinks.

        Used when the path does not (fully) exist: the result is the real path of
        its longest existing prefix plus the rest as written, so that a host
        symlink into the synthetic mount (``/tmp/l -> /data/x``), whose target
        the host cannot open, still names ``/data/x`` for the caller. Used too
        when the walk meets a magic link or ``/proc/self``: those are resolved in
        the guest's context (``guest``), as the kernel would for it.
        """
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        cur = ""
        links = 0
        while todo:
            comp = todo.pop()
            if comp == "..":
                cur = cur.rpartition("/")[0]
                continue
            candidate = f"{cur}/{comp}"
            try:
                st = os.lstat(candidate)
            except OSError:
                rest = "/".join(reversed(todo))
                return candidate + ("/" + rest if rest else "")
            if guest[0] and candidate in ("/proc/self", "/proc/thread-self"):
                todo.extend(reversed(_guest_self(candidate, guest).split("/")[2:]))
                cur = "/proc"
                continue
            if stat.S_ISLNK(st.st_mode) and (todo or follow):
                if self._foreign_private(candidate):
                    rest = "/".join(reversed(todo))  # not followed: refused as it is
                    return candidate + ("/" + rest if rest else "")
                links += 1
                if links > 40:
                    return path  # the kernel will say ELOOP
                try:
                    target = os.readlink(candidate)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:  # no longer a symlink (swapped): look again
                        todo.append(comp)
                        continue
                    rest = "/".join(reversed(todo))
                    return candidate + ("/" + rest if rest else "")
                if _NOT_A_PATH.match(target) and candidate.startswith("/proc/"):
                    rest = "/".join(reversed(todo))  # a magic link to a pipe, socket...:
                    return target + ("/" + rest if rest else "")  # what readlink says
                if guest[0]:
                    target = _guest_self(target, guest)
                elif target.startswith(("/proc/self", "/proc/thread-self")):
                    return path  # no guest to resolve it for: let the caller refuse
                if target.startswith("/"):
                    cur = ""
                todo.extend(reversed([c for c in target.split("/") if c and c != "."]))
                continue
            cur = candidate
        return cur or "/"

    def trusted(self, pid: int) -> bool:
        """Whether ``pid`` (a process or any of its threads) is a trusted process.

        A guest's pid answers at once; any other pid that is not known to be
        trusted makes the listeners say who they are now (a restarted agent),
        and is refused while one of them cannot say (nobody listens), or while
        a server the agent named is dead and not yet replaced: fail closed.
        """
        if pid in self.trusted_pids:
            return True
        if self.is_guest(pid):
            return False
        also = self.also_trusted() if self._learn() else None
        if also is None:
            return True
        group = self.trusted_pids.union(also)
        if pid in group:
            return True
        # A thread of a trusted process (/proc/TID works as /proc/PID does): a stat
        # per trusted process costs less than reading the pid's status file.
        return any(os.path.exists(f"/proc/{tp}/task/{pid}") for tp in group)

    def outsider(self, pid: int) -> bool:
        """See :class:`~interposer.ports.Host`: a pid that is gone is no outsider (the
        kernel's ESRCH), nor a zombie (a guest's child that has exited, not yet
        waited for: it is no longer a guest here, and a signal does nothing to it)."""
        return not self.is_guest(pid) and abi.pid_running(pid)

    def _learn(self) -> bool:
        """Trust whoever serves the trusted sockets now; False when one has no listener."""
        known = True
        for listener in self.listeners:
            old = listener.pid
            pid = listener.current()
            if pid is None:
                known = False
            elif pid != old:
                self.trusted_pids.add(pid)
                if old is not None and not abi.pid_alive(old):
                    self.trusted_pids.discard(old)  # its pid may come back as a guest's
        return known

    def supervisor_group(self, pid: int, target: int) -> bool:
        """Whether kill(``target`` <= 0) by ``pid`` names the supervisor's own group
        (the guest shares it, so that the terminal's Ctrl-C reaches both)."""
        try:
            group = os.getpgid(pid) if target == 0 else -target
        except OSError:
            return False
        return group == os.getpgrp()

    def survives(self, sig: int) -> bool:
        """Whether this process catches or ignores ``sig`` (``synthfs run`` catches
        SIGTSTP and ignores SIGTTOU: it stops only after its guests have)."""
        return sig != signal.SIGSTOP and signal.getsignal(sig) not in (signal.SIG_DFL, None)

    def trusted_group(self, pgid: int) -> bool:
        """See :class:`~interposer.ports.Host`."""
        self._learn()
        me = os.getpid()
        for pid in self.trusted_pids.union(self.also_trusted() or ()):
            if pid != me:
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == pgid:
                        return True
        return False

    def foreign_group(self, pgid: int, own: bool = False) -> bool:
        """See :class:`~interposer.ports.Host`: the agent's or the server's group (asked
        first, as it may be away), or any group with a live member that is no guest.
        ``own``: the supervisor's group (the supervisor itself not counted)."""
        if not own and self.trusted_group(pgid):
            return True
        me = os.getpid()
        return any(not self.is_guest(pid) and pid != me for pid in _members(pgid))

    def group_of(self, pid: int) -> int:
        return os.getpgid(pid)

    def signal_guests(self, pgid: int, sig: int) -> None:
        """See :class:`~interposer.ports.Host`."""
        for pid in _members(pgid):
            if self.is_guest(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)

    def refuse_more(self, refused: Iterable[str]) -> None:
        """Refuse ``refused`` too (each by its real path and the symlinks on its way)."""
        roots = set(self.refused_roots)
        for path in refused:
            if path:
                roots.add(os.path.realpath(path))
                roots.update(links_on(path))
        self.refused_roots = tuple(sorted(roots))
        #: what is below a refused root starts with one of these (one startswith per check)
        self._refused_below = tuple(root + "/" for root in self.refused_roots)

    def holds_refused(self, real_path: str) -> bool:
        """Whether ``real_path`` is a refused root or a directory above one."""
        if real_path == "/":
            return True
        prefix = real_path.rstrip("/") + "/"
        return any(root == real_path or root.startswith(prefix) for root in self.refused_roots)

    def refused(self, real_path: str) -> bool:
        if PRIVATE_DIR.search(real_path):
            return True  # any run's private directory (a guest spoke to another run's agent)
        if real_path.startswith(self._refused_below) or real_path in self.refused_roots:
            return True
        if real_path.startswith("/proc/"):
            if _MEM.match(real_path):
                return True
            if self._foreign_private(real_path):
                return True
            m = _PROC_PID.match(real_path)
            if m and self.trusted(int(m.group(1))):
                return True
        return False

    def _foreign_private(self, path: str) -> bool:
        """Whether ``path`` is a guarded part of ``/proc/PID`` (its memory, environment,
        fds, cwd, root...) of a process that is not a guest of this run: another run's
        agent or server, or any process of the user outside the sandbox."""
        m = _PROC_PRIVATE.match(path)
        return m is not None and not self.is_guest(int(m.group(1)))

    # -- placeholders -------------------------------------------------------------------------

    def placeholder_root(self) -> str:
        return self._dirs

    def new_dir_handle(self, repo_path: str, symlink: bool = False) -> str:
        self._next += 1
        if self._next % _GC_EVERY == 0:
            self._collect()
        path = os.path.join(self._dirs, str(self._next))
        if symlink:
            os.symlink("synthfs-placeholder", path)
        else:
            os.mkdir(path, 0o500)
        self._handles[path] = DirHandle(repo_path)
        return path

    def dir_handle(self, host_path: str) -> DirHandle | None:
        return self._handles.get(host_path)

    def _collect(self) -> None:
        """Remove placeholders no guest holds any more."""
        if self.live_fd_targets is None:
            return
        try:
            live = set(self.live_fd_targets())
        except OSError:
            return  # a guest's fds cannot be read: any placeholder may be one of them
        # The newest handles may be in flight (created, not yet opened by the guest).
        recent = {
            os.path.join(self._dirs, str(n)) for n in range(self._next - _KEEP, self._next + 1)
        }
        for path in [p for p in self._handles if p not in live and p not in recent]:
            del self._handles[path]
            with contextlib.suppress(OSError):
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.private_dir, ignore_errors=True)
