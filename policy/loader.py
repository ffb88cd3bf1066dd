"""The policy loader: TOML text -> a validated :class:`~synthfs.policy.engine.Policy`.

Strict (unknown keys, wrong types, bad globs, ambiguous rules are load errors
with the line and a fix); ``$VAR`` expansion; shadowed apps refused. Trusts the
user who wrote the file, not the file: every mistake is an error here.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from synthfs.policy.engine import (
    ERRNO_NAMES,
    ERRNOS,
    Action,
    App,
    Decision,
    Host,
    NetworkMode,
    Op,
    Policy,
    PolicyError,
    Rule,
    Symlinks,
)
from synthfs.policy.globs import ArgvGlob, GlobError, PathGlob, literal_prefix, paths_related
from synthfs.policy.lines import KeyPath, key_lines, line_of

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
    import difflib  # an error's hint only: not on every start-up

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(choices)})"


class Loader:
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

        rules: list[Rule] = []
        count = 0
        seen: dict[tuple[str, Op], tuple[Rule, KeyPath]] = {}
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
                            f"app {name!r}: deny {opnames} on {glob.text} ({ERRNO_NAMES[errno_v]})"
                        )
                    rule = Rule(
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

    def host(self, doc: dict[str, Any]) -> tuple[Host | None, NetworkMode]:
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
            Host(
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






def _shadows(earlier: App, later: App) -> bool:
    """True when ``earlier`` certainly matches every (exe, argv) ``later`` matches."""
    if not all(any(e.covers(x) for e in earlier.exe) for x in later.exe):
        return False
    later_argv = {g.text for g in later.argv}
    return all(g.text in later_argv or g.text == "*" for g in earlier.argv)
