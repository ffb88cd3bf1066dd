"""The agent's local content cache: one host file per repository path, an index, LRU.

Trusts: only the agent that owns it. The cache directory is private to the
agent's user (0700); the interposer refuses its whole root to every guest, so
guests reach cache files only through fds the interposer opened for them.

Layout under the cache root::

    <root>/<repo_dir>/lock            flock: one agent per cache directory at a time
    <root>/<repo_dir>/index.json      path -> version, server attrs, recorded stat, dirty
    <root>/<repo_dir>/objects/<h>     h = sha256(path)[:40]: the one local copy of path
    <root>/<repo_dir>/tmp/            fetches land here, then are renamed into objects/

``repo_dir`` is the server's repo id (made file-name safe). When another agent
holds the lock on it (two runs at once on one machine), the cache uses
``<repo_dir>.2``, ``.3``, ... so parallel runs never share files.

A local copy is *dirty* when a guest changed it since it was last fetched or
uploaded: its (size, mtime_ns, ctime_ns, ino) differ from the ones recorded
then, or the agent flagged it (a local truncation, a pending creation).
Dirty copies are never evicted; clean ones are evicted least recently used
first when the total size exceeds the bound. The index is rewritten
(temp + rename) after every change of content state, and lazily after mere
LRU touches; it survives restarts, so a second run starts warm.
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
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import attrs

from protocol.messages import Attrs

__all__ = ["DEFAULT_CACHE_SIZE", "ContentCache", "Entry", "Signature", "object_name", "signature"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 1 << 30
_INDEX_VERSION = 1
_ATTR_FIELDS = tuple(f.name for f in attrs.fields(Attrs))
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: (size, mtime_ns, ctime_ns, ino) of a local copy.
Signature = tuple[int, int, int, int]


def object_name(path: str) -> str:
    """The file name of ``path``'s local copy (the interposer relies on it after renames)."""
    return hashlib.sha256(path.encode()).hexdigest()[:40]


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


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
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        base = _repo_dir_name(repo_id)
        self._lock_fd = -1
        for n in range(1, 17):
            d = os.path.join(self.root, base if n == 1 else f"{base}.{n}")
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fd = fd
            self.dir = d
            break
        else:
            raise OSError(errno.EBUSY, f"all cache directories for {repo_id!r} in {root} are busy")
        self.objects = os.path.join(self.dir, "objects")
        self.tmp = os.path.join(self.dir, "tmp")
        self.index_path = os.path.join(self.dir, "index.json")
        os.makedirs(self.objects, mode=0o700, exist_ok=True)
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        self._entries: dict[str, Entry] = {}
        self._touched = False
        self._load()

    def close(self) -> None:
        """Save the index and release the directory lock."""
        if self._lock_fd >= 0:
            self.save()
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- index ----------------------------------------------------------------------

    def _load(self) -> None:
        for name in os.listdir(self.tmp):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.tmp, name))
        try:
            with open(self.index_path, encoding="utf-8") as f:
                raw = json.load(f)
            if raw.get("version") != _INDEX_VERSION:
                raise ValueError("index version")
            for item in raw["entries"]:
                e = Entry(
                    path=item["path"],
                    attrs=Attrs(**dict(zip(_ATTR_FIELDS, item["attrs"], strict=True))),
                    recorded=tuple(item["recorded"]),
                    dirty=bool(item["dirty"]),
                    used=float(item["used"]),
                )
                if os.path.exists(self.object_path(e.path)):
                    self._entries[e.path] = e
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache index %s unreadable (%s): starting cold", self.index_path, exc)
            self._entries.clear()
        known = {os.path.basename(self.object_path(p)) for p in self._entries}
        for name in os.listdir(self.objects):
            if name not in known:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.objects, name))
        log.info("cache %s: %d local copies", self.dir, len(self._entries))

    def save(self) -> None:
        """Rewrite the index atomically (temp file + rename)."""
        items = [
            {
                "path": e.path,
                "attrs": [str(v) if f == "kind" else v for f, v in zip(
                    _ATTR_FIELDS, attrs.astuple(e.attrs, recurse=False), strict=True)],
                "recorded": list(e.recorded),
                "dirty": e.dirty,
                "used": e.used,
            }
            for e in self._entries.values()
        ]
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".index.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": _INDEX_VERSION, "entries": items}, f, separators=(",", ":"))
            os.replace(tmp, self.index_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._touched = False

    def flush_touches(self) -> None:
        """Save the index if only LRU times changed since the last save."""
        if self._touched:
            self.save()

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
        self._touched = True

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
        self.save()
        return e

    def drop(self, path: str) -> None:
        """Forget ``path``'s local copy and delete the file (holders keep the inode)."""
        if self._entries.pop(path, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.object_path(path))
            self.save()

    def rename(self, src: str, dst: str, *, exchange: bool = False) -> None:
        """Move the local copies of ``src`` and below to ``dst`` (or swap them)."""
        moving = [(e, dst + e.path[len(src):]) for e in self.under(src)]
        other = [(e, src + e.path[len(dst):]) for e in self.under(dst)] if exchange else []
        if not exchange:
            for e in self.under(dst):
                self._entries.pop(e.path, None)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.object_path(e.path))
        # Park every moving file under a temporary name first, so a swap works.
        parked: list[tuple[Entry, str, str, bool]] = []
        for e, new in moving + other:
            was_dirty = self.is_dirty(e)
            old_obj = self.object_path(e.path)
            fd, park = tempfile.mkstemp(dir=self.tmp, prefix="move.")
            os.close(fd)
            os.replace(old_obj, park)
            self._entries.pop(e.path, None)
            parked.append((e, new, park, was_dirty))
        for e, new, park, was_dirty in parked:
            obj = self.object_path(new)
            os.replace(park, obj)
            sig = signature(os.stat(obj))
            self._entries[new] = Entry(
                path=new, attrs=e.attrs, recorded=e.recorded if was_dirty else sig,
                dirty=e.dirty or was_dirty, used=e.used, pinned=e.pinned,
            )
        self.save()

    # -- size bound -----------------------------------------------------------------

    def total_bytes(self) -> int:
        total = 0
        for e in self._entries.values():
            st = self.local_stat(e)
            if st is not None:
                total += st.st_size
        return total

    def evict(self, keep: str | None = None) -> int:
        """Evict clean, unpinned copies LRU first until under the bound; return how many."""
        sizes: dict[str, int] = {}
        total = 0
        for e in self._entries.values():
            st = self.local_stat(e)
            size = st.st_size if st is not None else 0
            sizes[e.path] = size
            total += size
        if total <= self.max_bytes:
            return 0
        evicted = 0
        for e in sorted(self._entries.values(), key=lambda e: e.used):
            if total <= self.max_bytes:
                break
            if e.path == keep or e.pinned or self.is_dirty(e):
                continue
            self._entries.pop(e.path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.object_path(e.path))
            total -= sizes[e.path]
            evicted += 1
            log.debug("cache: evicted %s (%d bytes)", e.path, sizes[e.path])
        if evicted:
            self.save()
        return evicted

    def describe(self) -> dict[str, Any]:
        return {"dir": self.dir, "entries": len(self._entries), "max_bytes": self.max_bytes}
