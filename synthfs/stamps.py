"""The stamp of an exclusive create: what lets a resent create recognise its own file.

Shared by the servers' backends (which stamp the file) and the agent (which
checks the stamp after a failover): pure, no I/O.
"""

from __future__ import annotations

import hashlib

#: The sub-millisecond part of an exclusive create's mtime: its upload's stamp.
CREATE_STAMP_MOD = 10**6


def create_stamp(upload_id: str) -> int:
    """The nanoseconds below the millisecond that the server gives the mtime of a
    file an exclusive ``UploadCommit`` made (its *verifier*, as NFSv3's exclusive
    create keeps one).

    An exclusive create resent through a second server after its first died
    answers EEXIST when the first had made the file before it died; the agent
    tells that file from one another client made by this stamp (and its size),
    and the create succeeds instead of failing on the guest's own file. The mtime
    is an ordinary creation time: only digits no clock promises are chosen.
    """
    digest = hashlib.blake2b(upload_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CREATE_STAMP_MOD


def stamped_now(upload_id: str, now_ns: int) -> int:
    """The latest time not after ``now_ns`` that carries ``upload_id``'s create
    stamp (at most a millisecond before it: never a time in the future)."""
    t = now_ns - now_ns % CREATE_STAMP_MOD + create_stamp(upload_id)
    return t if t <= now_ns else t - CREATE_STAMP_MOD


def made_by(upload_id: str, mtime_ns: int, now_ns: int, within_ns: int = 300 * 10**9) -> bool:
    """Whether a file of this mtime can be the one ``upload_id``'s exclusive create
    made: its stamp, and made in the last ``within_ns`` (a resend follows its
    first attempt within a call's budget: seconds)."""
    return (mtime_ns % CREATE_STAMP_MOD == create_stamp(upload_id)
            and now_ns - within_ns <= mtime_ns <= now_ns + within_ns)
