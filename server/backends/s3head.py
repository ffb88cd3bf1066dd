"""HEADs and ranged GETs to an S3 store without boto3's per-request cost.

A directory listing needs one HEAD per entry (an entry's mode and times are
object metadata, which a LIST does not return). Through boto3 a HEAD costs
about 1.7 ms of CPU in the server (its event hooks, endpoint rules, signer and
response parser), so a cold listing of 3,000 entries took 5 s of CPU under
the GIL, past the agent's timeout, however many threads made the requests.
This client signs the request itself (AWS Signature Version 4, with the
credentials of the same boto3 session, refreshed by it) and sends it on a
keep-alive connection of the calling thread: about 0.3 ms of CPU per HEAD.

A fetch's reads are ranged GETs made the same way (:meth:`HeadClient.get_into`),
their body read from the socket straight into the buffer the server's reply is
sent from: no bytes object per GET, no copy out of one (boto3 reads a body into
bytes, which the backend then copied into the reply).

Trusts the endpoint and the credentials :class:`S3Backend` was given; the
credentials are read when a request is signed and never kept in a repr or
logged. Used only where nothing stands between the server and the store that
boto3 would handle and this does not (:meth:`HeadClient.usable`: no proxy
configured for the endpoint); otherwise the backend keeps boto3's HEAD.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import hmac
import http.client
import logging
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple

from synthfs.server.backends.base import oserror

__all__ = ["Head", "HeadClient"]

log = logging.getLogger(__name__)

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Attempts per HEAD (a connection reset or a 5xx is retried, as boto3's standard mode).
ATTEMPTS = 3


class Head(NamedTuple):
    """What a HEAD answered: the object's size, ETag, Last-Modified and metadata."""

    size: int
    etag: str
    last_modified: datetime.datetime | None
    metadata: dict[str, str]


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class HeadClient:
    """Signed HEADs to ``endpoint_url`` (path-style: ``/BUCKET/KEY``) in ``region``.

    ``credentials`` is a botocore credentials object (its frozen values are read
    per request, so refreshable credentials stay fresh).
    """

    def __init__(self, endpoint_url: str, region: str, bucket: str, credentials: Any, *,
                 timeout_s: float, ca_bundle: str | None = None) -> None:
        u = urllib.parse.urlsplit(endpoint_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port
        self._netloc = u.netloc
        self._base = u.path.rstrip("/") + "/" + urllib.parse.quote(bucket, safe="") + "/"
        self._region = region
        self._credentials = credentials
        self._timeout = timeout_s
        self._ssl = ssl.create_default_context(cafile=ca_bundle) if self._https else None
        self._local = threading.local()
        self._keys: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"HeadClient({self._netloc!r})"

    @staticmethod
    def usable(endpoint_url: str) -> bool:
        """True unless a proxy is configured for ``endpoint_url`` (boto3 would use it)."""
        u = urllib.parse.urlsplit(endpoint_url)
        proxies = urllib.request.getproxies_environment()
        if u.scheme not in proxies:
            return True
        return bool(urllib.request.proxy_bypass(u.hostname or ""))

    def _connection(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self._https:
                c = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                context=self._ssl)
            else:
                c = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = c
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        self._local.conn = None
        if c is not None:
            c.close()

    def _signing_key(self, secret: str, day: str) -> bytes:
        k = self._keys.get((secret, day))
        if k is None:
            k = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), self._region), "s3"),
                      "aws4_request")
            self._keys = {(secret, day): k}  # one day's key of the current secret
        return k

    def _headers(self, path: str, method: str = "HEAD") -> dict[str, str]:
        creds = self._credentials.get_frozen_credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        signed = {"host": self._netloc, "x-amz-content-sha256": _EMPTY_SHA256,
                  "x-amz-date": stamp}
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = ";".join(sorted(signed))
        canonical = "\n".join([
            method, path, "", *(f"{k}:{signed[k]}" for k in sorted(signed)), "", names,
            _EMPTY_SHA256])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers = dict(signed)
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={names}, Signature={signature}")
        return headers

    def head(self, key: str, parse_time: Callable[[str], datetime.datetime]) -> Head | None:
        """The object ``key``'s HEAD; None if there is none. OSError as :class:`S3Backend`
        maps a store's answers: EACCES when refused, EIO when it fails or does not answer."""
        path = self._base + urllib.parse.quote(key.encode("utf-8"), safe="/~")
        status, reason = 0, ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 1.0))
            try:
                c = self._connection()
                c.request("HEAD", path, headers=self._headers(path))
                r = c.getresponse()
                r.read()
                headers = {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    self._drop()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                reason = type(exc).__name__
                continue
            status = r.status
            if status == 200:
                return self._parsed(headers, parse_time)
            if status == 404:
                return None
            if status == 403:
                log.warning("S3 head_object refused: HTTP 403")
                raise oserror(errno.EACCES, "the object store refused it (HTTP 403)")
            if status not in (429, 500, 502, 503, 504):
                break
        if status:
            log.warning("S3 head_object failed: HTTP %s", status)
            raise oserror(errno.EIO, f"the object store failed ({status})")
        log.warning("S3 head_object: %s", reason)
        raise oserror(errno.EIO, f"the object store did not answer ({reason})")

    def get_into(self, key: str, offset: int, buf: memoryview) -> tuple[int, int,
                                                                       dict[str, str]] | None:
        """A ranged GET of ``len(buf)`` bytes of ``key`` at ``offset``, read into ``buf``.

        (bytes read, the object's size, the response's headers, lower-cased), or None
        when the store answered anything but a whole partial content (206): past the
        end, no such key, refused, failing or not answering after :data:`ATTEMPTS`.
        The caller then asks through boto3, whose answer it maps to an errno.
        """
        n = len(buf)
        if n == 0:
            return None
        path = self._base + urllib.parse.quote(key.encode("utf-8"), safe="/~")
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 1.0))
            try:
                c = self._connection()
                headers = self._headers(path, "GET")
                headers["range"] = f"bytes={offset}-{offset + n - 1}"
                c.request("GET", path, headers=headers)
                r = c.getresponse()
                if r.status != 206:
                    self._drop()  # (its body unread: the connection cannot be reused)
                    if r.status in (429, 500, 502, 503, 504):
                        continue
                    return None
                got = {k.lower(): v for k, v in r.getheaders()}
                first, _, total = got.get("content-range", "").partition(" ")[2].partition("/")
                want = int(got.get("content-length", "-1"))
                if not 0 <= want <= n or first.partition("-")[0] != str(offset):
                    self._drop()
                    return None
                done = 0
                while done < want:
                    k = r.readinto(buf[done:want])
                    if not k:
                        break
                    done += k
                if done < want:  # cut short: again
                    self._drop()
                    continue
                if r.will_close:
                    self._drop()
                return done, int(total), got
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self._drop()
                log.debug("S3 ranged get: %s", type(exc).__name__)
                continue
        return None

    @staticmethod
    def _parsed(headers: dict[str, str],
                parse_time: Callable[[str], datetime.datetime]) -> Head:
        meta = {k[len("x-amz-meta-"):]: v for k, v in headers.items()
                if k.startswith("x-amz-meta-")}
        try:
            size = int(headers.get("content-length", "0"))
        except ValueError:
            size = 0
        lm = headers.get("last-modified")
        return Head(size, headers.get("etag", ""), parse_time(lm) if lm else None, meta)
