"""The policy engine: who may do what on the synthetic mount and on the host.

Role: answer the supervisor's questions, fast and without I/O, for a policy
file (TOML, ``version = 1``) that :mod:`synthfs.policy.loader` validated
strictly; the audit records live in :mod:`synthfs.policy.audit`. Pure: the only I/O
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
    audit.AuditRecord.from_decision(...).to_json() -> str  # one JSON line for --audit

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

import enum
import errno as _errno
import functools
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from synthfs.policy.globs import ArgvGlob, PathGlob, literal_prefix

__all__ = [
    "DEFAULT_POLICY_TOML",
    "ERRNOS",
    "READ_OPS",
    "WRITE_OPS",
    "Action",
    "App",
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
ERRNO_NAMES = {v: k for k, v in ERRNOS.items()}


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
class Rule:
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
    rules: tuple[Rule, ...]
    deny_all: Decision | None = None  # set on pin-mismatch apps
    pin_mismatch: App | None = None  # the deny-all twin of a pinned app
    owner: object = attrs.field(default=None, repr=False)  # the loaded policy it belongs to
    # per op, built on first use by _table(): (alternation, decisions, rules)
    tables: dict[Op, tuple[re.Pattern[str] | None, tuple[Decision, ...], tuple[Rule, ...]]] = (
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
class Host:
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
        host: Host | None,
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
            # O_NONBLOCK: a FIFO (or a device) named as a policy is an error, not a wait
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise PolicyError(display, None, "not a regular file")
                data = f.read()
        except OSError as exc:
            raise PolicyError(display, None, f"cannot read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise PolicyError(display, line, "not UTF-8 text (TOML files are UTF-8)") from None
        from synthfs.policy.loader import Loader

        return Loader(text, display, os.environ if env is None else env, notes).load()

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
        from synthfs.policy.loader import Loader

        return Loader(text, name, os.environ if env is None else env, notes).load()

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

    def _host_subtree(self, host: Host, op: Op, path: str) -> Decision | None:
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

    def _decide_host(self, host: Host, op: Op, path: str) -> Decision:
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


@functools.lru_cache(maxsize=4096)
def _rx(source: str) -> re.Pattern[str]:
    return re.compile(source, re.DOTALL)


def _table(
    app: App, op: Op
) -> tuple[re.Pattern[str] | None, tuple[Decision, ...], tuple[Rule, ...]]:
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
