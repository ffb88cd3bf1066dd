"""Directory renames against the other mutations of one server process.

A backend whose rename of a directory is many operations (S3: copy then delete
every key below it, :mod:`server.backends.s3`) must not let a write below that
directory land in the middle: a file rewritten after its key was copied and
before it was deleted is lost (the delete takes the new content), one written
after the delete reappears under the old name. :class:`TreeLock` keeps them
apart: a mutation of a path takes it *shared* for that path (:meth:`change`),
a directory rename takes it *exclusive* for the trees of its source and its
destination (:meth:`move`). A mutation below a tree being moved waits until
the move ends (then finds the directory gone, as after a rename on a file
system); a move waits until the mutations running below its trees end, and
from the moment it waits no new one starts there (a stream of writers does
not starve it). Two moves whose trees overlap run one after the other.

The lock is the process's: several servers over one bucket do not see each
other's (a write through another server during a rename can still be lost:
README.md, "Serving an S3 bucket").

Trusts its callers to pass split paths (tuples of names; ``()`` is the root).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

__all__ = ["TreeLock"]

Parts = tuple[str, ...]


def _below(path: Parts, tree: Parts) -> bool:
    """``path`` is ``tree`` or inside it."""
    return path[: len(tree)] == tree


class TreeLock:
    """Shared per path for mutations, exclusive per tree for directory moves."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._moving: list[Parts] = []
        self._busy: Counter[Parts] = Counter()

    def _in_moving(self, path: Parts) -> bool:
        return any(_below(path, t) for t in self._moving)

    @contextlib.contextmanager
    def change(self, *paths: Parts) -> Iterator[None]:
        """Hold ``paths`` for one mutation (waits while a tree holding one is moved)."""
        with self._cond:
            self._cond.wait_for(lambda: not any(self._in_moving(p) for p in paths))
            self._busy.update(paths)
        try:
            yield
        finally:
            with self._cond:
                self._busy.subtract(paths)
                self._busy += Counter()  # drop the zero counts
                self._cond.notify_all()

    @contextlib.contextmanager
    def move(self, *trees: Parts) -> Iterator[None]:
        """Hold ``trees`` (and everything below them) for one directory move."""
        with self._cond:
            self._cond.wait_for(lambda: not any(
                _below(t, m) or _below(m, t) for t in trees for m in self._moving))
            self._moving.extend(trees)
            try:
                self._cond.wait_for(lambda: not any(
                    _below(p, t) for p in self._busy for t in trees))
            except BaseException:
                self._release(trees)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._release(trees)

    def _release(self, trees: tuple[Parts, ...]) -> None:
        for t in trees:
            self._moving.remove(t)
        self._cond.notify_all()
