"""The S3 backend: a repository is a bucket (and a key prefix) in an object store.

Trusts nothing in the paths it gets (validated by :func:`split_path`, then
mapped to keys by :func:`key_of`); trusts the server's service loop to have
authenticated the request, and the store to be the one the operator named.
The store's credentials come from the standard AWS chain (environment,
``~/.aws/credentials``, a profile) and live only in this process's boto3
session: never in argv, a log line or a repr.

How a tree becomes objects (``P`` is the prefix, "" or ending in "/"):

* a file ``/a/b`` is the object ``P + "a/b"``; its mode, mtime, ctime and a
  random *version* (a new one on every content change: an ETag is the MD5 of
  the content, so rewriting the same bytes would keep it) are object metadata
  (``x-amz-meta-synthfs-*``);
* a directory ``/a`` is the empty marker object ``P + "a/"`` (its mode and
  times in metadata), so an empty directory exists; a prefix that holds
  objects but no marker (written by another S3 client) is a directory too,
  with mode 0755 and time 0; the root is the prefix itself, mode 0755;
* a symlink is an object whose body is the target and whose metadata says
  ``kind=symlink`` (readlink reads at most PATH_MAX + 1 bytes of it: a longer
  body, which another client may put, is EIO). An object without synthfs
  metadata is a file, mode 0644, mtime its Last-Modified. Metadata out of its
  range or form (any client of the bucket can set it: a mode over 0o7777, a
  time beyond 64 bits, a version that is no short token) is ignored for the
  same defaults, for that object only; a file's setuid and setgid bits are
  dropped, as a chmod through synthfs drops them.

What an object store cannot do, and what the backend answers instead:

* Names S3 cannot hold: a name that is not UTF-8 (EILSEQ, as a utf8-only file
  system says), a key over 1,024 bytes (ENAMETOOLONG).
* Hard links: ``link`` is EPERM (as on a file system without them).
* ``rename`` with RENAME_EXCHANGE: EINVAL (as on file systems without it).
* The root's mode and times are fixed (setattr of ``/``: EPERM).
* A directory's mtime is the time of its mkdir (or chmod/utimes): creating an
  entry does not rewrite the parent's marker (one more PUT per create).
* Checks that span objects (a file and a marker of the same name, a parent
  that is a directory, NOREPLACE on a directory) are made before the write,
  not atomically with it; exclusive create, mkdir and symlink are atomic
  (``If-None-Match: *``), and so is a NOREPLACE rename of a file (a
  conditional copy).

Writes: chunks are staged in the state directory (``--state``) and a commit
PUTs the whole object (multipart in parallel parts above
:data:`MULTIPART_MIN`): the old or the new version is visible, never a mix.
The bound on staging (:data:`STAGED_MAX`) counts bytes of data: the holes of a
sparse upload are holes of the staged file, uploaded as the zeros they read as
(an object has no holes), and a file of more than :data:`HOLES_MAX` bytes of
holes (a commit, or a truncate that extends) is EFBIG for its writer alone.
Parts go up on threads of their own (:data:`PART_WORKERS`), a few of one upload
at a time, so that a huge upload neither starves the lookups of others nor holds
its parts in memory; an abort stops a commit in progress at its next part.

Rename is copy + delete, which S3 cannot make atomic. The backend journals
the intent (``rename.journal`` in the state directory, fsynced) before the
first copy and its end after the last delete. A crash in between leaves, for
a file, both names holding the same content (the copy done, the source not
yet deleted), or only the source (copy not done); for a directory, the
destination holding a part of the tree and the source all of it, or the
destination all of it and the source what was not yet deleted. At the next
start the backend *finishes* every journalled rename: it copies what is still
at the source (the source wins, as it would have) and deletes it. A source
changed by another writer between the crash and the restart is still moved.
Within this process, a write below a directory being renamed waits until the
rename ends (:class:`~server.backends.treelock.TreeLock`), so it is never
deleted with the source nor brought back under the old name; through another
server of the bucket it is not held (README.md, "Serving an S3 bucket").

A listing needs one HEAD per entry it has not seen (mode and times are object
metadata, which a LIST does not return): those are made by
:mod:`server.backends.s3head` (signed here, on keep-alive connections: a fifth
of boto3's CPU), 64 in parallel, and shared with a listing of the same
directory made meanwhile (an agent's resend).

Reads are ranged GETs. With the signed client of :mod:`server.backends.s3head`
(any endpoint given, no proxy), a read is one ranged GET of its chunk whose body
is read from the socket straight into the buffer the reply is sent from: an
agent's fetch keeps several reads in flight (its window), so as many GETs run
in parallel, and no byte is copied in this process. Without it (boto3 alone),
a read pinned to a version (a fetch's) is answered from a read-ahead block of
:data:`READ_AHEAD` bytes (16 MiB, four chunks) got with one GET, the next block
got meanwhile: through boto3 a GET costs a few ms of this process's CPU (and
~20 ms before its first byte on SeaweedFS), so a GET per four chunks, two in
flight, beat one per chunk there. At most :data:`AHEAD_BLOCKS` blocks are held
(96 MiB). A read that names no version is one ranged GET of its own.

A store that does not answer makes a request fail with EIO after the
client's retries (3 attempts, connect and read timeouts of :data:`TIMEOUT_S`
each): nothing is acknowledged before the store acknowledged it, and the
agent keeps a written file's local copy when its upload fails.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime
import email.utils
import errno
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import stat as stat_mod
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from synthfs.extents import Extents, received, spans_whole
from synthfs.server.backends.base import (
    CHUNK_SIZE,
    MAX_PATH,
    Backend,
    Entries,
    Entry,
    Kind,
    Location,
    ObjectAttrs,
    RenameFlags,
    check_readable,
    oserror,
    split_path,
)
from synthfs.server.backends.s3head import HeadClient
from synthfs.server.backends.treelock import TreeLock
from synthfs.stamps import stamped_now

__all__ = ["DIR_OBJECT", "MULTIPART_MIN", "S3Backend", "key_of", "parse_time", "repo_id_for"]

log = logging.getLogger(__name__)

#: A commit bigger than this is a multipart upload (parts of :data:`PART_SIZE`, in parallel).
MULTIPART_MIN = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
#: Connect and read timeout of one request to the store (then the client retries).
TIMEOUT_S = 10.0
#: Seconds a presigned GET (:meth:`S3Backend.locate`) is good for: a 256 MiB fetch at
#: 20 MB/s takes 13 s; an agent whose fetch outlives it falls back to reads.
LOCATE_TTL_S = 300.0
#: Seconds an object found in the store is answered from memory for the checks of a
#: request's ancestors (a change made by another client of the bucket is seen after at most
#: this long; this backend's own at once). The object a request names is always asked
#: for (another server of the bucket may have changed it: see ``_node``).
NODE_TTL = 1.0
#: The longest key S3 holds (bytes of UTF-8).
MAX_KEY = 1024
#: Bytes of data all uncommitted uploads may hold in the state directory together.
STAGED_MAX = 4 * 1024**3
#: Bytes of holes one sparse file may have: an object has none, so its holes are uploaded
#: as zeros (read from the holes of the staged file: they cost no staging), and a file of
#: more is EFBIG (a guest sends nothing for a hole, the server would upload it all: a 3 GiB
#: ``truncate -s`` is ~90 s of one stream to the store). This much fits the agent's 5 s.
HOLES_MAX = 128 * 1024**2
#: Threads that upload the parts of multipart uploads (all uploads together), and parts of
#: one upload queued at once: a huge upload neither takes the threads the lookups use nor
#: makes another upload's parts wait behind all of its own.
PART_WORKERS = 8
PART_WINDOW = 4
#: The most parts of one multipart upload (S3's limit).
MAX_PARTS = 10_000
UPLOAD_IDLE_S = 600.0
_COMMITTED_MEMORY = 10_000
_ATTR_MEMORY = 100_000
SETID = stat_mod.S_ISUID | stat_mod.S_ISGID

_META = "synthfs-"  # x-amz-meta-synthfs-kind, -mode, -mtime, -ctime, -v
#: The object that makes a directory exist and holds its attributes: ``DIR/`` + this name
#: (a marker ``DIR/`` cannot: SeaweedFS keeps neither metadata nor content on it, and a
#: name over NAME_MAX it refuses). The one name the backend reserves (EINVAL): a dot file
#: ending in U+2400 SYMBOL FOR NULL, which no program names a file by accident.
DIR_OBJECT = ".synthfs-dir\u2400"
_JOURNAL = "rename.journal"
_UPLOADS = "s3-uploads"


def repo_id_for(endpoint: str, bucket: str, prefix: str) -> str:
    """A stable id of the repository (same endpoint, bucket and prefix -> same id)."""
    return hashlib.sha256(f"s3\0{endpoint}\0{bucket}\0{prefix}".encode()).hexdigest()[:16]


def key_of(prefix: str, parts: tuple[str, ...], directory: bool = False) -> str:
    """The object key of a path's components (a directory's marker ends in "/").

    EILSEQ for a name that is not UTF-8 (S3 keys are UTF-8); ENAMETOOLONG for a
    key over :data:`MAX_KEY` bytes; EINVAL for :data:`DIR_OBJECT`.
    """
    for part in parts:
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise oserror(errno.EILSEQ, "an S3 repository holds UTF-8 names only") from None
        if part == DIR_OBJECT:
            raise oserror(errno.EINVAL, "a name the S3 backend keeps for directories")
    key = prefix + "/".join(parts) + ("/" if directory and parts else "")
    if len(key.encode("utf-8")) + (len(DIR_OBJECT) if directory else 0) > MAX_KEY:
        raise oserror(errno.ENAMETOOLONG, "an S3 key holds at most 1024 bytes")
    return key


def _ino(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) >> 1


def _blocks(size: int) -> int:
    """st_blocks of a dense object: whole 4 KiB blocks, as a local file system allocates."""
    return (size + 4095) // 4096 * 8


def _ns(dt: Any) -> int:
    return int(dt.timestamp()) * 1_000_000_000 if dt is not None else 0


def parse_time(value: str) -> datetime.datetime:
    """A store's timestamp: ISO 8601 in a listing, RFC 1123 in a header.

    botocore's default parser (dateutil) costs ~0.7 ms a value: a third of the CPU
    of a listing of 1,000 objects. Anything else goes to botocore's parser.
    """
    try:
        if value[:1].isdigit():  # 2026-12-07T04:17:14.000Z, not Mon, 07 Dec 2026 ...
            dt = datetime.datetime.fromisoformat(value)
        else:
            dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=datetime.UTC)


def _listed(key: str) -> str:
    """A key (or prefix) of a listing asked for with ``EncodingType="url"``: encoded as a
    form is (AWS, SeaweedFS, MinIO): a space is "+", a "+" is "%2B"."""
    return urllib.parse.unquote_plus(key)


_OCTAL = re.compile(r"[0-7]{1,5}")
_DECIMAL = re.compile(r"-?[0-9]{1,19}")
_TOKEN = re.compile(r"[0-9A-Za-z._:-]{1,128}")


def _meta_mode(value: str | None, kind: Kind) -> int:
    """The mode bits an object's metadata says, or the default for ``kind``: at most
    0o7777 in octal digits; a file's setuid and setgid bits dropped, as a chmod
    through this backend drops them (another client's metadata makes no setuid file).
    A symlink's is 0o777, as on Linux."""
    if kind is Kind.SYMLINK:
        return 0o777
    if value is None or not _OCTAL.fullmatch(value) or int(value, 8) > 0o7777:
        return 0o755 if kind is Kind.DIR else 0o644
    return int(value, 8) & ~(SETID if kind is Kind.FILE else 0)


def _meta_time(value: str | None) -> int | None:
    """Nanoseconds an object's metadata says (a signed 64-bit count, as the wire
    carries), None when absent or out of range."""
    if value is None or not _DECIMAL.fullmatch(value):
        return None
    ns = int(value)
    return ns if -(2**63) <= ns < 2**63 else None


def _version(meta: dict[str, str], etag: str) -> str:
    """An object's version: its metadata's (a short token), else its ETag."""
    v = meta.get(_META + "v", "")
    return v if _TOKEN.fullmatch(v) else (etag.strip('"') or "0")


Keys = list[str]  # an alias: ``list`` is also a Backend method name

_loader: Any = None
_loader_lock = threading.Lock()


def _botocore_session() -> Any:
    """A new botocore session sharing one loader (the service model is parsed once)."""
    global _loader
    import botocore.session

    bs = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = bs.get_component("data_loader")
        else:
            bs.register_component("data_loader", _loader)
    return bs


class _Upload:
    __slots__ = ("aborted", "done", "last_used", "lock", "path", "ranges", "staged")

    def __init__(self, path: str) -> None:
        self.path = path
        self.ranges: list[tuple[int, int]] = []
        self.last_used = time.monotonic()
        self.lock = threading.Lock()
        self.done = False
        #: aborted while a commit runs: the commit stops at its next part
        self.aborted = False
        self.staged = 0

    def covers(self, size: int) -> bool:
        return spans_whole(self.ranges, size)


_F = TypeVar("_F", bound=Callable[..., Any])


def _changes(*names: str) -> Callable[[_F], _F]:
    """The method changes the paths of its arguments ``names``: it holds them against a
    directory's rename (:class:`TreeLock`; a rename holds its own)."""
    def wrap(fn: _F) -> _F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def held(self: S3Backend, *args: Any, **kw: Any) -> Any:
            bound = sig.bind(self, *args, **kw).arguments
            with self._tree_lock.change(*(split_path(bound[n]) for n in names)):
                return fn(self, *args, **kw)
        return cast(_F, held)
    return wrap


#: A pinned read is answered from a block of this many bytes got at once (4 chunks).
READ_AHEAD = 4 * CHUNK_SIZE
#: Read-ahead blocks kept at most (memory: this many times READ_AHEAD, 96 MiB).
AHEAD_BLOCKS = 6

_Block = tuple[bytes, int, str]  # (data, object size, version) of one ranged GET


class _ReadAhead:
    """The read-ahead blocks of one backend: got once, shared by the Reads they hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (key, version asked, offset) -> (the GET's future, bytes served from it)
        self._blocks: collections.OrderedDict[
            tuple[str, str, int], list[Any]] = collections.OrderedDict()
        #: blocks served whole lately: a late read-ahead does not get them again
        self._done: collections.OrderedDict[tuple[str, str, int], None] = (
            collections.OrderedDict())

    def _entry(self, be: S3Backend, parts: tuple[str, ...], key: str, version: str,
               first: int, *, wait: bool) -> tuple[concurrent.futures.Future[_Block], bool]:
        k = (key, version, first)
        with self._lock:
            entry = self._blocks.get(k)
            if entry is not None:
                self._blocks.move_to_end(k)
                fut: concurrent.futures.Future[_Block] = entry[0]
                return fut, False
            fut = concurrent.futures.Future()
            if not wait and k in self._done:
                return fut, False  # (never completed: nobody waits on it)
            self._blocks[k] = [fut, 0]
            while len(self._blocks) > AHEAD_BLOCKS:
                self._blocks.popitem(last=False)
        if wait:
            self._get(be, parts, key, first, fut, k)
        else:
            try:
                be._pool.submit(self._get, be, parts, key, first, fut, k)
            except RuntimeError:  # shutting down
                self._get(be, parts, key, first, fut, k)
        return fut, True

    def _get(self, be: S3Backend, parts: tuple[str, ...], key: str, first: int,
             fut: concurrent.futures.Future[_Block], k: tuple[str, str, int]) -> None:
        try:
            data, total, v, _meta, _etag = be._get(parts, key, first, READ_AHEAD)
        except BaseException as exc:
            with self._lock:
                if self._blocks.get(k, [None])[0] is fut:
                    del self._blocks[k]  # the next Read tries again (and gets its error)
            fut.set_exception(exc)
            return
        fut.set_result((data, total, v))

    def get(self, be: S3Backend, parts: tuple[str, ...], key: str, version: str,
            first: int) -> tuple[concurrent.futures.Future[_Block], bool]:
        """The block at ``first`` (got now by this thread unless another one has it),
        and whether this call got it."""
        return self._entry(be, parts, key, version, first, wait=True)

    def start(self, be: S3Backend, parts: tuple[str, ...], key: str, version: str,
              first: int) -> None:
        """Start getting the block at ``first`` in the background, unless it is there."""
        self._entry(be, parts, key, version, first, wait=False)

    def served(self, key: str, version: str, first: int, n: int, size: int) -> None:
        """``n`` more bytes of the block went out: drop it once all ``size`` did."""
        k = (key, version, first)
        with self._lock:
            entry = self._blocks.get(k)
            if entry is None:
                return
            entry[1] += n
            if entry[1] >= size:
                del self._blocks[k]
                self._done[k] = None
                while len(self._done) > 16 * AHEAD_BLOCKS:
                    self._done.popitem(last=False)

    def drop(self, key: str, version: str, first: int) -> None:
        with self._lock:
            self._blocks.pop((key, version, first), None)


class S3Backend(Backend):
    """A repository in ``bucket`` under ``prefix`` at the S3 ``endpoint``.

    ``state`` is the server's state directory (staged uploads and the rename
    journal), made 0700 when missing. ``profile`` picks a profile of the AWS
    configuration; the credentials come from boto3's standard chain.
    ``workers`` threads make the requests of one call in parallel (a listing's
    HEADs, a multipart upload's parts, a directory move's copies).
    """

    local_lookups = False  # a HEAD: the store's round trip, or its whole timeout

    def __init__(
        self,
        endpoint: str | None,
        bucket: str,
        prefix: str = "",
        *,
        state: str | os.PathLike[str],
        profile: str | None = None,
        region: str | None = None,
        workers: int = 64,
        timeout_s: float = TIMEOUT_S,
        staged_max: int = STAGED_MAX,
        holes_max: int = HOLES_MAX,
    ) -> None:
        import boto3
        from botocore.config import Config

        for name in ("boto3", "botocore", "s3transfer", "urllib3"):
            # Their DEBUG lines carry signed headers (the access key id): never in the log,
            # not even with -v; this module logs what the store answered instead.
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))

        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        key_of(self.prefix, ())  # a prefix S3 cannot hold is refused here
        self.endpoint = endpoint or ""
        self.bucket = bucket
        self.repo_id = repo_id_for(self.endpoint, bucket, self.prefix)
        bs = _botocore_session()
        bs.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=parse_time)
        session = boto3.Session(botocore_session=bs, profile_name=profile)
        credentials = session.get_credentials()
        if credentials is None:
            raise oserror(errno.EACCES, "no AWS credentials found (environment, "
                          "~/.aws/credentials or a profile)")
        self._s3 = session.client(
            "s3", endpoint_url=endpoint, region_name=region or session.region_name or "us-east-1",
            config=Config(
                max_pool_connections=max(8, workers + 16),
                connect_timeout=timeout_s, read_timeout=timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ))
        #: HEADs without boto3's cost (a listing makes one per entry): for an endpoint given
        #: (an S3 service, SeaweedFS, MinIO...) with no proxy between (boto3 would use it)
        self._heads: HeadClient | None = None
        if endpoint and HeadClient.usable(endpoint):
            self._heads = HeadClient(
                self._s3.meta.endpoint_url, self._s3.meta.region_name, bucket, credentials,
                timeout_s=timeout_s, ca_bundle=bs.get_config_variable("ca_bundle"))
        #: presigned GETs for :meth:`locate` (SigV4 query signing: If-Match is signed in)
        self._presigner = session.client(
            "s3", endpoint_url=endpoint, region_name=self._s3.meta.region_name,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        del session, credentials
        from botocore.exceptions import BotoCoreError, ClientError

        self._ClientError = ClientError
        self._BotoCoreError = BotoCoreError
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="synthfs-s3")
        self._parts = concurrent.futures.ThreadPoolExecutor(PART_WORKERS,
                                                            thread_name_prefix="synthfs-s3-part")
        self._lock = threading.Lock()
        self._attrs: collections.OrderedDict[str, tuple[str, ObjectAttrs]] = (
            collections.OrderedDict())
        self._uploads: dict[str, _Upload] = {}
        self._ahead = _ReadAhead()
        #: a listing's HEADs in flight: key -> (the tag listed, its future)
        self._inflight: dict[str, tuple[str, concurrent.futures.Future[ObjectAttrs | None]]] = {}
        self._recent: dict[tuple[str, ...], tuple[ObjectAttrs, float]] = {}
        self._committed: collections.OrderedDict[str, tuple[str, ObjectAttrs]] = (
            collections.OrderedDict())
        self._staged = 0
        self._staged_max = staged_max
        self._holes_max = holes_max
        self._journal_fd = -1
        self._tree_lock = TreeLock()  # a directory's rename against the writes below it
        try:
            self._check_bucket()  # before making anything: a wrong name leaves no trace
        except BaseException:
            self._pool.shutdown(wait=False)
            self._parts.shutdown(wait=False)
            raise
        self.state = os.path.realpath(state)
        old = os.umask(0o077)
        try:
            os.makedirs(os.path.join(self.state, _UPLOADS), 0o700, exist_ok=True)
        finally:
            os.umask(old)
        os.chmod(self.state, 0o700)
        for name in os.listdir(os.path.join(self.state, _UPLOADS)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.state, _UPLOADS, name))
        #: a test's hook: called between the copies and the deletes of a rename
        self.after_copy: Callable[[], None] | None = None
        self._journal_lock = threading.Lock()
        try:
            self._journal_fd = self._recover()
        except BaseException:
            self._pool.shutdown(wait=False)
            self._parts.shutdown(wait=False)
            raise
        log.info("S3 backend on %s bucket %s prefix %r (repo %s)", self.endpoint or "AWS",
                 bucket, self.prefix, self.repo_id)

    def __repr__(self) -> str:
        return f"S3Backend({self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._parts.shutdown(wait=True)
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1

    # -- the store -----------------------------------------------------------------------

    def _call(self, op: str, **kw: Any) -> Any:
        """One request to the store; its failure as the OSError a file system would give."""
        try:
            return getattr(self._s3, op)(Bucket=self.bucket, **kw)
        except self._ClientError as exc:
            raise self._oserror(op, exc) from None
        except self._BotoCoreError as exc:  # no connection, a timeout, a torn response
            log.warning("S3 %s: %s", op, type(exc).__name__)
            raise oserror(errno.EIO, f"the object store did not answer ({type(exc).__name__})"
                          ) from None

    @staticmethod
    def _code(exc: Any) -> tuple[str, int]:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return str(err.get("Code", "")), int(status or 0)

    def _oserror(self, op: str, exc: Any) -> OSError:
        code, status = self._code(exc)
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            if code == "NoSuchBucket":
                return oserror(errno.EIO, f"no bucket {self.bucket}")
            return oserror(errno.ENOENT)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return oserror(errno.EEXIST)
        if code == "InvalidRange" or status == 416:
            return oserror(errno.ERANGE, "InvalidRange")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or \
                status == 403:
            log.warning("S3 %s refused: %s", op, code)
            return oserror(errno.EACCES, f"the object store refused it ({code})")
        if code in ("KeyTooLongError",):
            return oserror(errno.ENAMETOOLONG)
        log.warning("S3 %s failed: %s (HTTP %s)", op, code, status)
        return oserror(errno.EIO, f"the object store failed ({code or status})")

    def _check_bucket(self) -> None:
        try:
            self._call("head_bucket")
        except OSError as exc:
            where = f"{self.bucket} at {self.endpoint or 'AWS'}"
            if exc.errno == errno.ENOENT:
                raise oserror(errno.ENOENT, f"no bucket {where} (create it first)") from None
            raise oserror(exc.errno or errno.EIO, f"bucket {where}: {exc.strerror}") from None

    # -- attributes ------------------------------------------------------------------------

    def _attrs_of(self, key: str, meta: dict[str, str], size: int, last_modified: Any,
                  etag: str) -> ObjectAttrs:
        """The attributes an object's key, metadata and headers say. The metadata may
        come from any client of the bucket: a value out of its kind's range or form is
        ignored for what the object itself says (``_meta_*``), never an error, so that
        one such object cannot make its directory unlistable."""
        kind_s = meta.get(_META + "kind", "")
        if key == DIR_OBJECT or key.endswith("/" + DIR_OBJECT):  # not "x" + DIR_OBJECT
            key = key[: -len(DIR_OBJECT)]
            kind = Kind.DIR
        elif key.endswith("/"):  # a marker another client made
            kind = Kind.DIR
        else:
            kind = Kind.SYMLINK if kind_s == "symlink" else Kind.FILE
        mode = _meta_mode(meta.get(_META + "mode"), kind)
        mtime = _meta_time(meta.get(_META + "mtime"))
        if mtime is None:
            mtime = _ns(last_modified)
        ctime = _meta_time(meta.get(_META + "ctime"))
        if ctime is None:
            ctime = mtime
        version = _version(meta, etag)
        if kind is Kind.DIR:
            size = 0
        return ObjectAttrs(kind, size, mode, mtime, ctime, _ino(key.rstrip("/")), 1, version,
                           0 if kind is Kind.DIR else _blocks(size))

    def _remember(self, key: str, tag: str, a: ObjectAttrs) -> None:
        with self._lock:
            self._attrs[key] = (tag, a)
            self._attrs.move_to_end(key)
            while len(self._attrs) > _ATTR_MEMORY:
                self._attrs.popitem(last=False)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._attrs.pop(key, None)
            self._inflight.pop(key, None)  # a HEAD begun before the change: not shared

    def _head(self, key: str) -> ObjectAttrs | None:
        got = self._head_etag(key)
        return None if got is None else got[0]

    def _head_etag(self, key: str) -> tuple[ObjectAttrs, str] | None:
        """The object ``key``'s attributes and ETag (one HEAD), None if there is none."""
        if self._heads is not None:
            h = self._heads.head(key, parse_time)
            if h is None:
                return None
            meta, size, lm, etag = h.metadata, h.size, h.last_modified, h.etag
        else:
            try:
                r = self._call("head_object", Key=key)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise
            meta, size, lm = r.get("Metadata", {}), r.get("ContentLength", 0), r.get("LastModified")
            etag = r.get("ETag", "")
        a = self._attrs_of(key, meta, size, lm, etag)
        self._remember(key, f"{etag}|{_ns(lm)}", a)
        return a, etag

    @staticmethod
    def _implicit(dkey: str) -> ObjectAttrs:
        """A directory without its object (a prefix another client filled; the root)."""
        return ObjectAttrs(Kind.DIR, 0, 0o755, 0, 0, _ino(dkey.rstrip("/")), 1, "implicit", 0)

    def _dir_attrs(self, dkey: str) -> ObjectAttrs | None:
        """The attributes in the directory object of ``dkey`` (a prefix), None if none."""
        return self._head(dkey + DIR_OBJECT)

    def _node(self, parts: tuple[str, ...], fresh: bool = False,
              dir_memory: bool = False) -> ObjectAttrs | None:
        """What ``parts`` names (never following a final symlink), None if nothing.

        An object found in the last :data:`NODE_TTL` seconds is answered from memory
        (this backend's own changes update it at once); a miss always asks the store.
        ``fresh`` always asks the store: for the object a request names (a stat, the
        target of a change), because another server of the same bucket may have changed
        it a moment ago and told its agents so (an agent revalidating after that news
        must not get this server's memory of the old object); the memory serves the
        ancestors' checks, and with ``dir_memory`` a directory's stat (its attributes
        change on chmod/utimes only, not on a create in it: a guest creating files would
        otherwise cost a listing per create).
        The store is asked for the object and for a listing of ``parts/`` at once (a
        directory is a prefix), so that a miss costs one round trip, not three.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._recent.get(parts)
        if hit is not None and hit[1] > now:
            if not fresh or (dir_memory and hit[0].kind is Kind.DIR):
                return hit[0]
            if hit[0].kind is not Kind.DIR:
                # Asked again, but a file a moment ago: its HEAD alone (no listing) unless
                # it is gone (a create's lookups cost one request each, not two).
                known = self._head(key_of(self.prefix, parts))
                if known is not None:
                    self._learn(parts, known, now)
                    return known
        dkey = key_of(self.prefix, parts, directory=True)
        if not parts:
            a: ObjectAttrs | None = self._dir_attrs(dkey) or self._implicit(dkey)
        else:
            listing = self._pool.submit(self._call, "list_objects_v2", Prefix=dkey, MaxKeys=1)
            a = self._head(key_of(self.prefix, parts))
            if a is None:
                r = listing.result()
                if r.get("KeyCount", 0) or r.get("Contents"):
                    a = self._dir_attrs(dkey) or self._implicit(dkey)
        if a is not None:
            self._learn(parts, a, now)
        return a

    def _learn(self, parts: tuple[str, ...], a: ObjectAttrs, now: float | None = None) -> None:
        """``parts`` is ``a`` now (kept for :data:`NODE_TTL` seconds)."""
        expiry = (time.monotonic() if now is None else now) + NODE_TTL
        with self._lock:
            self._recent[parts] = (a, expiry)
            if len(self._recent) > _ATTR_MEMORY:
                self._recent.clear()

    def _unlearn(self, parts: tuple[str, ...], tree: bool = False) -> None:
        with self._lock:
            if tree:
                self._recent.clear()
            else:
                self._recent.pop(parts, None)

    def _missing(self, parts: tuple[str, ...]) -> OSError:
        """The error for a lookup of ``parts`` that found nothing: ENOENT, or ENOTDIR/ELOOP
        when an ancestor is a file or a symlink."""
        for i in range(len(parts) - 1, 0, -1):
            a = self._node(parts[:i])
            if a is None:
                continue
            if a.kind is Kind.FILE:
                return oserror(errno.ENOTDIR)
            if a.kind is Kind.SYMLINK:
                return oserror(errno.ELOOP, "the server does not follow symlinks")
            break
        return oserror(errno.ENOENT)

    def _lookup(self, parts: tuple[str, ...], fresh: bool = False,
                dir_memory: bool = False) -> ObjectAttrs:
        a = self._node(parts, fresh, dir_memory)
        if a is None:
            raise self._missing(parts)
        return a

    def _parent_dir(self, parts: tuple[str, ...]) -> None:
        """Raise unless the parent of ``parts`` is a directory."""
        parent = parts[:-1]
        if not parent:
            return
        a = self._node(parent)
        if a is None:
            raise self._missing(parent)
        if a.kind is Kind.FILE:
            raise oserror(errno.ENOTDIR)
        if a.kind is Kind.SYMLINK:
            raise oserror(errno.ELOOP, "the server does not follow symlinks")

    # -- reads -------------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectAttrs:
        return self._lookup(split_path(path), fresh=True, dir_memory=True)

    def list(self, path: str) -> tuple[ObjectAttrs, Entries]:
        parts = split_path(path)
        own = self._lookup(parts)
        if own.kind is not Kind.DIR:
            raise oserror(errno.ENOTDIR)
        dkey = key_of(self.prefix, parts, directory=True)
        names: dict[str, ObjectAttrs | None] = {}
        heads: dict[str, str] = {}
        tags: dict[str, str] = {}
        for page in self._pages(dkey):
            for obj in page.get("Contents", []):
                key = _listed(obj["Key"])
                name = key[len(dkey):]
                if not name or name in names or name == DIR_OBJECT:
                    continue  # the directory's own object (or marker)
                tag = f"{obj.get('ETag', '')}|{_ns(obj.get('LastModified'))}"
                with self._lock:
                    hit = self._attrs.get(key)
                if hit is not None and hit[0] == tag:
                    names[name] = hit[1]
                else:
                    names[name] = None
                    heads[name] = key
                    tags[name] = tag
            for cp in page.get("CommonPrefixes", []):
                sub = _listed(cp["Prefix"])
                name = sub[len(dkey):].rstrip("/")
                if name and name not in names:
                    names[name] = None
                    heads[name] = sub
        futures = {name: self._shared_head(key, tags.get(name, ""))
                   for name, key in heads.items()}
        entries: Entries = []
        for name, a in names.items():
            if a is None:
                a = futures[name].result()
                if a is None:
                    continue  # removed while listing
            entries.append(Entry(name, a))
        entries.sort(key=lambda e: e.name)
        return own, entries

    def _shared_head(self, key: str, tag: str) -> concurrent.futures.Future[ObjectAttrs | None]:
        """The attributes of a listed entry, asked for on the pool; a HEAD of the same key
        and listed ``tag`` still in flight for another listing is shared (an agent resends
        a listing that took longer than its attempt's time: the resend must not make every
        HEAD again). A subdirectory (no tag) is not shared."""
        if not tag:
            return self._pool.submit(self._entry_attrs, key)
        with self._lock:
            hit = self._inflight.get(key)
            if hit is not None and hit[0] == tag:
                return hit[1]
            fut = self._pool.submit(self._entry_attrs, key)
            self._inflight[key] = (tag, fut)

        def landed(f: concurrent.futures.Future[ObjectAttrs | None]) -> None:
            with self._lock:
                if self._inflight.get(key, (tag, None))[1] is f:
                    del self._inflight[key]

        fut.add_done_callback(landed)
        return fut

    def _entry_attrs(self, key: str) -> ObjectAttrs | None:
        if key.endswith("/"):  # a subdirectory
            return self._dir_attrs(key) or self._implicit(key)
        return self._head(key)

    def _pages(self, prefix: str, delimiter: str = "/") -> Iterator[dict[str, Any]]:
        """The pages of a listing. Its keys come form-encoded (``EncodingType=url``: a
        key may hold characters XML cannot): a space is "+" and a "+" is "%2B", so every
        key read from a page is decoded with ``unquote_plus``, as botocore does."""
        token = None
        while True:
            kw: dict[str, Any] = {"Prefix": prefix, "EncodingType": "url"}
            if delimiter:
                kw["Delimiter"] = delimiter
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kw)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def _tree(self, dkey: str) -> Keys:
        """Every key under the prefix ``dkey`` (no delimiter)."""
        return [_listed(o["Key"]) for page in self._pages(dkey, "")
                for o in page.get("Contents", [])]

    def read(
        self, path: str, offset: int, length: int, version: str = ""
    ) -> tuple[bytes, bool, str]:
        if not 0 <= length <= CHUNK_SIZE or offset < 0:
            raise oserror(errno.EINVAL, "read length")
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EISDIR)
        return self._read_one(parts, key_of(self.prefix, parts), offset, length, version)

    def _get(self, parts: tuple[str, ...], key: str, offset: int, length: int,
             if_match: str = "") -> tuple[bytes, int, str, dict[str, str], str]:
        """(data, object size, version, metadata, etag) of one ranged GET."""
        kw: dict[str, Any] = {"Key": key, "Range": f"bytes={offset}-{offset + max(length, 1) - 1}"}
        if if_match:
            kw["IfMatch"] = if_match
        try:
            r = self._call("get_object", **kw)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                a = self._node(parts, fresh=True)
                if a is None:
                    raise self._missing(parts) from None
                if a.kind is Kind.DIR:
                    raise oserror(errno.EISDIR) from None
                raise
            if exc.errno == errno.ERANGE:  # at or past the end (or an empty object)
                a = self._head(key)
                if a is None:
                    raise oserror(errno.ENOENT) from None
                if a.kind is Kind.SYMLINK:
                    raise oserror(errno.ELOOP) from None
                return b"", a.size, a.version, {}, ""
            if exc.errno == errno.EEXIST:  # IfMatch failed: another version
                raise oserror(errno.ESTALE, "the object changed") from None
            raise
        meta = r.get("Metadata", {})
        if meta.get(_META + "kind") == "symlink":
            r["Body"].close()
            raise oserror(errno.ELOOP)
        try:
            data = r["Body"].read() if length else b""
        except self._BotoCoreError as exc:
            raise oserror(errno.EIO, f"the object store broke off ({type(exc).__name__})"
                          ) from None
        finally:
            r["Body"].close()
        total = r.get("ContentLength", 0)
        cr = r.get("ContentRange", "")
        if "/" in cr:
            with contextlib.suppress(ValueError):
                total = int(cr.rsplit("/", 1)[1])
        etag = r.get("ETag", "")
        v = _version(meta, etag)
        return data, total, v, meta, etag

    def read_into(
        self, path: str, offset: int, buf: memoryview, version: str = ""
    ) -> tuple[int, bool, str]:
        """One ranged GET into ``buf`` (:meth:`HeadClient.get_into`), else (boto3) a read
        pinned to a ``version`` is answered from a read-ahead block.

        The store's answer other than the range asked for (past the end, no such
        key, an error) is asked again through boto3, below, which maps it to an errno.

        A fetch reads an object chunk by chunk, a few in flight. One GET per chunk
        costs a request each (signing, a first byte after ~20 ms on SeaweedFS, ~3 ms of
        this process's CPU); so the chunk's whole :data:`READ_AHEAD` block is got at
        once, the next block is got meanwhile (two GETs in flight, each streamed by
        the store at its speed: started by the Read that got the block before it), and
        the other chunks of a block are copied out of it
        as their Reads come (concurrent Reads of one block wait for its one GET).
        A block serves only Reads of the version its GET returned (another version
        is ESTALE, as a direct read's); it is dropped once every chunk of it was
        served, and at most :data:`AHEAD_BLOCKS` are kept (older ones dropped).
        A read that names no version, or spans two blocks, is one ranged GET.
        """
        n = len(buf)
        if not 0 <= n <= CHUNK_SIZE or offset < 0:
            raise oserror(errno.EINVAL, "read length")
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EISDIR)
        if self._heads is not None:
            got_direct = self._heads.get_into(key_of(self.prefix, parts), offset, buf)
            if got_direct is not None:
                got, total, headers = got_direct
                meta = {k[len("x-amz-meta-"):]: v for k, v in headers.items()
                        if k.startswith("x-amz-meta-")}
                if meta.get(_META + "kind") == "symlink":
                    raise oserror(errno.ELOOP)
                v = _version(meta, headers.get("etag", ""))
                if version and v != version:
                    raise oserror(errno.ESTALE, "the object changed")
                return got, offset + got >= total, v
        first = offset - offset % READ_AHEAD
        if not version or n == 0 or offset + n > first + READ_AHEAD:
            return super().read_into(path, offset, buf, version)
        key = key_of(self.prefix, parts)
        block, mine = self._ahead.get(self, parts, key, version, first)
        data, total, v = block.result()
        if v != version:
            self._ahead.drop(key, version, first)
            raise oserror(errno.ESTALE, "the object changed")
        if mine and first + READ_AHEAD < total:  # (once: a block served is not got again)
            self._ahead.start(self, parts, key, version, first + READ_AHEAD)
        at = offset - first
        got = max(0, min(n, len(data) - at))
        buf[:got] = memoryview(data)[at:at + got]
        self._ahead.served(key, version, first, got, min(READ_AHEAD, total - first))
        return got, offset + got >= total, v

    def locate(self, path: str, version: str = "") -> Location:
        """A presigned GET of the object ``path`` at ``version``, good for
        :data:`LOCATE_TTL_S` and only with ``If-Match`` its ETag (signed in: a replaced
        object answers 412, never a mix of two versions). It grants a read of this one
        object version until it expires, and nothing else; the credentials stay here."""
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EISDIR)
        key = key_of(self.prefix, parts)
        got = self._head_etag(key)
        if got is None:
            a = self._node(parts, fresh=True)
            if a is not None and a.kind is Kind.DIR:
                raise oserror(errno.EISDIR)
            raise self._missing(parts)
        a, etag = got
        check_readable(a, version)
        if not etag:
            raise oserror(errno.EOPNOTSUPP, "the store gave no ETag to pin the version by")
        expires_ns = time.time_ns() + int(LOCATE_TTL_S * 1e9)
        try:
            url = self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key, "IfMatch": etag},
                ExpiresIn=int(LOCATE_TTL_S))
        except self._BotoCoreError as exc:
            raise oserror(errno.EIO, f"could not sign a GET ({type(exc).__name__})") from None
        return Location(url, etag, a.size, a.version, expires_ns)

    def _read_one(self, parts: tuple[str, ...], key: str, offset: int, length: int,
                  version: str) -> tuple[bytes, bool, str]:
        data, total, v, _meta, _etag = self._get(parts, key, offset, length)
        if version and version != v:
            raise oserror(errno.ESTALE, "the object changed")
        data = data[:length]
        return data, offset + len(data) >= total, v

    def readlink(self, path: str) -> str:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EINVAL)
        key = key_of(self.prefix, parts)
        try:
            # At most one byte more than a link can hold: another client's object tagged
            # a symlink may be of any size, and this answers every guest's path walk.
            r = self._call("get_object", Key=key, Range=f"bytes=0-{MAX_PATH}")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                a = self._node(parts)
                if a is None:
                    raise self._missing(parts) from None
                raise oserror(errno.EINVAL) from None
            if exc.errno == errno.ERANGE:  # an empty object (no byte 0)
                a = self._head(key)
                if a is None:
                    raise self._missing(parts) from None
                if a.kind is not Kind.SYMLINK:
                    raise oserror(errno.EINVAL) from None
                return ""
            raise
        try:
            if r.get("Metadata", {}).get(_META + "kind") != "symlink":
                raise oserror(errno.EINVAL)
            try:
                body = r["Body"].read(MAX_PATH + 1)
            except self._BotoCoreError as exc:
                raise oserror(errno.EIO, f"the object store broke off ({type(exc).__name__})"
                              ) from None
        finally:
            r["Body"].close()
        if len(body) > MAX_PATH:
            # No file system holds such a link (symlink(2) refuses it with ENAMETOOLONG),
            # and ENAMETOOLONG from readlink would blame the caller's path: the object is
            # what is wrong, as a corrupt inode is EIO.
            raise oserror(errno.EIO, f"a symlink object over {MAX_PATH} bytes")
        return os.fsdecode(body)

    # -- uploads (staged in the state directory) --------------------------------------------

    def _staged_path(self, upload_id: str) -> str:
        name = hashlib.sha256(upload_id.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.state, _UPLOADS, name)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [u for u, up in self._uploads.items() if now - up.last_used > UPLOAD_IDLE_S]
        for u in old:
            self.upload_abort(u)

    def upload_chunk(self, upload_id: str, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > 2**50:
            raise oserror(errno.EINVAL, "upload offset")
        self._expire()
        with self._lock:
            if upload_id in self._committed:
                return  # a late resend after the commit
            up = self._uploads.get(upload_id)
            if up is None:
                up = self._uploads[upload_id] = _Upload(self._staged_path(upload_id))
        with up.lock:
            if up.done:
                return
            # Counted: the bytes of data staged (a gap between chunks is a hole of the
            # staged file, which costs nothing), not the highest offset.
            ranges = received(up.ranges, offset, offset + len(data))
            grow = sum(b - a for a, b in ranges) - up.staged
            with self._lock:
                if self._staged + grow > self._staged_max:
                    raise oserror(errno.ENOSPC, "staged uploads are at their bound")
                self._staged += grow
            up.staged += grow
            fd = os.open(up.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            up.ranges = ranges
            up.last_used = time.monotonic()

    def upload_abort(self, upload_id: str) -> None:
        with self._lock:
            up = self._uploads.pop(upload_id, None)
            if up is not None:
                self._staged -= up.staged
        if up is not None:
            up.aborted = True  # a commit in progress stops at its next part and unlinks
            if up.lock.acquire(blocking=False):  # never waits for that commit
                try:
                    up.done = True
                    with contextlib.suppress(OSError):
                        os.unlink(up.path)
                finally:
                    up.lock.release()

    def upload_commit(
        self, upload_id: str, path: str, size: int, mode: int = 0o644, exclusive: bool = False
    ) -> ObjectAttrs:
        return self._commit(upload_id, path, size, None, mode, exclusive)

    def upload_commit_sparse(
        self, upload_id: str, path: str, size: int, extents: Extents, mode: int = 0o644,
        exclusive: bool = False,
    ) -> ObjectAttrs:
        """The object is dense, but its holes are neither staged nor counted: the staged
        file is truncated to size (its holes read as zeros) and uploaded as it is."""
        holes = size - sum(n for _, n in extents)
        if holes > self._holes_max:
            raise oserror(errno.EFBIG, f"an S3 object has no holes: this file's {holes} bytes "
                          f"of holes would be uploaded as zeros (at most {self._holes_max})")
        return self._commit(upload_id, path, size, extents, mode, exclusive)

    @_changes("path")  # every commit, dense or sparse (a sparse one went round the lock)
    def _commit(self, upload_id: str, path: str, size: int, extents: Extents | None,
                mode: int, exclusive: bool) -> ObjectAttrs:
        parts = split_path(path)
        with self._lock:
            done = self._committed.get(upload_id)
            up = self._uploads.get(upload_id)
        if done is not None:
            if done[0] != path:
                raise oserror(errno.EINVAL, "upload committed to another path")
            return done[1]
        if not parts:
            raise oserror(errno.EEXIST if exclusive else errno.EISDIR)
        key = key_of(self.prefix, parts)
        if up is None:
            if size != 0 and (extents is None or extents):
                raise oserror(errno.EIO, "unknown upload")
            with self._lock:  # no chunk (empty, or holes only): a resend must find it
                up = self._uploads.setdefault(upload_id, _Upload(self._staged_path(upload_id)))
        with up.lock:
            if up.done:
                with self._lock:
                    done = self._committed.get(upload_id)
                if done is not None and done[0] == path:
                    return done[1]  # a resend that waited for the commit it repeats
                raise oserror(errno.EIO, "upload aborted")
            if extents is not None:
                want: list[tuple[int, int]] = []
                for off, n in extents:
                    want = received(want, off, off + n)
                if up.ranges != want or (up.ranges and up.ranges[-1][1] > size):
                    raise oserror(errno.EIO, "the staged upload is not the committed extents")
                if size:
                    fd = os.open(up.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    try:
                        os.ftruncate(fd, size)  # the holes: nothing staged
                    finally:
                        os.close(fd)
            elif not up.covers(size) or (size and os.stat(up.path).st_size != size):
                raise oserror(errno.EIO, "the staged upload is not the committed size")
            if exclusive:
                # The PUT's own precondition (If-None-Match) refuses a file or a symlink
                # there: only a directory of that name (a prefix) is looked for.
                cur = None
                if self._is_prefix(key_of(self.prefix, parts, directory=True)):
                    raise oserror(errno.EEXIST)
            else:
                cur = self._node(parts, fresh=True)
            if cur is None:
                self._parent_dir(parts)
            elif cur.kind is Kind.DIR:
                raise oserror(errno.EEXIST if exclusive else errno.EISDIR)
            elif exclusive:
                raise oserror(errno.EEXIST)
            elif cur.kind is Kind.SYMLINK:
                raise oserror(errno.ELOOP, "the server does not write through symlinks")
            keep = cur.mode if cur is not None else (mode & 0o7777 & ~SETID)
            now = time.time_ns()  # an exclusive create's mtime carries its stamp
            try:
                a = self._put_file(key, up.path if size else None, size, keep,
                                   stamped_now(upload_id, now) if exclusive else now,
                                   exclusive, cancel=up)
            finally:
                with self._lock:
                    ours = self._uploads.get(upload_id) is not up
                if ours:  # aborted meanwhile: upload_abort left the file to us
                    up.done = True
                    with contextlib.suppress(OSError):
                        os.unlink(up.path)
            up.done = True
        with self._lock:
            if self._uploads.get(upload_id) is up:  # else an abort took it (and its count)
                del self._uploads[upload_id]
                self._staged -= up.staged
            self._committed[upload_id] = (path, a)
            while len(self._committed) > _COMMITTED_MEMORY:
                self._committed.popitem(last=False)
        with contextlib.suppress(OSError):
            os.unlink(up.path)
        self._learn(parts, a)
        return a

    def _meta(self, kind: Kind, mode: int, mtime_ns: int, ctime_ns: int,
              version: str) -> dict[str, str]:
        return {_META + "kind": kind.value, _META + "mode": f"{mode:o}",
                _META + "mtime": str(mtime_ns), _META + "ctime": str(ctime_ns),
                _META + "v": version}

    def _put_file(self, key: str, src: str | None, size: int, mode: int, mtime_ns: int,
                  exclusive: bool, kind: Kind = Kind.FILE, body: bytes = b"",
                  ctime_ns: int | None = None, cancel: _Upload | None = None) -> ObjectAttrs:
        """PUT ``src`` (a staged file, or ``body``) as ``key``; its attributes."""
        version = secrets.token_hex(8)
        meta = self._meta(kind, mode, mtime_ns, mtime_ns if ctime_ns is None else ctime_ns,
                          version)
        cond = {"IfNoneMatch": "*"} if exclusive else {}
        if src is not None and size > MULTIPART_MIN:
            r = self._multipart(key, src, size, meta, cond, cancel)
        else:
            data = body
            if src is not None:
                with open(src, "rb") as f:
                    data = f.read()
            r = self._call("put_object", Key=key, Body=data, Metadata=meta, **cond)
        a = self._attrs_of(key, meta, size, None, r.get("ETag", ""))
        self._forget(key)
        return a

    def _multipart(self, key: str, src: str, size: int, meta: dict[str, str],
                   cond: dict[str, str], cancel: _Upload | None = None) -> dict[str, Any]:
        """Parts on :attr:`_parts`, at most :data:`PART_WINDOW` of this upload queued at
        once (memory: a part per part thread); stops when ``cancel`` is aborted."""
        part_size = max(PART_SIZE, -(-size // MAX_PARTS))
        mp = self._call("create_multipart_upload", Key=key, Metadata=meta)
        uid = mp["UploadId"]

        def part(n: int, off: int) -> dict[str, Any]:
            if cancel is not None and cancel.aborted:
                raise oserror(errno.ECANCELED, "the upload was aborted")
            with open(src, "rb") as f:
                data = os.pread(f.fileno(), part_size, off)
            r = self._call("upload_part", Key=key, UploadId=uid, PartNumber=n, Body=data)
            return {"PartNumber": n, "ETag": r["ETag"]}

        queued: collections.deque[concurrent.futures.Future[dict[str, Any]]] = (
            collections.deque())
        try:
            done = []
            for i, off in enumerate(range(0, size, part_size)):
                if len(queued) >= PART_WINDOW:
                    done.append(queued.popleft().result())
                queued.append(self._parts.submit(part, i + 1, off))
            while queued:
                done.append(queued.popleft().result())
            # the store may not take If-None-Match on a completion: look first
            if cond and self._head(key) is not None:
                raise oserror(errno.EEXIST)
            return self._call("complete_multipart_upload", Key=key, UploadId=uid,
                              MultipartUpload={"Parts": done}, **cond)
        except BaseException:
            for f in queued:
                f.cancel()
            concurrent.futures.wait(queued)
            with contextlib.suppress(OSError):
                self._call("abort_multipart_upload", Key=key, UploadId=uid)
            raise

    # -- namespace -----------------------------------------------------------------------------

    @_changes("path")
    def mkdir(self, path: str, mode: int = 0o755) -> ObjectAttrs:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EEXIST)
        if self._node(parts, fresh=True) is not None:
            raise oserror(errno.EEXIST)
        self._parent_dir(parts)
        a = self._put_marker(parts, mode & 0o7777, time.time_ns(), exclusive=True)
        self._learn(parts, a)
        return a

    def _put_marker(self, parts: tuple[str, ...], mode: int, mtime_ns: int, *,
                    exclusive: bool, ctime_ns: int | None = None) -> ObjectAttrs:
        """PUT the directory object (its existence and attributes)."""
        dkey = key_of(self.prefix, parts, directory=True)
        return self._put_file(dkey + DIR_OBJECT, None, 0, mode, mtime_ns, exclusive, Kind.DIR,
                              ctime_ns=ctime_ns)

    @_changes("path")
    def remove(self, path: str, directory: bool = False) -> None:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EBUSY)
        a = self._lookup(parts, fresh=True)
        self._unlearn(parts)
        if not directory:
            if a.kind is Kind.DIR:
                raise oserror(errno.EISDIR)
            key = key_of(self.prefix, parts)
            self._call("delete_object", Key=key)
            self._forget(key)
            return
        if a.kind is not Kind.DIR:
            raise oserror(errno.ENOTDIR)
        dkey = key_of(self.prefix, parts, directory=True)
        if not self._empty(dkey):
            raise oserror(errno.ENOTEMPTY)
        self._call("delete_object", Key=dkey + DIR_OBJECT)
        self._forget(dkey + DIR_OBJECT)
        self._call("delete_object", Key=dkey)  # a marker, or a store's folder (SeaweedFS)

    def _is_prefix(self, dkey: str) -> bool:
        """True if some key begins with ``dkey`` (a directory is there)."""
        r = self._call("list_objects_v2", Prefix=dkey, MaxKeys=1)
        return bool(r.get("KeyCount", 0) or r.get("Contents"))

    def _empty(self, dkey: str) -> bool:
        r = self._call("list_objects_v2", Prefix=dkey, MaxKeys=3, EncodingType="url")
        own = (dkey, dkey + DIR_OBJECT)
        return all(_listed(o["Key"]) in own for o in r.get("Contents", []))

    @_changes("path")
    def symlink(self, target: str, path: str) -> ObjectAttrs:
        parts = split_path(path)
        if not parts:
            raise oserror(errno.EEXIST)
        if "\x00" in target:
            raise oserror(errno.EINVAL, "NUL in link target")
        if not target:
            raise oserror(errno.ENOENT, "empty link target")
        if self._node(parts, fresh=True) is not None:
            raise oserror(errno.EEXIST)
        self._parent_dir(parts)
        body = os.fsencode(target)
        a = self._put_file(key_of(self.prefix, parts), None, len(body), 0o777,
                           time.time_ns(), True, Kind.SYMLINK, body)
        self._learn(parts, a)
        return a

    @_changes("path")
    def setattr(
        self,
        path: str,
        mode: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        size: int | None = None,
    ) -> ObjectAttrs:
        parts = split_path(path)
        try:
            a = self._setattr(parts, mode, mtime_ns, size)
        except OSError:
            self._unlearn(parts)
            raise
        self._learn(parts, a)
        return a

    def _setattr(self, parts: tuple[str, ...], mode: int | None, mtime_ns: int | None,
                 size: int | None) -> ObjectAttrs:
        a = self._lookup(parts, fresh=True)
        if size is not None:
            if a.kind is Kind.DIR:
                raise oserror(errno.EISDIR)
            if a.kind is Kind.SYMLINK:
                raise oserror(errno.ELOOP, "the server does not write through symlinks")
        if mode is not None and a.kind is Kind.SYMLINK:
            raise oserror(errno.EOPNOTSUPP, "symlinks have no mode on Linux")
        now = time.time_ns()
        new_mode = a.mode if mode is None else (mode & 0o7777 & ~(
            SETID if a.kind is Kind.FILE else 0))
        new_mtime = a.mtime_ns if mtime_ns is None else mtime_ns
        if size is not None and size != a.size:
            return self._truncate(parts, a, size, new_mode,
                                  now if mtime_ns is None else mtime_ns)
        if mode is None and mtime_ns is None:
            return a  # atime only: not kept
        if a.kind is Kind.DIR:
            return self._put_marker(parts, new_mode, new_mtime, exclusive=False, ctime_ns=now)
        key = key_of(self.prefix, parts)
        meta = self._meta(a.kind, new_mode, new_mtime, now, a.version)
        self._call("copy_object", Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                   Metadata=meta, MetadataDirective="REPLACE")
        self._forget(key)
        return a._replace(mode=new_mode, mtime_ns=new_mtime, ctime_ns=now)

    def _truncate(self, parts: tuple[str, ...], a: ObjectAttrs, size: int, mode: int,
                  mtime_ns: int) -> ObjectAttrs:
        """A new version of the first ``size`` bytes (zero-extended), staged then PUT."""
        key = key_of(self.prefix, parts)
        if size - a.size > self._holes_max:
            raise oserror(errno.EFBIG, f"an S3 object has no holes: extending it by "
                          f"{size - a.size} bytes would upload them as zeros "
                          f"(at most {self._holes_max})")
        want = min(size, a.size)  # staged (the extension is a hole of the staged file)
        with self._lock:
            if self._staged + want > self._staged_max:
                raise oserror(errno.ENOSPC, "staged uploads are at their bound")
            self._staged += want
        try:
            return self._truncate_staged(parts, key, a, size, want, mode, mtime_ns)
        finally:
            with self._lock:
                self._staged -= want

    def _truncate_staged(self, parts: tuple[str, ...], key: str, a: ObjectAttrs, size: int,
                         want: int, mode: int, mtime_ns: int) -> ObjectAttrs:
        tmp = self._staged_path("truncate-" + secrets.token_hex(8))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            done, version = 0, a.version
            while done < want:
                data, _eof, version = self._read_one(parts, key, done,
                                                     min(CHUNK_SIZE, want - done), version)
                if not data:
                    break
                os.pwrite(fd, data, done)
                done += len(data)
            os.ftruncate(fd, size)
            os.close(fd)
            fd = -1
            return self._put_file(key, tmp, size, mode, mtime_ns, False)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # -- rename: copy + delete, journalled ---------------------------------------------------

    def rename(self, src: str, dst: str, flags: RenameFlags = RenameFlags.NONE) -> None:
        """A directory's move holds both trees (:class:`TreeLock`): a write below it waits."""
        flags = RenameFlags.checked(flags)
        sp, dp = split_path(src), split_path(dst)
        if not sp or not dp:
            raise oserror(errno.EBUSY)
        while True:
            is_dir = self._lookup(sp, fresh=True).kind is Kind.DIR
            hold = self._tree_lock.move if is_dir else self._tree_lock.change
            with hold(sp, dp):
                a = self._lookup(sp, fresh=True)
                if (a.kind is Kind.DIR) == is_dir:  # else replaced meanwhile: lock again
                    return self._rename(sp, dp, a, flags)

    def _rename(self, sp: tuple[str, ...], dp: tuple[str, ...], a: ObjectAttrs,
                flags: RenameFlags) -> None:
        if flags & RenameFlags.EXCHANGE:
            self._lookup(dp)
            raise oserror(errno.EINVAL, "an S3 repository cannot exchange two names")
        self._parent_dir(dp)
        if a.kind is Kind.DIR and dp[: len(sp)] == sp:
            if dp == sp:
                return
            raise oserror(errno.EINVAL, "a directory cannot move into itself")
        if dp == sp:
            return
        b = self._node(dp, fresh=True)
        if b is not None:
            if flags & RenameFlags.NOREPLACE:
                raise oserror(errno.EEXIST)
            if a.kind is not Kind.DIR and b.kind is Kind.DIR:
                raise oserror(errno.EISDIR)
            if a.kind is Kind.DIR and b.kind is not Kind.DIR:
                raise oserror(errno.ENOTDIR)
            if b.kind is Kind.DIR and not self._empty(key_of(self.prefix, dp, directory=True)):
                raise oserror(errno.ENOTEMPTY)
        if a.kind is Kind.DIR:
            skey = key_of(self.prefix, sp, directory=True)
            dkey = key_of(self.prefix, dp, directory=True)
            longest = max((len(k.encode()) for k in self._tree(skey)), default=0)
            if longest - len(skey.encode()) + len(dkey.encode()) > MAX_KEY:
                raise oserror(errno.ENAMETOOLONG, "an S3 key holds at most 1024 bytes")
        else:
            skey, dkey = key_of(self.prefix, sp), key_of(self.prefix, dp)
        self._unlearn(sp, tree=True)
        op_id = secrets.token_hex(8)
        self._journal({"rename": op_id, "src": skey, "dst": dkey,
                       "dir": a.kind is Kind.DIR})
        try:
            if a.kind is not Kind.DIR:
                # A file's copy is one request: if it fails, nothing moved (the journal
                # forgets it: a NOREPLACE refused by the store must not be finished later).
                try:
                    self._copy(skey, dkey, noreplace=bool(flags & RenameFlags.NOREPLACE))
                except OSError:
                    self._journal({"done": op_id})
                    raise
            self._move(skey, dkey, a.kind is Kind.DIR, copied=True)
        finally:
            self._unlearn(sp, tree=True)
        self._journal({"done": op_id})

    def _move(self, skey: str, dkey: str, is_dir: bool, *, copied: bool = False) -> None:
        """Copy then delete (both idempotent: a journalled move is finished by running it
        again). A directory: every key below ``skey`` (its own object too) moves below
        ``dkey``. ``copied``: a file's copy is made already."""
        if not is_dir:
            keys = [skey]
            if not copied:
                try:
                    self._copy(skey, dkey)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    keys = []  # nothing left at the source: a finished move
        else:
            keys = self._tree(skey)
            list(self._pool.map(lambda k: self._copy(k, dkey + k[len(skey):], quiet=True), keys))
        if self.after_copy is not None:
            self.after_copy()
        keys.sort(reverse=True)  # what a marker holds before the marker (a store with folders)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            if len(batch) == 1:
                self._call("delete_object", Key=batch[0])
            else:
                self._call("delete_objects", Delete={"Objects": [{"Key": k} for k in batch],
                                                     "Quiet": True})
        for k in keys:
            self._forget(k)
        self._forget(dkey)
        if is_dir:  # the (empty) directories a store with folders keeps, deepest first
            dirs = {skey}
            for k in keys:
                cut = k.rfind("/")
                while cut >= len(skey):
                    dirs.add(k[: cut + 1])
                    cut = k.rfind("/", 0, cut)
            for d in sorted(dirs, key=len, reverse=True):
                self._call("delete_object", Key=d)

    def _copy(self, skey: str, dkey: str, *, noreplace: bool = False,
              quiet: bool = False) -> None:
        kw: dict[str, Any] = {"IfNoneMatch": "*"} if noreplace else {}
        try:
            if skey.endswith("/"):  # a marker: some stores copy no "directory" (SeaweedFS)
                r = self._call("head_object", Key=skey)
                self._call("put_object", Key=dkey, Body=b"", Metadata=r.get("Metadata", {}),
                           **kw)
            else:
                self._call("copy_object", Key=dkey,
                           CopySource={"Bucket": self.bucket, "Key": skey},
                           MetadataDirective="COPY", **kw)
        except OSError as exc:
            if quiet and exc.errno == errno.ENOENT:
                return  # removed meanwhile
            raise
        self._forget(dkey)

    # -- the journal ------------------------------------------------------------------------

    def _journal(self, record: dict[str, object]) -> None:
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
        with self._journal_lock:
            os.write(self._journal_fd, line)
            os.fsync(self._journal_fd)

    def _recover(self) -> int:
        """Finish every rename the journal began and did not end; start a new journal."""
        path = os.path.join(self.state, _JOURNAL)
        pending: dict[str, dict[str, Any]] = {}
        try:
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue  # a torn last line: that record was never acted on
                    if not isinstance(rec, dict):
                        continue
                    if isinstance(rec.get("rename"), str):
                        pending[rec["rename"]] = rec
                    elif isinstance(rec.get("done"), str):
                        pending.pop(rec["done"], None)
        except FileNotFoundError:
            pass
        for op_id, rec in pending.items():
            src, dst, is_dir = rec.get("src"), rec.get("dst"), bool(rec.get("dir"))
            if not (isinstance(src, str) and isinstance(dst, str)
                    and src.startswith(self.prefix) and dst.startswith(self.prefix)):
                log.warning("journal: rename %s is not one of this repository's: skipped", op_id)
                continue
            log.warning("journal: finishing a rename cut short (%s -> %s)", src, dst)
            self._move(src, dst, is_dir)
        tmp = path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.fsync(fd)
        os.rename(tmp, path)
        dfd = os.open(self.state, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        os.lseek(fd, 0, os.SEEK_END)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        os.close(fd)
        return os.open(path, flags)
