"""The agent's service: dispatch of interposer messages, construction, lifecycle.

Role: :class:`AgentService` composes the parts of the agent, each in its own
module with its own semantics documented there, and maps each message kind to
its handler (:meth:`AgentService.handle`):

* :mod:`agent.metadata`: what the agent knows (attribute cache, kept
  listings, callback promises) and the metadata handlers;
* :mod:`agent.materialise`: ``Open``: fetches into the cache, creates,
  leases on copies;
* :mod:`agent.upload`: ``Commit``, ``Sync``, uploads;
* :mod:`agent.writeback`: the write-back queue in front of them (a close is
  durable in the agent's journal and uploaded behind it).

The parts subclass :class:`agent.metadata.Knowledge`, which declares the state
they share once; this constructor sets it.

Trusts: the interposer (the only peer that can reach the agent's private
socket) to send well-formed, already policy-checked requests; the server to
serve the repository. It does not trust message contents beyond what the
codec validated: paths are checked again by the handlers (absolute, normalised).

Handlers are plain methods taking a message and returning a reply message or
raising ``OSError``; the I/O loop in :mod:`agent.main` turns exceptions into
``Error`` replies; a message kind without a handler gets EOPNOTSUPP.
"""

from __future__ import annotations

import collections
import errno
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from synthfs.agent.cache import ContentCache
from synthfs.agent.callbacks import Promises
from synthfs.agent.materialise import Materialiser
from synthfs.agent.metadata import MetadataHandlers
from synthfs.agent.upload import Uploads
from synthfs.agent.upstream import Upstream
from synthfs.agent.writeback import DEFAULT_UPLOAD_DELAY, WriteBack
from synthfs.protocol.leases import LeaseBoard
from synthfs.protocol.messages import (
    Commit,
    Hello,
    Link,
    List,
    Message,
    Mkdir,
    Open,
    Readlink,
    Remove,
    Rename,
    SetAttr,
    Stat,
    Symlink,
    Sync,
)

__all__ = ["DEFAULT_ATTR_TTL", "AgentService"]

log = logging.getLogger(__name__)

#: Seconds an attribute learnt from a Stat or List reply answers a Stat.
DEFAULT_ATTR_TTL = 1.0


class AgentService(WriteBack, MetadataHandlers, Materialiser, Uploads):
    """The agent's core: one upstream session, one content cache, one attr cache."""

    def __init__(
        self,
        upstream: Upstream,
        cache_root: str,
        *,
        cache_size: int,
        attr_ttl: float = DEFAULT_ATTR_TTL,
        refused_paths: tuple[str, ...] = (),
        promises: Promises | None = None,
        refresh: Callable[[], None] | None = None,
        leases: LeaseBoard | None = None,
        leases_endpoint: str = "",
        write_through: bool = True,
        upload_delay: float = DEFAULT_UPLOAD_DELAY,
    ) -> None:
        self.upstream = upstream
        self.cache_root = cache_root
        self.cache_size = cache_size
        self.attr_ttl = attr_ttl
        self.refused_paths = refused_paths
        self.cache = ContentCache(cache_root, upstream.repo_id, cache_size)
        self.write_through = write_through
        self.upload_delay = upload_delay
        upstream.on_repo_change = self._repo_changed
        self._attrs = {}
        self._listings = collections.OrderedDict()
        self._listed = 0
        self._missing = set()
        # Without a subscription the promises never become live: every Open revalidates.
        self.promises = promises or Promises()
        self.promises.on_inval = self._invalidated
        self.promises.known = self._known_version
        self.leases = leases
        self.leases_endpoint = leases_endpoint if leases is not None else ""
        if leases is not None:
            leases.vouched = self.promises.vouched
            self.promises.on_change = self._changed
            self.promises.on_break = lambda why: leases.break_all(why)
        self._refresh = refresh or (lambda: None)
        self._registrations = upstream.registrations
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch-writer")
        self.stats = {"fetches": 0, "uploads": 0, "attr_hits": 0, "promised_opens": 0,
                      "leases": 0, "promised_lists": 0, "promised_absent": 0,
                      "direct_fetches": 0, "direct_failed": 0,
                      "local_creates": 0, "local_removes": 0}
        self._handlers: dict[type[Message], Callable[[Any], Message]] = {
            Hello: self.hello,
            Stat: self.stat,
            List: self.list,
            Readlink: self.readlink,
            Open: self.open,
            Commit: self.commit,
            Sync: self.sync,
            Mkdir: self.mkdir,
            Remove: self.remove,
            Rename: self.rename,
            Symlink: self.symlink,
            Link: self.link,
            SetAttr: self.setattr,
        }
        self._open_journal(write_through)

    def close(self) -> None:
        self._close_journal()
        self._writer.shutdown(wait=True)
        self.cache.close()

    def _repo_changed(self, repo_id: str) -> None:
        log.warning("server now serves repository %r: switching caches", repo_id)
        if self.leases is not None:
            self.leases.break_all("the server serves another repository")
        if self.journal is not None:
            self.journal.close()  # its rows wait for that repository's return
        self.cache.close()
        self.cache = ContentCache(self.cache_root, repo_id, self.cache_size)
        self._open_journal(self.write_through)
        self._attrs.clear()
        self._listings.clear()
        self._listed = 0
        self._missing.clear()
        self.promises.break_all("the server serves another repository")

    def handle(self, msg: Message) -> Message:
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise OSError(errno.EOPNOTSUPP, f"the agent does not serve {msg.kind}")
        return handler(msg)

    def idle(self) -> None:
        """Housekeeping between requests (about once a second)."""
        self.cache.flush_touches()
        now = time.monotonic()
        self.promises.expire()
        if self.leases is not None:
            self.leases.expire()
        for p in [
            p
            for p, (_, until) in self._attrs.items()
            if until <= now and not self.promises.holds_object(p)
        ]:
            del self._attrs[p]
        for p in [p for p in self._missing if not self.promises.holds(p)]:
            self._missing.discard(p)
