"""The agent's local content cache: one host file per repository path, an index, LRU.

Trusts: only the agent that owns it. The cache directory is private to the
agent's user (0700); the interposer refuses its whole root to every guest, so
guests reach cache files only through fds the interposer opened for them.

Layout under the cache root::

    <root>/<repo_dir>/lock            flock: one agent per cache directory at a time
    <root>/<repo_dir>/index.sqlite    path -> server attrs (version), recorded stat, dirty, LRU
                                      (a path that is not UTF-8 is kept as a BLOB of its bytes)
    <root>/<repo_dir>/objects/<h>     h = sha256(path)[:40]: the one local copy of path
    <root>/<repo_dir>/tmp/            fetches land here, then are renamed into objects/
    <root>/<repo_dir>/snaps/<n>       write-back: a closed version kept aside while its
                                      copy is written again (agent/writeback.py names them)

``repo_dir`` is the server's repo id (made file-name safe). When another agent
holds the lock on it (two runs at once on one machine), the cache uses
``<repo_dir>.2``, ``.3``, ... so parallel runs never share files.

A local copy is *dirty* when a guest changed it since it was last fetched or
uploaded: its (size, mtime_ns, ctime_ns, ino) differ from the ones recorded
then, or the agent flagged it (a local truncation, a pending creation).
Dirty copies are never evicted; clean ones are evicted least recently used
first when the total size exceeds the bound (the total is tracked from the
recorded sizes, and recounted from the files before evicting). What a guest
has open: a copy open for writing is *pinned* until its commit, and a copy an
interposer holds a lease on is spared (``evict(spare=...)``), so neither is
evicted; a copy open only for reading without a lease is not known to the
agent and may be evicted: eviction unlinks it, the guest's fd keeps reading
the same inode, and its space returns when that fd is closed.

The index is an SQLite table, one row per local copy, written at once on
every change of content state (one small upsert, no fsync: the cache can be
rebuilt, and a lost row only makes a copy cold) and lazily for LRU touches.
It survives restarts, so a second run starts warm. A row whose recorded stat
no longer matches its file at the next start is a dirty copy (a guest wrote
it and the agent stopped before uploading): ``Sync`` uploads it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from synthfs.agent import default_cache_dir
from synthfs.linux import syncfs
from synthfs.protocol.codec import build
from synthfs.protocol.leases import Signature, signature
from synthfs.protocol.messages import Attrs
from synthfs.protocol.naming import name_from_wire, object_name, wire_name

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "ContentCache",
    "Entry",
    "Signature",
    "default_cache_dir",
    "object_name",
    "parse_size",
    "signature",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 1 << 30
_SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    path TEXT PRIMARY KEY,
    attrs TEXT NOT NULL,      -- JSON array, Attrs fields in order
    recorded TEXT NOT NULL,   -- JSON [size, mtime_ns, ctime_ns, ino]
    dirty INTEGER NOT NULL,
    used REAL NOT NULL
)
"""
_ATTR_FIELDS = tuple(f.name for f in attrs.fields(Attrs))
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1073741824``, ``512M``, ``10G``, ``1.5GiB`` (K, M, G, T are
    powers of 1024, as du and ls -h mean them). ValueError for anything else, or 0."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or e.g. 512M, 10G)")
    n = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    if n <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return n


# A signature (protocol.leases') in the index's ``recorded`` column, which keeps its own
# order (size, mtime_ns, ctime_ns, ino) so that the caches already on disk stay warm.
def _recorded_of(sig: Signature) -> list[int]:
    ino, size, mtime_ns, ctime_ns = sig
    return [size, mtime_ns, ctime_ns, ino]


def _signature_of(recorded: list[int]) -> Signature:
    size, mtime_ns, ctime_ns, ino = recorded
    return (ino, size, mtime_ns, ctime_ns)


def _size(sig: Signature) -> int:
    return sig[1]


@attrs.define
class Entry:
    """What the cache knows about the local copy of one repository path."""

    path: str
    attrs: Attrs  # the server's attributes when the copy was last fetched/uploaded
    recorded: Signature  # the local file's signature then
    dirty: bool = False  # forced dirty (local truncate / creation not uploaded)
    used: float = 0.0  # LRU clock (time.time())
    pinned: bool = False  # open for writing: not evictable until committed (memory only)

    @property
    def version(self) -> str:
        return self.attrs.version


def _check_ours(st: os.stat_result, shown: str, is_kind: Callable[[int], bool]) -> None:
    """Refuse a cache file or directory another user owns or may write (PermissionError)."""
    if not is_kind(st.st_mode):
        raise PermissionError(errno.EPERM, f"{shown} is not a regular "
                              f"{'directory' if is_kind is stat.S_ISDIR else 'file'}")
    # A file's mode does not matter: its directory (checked) is 0700.
    loose = is_kind is stat.S_ISDIR and stat.S_IMODE(st.st_mode) & 0o077
    if st.st_uid != os.getuid() or loose:
        raise PermissionError(
            errno.EPERM,
            f"{shown} must be owned by this user"
            f"{' with mode 0700' if is_kind is stat.S_ISDIR else ''} "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): "
            "refusing a cache directory someone else made",
        )


@contextlib.contextmanager
def _as_oserror() -> Iterator[None]:
    """An index write that fails (its disk is full) is an OSError like any other write."""
    try:
        yield
    except sqlite3.Error as exc:
        full = "full" in str(exc)
        raise OSError(errno.ENOSPC if full else errno.EIO, f"cache index: {exc}") from None


def _repo_dir_name(repo_id: str) -> str:
    if _SAFE.fullmatch(repo_id) and repo_id not in (".", ".."):
        return repo_id
    return hashlib.sha256(repo_id.encode()).hexdigest()[:32]


class ContentCache:
    """The local copies of one repository; see the module docstring."""

    def __init__(self, root: str, repo_id: str, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        self.root = os.path.abspath(root)
        self.repo_id = repo_id
        self.max_bytes = max_bytes
        os.makedirs(os.path.dirname(self.root), mode=0o700, exist_ok=True)
        # Every directory below is checked as the socket's directory is (ours, 0700, not a
        # symlink) and opened relative to its verified parent's fd with O_NOFOLLOW: a cache
        # another user made, or a symlink planted in it, is refused before anything is
        # read from it or written through it.
        self._fds: list[int] = []
        self._lock_fd = -1
        try:
            self._open_dirs(repo_id, root)
        except BaseException:
            for fd in self._fds:  # a refused directory: nothing stays open
                os.close(fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise
        self._entries: dict[str, Entry] = {}
        self._touched: set[str] = set()
        self._bytes = 0  # sum of recorded sizes
        self._db = self._open_db()
        self._load()

    def _open_dirs(self, repo_id: str, root: str) -> None:
        """Open (making them if needed) and check every directory below the root."""
        root_fd = self._private_dir(None, self.root)
        base = _repo_dir_name(repo_id)
        for n in range(1, 17):
            name = base if n == 1 else f"{base}.{n}"
            dir_fd = self._private_dir(root_fd, name)
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                _check_ours(os.fstat(fd), os.path.join(self.root, name, "lock"), stat.S_ISREG)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
            self._dir_fd = dir_fd
            self.dir = os.path.join(self.root, name)
            break
        else:
            raise OSError(errno.EBUSY, f"all cache directories for {repo_id!r} in {root} are busy")
        self.objects = os.path.join(self.dir, "objects")
        self.tmp = os.path.join(self.dir, "tmp")
        self.index_path = os.path.join(self.dir, "index.sqlite")
        self._objects_fd = self._private_dir(self._dir_fd, "objects")
        self._tmp_fd = self._private_dir(self._dir_fd, "tmp")
        self.snaps_fd = self._private_dir(self._dir_fd, "snaps")
        for suffix in ("", "-wal", "-shm", "-journal"):  # sqlite opens these by name
            try:
                st = os.stat("index.sqlite" + suffix, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            _check_ours(st, self.index_path + suffix, stat.S_ISREG)

    def _private_dir(self, dir_fd: int | None, name: str) -> int:
        """Make (0700) or open the directory ``name`` below ``dir_fd``: ours, 0700, no symlink."""
        shown = name if dir_fd is None else os.path.join(self.root, name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PermissionError(errno.EPERM, f"{shown} is a symlink or not a directory: "
                                      "a cache directory must be a real directory") from None
            raise
        try:
            _check_ours(os.fstat(fd), shown, stat.S_ISDIR)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)
        return fd

    def open_object(self, path: str, flags: int = os.O_RDONLY) -> int:
        """An fd on the local copy of ``path``, opened below the verified objects directory."""
        return os.open(object_name(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=self._objects_fd)

    def open_snap(self, name: str, flags: int = os.O_RDONLY) -> int:
        """An fd on the kept-aside version ``name`` (write-back), below the verified snaps dir."""
        if not _SAFE.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"bad snapshot name {name!r}")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.snaps_fd)

    def unlink_snap(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.snaps_fd)

    def snaps(self) -> list[str]:
        return os.listdir(self.snaps_fd)

    def sync_snaps_dir(self) -> None:
        """fsync the snaps directory: a version kept aside keeps its name after a crash."""
        os.fsync(self.snaps_fd)

    def sync_objects(self) -> None:
        """Flush every copy (and the objects directory) at once: ``syncfs`` of the cache's
        file system, one flush where each copy's ``fdatasync`` would be one per copy."""
        syncfs(self._objects_fd)

    def sync_objects_dir(self) -> None:
        """fsync the objects directory: a copy renamed into it keeps its name after a crash."""
        os.fsync(self._objects_fd)

    def close(self) -> None:
        """Save LRU times, close the index and release the directory lock."""
        if self._lock_fd >= 0:
            self.flush_touches()
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def _open_db(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.index_path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_SCHEMA)
            return db
        except sqlite3.DatabaseError as exc:
            log.warning("cache index %s unusable (%s): starting cold", self.index_path, exc)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.index_path + suffix)
            db = sqlite3.connect(self.index_path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_SCHEMA)
            return db

    # -- index ----------------------------------------------------------------------

    def _load(self) -> None:
        for name in os.listdir(self._tmp_fd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._tmp_fd)
        # Start-up cost of every agent (a warm 10,000-copy cache took ~1 s under load):
        # one listing of the objects instead of a stat per row, one hash per row, and
        # the codec's checked build of Attrs (a third of the validators' cost).
        present = set(os.listdir(self._objects_fd))
        known = set()
        bad = []
        for path, a, rec, dirty, used in self._db.execute(
                "SELECT path, attrs, recorded, dirty, used FROM copies"):
            try:
                rec_values = [int(x) for x in json.loads(rec)]
                if len(rec_values) != 4:
                    raise ValueError("recorded")
                values = json.loads(a)
                if not isinstance(values, list):
                    raise ValueError("attrs")
                e = Entry(
                    path=name_from_wire(path),  # a path that is not UTF-8 is a BLOB
                    attrs=build(Attrs, *values),
                    recorded=_signature_of(rec_values),
                    dirty=bool(dirty),
                    used=float(used),
                )
            except (ValueError, TypeError) as exc:
                log.warning("cache index: dropping the row of %r (%s)", path, exc)
                bad.append(path)
                continue
            name = object_name(e.path)
            if name in present:
                self._entries[e.path] = e
                self._bytes += _size(e.recorded)
                known.add(name)
            else:
                bad.append(path)
        for path in bad:
            self._db.execute("DELETE FROM copies WHERE path = ?", (path,))
        # A closed file the write-back journal (synced) names outlives a lost index row
        # (not synced): it stays, dirty, for the journal's upload.
        from synthfs.agent.writeback import queued_paths  # (it imports this module)

        for path in queued_paths(self.dir):
            name = object_name(path)
            if name in present and path not in self._entries:
                st = os.stat(name, dir_fd=self._objects_fd, follow_symlinks=False)
                a = Attrs(kind="file", size=st.st_size, mode=0o644, mtime_ns=st.st_mtime_ns,
                          ctime_ns=st.st_ctime_ns, ino=0)
                self._entries[path] = Entry(path=path, attrs=a, recorded=signature(st),
                                            dirty=True, used=time.time())
                self._put(self._entries[path])
                self._bytes += st.st_size
                known.add(name)
                log.warning("cache: the index had lost %s, which is queued for upload: kept",
                            path)
        for name in present:
            if name not in known:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._objects_fd)
        log.info("cache %s: %d local copies", self.dir, len(self._entries))

    def _put(self, e: Entry) -> None:
        a = [str(v) if f == "kind" else v
             for f, v in zip(_ATTR_FIELDS, attrs.astuple(e.attrs, recurse=False), strict=True)]
        with _as_oserror():
            self._db.execute(
                "INSERT OR REPLACE INTO copies (path, attrs, recorded, dirty, used) "
                "VALUES (?, ?, ?, ?, ?)",
                (wire_name(e.path), json.dumps(a), json.dumps(_recorded_of(e.recorded)),
                 int(e.dirty), e.used),
            )
        self._touched.discard(e.path)

    def _delete(self, path: str) -> None:
        with _as_oserror():
            self._db.execute("DELETE FROM copies WHERE path = ?", (wire_name(path),))
        self._touched.discard(path)

    def flush_touches(self) -> None:
        """Write the LRU times that changed since the last flush."""
        if not self._touched:
            return
        rows = [(self._entries[p].used, wire_name(p)) for p in self._touched
                if p in self._entries]
        self._db.execute("BEGIN")
        self._db.executemany("UPDATE copies SET used = ? WHERE path = ?", rows)
        self._db.execute("COMMIT")
        self._touched.clear()

    # -- entries --------------------------------------------------------------------

    def object_path(self, path: str) -> str:
        return os.path.join(self.objects, object_name(path))

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def touch(self, entry: Entry) -> None:
        entry.used = time.time()
        self._touched.add(entry.path)

    def local_stat(self, entry: Entry) -> os.stat_result | None:
        try:
            return os.stat(self.object_path(entry.path))
        except FileNotFoundError:
            return None

    def is_dirty(self, entry: Entry, st: os.stat_result | None = None) -> bool:
        if entry.dirty:
            return True
        st = st or self.local_stat(entry)
        return st is not None and signature(st) != entry.recorded

    def under(self, path: str) -> list[Entry]:
        """Entries for ``path`` and everything below it."""
        prefix = path.rstrip("/") + "/"
        return [e for p, e in self._entries.items() if p == path or p.startswith(prefix)]

    def new_temp(self) -> tuple[int, str]:
        """A fresh file in the cache's tmp directory: (fd, name)."""
        return tempfile.mkstemp(dir=self.tmp, prefix="fetch.")

    def install(self, path: str, tmp: str, attrs_: Attrs) -> Entry:
        """Rename a fetched temp file into place as the clean copy of ``path``."""
        dest = self.object_path(path)
        os.replace(tmp, dest)
        return self.record(path, attrs_, signature(os.stat(dest)))

    def record(self, path: str, attrs_: Attrs, sig: Signature, *, dirty: bool = False) -> Entry:
        """Note that the local copy of ``path`` has signature ``sig`` at ``attrs_``."""
        old = self._entries.get(path)
        e = Entry(path=path, attrs=attrs_, recorded=sig, dirty=dirty, used=time.time(),
                  pinned=old.pinned if old else False)
        self._entries[path] = e
        self._bytes += _size(sig) - (_size(old.recorded) if old else 0)
        self._put(e)
        return e

    def drop(self, path: str) -> None:
        """Forget ``path``'s local copy and delete the file (holders keep the inode)."""
        e = self._entries.pop(path, None)
        if e is not None:
            self._bytes -= _size(e.recorded)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.object_path(path))
            self._delete(path)

    def rename(self, src: str, dst: str, *, exchange: bool = False) -> None:
        """Move the local copies of ``src`` and below to ``dst`` (or swap them)."""
        moving = [(e, dst + e.path[len(src):]) for e in self.under(src)]
        other = [(e, src + e.path[len(dst):]) for e in self.under(dst)] if exchange else []
        if not exchange:
            for e in self.under(dst):
                self.drop(e.path)
        # Park every moving file under a temporary name first, so a swap works.
        parked: list[tuple[Entry, str, str, bool]] = []
        for e, new in moving + other:
            was_dirty = self.is_dirty(e)
            old_obj = self.object_path(e.path)
            fd, park = tempfile.mkstemp(dir=self.tmp, prefix="move.")
            os.close(fd)
            os.replace(old_obj, park)
            self._entries.pop(e.path, None)
            self._delete(e.path)
            parked.append((e, new, park, was_dirty))
        for e, new, park, was_dirty in parked:
            obj = self.object_path(new)
            os.replace(park, obj)
            sig = signature(os.stat(obj))
            moved = Entry(
                path=new, attrs=e.attrs, recorded=e.recorded if was_dirty else sig,
                dirty=e.dirty or was_dirty, used=e.used, pinned=e.pinned,
            )
            self._entries[new] = moved
            self._put(moved)

    # -- size bound -----------------------------------------------------------------

    def total_bytes(self) -> int:
        """The size of every local copy, counted from the files."""
        total = 0
        for e in self._entries.values():
            st = self.local_stat(e)
            if st is not None:
                total += st.st_size
        return total

    def evict(self, keep: str | None = None, spare: Callable[[str], bool] | None = None) -> int:
        """Evict clean, unpinned copies LRU first until under the bound; return how many.

        ``spare(path)`` true keeps that copy too (an interposer holds a lease on it).

        Cheap when under the bound by the recorded sizes; otherwise recounts from
        the files (dirty copies may have grown) and evicts.
        """
        if self._bytes <= self.max_bytes:
            return 0
        sizes: dict[str, int] = {}
        total = 0
        for e in self._entries.values():
            st = self.local_stat(e)
            size = st.st_size if st is not None else 0
            sizes[e.path] = size
            total += size
        evicted = 0
        for e in sorted(self._entries.values(), key=lambda e: e.used):
            if total <= self.max_bytes:
                break
            if e.path == keep or e.pinned or self.is_dirty(e) or (spare and spare(e.path)):
                continue
            self.drop(e.path)
            total -= sizes[e.path]
            evicted += 1
            log.debug("cache: evicted %s (%d bytes)", e.path, sizes[e.path])
        return evicted

    def describe(self) -> dict[str, Any]:
        return {"dir": self.dir, "entries": len(self._entries), "max_bytes": self.max_bytes}
