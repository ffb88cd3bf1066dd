"""The ``st_ino`` a guest sees for each /data object: one per file, never two files' one.

The server installs each upload as a new file (staged, then renamed over the
name), so a file's inode number on the server changes with every write, and the
backing file system hands the number it freed to the next file created (ext4
does so at once: write ``big``, then create ``copy``, and ``copy`` gets the
number ``big`` had). A guest must see neither: a file keeps the number it first
showed (sqlite compares ``stat`` and ``fstat``; a file written is the same
file), and two live files never show one number (``du``, ``cp``, ``tar`` and
``find -samefile`` take one ``(st_dev, st_ino)`` for one file).

So a path keeps the number first shown for it until this sandbox removes it or
renames it away (:meth:`Inodes.forget`, :meth:`Inodes.move`; a new name made by
``link`` shares it: :meth:`Inodes.link`). A path seen for the first time shows
its server number, unless another path shows that number already: then the
server is asked what that path is now (one request, only on such a meeting).
The same object (a hard link) shares the number; a path gone gives it up; a
different object (the number was freed by a rewrite and reused) makes the new
path take a fresh number, from a range above what file systems hand out
(:data:`FRESH_BASE`; a server number there is checked the same way).

A meeting costs nothing when the server's *state* of the object (its link count,
ctime and version: :func:`state_of`) is the one it had when every path showing
that number was last seen naming it: no name of the object was added or removed
since (``link``, ``unlink`` and ``rename`` move the ctime and the count), so
those paths name it still. A directory of N hard links costs no request to
list, not one per pair (N = 300 took 130 s). A state not seen before costs one
question to each path showing the number, and is remembered. What this sandbox
changes (a commit, a setattr, a rename, a link) makes the number's paths
asked again at the next meeting, as the server may take the change later.

Trusts the server's numbers to name one object at a time, and its state of an
object to move when a name of it comes or goes (a state of ``None``: never
trusted, every meeting asks); nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

__all__ = ["FRESH_BASE", "Inodes", "state_of"]

#: the first number given to a path whose server number another file shows
FRESH_BASE = 1 << 62


class _Stat(Protocol):
    @property
    def nlink(self) -> int: ...
    @property
    def ctime_ns(self) -> int: ...
    @property
    def version(self) -> str: ...


def state_of(attrs: _Stat) -> Hashable:
    """What says a server object is as it was: None (never trusted) without a version."""
    return (attrs.nlink, attrs.ctime_ns, attrs.version) if attrs.version else None


#: the server's inode number of a path now and its state (:func:`state_of`)
Now = tuple[int, Hashable]


class Inodes:
    """Path -> the ``st_ino`` shown for it this run, unique among the files shown.

    ``current(path)`` answers the server's inode number of ``path`` now and the
    object's state (None when it is gone, OSError when it cannot tell: the
    number is then not shared).
    """

    def __init__(self, current: Callable[[str], Now | None]) -> None:
        self._current = current
        self._of: dict[str, int] = {}
        #: shown number -> the paths showing it (several: hard links)
        self._paths: dict[int, set[str]] = {}
        #: shown number -> (server number, state) every path showing it named when last seen
        self._named: dict[int, Now] = {}
        self._next = FRESH_BASE

    def __len__(self) -> int:
        return len(self._of)

    def get(self, path: str) -> int | None:
        return self._of.get(path)

    def show(self, path: str, ino: int, state: Hashable = None) -> int:
        """The number to show for ``path``, whose server inode number is ``ino`` now
        and whose object's state is ``state``."""
        shown = self._of.get(path)
        if shown is not None:
            return shown
        seen = (ino, state)
        if state is None or self._named.get(ino) != seen:
            answers = set()
            for other in list(self._paths.get(ino, ())):
                try:
                    now = self._current(other)
                except OSError:
                    now = (-1, None)  # cannot tell: never share on a guess
                if now is None:
                    self.forget(other)
                    continue
                if now[0] != ino:
                    fresh = self._fresh()  # ``other`` shows a number the server gave anew
                    self._pin(path, fresh)
                    return fresh
                answers.add(now)
            if answers and answers != {seen}:
                seen = (ino, None)  # the object changed since: its next meeting asks
        self._pin(path, ino)
        self._named[ino] = seen
        return ino

    def changed(self, path: str) -> None:
        """This sandbox changed ``path`` (the server may take it later): the paths
        showing its number are asked again at the next meeting."""
        shown = self._of.get(path)
        if shown is not None:
            self._named.pop(shown, None)

    def changed_all(self) -> None:
        """As :meth:`changed`, for every path (a ``sync``)."""
        self._named.clear()

    def forget(self, path: str) -> None:
        """``path`` was removed: it no longer names what it showed.

        (What was below a directory was removed first; a name left here that
        another process removed gives its number up at the next meeting.)"""
        if path in self._of:
            self._unpin(path)

    def move(self, src: str, dst: str) -> None:
        """``src`` (and everything below it) renamed over ``dst``: the numbers move."""
        moved = {p: self._of[p] for p in self._below(src)}
        for p in {*self._below(dst), *moved}:
            self.changed(p)
            self._unpin(p)
        for p, ino in moved.items():
            self._pin(dst + p[len(src) :], ino)

    def link(self, src: str, dst: str, ino: int) -> None:
        """``dst`` made a new name of ``src`` (server inode number ``ino``): one number."""
        self.forget(dst)
        self._pin(dst, self.show(src, ino))
        self.changed(dst)

    def same(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are known here as names of one file."""
        ino = self._of.get(a)
        return ino is not None and ino == self._of.get(b)

    def shares(self, path: str) -> bool:
        """Whether another name known here shows ``path``'s number (a hard link of it)."""
        ino = self._of.get(path)
        return ino is not None and len(self._paths.get(ino, ())) > 1

    def _below(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [p for p in self._of if p == path or p.startswith(prefix)]

    def _fresh(self) -> int:
        while self._next in self._paths:
            self._next += 1
        self._next += 1
        return self._next - 1

    def _pin(self, path: str, ino: int) -> None:
        self._of[path] = ino
        self._paths.setdefault(ino, set()).add(path)

    def _unpin(self, path: str) -> None:
        ino = self._of.pop(path)
        holders = self._paths[ino]
        holders.discard(path)
        if not holders:
            del self._paths[ino]
            self._named.pop(ino, None)
