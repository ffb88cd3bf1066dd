"""The policy engine: who may do what on the synthetic mount and on the host.

Role: load a policy file (TOML, ``version = 1``, validated strictly) and
answer the supervisor's questions, fast and without I/O. Pure: the only I/O
is reading the file in :meth:`Policy.from_toml` and the lazy ``sha256``
callable the supervisor passes to :meth:`Policy.identify`.

Trust: the policy file and the environment used to expand its variables come
from the user who runs ``synthfs`` (trusted, but may be wrong: every mistake
is a :class:`PolicyError` naming the line). Everything the guest controls
(executable path, argv, guest paths) is data to match, never code; argv in
particular is chosen by the caller and is *not* an authentication factor.

API (what the supervisor calls)::

    Policy.from_toml(path, env=os.environ) -> Policy      # PolicyError on any defect
    Policy.from_toml(path, env, notes=[])  # check: an unset variable is a note, not an error
    Policy.from_text(text, name="<policy>", env=os.environ) -> Policy
    Policy.default(mount="/data") -> Policy  # policies/default.toml: all read-write, host as is
    policy.read_only() -> Policy        # --read-only: write-class ops on the mount -> EROFS
    policy.mounts: tuple[str, ...]      # guest paths of the synthetic mounts, e.g. ("/data",)
    policy.symlinks[mount] -> Symlinks  # FOLLOW | ANCHORED | REFUSE_HOST ([[mount]] symlinks)
    policy.network: NetworkMode         # DENY | LOOPBACK | ALLOW (ALLOW when [host] says nothing)
    policy.identify(exe, argv, sha256) -> App              # at each execve; exe is a realpath
    policy.unmatched -> App             # the app before the first execve / of unlisted exes
    policy.decide(app, op, path) -> Decision               # path: normalised, on a mount
    policy.decide_host(app, op, path) -> Decision          # path: normalised, not on a mount
    policy.explain(app, op, path) -> tuple[Decision, ...]  # every matching rule, winner first
    AuditRecord.from_decision(...).to_json() -> str        # one JSON line for --audit

Semantics in brief (the full text, with examples, is ``docs/policy.md``):

* Operations: ``read write create delete rename stat list chmod link``
  (``*`` in a file means all). ``read stat list`` are the read class, the
  rest the write class.
* Apps: ``[[app]]`` entries are tried **in file order**; the first whose
  ``match.exe`` (any of its path globs, against the realpath of the
  executable) and ``match.argv`` (every glob must match at least one argv
  element, ``argv[0]`` included) both match is the app. If that app pins
  ``match.sha256`` (a digest or a list) and the binary's digest is not one of
  them (or cannot be read), the process gets a *pin-mismatch* app that is
  denied everything on the mount with EACCES: it never falls through to a
  later, more permissive entry.
  No entry matches: the top-level ``default`` applies.
* Rules: ``allow``/``deny`` lists of ``{paths, ops[, errno]}``; the most
  specific matching glob wins (more literal characters, then fewer ``**``,
  then fewer ``*``/``?``); at equal specificity deny beats allow, then the
  rule written first. No rule matches: the app's ``default``, else the
  top-level ``default`` (itself ``"deny"`` when absent). Deny errno:
  EACCES (default), EPERM, ENOENT (hide existence) or EROFS.
* ``--read-only`` (:meth:`Policy.read_only`): a write-class op the policy
  would allow on the mount is denied with EROFS, rule ``"--read-only"``;
  denials keep their own errno (ENOENT hiding survives).
* ``[host]``: ``read`` and ``write`` allow-lists of globs (a write-listed
  path is also readable); an absent list leaves that class unrestricted, an
  absent ``[host]`` leaves the host untouched. ``network`` is
  ``"deny" | "loopback" | "allow"``.
* Variables ``$NAME`` / ``${NAME}`` in paths, exe and argv globs and mount
  paths are expanded at load from ``env``; undefined or empty is an error;
  ``$$`` is a literal ``$``. With ``notes`` (``synthfs policy check``), an
  undefined variable reads as a placeholder (``/NAME`` at the start of the
  text, ``NAME`` after it) and a note saying so is appended instead.
* Refused at load: unknown keys, wrong types, bad globs, unknown ops or
  errnos, a missing or unsupported ``version``, rules outside every mount,
  two rules of one app giving one (glob, op) pair twice (two readings), and
  an app that an earlier app shadows (identical or covering matchers).

Speed: globs are compiled once; per app and op all rules are one regular
expression in precedence order; decisions are memoised per (app, op, path)
and, where no rule tells a directory's children apart, per directory. The
caches are plain dicts (safe under the GIL; a race only recomputes).

Decision.rule is ``"<file>:<line>"`` of the deciding rule, ``"default"``,
``"--read-only"`` or ``"engine"`` (the supervisor passed a path that is not
normalised or not on a mount: fail closed with EACCES).
"""

from __future__ import annotations

import datetime
import difflib
import enum
import errno as _errno
import functools
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from synthfs.policy.globs import ArgvGlob, GlobError, PathGlob, literal_prefix, paths_related
from synthfs.policy.lines import KeyPath, key_lines, line_of

__all__ = [
    "DEFAULT_POLICY_TOML",
    "ERRNOS",
    "READ_OPS",
    "WRITE_OPS",
    "Action",
    "App",
    "AuditRecord",
    "Decision",
    "NetworkMode",
    "Op",
    "Policy",
    "PolicyError",
    "Symlinks",
    "is_normal",
]


class Op(enum.StrEnum):
    """An operation on a path, as the supervisor classifies a syscall."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    RENAME = "rename"
    STAT = "stat"
    LIST = "list"
    CHMOD = "chmod"
    LINK = "link"


READ_OPS: frozenset[Op] = frozenset({Op.READ, Op.STAT, Op.LIST})
WRITE_OPS: frozenset[Op] = frozenset(Op) - READ_OPS


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class NetworkMode(enum.Enum):
    DENY = "deny"
    LOOPBACK = "loopback"
    ALLOW = "allow"


class Symlinks(enum.Enum):
    """How a symlink stored on a mount resolves (``[[mount]] symlinks``, docs/namespace.md).

    ``FOLLOW`` (default): as the kernel does on a real mount, from the guest's
    root; a target on the host is a host path from then on ([host] rules, trusted
    paths). ``ANCHORED``: absolute targets start at the mount root and ``..``
    stops there (a repository never names a host file). ``REFUSE_HOST``: a link
    that leads to the host fails with EACCES (as a symlink the kernel's
    protected_symlinks refuses to follow).
    """

    FOLLOW = "follow"
    ANCHORED = "anchored"
    REFUSE_HOST = "refuse-host"


#: errno names a policy may use, and their values.
ERRNOS: dict[str, int] = {
    "EACCES": _errno.EACCES,
    "EPERM": _errno.EPERM,
    "ENOENT": _errno.ENOENT,
    "EROFS": _errno.EROFS,
}
_ERRNO_NAMES = {v: k for k, v in ERRNOS.items()}


@attrs.frozen(slots=True)
class Decision:
    """The answer to one question: allow, or deny with an errno.

    ``rule`` names what decided (``"ci.toml:12"``, ``"default"``,
    ``"--read-only"``, ``"engine"``); ``reason`` is one human sentence;
    ``errno`` is 0 when allowed.
    """

    action: Action
    rule: str
    reason: str
    errno: int

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW


class PolicyError(ValueError):
    """A policy file that cannot be used; ``str()`` is ``"file:line: message"``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@attrs.frozen(slots=True, eq=False)
class _Rule:
    """One (rule entry, path glob) pair, compiled."""

    glob: PathGlob
    ops: frozenset[Op]
    action: Action
    errno: int
    ref: str
    order: int
    decision: Decision
    # For the per-directory cache (see Policy._dir_decision):
    lp: tuple[str, ...] = attrs.field(init=False)  # literal components before a wildcard
    fixed_len: int | None = attrs.field(init=False)  # component count when there is no **
    under: str | None = attrs.field(init=False)  # "H/**": regex of H, to match a prefix

    @lp.default
    def _lp(self) -> tuple[str, ...]:
        return literal_prefix(self.glob)

    @fixed_len.default
    def _fixed_len(self) -> int | None:
        return None if "**" in self.glob.components else len(self.glob.components)

    @under.default
    def _under(self) -> str | None:
        comps = self.glob.components
        if not comps or comps[-1] != "**":
            return None
        if len(comps) == 1:
            return ".*"
        return PathGlob.compile("/" + "/".join(comps[:-1])).regex

    @property
    def sort_key(self) -> tuple[int, int, int, int, int]:
        lit, dstar, star = self.glob.specificity
        return (-lit, -dstar, -star, 0 if self.action is Action.DENY else 1, self.order)


@attrs.frozen(slots=True, eq=False)
class App:
    """An application as identified at execve. Hashable by identity.

    Only use an App with the policy (or its :meth:`Policy.read_only` twin)
    whose :meth:`Policy.identify` returned it.
    """

    name: str
    ref: str  # "file:line" of the [[app]] header, or "default"
    exe: tuple[PathGlob, ...]
    argv: tuple[ArgvGlob, ...]
    sha256: frozenset[str] | None  # accepted digests (lowercase hex), None: no pin
    default: Decision
    rules: tuple[_Rule, ...]
    deny_all: Decision | None = None  # set on pin-mismatch apps
    pin_mismatch: App | None = None  # the deny-all twin of a pinned app
    owner: object = attrs.field(default=None, repr=False)  # the loaded policy it belongs to
    # per op, built on first use by _table(): (alternation, decisions, rules)
    tables: dict[Op, tuple[re.Pattern[str] | None, tuple[Decision, ...], tuple[_Rule, ...]]] = (
        attrs.field(factory=dict, repr=False)
    )
    exe_re: re.Pattern[str] | None = attrs.field(init=False, repr=False)

    @exe_re.default
    def _compile_exe(self) -> re.Pattern[str] | None:
        if not self.exe:
            return None
        return re.compile("|".join(f"(?:{g.regex})" for g in self.exe), re.DOTALL)

    @property
    def matched(self) -> bool:
        """False for the catch-all app of executables no [[app]] matches."""
        return self.ref != "default"

    @property
    def any_exe(self) -> bool:
        """True when the app matches every executable (a ``/**`` exe glob) and pins
        no digest: it is not an identity, so a loaded-by-request process may have it."""
        return self.sha256 is None and any(g.text == "/**" for g in self.exe)

    def matches(self, exe: str, argv: Sequence[str]) -> bool:
        """exe and argv matchers only (the pin is checked by identify)."""
        if self.exe_re is None or self.exe_re.fullmatch(exe) is None:
            return False
        return all(any(g.matches(a) for a in argv) for g in self.argv)


@attrs.frozen(slots=True, eq=False)
class _Host:
    read: re.Pattern[str] | None
    read_decisions: tuple[Decision, ...]
    read_deny: Decision
    write: re.Pattern[str] | None
    write_decisions: tuple[Decision, ...]
    write_deny: Decision
    read_globs: tuple[PathGlob, ...]
    write_globs: tuple[PathGlob, ...]
    #: where device nodes may be made (None: nowhere, fail closed)
    mknod: re.Pattern[str] | None = None
    mknod_decisions: tuple[Decision, ...] = ()
    mknod_deny: Decision = Decision(Action.DENY, "engine", "device nodes are refused", 1)
    mknod_globs: tuple[PathGlob, ...] = ()


# --- the default policy -----------------------------------------------------------------

#: Text of ``policies/default.toml`` (a test keeps the two identical).
DEFAULT_POLICY_TOML = """\
# default.toml: what `synthfs run` uses when no --policy is given.
#
#   synthfs run --data ./datasets -- python3 train.py /data/images
#   synthfs run --data ./datasets --policy policies/default.toml -- ls -la /data
#
# Every application may read and write the synthetic mount; the host is
# untouched (no [host] section) and the network is not restricted. Symlinks
# stored in the repository resolve as on a real mount ([[mount]] symlinks,
# "follow" when not set): only for repositories you trust, since with no
# [host] rules a link to a host file reaches it (docs/namespace.md).
version = 1
name = "default"
description = "every application reads and writes /data; host and network untouched"
default = "allow"

[[mount]]
path = "/data"
"""

_OK_HOST = Decision(Action.ALLOW, "default", "no [host] section: the host is untouched", 0)
_OK_RENAME = Decision(Action.ALLOW, "rename", "no path leaves a stricter rule", 0)
#: decide_host ignores the app: any App-typed key serves its cache
_HOST_APP: Any = None


def _may_match_at_or_below(glob: PathGlob, comps: tuple[str, ...]) -> bool:
    """Whether ``glob`` may match the path of ``comps`` or a path below it
    (component by component up to its first ``**``; may say True for a glob that
    cannot, never False for one that can)."""
    globc = glob.components
    for i, name in enumerate(comps):
        if i >= len(globc):
            return False  # the glob's paths end above this one
        c = globc[i]
        if c == "**":
            return True
        if _WILD.search(c) is None:
            if c != name:
                return False
        elif _component_rx(c).fullmatch(name) is None:
            return False
    return True


_WILD = re.compile(r"[*?]")


@functools.lru_cache(maxsize=1024)
def _component_rx(component: str) -> re.Pattern[str]:
    return re.compile(
        "".join(
            "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in component
        ),
        re.DOTALL,
    )


def _stricter(here: Decision, there: Decision) -> bool:
    """Whether the denial ``here`` would be lost at ``there`` (allowed, or no longer hidden)."""
    if there.allowed:
        return True
    return here.errno == _errno.ENOENT and there.errno != _errno.ENOENT


_CACHE_MAX = 1 << 16  # entries per (app, op) cache before it is cleared
_HOST_KEY = "host"  # the cache slot of host decisions


def is_normal(path: object) -> bool:
    """True for a normalised absolute path: no empty, '.' or '..' component, no
    trailing '/', no NUL. Substring tests, several times faster than a regex."""
    if type(path) is not str or path[:1] != "/" or "//" in path or "\x00" in path:
        return False
    if "/." in path and ("/./" in path or "/../" in path or path.endswith(("/.", "/.."))):
        return False
    return path == "/" or path[-1] != "/"


class Policy:
    """A loaded, validated policy. Build it with the named constructors."""

    __slots__ = (
        "_cache",
        "_core",
        "_dir_cache",
        "_erofs",
        "_exe_cache",
        "_host",
        "_mount_prefixes",
        "_mount_set",
        "_read_only",
        "_unmatched",
        "apps",
        "default_action",
        "description",
        "mounts",
        "name",
        "network",
        "rule_count",
        "source",
        "symlinks",
    )

    def __init__(
        self,
        *,
        name: str,
        description: str,
        source: str,
        mounts: tuple[str, ...],
        apps: tuple[App, ...],
        unmatched: App,
        default_action: Action,
        network: NetworkMode,
        host: _Host | None,
        rule_count: int,
        core: object,
        read_only: bool = False,
        symlinks: Mapping[str, Symlinks] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.source = source
        self.mounts = mounts
        #: mount -> how its symlinks resolve (``[[mount]] symlinks``; default FOLLOW)
        self.symlinks: Mapping[str, Symlinks] = {
            m: (symlinks or {}).get(m, Symlinks.FOLLOW) for m in mounts
        }
        self.apps = apps
        self.default_action = default_action
        self.network = network
        self.rule_count = rule_count
        self._unmatched = unmatched
        self._core = core
        self._host = host
        self._read_only = read_only
        # app (or "host") -> op -> path -> Decision; string keys: cheaper than tuples
        self._cache: dict[object, dict[str, dict[str, Decision]]] = {}
        self._exe_cache: dict[str, tuple[App, ...]] = {}
        self._dir_cache: dict[tuple[object, str, str], Decision | None] = {}
        self._mount_set = frozenset(mounts)
        self._mount_prefixes = tuple(m + "/" for m in mounts)
        self._erofs = Decision(
            Action.DENY, "--read-only", "--read-only: the mount is read-only", _errno.EROFS
        )

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        *,
        notes: list[str] | None = None,
    ) -> Policy:
        """Read and validate a policy file. Raises PolicyError (also for I/O errors).

        With ``notes``, a variable ``env`` lacks is checked as a placeholder and
        noted there (``FILE:LINE: note: ...``) instead of failing the load.
        """
        display = os.fspath(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PolicyError(display, None, f"cannot read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise PolicyError(display, line, "not UTF-8 text (TOML files are UTF-8)") from None
        return _Loader(text, display, os.environ if env is None else env, notes).load()

    @classmethod
    def from_text(
        cls,
        text: str,
        name: str = "<policy>",
        env: Mapping[str, str] | None = None,
        *,
        notes: list[str] | None = None,
    ) -> Policy:
        """Validate policy text; ``name`` is used in errors and rule references."""
        return _Loader(text, name, os.environ if env is None else env, notes).load()

    @classmethod
    def default(cls, mount: str = "/data") -> Policy:
        """The built-in default: every app read-write on ``mount``, host untouched."""
        text = DEFAULT_POLICY_TOML
        if mount != "/data":
            if not isinstance(mount, str) or '"' in mount or "\\" in mount or "$" in mount:
                raise PolicyError("default.toml", None, f"bad mount path {mount!r}")
            text = text.replace('path = "/data"', f'path = "{mount}"')
        return cls.from_text(text, name="default.toml", env={})

    def read_only(self) -> Policy:
        """This policy with every write-class op on the mount denied (EROFS)."""
        if self._read_only:
            return self
        return Policy(
            name=self.name,
            description=self.description,
            source=self.source,
            mounts=self.mounts,
            apps=self.apps,
            unmatched=self._unmatched,
            default_action=self.default_action,
            network=self.network,
            host=self._host,
            rule_count=self.rule_count,
            core=self._core,
            read_only=True,
            symlinks=self.symlinks,
        )

    @property
    def unmatched(self) -> App:
        """The app of executables no [[app]] matches (the top-level default applies)."""
        return self._unmatched

    @property
    def is_read_only(self) -> bool:
        return self._read_only

    @property
    def has_host_rules(self) -> bool:
        return self._host is not None

    def __repr__(self) -> str:
        ro = ", read_only" if self._read_only else ""
        counts = f"{len(self.apps)} apps, {self.rule_count} rules"
        return f"<Policy {self.name!r} from {self.source}: {counts}{ro}>"

    # -- identity ------------------------------------------------------------------------
    def identify(
        self,
        exe: str,
        argv: Sequence[str],
        sha256: Callable[[], str],
        *,
        borrowed: bool = False,
    ) -> App:
        """The app of a process that just exec'd ``exe`` (a realpath) with ``argv``.

        ``sha256()`` is called at most once, and only when the first matching
        app pins a digest; if it raises OSError the pin counts as mismatched.
        ``borrowed``: the new image runs code its caller chose besides ``exe``
        (loader variables such as LD_PRELOAD in its environment, or the
        dynamic loader run directly): only apps that match every executable
        and pin nothing (:attr:`App.any_exe`) may match, since any other app
        would lend its identity to that code (docs/policy.md).
        """
        if borrowed:
            for app in self.apps:
                if app.any_exe and all(any(g.matches(a) for a in argv) for g in app.argv):
                    return app
            return self._unmatched
        candidates = self._exe_cache.get(exe)
        if candidates is None:
            candidates = tuple(
                a for a in self.apps if a.exe_re is not None and a.exe_re.fullmatch(exe) is not None
            )
            if len(self._exe_cache) >= _CACHE_MAX:
                self._exe_cache.clear()
            self._exe_cache[exe] = candidates
        for app in candidates:
            if app.argv and not all(any(g.matches(a) for a in argv) for g in app.argv):
                continue
            if app.sha256 is not None:
                try:
                    digest = sha256()
                except OSError:
                    digest = ""
                if not isinstance(digest, str) or digest.lower() not in app.sha256:
                    assert app.pin_mismatch is not None
                    return app.pin_mismatch
            return app
        return self._unmatched

    # -- decisions on the mount -----------------------------------------------------------
    def decide(self, app: App, op: Op, path: str) -> Decision:
        """May ``app`` do ``op`` on the guest ``path`` (normalised, on a mount)?

        The hot path of the supervisor: three dict lookups on a hit; on a miss,
        inline checks, then a per-directory memo or one compiled alternation.
        """
        deny_all = app.deny_all
        if deny_all is not None:
            return deny_all
        per_app = self._cache.get(app)
        if per_app is not None:
            decision = per_app[op].get(path)
            if decision is not None:
                return decision
        return self._decide_miss(app, op, path)

    def _decide_miss(self, app: App, op: Op, path: str) -> Decision:
        if (
            app.owner is not self._core
            or "//" in path
            or "\x00" in path
            or not (path in self._mount_set or path.startswith(self._mount_prefixes))
            or path[-1] == "/"
            or ("/." in path and not is_normal(path))
        ):
            bad = self._check_app(app) or self._check_path(path, on_mount=True)
            assert bad is not None
            return bad  # not cached: a supervisor bug, kept visible
        # Every child of some directories gets the same answer: memoise those.
        dkey = (app, op, path.rpartition("/")[0])
        dcache = self._dir_cache
        if dkey in dcache:
            shared = dcache[dkey]
        else:
            shared = self._dir_decision(app, op, dkey[2])
            if len(dcache) >= _CACHE_MAX:
                dcache.clear()
            dcache[dkey] = shared
        if shared is not None:
            decision = shared
        else:
            pattern, decisions, _rules = _table(app, op)
            decision = app.default
            if pattern is not None:
                m = pattern.fullmatch(path)
                if m is not None:
                    decision = decisions[m.lastindex - 1]  # type: ignore[operator]
            if self._read_only and decision.action is Action.ALLOW and op in WRITE_OPS:
                decision = self._erofs
        self._remember(app, op, path, decision)
        return decision

    def _remember(self, owner: object, op: Op, path: str, decision: Decision) -> None:
        per_app = self._cache.get(owner)
        if per_app is None:
            per_app = self._cache[owner] = {o: {} for o in Op}
        cache = per_app[op]
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[path] = decision

    def _dir_decision(self, app: App, op: Op, parent: str) -> Decision | None:
        """The decision every child of ``parent`` gets, or None if the rules may
        tell children apart (then each path is decided on its own).

        Rules are in precedence order and the first matching one decides. A
        rule that cannot match any child (its literal prefix leaves
        ``parent``, or it has no ``**`` and the wrong depth) is skipped; if the
        first rule left is ``H/**`` with ``H`` matching ``parent`` or an
        ancestor, it matches every child and decides for all of them;
        any other rule means "no shared answer". No rule left: the default.
        """
        if not (parent in self._mount_set or parent.startswith(self._mount_prefixes)):
            return None
        comps = tuple(parent[1:].split("/"))
        depth = len(comps) + 1
        decision = app.default
        for rule in _table(app, op)[2]:
            lp = rule.lp
            n = min(len(lp), len(comps))
            if lp[:n] != comps[:n] or (rule.fixed_len is not None and rule.fixed_len != depth):
                continue  # matches no child of parent
            if rule.under is None:
                return None
            under = _rx(rule.under)
            prefixes = ["/" + "/".join(comps[:k]) for k in range(len(comps), 0, -1)]
            if not any(under.fullmatch(q) for q in prefixes):
                return None
            decision = rule.decision
            break
        if self._read_only and decision.action is Action.ALLOW and op in WRITE_OPS:
            decision = self._erofs
        return decision

    def _subtree_decision(self, app: App, op: Op, path: str) -> Decision | None:
        """The decision ``path`` and every path below it get, or None if the rules
        may tell them apart (as :meth:`_dir_decision`, for a whole subtree)."""
        if app.deny_all is not None:
            return app.deny_all
        comps = tuple(path[1:].split("/"))
        decision = app.default
        for rule in _table(app, op)[2]:
            if not _may_match_at_or_below(rule.glob, comps):
                continue
            if rule.under is None:
                return None
            under = _rx(rule.under)
            heads = ("/" + "/".join(comps[:k]) for k in range(len(comps), 0, -1))
            if not any(under.fullmatch(q) for q in heads):
                return None
            decision = rule.decision
            break
        if self._read_only and decision.action is Action.ALLOW and op in WRITE_OPS:
            decision = self._erofs
        return decision

    def decide_rename(self, app: App, src: str, dst: str, tree: bool) -> Decision:
        """May ``app`` move ``src`` to ``dst`` (both on a mount, the ``rename`` op on
        each already allowed) without a path escaping a rule?

        Rules are about paths, so a rename must not carry a file from under a
        stricter rule to a place where it is looser: for every operation, the
        source (``tree``: and every path below it) must not be decided more
        strictly than the same place at the destination (denied there and
        allowed here, or hidden with ENOENT there and not here). ``tree``
        (a directory) also needs both subtrees decided alike throughout, which
        the rules must show (no rule telling paths below either apart), else
        the rename is refused too. Refusals are EXDEV, as between two file
        systems: ``mv`` and ``shutil.move`` then copy file by file, each file
        checked (docs/policy.md, "Renames").
        """
        for op in Op:
            if tree:
                here = self._subtree_decision(app, op, src)
                there = self._subtree_decision(app, op, dst)
            else:
                here, there = self.decide(app, op, src), self.decide(app, op, dst)
            if here is None:
                why = f"rules tell paths below {src} apart for {op.value!r}"
                return Decision(Action.DENY, "rename", why, _errno.EXDEV)
            if here.allowed:
                continue
            if there is None or _stricter(here, there):
                why = (
                    f"{op.value!r} at {src} is decided by {here.rule} ({here.action.value}),"
                    f" which would not hold at {dst}"
                )
                return Decision(Action.DENY, here.rule, why, _errno.EXDEV)
        return _OK_RENAME

    def decide_host_rename(self, src: str, dst: str, tree: bool) -> Decision:
        """:meth:`decide_rename` for two host paths under ``[host]`` (read and write
        classes: a path only readable, or not even that, below a writable directory
        must not become more reachable under the destination's globs)."""
        host = self._host
        if host is None:
            return _OK_HOST
        for op in (Op.READ, Op.WRITE):
            if tree:
                here = self._host_subtree(host, op, src)
                there = self._host_subtree(host, op, dst)
            else:
                here, there = (
                    self.decide_host(_HOST_APP, op, src),
                    self.decide_host(_HOST_APP, op, dst),
                )
            if here is None:
                why = f"[host] {op.value} globs tell paths below {src} apart"
                return Decision(Action.DENY, "[host]", why, _errno.EXDEV)
            if here.allowed:
                continue
            if there is None or _stricter(here, there):
                why = f"[host] {op.value} is denied at {src} and would not be at {dst}"
                return Decision(Action.DENY, "[host]", why, _errno.EXDEV)
        return _OK_RENAME

    def _host_subtree(self, host: _Host, op: Op, path: str) -> Decision | None:
        """The [host] decision of ``op``'s class for ``path`` and everything below it,
        or None when the globs tell them apart."""
        if op in READ_OPS:
            pattern, globs, deny = host.read, host.read_globs + host.write_globs, host.read_deny
        else:
            pattern, globs, deny = host.write, host.write_globs, host.write_deny
        if pattern is None:
            return deny  # unrestricted
        comps = tuple(path[1:].split("/")) if path != "/" else ()
        ancestors = ["/" + "/".join(comps[:k]) for k in range(len(comps), 0, -1)] + ["/"]
        some = False
        for glob in globs:
            c = glob.components
            if c and c[-1] == "**":
                head = PathGlob.compile("/" + "/".join(c[:-1])) if len(c) > 1 else None
                if head is None or any(head.matches(a) for a in ancestors):
                    return self._decide_host(host, op, path)  # allows the whole subtree
            if _may_match_at_or_below(glob, comps):
                some = True
        return None if some else deny

    def explain(self, app: App, op: Op, path: str) -> tuple[Decision, ...]:
        """Every decision that applies, the winner first (for ``policy explain``).

        Order: pin mismatch or engine refusal; ``--read-only``; matching rules
        by precedence; the default. ``decide`` returns the first element.
        """
        if app.deny_all is not None:
            return (app.deny_all,)
        bad = self._check_app(app) or self._check_path(path, on_mount=True)
        if bad is not None:
            return (bad,)
        _pattern, _decisions, rules = _table(app, op)
        out = [r.decision for r in rules if r.glob.matches(path)]
        out.append(app.default)
        if self._read_only and op in WRITE_OPS and out[0].allowed:
            out.insert(0, self._erofs)
        return tuple(out)

    def is_on_mount(self, path: str) -> bool:
        return path in self._mount_set or path.startswith(self._mount_prefixes)

    def _check_app(self, app: App) -> Decision | None:
        if app.owner is not self._core:
            return Decision(
                Action.DENY, "engine", f"app {app.name!r} comes from another policy", _errno.EACCES
            )
        return None

    def _check_path(self, path: str, *, on_mount: bool) -> Decision | None:
        if not is_normal(path):
            return Decision(
                Action.DENY,
                "engine",
                f"path {path!r} is not absolute and normalised",
                _errno.EACCES,
            )
        if on_mount and not self.is_on_mount(path):
            return Decision(
                Action.DENY, "engine", f"path {path!r} is not on a synthetic mount", _errno.EACCES
            )
        return None

    # -- decisions on the host -----------------------------------------------------------------
    def decide_host(self, app: App, op: Op, path: str) -> Decision:
        """May ``app`` do ``op`` on the host ``path`` (normalised)? [host] absent → allow."""
        host = self._host
        if host is None:
            return _OK_HOST
        per_host = self._cache.get(_HOST_KEY)
        if per_host is not None:
            decision = per_host[op].get(path)
            if decision is not None:
                return decision
        decision = self._decide_host(host, op, path)
        if decision.rule != "engine":
            self._remember(_HOST_KEY, op, path, decision)
        return decision

    def decide_mknod(self, app: App, path: str) -> Decision:
        """May ``app`` make a device node (mknod of S_IFCHR/S_IFBLK) at the host ``path``?

        Only where a ``[host] mknod`` glob says so: a write-listed ``/dev/**``
        means the nodes that exist, and no list means none (fail closed).
        ``[host]`` absent → allow (the host is untouched)."""
        host = self._host
        if host is None:
            return _OK_HOST
        bad = self._check_path(path, on_mount=False)
        if bad is not None:
            return bad
        m = host.mknod.fullmatch(path) if host.mknod is not None else None
        if m is None:
            return host.mknod_deny
        return host.mknod_decisions[m.lastindex - 1]  # type: ignore[operator]

    def _decide_host(self, host: _Host, op: Op, path: str) -> Decision:
        bad = self._check_path(path, on_mount=False)
        if bad is not None:
            return bad
        if op in READ_OPS:
            pattern, decisions, deny = host.read, host.read_decisions, host.read_deny
        else:
            pattern, decisions, deny = host.write, host.write_decisions, host.write_deny
        if pattern is None:
            return deny  # the "unrestricted" allow decision for this class
        m = pattern.fullmatch(path)
        if m is None:
            return deny
        return decisions[m.lastindex - 1]  # type: ignore[operator]


# --- audit -------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class AuditRecord:
    """One audited decision; the supervisor writes ``to_json()`` lines."""

    time: float  # seconds since the epoch
    pid: int
    exe: str
    app: str
    syscall: str
    path: str
    op: str
    decision: str  # "allow" | "deny"
    rule: str
    errno: int
    latency_us: float
    via: str = ""  # a host path reached through a repository symlink: that link

    @classmethod
    def from_decision(
        cls,
        *,
        time: float,
        pid: int,
        exe: str,
        app: App | str,
        syscall: str,
        path: str,
        op: Op | str,
        decision: Decision,
        latency_us: float,
        via: str = "",
    ) -> AuditRecord:
        return cls(
            time=time,
            pid=pid,
            exe=exe,
            app=app if isinstance(app, str) else app.name,
            syscall=syscall,
            path=path,
            op=str(op),
            decision=decision.action.value,
            rule=decision.rule,
            errno=decision.errno,
            latency_us=latency_us,
            via=via,
        )

    def to_json(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.time, datetime.UTC)
        via = {"via": self.via} if self.via else {}
        return json.dumps(
            {
                "event": "policy/decision",
                "time": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "pid": self.pid,
                "exe": self.exe,
                "app": self.app,
                "syscall": self.syscall,
                "path": self.path,
                "op": self.op,
                "decision": self.decision,
                "rule": self.rule,
                "errno": self.errno,
                "errname": _ERRNO_NAMES.get(self.errno, _errno.errorcode.get(self.errno, ""))
                if self.errno
                else "",
                "latency_us": round(self.latency_us, 3),
                **via,
            },
            separators=(",", ":"),
        )


# --- the loader ------------------------------------------------------------------------------

_TOP_KEYS = ("version", "name", "description", "default", "default_errno", "mount", "app", "host")
_MOUNT_KEYS = ("path", "symlinks")
_SYMLINKS = frozenset(m.value for m in Symlinks)
_APP_KEYS = ("name", "description", "match", "default", "default_errno", "allow", "deny")
_MATCH_KEYS = ("exe", "argv", "sha256")
_ALLOW_KEYS = ("paths", "ops")
_DENY_KEYS = ("paths", "ops", "errno")
_HOST_KEYS = ("read", "write", "mknod", "network", "errno")
_OP_NAMES = tuple(o.value for o in Op)
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_SHA = re.compile(r"[0-9a-fA-F]{64}")
_TOML_POS = re.compile(r"\(at line (\d+), column \d+\)|\(at end of document\)")


def _typename(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(choices)})"


class _Loader:
    """Validates a parsed document, one error at a time, with its line."""

    def __init__(
        self, text: str, display: str, env: Mapping[str, str], notes: list[str] | None = None
    ) -> None:
        self.text = text
        self.display = display
        self.base = os.path.basename(display) or display
        self.env = env
        #: where an undefined variable is noted (None: it is an error)
        self.notes = notes
        self.lines: dict[KeyPath, int] = {}
        self.top_written: KeyPath | None = None
        self.core = object()
        self.symlinks: dict[str, Symlinks] = {}  # [[mount]] symlinks, as written

    # -- errors -------------------------------------------------------------------------
    def line(self, path: KeyPath) -> int | None:
        return line_of(self.lines, path)

    def error(self, path: KeyPath, message: str) -> PolicyError:
        return PolicyError(self.display, self.line(path), message)

    def ref(self, path: KeyPath) -> str:
        line = self.line(path)
        return f"{self.base}:{line}" if line is not None else f"{self.base}:{_dotted(path)}"

    # -- typed getters -------------------------------------------------------------------------
    def keys(self, table: dict[str, Any], allowed: Sequence[str], path: KeyPath, what: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(
                    (*path, key), f"unknown key {key!r} in {what}" + _suggest(key, allowed)
                )

    def string(
        self, table: dict[str, Any], key: str, path: KeyPath, *, required: bool = False
    ) -> str | None:
        if key not in table:
            if required:
                raise self.error(
                    path, f"missing required key {key!r} in {_dotted(path) or 'the file'}"
                )
            return None
        value = table[key]
        if not isinstance(value, str):
            raise self.error((*path, key), f"{key!r} must be a string, not {_typename(value)}")
        return value

    def table(self, value: object, path: KeyPath, hint: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(
                path, f"{_dotted(path)} must be a table, not {_typename(value)} ({hint})"
            )
        return value

    def array_of_tables(self, value: object, path: KeyPath, hint: str) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise self.error(path, f"{_dotted(path)} must be an array of tables ({hint})")
        for i, item in enumerate(value):
            self.table(item, (*path, i), hint)
        return value

    def strings(self, value: object, path: KeyPath, hint: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(path, f"{_dotted(path)} must be an array of strings ({hint})")
        if not value:
            raise self.error(path, f"{_dotted(path)} is empty ({hint})")
        return value

    def errno_of(self, value: object, path: KeyPath) -> int:
        if not isinstance(value, str) or value not in ERRNOS:
            shown = value if isinstance(value, str) else _typename(value)
            raise self.error(
                path,
                f"unknown errno {shown!r}"
                + (
                    _suggest(value, tuple(ERRNOS))
                    if isinstance(value, str)
                    else f" (expected one of: {', '.join(ERRNOS)})"
                ),
            )
        return ERRNOS[value]

    def action_of(self, value: object, path: KeyPath) -> Action:
        if value not in ("allow", "deny"):
            shown = repr(value) if isinstance(value, str) else _typename(value)
            raise self.error(path, f'default must be "allow" or "deny", not {shown}')
        return Action(value)

    # -- variables and globs ----------------------------------------------------------------------
    def note_unset(self, name: str, placeholder: str, path: KeyPath) -> None:
        """Note (once per variable) that ``$name`` was checked as ``placeholder``."""
        assert self.notes is not None
        tag = f"${name} is not set"
        if any(tag in note for note in self.notes):
            return
        line = self.line(path)
        where = self.display if line is None else f"{self.display}:{line}"
        self.notes.append(
            f"{where}: note: {tag}; checked as if it were {placeholder!r} (set it where the"
            f" policy is used, e.g. {name}=/path synthfs run ..., or check with --var {name}=PATH)"
        )

    def expand(self, text: str, path: KeyPath) -> str:
        out: list[str] = []
        i = 0
        while True:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                return "".join(out)
            out.append(text[i:j])
            if text.startswith("$$", j):
                out.append("$")
                i = j + 2
                continue
            m = _VAR.match(text, j)
            if m is None:
                raise self.error(
                    path,
                    f"bad '$' in {text!r} (write ${{NAME}} or $NAME for a variable, $$ for a '$')",
                )
            name = m.group(1) or m.group(2)
            value = self.env.get(name)
            if value is None and self.notes is not None:
                value = name if j else f"/{name}"  # a component, or a whole absolute path
                self.note_unset(name, value, path)
            if value is None:
                raise self.error(
                    path,
                    f"undefined variable ${name} in {text!r}"
                    f" (set {name} in the environment, e.g. {name}=/path synthfs ...)",
                )
            if not value:
                raise self.error(path, f"variable ${name} is empty in {text!r} (set it to a path)")
            if "*" in value or "?" in value or "\x00" in value:
                raise self.error(path, f"variable ${name}={value!r} contains '*', '?' or NUL")
            stripped = value.rstrip("/")
            out.append(stripped if stripped or text[m.end() :].startswith("/") else "/")
            i = m.end()

    def path_glob(self, raw: str, path: KeyPath) -> PathGlob:
        text = self.expand(raw, path)
        try:
            return PathGlob.compile(text)
        except GlobError as exc:
            note = f" (from {raw!r})" if text != raw else ""
            raise self.error(path, f"{exc}{note}") from None

    def argv_glob(self, raw: str, path: KeyPath) -> ArgvGlob:
        try:
            return ArgvGlob.compile(self.expand(raw, path))
        except GlobError as exc:
            raise self.error(path, str(exc)) from None

    # -- the document --------------------------------------------------------------------
    def load(self) -> Policy:
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = _TOML_POS.search(msg)
            line = None
            if m is not None:
                line = int(m.group(1)) if m.group(1) else self.text.count("\n") + 1
                msg = msg[: m.start()].rstrip()
            raise PolicyError(self.display, line, f"TOML syntax error: {msg}") from None
        except RecursionError:
            raise PolicyError(self.display, None, "TOML nesting too deep") from None
        self.lines = key_lines(self.text)
        return self.document(doc)

    def document(self, doc: dict[str, Any]) -> Policy:
        self.keys(doc, _TOP_KEYS, (), "the top level")
        if "version" not in doc:
            raise PolicyError(self.display, 1, "missing 'version' (add `version = 1` at the top)")
        version = doc["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise self.error(
                ("version",), f"version must be the integer 1, not {_typename(version)}"
            )
        if version != 1:
            raise self.error(
                ("version",), f"unsupported version {version} (this synthfs reads version = 1)"
            )
        name = self.string(doc, "name", ()) or os.path.splitext(self.base)[0]
        description = self.string(doc, "description", ()) or ""
        default_action = Action.DENY
        if "default" in doc:
            default_action = self.action_of(doc["default"], ("default",))
        default_errno = _errno.EACCES
        if "default_errno" in doc:
            if default_action is Action.ALLOW:
                raise self.error(
                    ("default_errno",), 'default_errno needs default = "deny" (remove it)'
                )
            default_errno = self.errno_of(doc["default_errno"], ("default_errno",))

        mounts = self.mounts(doc)
        mount_comps = [tuple(m[1:].split("/")) for m in mounts]
        top_default = self.default_decision(
            default_action,
            default_errno,
            ("default",) if "default" in doc else None,
            "no [[app]] matches this executable",
            "the policy",
        )
        self.top_written = ("default",) if "default" in doc else None
        unmatched = App(
            name="(unmatched)",
            ref="default",
            exe=(),
            argv=(),
            sha256=None,
            default=top_default,
            rules=(),
            owner=self.core,
        )

        apps: list[App] = []
        rule_count = 0
        raw_apps = doc.get("app", [])
        self.array_of_tables(raw_apps, ("app",), "write each application as an [[app]] table")
        names: dict[str, int] = {}
        for i, raw in enumerate(raw_apps):
            app, n = self.app(raw, ("app", i), default_action, default_errno, mount_comps)
            if app.name in names:
                raise self.error(
                    ("app", i, "name"),
                    f"duplicate app name {app.name!r}"
                    f" (first at line {self.line(('app', names[app.name]))});"
                    " give each [[app]] its own name",
                )
            names[app.name] = i
            for j, earlier in enumerate(apps):
                if _shadows(earlier, app):
                    raise self.error(
                        ("app", i, "match"),
                        f"app {app.name!r} can never match: app {earlier.name!r} above"
                        f" (line {self.line(('app', j))}) matches every executable and argv it does"
                        " (move the more specific app first, or make the matchers differ)",
                    )
            apps.append(app)
            rule_count += n

        host, network = self.host(doc)
        return Policy(
            name=name,
            description=description,
            source=self.display,
            mounts=mounts,
            apps=tuple(apps),
            unmatched=unmatched,
            default_action=default_action,
            network=network,
            host=host,
            rule_count=rule_count,
            symlinks=self.symlinks,
            core=self.core,
        )

    def default_decision(
        self, action: Action, errno: int, written: KeyPath | None, why: str, whose: str
    ) -> Decision:
        """The decision when no rule matches; ``written`` is where the default is set."""
        line = self.lines.get(written) if written is not None else None
        where = f" ({self.base}:{line})" if line is not None else " (not set: deny)"
        if action is Action.ALLOW:
            return Decision(Action.ALLOW, "default", f"{why}; {whose} default is allow{where}", 0)
        return Decision(Action.DENY, "default", f"{why}; {whose} default is deny{where}", errno)

    def mounts(self, doc: dict[str, Any]) -> tuple[str, ...]:
        if "mount" not in doc:
            return ("/data",)
        raw = self.array_of_tables(doc["mount"], ("mount",), 'write [[mount]] with path = "/data"')
        if not raw:
            raise self.error(("mount",), 'no mount (add [[mount]] with path = "/data")')
        out: list[str] = []
        for i, table in enumerate(raw):
            p: KeyPath = ("mount", i)
            self.keys(table, _MOUNT_KEYS, p, "[[mount]]")
            text = self.string(table, "path", p, required=True)
            assert text is not None
            glob = self.path_glob(text, (*p, "path"))
            if glob.has_wildcard or glob.text == "/":
                raise self.error(
                    (*p, "path"),
                    f"mount path {glob.text!r} must be a literal directory, not '/' or a glob",
                )
            for other in out:
                if paths_related(tuple(other[1:].split("/")), glob.components):
                    raise self.error(
                        (*p, "path"),
                        f"mount {glob.text!r} overlaps mount {other!r} (mounts cannot nest)",
                    )
            out.append(glob.text)
            if "symlinks" in table:
                value = table["symlinks"]
                if not isinstance(value, str) or value not in _SYMLINKS:
                    shown = repr(value) if isinstance(value, str) else _typename(value)
                    raise self.error(
                        (*p, "symlinks"),
                        f'symlinks must be "follow", "anchored" or "refuse-host", not {shown}',
                    )
                self.symlinks[glob.text] = Symlinks(value)
        return tuple(out)

    def app(
        self,
        raw: dict[str, Any],
        p: KeyPath,
        top_action: Action,
        top_errno: int,
        mounts: list[tuple[str, ...]],
    ) -> tuple[App, int]:
        self.keys(raw, _APP_KEYS, p, "[[app]]")
        name = self.string(raw, "name", p, required=True)
        assert name is not None
        if not name:
            raise self.error((*p, "name"), "app name is empty")
        self.string(raw, "description", p)
        if "match" not in raw:
            raise self.error(p, f'app {name!r} has no match (add match.exe = ["/usr/bin/..."])')
        match = self.table(raw["match"], (*p, "match"), "write match.exe = [...]")
        self.keys(match, _MATCH_KEYS, (*p, "match"), "match")
        if "exe" not in match:
            raise self.error(
                (*p, "match"), f'app {name!r} has no match.exe (use ["/**"] for any executable)'
            )
        exe = tuple(
            self.path_glob(g, (*p, "match", "exe", k))
            for k, g in enumerate(
                self.strings(match["exe"], (*p, "match", "exe"), "globs of executable realpaths")
            )
        )
        argv: tuple[ArgvGlob, ...] = ()
        if "argv" in match:
            raw_argv = self.strings(
                match["argv"], (*p, "match", "argv"), "globs, each must match some argv element"
            )
            argv = tuple(
                self.argv_glob(g, (*p, "match", "argv", k)) for k, g in enumerate(raw_argv)
            )
        sha: frozenset[str] | None = None
        if "sha256" in match:
            raw_sha = match["sha256"]
            digests = [raw_sha] if isinstance(raw_sha, str) else raw_sha
            hint = "run `sha256sum EXE`; several accepted versions: a list of digests"
            if not isinstance(digests, list) or not digests:
                raise self.error(
                    (*p, "match", "sha256"),
                    f"sha256 must be 64 hex digits or a list of them ({hint})",
                )
            for k, digest in enumerate(digests):
                if not isinstance(digest, str) or _SHA.fullmatch(digest) is None:
                    where = (
                        (*p, "match", "sha256")
                        if isinstance(raw_sha, str)
                        else (*p, "match", "sha256", k)
                    )
                    raise self.error(where, f"sha256 must be 64 hex digits ({hint})")
            sha = frozenset(d.lower() for d in digests)

        action, errno = top_action, top_errno
        whose = "the policy"
        if "default" in raw:
            action = self.action_of(raw["default"], (*p, "default"))
            errno = _errno.EACCES
            whose = f"app {name!r}"
        if "default_errno" in raw:
            if action is Action.ALLOW:
                raise self.error(
                    (*p, "default_errno"), 'default_errno needs default = "deny" (remove it)'
                )
            errno = self.errno_of(raw["default_errno"], (*p, "default_errno"))
            whose = f"app {name!r}"
        written = (*p, "default") if "default" in raw else self.top_written
        default = self.default_decision(
            action, errno, written, f"no rule of app {name!r} matches", whose
        )

        rules: list[_Rule] = []
        count = 0
        seen: dict[tuple[str, Op], tuple[_Rule, KeyPath]] = {}
        for kind in ("allow", "deny"):
            if kind not in raw:
                continue
            entries = self.array_of_tables(
                raw[kind], (*p, kind), f"write {kind} = [{{ paths = [...], ops = [...] }}]"
            )
            for j, entry in enumerate(entries):
                count += 1
                rp: KeyPath = (*p, kind, j)
                if "errno" in entry and kind == "allow":
                    raise self.error((*rp, "errno"), "errno only applies to deny rules (remove it)")
                what = "an allow rule" if kind == "allow" else "a deny rule"
                self.keys(entry, _ALLOW_KEYS if kind == "allow" else _DENY_KEYS, rp, what)
                for need in ("paths", "ops"):
                    if need not in entry:
                        raise self.error(rp, f"{kind} rule has no {need!r} (e.g. {need} = [...])")
                globs = [
                    self.path_glob(g, (*rp, "paths", k))
                    for k, g in enumerate(
                        self.strings(entry["paths"], (*rp, "paths"), "path globs")
                    )
                ]
                ops = self.ops(entry["ops"], (*rp, "ops"))
                errno_v = (
                    self.errno_of(entry["errno"], (*rp, "errno"))
                    if "errno" in entry
                    else (_errno.EACCES if kind == "deny" else 0)
                )
                act = Action(kind)
                ref = self.ref(rp)
                for k, glob in enumerate(globs):
                    prefix = literal_prefix(glob)
                    ok = any(
                        paths_related(prefix, m) and (glob.has_wildcard or len(prefix) >= len(m))
                        for m in mounts
                    )
                    if not ok:
                        raise self.error(
                            (*rp, "paths", k),
                            f"path {glob.text!r} is not on a mount"
                            f" ({', '.join('/' + '/'.join(m) for m in mounts)});"
                            " rules only govern the synthetic mount (use [host] for host paths)",
                        )
                    opnames = (
                        "*" if ops == frozenset(Op) else ", ".join(o.value for o in Op if o in ops)
                    )
                    if act is Action.ALLOW:
                        reason = f"app {name!r}: allow {opnames} on {glob.text}"
                    else:
                        reason = (
                            f"app {name!r}: deny {opnames} on {glob.text} ({_ERRNO_NAMES[errno_v]})"
                        )
                    rule = _Rule(
                        glob=glob,
                        ops=ops,
                        action=act,
                        errno=errno_v,
                        ref=ref,
                        order=len(rules),
                        decision=Decision(act, ref, reason, errno_v),
                    )
                    for op in ops:
                        prev = seen.get((glob.text, op))
                        if prev is not None:
                            prule, _pp = prev
                            same = prule.action is act and prule.errno == errno_v
                            what = "repeats" if same else "contradicts"
                            raise self.error(
                                (*rp, "paths", k),
                                f"rule {what} {prule.ref} for {glob.text!r} and op {op.value!r}"
                                f" (the file reads two ways; remove {op.value!r} from one rule,"
                                " or make one path more specific)",
                            )
                        seen[(glob.text, op)] = (rule, rp)
                    rules.append(rule)
        twin: App | None = None
        if sha is not None:
            pin_ref = self.ref((*p, "match", "sha256"))
            deny = Decision(
                Action.DENY,
                pin_ref,
                f"executable matches app {name!r} but its sha256 differs from the pin",
                _errno.EACCES,
            )
            twin = App(
                name=f"{name} (sha256 mismatch)",
                ref=pin_ref,
                exe=exe,
                argv=argv,
                sha256=sha,
                default=deny,
                rules=(),
                deny_all=deny,
                owner=self.core,
            )
        app = App(
            name=name,
            ref=self.ref(p),
            exe=exe,
            argv=argv,
            sha256=sha,
            default=default,
            rules=tuple(rules),
            pin_mismatch=twin,
            owner=self.core,
        )
        return app, count

    def ops(self, value: object, path: KeyPath) -> frozenset[Op]:
        names = self.strings(value, path, "operations: " + ", ".join(_OP_NAMES) + ' or "*"')
        out: set[Op] = set()
        for k, n in enumerate(names):
            if n == "*":
                out.update(Op)
            elif n in _OP_NAMES:
                out.add(Op(n))
            else:
                raise self.error((*path, k), f"unknown op {n!r}" + _suggest(n, (*_OP_NAMES, "*")))
        return frozenset(out)

    def host(self, doc: dict[str, Any]) -> tuple[_Host | None, NetworkMode]:
        if "host" not in doc:
            return None, NetworkMode.ALLOW
        p: KeyPath = ("host",)
        table = self.table(doc["host"], p, "write a [host] table")
        self.keys(table, _HOST_KEYS, p, "[host]")
        network = NetworkMode.ALLOW
        if "network" in table:
            value = table["network"]
            if value not in ("deny", "loopback", "allow"):
                shown = repr(value) if isinstance(value, str) else _typename(value)
                raise self.error(
                    (*p, "network"), f'network must be "deny", "loopback" or "allow", not {shown}'
                )
            network = NetworkMode(value)
        deny_errno = (
            self.errno_of(table["errno"], (*p, "errno")) if "errno" in table else _errno.EACCES
        )
        lists: dict[str, tuple[PathGlob, ...]] = {}
        refs: dict[str, list[str]] = {}
        for key in ("read", "write", "mknod"):
            if key in table:
                raw = self.strings(table[key], (*p, key), 'host path globs, e.g. ["/usr/**"]')
                lists[key] = tuple(self.path_glob(g, (*p, key, k)) for k, g in enumerate(raw))
                refs[key] = [self.ref((*p, key, k)) for k in range(len(raw))]
        write = lists.get("write")
        read = lists.get("read")

        def compile_(
            globs: Sequence[PathGlob], rfs: Sequence[str], verb: str
        ) -> tuple[re.Pattern[str], tuple[Decision, ...]]:
            pattern = re.compile("|".join(f"({g.regex})" for g in globs), re.DOTALL)
            decs = tuple(
                Decision(Action.ALLOW, r, f"[host] {verb} list allows {g.text}", 0)
                for g, r in zip(globs, rfs, strict=True)
            )
            return pattern, decs

        open_ = {
            "read": Decision(
                Action.ALLOW, "default", "[host] has no read list: host reads are unrestricted", 0
            ),
            "write": Decision(
                Action.ALLOW, "default", "[host] has no write list: host writes are unrestricted", 0
            ),
        }
        if read is not None:
            # a writable path is readable too
            globs = read + (write or ())
            rfs = refs["read"] + refs.get("write", [])
            read_pat: re.Pattern[str] | None
            read_pat, read_decs = compile_(globs, rfs, "read")
            read_deny = Decision(
                Action.DENY,
                self.ref((*p, "read")),
                "host path is not in the [host] read list",
                deny_errno,
            )
        else:
            read_pat, read_decs, read_deny = None, (), open_["read"]
        if write is not None:
            write_pat: re.Pattern[str] | None
            write_pat, write_decs = compile_(write, refs["write"], "write")
            write_deny = Decision(
                Action.DENY,
                self.ref((*p, "write")),
                "host path is not in the [host] write list",
                deny_errno,
            )
        else:
            write_pat, write_decs, write_deny = None, (), open_["write"]
        mknod = lists.get("mknod")
        mknod_deny = Decision(
            Action.DENY,
            self.ref((*p, "mknod")) if mknod is not None else self.ref(p),
            "host path is not in the [host] mknod list"
            if mknod is not None
            else "[host] has no mknod list: device nodes are refused",
            _errno.EPERM,
        )
        mknod_pat, mknod_decs = (
            compile_(mknod, refs["mknod"], "mknod") if mknod is not None else (None, ())
        )
        return (
            _Host(
                mknod=mknod_pat,
                mknod_decisions=mknod_decs,
                mknod_deny=mknod_deny,
                mknod_globs=mknod or (),
                read=read_pat,
                read_decisions=read_decs,
                read_deny=read_deny,
                write=write_pat,
                write_decisions=write_decs,
                write_deny=write_deny,
                read_globs=read or (),
                write_globs=write or (),
            ),
            network,
        )


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _table(
    app: App, op: Op
) -> tuple[re.Pattern[str] | None, tuple[Decision, ...], tuple[_Rule, ...]]:
    """The app's rules for ``op`` in precedence order, and their alternation.

    Built on first use (a 100-app policy loads without compiling 900
    expressions, and apps never exec'd never pay for theirs)."""
    table = app.tables.get(op)
    if table is None:
        rules = sorted((r for r in app.rules if op in r.ops), key=lambda r: r.sort_key)
        pattern = (
            re.compile("|".join(f"({r.glob.regex})" for r in rules), re.DOTALL) if rules else None
        )
        table = app.tables[op] = (pattern, tuple(r.decision for r in rules), tuple(rules))
    return table


@functools.lru_cache(maxsize=4096)
def _rx(source: str) -> re.Pattern[str]:
    return re.compile(source, re.DOTALL)


def _shadows(earlier: App, later: App) -> bool:
    """True when ``earlier`` certainly matches every (exe, argv) ``later`` matches."""
    if not all(any(e.covers(x) for e in earlier.exe) for x in later.exe):
        return False
    later_argv = {g.text for g in later.argv}
    return all(g.text in later_argv or g.text == "*" for g in earlier.argv)
