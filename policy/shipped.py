"""The policies that ship with synthfs, found by name.

``--policy readonly`` names ``policies/readonly.toml`` of the installed
package; a name with a ``/`` or ending in ``.toml``, or a file that exists
and is named like no shipped policy, is a path. A file in the current
directory named like a shipped policy makes the name ambiguous, and that is
an error (say ``./readonly`` for the file): taking the file would run
whatever a guest of an earlier run wrote into its cwd (the ``readonly`` and
``ci`` policies let it write there) as the policy the user named, and taking
the shipped one would shadow the user's own file. A directory of that name
(a project's ``ci/``) is no policy file, so it does not hide the shipped
policy.

Trusts nothing it reads beyond file names: the policy text itself is loaded
and validated by :mod:`synthfs.policy.engine`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHIPPED", "PolicyNotFound", "locate", "shipped"]

#: the directory of the shipped policies (inside the installed package)
SHIPPED = Path(__file__).resolve().parent.parent / "policies"


class PolicyNotFound(FileNotFoundError):
    """Neither a policy file nor the name of a shipped policy."""


def shipped() -> dict[str, Path]:
    """Name -> file of every shipped policy, sorted by name."""
    if not SHIPPED.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}


def locate(name: str) -> str:
    """The policy file ``--policy NAME`` means (a path, or a shipped policy's name)."""
    if "/" in name or name.endswith(".toml"):
        return name
    found = shipped().get(name)
    if os.path.lexists(name) and not os.path.isdir(name):
        if found is None:
            return name
        raise PolicyNotFound(
            f"{name!r} is both a file here and a shipped policy: say ./{name} for the file"
            f" or {found} for the shipped one (or remove the file)"
        )
    if found is None:
        names = ", ".join(shipped()) or "none"
        raise PolicyNotFound(
            f"no policy file {name!r} and no shipped policy of that name "
            f"(shipped: {names}; `synthfs policy list` shows them)"
        )
    return str(found)
