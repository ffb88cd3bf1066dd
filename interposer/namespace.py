"""Path resolution for guests: which paths are synthetic, and what they name.

Pure code: no ptrace, no sockets. The supervisor hands it the path the guest
passed (copied out of the guest once), the base it is relative to (the
guest's cwd or a dirfd's target) and two lookups into the synthetic tree; it
answers with a :class:`Target`.

Rules (documented in docs/namespace.md):

* ``.`` and ``..`` are resolved component by component. On the host side a
  ``..`` after a component that may be a symlink is resolved physically
  through the ``host_realpath`` port (as the kernel would); inside the
  synthetic tree it follows the synthetic symlinks already resolved.
* ``..`` at the mount root leaves to the real parent (``/data/..`` is ``/``).
* Symlinks stored in the repository resolve as the mount's
  :class:`~synthfs.policy.engine.Symlinks` setting says. ``FOLLOW`` (the
  default): as the kernel resolves them on a real mount, an absolute target
  from the guest's root and a relative one from the link's directory, ``..``
  above the mount root included; a target back inside the mount stays
  synthetic, a target on the host is a HOST :class:`Target` whose ``via``
  names the link (the handlers then treat it as any host path: real path,
  [host] rules, trusted paths, pins). ``ANCHORED``: an absolute target is
  anchored at the mount root (``/data/l -> /etc`` names ``/data/etc``) and a
  relative target cannot climb above it, so a repository symlink never names
  a host file. ``REFUSE_HOST``: as FOLLOW, but a link whose target leads out
  of the mount (other than through the mount's own parents on the way back
  in, as in ``../../data/x``) is EACCES.
* Host symlinks are resolved by the supervisor (``host_realpath`` for ``..``,
  the handlers for the rest); a host symlink that points into the mount
  reaches the synthetic tree.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from collections.abc import Callable

from attrs import frozen

from synthfs.interposer.abi import (
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
)
from synthfs.policy.engine import Symlinks
from synthfs.protocol.messages import Attrs, FileKind

__all__ = ["MAX_SYMLINKS", "NAME_MAX", "Final", "Namespace", "Target", "Where", "last_name"]

MAX_SYMLINKS = 40
NAME_MAX = 255
#: A repository path is at most this many bytes (a kernel path string's limit, PATH_MAX
#: less its NUL; the wire takes no longer: protocol.messages.MAX_PATH).
REPO_PATH_MAX = 4095


#: a plain absolute path: no '.', '..' or empty component, no trailing '/'
_PLAIN = re.compile(r"^(?:/(?!\.\.?(?:/|$))[^/]+)+$")


def _check_repo_length(repo: str) -> None:
    """ENAMETOOLONG for a repository path longer than :data:`REPO_PATH_MAX` bytes.

    The kernel walks a deep relative path (or a long symlink's expansion) with
    no total limit; a repository path travels whole, so it has one.
    """
    if len(repo) > REPO_PATH_MAX // 4 and len(os.fsencode(repo)) > REPO_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, "path too long for the repository")


class Where(enum.Enum):
    HOST = "host"
    SYNTH = "synth"


class Final(enum.Enum):
    """How the final component is treated (the kernel's last-component lookups).

    ``LOOKUP`` (stat, open, chdir...): a trailing slash follows a final
    symlink and makes a non-directory ENOTDIR. ``ENTRY`` (mkdir, mknod,
    symlink, link's new name, unlink, rmdir, rename, open with O_CREAT): the
    final component names the entry itself, never followed, whatever the
    slash; a name longer than NAME_MAX is not looked up (the handler reports
    ENAMETOOLONG when the kernel would look it up, after the other operand).
    """

    LOOKUP = "lookup"
    ENTRY = "entry"


def last_name(path: str) -> str:
    """The final component of ``path`` as written: ``.`` and ``..`` kept, ``""`` for ``/``."""
    parts = [c for c in path.split("/") if c]
    return parts[-1] if parts else ""


@frozen
class Target:
    """A resolved path.

    ``path`` is an absolute host path (HOST) or a repository path such as
    ``/a/b`` (SYNTH; ``/`` is the repository root). ``attrs`` is the synthetic
    object's attributes when it exists (None: it does not). ``must_be_dir``
    records a trailing slash. ``via``: for a HOST target reached through a
    repository symlink, that link's guest path (for the audit record).
    """

    where: Where
    path: str
    attrs: Attrs | None = None
    must_be_dir: bool = False
    via: str = ""

    @property
    def synthetic(self) -> bool:
        return self.where is Where.SYNTH


Lstat = Callable[[str], Attrs | None]
Readlink = Callable[[str], str]


class Namespace:
    """One synthetic mount (``/data`` by default) over the host's tree."""

    def __init__(self, mount: str = "/data", symlinks: Symlinks = Symlinks.FOLLOW) -> None:
        if not mount.startswith("/") or mount == "/" or "\0" in mount:
            raise ValueError(f"mount point must be an absolute path other than '/': {mount!r}")
        parts = [p for p in mount.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"mount point must be normalised: {mount!r}")
        self.mount = "/" + "/".join(parts)
        self._prefix = self.mount + "/"
        self._mount_parts = parts
        self.symlinks = symlinks

    # -- conversions ----------------------------------------------------------------------

    def guest_path(self, repo_path: str) -> str:
        """The guest-visible path of a repository path."""
        return self.mount if repo_path == "/" else self.mount + repo_path

    def covers(self, path: str) -> bool:
        """Whether a normalised absolute path is the mount or below it."""
        return path == self.mount or path.startswith(self._prefix)

    def repo_path(self, guest_path: str) -> str | None:
        """The repository path of a normalised guest path, or None when it is on the host."""
        if guest_path == self.mount:
            return "/"
        if guest_path.startswith(self.mount + "/"):
            return guest_path[len(self.mount) :]
        return None

    # -- resolution -----------------------------------------------------------------------

    def resolve(
        self,
        path: str,
        base: str,
        *,
        follow: bool,
        lstat: Lstat,
        readlink: Readlink,
        host_realpath: Callable[[str], str] | None = None,
        final: Final = Final.LOOKUP,
        confine: int = 0,
        hidden: Callable[[str], bool] | None = None,
    ) -> Target:
        """Resolve ``path`` (relative to the absolute guest path ``base``).

        ``follow`` says whether a final synthetic symlink is followed;
        ``final`` what a trailing slash and a long final name do (:class:`Final`).
        ``confine``: openat2's RESOLVE_* flags, honoured as the kernel does on
        the components this walk resolves itself (``base`` is the dirfd):
        BENEATH (an absolute path or symlink, or ``..`` at ``base``: EXDEV),
        IN_ROOT (``base`` is ``/`` for the walk: ``..`` stays, an absolute path
        or repository symlink starts there), NO_SYMLINKS (a symlink on the
        way: ELOOP), NO_XDEV (entering or leaving the mount: EXDEV). Host
        components are the kernel's to judge (handlers probe them).
        ``hidden(guest_path)``: whether the policy hides that path (ENOENT): a
        component the walk passes through, not its last, is then absent, as
        the final path is. Else a walk through a hidden directory and out of it
        again (``hidden/name/../../x``: ENOENT, ENOTDIR or a stat of ``x``) told
        which names it holds and what they are. A plain path needs no check: it
        ends below each component it passes, and the policy judges that end.
        Raises OSError with the errno a kernel would give (ENOENT, ENOTDIR,
        ELOOP, ENAMETOOLONG, EXDEV).
        """
        if not confine and path.startswith(self._prefix) and _PLAIN.match(path):
            plain = self._resolve_plain(path, follow, lstat)
            if plain is not None:
                return plain
        return self._walk(path, base, follow, lstat, readlink, host_realpath, final, confine,
                          hidden)

    def _resolve_plain(self, path: str, follow: bool, lstat: Lstat) -> Target | None:
        """The walk of a plain path below the mount (absolute, no '.', '..', '//' or
        trailing '/', short names) that meets no repository symlink: what the full walk
        gives, from the same lookups, without its bookkeeping. None when a symlink is
        met (the full walk takes over, from the start)."""
        if len(path) > REPO_PATH_MAX // 4:
            return None  # long: the full walk's length checks
        names = path[len(self._prefix) :].split("/")
        if any(len(name) > NAME_MAX for name in names):
            return None  # the full walk decides where a long name fails
        repo = "/"
        attrs = lstat(repo)
        last = len(names) - 1
        for i, name in enumerate(names):
            if attrs is None:
                raise OSError(errno.ENOENT, "no such file or directory")
            if attrs.kind is not FileKind.DIR:
                if attrs.kind is FileKind.SYMLINK:
                    return None
                raise OSError(errno.ENOTDIR, "not a directory")
            repo = repo + name if i == 0 else repo + "/" + name
            attrs = lstat(repo)
            if i == last:
                if attrs is not None and attrs.kind is FileKind.SYMLINK and follow:
                    return None
                return Target(Where.SYNTH, repo, attrs, False)
        return None  # (not reached: names is never empty)

    def _walk(
        self,
        path: str,
        base: str,
        follow: bool,
        lstat: Lstat,
        readlink: Readlink,
        host_realpath: Callable[[str], str] | None,
        final: Final,
        confine: int,
        hidden: Callable[[str], bool] | None = None,
    ) -> Target:
        """:meth:`resolve`, every case."""
        if not path:
            raise OSError(errno.ENOENT, "empty path")
        if len(path) >= 4096:
            raise OSError(errno.ENAMETOOLONG, "path too long")
        trailing = path.endswith("/")
        # '.' stays in the walk: what comes before it must be a directory ('f/.' is ENOTDIR).
        todo = [c for c in path.split("/") if c]
        todo.reverse()  # a stack: next component last
        beneath, in_root = confine & RESOLVE_BENEATH, confine & RESOLVE_IN_ROOT
        no_xdev = confine & RESOLVE_NO_XDEV
        start = [c for c in base.split("/") if c]
        root = start if beneath or in_root else []  # the walk may not go above it
        if path.startswith("/"):
            if beneath:
                raise OSError(errno.EXDEV, "absolute path beneath a directory")
            cur = list(root)
        else:
            cur = list(start)
        inside = self._inside(cur)
        attrs: Attrs | None = None
        looked = -1  # len(cur) when attrs was last looked up
        links = 0
        mount_len = len(self._mount_parts)
        entry = final is Final.ENTRY
        anchored = self.symlinks is Symlinks.ANCHORED
        # The repository links being expanded, innermost last: (len(todo) before their
        # target was pushed, the link's guest path). A link is done once todo is shorter.
        marks: list[tuple[int, str]] = []
        via = ""  # the repository link that took the walk to the host

        def left(link: str) -> None:
            """The walk stands on the host while expanding ``link``'s target."""
            nonlocal via
            if self.symlinks is Symlinks.REFUSE_HOST:
                raise OSError(errno.EACCES, f"repository symlink {link} leads out of the mount")
            via = link

        while todo:
            comp = todo.pop()
            while marks and marks[-1][0] > len(todo):
                if not self._inside(cur):  # the link named the host ('/', '..' at the root)
                    left(marks[-1][1])
                marks.pop()
            if comp == ".":
                continue
            if len(comp) > NAME_MAX and not (entry and not todo):
                raise OSError(errno.ENAMETOOLONG, "name too long")
            if comp == "..":
                if (beneath or in_root) and cur == root:
                    if beneath:
                        raise OSError(errno.EXDEV, "'..' above the directory")
                    continue  # IN_ROOT: '..' of the root is the root
                if not cur:
                    continue
                if self._inside(cur) or host_realpath is None or self._is_mount_root(cur):
                    cur.pop()
                else:
                    # Host side: the kernel resolves '..' physically.
                    real = host_realpath("/" + "/".join(cur))
                    cur = [c for c in real.split("/") if c]
                    if cur:
                        cur.pop()
                if no_xdev and self._inside(cur) != inside:
                    raise OSError(errno.EXDEV, "'..' leaves the mount")
                if marks and not self._inside(cur) and not self._above(cur):
                    left(marks[-1][1])
                attrs = None
                looked = -1
                continue
            cur.append(comp)
            if no_xdev and self._inside(cur) != inside:
                raise OSError(errno.EXDEV, "the path crosses into the mount")
            if not self._inside(cur):
                if marks and not self._above(cur):
                    left(marks[-1][1])
                attrs = None
                continue
            repo = "/" + "/".join(cur[mount_len:]) if len(cur) > mount_len else "/"
            _check_repo_length(repo)
            last = not todo
            attrs = None if len(comp) > NAME_MAX else lstat(repo)
            looked = len(cur)
            if attrs is None:
                if not last:
                    raise OSError(errno.ENOENT, "no such file or directory")
                continue
            if not last and hidden is not None and hidden(self.guest_path(repo)):
                raise OSError(errno.ENOENT, "no such file or directory")
            if attrs.kind is FileKind.SYMLINK and (not last or follow or (trailing and not entry)):
                if confine & RESOLVE_NO_SYMLINKS:
                    raise OSError(errno.ELOOP, "a symlink on a RESOLVE_NO_SYMLINKS walk")
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links")
                target = readlink(repo)
                if not target:
                    raise OSError(errno.ENOENT, "empty symlink")
                cur.pop()
                parts = [c for c in target.split("/") if c]
                if anchored:
                    if target.startswith("/"):
                        if beneath:
                            raise OSError(errno.EXDEV, "absolute symlink beneath a directory")
                        # anchored at the mount root, or at an IN_ROOT root inside the mount
                        cur = list(root if in_root and self._inside(root) else self._mount_parts)
                    # The target may not climb above the mount root.
                    kept = self._clamp(cur, parts)
                    if beneath and kept.count("..") != parts.count(".."):
                        raise OSError(errno.EXDEV, "a symlink climbing out of the directory")
                    todo.extend(reversed(kept))
                    attrs, looked = None, -1
                    continue
                # The kernel's way: an absolute target starts at the root (an IN_ROOT
                # walk's root), '..' climbs as in any path (BENEATH and IN_ROOT stop it).
                if target.startswith("/"):
                    if beneath:
                        raise OSError(errno.EXDEV, "absolute symlink beneath a directory")
                    cur = list(root)
                    if no_xdev and self._inside(cur) != inside:
                        raise OSError(errno.EXDEV, "an absolute symlink to another mount")
                marks.append((len(todo), self.guest_path(repo)))
                todo.extend(reversed(parts))
                attrs, looked = None, -1
                continue
            if not last and attrs.kind is not FileKind.DIR:
                raise OSError(errno.ENOTDIR, "not a directory")
        if marks and not self._inside(cur):
            left(marks[-1][1])
        guest = "/" + "/".join(cur)
        repo_path = self.repo_path(guest)
        if repo_path is None:
            return Target(Where.HOST, guest, None, trailing, via)
        _check_repo_length(repo_path)
        if looked != len(cur):
            # '.', '..' or a substituted symlink left us somewhere not looked up yet.
            attrs = lstat(repo_path)
        if trailing and not entry and attrs is not None and attrs.kind is FileKind.FILE:
            raise OSError(errno.ENOTDIR, "not a directory")
        return Target(Where.SYNTH, repo_path, attrs, trailing)

    def _inside(self, cur: list[str]) -> bool:
        n = len(self._mount_parts)
        return len(cur) >= n and cur[:n] == self._mount_parts

    def _above(self, cur: list[str]) -> bool:
        """Whether ``cur`` is a parent of the mount (``/`` for ``/data``): a walk
        passes there on its way back in (``/data/x``, ``../../data/x``)."""
        return len(cur) < len(self._mount_parts) and self._mount_parts[: len(cur)] == cur

    def _is_mount_root(self, cur: list[str]) -> bool:
        return cur == self._mount_parts

    def _clamp(self, cur: list[str], target: list[str]) -> list[str]:
        """Drop the '..' components of a symlink target that would climb above the mount root."""
        depth = len(cur) - len(self._mount_parts)
        kept: list[str] = []
        for comp in target:
            if comp == ".":
                pass
            elif comp == "..":
                if depth == 0:
                    continue
                depth -= 1
            else:
                depth += 1
            kept.append(comp)
        return kept
