"""The repository backend interface the server dispatches to.

A backend serves one repository. It trusts nothing about the paths it is
given: every public method takes a *wire path* (repository-absolute, "/" is
the root) and validates it with :func:`split_path` before touching storage.
It trusts the caller (the server's service loop) to have authenticated the
request already.

Errors are plain ``OSError`` with ``errno`` set to exactly what a Linux file
system would return (ENOENT, ENOTDIR, EISDIR, ENOTEMPTY, EEXIST, ELOOP...);
the service turns them into wire errors unchanged. There is deliberately no
backend-specific exception hierarchy.

The interface is small so that an object-store backend can implement it:
stat, list, ranged read, whole-object chunked upload with atomic install,
mkdir, remove, rename, symlink/readlink, setattr, and a version (etag) per
object that changes whenever its content changes. Hard links (``link``) are
optional: the default answers EPERM.

Sparse files (holes) are optional too. A file's content is described by its
*data extents* (:data:`Extents`: sorted, disjoint ``(offset, length)``
ranges; the rest reads as zeros): :meth:`Backend.data_extents` says where a
file's data is, and :meth:`Backend.upload_commit_sparse` installs an upload
whose chunks covered only the given extents. A backend that keeps holes (the
local one: SEEK_DATA/SEEK_HOLE, a staged file truncated to size) overrides
both. A store without holes (an object store) keeps the defaults, which treat
every object as fully dense: one extent over the whole object, and the holes of
a sparse upload written as zero chunks before a dense commit. Either answer is
correct (a hole reads as zeros); only the allocation differs.

A backend speaks in the value types below (:class:`ObjectAttrs`, :class:`Entry`,
:class:`Kind`, :class:`RenameFlags`), not in the wire's messages: one can be
written without knowing the protocol, and the server's service turns them into
wire messages in one place (``server.service.wire_attrs``).
"""

from __future__ import annotations

import abc
import enum
import errno
import os
import secrets
from typing import NamedTuple

from synthfs.extents import MAX_EXTENTS, Extents

__all__ = [
    "CHUNK_SIZE",
    "MAX_EXTENTS",
    "MAX_PATH",
    "Backend",
    "Entries",
    "Entry",
    "Extents",
    "Kind",
    "Location",
    "ObjectAttrs",
    "RenameFlags",
    "check_readable",
    "oserror",
    "split_path",
]

#: The most bytes a backend is asked to read, or given in one upload chunk, at once.
CHUNK_SIZE = 4 * 1024 * 1024
#: The longest path a backend is given (Linux PATH_MAX).
MAX_PATH = 4096


class Kind(enum.StrEnum):
    """What a repository object is (a backend serves no other kind)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


class RenameFlags(enum.IntFlag):
    """renameat2 flags, with the kernel's values."""

    NONE = 0
    NOREPLACE = 1
    EXCHANGE = 2

    @classmethod
    def checked(cls, flags: int) -> RenameFlags:
        """``flags`` as rename accepts them: EINVAL for unknown bits or both at once."""
        flags = cls(flags)
        if flags & ~(cls.NOREPLACE | cls.EXCHANGE) or flags == cls.NOREPLACE | cls.EXCHANGE:
            raise oserror(errno.EINVAL, "rename flags")
        return flags


class ObjectAttrs(NamedTuple):
    """What a ``stat`` of one repository object says. ``version`` is its etag: it
    changes whenever the object's content changes."""

    kind: Kind
    size: int
    #: permission bits (no file type)
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    nlink: int = 1
    version: str = ""
    #: 512-byte blocks the repository allocates for it (st_blocks; what du counts)
    blocks: int = 0


class Location(NamedTuple):
    """Where an agent may GET one object version itself (:meth:`Backend.locate`).

    ``url`` is good until ``expires_ns`` (wall clock) and only with ``If-Match: etag``.
    """

    url: str
    etag: str
    size: int
    version: str
    expires_ns: int


class Entry(NamedTuple):
    """One name in a directory listing and the attributes of what it names."""

    name: str
    attrs: ObjectAttrs


#: A listing's entries (an alias: ``list`` is also a Backend method name).
Entries = list[Entry]


def oserror(code: int, detail: str = "") -> OSError:
    """An OSError carrying ``code`` and the standard message for it."""
    msg = os.strerror(code)
    return OSError(code, f"{msg}: {detail}" if detail else msg)


def split_path(path: str) -> tuple[str, ...]:
    """The components of a wire path; () is the repository root.

    Refused with EINVAL: a non-str, a path not starting with "/", a NUL byte,
    a ".." component, a path longer than MAX_PATH. Empty and "." components are
    dropped ("/a//./b/" is "/a/b"). No name is reserved: a backend keeps its
    own state outside the repository.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise oserror(errno.EINVAL, "wire paths are absolute")
    if "\x00" in path:
        raise oserror(errno.EINVAL, "NUL in path")
    if len(path) > MAX_PATH:
        raise oserror(errno.ENAMETOOLONG)
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise oserror(errno.EINVAL, "'..' in a wire path")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise oserror(errno.ENAMETOOLONG)
        parts.append(part)
    return tuple(parts)



def check_readable(a: ObjectAttrs, version: str = "") -> None:
    """Raise what a read of ``a`` gets when it is no file's content: EISDIR, ELOOP (the
    server does not read through symlinks), or ESTALE when a non-empty ``version`` is
    not the object's."""
    if a.kind is Kind.DIR:
        raise oserror(errno.EISDIR)
    if a.kind is Kind.SYMLINK:
        raise oserror(errno.ELOOP)
    if version and version != a.version:
        raise oserror(errno.ESTALE, "the object changed")

class Backend(abc.ABC):
    """One repository. Thread-safe: the server calls it from a worker pool."""

    #: A stable id of the repository (same root -> same id across restarts).
    repo_id: str
    #: Whether a ``stat`` or ``readlink`` is a local lookup of a few µs (the server answers
    #: them on its I/O thread) rather than a request to another machine, which may take
    #: the store's whole timeout and would hold every other client's request meanwhile.
    local_lookups: bool = True

    # -- reads ---------------------------------------------------------------------

    @abc.abstractmethod
    def stat(self, path: str) -> ObjectAttrs:
        """Attributes of ``path``; never follows a final symlink (lstat)."""

    @abc.abstractmethod
    def list(self, path: str) -> tuple[ObjectAttrs, Entries]:
        """The directory's own attributes and every entry with its attributes."""

    @abc.abstractmethod
    def read(
        self, path: str, offset: int, length: int, version: str = ""
    ) -> tuple[bytes, bool, str]:
        """Up to ``length`` (<= CHUNK_SIZE) bytes at ``offset``: (data, eof, version).

        A non-empty ``version`` that differs from the object's is ESTALE.
        """

    def read_into(
        self, path: str, offset: int, buf: memoryview, version: str = ""
    ) -> tuple[int, bool, str]:
        """Like :meth:`read` of ``len(buf)`` bytes, into ``buf``: (count, eof, version).

        The server's bulk path reads into the buffer its reply is sent from. This
        default copies :meth:`read`'s bytes; a backend that can read in place
        overrides it. Errors as :meth:`read`.
        """
        data, eof, current = self.read(path, offset, len(buf), version)
        buf[:len(data)] = data
        return len(data), eof, current

    @abc.abstractmethod
    def readlink(self, path: str) -> str:
        """The text of the symlink at ``path`` (EINVAL if it is not one)."""

    def data_extents(self, path: str, version: str = "") -> tuple[int, str, Extents]:
        """(size, version, data extents) of the regular file ``path``; the rest is holes.

        Errors as :meth:`read` (EISDIR, ELOOP, ESTALE when a non-empty ``version``
        differs). The extents may take in holes (a conservative answer is correct),
        never leave out data. This default, for a store without holes, answers one
        extent over the whole object.
        """
        a = self.stat(path)
        check_readable(a, version)
        return a.size, a.version, [(0, a.size)] if a.size else []

    def locate(self, path: str, version: str = "") -> Location:
        """A short-lived URL the agent can GET the file ``path`` at ``version`` from itself.

        Errors as :meth:`read`. This default, for a store the agent reads only through
        the server, is EOPNOTSUPP (the agent then fetches with reads).
        """
        raise oserror(errno.EOPNOTSUPP, "this backend is read through the server only")

    # -- whole-object writes -------------------------------------------------------

    @abc.abstractmethod
    def upload_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        """Stage ``data`` at ``offset`` of upload ``upload_id`` (idempotent by offset)."""

    @abc.abstractmethod
    def upload_commit(
        self, upload_id: str, path: str, size: int, mode: int = 0o644, exclusive: bool = False
    ) -> ObjectAttrs:
        """Install the staged upload as ``path``'s new version, atomically.

        ``size`` must equal the staged size with no holes (else EIO and nothing
        is installed); ``mode`` applies when ``path`` is new. ``exclusive``:
        EEXIST when ``path`` exists, decided atomically (never replaces it).
        Committing an already committed ``upload_id`` answers the same
        attributes again.
        """

    def upload_commit_sparse(
        self, upload_id: str, path: str, size: int, extents: Extents, mode: int = 0o644,
        exclusive: bool = False,
    ) -> ObjectAttrs:
        """:meth:`upload_commit` of an upload whose chunks covered exactly ``extents``
        (checked by the caller: sorted, disjoint, within ``size``); the rest of
        ``[0, size)`` is holes. Staged data that differs from ``extents`` is EIO.

        This default, for a store without holes, stages the holes as zero chunks and
        commits densely (a lost chunk still leaves a gap, so the commit fails).
        """
        zeros = bytes(min(CHUNK_SIZE, size))
        pos = 0
        for off, length in [*extents, (size, 0)]:
            while pos < off:
                n = min(CHUNK_SIZE, off - pos)
                self.upload_chunk(upload_id, pos, zeros[:n])
                pos += n
            pos = max(pos, off + length)
        return self.upload_commit(upload_id, path, size, mode, exclusive)

    @abc.abstractmethod
    def upload_abort(self, upload_id: str) -> None:
        """Forget a staged upload (no error if it is unknown)."""

    # -- namespace -----------------------------------------------------------------

    @abc.abstractmethod
    def mkdir(self, path: str, mode: int = 0o755) -> ObjectAttrs: ...

    @abc.abstractmethod
    def remove(self, path: str, directory: bool = False) -> None:
        """unlink (``directory`` False) or rmdir (True)."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str, flags: RenameFlags = RenameFlags.NONE) -> None: ...

    @abc.abstractmethod
    def symlink(self, target: str, path: str) -> ObjectAttrs:
        """Create ``path`` as a symlink whose text is ``target``, verbatim."""

    def link(self, src: str, dst: str) -> ObjectAttrs:
        """Give the file ``src`` the second name ``dst`` (link(2), never following ``src``);
        the attributes of the file after it (``nlink`` counts the names).

        Errors as link(2): ENOENT (no ``src``, or no parent of ``dst``), EEXIST (``dst``
        exists, whatever it is), EPERM (``src`` is a directory). A backend that
        cannot hold hard links (an object store) keeps this default, EPERM, which
        is what link(2) answers on a file system without them. A backend that
        holds them must also rewrite a file of several names in place (an upload or
        a truncation installed by rename would split its names).
        """
        raise oserror(errno.EPERM, "this repository holds no hard links")

    @abc.abstractmethod
    def setattr(
        self,
        path: str,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> ObjectAttrs:
        """chmod / utimes / truncate; None leaves a field unchanged."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (file descriptors...)."""

    # -- conveniences built on the interface ---------------------------------------

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> ObjectAttrs:
        """Upload ``data`` as ``path``'s new content (chunked, then committed)."""
        upload_id = secrets.token_hex(16)
        for off in range(0, len(data), CHUNK_SIZE):
            self.upload_chunk(upload_id, off, data[off : off + CHUNK_SIZE])
        return self.upload_commit(upload_id, path, len(data), mode)

    def read_bytes(self, path: str) -> bytes:
        """The whole content of ``path`` (pinned to one version)."""
        out = bytearray()
        version = ""
        while True:
            data, eof, version = self.read(path, len(out), CHUNK_SIZE, version)
            out += data
            if eof or not data:
                return bytes(out)
