"""The local-directory backend: a repository is a directory on this host.

Trusts nothing in the paths it gets. The root directory is opened once as a
file descriptor and every path is resolved *beneath* it with ``openat2``
(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), or, where
``openat2`` is missing, by a component walk with ``O_NOFOLLOW`` on each
step. The server never follows a symlink: a symlink inside the repository is
an object (stat, readlink and list show it), and a path that goes *through*
one fails with ELOOP or ENOTDIR, so a symlink pointing outside the root
cannot be used to reach anything outside it. Operations then act on the
final name relative to its parent directory's fd, never on a full host path.

Writes are whole-object and atomic. The protocol sends upload chunks before
the destination path (UploadChunk has no path), so chunks are staged in the
server's *state directory*: never inside the served tree (the repository is
the user's, and shows exactly what the programs wrote), always on the same
mount as the root, so that the final rename is atomic (checked at start-up:
:class:`StateDirError` names both paths). Commit fsyncs the staged file,
renames it over the destination (a new inode, so a new version) and fsyncs
the destination directory. A crash at any point leaves the old or the new
version. The state directory is emptied at start-up, except a journal of
recent commits that keeps a commit resent after a restart idempotent.
Uncommitted uploads hold at most ``staged_max`` bytes together (4 GiB; a
chunk beyond gets ENOSPC) and one idle for ``upload_idle_s`` (10 min) is
dropped at the next upload request. No name in the repository is reserved. A
root on a read-only mount needs no state directory: it is served for reading,
and every write is EROFS. A destination on another file system mounted below
the root gets EXDEV (not supported).

A file's setuid and setgid bits are never set from the wire (dropped
silently, as a ``nosuid`` mount would ignore them): the repository is a
host directory, where such a file would run as the server's user.

Truncation (SetAttr.size) of a file up to ``atomic_truncate_max`` bytes is
atomic the same way (copy the kept prefix into a staged file, rename); a
larger file is truncated in place (ftruncate + fsync).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import stat
import threading
import time

import attrs as attrs_mod

from synthfs.protocol.codec import build
from synthfs.protocol.messages import CHUNK_SIZE, Attrs, DirEntry, FileKind, RenameFlags
from synthfs.server.backends.base import Backend, Entries, oserror, split_path
from synthfs.server.statedir import default_state_dir, repo_id_of

__all__ = [
    "LocalBackend",
    "StateDirError",
    "attrs_from_stat",
    "version_of",
]

log = logging.getLogger(__name__)

_JOURNAL = "committed.journal"
_JOURNAL_READ_MAX = 4 * 1024 * 1024
_UPLOAD_IDLE_S = 600.0
#: Bytes all uncommitted uploads may hold in staging together (a key holder that never
#: commits fills no more than this); a chunk beyond it gets ENOSPC.
_STAGED_MAX = 4 * 1024**3
#: Idle uploads are looked for at most this often (on the next upload request).
_EXPIRE_EVERY_S = 10.0
_COMMITTED_MEMORY = 10_000
_MAX_UPLOAD_SIZE = 2**50
#: Mode bits a wire request may not set on a file: the repository is a host directory,
#: and a setuid or setgid file there would run as the server's user (often root).
_SETID = stat.S_ISUID | stat.S_ISGID

# -- syscalls Python does not wrap ---------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64", "riscv64") else None
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(platform.machine())


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    assert _SYS_OPENAT2 is not None
    how = _OpenHow(flags, 0, resolve)
    raw = os.fsencode(path)
    for _ in range(16):  # EAGAIN: a concurrent rename raced the lookup; retry
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise oserror(err, path)
    raise oserror(errno.EAGAIN, path)


def _openat2_works() -> bool:
    if _SYS_OPENAT2 is None:
        return False
    try:
        os.close(_openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0))  # AT_FDCWD
    except OSError:
        return False
    return True


def _renameat2(olddir: int, old: str, newdir: int, new: str, flags: int) -> None:
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddir, dst_dir_fd=newdir)
        return
    fn = getattr(_libc, "renameat2", None)
    args = (ctypes.c_int(olddir), ctypes.c_char_p(os.fsencode(old)),
            ctypes.c_int(newdir), ctypes.c_char_p(os.fsencode(new)), ctypes.c_uint(flags))
    if fn is not None:
        rc = fn(*args)
    elif _SYS_RENAMEAT2 is not None:
        rc = _libc.syscall(ctypes.c_long(_SYS_RENAMEAT2), *args)
    else:
        raise oserror(errno.EINVAL, "renameat2 flags are not supported here")
    if rc != 0:
        raise oserror(ctypes.get_errno(), f"{old} -> {new}")


# -- attributes ------------------------------------------------------------------------


def version_of(st: os.stat_result) -> str:
    """The etag of an object: inode, mtime, ctime and size (any content change moves one)."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}-{st.st_size:x}"


def _kind(st: os.stat_result) -> FileKind | None:
    if stat.S_ISREG(st.st_mode):
        return FileKind.FILE
    if stat.S_ISDIR(st.st_mode):
        return FileKind.DIR
    if stat.S_ISLNK(st.st_mode):
        return FileKind.SYMLINK
    return None


def _attrs_values(st: os.stat_result, kind: FileKind) -> list[object]:
    """The fields of ``Attrs`` in order (checked by :func:`protocol.codec.build`)."""
    return [kind, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, st.st_nlink, version_of(st), st.st_blocks]


def attrs_from_stat(st: os.stat_result) -> Attrs:
    """Wire attributes of a stat result; a FIFO, socket or device is EACCES (not served)."""
    kind = _kind(st)
    if kind is None:
        raise oserror(errno.EACCES, "special files are not served")
    return build(Attrs, *_attrs_values(st, kind))  # checked, at a third of Attrs(...)'s cost


# -- the state directory ---------------------------------------------------------------


class StateDirError(OSError):
    """The state directory cannot hold this root's staging (the message says why and how)."""


def _mount_id(fd: int) -> int | None:
    """The mount a file descriptor is on (``mnt_id`` of its fdinfo), None if unknown."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_only_mount(fd: int) -> bool:
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


@attrs_mod.define
class _Upload:
    name: str
    ranges: list[tuple[int, int]] = attrs_mod.field(factory=list)
    last_used: float = attrs_mod.field(factory=time.monotonic)
    lock: threading.Lock = attrs_mod.field(factory=threading.Lock)
    done: bool = False
    staged: int = 0  # bytes written to its staged file (counted against the bound)

    def add(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (start, end)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.ranges = merged

    def covers(self, size: int) -> bool:
        if size == 0:
            return all(a == b for a, b in self.ranges) or self.ranges == [(0, 0)]
        return self.ranges == [(0, size)]


class LocalBackend(Backend):
    """A repository served from the local directory ``root``.

    ``state`` is the server's state directory for this root (staging and the
    commit journal): created 0700 when missing, never inside ``root``, on the
    same mount as ``root``; :func:`default_state_dir` when None. It is not
    used (nor created) when ``root`` is on a read-only mount.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state: str | os.PathLike[str] | None = None,
        use_openat2: bool | None = None,
        atomic_truncate_max: int = 64 * 1024 * 1024,
        staged_max: int = _STAGED_MAX,
        upload_idle_s: float = _UPLOAD_IDLE_S,
    ) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir("/proc/self/fd"):
            # Reopening an O_PATH fd (read, chmod, utimes) goes through /proc/self/fd.
            raise oserror(errno.ENOSYS, "the local backend needs /proc mounted")
        self.repo_id = repo_id_of(self.root)
        self._openat2 = _openat2_works() if use_openat2 is None else use_openat2
        self._atomic_truncate_max = atomic_truncate_max
        self._staged_max = staged_max
        self._staged = 0  # bytes held by uncommitted uploads, under self._lock
        self._upload_idle_s = upload_idle_s
        self._next_expiry = 0.0
        self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_dev = os.fstat(self._root_fd).st_dev
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        self._committed: collections.OrderedDict[str, tuple[str, Attrs]] = collections.OrderedDict()
        self.read_only = _read_only_mount(self._root_fd)
        self.state: str | None = None
        self._staging_fd = self._journal_fd = -1
        if not self.read_only:
            self.state = os.path.realpath(state if state is not None
                                          else default_state_dir(self.root))
            try:
                self._staging_fd = self._open_staging(self.state)
                self._clean_staging()
                self._journal_fd = self._load_journal()
            except BaseException:
                self.close()
                raise
        log.info("local backend on %s (repo %s, %s)", self.root, self.repo_id,
                 "openat2" if self._openat2 else "O_NOFOLLOW walk")

    def __repr__(self) -> str:
        return f"LocalBackend({self.root!r})"

    def close(self) -> None:
        for fd in (self._journal_fd, self._staging_fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self._staging_fd = self._root_fd = -1

    # -- staging -----------------------------------------------------------------------

    def _open_staging(self, state: str) -> int:
        """Open (make) the state directory; refuse one the staging cannot use.

        Refused: a directory inside the served tree (it would show there), and
        one on another mount than the root (rename(2) would say EXDEV, so no
        commit could be atomic).
        """
        if state == self.root or state.startswith(self.root.rstrip("/") + "/"):
            raise StateDirError(
                errno.EINVAL,
                f"the state directory {state} is inside the served directory {self.root}: "
                "choose one outside it with --state DIR")
        made = not os.path.lexists(state)
        old = os.umask(0o077)
        try:
            os.makedirs(state, 0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                exc.errno or errno.EIO,
                f"cannot make the state directory {state} ({exc.strerror}): "
                "choose another with --state DIR") from None
        finally:
            os.umask(old)
        fd = os.open(state, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        same = st.st_dev == self._root_dev and _mount_id(fd) == _mount_id(self._root_fd)
        if not same:
            os.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(state)
            raise StateDirError(
                errno.EXDEV,
                f"the state directory {state} is not on the same mount as the served "
                f"directory {self.root}, so uploads could not be renamed into place "
                "atomically: pass --state DIR with a directory on the same file system "
                "(and mount) as the root, outside it" + (
                    f" ({self.root} is a mount point, so there is none: serve a directory "
                    "inside it, or mount it read-only to serve it for reading)"
                    if os.path.ismount(self.root) else ""))
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise StateDirError(errno.EPERM, f"the state directory {state} belongs to another "
                                "user: choose another with --state DIR")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # staged uploads are repository data
        return fd

    def _clean_staging(self) -> None:
        """Remove every staged file left by a previous run (crash or kill)."""
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._staging_fd)
        try:
            names = os.listdir(dfd)
        finally:
            os.close(dfd)
        for name in names:
            if name == _JOURNAL:
                continue
            try:
                os.unlink(name, dir_fd=self._staging_fd)
                log.info("removed stale staged file %s", name)
            except OSError as exc:
                log.warning("cannot remove stale staged entry %s: %s", name, exc.strerror)

    def _load_journal(self) -> int:
        """Reload the ids of recent commits, so a commit resent after a restart is idempotent.

        The journal is ``STATE/committed.journal``: one line per commit,
        ``staged-name <TAB> JSON [path, attrs...]``, appended without fsync (a
        lost line only turns a resent commit into EIO: the agent uploads again).
        At start-up the newest ``_COMMITTED_MEMORY`` lines are kept.
        """
        lines: list[bytes] = []
        try:
            fd = os.open(_JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self._staging_fd)
        except FileNotFoundError:
            pass
        else:
            try:
                size = os.fstat(fd).st_size
                start = max(0, size - _JOURNAL_READ_MAX)
                lines = os.pread(fd, size - start, start).split(b"\n")
                if start:
                    lines = lines[1:]  # a partial first line
            finally:
                os.close(fd)
        for line in lines[-_COMMITTED_MEMORY:]:
            try:
                key, raw = line.decode().split("\t", 1)
                path, *fields = json.loads(raw)
                self._committed[key] = (path, Attrs(*fields))
            except (ValueError, TypeError):
                continue  # a torn last line, or garbage: ignore it
        tmp = _JOURNAL + ".new"
        text = b"".join(self._journal_line(k, p, a) for k, (p, a) in self._committed.items())
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=self._staging_fd)
            try:
                if os.write(out, text) != len(text):
                    raise oserror(errno.ENOSPC, "short write")
            finally:
                os.close(out)
            os.rename(tmp, _JOURNAL, src_dir_fd=self._staging_fd, dst_dir_fd=self._staging_fd)
        except OSError as exc:
            # A full disk must not stop the server from serving what it holds: keep
            # the journal uncompacted (it is read tolerantly), or go without one.
            log.warning("commit journal not rewritten: %s", exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._staging_fd)
        try:
            return os.open(_JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=self._staging_fd)
        except OSError as exc:
            log.warning("no commit journal: %s", exc.strerror)
            return -1

    @staticmethod
    def _journal_line(key: str, path: str, a: Attrs) -> bytes:
        fields = [path, a.kind.value, a.size, a.mode, a.mtime_ns, a.ctime_ns, a.ino, a.nlink,
                  a.version, a.blocks]
        return f"{key}\t{json.dumps(fields)}\n".encode()

    def _remember_commit(self, key: str, path: str, result: Attrs) -> None:
        """Under self._lock: remember a commit in memory and in the journal."""
        self._committed[key] = (path, result)
        while len(self._committed) > _COMMITTED_MEMORY:
            self._committed.popitem(last=False)
        try:
            os.write(self._journal_fd, self._journal_line(key, path, result))
        except OSError as exc:
            log.warning("commit journal: %s", exc.strerror)

    def _resent_commit(self, key: str, path: str) -> Attrs:
        """Under self._lock: the answer to a commit of an upload already committed.

        A resend of the same commit gets the same answer; a commit naming another
        path gets an error, not the other path's attributes (nothing was written).
        """
        done_path, result = self._committed[key]
        if split_path(done_path) != split_path(path):
            raise oserror(errno.EEXIST, "this upload was committed to another path")
        return result

    @staticmethod
    def _staged_name(upload_id: str) -> str:
        return "up-" + hashlib.sha256(upload_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def _new_staged(self, name: str) -> int:
        if self._staging_fd < 0:
            raise oserror(errno.EROFS, "the repository is on a read-only mount")
        return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600, dir_fd=self._staging_fd)

    # -- resolution --------------------------------------------------------------------

    def _open(self, parts: tuple[str, ...], flags: int) -> int:
        """Open ``parts`` beneath the root, following no symlink anywhere."""
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW
        if not parts:
            return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=self._root_fd)
        if self._openat2:
            return _openat2(self._root_fd, "/".join(parts), flags,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.open(parts[-1], flags, dir_fd=fd)
        finally:
            os.close(fd)

    def _parent(self, path: str) -> tuple[int, str, tuple[str, ...]]:
        """(fd of the parent directory (O_PATH), final name, all parts); root is EBUSY."""
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EBUSY, "the repository root")
        return self._open(parts[:-1], os.O_PATH | os.O_DIRECTORY), parts[-1], parts

    @staticmethod
    def _fsync_dir(dir_fd: int) -> None:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _reopen(fd: int, flags: int) -> int:
        """Reopen an O_PATH fd with real access (same inode, no path lookup)."""
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)

    def _check_dev(self, dir_fd: int) -> None:
        if os.fstat(dir_fd).st_dev != self._root_dev:
            raise oserror(errno.EXDEV, "another file system below the root")

    # -- reads -------------------------------------------------------------------------

    def stat(self, path: str) -> Attrs:
        parts = split_path(path)
        if not parts:
            return attrs_from_stat(os.fstat(self._root_fd))
        if len(parts) == 1:  # one name in the root: no walk, no extra fd
            return attrs_from_stat(os.stat(parts[0], dir_fd=self._root_fd, follow_symlinks=False))
        pfd = self._open(parts[:-1], os.O_PATH | os.O_DIRECTORY)
        try:
            return attrs_from_stat(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(pfd)

    def list(self, path: str) -> tuple[Attrs, Entries]:
        parts = split_path(path)
        fd = self._open(parts, os.O_RDONLY | os.O_DIRECTORY)
        try:
            own = attrs_from_stat(os.fstat(fd))
            entries: Entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    name = entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    kind = _kind(st)
                    if kind is None:
                        continue  # FIFO, socket, device: not served
                    entries.append(build(DirEntry, name, _attrs_values(st, kind)))
        finally:
            os.close(fd)
        entries.sort(key=lambda e: e.name)
        return own, entries

    def read(
        self, path: str, offset: int, length: int, version: str = ""
    ) -> tuple[bytes, bool, str]:
        if not 0 <= length <= CHUNK_SIZE:
            raise oserror(errno.EINVAL, "read length")
        pfd = self._open(split_path(path), os.O_PATH)
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise oserror(errno.EISDIR)
            if stat.S_ISLNK(st.st_mode):
                raise oserror(errno.ELOOP)
            if not stat.S_ISREG(st.st_mode):
                raise oserror(errno.EACCES, "special files are not served")
            fd = self._reopen(pfd, os.O_RDONLY | os.O_NONBLOCK)
        finally:
            os.close(pfd)
        try:
            st = os.fstat(fd)
            current = version_of(st)
            if version and version != current:
                raise oserror(errno.ESTALE, "the object changed")
            data = os.pread(fd, length, offset) if length and offset < st.st_size else b""
            eof = offset + len(data) >= st.st_size
            return data, eof, current
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EINVAL)
        pfd = self._open(parts[:-1], os.O_PATH | os.O_DIRECTORY)
        try:
            raw = os.readlink(os.fsencode(parts[-1]), dir_fd=pfd)
        finally:
            os.close(pfd)
        return os.fsdecode(raw)  # bytes that are not UTF-8 travel as they are

    # -- uploads -----------------------------------------------------------------------

    def _expire_uploads(self) -> None:
        """Under self._lock: drop uploads idle for ``upload_idle_s`` (every 10 s at most)."""
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + min(_EXPIRE_EVERY_S, self._upload_idle_s)
        for uid, up in list(self._uploads.items()):
            if now - up.last_used > self._upload_idle_s and not up.lock.locked():
                del self._uploads[uid]
                self._staged -= up.staged
                up.done = True
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(up.name, dir_fd=self._staging_fd)
                log.info("expired idle upload %s", up.name)

    def _release(self, up: _Upload) -> None:
        """Under self._lock: ``up`` left staging (committed, aborted)."""
        self._staged -= up.staged
        up.staged = 0

    def _get_upload(self, upload_id: str, create: bool) -> _Upload | None:
        with self._lock:
            self._expire_uploads()  # on every upload request: idle ones go within 10 s
            up = self._uploads.get(upload_id)
            if up is None and create:
                if self._staging_fd < 0:
                    raise oserror(errno.EROFS, "the repository is on a read-only mount")
                name = self._staged_name(upload_id)
                if name in self._committed:
                    return None  # committed meanwhile: nothing to stage
                with contextlib.suppress(FileNotFoundError):  # left by an aborted run
                    os.unlink(name, dir_fd=self._staging_fd)
                os.close(self._new_staged(name))
                up = self._uploads[upload_id] = _Upload(name=name)
            return up

    def upload_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        if len(data) > CHUNK_SIZE:
            raise oserror(errno.EMSGSIZE)
        if offset + len(data) > _MAX_UPLOAD_SIZE:
            raise oserror(errno.EFBIG)
        up = self._get_upload(upload_id, create=True)
        if up is None:
            return  # a resend after the commit: nothing to do
        with up.lock:
            if up.done:
                return
            with self._lock:
                if self._staged + len(data) > self._staged_max:
                    raise oserror(errno.ENOSPC, "the server's staging area is full "
                                  "(uncommitted uploads)")
                self._staged += len(data)
                up.staged += len(data)
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(up.name, flags, dir_fd=self._staging_fd)
            try:
                view = memoryview(data)
                pos = 0
                while pos < len(view):
                    pos += os.pwrite(fd, view[pos:], offset + pos)
            finally:
                os.close(fd)
            up.add(offset, offset + len(data))
            up.last_used = time.monotonic()

    def upload_abort(self, upload_id: str) -> None:
        with self._lock:
            up = self._uploads.pop(upload_id, None)
            if up is not None:
                self._release(up)
        if up is None:
            return
        with up.lock:
            up.done = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(up.name, dir_fd=self._staging_fd)

    def upload_commit(
        self, upload_id: str, path: str, size: int, mode: int = 0o644, exclusive: bool = False
    ) -> Attrs:
        key = self._staged_name(upload_id)
        with self._lock:
            if key in self._committed:
                return self._resent_commit(key, path)
        pfd, name, _parts = self._parent(path)
        try:
            self._check_dev(pfd)
            up = self._get_upload(upload_id, create=size == 0)
            if up is None:
                with self._lock:
                    if key in self._committed:  # a concurrent resend committed it
                        return self._resent_commit(key, path)
                raise oserror(errno.EIO, "unknown upload (nothing staged)")
            with up.lock:
                with self._lock:
                    if key in self._committed:
                        return self._resent_commit(key, path)
                if not up.covers(size):
                    raise oserror(errno.EIO, f"upload does not match size {size}")
                result: Attrs | None = None
                fd = os.open(up.name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self._staging_fd)
                try:
                    if os.fstat(fd).st_size != size:
                        raise oserror(errno.EIO, f"staged size is not {size}")
                    old: os.stat_result | None
                    try:
                        old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    except FileNotFoundError:
                        old = None
                        new_mode = mode & ~_SETID
                    else:
                        if exclusive:
                            raise oserror(errno.EEXIST)
                        if stat.S_ISDIR(old.st_mode):
                            raise oserror(errno.EISDIR)
                        if stat.S_ISLNK(old.st_mode):
                            raise oserror(errno.ELOOP, "the server does not write through symlinks")
                        new_mode = stat.S_IMODE(old.st_mode)
                    os.fchmod(fd, new_mode)
                    os.fsync(fd)
                    if not exclusive and old is not None and old.st_nlink > 1:
                        # A file of several names: rewrite its one inode in place (a
                        # rename would give this name a new file and split the names).
                        result = self._rewrite_in_place(pfd, name, fd, size)
                        os.unlink(up.name, dir_fd=self._staging_fd)
                    elif exclusive:
                        # link(2) fails (EEXIST) on a name that appeared since the
                        # stat: the exclusive create never replaces anything.
                        os.link(up.name, name, src_dir_fd=self._staging_fd, dst_dir_fd=pfd,
                                follow_symlinks=False)
                        os.unlink(up.name, dir_fd=self._staging_fd)
                    else:
                        os.rename(up.name, name, src_dir_fd=self._staging_fd, dst_dir_fd=pfd)
                    if result is None:
                        self._fsync_dir(pfd)
                        result = attrs_from_stat(os.fstat(fd))
                finally:
                    os.close(fd)
                up.done = True
                with self._lock:
                    self._uploads.pop(upload_id, None)
                    self._release(up)
                    self._remember_commit(key, path, result)
                return result
        finally:
            os.close(pfd)

    def _rewrite_in_place(self, pfd: int, name: str, src: int, size: int) -> Attrs:
        """Copy ``size`` bytes of ``src`` over the regular file ``name`` (same inode)."""
        out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                      | os.O_NOCTTY, dir_fd=pfd)
        try:
            if not stat.S_ISREG(os.fstat(out).st_mode):
                raise oserror(errno.EACCES, "special files are not served")
            done = 0
            while done < size:
                try:
                    n = os.copy_file_range(src, out, size - done, done, done)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                         errno.EOPNOTSUPP):
                        raise
                    # staging on another file system: copy through memory
                    data = os.pread(src, min(size - done, CHUNK_SIZE), done)
                    n = os.pwrite(out, data, done) if data else 0
                if n == 0:
                    raise oserror(errno.EIO, "the staged upload is shorter than its size")
                done += n
            os.ftruncate(out, size)
            os.fsync(out)
            return attrs_from_stat(os.fstat(out))
        finally:
            os.close(out)

    # -- namespace ---------------------------------------------------------------------

    def link(self, src: str, dst: str) -> Attrs:
        sfd, sname, _ = self._parent(src)
        try:
            st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise oserror(errno.EPERM, "hard links to directories")
            if _kind(st) is None:
                raise oserror(errno.EACCES, "special files are not served")
            if not split_path(dst):
                raise oserror(errno.EEXIST)
            dfd, dname, _ = self._parent(dst)
            try:
                self._check_dev(dfd)
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                self._fsync_dir(dfd)
                return attrs_from_stat(os.stat(dname, dir_fd=dfd, follow_symlinks=False))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def mkdir(self, path: str, mode: int = 0o755) -> Attrs:
        if not split_path(path):
            raise oserror(errno.EEXIST)
        pfd, name, _ = self._parent(path)
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=pfd)
            try:
                os.fchmod(fd, mode)
                result = attrs_from_stat(os.fstat(fd))
            finally:
                os.close(fd)
            self._fsync_dir(pfd)
            return result
        finally:
            os.close(pfd)

    def remove(self, path: str, directory: bool = False) -> None:
        pfd, name, _ = self._parent(path)
        try:
            if directory:
                os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
            self._fsync_dir(pfd)
        finally:
            os.close(pfd)

    def rename(self, src: str, dst: str, flags: RenameFlags = RenameFlags.NONE) -> None:
        flags = RenameFlags(flags)
        if flags & ~(RenameFlags.NOREPLACE | RenameFlags.EXCHANGE) or flags == (
            RenameFlags.NOREPLACE | RenameFlags.EXCHANGE
        ):
            raise oserror(errno.EINVAL, "rename flags")
        sfd, sname, _ = self._parent(src)
        try:
            dfd, dname, _ = self._parent(dst)
            try:
                _renameat2(sfd, sname, dfd, dname, int(flags))
                self._fsync_dir(dfd)
                if not os.path.samestat(os.fstat(sfd), os.fstat(dfd)):
                    self._fsync_dir(sfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def symlink(self, target: str, path: str) -> Attrs:
        if not split_path(path):
            raise oserror(errno.EEXIST)
        if "\x00" in target:
            raise oserror(errno.EINVAL, "NUL in link target")
        if not target:
            raise oserror(errno.ENOENT, "empty link target")
        pfd, name, _ = self._parent(path)
        try:
            os.symlink(target, name, dir_fd=pfd)
            self._fsync_dir(pfd)
            return attrs_from_stat(os.stat(name, dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(pfd)

    def setattr(
        self,
        path: str,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> Attrs:
        parts = split_path(path)
        if not parts:
            if size is not None:
                raise oserror(errno.EISDIR)
            fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)
        else:
            fd = self._open(parts, os.O_PATH)
        try:
            st = os.fstat(fd)
            if _kind(st) is None:
                raise oserror(errno.EACCES, "special files are not served")
            if size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise oserror(errno.EISDIR)
                if stat.S_ISLNK(st.st_mode):
                    raise oserror(errno.ELOOP, "the server does not write through symlinks")
                if size != st.st_size:
                    limit = self._atomic_truncate_max
                    if st.st_nlink == 1 and st.st_size <= limit and size <= limit:
                        self._truncate_atomic(path, fd, st, size)
                        # The path now names the new inode. Open it before closing the
                        # old fd: this block owns exactly one fd number at any time, so
                        # a failed reopen (a rename meanwhile) never leaves ``fd`` naming
                        # a number that was closed (and maybe reused by another thread).
                        new_fd = self._open(parts, os.O_PATH)
                        os.close(fd)
                        fd = new_fd
                    else:
                        wfd = self._reopen(fd, os.O_WRONLY | os.O_NONBLOCK)
                        try:
                            os.ftruncate(wfd, size)
                            os.fsync(wfd)
                        finally:
                            os.close(wfd)
            if mode is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise oserror(errno.EOPNOTSUPP, "symlinks have no mode on Linux")
                if stat.S_ISREG(st.st_mode):
                    mode &= ~_SETID
                os.chmod(f"/proc/self/fd/{fd}", mode)
            if atime_ns is not None or mtime_ns is not None:
                cur = os.fstat(fd)
                times = (cur.st_atime_ns if atime_ns is None else atime_ns,
                         cur.st_mtime_ns if mtime_ns is None else mtime_ns)
                if stat.S_ISLNK(st.st_mode):
                    pfd, name, _ = self._parent(path)
                    try:
                        os.utime(name, ns=times, dir_fd=pfd, follow_symlinks=False)
                    finally:
                        os.close(pfd)
                else:
                    os.utime(f"/proc/self/fd/{fd}", ns=times)
            return attrs_from_stat(os.fstat(fd))
        finally:
            os.close(fd)

    def _truncate_atomic(self, path: str, fd: int, st: os.stat_result, size: int) -> None:
        """Install a copy of the first ``size`` bytes (zero-extended) in one rename."""
        pfd, name, _ = self._parent(path)
        try:
            self._check_dev(pfd)
            staged = self._staged_name("truncate-" + os.urandom(8).hex())
            out = self._new_staged(staged)
            try:
                src = self._reopen(fd, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    done, want = 0, min(size, st.st_size)
                    while done < want:
                        n = os.copy_file_range(src, out, want - done, done, done)
                        if n == 0:
                            break
                        done += n
                finally:
                    os.close(src)
                os.ftruncate(out, size)
                os.fchmod(out, stat.S_IMODE(st.st_mode))
                os.fsync(out)
                os.rename(staged, name, src_dir_fd=self._staging_fd, dst_dir_fd=pfd)
                self._fsync_dir(pfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(staged, dir_fd=self._staging_fd)
                raise
            finally:
                os.close(out)
        finally:
            os.close(pfd)
