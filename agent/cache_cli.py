"""``synthfs cache ls|clear``: what the agent's content cache holds, and emptying it safely.

Role: a user's view of the cache directories an agent keeps (one per
repository, :mod:`agent.cache`), read from their index without an agent.

What ``clear`` removes, and what it never does:

* only the clean copies (the server's version, as fetched or uploaded) of a
  cache directory no agent holds: it takes the directory's lock, as an agent
  does, so no agent can start on it meanwhile;
* never a copy with writes not yet on the server (*dirty*: a guest wrote it
  and it was not uploaded, e.g. the agent was stopped first): it is kept and
  counted, and the next agent on that cache uploads it (``Sync``);
* never a directory a running agent holds (its files may be open in a guest or
  being written): it is skipped and named; that agent's ``--cache-size``
  bounds it, or stop the agent first.

Trusts: the cache root given (or the default), checked as the agent checks it
(ours, not a symlink); the index's rows only name copies to list or remove
inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

from synthfs.agent.cache import default_cache_dir
from synthfs.protocol.naming import name_from_wire, object_name, wire_name

__all__ = ["HELP", "configure", "main"]

HELP = "list the agent's content cache, or clear its clean copies"
FAST_EXIT = True


class Copy(NamedTuple):
    path: str
    size: int  # of the local file
    dirty: bool  # writes not uploaded yet
    used: float


class RepoDir(NamedTuple):
    name: str
    busy: bool  # a running agent holds it
    copies: list[Copy]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("ls", "clear"),
                        help="ls: every local copy; clear: remove the clean copies of the "
                        "caches no agent is running on")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="the cache root (the agent's --cache; default "
                        "$XDG_CACHE_HOME/synthfs or ~/.cache/synthfs)")


def _ours(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid() and not stat.S_IMODE(st.st_mode) & 0o077


def _repo_dirs(root: str) -> Iterator[str]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for name in names:
        d = os.path.join(root, name)
        st = os.lstat(d)
        if stat.S_ISDIR(st.st_mode) and _ours(st) and os.path.isfile(os.path.join(d, "lock")):
            yield d


@contextlib.contextmanager
def _locked(d: str) -> Iterator[bool]:
    """True (and the lock held meanwhile) when no agent holds ``d``."""
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _copies(d: str) -> list[Copy]:
    index = os.path.join(d, "index.sqlite")
    if not os.path.exists(index):
        return []
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT path, recorded, dirty, used FROM copies").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # made, never written: an agent that stopped early
            return []
        raise
    finally:
        db.close()
    out = []
    for wire, recorded, flagged, used in rows:
        path = name_from_wire(wire)
        try:
            st = os.lstat(os.path.join(d, "objects", object_name(path)))
        except FileNotFoundError:
            continue
        size, mtime_ns, ctime_ns, ino = (int(x) for x in json.loads(recorded))
        changed = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (
            size, mtime_ns, ctime_ns, ino)
        out.append(Copy(path, st.st_size, bool(flagged) or changed, float(used)))
    return sorted(out, key=lambda c: c.used)


def _scan(root: str) -> list[RepoDir]:
    found = []
    for d in _repo_dirs(root):
        with _locked(d) as free:
            try:
                copies = _copies(d)
            except (OSError, sqlite3.Error, ValueError) as exc:
                print(f"{d}: index unreadable ({exc}): skipped", file=sys.stderr)
                continue
            found.append(RepoDir(os.path.basename(d), not free, copies))
    return found


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _ls(root: str) -> int:
    dirs = _scan(root)
    if not dirs:
        print(f"{root}: no cache")
        return 0
    for rd in dirs:
        total = sum(c.size for c in rd.copies)
        dirty = sum(1 for c in rd.copies if c.dirty)
        busy = ", in use by a running agent" if rd.busy else ""
        print(f"{os.path.join(root, rd.name)}: {len(rd.copies)} copies, {_size(total)}, "
              f"{dirty} not uploaded{busy}")
        for c in rd.copies:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.used))
            state = "dirty" if c.dirty else "clean"
            print(f"  {c.size:>14}  {state}  {used}  {c.path}")
    return 0


def _clear(root: str) -> int:
    dirs = list(_repo_dirs(root))
    if not dirs:
        print(f"{root}: no cache")
        return 0
    status = 0
    for d in dirs:
        with _locked(d) as free:
            if not free:
                print(f"{d}: skipped, a running agent holds it (stop it first; its "
                      "--cache-size bounds it meanwhile)")
                status = 1
                continue
            removed = freed = 0
            kept = []
            try:
                copies = _copies(d)
            except (OSError, sqlite3.Error, ValueError) as exc:
                print(f"{d}: index unreadable ({exc}): skipped, nothing removed")
                status = 1
                continue
            index = os.path.join(d, "index.sqlite")
            db = sqlite3.connect(index, isolation_level=None) if os.path.exists(index) else None
            for c in copies:
                if c.dirty:
                    kept.append(c)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, "objects", object_name(c.path)))
                if db is not None:
                    db.execute("DELETE FROM copies WHERE path = ?", (wire_name(c.path),))
                removed += 1
                freed += c.size
            if db is not None:
                db.close()
            tmp = os.path.join(d, "tmp")
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(tmp):  # a killed agent's unfinished fetches
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(tmp, name))
            line = f"{d}: removed {removed} clean copies ({_size(freed)})"
            if kept:
                line += (f"; kept {len(kept)} with writes not uploaded yet (the next agent "
                         "on this cache uploads them)")
            print(line)
    return status


def main(args: argparse.Namespace) -> int:
    root = os.path.abspath(args.cache or default_cache_dir())
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        print(f"{root}: no cache")
        return 0
    except OSError as exc:
        print(f"synthfs cache: {root}: {exc.strerror}", file=sys.stderr)
        return 2
    if not stat.S_ISDIR(st.st_mode) or not _ours(st):
        print(f"synthfs cache: {root} is not a cache directory of this user (mode 0700, "
              "not a symlink)", file=sys.stderr)
        return 2
    try:
        return _ls(root) if args.action == "ls" else _clear(root)
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"synthfs cache: {root}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        return 1
