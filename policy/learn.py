"""Learning a policy from a run: the accesses a run made in, the narrowest policy out.

Role: the pure part of ``synthfs learn`` (``synthfs.policy.learn_cli`` runs the
command and does the I/O). Given the audit records of a run in which every
access was allowed and recorded (``--audit-all`` lines), what the repository
held before and after it (:class:`Tree`), and optionally a policy to extend,
:func:`learn` writes the TOML text of the narrowest policy under which the
same run is allowed everything it did:

* one ``[[app]]`` per executable seen (``match.exe`` its path, ``match.sha256``
  its digest when asked); a process that no executable-naming app may identify
  (a loader variable such as ``LD_PRELOAD`` in its environment, or the dynamic
  loader run directly) gets its rules in a last ``[[app]]`` for every
  executable (``match.exe = ["/**"]``), since no narrower app can match it;
* its accesses on the mount, per operation, collapsed by :func:`collapse`
  (the rule is in its docstring and in docs/policy.md, "synthfs learn");
* the host paths it wrote in ``[host] write`` (device nodes in ``mknod``);
  host reads stay unrestricted. A temporary file with a random name, on the
  host or the mount, is a glob (:func:`temporary_glob`): its name will differ
  next time;
* ``[host] network``: ``"deny"``, or ``"loopback"`` when it used loopback.

Every rule carries a comment naming the first access that needed it (pid,
program, syscall, op, path). The result is checked with the engine itself: each
recorded access is decided under the learned policy, and any the collapsed
rules do not allow (a rename that would leave a stricter rule, say) gets an
exact rule, so what the run did, the policy allows. An access a policy given
with ``--from`` denies by a rule of its own stays denied and is reported.

Trust: the audit records were written by our supervisor (trusted), but the
paths in them were chosen by the guest: they are data, escaped when written
into the file (``$`` doubled, quotes and control characters escaped).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from synthfs.policy.engine import READ_OPS, App, NetworkMode, Op, Policy, PolicyError
from synthfs.policy.globs import PathGlob

__all__ = [
    "MIN_ENTRIES",
    "Access",
    "Learned",
    "Tree",
    "collapse",
    "learn",
    "learning_policy",
    "read_accesses",
    "temporary_glob",
]

#: A directory is collapsed to ``*`` or ``**`` only when it holds at least this many
#: entries the operation applies to (a glob over two files says little more than them).
MIN_ENTRIES = 3
#: The app name the learning run gives every process it can identify by executable.
LEARN_APP = "learn"
_NET_OPS = frozenset({"socket", "connect", "bind", "send"})
_ORDER = {op: i for i, op in enumerate(Op)}


@attrs.frozen(slots=True)
class Access:
    """One recorded decision of the learning run (an ``--audit-all`` line)."""

    seq: int  # its place in the file: "first" means the lowest seq
    pid: int
    exe: str
    app: str  # the learning policy's app: LEARN_APP, or "(unmatched)" (borrowed identity)
    syscall: str
    path: str
    op: str
    allowed: bool
    rule: str = ""

    @classmethod
    def from_json(cls, seq: int, line: str) -> Access:
        """Parse one audit line; ValueError if it is not a decision record."""
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("event") != "policy/decision":
            raise ValueError("not a policy/decision record")
        try:
            return cls(
                seq=seq,
                pid=int(record["pid"]),
                exe=str(record["exe"]),
                app=str(record["app"]),
                syscall=str(record["syscall"]),
                path=str(record["path"]),
                op=str(record["op"]),
                allowed=record["decision"] == "allow",
                rule=str(record.get("rule", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a decision record without {exc}") from None

    @property
    def borrowed(self) -> bool:
        """No executable-naming app may identify this process (docs/policy.md)."""
        return self.app != LEARN_APP

    def origin(self, with_exe: bool = True) -> str:
        """The comment naming this access: ``pid 42 tar: openat read /data/x``."""
        who = f"pid {self.pid} {os.path.basename(self.exe) or '?'}: " if with_exe else ""
        return _comment(f"{who}{self.syscall} {self.op} {self.path}")


def read_accesses(lines: Iterable[str]) -> list[Access]:
    """The decision records among ``lines`` (other events and blank lines skipped)."""
    out = []
    for seq, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(Access.from_json(seq, line))
        except ValueError:
            continue  # another event of the audit channel
    return out


@attrs.frozen(slots=True)
class Tree:
    """What the repository held (before and after the run, merged), as guest paths.

    ``dirs`` maps each directory to the names of its entries. ``known=False``
    (contents not available): nothing is collapsed, every rule is an exact path.
    """

    dirs: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    known: bool = True

    @classmethod
    def unknown(cls) -> Tree:
        return cls({}, known=False)

    def merged(self, other: Tree) -> Tree:
        dirs = dict(self.dirs)
        for d, names in other.dirs.items():
            dirs[d] = dirs.get(d, frozenset()) | names
        return Tree(dirs, self.known and other.known)


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d != "/" else f"/{name}"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _parent(path: str) -> str:
    head = path.rpartition("/")[0]
    return head or "/"


def _eligible(op: Op, is_dir: bool) -> bool:
    """Whether ``op`` applies to an entry of this kind (what "most of" counts)."""
    if op is Op.LIST:
        return is_dir
    if op in (Op.READ, Op.WRITE):
        return not is_dir
    return True


@attrs.frozen(slots=True)
class _Index:
    """A tree below one root, indexed once for every :func:`collapse` on it."""

    children: dict[str, frozenset[str]]  # directory -> its entries' paths
    dirs: frozenset[str]
    files_below: dict[str, int]  # directory -> non-directories below it (recursively)
    dirs_below: dict[str, int]

    @classmethod
    def of(cls, tree: Tree, root: str) -> _Index:
        children = {d: frozenset(_join(d, n) for n in names)
                    for d, names in tree.dirs.items() if _under(d, root)}
        dirs = frozenset(children)
        files: dict[str, int] = {}
        subdirs: dict[str, int] = {}
        for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):  # deepest first
            files[d] = sum(files.get(c, 0) if c in dirs else 1 for c in children[d])
            subdirs[d] = sum(subdirs.get(c, 0) + 1 for c in children[d] if c in dirs)
        return cls(children, dirs, files, subdirs)


def collapse(
    touched: Mapping[str, Access],
    op: Op,
    tree: Tree,
    root: str,
    trees: Iterable[str] = (),
    index: _Index | None = None,
    fresh: Iterable[str] = (),
) -> dict[str, Access]:
    """The globs that cover ``touched`` (paths the run used ``op`` on), each with the
    first access it covers.

    The rule, for one operation, from the mount root down. An entry of a
    directory is *used* when the run used the operation on it, or when it is a
    directory most of whose entries are used (recursively); *most* is more
    than half. Entries that cannot take the operation are not counted (files
    for ``list``, directories themselves for ``read`` and ``write``: a
    directory counts through its entries).

    * ``D/**`` when ``D`` has subdirectories, at least :data:`MIN_ENTRIES`
      entries in its whole tree, most of its entries are used, and most of its
      subdirectories are: the run used most of that tree, so the tree is the
      unit. ``D`` in ``trees`` (a directory the run renamed, which the engine
      only allows between uniformly decided trees) always gets ``**``.
    * otherwise ``D/*`` for ``D``'s own entries when the run used the operation
      on most of them (at least :data:`MIN_ENTRIES`);
    * otherwise each path exactly.

    So a big tree the run made (``.git`` in a repository it only read) is
    ``.git/**`` without making the repository's root ``**`` as well. Entries
    are what ``tree`` lists (the repository before and after the run). A
    touched path it does not list (made and removed in the run, or never there)
    gets its rule but counts toward no "most", unless its directory is in
    ``fresh`` (the run made it: nothing of the user's was there) or is itself
    unlisted: else a guest that makes and removes three files in
    ``/data/secrets`` would learn ``/data/secrets/*`` for reading the secrets
    it never read. With an unknown tree only exact paths come out (and
    ``trees`` still gets ``**``).
    """
    forced = set(trees)
    index = index if index is not None else _Index.of(tree, root)
    # The part of the tree the run touched: every proper ancestor of a touched path
    # ("active"), with the entries the tree does not list (made and removed in the run).
    extra: dict[str, set[str]] = {}
    active: set[str] = set()
    for path in [*touched, *forced]:
        node = path
        while node != root and node.startswith(root + "/"):
            up = _parent(node)
            if node not in index.children.get(up, ()):
                extra.setdefault(up, set()).add(node)
            if up in active:
                break
            active.add(up)
            node = up
    dirs = index.dirs | active
    made = frozenset(fresh)

    def listed(d: str) -> list[str]:
        return sorted(index.children.get(d, frozenset()) | extra.get(d, set()))

    def weighed(d: str) -> list[str]:
        """``d``'s entries that "most" is counted on (see the docstring)."""
        if d in made or d not in index.dirs:
            return listed(d)
        return sorted(index.children.get(d, frozenset()))

    def counted(d: str, direct: bool) -> list[str]:
        """``d``'s entries that count: for ``D/*`` those that take the op themselves;
        for ``D/**`` directories too (through their entries), except for ``list``."""
        test = takes if direct else counts
        return [c for c in weighed(d) if test[c in dirs]]

    def earliest(*found: Access | None) -> Access | None:
        best = None
        for a in found:
            if a is not None and (best is None or a.seq < best.seq):
                best = a
        return best

    takes = {True: _eligible(op, True), False: _eligible(op, False)}  # per is_dir
    counts = {True: takes[True] or op is not Op.LIST, False: takes[False]}

    # Bottom-up over the active directories (the others hold nothing touched).
    size: dict[str, int] = {}  # entries below that take the op
    below_first: dict[str, Access | None] = {}  # the first touched access below
    mostly: dict[str, bool] = {}
    for d in sorted(active, key=lambda d: d.count("/"), reverse=True):
        kids = listed(d)
        weigh = set(weighed(d))
        total = 0
        first: Access | None = None
        used = 0
        entries = 0
        for c in kids:
            is_dir = c in dirs
            mine = touched.get(c)
            if mine is not None and (first is None or mine.seq < first.seq):
                first = mine
            if c in active:
                first = earliest(first, below_first[c])
            if c not in weigh:
                continue
            if c in active:
                total += size[c]
            elif is_dir:
                total += _untouched_size(index, op, c)
            total += takes[is_dir]
            if counts[is_dir]:
                entries += 1
                used += mine is not None or mostly.get(c, False)
        size[d], below_first[d] = total, first
        mostly[d] = entries > 0 and 2 * used > entries

    def used_dir(c: str) -> bool:
        return mostly.get(c, False) or (c in touched and not counted(c, direct=False))

    def whole_tree(d: str) -> bool:
        if not mostly.get(d, False):  # an untouched directory is not mostly used
            return False
        subdirs = [c for c in weighed(d) if c in dirs]
        return (tree.known and bool(subdirs) and size[d] >= MIN_ENTRIES
                and 2 * sum(1 for c in subdirs if used_dir(c)) > len(subdirs))

    out: dict[str, Access] = {}

    def visit(d: str) -> None:
        """Cover the touched paths strictly below directory ``d``."""
        if below_first.get(d) is None:
            return
        direct = counted(d, direct=True)
        hit = sum(1 for c in direct if c in touched)
        star = tree.known and len(direct) >= MIN_ENTRIES and 2 * hit > len(direct)
        for child in listed(d):
            if child in forced or (child in dirs and whole_tree(child)):
                access = earliest(touched.get(child), below_first.get(child))
                if access is not None:
                    out[_join(child, "**")] = access
                    continue
            if child in touched:
                glob = _join(d, "*") if star else child
                held = out.get(glob)
                if held is None or touched[child].seq < held.seq:
                    out[glob] = touched[child]
            if child in dirs:
                visit(child)

    if root in forced or whole_tree(root):
        access = earliest(touched.get(root), below_first.get(root))
        if access is not None:
            return {_join(root, "**"): access}
    if root in touched:
        out[root] = touched[root]
    visit(root)
    # D itself is a path D/** matches: its exact rule says nothing more
    return {g: a for g, a in out.items() if _join(g, "**") not in out}


def _untouched_size(index: _Index, op: Op, d: str) -> int:
    """The entries below ``d`` that take ``op`` (see ``_eligible``)."""
    if op is Op.LIST:
        return index.dirs_below.get(d, 0)
    if op in (Op.READ, Op.WRITE):
        return index.files_below.get(d, 0)
    return index.dirs_below.get(d, 0) + index.files_below.get(d, 0)


#: A run of letters and digits that ``mkstemp`` and friends fill in at random.
_RANDOM_RUN = re.compile(r"[A-Za-z0-9]{6,}")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def temporary_glob(path: str, existing: Iterable[str] = (), fresh: bool = False) -> str | None:
    """The glob a temporary file's name stands for, or None if it looks fixed.

    A temporary (a file the run created and that was gone by its end) named by
    ``mkstemp``, ``mktemp`` or git's ``tmp_obj_XXXXXX`` gets another name each
    run. Its name's first run of six or more letters and digits that mixes at
    least two of lower case, upper case and digits is taken for the random
    part (a leading ``tmp`` of that run is literal, as Python's ``tempfile``
    writes it): it and what follows, up to an extension, become one ``?`` per
    character, since those generators fill in a fixed count
    (``/tmp/ccAb12Cd.s`` -> ``/tmp/????????.s``, ``objects/ab/tmp_obj_q1W2e3``
    -> ``objects/ab/tmp_obj_??????``, ``/tmp/tmpk3j4_x9z`` -> ``/tmp/tmp????????``).
    The name is the guest's choice, so the glob must keep a literal part (a
    prefix or an extension) and match none of ``existing`` (the paths there
    before or after the run), else it is None and the path stays exact; unless
    its directory is ``fresh``: the run made it (as ``git init`` makes
    ``.git``), so nothing of the user's was there to match. A guest that
    removes a file named ``Ab12Cd`` from ``$HOME`` never learns ``$HOME/*``
    (which would let it write ``.bashrc``).
    A plain name (``db.sqlite-journal``, ``index.lock``) is the same every run
    and stays exact.
    """
    head, _, name = path.rpartition("/")
    for m in _RANDOM_RUN.finditer(name):
        run = m.group()
        kinds = sum(any(test(c) for c in run) for test in (str.islower, str.isupper, str.isdigit))
        if kinds >= 2 or fresh:  # (a random run may come out of one kind: git's "gyrtes")
            start = m.start() + (3 if run[:3].lower() == "tmp" else 0)
            ext = _EXTENSION.search(name[start:])
            end = len(name) - len(ext.group()) if ext else len(name)
            prefix, suffix = name[:start], name[end:]
            if not prefix and not suffix and not fresh:
                return None  # nothing of the name is kept: any name there of that length
            glob = f"{head}/{prefix}{'?' * (end - start)}{suffix}"
            compiled = PathGlob.compile(glob)
            if not fresh and any(compiled.matches(p) for p in existing
                                 if p != path and _parent(p) == (head or "/")):
                return None  # it would allow a file the run did not make
            return glob
    return None


def _siblings(path: str) -> list[str]:
    """The host paths in ``path``'s directory now (none when it cannot be listed)."""
    head = _parent(path)
    try:
        return [_join(head, n) for n in os.listdir(head)]
    except OSError:
        return []


def host_globs(writes: Mapping[str, Access], temporaries: Iterable[str],
               fresh: Iterable[str] = (),
               siblings: Callable[[str], list[str]] = _siblings) -> dict[str, Access]:
    """``[host] write`` (or ``mknod``) globs for the host paths written: each path
    exactly, except a temporary with a random name (:func:`temporary_glob`; its
    directory is ``fresh`` when the run made it, ``siblings`` lists it now)."""
    temp, made = set(temporaries), set(fresh)
    out: dict[str, Access] = {}
    for path, access in sorted(writes.items(), key=lambda kv: kv[1].seq):
        glob = (temporary_glob(path, siblings(path), _parent(path) in made)
                if path in temp else None) or path
        if glob not in out:
            out[glob] = access
    return out


# -- the policy document: TOML data we can extend and print ---------------------------------


def _comment(text: str) -> str:
    """A comment's text: one line, printable."""
    return "".join(c if c.isprintable() else "?" for c in text)


#: Why a name holding ``*`` or ``?`` is never learned: a rule for it would be a glob.
_NO_ESCAPE = "a name holding * or ? (policy globs have no escape: its rule would match others)"


def _has_wildcard(path: str) -> bool:
    return "*" in path or "?" in path


def _escape_path(path: str) -> str:
    """A path as a policy glob's text: ``$`` is a variable there, so it is doubled, and
    ``**`` inside a name (a load error) becomes ``*``, which matches that name too."""
    path = path.replace("$", "$$")
    if "**" not in path:
        return path
    return "/".join(c if c == "**" else re.sub(r"\*{2,}", "*", c) for c in path.split("/"))


def _toml_str(s: str) -> str:
    out = ['"']
    for c in s:
        n = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif n < 0x20 or n == 0x7F:
            out.append(f"\\u{n:04x}")
        elif 0xD800 <= n <= 0xDFFF:
            out.append("\ufffd")  # a name that is not UTF-8: no TOML text can say it
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_str(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


@attrs.define
class _Rule:
    glob: str
    ops: list[Op]
    comment: str


@attrs.define
class _AppDoc:
    fields: dict[str, Any]  # name, description, match, default, default_errno
    allow: list[Any]  # the file's own rules (dicts), kept as they were
    deny: list[Any]
    comment: str = ""
    learned: list[_Rule] = attrs.field(factory=list)
    exe: str = ""  # the executable a new app was made for ("" for the file's own apps)
    catch_all: bool = False

    @property
    def name(self) -> str:
        return str(self.fields.get("name", ""))


@attrs.define
class _HostDoc:
    fields: dict[str, Any]  # the file's own [host] table
    write: list[tuple[str, str]] = attrs.field(factory=list)  # learned (glob, comment)
    mknod: list[tuple[str, str]] = attrs.field(factory=list)
    network: tuple[str, str] | None = None  # learned (mode, comment)


@attrs.define
class _Doc:
    top: dict[str, Any]
    mounts: list[dict[str, Any]]
    apps: list[_AppDoc]
    host: _HostDoc | None
    header: list[str]

    @classmethod
    def parse(cls, text: str) -> _Doc:
        data = tomllib.loads(text)
        top = {k: v for k, v in data.items() if k not in ("mount", "app", "host")}
        apps = []
        for raw in data.get("app", []):
            fields = {k: v for k, v in raw.items() if k not in ("allow", "deny")}
            apps.append(_AppDoc(fields, list(raw.get("allow", [])), list(raw.get("deny", []))))
        host = _HostDoc(dict(data["host"])) if "host" in data else None
        return cls(top, list(data.get("mount", [])), apps, host, [])

    def render(self) -> str:
        lines = [f"# {_comment(h)}" if h else "#" for h in self.header]
        for key, value in self.top.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for mount in self.mounts:
            lines += ["", "[[mount]]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in mount.items()]
        for app in self.apps:
            lines.append("")
            if app.comment:
                lines += [f"# {_comment(c)}" for c in app.comment.splitlines()]
            lines.append("[[app]]")
            for key, value in app.fields.items():
                if key == "match" and isinstance(value, dict):
                    lines += [f"match.{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
                else:
                    lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
            if app.allow or app.learned:
                lines.append("allow = [")
                lines += [f"  {_toml_value(rule)}," for rule in app.allow]
                for rule in app.learned:
                    ops = [op.value for op in sorted(rule.ops, key=_ORDER.__getitem__)]
                    entry = _toml_value({"paths": [_escape_path(rule.glob)], "ops": ops})
                    lines.append(f"  {entry},  # {rule.comment}")
                lines.append("]")
            if app.deny:
                lines.append("deny = [")
                lines += [f"  {_toml_value(rule)}," for rule in app.deny]
                lines.append("]")
        if self.host is not None:
            host = self.host
            lines += ["", "[host]"]
            for key, value in host.fields.items():
                if key in ("write", "mknod") and getattr(host, key):
                    continue  # written below with the learned globs
                if key == "network" and host.network is not None:
                    continue
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
            for key in ("write", "mknod"):
                learned = getattr(host, key)
                if not learned:
                    continue
                lines.append(f"{key} = [")
                lines += [f"  {_toml_value(g)}," for g in host.fields.get(key, [])]
                lines += [f"  {_toml_value(_escape_path(g))},  # {c}" for g, c in learned]
                lines.append("]")
            if host.network is not None:
                mode, why = host.network
                lines.append(f"network = {_toml_value(mode)}  # {why}")
        return "\n".join(lines) + "\n"


# -- learning ----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Learned:
    """What :func:`learn` made: the policy text and what the user should know."""

    text: str
    apps: int
    rules: int
    warnings: tuple[str, ...]


def learning_policy(mount: str, symlinks: str | None = None) -> str:
    """The policy of the learning run: everything allowed, everything recorded.

    Processes get the app :data:`LEARN_APP` (``/*/**`` names every executable, but
    is not ``/**``, so a process with a borrowed identity stays unmatched and
    the records tell it apart); ``[host]`` write lists ``/**`` so host decisions
    are made, and recorded; the network is limited to loopback (the only
    setting in which it is checked, so recorded).
    """
    mount_lines = [f"path = {_toml_str(_escape_path(mount))}"]
    if symlinks:
        mount_lines.append(f"symlinks = {_toml_str(symlinks)}")
    return "\n".join([
        "version = 1",
        'name = "learn"',
        'description = "synthfs learn: every access allowed and recorded"',
        'default = "allow"',
        "[[mount]]",
        *mount_lines,
        "[[app]]",
        f"name = {_toml_str(LEARN_APP)}",
        'match.exe = ["/*/**"]',
        "[host]",
        'write = ["/**"]',
        'mknod = ["/**"]',
        'network = "loopback"',
        "",
    ])


def _where(access: Access, mounts: tuple[str, ...]) -> str:
    if access.op not in _ORDER and access.op != "mknod":
        return "network" if access.op in _NET_OPS else "other"
    path = access.path.partition(" -> ")[0] if " -> " in access.path else access.path
    for m in mounts:
        if path == m or path.startswith(m + "/"):
            return "mount"
    return "host"


def _rename_pair(access: Access) -> tuple[str, str] | None:
    """(src, dst) of a rename's tree check (``"SRC -> DST"``), or None."""
    if access.op != "rename" or " -> " not in access.path:
        return None
    src, _, dst = access.path.partition(" -> ")
    if src.startswith("/") and dst.startswith("/"):
        return src, dst
    return None


_NETWORK_RANK = {NetworkMode.DENY: 0, NetworkMode.LOOPBACK: 1, NetworkMode.ALLOW: 2}


def learn(
    accesses: list[Access],
    *,
    mount: str,
    tree: Tree,
    command: str,
    base: str | None = None,
    base_name: str = "",
    env: Mapping[str, str] | None = None,
    digest: Callable[[str], str | None] | None = None,
    name: str = "learned",
    after: Tree | None = None,
) -> Learned:
    """The narrowest policy that allows what ``accesses`` show (see the module doc).

    ``tree``: what the repository held before and after the run (merged);
    ``after``: after it alone, to tell temporaries (created, gone at the end:
    :func:`temporary_glob`) on the mount; without it, a path created and removed
    or renamed away in the run is one. ``base``: the text of a policy to extend
    (``--from``; its comments are not kept); ``digest(exe)``: the sha256 to pin
    each new app with (None: no pin for that executable), or None not to pin.
    ``env`` expands the variables of ``base`` (placeholders, as ``policy
    check`` does, when one is unset).
    """
    learner = _Learner(accesses, mount=mount, tree=tree, command=command, base=base,
                       base_name=base_name, env=dict(os.environ if env is None else env),
                       digest=digest, name=name)
    return learner.run(after)


#: A recorded access the learned policy denies: the access, the app it is learned
#: into (None: it cannot be), and for a rename's tree check (src, dst, is_tree).
_Failure = tuple[Access, "_AppDoc | None", "tuple[str, str, bool] | None"]
#: per op, path -> the first access that used it
_PerOp = dict[Op, dict[str, Access]]


class _Learner:
    """One :func:`learn`: who is who, what is needed, the policy, its check."""

    def __init__(
        self, accesses: list[Access], *, mount: str, tree: Tree, command: str,
        base: str | None, base_name: str, env: dict[str, str],
        digest: Callable[[str], str | None] | None, name: str,
    ) -> None:
        self.accesses = accesses
        self.tree = tree
        self.base = base
        self.env = env
        self.digest = digest
        self.name = name
        self.warnings: list[str] = []
        if base is None:
            self.doc = _Doc(
                top={"version": 1, "name": name,
                     "description": _short(f"learned from: {command}"), "default": "deny"},
                mounts=[{"path": _escape_path(mount)}], apps=[], host=None, header=[],
            )
            self.base_policy = _load(self.doc.render(), "<empty>", env)
            self.doc.host = _HostDoc({})  # learned: host writes and the network
        else:
            self.doc = _Doc.parse(base)
            self.base_policy = _load(self.doc.render(), base_name or "<base>", env)
        self.mounts = self.base_policy.mounts
        self.doc.header = [
            f"Learned by synthfs learn from: {command}",
            *([f"extending {base_name} (its rules are kept; its comments are not)"]
              if base is not None else []),
            "Review every rule, then enforce: synthfs run --policy THIS_FILE ... -- CMD",
            "Collapsing: a directory's * when the run used an op on most of its entries, its **",
            "when on most of its tree (docs/policy.md, 'synthfs learn').",
            "",
        ]
        self.by_name = {a.name: a for a in self.doc.apps}
        self.used_names = set(self.by_name)
        self.new_apps: dict[str, _AppDoc] = {}
        self.catch_all: list[_AppDoc] = []
        self.targets: dict[tuple[str, bool], _AppDoc | None] = {}
        # what the base does not allow yet, per app (keyed by id: _AppDoc is mutable)
        self.apps_of: dict[int, _AppDoc] = {}
        self.mount_need: dict[int, _PerOp] = {}
        self.exact: dict[int, _PerOp] = {}  # patches: exact paths the check asked for
        self.forced: dict[int, set[str]] = {}  # renamed directories: always D/**
        self.host_need: dict[str, dict[str, Access]] = {"write": {}, "mknod": {}}
        self.network: Access | None = None
        self.checks: list[tuple[Access, _AppDoc | None]] = []
        self.renames: list[tuple[Access, _AppDoc, str, str]] = []
        self.temp_globs: dict[str, str] = {}
        self.mount_made: frozenset[str] = frozenset()  # paths the run created on the mount
        self.indexes: dict[str, _Index] = {}  # mount root -> the tree below it
        self.execs: dict[str, Access] | None = None  # executable -> the first execve of it
        self.host_temps: set[str] = set()
        self.host_made: set[str] = set()

    # -- identity --------------------------------------------------------------------------
    def sha(self, exe: str) -> Callable[[], str]:
        def get() -> str:
            value = self.digest(exe) if self.digest is not None else None
            if value is None:
                raise OSError("no digest")
            return value
        return get

    def started(self, access: Access) -> str:
        """How the first process of ``access.exe`` came to be: the execve that ran it."""
        if self.execs is None:
            self.execs = {}
            for a in self.accesses:
                if a.syscall in ("execve", "execveat"):
                    self.execs.setdefault(a.path, a)
        exec_ = self.execs.get(access.exe)
        if exec_ is not None:
            return f"first exec'd by {exec_.origin()}"
        return f"first seen: {access.origin(with_exe=False)}"

    def target(self, access: Access) -> _AppDoc | None:
        """The app ``access`` is learned into: the base's app of that program, a new
        app for its executable, or the catch-all app; None for a pin mismatch."""
        key = (access.exe, access.borrowed)
        if key not in self.targets:
            self.targets[key] = self._target(access)
        return self.targets[key]

    def _target(self, access: Access) -> _AppDoc | None:
        app = self.base_policy.identify(access.exe, [access.exe], self.sha(access.exe),
                                        borrowed=access.borrowed)
        if app.deny_all is not None:
            self.warnings.append(
                f"{access.exe} does not match the sha256 pin of app {app.name!r} ({app.ref}):"
                " its accesses are not learned")
            return None
        if app.matched:
            return self.by_name[app.name]
        if access.borrowed:
            if not self.catch_all:
                self.catch_all.append(_AppDoc(
                    {"name": _unique("any-program", self.used_names),
                     "match": {"exe": ["/**"]}},
                    [], [], catch_all=True,
                    comment="processes no app naming an executable may identify (a loader"
                    " variable such as\nLD_PRELOAD in the environment, or the dynamic loader"
                    " run directly): their rules\nare every program's (docs/policy.md,"
                    " 'Borrowed identity'); first: " + access.origin()))
            return self.catch_all[0]
        found = self.new_apps.get(access.exe)
        if found is None and _has_wildcard(access.exe):
            self.warnings.append(f"{access.exe}: {_NO_ESCAPE}: its accesses are not learned")
            return None
        if found is None:
            match: dict[str, Any] = {"exe": [_escape_path(access.exe)]}
            value = self.digest(access.exe) if self.digest is not None else None
            if value is not None:
                match["sha256"] = value
            elif self.digest is not None:
                self.warnings.append(f"{access.exe}: cannot hash it; its app is not pinned")
            nice = os.path.basename(access.exe) or "program"
            found = _AppDoc({"name": _unique(nice, self.used_names), "match": match}, [], [],
                            exe=access.exe, comment=f"{access.exe}: {self.started(access)}")
            self.new_apps[access.exe] = found
        return found

    # -- what is needed ----------------------------------------------------------------------
    def collect(self, after: Tree | None) -> None:
        """Sort the accesses: what the base already allows, what must be learned."""
        host_ops: dict[str, set[str]] = {}
        mount_ops: dict[str, set[str]] = {}
        for access in self.accesses:
            where = _where(access, self.mounts)
            if not access.allowed:
                self.warnings.append(f"refused during learning, not learned: {access.origin()}"
                                     f" ({access.rule or 'denied'})")
                continue
            if where in ("mount", "host") and any(
                    _has_wildcard(p) for p in (access.path, *(_rename_pair(access) or ()))):
                self.warnings.append(f"{_NO_ESCAPE}, not learned: {access.origin()}")
                continue
            app = self.target(access)
            if where == "mount":
                if app is None:
                    continue
                mount_ops.setdefault(access.path, set()).add(access.op)
                pair = _rename_pair(access)
                if pair is not None:
                    self.renames.append((access, app, *pair))
                    continue
                self.checks.append((access, app))
                if _allows(self.base_policy, access):
                    continue
                self.apps_of[id(app)] = app
                per_op = self.mount_need.setdefault(id(app), {})
                per_op.setdefault(Op(access.op), {}).setdefault(access.path, access)
            elif where == "host":
                if _rename_pair(access) is not None:
                    continue  # [host] renames: both paths are write-listed
                host_ops.setdefault(access.path, set()).add(access.op)
                if access.op in READ_OPS:
                    continue  # host reads stay unrestricted
                self.checks.append((access, app))
                if self.base is not None and _allows(self.base_policy, access):
                    continue
                kind = "mknod" if access.op == "mknod" else "write"
                self.host_need[kind].setdefault(access.path, access)
            elif where == "network":
                self.checks.append((access, app))
                if self.network is None:
                    self.network = access
        self.host_temps = {p for p, ops in host_ops.items()
                           if "create" in ops and ops & {"delete", "rename"}}
        # On the mount: created, and not there after the run (removed, or renamed away).
        if after is not None:
            there = _paths(after)
            gone = {p for p, ops in mount_ops.items() if "create" in ops and p not in there}
        else:
            gone = {p for p, ops in mount_ops.items()
                    if "create" in ops and ops & {"delete", "rename"}}
        known = _paths(self.tree) | (_paths(after) if after is not None else set())
        made = {p for p, ops in mount_ops.items() if "create" in ops}
        self.mount_made = frozenset(made)
        self.temp_globs = {p: g for p in gone
                           if (g := temporary_glob(p, known, _parent(p) in made)) is not None}
        self.host_made = {p for p, ops in host_ops.items() if "create" in ops}
        for app in self.apps():
            self.apps_of.setdefault(id(app), app)

    def apps(self) -> list[_AppDoc]:
        return [*self.doc.apps, *self.new_apps.values(), *self.catch_all]

    # -- the policy ----------------------------------------------------------------------------
    def globs_of(self, key: int) -> dict[str, dict[Op, Access]]:
        """glob -> op -> first access, for one app: its needs collapsed, plus its patches."""
        globs: dict[str, dict[Op, Access]] = {}
        needed, patches = self.mount_need.get(key, {}), self.exact.get(key, {})
        for op in Op:
            touched: dict[str, Access] = {}
            for path, access in needed.get(op, {}).items():  # a temporary: its glob
                glob = self.temp_globs.get(path, path)
                if glob not in touched or access.seq < touched[glob].seq:
                    touched[glob] = access
            for path, access in patches.get(op, {}).items():
                touched.setdefault(path, access)
            for root in self.mounts:
                mine = {p: a for p, a in touched.items() if _under(p, root)}
                if not mine:
                    continue
                trees = [t for t in self.forced.get(key, ()) if _under(t, root)]
                if root not in self.indexes:
                    self.indexes[root] = _Index.of(self.tree, root)
                collapsed = collapse(mine, op, self.tree, root, trees, self.indexes[root],
                                     self.mount_made)
                for path, access in patches.get(op, {}).items():  # patches stay exact
                    if path in mine:
                        collapsed.setdefault(path, access)
                for glob, access in collapsed.items():
                    globs.setdefault(glob, {})[op] = access
        return globs

    def build(self) -> _Doc:
        for app in self.apps():
            app.learned = []
        for key in {*self.mount_need, *self.exact, *self.forced}:
            app = self.apps_of[key]
            existing = _existing_rules(app)
            globs = self.globs_of(key)
            for glob in sorted(globs, key=lambda g: min(a.seq for a in globs[g].values())):
                per_glob = globs[glob]
                ops = []
                for op, access in per_glob.items():
                    seen = existing.get((_escape_path(glob), op))
                    if seen == "deny":
                        self.warnings.append(
                            f"app {app.name!r}: the policy denies {op.value} on {glob},"
                            f" which {access.origin()} needed; left denied")
                    elif seen is None:
                        ops.append(op)
                if ops:
                    app.learned.append(_Rule(glob, ops, _rule_comment(app, per_glob, ops)))
        out = _Doc(self.doc.top, self.doc.mounts, self.apps(), self.doc.host, self.doc.header)
        if out.host is not None:
            writes = host_globs(self.host_need["write"], self.host_temps, self.host_made)
            out.host.write = [
                (g, a.origin() + (" (a temporary: created and removed in the run)"
                                  if g != a.path else ""))
                for g, a in writes.items()
            ]
            nodes = host_globs(self.host_need["mknod"], ())
            out.host.mknod = [(g, a.origin()) for g, a in nodes.items()]
            out.host.network = _network(self.base_policy, self.network, self.base is None)
        return out

    # -- the check -----------------------------------------------------------------------------
    def patch(self, failures: list[_Failure], learned: Policy) -> bool:
        """Rules for what the learned policy still denies; False if nothing could change."""
        progress = False
        for access, app, moved in failures:
            if app is None:
                continue
            key = id(app)
            self.apps_of[key] = app
            if moved is None:
                if _where(access, self.mounts) != "mount":
                    continue
                slot = self.exact.setdefault(key, {}).setdefault(Op(access.op), {})
                if access.path not in slot:
                    slot[access.path] = access
                    progress = True
                continue
            src, dst, is_tree = moved
            if is_tree:
                trees = self.forced.setdefault(key, set())
                if not {src, dst} <= trees:
                    trees |= {src, dst}
                    progress = True
                continue  # both trees become D/**: the source allows what the destination does
            a = learned.identify(access.exe, [access.exe], self.sha(access.exe),
                                 borrowed=access.borrowed)
            for op in Op:  # the source must allow whatever the destination allows
                stricter = not learned.decide(a, op, src).allowed
                if stricter and learned.decide(a, op, dst).allowed:
                    slot = self.exact.setdefault(key, {}).setdefault(op, {})
                    if src not in slot:
                        slot[src] = access
                        progress = True
        return progress

    def run(self, after: Tree | None) -> Learned:
        self.collect(after)
        for _round in range(4):
            result = self.build()
            text = result.render()
            try:
                learned = _load(text, self.name, self.env)
            except PolicyError as exc:
                raise PolicyError(exc.path, exc.line, "learn made a policy the loader refuses:"
                                  f" {exc.message}") from None
            failures = _verify(learned, self.checks, self.renames, set(self.tree.dirs), self.sha)
            if not failures or not self.patch(failures, learned):
                break
        for access, _app, _moved in failures:
            self.warnings.append(f"still denied by the learned policy: {access.origin()}")
        count = sum(len(a.learned) for a in result.apps)
        return Learned(text, len(result.apps), count, tuple(dict.fromkeys(self.warnings)))


def _rule_comment(app: _AppDoc, per_glob: dict[Op, Access], ops: list[Op]) -> str:
    """``pid 42: read/stat: first openat /data/x; create: first mkdir /data/y``."""
    firsts: dict[str, list[str]] = {}
    for op in sorted(ops, key=_ORDER.__getitem__):
        a = per_glob[op]
        firsts.setdefault(f"{a.syscall} {a.path}", []).append(op.value)
    text = "; ".join(f"{'/'.join(o)}: first {what}" for what, o in firsts.items())
    first = min(per_glob.values(), key=lambda a: a.seq)
    prog = os.path.basename(first.exe) if app.catch_all or not app.exe else ""
    return _comment(f"pid {first.pid} {prog}: {text}" if prog else f"pid {first.pid}: {text}")


def _paths(tree: Tree) -> set[str]:
    return {*tree.dirs, *(_join(d, n) for d, names in tree.dirs.items() for n in names)}


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def _load(text: str, name: str, env: Mapping[str, str]) -> Policy:
    return Policy.from_text(text, name=os.path.basename(name) or name, env=env, notes=[])


def _allows(policy: Policy, access: Access, app: App | None = None) -> bool:
    """Whether ``policy`` allows this access (by ``app``, or the app of the program)."""
    try:
        if app is None:
            app = policy.identify(access.exe, [access.exe], _no_digest, borrowed=access.borrowed)
        if access.op == "mknod":
            return policy.decide_mknod(app, access.path).allowed
        op = Op(access.op)
        if policy.is_on_mount(access.path):
            return policy.decide(app, op, access.path).allowed
        return policy.decide_host(app, op, access.path).allowed
    except ValueError:
        return False


def _no_digest() -> str:
    raise OSError("not hashed")


def _existing_rules(app: _AppDoc) -> dict[tuple[str, Op], str]:
    """(glob text, op) -> "allow" | "deny" for the rules a file already gives ``app``."""
    out: dict[tuple[str, Op], str] = {}
    for action, rules in (("allow", app.allow), ("deny", app.deny)):
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            paths = rule.get("paths", [])
            ops = rule.get("ops", [])
            paths = [paths] if isinstance(paths, str) else paths
            ops = [ops] if isinstance(ops, str) else ops
            for p in paths:
                for o in ops:
                    for op in (Op if o == "*" else [o]):
                        try:
                            out.setdefault((str(p), Op(op)), action)
                        except ValueError:
                            continue
    return out


def _network(base: Policy, used: Access | None, fresh: bool) -> tuple[str, str]:
    """The ``network`` line: the base's mode raised to what the run used."""
    need = NetworkMode.LOOPBACK if used is not None else NetworkMode.DENY
    have = NetworkMode.DENY if fresh else base.network
    if _NETWORK_RANK[have] >= _NETWORK_RANK[need]:
        why = "the run used no network" if used is None else "as before"
        return have.value, why
    assert used is not None
    return need.value, used.origin()


def _verify(
    policy: Policy,
    checks: list[tuple[Access, _AppDoc | None]],
    renames: list[tuple[Access, _AppDoc, str, str]],
    dirs: set[str],
    sha: Callable[[str], Callable[[], str]],
) -> list[tuple[Access, _AppDoc | None, tuple[str, str, bool] | None]]:
    """The recorded accesses ``policy`` would deny (with the rename pairs it refuses)."""
    failures: list[tuple[Access, _AppDoc | None, tuple[str, str, bool] | None]] = []
    apps: dict[tuple[str, bool], App] = {}

    def app_of(access: Access) -> App:
        key = (access.exe, access.borrowed)
        if key not in apps:
            apps[key] = policy.identify(access.exe, [access.exe], sha(access.exe),
                                        borrowed=access.borrowed)
        return apps[key]

    for access, target in checks:
        app = app_of(access)
        if access.op in _NET_OPS:
            if policy.network is NetworkMode.DENY:
                failures.append((access, target, None))
            continue
        if not _allows(policy, access, app):
            failures.append((access, target, None))
    for access, target, src, dst in renames:
        tree = src in dirs or dst in dirs
        if not policy.decide_rename(app_of(access), src, dst, tree).allowed:
            failures.append((access, target, (src, dst, tree)))
    return failures
