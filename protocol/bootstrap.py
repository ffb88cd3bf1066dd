"""The bootstrap credential, as the agent and the server both understand it.

The key file's rules (a regular file of this user, mode 0600: nobody else may
read or write it) and the proof an agent puts in ``Register`` (HMAC-SHA256 of
``agent_id|nonce|timestamp_ns`` under the key, so the key never crosses the
wire) live here once, so the two sides cannot drift apart.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat

__all__ = ["check_key_fd", "register_mac"]


def check_key_fd(fd: int, path: str, what: str = "bootstrap key") -> None:
    """Refuse a key file that is not a regular file of ours with mode 0600 (PermissionError).

    ``what`` names the file in the errors (the CURVE secret key files follow the same rules).
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(errno.EINVAL, f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise PermissionError(
            errno.EPERM,
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
            f"can access it; it must be 0600 (chmod 600 {path})",
        )
    if st.st_uid != os.getuid():
        raise PermissionError(errno.EPERM, f"{what} {path} is not owned by this user")


def register_mac(key: bytes, agent_id: str, nonce: str, timestamp_ns: int) -> str:
    """The mac an agent puts in Register (hex HMAC-SHA256)."""
    msg = f"{agent_id}|{nonce}|{timestamp_ns}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()
