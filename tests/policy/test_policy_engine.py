"""The policy engine and loader, pure (no ptrace): interposer/policy.py."""

from __future__ import annotations

import errno
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from synthfs.policy.audit import AuditRecord
from synthfs.policy.engine import (
    DEFAULT_POLICY_TOML,
    READ_OPS,
    WRITE_OPS,
    Action,
    Decision,
    NetworkMode,
    Op,
    Policy,
    PolicyError,
    Symlinks,
)
from synthfs.policy.globs import ArgvGlob, GlobError, PathGlob
from synthfs.policy.lines import key_lines

REPO = Path(__file__).resolve().parents[2]
ENV = {"WORKSPACE": "/home/ci/ws", "HOME": "/home/ci", "TMPDIR": "/var/tmp/x"}


def load(text: str, env: dict[str, str] | None = None) -> Policy:
    return Policy.from_text(textwrap.dedent(text), name="t.toml", env=ENV if env is None else env)


def no_hash() -> str:
    raise AssertionError("sha256 must not be computed when no app pins it")


def app_of(policy: Policy, exe: str = "/usr/bin/python3.11", argv: tuple[str, ...] = ()):
    return policy.identify(exe, list(argv) or [exe], no_hash)


def line_with(text: str, needle: str) -> int:
    for n, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in text")


HEAD = """\
version = 1
name = "t"
default = "deny"
[[mount]]
path = "/data"
"""


def with_app(body: str, head: str = HEAD) -> str:
    return head + textwrap.dedent(body)


# --- the loader is strict, and every error names its line -------------------------------

BAD = [
    # (document, text on the line the error must name, words the message must contain);
    # "#<" marks the line where the text alone would be ambiguous
    ("alow = true\n" + HEAD, "alow", ["unknown key 'alow' in the top level"]),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nalow = []\n'),
        "alow",
        ["did you mean 'allow'"],
    ),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nmatch.exec = ["x"]\n'),
        "match.exec",
        ["unknown key 'exec'", "did you mean 'exe'"],
    ),
    ('version = "1"\n', "version", ["integer"]),
    ("version = true\n", "version", ["integer"]),
    ("version = 2\n", "version", ["unsupported version 2"]),
    ('name = "x"\n\ndefault = "deny"\n', "name", ["missing 'version'", "version = 1"]),
    (HEAD.replace('"deny"', '"maybe"'), "default", ['"allow" or "deny"']),
    (
        "default_errno = 'EACESS'\n" + HEAD,
        "default_errno",
        ["unknown errno", "did you mean 'EACCES'"],
    ),
    (
        "default_errno = 'ENOENT'\n" + HEAD.replace('"deny"', '"allow"'),
        "default_errno",
        ['needs default = "deny"'],
    ),
    (with_app('[[app]]\nname = "a"\nmatch.exe = ["usr/bin/x"]\n'), "usr/bin/x", ["not absolute"]),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data/a**"], ops = ["read"] }]\n'
        ),
        "/data/a**",
        ["'**' must be a whole component"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data/a/"], ops = ["read"] }]\n'
        ),
        "/data/a/",
        ["ends with '/'"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data/../etc"], ops = ["read"] }]\n'
        ),
        "/data/../etc",
        ["'..'"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data//a"], ops = ["read"] }]\n'
        ),
        "/data//a",
        ["empty component"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/etc/**"], ops = ["read"] }]\n'
        ),
        "/etc/**",
        ["not on a mount", "[host]"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\nallow = [\n'
            '  { paths = ["/data/**"], ops = ["read"] },\n'
            '  { paths = ["/data/x"], ops = ["raed"] },\n]\n'
        ),
        "raed",
        ["unknown op 'raed'", "did you mean 'read'"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'deny = [{ paths = ["/data/x"], ops = ["*"], errno = "ENOENTT" }]\n'
        ),
        "ENOENTT",
        ["unknown errno", "ENOENT"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'deny = [{ paths = ["/data/x"], ops = ["*"], errno = 2 }]\n'
        ),
        "errno = 2",
        ["unknown errno"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data/x"], ops = ["read"], errno = "ENOENT" }]\n'
        ),
        "errno",
        ["errno only applies to deny rules"],
    ),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nallow = [{ paths = ["/data/x"] }]\n'),
        "/data/x",
        ["no 'ops'"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\nallow = [{ paths = [], ops = ["read"] }]\n'
        ),
        "paths = []",
        ["empty"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = "/data/x", ops = ["read"] }]\n'
        ),
        "paths =",
        ["array of strings"],
    ),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nallow = { paths = ["/data/x"] }\n'),
        "allow =",
        ["array of tables"],
    ),
    # two readings of one file
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
            'allow = [{ paths = ["/data/x/**"], ops = ["read", "write"] }]\n'
            'deny = [{ paths = ["/data/x/**"], ops = ["write"] }]\n'
        ),
        "deny =",
        ["contradicts t.toml:9", "'write'", "two ways"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\ndeny = [\n'
            '  { paths = ["/data/x"], ops = ["read"], errno = "ENOENT" },\n'
            '  { paths = ["/data/x"], ops = ["*"] },\n]\n'
        ),
        'ops = ["*"]',
        ["contradicts t.toml:10"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/**"]\nallow = [\n'
            '  { paths = ["/data/x"], ops = ["read"] },\n'
            '  { paths = ["/data/y", "/data/x"], ops = ["read"] },\n]\n'
        ),
        '"/data/y"',
        ["repeats t.toml:10"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/usr/bin/cat"]\n'
            '[[app]]\nname = "b"\nmatch.exe = ["/usr/bin/cat"]  #<\n'
        ),
        "#<",
        ["app 'b' can never match", "app 'a' above (line 6)"],
    ),
    (
        with_app(
            '[[app]]\nname = "all"\nmatch.exe = ["/**"]\n'
            '[[app]]\nname = "cat"\nmatch.exe = ["/usr/bin/cat"]\n'
        ),
        '"/usr/bin/cat"',
        ["can never match"],
    ),
    (
        with_app(
            '[[app]]\nname = "py"\nmatch.exe = ["/usr/bin/*"]\n'
            '[[app]]\nname = "pytest"\nmatch.exe = ["/usr/bin/*"]  #<\nmatch.argv = ["*pytest*"]\n'
        ),
        "#<",
        ["move the more specific app first"],
    ),
    (
        with_app(
            '[[app]]\nname = "a"\nmatch.exe = ["/usr/bin/cat"]\n'
            '[[app]]\nname = "a"  #<\nmatch.exe = ["/usr/bin/ls"]\n'
        ),
        "#<",
        ["duplicate app name 'a'"],
    ),
    (with_app('[[app]]\nname = "a"\n'), "[[app]]", ["has no match"]),
    (with_app('[[app]]\nname = "a"\nmatch.argv = ["x"]\n'), "match.argv", ["has no match.exe"]),
    (with_app('[[app]]\nmatch.exe = ["/**"]\n'), "[[app]]", ["missing required key 'name'"]),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nmatch.sha256 = "abc"\n'),
        "sha256",
        ["64 hex digits"],
    ),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\nmatch.argv = [""]\n'),
        "match.argv",
        ["empty argv glob"],
    ),
    ("app = 3\n" + HEAD, "app = 3", ["array of tables"]),
    # variables
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["$NOPE/bin/x"]\n'),
        "$NOPE",
        ["undefined variable $NOPE"],
    ),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["${EMPTY}/x"]\n'),
        "EMPTY",
        ["variable $EMPTY is empty"],
    ),
    (with_app('[[app]]\nname = "a"\nmatch.exe = ["/x/$"]\n'), "/x/$", ["bad '$'", "$$"]),
    (with_app('[[app]]\nname = "a"\nmatch.exe = ["$STAR/x"]\n'), "$STAR", ["contains '*'"]),
    (
        with_app('[[app]]\nname = "a"\nmatch.exe = ["$REL/x"]\n'),
        "$REL",
        ["not absolute", "from '$REL/x'"],
    ),
    # mounts
    (HEAD + '[[mount]]\npath = "/data/sub"\n', '"/data/sub"', ["overlaps mount '/data'"]),
    ('version = 1\n[[mount]]\npath = "/data/*"\n', '"/data/*"', ["literal directory"]),
    ("version = 1\nmount = []\n", "mount = []", ["no mount"]),
    ('version = 1\n[[mount]]\nroot = "/data"\n', "root", ["unknown key 'root'"]),
    (
        'version = 1\n[[mount]]\npath = "/data"\nsymlinks = "anchor"\n',
        "symlinks",
        ['"follow", "anchored" or "refuse-host"', "'anchor'"],
    ),
    ('version = 1\n[[mount]]\npath = "/data"\nsymlinks = true\n', "symlinks", ["not a boolean"]),
    ('version = 1\n[[mount]]\npath = "/data"\nsimlinks = "follow"\n', "simlinks", ["symlinks"]),
    # [host]
    (HEAD + '[host]\nnetwork = "none"\n', "network", ['"deny", "loopback" or "allow"']),
    (HEAD + '[host]\nread = ["/usr/**"]\nwrite = ["tmp/**"]\n', "tmp/**", ["not absolute"]),
    (HEAD + '[host]\nraed = ["/usr/**"]\n', "raed", ["did you mean 'read'"]),
    ("host = 1\n" + HEAD, "host = 1", ["must be a table"]),
    # TOML itself
    (HEAD + "x = = 1\n", "x = = 1", ["TOML syntax error"]),
    (HEAD + '[[app]]\nname = "a"\nname = "b"\n', 'name = "b"', ["TOML syntax error"]),
]

VAR_ENV = {**ENV, "EMPTY": "", "STAR": "/a*b", "REL": "rel/dir"}


@pytest.mark.parametrize(("doc", "needle", "words"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_loader_refuses_with_line_and_hint(doc: str, needle: str, words: list[str]) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_text(doc, name="t.toml", env=VAR_ENV)
    err = info.value
    expected = line_with(doc, needle)
    assert err.line == expected, (str(err), expected)
    assert err.path == "t.toml"
    assert str(err).startswith(f"t.toml:{expected}: ")
    for word in words:
        assert word in err.message, (word, err.message)
    assert isinstance(err, ValueError)


def test_error_str_format() -> None:
    assert str(PolicyError("ci.toml", 12, "unknown key 'alow'")) == "ci.toml:12: unknown key 'alow'"
    assert str(PolicyError("ci.toml", None, "cannot read")) == "ci.toml: cannot read"


def test_from_toml_reports_io_and_encoding(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'version = 1\nname = "\xff"\n')
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(bad)
    assert info.value.line == 2 and "UTF-8" in info.value.message
    good = tmp_path / "good.toml"
    good.write_text(HEAD)
    assert Policy.from_toml(good, env={}).mounts == ("/data",)


def test_toml_syntax_error_at_end_of_document() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_text('version = 1\nname = "x', name="t.toml", env={})
    assert info.value.line is not None and "TOML syntax error" in info.value.message


def test_minimal_policy_and_defaults() -> None:
    p = Policy.from_text("version = 1\n", env={})
    assert p.mounts == ("/data",)
    assert p.default_action is Action.DENY
    assert p.network is NetworkMode.ALLOW and not p.has_host_rules
    app = app_of(p)
    assert not app.matched
    d = p.decide(app, Op.READ, "/data/x")
    assert d == Decision(Action.DENY, "default", d.reason, errno.EACCES)
    assert "not set: deny" in d.reason


# --- specificity: the most specific rule wins, deny wins ties ---------------------------


def rules_policy(rules: str) -> Policy:
    return load(with_app('[[app]]\nname = "a"\nmatch.exe = ["/**"]\n' + textwrap.dedent(rules)))


def test_names_that_are_not_utf8_match_globs() -> None:
    """A byte that is not UTF-8 is one character (os.fsdecode's U+DC80..U+DCFF) to a glob."""
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/raw-*", "/data/x?y", "/data/d/**/*.key"], ops = ["read"] }]
        """
    )
    a = app_of(p)
    assert p.decide(a, Op.READ, "/data/raw-\udcff\udcfe").action is Action.DENY
    assert p.decide(a, Op.READ, "/data/x\udcffy").action is Action.DENY
    assert p.decide(a, Op.READ, "/data/x\udcff\udcfey").allowed  # two bytes: two characters
    assert p.decide(a, Op.READ, "/data/d/\udce9/\udc80.key").action is Action.DENY
    assert p.decide(a, Op.READ, "/data/ok-\udcff").allowed


def test_more_literal_characters_win() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/a/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/a/secret/**"], ops = ["read"] }]
        """
    )
    a = app_of(p)
    assert p.decide(a, Op.READ, "/data/a/x").allowed
    assert p.decide(a, Op.READ, "/data/a/secret").action is Action.DENY
    assert p.decide(a, Op.READ, "/data/a/secret/deep/file").action is Action.DENY
    assert p.decide(a, Op.READ, "/data/a/secretive").allowed  # a component, not a prefix
    # and the reverse: a more specific allow inside a denied tree
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/a/public/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/a/**"], ops = ["read"] }]
        """
    )
    a = app_of(p)
    assert p.decide(a, Op.READ, "/data/a/public/x").allowed
    assert not p.decide(a, Op.READ, "/data/a/x").allowed


def test_single_star_stays_in_one_component_and_beats_double_star() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/x/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/x/*.csv"], ops = ["read"] }]
        """
    )
    a = app_of(p)
    assert not p.decide(a, Op.READ, "/data/x/t.csv").allowed
    assert not p.decide(a, Op.READ, "/data/x/.csv").allowed  # '*' may be empty, dot-files too
    assert p.decide(a, Op.READ, "/data/x/sub/t.csv").allowed  # '*' does not cross '/'
    assert p.decide(a, Op.READ, "/data/x").allowed  # '**' matches zero components


def test_fewer_double_stars_win_at_equal_literals() -> None:
    # both globs have 10 literal characters; the one without '**' is more specific
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/public/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/*/secret"], ops = ["read"] }]
        """
    )
    a = app_of(p)
    assert not p.decide(a, Op.READ, "/data/public/secret").allowed
    assert p.decide(a, Op.READ, "/data/public/other").allowed


def test_exact_path_beats_glob_and_question_mark_is_one_char() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/f?"], ops = ["read"] }]
        deny = [{ paths = ["/data/**"], ops = ["read"] }, { paths = ["/data/f1"], ops = ["stat"] }]
        """
    )
    a = app_of(p)
    assert p.decide(a, Op.READ, "/data/f1").allowed
    assert not p.decide(a, Op.READ, "/data/f12").allowed
    assert not p.decide(a, Op.READ, "/data/f").allowed
    assert not p.decide(a, Op.STAT, "/data/f1").allowed


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_beats_allow_at_equal_specificity(deny_first: bool) -> None:
    allow = 'allow = [{ paths = ["/data/*a/x"], ops = ["read"] }]\n'
    deny = 'deny = [{ paths = ["/data/a*/x"], ops = ["read"] }]\n'
    p = rules_policy(deny + allow if deny_first else allow + deny)
    a = app_of(p)
    assert PathGlob.compile("/data/*a/x").specificity == PathGlob.compile("/data/a*/x").specificity
    d = p.decide(a, Op.READ, "/data/aa/x")
    assert d.action is Action.DENY
    assert d.rule == f"t.toml:{9 if deny_first else 10}"
    assert p.decide(a, Op.READ, "/data/ba/x").allowed  # only the allow matches


def test_equal_specificity_denies_resolve_in_file_order() -> None:
    p = rules_policy(
        """\
        deny = [
          { paths = ["/data/*a/x"], ops = ["read"], errno = "ENOENT" },
          { paths = ["/data/a*/x"], ops = ["read"], errno = "EPERM" },
        ]
        """
    )
    d = p.decide(app_of(p), Op.READ, "/data/aa/x")
    assert d.errno == errno.ENOENT and d.rule == "t.toml:10"


def test_rule_applies_only_to_its_ops_and_star_means_all() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/ro/**"], ops = ["read", "stat", "list"] },
                 { paths = ["/data/rw/**"], ops = ["*"] }]
        """
    )
    a = app_of(p)
    for op in Op:
        assert p.decide(a, op, "/data/rw/f").allowed
        assert p.decide(a, op, "/data/ro/f").allowed is (op in READ_OPS)
    assert frozenset(Op) == READ_OPS | WRITE_OPS and not READ_OPS & WRITE_OPS


def test_enoent_hides_and_errnos_are_kept() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/**"], ops = ["*"] }]
        deny = [
          { paths = ["/data/hidden/**"], ops = ["*"], errno = "ENOENT" },
          { paths = ["/data/perm"], ops = ["write"], errno = "EPERM" },
          { paths = ["/data/rofs/**"], ops = ["write", "create"], errno = "EROFS" },
          { paths = ["/data/plain"], ops = ["read"] },
        ]
        """
    )
    a = app_of(p)
    for op in Op:
        d = p.decide(a, op, "/data/hidden/x")
        assert (d.action, d.errno) == (Action.DENY, errno.ENOENT)
    assert p.decide(a, Op.STAT, "/data/hidden").errno == errno.ENOENT  # the directory itself
    assert p.decide(a, Op.WRITE, "/data/perm").errno == errno.EPERM
    assert p.decide(a, Op.CREATE, "/data/rofs/new").errno == errno.EROFS
    assert p.decide(a, Op.READ, "/data/plain").errno == errno.EACCES
    assert p.decide(a, Op.READ, "/data/other").errno == 0


def test_app_default_overrides_policy_default() -> None:
    p = load(
        with_app(
            """\
            [[app]]
            name = "open"
            match.exe = ["/usr/bin/cat"]
            default = "allow"
            deny = [{ paths = ["/data/private/**"], ops = ["*"] }]
            [[app]]
            name = "hidden"
            match.exe = ["/usr/bin/ls"]
            default_errno = "ENOENT"
            """
        )
    )
    cat = app_of(p, "/usr/bin/cat")
    assert p.decide(cat, Op.WRITE, "/data/x").allowed
    assert "app 'open' default is allow (t.toml:9)" in p.decide(cat, Op.WRITE, "/data/x").reason
    assert not p.decide(cat, Op.READ, "/data/private/x").allowed
    ls = app_of(p, "/usr/bin/ls")
    assert p.decide(ls, Op.LIST, "/data").errno == errno.ENOENT
    other = app_of(p, "/usr/bin/head")
    assert p.decide(other, Op.READ, "/data/x").errno == errno.EACCES


def test_rule_refs_name_the_line_of_each_inline_table() -> None:
    text = with_app(
        """\
        [[app]]
        name = "a"
        match.exe = ["/**"]
        allow = [
          # a comment with [brackets] and { braces }
          { paths = ["/data/one/**"], ops = ["read"] },

          { paths = ["/data/two/**",
                     "/data/three/**"], ops = ["read"] },
        ]
        """
    )
    p = Policy.from_text(text, name="dir/t.toml", env={})
    a = app_of(p)
    assert p.decide(a, Op.READ, "/data/one/x").rule == f"t.toml:{line_with(text, 'one/**')}"
    assert p.decide(a, Op.READ, "/data/three/x").rule == f"t.toml:{line_with(text, 'two/**')}"
    assert p.apps[0].ref == f"t.toml:{line_with(text, '[[app]]')}"


def test_key_lines_handles_tables_quoted_keys_and_strings() -> None:
    text = textwrap.dedent(
        """\
        version = 1 # [not a table]
        name = "a # b [c] {d}"
        description = '''
        multi [[app]]
        line'''
        [[app]]
        "name" = "x"
        [app.match]
        exe = ["/usr/bin/x"]
        'argv' = ["a\\"b"]
        [[app]]
        name = "y"
        match = { exe = ["/a"], argv = ["b"] }
        """
    )
    lines = key_lines(text)
    assert lines[("version",)] == 1
    assert lines[("app", 0)] == 6
    assert lines[("app", 0, "name")] == 7
    assert lines[("app", 0, "match")] == 8
    assert lines[("app", 0, "match", "argv", 0)] == 10
    assert lines[("app", 1)] == 11
    assert lines[("app", 1, "match", "argv")] == 13


# --- variables --------------------------------------------------------------------------


def test_variables_expand_from_the_env_given() -> None:
    p = load(
        with_app(
            """\
            [[app]]
            name = "tool"
            match.exe = ["$HOME/bin/tool", "${WORKSPACE}/.venv/bin/*"]
            match.argv = ["$$literal"]
            [host]
            write = ["$WORKSPACE/**", "${TMPDIR}/**"]
            """
        ),
        env={"HOME": "/home/u/", "WORKSPACE": "/w", "TMPDIR": "/"},
    )
    tool = p.apps[0]
    assert [g.text for g in tool.exe] == ["/home/u/bin/tool", "/w/.venv/bin/*"]
    assert [g.text for g in tool.argv] == ["$literal"]
    assert p.identify("/w/.venv/bin/python", ["python", "$literal"], no_hash) is tool
    assert p.identify("/w/.venv/bin/python", ["python", "literal"], no_hash) is not tool
    assert p.decide_host(tool, Op.WRITE, "/w/a/b").allowed
    assert p.decide_host(tool, Op.WRITE, "/anything").allowed  # ${TMPDIR}=/ -> "/**"


def test_a_variable_needs_a_value() -> None:
    with pytest.raises(PolicyError, match=r"undefined variable \$WORKSPACE") as info:
        Policy.from_toml(REPO / "policies" / "ci.toml", env={})
    assert info.value.line == line_with(
        (REPO / "policies" / "ci.toml").read_text(), "$WORKSPACE/**"
    )


# --- identity: exe, argv, sha256 --------------------------------------------------------


def ident_policy(extra: str = "") -> Policy:
    return load(
        with_app(
            """\
            [[app]]
            name = "pytest"
            match.exe = ["/usr/bin/python3*"]
            match.argv = ["-m", "pytest"]
            allow = [{ paths = ["/data/tests/**"], ops = ["*"] }]
            [[app]]
            name = "script"
            match.exe = ["/usr/bin/python3*"]
            match.argv = ["*/train.py"]
            allow = [{ paths = ["/data/train/**"], ops = ["read"] }]
            [[app]]
            name = "python"
            match.exe = ["/usr/bin/python3*", "/usr/local/bin/python3*"]
            allow = [{ paths = ["/data/py/**"], ops = ["read"] }]
            """
            + extra
        )
    )


def test_argv_every_glob_must_match_some_element() -> None:
    p = ident_policy()

    def name(exe: str, *argv: str) -> str:
        return p.identify(exe, list(argv), no_hash).name

    assert name("/usr/bin/python3.11", "python3", "-m", "pytest", "-x") == "pytest"
    assert name("/usr/bin/python3.11", "python3", "pytest", "-m") == "pytest"  # order is free
    assert name("/usr/bin/python3.11", "python3", "-m", "pip") == "python"  # '-m' alone: no
    assert (
        name("/usr/bin/python3.11", "python3", "/home/u/ml/train.py") == "script"
    )  # '*' crosses '/'
    assert name("/usr/bin/python3.11", "train.py") == "python"  # '*/' needs a slash
    assert name("/usr/local/bin/python3.12", "python3", "x/train.py") == "python"  # exe differs
    assert name("/usr/bin/python3.11", "/tmp/pytest") == "python"  # '-m' still missing
    assert name("/usr/bin/perl", "perl", "-m", "pytest") == "(unmatched)"


def test_identity_follows_exec() -> None:
    p = ident_policy()
    py = p.identify("/usr/bin/python3.11", ["python3", "x.py"], no_hash)
    assert p.decide(py, Op.READ, "/data/py/a").allowed
    curl = p.identify("/usr/bin/curl", ["curl", "x"], no_hash)  # the same pid after execve
    assert not curl.matched
    assert not p.decide(curl, Op.READ, "/data/py/a").allowed


def test_argv_glob_semantics() -> None:
    g = ArgvGlob.compile("*py?est*")
    assert g.matches("/usr/lib/pytest/x") and g.matches("py-est") and not g.matches("pyest")
    assert ArgvGlob.compile("[x]").matches("[x]")  # brackets are literal
    with pytest.raises(GlobError):
        ArgvGlob.compile("")


@pytest.fixture
def fake_exe(tmp_path: Path) -> tuple[Path, str]:
    exe = tmp_path / "bin" / "tool"
    exe.parent.mkdir()
    exe.write_bytes(b"#!/bin/sh\necho tool\n")
    return exe, hashlib.sha256(exe.read_bytes()).hexdigest()


def pinned_policy(exe: Path, digest: str) -> Policy:
    return load(
        with_app(
            f"""\
            [[app]]
            name = "tool"
            match.exe = ["{exe}"]
            match.sha256 = "{digest.upper()}"
            allow = [{{ paths = ["/data/tool/**"], ops = ["read"] }}]
            [[app]]
            name = "anything"
            match.exe = ["/**"]
            default = "allow"
            """
        )
    )


def hasher(path: Path, calls: list[int]):
    def sha256() -> str:
        calls.append(1)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return sha256


def test_sha256_pin_matches(fake_exe: tuple[Path, str]) -> None:
    exe, digest = fake_exe
    p = pinned_policy(exe, digest)
    calls: list[int] = []
    app = p.identify(str(exe), [str(exe)], hasher(exe, calls))
    assert app.name == "tool" and calls == [1]
    assert p.decide(app, Op.READ, "/data/tool/x").allowed
    assert not p.decide(app, Op.READ, "/data/other").allowed
    # the lazy hash is not computed for an exe whose app has no pin
    other = p.identify("/usr/bin/cat", ["cat"], no_hash)
    assert other.name == "anything"


def test_sha256_pin_mismatch_denies_everything_and_does_not_fall_through(
    fake_exe: tuple[Path, str],
) -> None:
    exe, digest = fake_exe
    p = pinned_policy(exe, digest)
    exe.write_bytes(b"#!/bin/sh\necho evil\n")  # the binary changed after the pin was taken
    calls: list[int] = []
    app = p.identify(str(exe), [str(exe)], hasher(exe, calls))
    assert calls == [1]
    assert app.name == "tool (sha256 mismatch)" and app.deny_all is not None
    for op in Op:
        for path in ("/data/tool/x", "/data/other", "/data"):
            d = p.decide(app, op, path)
            assert (d.action, d.errno) == (Action.DENY, errno.EACCES)
            assert d.rule == "t.toml:9" and "sha256 differs" in d.reason
    assert p.read_only().decide(app, Op.WRITE, "/data/x").errno == errno.EACCES
    assert p.explain(app, Op.READ, "/data/x") == (app.deny_all,)


def test_sha256_unreadable_counts_as_mismatch(fake_exe: tuple[Path, str]) -> None:
    exe, digest = fake_exe
    p = pinned_policy(exe, digest)

    def broken() -> str:
        raise FileNotFoundError(str(exe))

    assert p.identify(str(exe), [str(exe)], broken).deny_all is not None


def test_borrowed_identity_gets_only_catch_all_apps(fake_exe: tuple[Path, str]) -> None:
    """A process that runs code its caller chose (LD_PRELOAD, ld.so run directly) is
    not its executable: the pinned app is skipped, unhashed, and so is any app that
    names executables; an app for every executable still applies."""
    exe, digest = fake_exe
    p = pinned_policy(exe, digest)
    app = p.identify(str(exe), [str(exe)], no_hash, borrowed=True)
    assert app.name == "anything"
    named = ident_policy()
    assert named.identify("/usr/bin/python3", ["python3"], no_hash).name == "python"
    assert named.identify("/usr/bin/python3", ["python3"], no_hash, borrowed=True).name == (
        "(unmatched)"
    )


@pytest.mark.parametrize(
    ("exe", "environ", "why"),
    [
        ("/usr/bin/cat", b"PATH=/bin\0HOME=/root\0", None),
        ("/usr/bin/cat", b"PATH=/bin\0LD_PRELOAD=/tmp/x.so\0", "LD_PRELOAD"),
        ("/usr/bin/cat", b"LD_AUDIT=/tmp/x.so\0", "LD_AUDIT"),
        ("/usr/bin/cat", b"A=1\0LD_LIBRARY_PATH=/tmp\0", "LD_LIBRARY_PATH"),
        ("/usr/bin/cat", b"GCONV_PATH=/tmp\0", "GCONV_PATH"),
        ("/usr/bin/cat", b"GLIBC_TUNABLES=x\0", "GLIBC_TUNABLES"),
        ("/usr/bin/cat", b"XLD_PRELOAD=/tmp/x.so\0", None),
        ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"", "dynamic loader"),
        ("/lib/ld-musl-x86_64.so.1", b"", "dynamic loader"),
        ("/usr/bin/ld", b"", None),
    ],
)
def test_borrowed_identity_reasons(exe: str, environ: bytes, why: str | None) -> None:
    from synthfs.interposer.runenv import borrowed_identity

    got = borrowed_identity(exe, environ)
    assert (got is None) if why is None else (got is not None and why in got)


def test_exe_globs_match_realpaths_only() -> None:
    p = ident_policy()
    # the supervisor passes realpaths; a symlink name is just another path
    assert p.identify("/usr/bin/python3", ["python3"], no_hash).name == "python"
    assert p.identify("/usr/bin/python3/../perl", ["x"], no_hash).name == "(unmatched)"
    assert p.identify("/opt/usr/bin/python3", ["x"], no_hash).name == "(unmatched)"


# --- read-only, host, network -----------------------------------------------------------


def test_read_only_denies_writes_with_erofs_and_keeps_denials() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/**"], ops = ["*"] }]
        deny = [{ paths = ["/data/hidden/**"], ops = ["*"], errno = "ENOENT" }]
        """
    )
    ro = p.read_only()
    assert ro.is_read_only and not p.is_read_only and ro.read_only() is ro
    a = app_of(ro)
    for op in Op:
        d = ro.decide(a, op, "/data/x")
        if op in WRITE_OPS:
            assert (d.action, d.rule, d.errno) == (Action.DENY, "--read-only", errno.EROFS)
        else:
            assert d.allowed
        assert ro.decide(a, op, "/data/hidden/x").errno == errno.ENOENT
    assert p.decide(a, Op.WRITE, "/data/x").allowed  # the original is unchanged
    chain = ro.explain(a, Op.WRITE, "/data/x")
    assert chain[0].rule == "--read-only" and chain[1].allowed


def test_read_only_of_the_default_policy() -> None:
    ro = Policy.default().read_only()
    a = app_of(ro, "/usr/bin/anything")
    assert ro.decide(a, Op.CREATE, "/data/new").errno == errno.EROFS
    assert ro.decide(a, Op.READ, "/data/new").allowed
    assert ro.decide_host(a, Op.WRITE, "/tmp/x").allowed  # the host is not the mount


def test_host_absent_allows_everything() -> None:
    p = rules_policy("")
    a = app_of(p)
    for op in Op:
        assert p.decide_host(a, op, "/etc/shadow").allowed
    assert p.network is NetworkMode.ALLOW


def test_host_lists() -> None:
    p = load(
        HEAD
        + textwrap.dedent(
            """\
            [host]
            read = ["/usr/**", "/etc/passwd"]
            write = ["$WORKSPACE/**", "/tmp/**"]
            network = "loopback"
            """
        )
    )
    a = app_of(p)
    assert p.network is NetworkMode.LOOPBACK
    assert p.decide_host(a, Op.READ, "/usr/lib/x.so").allowed
    assert p.decide_host(a, Op.STAT, "/usr").allowed
    assert p.decide_host(a, Op.READ, "/etc/passwd").allowed
    d = p.decide_host(a, Op.READ, "/etc/shadow")
    assert (d.action, d.errno, d.rule) == (Action.DENY, errno.EACCES, "t.toml:7")
    assert p.decide_host(a, Op.READ, "/home/ci/ws/src/x.py").allowed  # writable implies readable
    assert p.decide_host(a, Op.WRITE, "/home/ci/ws/out").allowed
    assert p.decide_host(a, Op.CREATE, "/tmp/x").allowed
    d = p.decide_host(a, Op.WRITE, "/usr/lib/x.so")
    assert (d.action, d.rule) == (Action.DENY, "t.toml:8")
    assert not p.decide_host(a, Op.DELETE, "/home/ci/other").allowed
    assert not p.decide_host(a, Op.READ, "/home/ci/ws/../x").allowed  # not normalised: refuse


def test_host_missing_list_is_unrestricted_and_errno_is_settable() -> None:
    p = load(HEAD + '[host]\nwrite = ["/tmp/**"]\nerrno = "EROFS"\nnetwork = "deny"\n')
    a = app_of(p)
    assert p.decide_host(a, Op.READ, "/etc/shadow").allowed
    assert p.decide_host(a, Op.WRITE, "/etc/x").errno == errno.EROFS
    assert p.network is NetworkMode.DENY
    p = load(HEAD + '[host]\nread = ["/**"]\n')
    assert p.decide_host(a, Op.READ, "/").allowed  # "/**" includes the root
    assert p.decide_host(app_of(p), Op.WRITE, "/etc/x").allowed


# --- fail closed on supervisor mistakes -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/database", "data/x", "/data/./x", "/data/../etc", "/data//x", "/data/x/", ""],
)
def test_paths_off_the_mount_or_not_normalised_are_denied(path: str) -> None:
    p = Policy.default()
    d = p.decide(app_of(p), Op.READ, path)
    assert (d.action, d.rule, d.errno) == (Action.DENY, "engine", errno.EACCES)
    assert p.explain(app_of(p), Op.READ, path) == (d,)


def test_app_from_another_policy_is_denied() -> None:
    p, q = Policy.default(), Policy.default()
    d = q.decide(app_of(p), Op.READ, "/data/x")
    assert (d.action, d.rule) == (Action.DENY, "engine")
    # read_only() shares apps with its original
    assert p.read_only().decide(app_of(p), Op.READ, "/data/x").allowed


def test_decisions_are_cached_and_stable() -> None:
    p = ident_policy()
    a = app_of(p, "/usr/bin/python3.11")
    first = p.decide(a, Op.READ, "/data/py/x")
    assert p.decide(a, Op.READ, "/data/py/x") is first
    for i in range(70000):  # overflow the cache: still correct
        p.decide(a, Op.READ, f"/data/py/{i}")
    assert p.decide(a, Op.READ, "/data/py/x") == first


def test_mount_root_and_multiple_mounts() -> None:
    p = load(
        'version = 1\ndefault = "deny"\n[[mount]]\npath = "/data"\n[[mount]]\npath = "/models"\n'
        '[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
        'allow = [{ paths = ["/data/**"], ops = ["list"] }, { paths = ["/**"], ops = ["stat"] }]\n'
    )
    a = app_of(p)
    assert p.mounts == ("/data", "/models")
    assert p.decide(a, Op.LIST, "/data").allowed
    assert not p.decide(a, Op.LIST, "/models").allowed
    assert p.decide(a, Op.STAT, "/models/x").allowed
    assert p.decide(a, Op.STAT, "/other").rule == "engine"


# --- the shipped policies ---------------------------------------------------------------


def test_default_policy_file_is_the_builtin() -> None:
    assert (REPO / "policies" / "default.toml").read_text() == DEFAULT_POLICY_TOML
    p = Policy.default()
    a = app_of(p, "/usr/bin/anything")
    for op in Op:
        assert p.decide(a, op, "/data/x/y").allowed
        assert p.decide_host(a, op, "/etc/x").allowed
    assert p.network is NetworkMode.ALLOW and p.mounts == ("/data",)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "policies").glob("*.toml")))
def test_every_shipped_policy_loads_and_says_how_to_run_it(name: str) -> None:
    path = REPO / "policies" / name
    text = path.read_text()
    assert text.startswith(f"# {name}:") and "synthfs run" in text
    p = Policy.from_toml(path, env=ENV)
    assert p.name and p.description


def test_ci_policy() -> None:
    p = Policy.from_toml(REPO / "policies" / "ci.toml", env=ENV)
    job = p.identify("/usr/bin/python3.11", ["python3", "-m", "pytest"], no_hash)
    ok = [
        (Op.READ, "/data/fixtures/a.csv"),
        (Op.LIST, "/data/fixtures"),
        (Op.LIST, "/data"),
        (Op.WRITE, "/data/artifacts/report.xml"),
        (Op.CREATE, "/data/artifacts/new"),
        (Op.DELETE, "/data/artifacts/old"),
    ]
    for op, path in ok:
        assert p.decide(job, op, path).allowed, (op, path)
    assert p.decide(job, Op.WRITE, "/data/fixtures/a.csv").errno == errno.EROFS
    assert p.decide(job, Op.DELETE, "/data/fixtures").errno == errno.EROFS
    assert p.decide(job, Op.READ, "/data/secrets/key").errno == errno.EACCES
    assert p.decide(job, Op.DELETE, "/data").errno == errno.EACCES
    assert p.decide_host(job, Op.READ, "/usr/lib/python3.11/os.py").allowed
    assert p.decide_host(job, Op.WRITE, "/home/ci/ws/.pytest_cache/x").allowed
    assert p.decide_host(job, Op.CREATE, "/tmp/pytest-1/x").allowed
    assert p.decide_host(job, Op.WRITE, "/dev/null").allowed
    assert not p.decide_host(job, Op.WRITE, "/home/ci/.bashrc").allowed
    assert not p.decide_host(job, Op.DELETE, "/usr/bin/python3").allowed
    assert p.network is NetworkMode.LOOPBACK


def test_per_app_policy() -> None:
    p = Policy.from_toml(REPO / "policies" / "per-app.toml", env=ENV)
    py = p.identify("/usr/bin/python3.11", ["python3", "x.py"], no_hash)
    train = p.identify("/usr/bin/python3.11", ["python3", "/w/train.py"], no_hash)
    cat = p.identify("/usr/bin/cat", ["cat"], no_hash)
    ls = p.identify("/usr/bin/ls", ["ls", "-la"], no_hash)
    head = p.identify("/usr/bin/head", ["head"], no_hash)
    assert p.decide(py, Op.READ, "/data/public/a.csv").allowed
    assert p.decide(py, Op.READ, "/data/public/private/k").errno == errno.ENOENT
    assert p.decide(py, Op.STAT, "/data/public/private").errno == errno.ENOENT
    assert p.decide(py, Op.WRITE, "/data/public/a.csv").errno == errno.EACCES
    assert p.decide(train, Op.WRITE, "/data/models/m.pt").allowed
    assert p.decide(train, Op.READ, "/data/images/1.png").allowed
    assert not p.decide(py, Op.READ, "/data/images/1.png").allowed
    for op in Op:
        assert p.decide(cat, op, "/data/public/a.csv").errno == errno.EACCES
    assert p.decide(ls, Op.LIST, "/data/public/private").allowed
    assert not p.decide(ls, Op.READ, "/data/public/a.csv").allowed
    assert not head.matched and not p.decide(head, Op.READ, "/data/public/a.csv").allowed


def test_readonly_policy() -> None:
    p = Policy.from_toml(REPO / "policies" / "readonly.toml", env={})
    a = app_of(p, "/usr/bin/touch")
    assert p.decide(a, Op.READ, "/data/x").allowed
    for op in WRITE_OPS:
        assert p.decide(a, op, "/data/x").errno == errno.EROFS


# --- explain() agrees with decide() -----------------------------------------------------


def test_explain_lists_winner_first() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/**"], ops = ["read"] }]
        deny = [{ paths = ["/data/a/**"], ops = ["read"], errno = "ENOENT" }]
        """
    )
    a = app_of(p)
    chain = p.explain(a, Op.READ, "/data/a/x")
    assert [d.rule for d in chain] == ["t.toml:10", "t.toml:9", "default"]
    assert chain[0] == p.decide(a, Op.READ, "/data/a/x")


# --- audit ------------------------------------------------------------------------------


def test_audit_record_json() -> None:
    p = Policy.from_toml(REPO / "policies" / "per-app.toml", env=ENV)
    cat = p.identify("/usr/bin/cat", ["cat"], no_hash)
    d = p.decide(cat, Op.READ, "/data/x")
    rec = AuditRecord.from_decision(
        time=1_700_000_000.25,
        pid=42,
        exe="/usr/bin/cat",
        app=cat,
        syscall="openat",
        path="/data/x\udcff",
        op=Op.READ,
        decision=d,
        latency_us=3.14159,
    )
    obj = json.loads(rec.to_json())
    assert obj == {
        "event": "policy/decision",
        "time": "2023-11-14T22:13:20.250000Z",
        "pid": 42,
        "exe": "/usr/bin/cat",
        "app": "cat",
        "syscall": "openat",
        "path": "/data/x\udcff",
        "op": "read",
        "decision": "deny",
        "rule": d.rule,
        "errno": 13,
        "errname": "EACCES",
        "latency_us": 3.142,
    }
    assert "\n" not in rec.to_json()
    allow = AuditRecord.from_decision(
        time=0,
        pid=1,
        exe="x",
        app="a",
        syscall="stat",
        path="/data",
        op="stat",
        decision=Decision(Action.ALLOW, "default", "r", 0),
        latency_us=0,
    )
    assert json.loads(allow.to_json())["errname"] == ""


def test_default_policy_on_another_mount_and_the_unmatched_app() -> None:
    p = Policy.default("/mnt/x")
    assert p.mounts == ("/mnt/x",)
    assert p.decide(p.unmatched, Op.WRITE, "/mnt/x/a").allowed
    assert p.decide(p.unmatched, Op.WRITE, "/data/a").rule == "engine"
    with pytest.raises(PolicyError):
        Policy.default('/x"y')
    with pytest.raises(PolicyError):
        Policy.default("relative")


def test_before_the_first_exec_no_app_matches() -> None:
    p = load(with_app('[[app]]\nname = "all"\nmatch.exe = ["/**"]\ndefault = "allow"\n'))
    assert p.identify("", [], no_hash) is p.unmatched  # "/**" never matches an empty exe
    assert p.identify("/", ["/"], no_hash).name == "all"
    assert not p.unmatched.matched and p.apps[0].matched


def test_sha256_pin_may_list_several_versions(fake_exe: tuple[Path, str]) -> None:
    exe, digest = fake_exe
    other = "ab" * 32
    p = load(
        with_app(
            f'[[app]]\nname = "tool"\nmatch.exe = ["{exe}"]\n'
            f'match.sha256 = ["{other}", "{digest.upper()}"]\n'
            'allow = [{ paths = ["/data/**"], ops = ["read"] }]\n'
        )
    )
    app = p.identify(str(exe), [str(exe)], lambda: digest)
    assert app.name == "tool" and p.decide(app, Op.READ, "/data/x").allowed
    assert p.identify(str(exe), [str(exe)], lambda: other).name == "tool"
    assert p.identify(str(exe), [str(exe)], lambda: "cd" * 32).deny_all is not None
    bad = with_app(
        '[[app]]\nname = "tool"\nmatch.exe = ["/x"]\n'
        f'match.sha256 = [\n  "{other}",\n  "nothex",\n]\n'
    )
    with pytest.raises(PolicyError) as info:
        Policy.from_text(bad, name="t.toml", env={})
    assert info.value.line == line_with(bad, "nothex") and "64 hex digits" in info.value.message
    with pytest.raises(PolicyError, match="or a list of them"):
        Policy.from_text(
            with_app('[[app]]\nname = "t"\nmatch.exe = ["/x"]\nmatch.sha256 = []\n'), env={}
        )


def test_directory_memo_never_changes_a_decision() -> None:
    p = rules_policy(
        """\
        allow = [{ paths = ["/data/a/**"], ops = ["read"] },
                 { paths = ["/data/c/x"], ops = ["read"] }]
        deny = [{ paths = ["/data/a/*.key"], ops = ["read"], errno = "ENOENT" },
                { paths = ["/data/b/**"], ops = ["read"], errno = "EPERM" }]
        """
    )
    a = app_of(p)
    # /data/a: '*.key' tells children apart; /data/b and /data/a/sub: one answer for all
    assert p._dir_decision(a, Op.READ, "/data/a") is None
    assert p._dir_decision(a, Op.READ, "/data/b").errno == errno.EPERM
    assert p._dir_decision(a, Op.READ, "/data/a/sub").allowed
    assert p._dir_decision(a, Op.READ, "/data/c") is None  # /data/c/x is a child
    assert p._dir_decision(a, Op.READ, "/data/d") == a.default
    for _ in range(2):  # twice: the second pass is answered from the memos
        assert p.decide(a, Op.READ, "/data/a/x.txt").allowed
        assert p.decide(a, Op.READ, "/data/a/x.key").errno == errno.ENOENT
        assert p.decide(a, Op.READ, "/data/a/sub/x.key").allowed  # '*' stays in one component
        assert p.decide(a, Op.READ, "/data/b/y").errno == errno.EPERM
        assert p.decide(a, Op.READ, "/data/c/x").allowed
        assert not p.decide(a, Op.READ, "/data/c/y").allowed
        assert p.decide(a, Op.READ, "/data").rule == "default"
    ro = p.read_only()
    assert ro._dir_decision(a, Op.WRITE, "/data/a/sub") == a.default  # no write rules


# --- renames keep paths under their rules -------------------------------------------------

RENAME_POLICY = """\
    [[app]]
    name = "job"
    match.exe = ["/**"]
    allow = [{ paths = ["/data", "/data/**"], ops = ["*"] }]
    deny = [
      { paths = ["/data/dir/inner/**"], ops = ["*"] },
      { paths = ["/data/private/**"], ops = ["read"] },
      { paths = ["/data/hidden/**"], ops = ["*"], errno = "ENOENT" },
      { paths = ["/data/closed/**"], ops = ["*"] },
    ]
    """


@pytest.mark.parametrize(
    ("src", "dst", "tree", "allowed"),
    [
        ("/data/a", "/data/b", True, True),  # no rule below either
        ("/data/a/f", "/data/b/g", False, True),
        ("/data/dir", "/data/moved", True, False),  # /data/dir/inner/** would be left behind
        ("/data/private", "/data/public", True, False),  # read denied below, allowed there
        ("/data/private/f", "/data/public/f", False, False),  # one file the same way
        ("/data/public/f", "/data/private/f", False, True),  # into a stricter place: fine
        ("/data/a", "/data/closed/a", True, True),
        ("/data/hidden/x", "/data/closed/x", True, False),  # ENOENT would become EACCES
        ("/data/closed/x", "/data/hidden/x", True, True),
    ],
)
def test_rename_never_moves_a_path_from_under_a_stricter_rule(
    src: str, dst: str, tree: bool, allowed: bool
) -> None:
    p = load(with_app(RENAME_POLICY))
    app = app_of(p, "/usr/bin/mv")
    d = p.decide_rename(app, src, dst, tree)
    assert d.allowed is allowed, d
    if not allowed:
        assert d.errno == errno.EXDEV


def test_rename_of_a_tree_some_rule_looks_inside_is_refused() -> None:
    """A glob with a wildcard that may match below the source: the rules cannot show
    the two trees decided alike, so the directory is not moved (EXDEV: mv copies)."""
    p = load(
        with_app(
            """\
            [[app]]
            name = "job"
            match.exe = ["/**"]
            allow = [{ paths = ["/data", "/data/**"], ops = ["*"] }]
            deny = [{ paths = ["/data/*/tmp.csv"], ops = ["read"] }]
            """
        )
    )
    app = app_of(p, "/usr/bin/mv")
    assert p.decide_rename(app, "/data/a", "/data/b", True).errno == errno.EXDEV
    assert p.decide_rename(app, "/data/a/x", "/data/b/x", True).allowed  # nothing below matches
    assert p.decide_rename(app, "/data/a/f", "/data/b/f", False).allowed
    assert p.decide_rename(app, "/data/a/tmp.csv", "/data/f", False).errno == errno.EXDEV


def test_host_rename_keeps_host_paths_under_their_globs() -> None:
    p = load(
        HEAD
        + """
        [host]
        read = ["/usr/**", "/ws", "/ws/box", "/ws/pub/**"]
        write = ["/ws/box", "/ws/pub/**", "/ws/w/**"]
        """
    )
    # /ws/box is writable (so it may be renamed) but nothing below it is readable
    assert p.decide_host_rename("/ws/box", "/ws/pub/box", True).errno == errno.EXDEV
    assert p.decide_host_rename("/ws/pub/a", "/ws/pub/b", True).allowed
    assert p.decide_host_rename("/ws/w/a", "/ws/pub/a", True).allowed
    assert p.decide_host_rename("/ws/pub/f", "/ws/w/f", False).allowed


def test_mount_symlinks_setting() -> None:
    """[[mount]] symlinks: "follow" unless set, per mount, kept by --read-only."""
    doc = (
        'version = 1\n[[mount]]\npath = "/data"\n'
        '[[mount]]\npath = "/repo"\nsymlinks = "refuse-host"\n'
        '[[mount]]\npath = "/old"\nsymlinks = "anchored"\n'
    )
    policy = Policy.from_text(doc, env={})
    want = {"/data": Symlinks.FOLLOW, "/repo": Symlinks.REFUSE_HOST, "/old": Symlinks.ANCHORED}
    assert policy.symlinks == want
    assert policy.read_only().symlinks == want
    assert Policy.default().symlinks == {"/data": Symlinks.FOLLOW}


def test_shipped_policies_symlinks() -> None:
    """ci.toml (fixtures from anyone) refuses links to the host; the others follow."""
    env = {"WORKSPACE": "/home/ci/ws"}
    want = {"ci": Symlinks.REFUSE_HOST, "default": Symlinks.FOLLOW,
            "per-app": Symlinks.FOLLOW, "readonly": Symlinks.FOLLOW}  # fmt: skip
    for name, mode in want.items():
        policy = Policy.from_toml(REPO / "policies" / f"{name}.toml", env=env)
        assert policy.symlinks == {"/data": mode}, name
