"""policy/learn.py, pure: the collapsing rule, host globs, and learn() on scripted records.

No ptrace here: the records are written as the supervisor writes them
(``AuditRecord.to_json``), the tree is given, and every learned policy is
loaded and asked about each recorded access by the engine itself.
"""

from __future__ import annotations

import json

import pytest

from synthfs.policy.engine import Action, Op, Policy
from synthfs.policy.learn import (
    MIN_ENTRIES,
    Access,
    Tree,
    collapse,
    host_globs,
    learn,
    learning_policy,
    read_accesses,
    temporary_glob,
)

_seq = iter(range(1_000_000))


def rec(path: str, op: str, exe: str = "/usr/bin/cat", *, app: str = "learn",
        syscall: str = "openat", pid: int = 42, allowed: bool = True) -> Access:
    return Access(next(_seq), pid, exe, app, syscall, path, op, allowed, "learn.toml:9")


def touched(*paths: str, op: str = "read") -> dict[str, Access]:
    return {p: rec(p, op) for p in paths}


# A repository: /data has a.txt b.txt c.txt d/ e/; d has 1..4; e has f/ with 1..4.
TREE = Tree({
    "/data": frozenset({"a.txt", "b.txt", "c.txt", "d", "e"}),
    "/data/d": frozenset({"1", "2", "3", "4"}),
    "/data/e": frozenset({"f", "g.txt"}),
    "/data/e/f": frozenset({"1", "2", "3", "4"}),
})


def globs(t: dict[str, Access], op: Op = Op.READ, tree: Tree = TREE, **kw: object) -> set[str]:
    return set(collapse(t, op, tree, "/data", **kw))  # type: ignore[arg-type]


# -- the collapsing rule -----------------------------------------------------------------


def test_few_files_stay_exact() -> None:
    assert globs(touched("/data/a.txt", "/data/d/1")) == {"/data/a.txt", "/data/d/1"}


def test_exactly_half_of_a_directory_stays_exact() -> None:
    assert globs(touched("/data/d/1", "/data/d/2")) == {"/data/d/1", "/data/d/2"}


def test_most_of_a_directory_is_its_star() -> None:
    t = touched("/data/d/1", "/data/d/2", "/data/d/3")
    out = collapse(t, Op.READ, TREE, "/data")
    assert set(out) == {"/data/d/*"}
    assert out["/data/d/*"] is t["/data/d/1"]  # the first access it covers, for the comment


def test_a_directory_without_subdirectories_never_gets_double_star() -> None:
    # all of d/ is read: d/* says it; d/** would also grant whatever d/x/ may later hold
    assert globs(touched("/data/d/1", "/data/d/2", "/data/d/3", "/data/d/4")) == {"/data/d/*"}


def test_most_of_a_tree_is_its_double_star() -> None:
    t = touched("/data/e/f/1", "/data/e/f/2", "/data/e/f/3", "/data/e/g.txt")
    assert globs(t) == {"/data/e/**"}
    # the directory itself too: e/** matches /data/e, no exact rule beside it
    assert globs(touched("/data/e", *t, op="stat"), Op.STAT) == {"/data/e/**"}


def test_most_of_a_tree_but_not_of_the_parent() -> None:
    # e/ read entirely (5 of the 13 files of /data): e/**, and nothing wider
    t = touched("/data/e/f/1", "/data/e/f/2", "/data/e/f/3", "/data/e/f/4", "/data/e/g.txt")
    assert globs(t) == {"/data/e/**"}
    # most of /data's files, and of each of its subdirectories: the whole repository
    every = [*t, "/data/a.txt", "/data/b.txt", "/data/d/1", "/data/d/2", "/data/d/3"]
    assert globs(touched(*every)) == {"/data/**"}
    # half of d/ only: /data's files are its *, d/ stays exact, e/ is a tree
    half = [*t, "/data/a.txt", "/data/b.txt", "/data/d/1", "/data/d/2"]
    assert globs(touched(*half)) == {"/data/*", "/data/d/1", "/data/d/2", "/data/e/**"}


def test_a_big_new_tree_does_not_make_its_parent_a_tree() -> None:
    # git init in a repository it only reads: .git/** for create, not /data/**
    git = Tree({"/data": frozenset({".git"}), "/data/.git": frozenset({"HEAD", "objects"}),
                "/data/.git/objects": frozenset(f"o{i}" for i in range(30))})
    new = ["/data/.git", "/data/.git/HEAD", "/data/.git/objects",
           *(f"/data/.git/objects/o{i}" for i in range(30))]
    made = touched(*new, op="create")
    assert globs(made, Op.CREATE, tree=TREE.merged(git)) == {"/data/.git/**"}


def test_small_directories_stay_exact() -> None:
    assert MIN_ENTRIES == 3
    tree = Tree({"/data": frozenset({"x", "y"})})
    assert globs(touched("/data/x", "/data/y"), tree=tree) == {"/data/x", "/data/y"}


def test_list_counts_directories_only() -> None:
    # listing d, e and e/f (3 of 3 directories): the tree's listing, not its files
    t = touched("/data/d", "/data/e", "/data/e/f", op="list")
    assert globs(t, Op.LIST) == {"/data/**"}
    assert globs(touched("/data/d", op="list"), Op.LIST) == {"/data/d"}


def test_read_counts_files_only() -> None:
    # three of /data's five entries are files: reading all three is "most" of them
    t = touched("/data/a.txt", "/data/b.txt", "/data/c.txt")
    assert globs(t) == {"/data/*"}


def test_created_and_removed_paths_count_as_entries() -> None:
    # out/ is gone after the run: its files are the entries the run touched
    t = touched("/data/out/1", "/data/out/2", "/data/out/3", op="create")
    assert globs(t, Op.CREATE) == {"/data/out/*"}


def test_unknown_tree_gives_exact_paths() -> None:
    t = touched("/data/d/1", "/data/d/2", "/data/d/3", "/data/d/4")
    assert globs(t, tree=Tree.unknown()) == set(t)


def test_forced_trees_get_double_star() -> None:
    assert globs(touched("/data/d/1"), trees=["/data/d"]) == {"/data/d/**"}


def test_the_mount_root_itself() -> None:
    assert globs(touched("/data", op="stat"), Op.STAT) == {"/data"}


@pytest.mark.parametrize(("path", "glob"), [
    ("/tmp/ccAb12Cd.s", "/tmp/????????.s"),  # gcc
    ("/data/.git/objects/ab/tmp_obj_q1W2e3", "/data/.git/objects/ab/tmp_obj_??????"),  # git
    ("/tmp/tmpk3j4_x9z", "/tmp/tmp????????"),  # python's tempfile
    ("/data/db.sqlite-journal", None),  # sqlite: the same name every run
    ("/data/.git/index.lock", None),
    ("/tmp/abcdef", None),  # one kind of character: a word, not a random run
    ("/home/u/Ab12Cd", None),  # all of it random: its glob would match any name there
])
def test_temporary_glob(path: str, glob: str | None) -> None:
    assert temporary_glob(path) == glob


def test_a_wholly_random_name_is_a_glob_only_in_a_directory_the_run_made() -> None:
    """git init's probe ``.git/tukBcnR``: ``.git`` is the run's own, nothing of the user's
    was there (even ``objects``, which the glob matches, is the run's); in ``$HOME``
    the same name stays exact."""
    assert temporary_glob("/data/.git/tukBcnR", fresh=True) == "/data/.git/???????"
    assert temporary_glob("/data/.git/tukBcnR", ["/data/.git/objects"], fresh=True) \
        == "/data/.git/???????"  # what the run made itself
    assert temporary_glob("/home/u/tukBcnR") is None


def test_in_a_directory_the_run_made_a_random_part_may_be_of_one_kind() -> None:
    """git's tmp_obj_XXXXXX came out all lower case (``gyrtes``) once in a CI run: in a
    directory the run made (``objects/c5``) it is a glob all the same."""
    assert temporary_glob("/data/.git/objects/c5/tmp_obj_gyrtes", fresh=True) \
        == "/data/.git/objects/c5/tmp_obj_??????"
    assert temporary_glob("/data/pub/tmp_obj_gyrtes") is None


def test_a_temporary_glob_never_matches_a_name_that_is_there() -> None:
    """The name is the guest's: ``.bAb12C`` would give ``.??????``, which matches
    ``.bashrc``; with ``.bashrc`` there it stays exact."""
    assert temporary_glob("/home/u/.bAb12C") == "/home/u/.??????"
    assert temporary_glob("/home/u/.bAb12C", ["/home/u/.bashrc", "/home/u/.bAb12C"]) is None
    assert temporary_glob("/tmp/ccAb12Cd.s", ["/tmp/ccZZZZZZ.o"]) == "/tmp/????????.s"
    assert temporary_glob("/tmp/ccAb12Cd.s", ["/tmp/ccZZZZZZ.s"]) is None


def test_host_temporaries_with_random_names_are_globs() -> None:
    w = {p: rec(p, "create") for p in ("/dev/null", "/tmp/ccA1b2C3.s", "/tmp/fixed.lock")}
    got = host_globs(w, {"/tmp/ccA1b2C3.s", "/tmp/fixed.lock"}, siblings=lambda _p: [])
    assert set(got) == {"/dev/null", "/tmp/????????.s", "/tmp/fixed.lock"}


def test_mount_temporaries_are_globs_when_gone_after_the_run() -> None:
    tmp = "/data/d/tmp_obj_Zx81Qa"
    records = [rec(tmp, "create", "/usr/bin/git"), rec(tmp, "write", "/usr/bin/git"),
               rec("/data/d/db-journal", "create", "/usr/bin/git")]
    text, policy = run_learn(records, after=TREE)
    assert '"/data/d/tmp_obj_??????"' in text and '"/data/d/db-journal"' in text
    git = policy.identify("/usr/bin/git", ["git"], lambda: "")
    assert policy.decide(git, Op.CREATE, "/data/d/tmp_obj_Other1").allowed
    assert not policy.decide(git, Op.CREATE, "/data/d/other").allowed
    kept = TREE.merged(Tree({"/data/d": frozenset({"tmp_obj_Zx81Qa"})}))
    assert '"/data/d/tmp_obj_??????"' not in run_learn(records, after=kept)[0]  # it stayed: exact


# -- records ---------------------------------------------------------------------------------


def test_read_accesses_takes_decision_records_only() -> None:
    line = json.dumps({"event": "policy/decision", "pid": 1, "exe": "/bin/cat", "app": "learn",
                       "syscall": "openat", "path": "/data/x", "op": "read",
                       "decision": "allow", "rule": "r", "errno": 0})
    got = read_accesses(["", '{"event": "other/thing"}', "not json", line])
    shown = [(a.path, a.op, a.allowed, a.borrowed) for a in got]
    assert shown == [("/data/x", "read", True, False)]


def test_learning_policy_allows_and_records_everything() -> None:
    p = Policy.from_text(learning_policy("/data"), env={})
    app = p.identify("/usr/bin/cat", ["cat"], lambda: "")
    assert app.name == "learn" and p.decide(app, Op.WRITE, "/data/x").allowed
    assert p.has_host_rules and p.decide_host(app, Op.WRITE, "/etc/x").allowed
    assert p.decide_mknod(app, "/dev/x").allowed
    # a borrowed identity stays unmatched (and allowed): the records tell it apart
    loaded = p.identify("/usr/bin/cat", ["cat"], lambda: "", borrowed=True)
    assert not loaded.matched and p.decide(loaded, Op.READ, "/data/x").allowed


# -- learn() ---------------------------------------------------------------------------------


def _allowed(policy: Policy, a: Access) -> bool:
    app = policy.identify(a.exe, [a.exe], lambda: "", borrowed=a.borrowed)
    if policy.is_on_mount(a.path):
        return policy.decide(app, Op(a.op), a.path).allowed
    return policy.decide_host(app, Op(a.op), a.path).allowed


def run_learn(records: list[Access], tree: Tree = TREE, **kw: object) -> tuple[str, Policy]:
    learned = learn(records, mount="/data", tree=tree, command="job", env={}, **kw)  # type: ignore[arg-type]
    return learned.text, Policy.from_text(learned.text, name="learned.toml", env={})


def test_one_app_per_executable_with_its_own_rules() -> None:
    records = [
        rec("/usr/bin/tar", "read", "/usr/bin/dash", syscall="execve", pid=1),
        rec("/data/a.txt", "read", "/usr/bin/tar", pid=2),
        rec("/data/d/1", "create", "/usr/bin/cp", pid=3),
        rec("/data/d/1", "write", "/usr/bin/cp", pid=3),
    ]
    text, policy = run_learn(records)
    assert [a.name for a in policy.apps] == ["dash", "tar", "cp"]  # one per executable seen
    assert not policy.apps[0].rules  # dash touched nothing on /data
    assert policy.default_action is Action.DENY
    for a in records[1:]:
        assert _allowed(policy, a), a
    tar = policy.identify("/usr/bin/tar", ["tar"], lambda: "")
    assert not policy.decide(tar, Op.WRITE, "/data/a.txt").allowed  # tar only read it
    assert not policy.decide(tar, Op.READ, "/data/b.txt").allowed  # and only a.txt
    cp = policy.identify("/usr/bin/cp", ["cp"], lambda: "")
    assert not policy.decide(cp, Op.READ, "/data/a.txt").allowed  # tar's rule, not cp's
    # comments say where each rule came from: the first access, and the exec
    assert "# /usr/bin/tar: first exec'd by pid 1 dash: execve read /usr/bin/tar" in text
    line = next(ln for ln in text.splitlines() if '"/data/a.txt"' in ln)
    assert line.endswith("# pid 2: read: first openat /data/a.txt")


def test_explain_names_the_learned_rule() -> None:
    a = rec("/data/d/2", "read", "/usr/bin/tar")
    text, policy = run_learn([rec("/data/d/1", "read", "/usr/bin/tar"), a,
                              rec("/data/d/3", "read", "/usr/bin/tar")])
    app = policy.identify(a.exe, [a.exe], lambda: "")
    decision = policy.explain(app, Op.READ, a.path)[0]
    line = int(decision.rule.rpartition(":")[2])
    assert decision.allowed and '"/data/d/*"' in text.splitlines()[line - 1]


def test_host_writes_and_network() -> None:
    records = [
        rec("/dev/null", "create", "/usr/bin/dash"),
        rec("/dev/null", "write", "/usr/bin/dash"),
        rec("/tmp/ccX1y2Z3.s", "create", "/usr/bin/cc1"),
        rec("/tmp/ccX1y2Z3.s", "delete", "/usr/bin/gcc", syscall="unlink"),
        rec("/etc/passwd", "read", "/usr/bin/dash"),
        rec("127.0.0.1:80", "connect", "/usr/bin/curl", syscall="connect"),
    ]
    text, policy = run_learn(records)
    for a in records[:5]:
        assert _allowed(policy, a), a
    app = policy.identify("/usr/bin/dash", ["sh"], lambda: "")
    assert not policy.decide_host(app, Op.WRITE, "/etc/passwd").allowed  # read, never written
    assert policy.decide_host(app, Op.WRITE, "/tmp/ccOther1.s").allowed  # a temporary's glob
    assert not policy.decide_host(app, Op.WRITE, "/tmp/ccOther.s").allowed  # not its length
    assert not policy.decide_host(app, Op.WRITE, "/tmp/other.c").allowed
    assert policy.network.value == "loopback"
    assert 'network = "loopback"  # pid 42 curl: connect connect 127.0.0.1:80' in text
    _, quiet = run_learn(records[:1])
    assert quiet.network.value == "deny"


def test_no_host_write_leaves_write_unlisted() -> None:
    text, policy = run_learn([rec("/data/a.txt", "read")])
    assert "write =" not in text and policy.has_host_rules and policy.network.value == "deny"


def test_borrowed_identity_goes_to_the_catch_all_app() -> None:
    a = rec("/data/a.txt", "read", "/usr/bin/cat", app="(unmatched)")
    text, policy = run_learn([a, rec("/data/b.txt", "read", "/usr/bin/cat")])
    assert [x.name for x in policy.apps] == ["cat", "any-program"]
    assert _allowed(policy, a) and "LD_PRELOAD" in text
    cat = policy.identify("/usr/bin/cat", ["cat"], lambda: "")
    assert not policy.decide(cat, Op.READ, "/data/a.txt").allowed  # only borrowed cat read it


def test_pin_sha256() -> None:
    digest = "ab" * 32
    text, policy = run_learn([rec("/data/a.txt", "read")], digest=lambda exe: digest)
    assert f'match.sha256 = "{digest}"' in text
    assert policy.identify("/usr/bin/cat", ["cat"], lambda: digest).name == "cat"
    assert policy.identify("/usr/bin/cat", ["cat"], lambda: "00" * 32).deny_all is not None


def test_file_rename_gives_the_source_what_the_destination_has() -> None:
    # git: index.lock (created, written) renamed over index (read, written)
    records = [
        rec("/data/.git/index", "read", "/usr/bin/git"),
        rec("/data/.git/index.lock", "create", "/usr/bin/git"),
        rec("/data/.git/index.lock", "rename", "/usr/bin/git", syscall="rename"),
        rec("/data/.git/index", "rename", "/usr/bin/git", syscall="rename"),
        rec("/data/.git/index.lock -> /data/.git/index", "rename", "/usr/bin/git",
            syscall="rename"),
    ]
    tree = Tree({"/data": frozenset({".git"}), "/data/.git": frozenset({"index"})})
    _, policy = run_learn(records, tree=tree)
    git = policy.identify("/usr/bin/git", ["git"], lambda: "")
    assert policy.decide_rename(git, "/data/.git/index.lock", "/data/.git/index", False).allowed


def test_directory_rename_makes_both_trees_uniform() -> None:
    records = [
        rec("/data/d/1", "read", "/usr/bin/mv"),
        rec("/data/d", "rename", "/usr/bin/mv", syscall="rename"),
        rec("/data/moved", "rename", "/usr/bin/mv", syscall="rename"),
        rec("/data/d -> /data/moved", "rename", "/usr/bin/mv", syscall="rename"),
    ]
    tree = TREE.merged(Tree({"/data": frozenset({"moved"}), "/data/moved": frozenset({"1"})}))
    text, policy = run_learn(records, tree=tree)
    mv = policy.identify("/usr/bin/mv", ["mv"], lambda: "")
    assert policy.decide_rename(mv, "/data/d", "/data/moved", True).allowed, text


def test_denied_during_learning_is_reported_not_learned() -> None:
    learned = learn([rec("192.0.2.1:80", "connect", syscall="connect", allowed=False)],
                    mount="/data", tree=TREE, command="job", env={})
    assert any("refused during learning" in w for w in learned.warnings)
    assert Policy.from_text(learned.text, env={}).network.value == "deny"


def test_paths_are_escaped() -> None:
    odd = ['/data/$HOME', '/data/q"uote', "/data/back\\slash", "/data/tab\tx"]
    records = [rec(p, "read") for p in odd]
    text, policy = run_learn(records, tree=Tree.unknown())
    for a in records:
        assert _allowed(policy, a), a


def test_a_name_holding_a_glob_character_is_reported_not_learned() -> None:
    """A file literally named ``**`` (or ``*``, ``a?b``): its rule would be a glob that
    matches what the run never touched (adversary round 4: /data/** then read
    /data/secret/key; a host write to hostw/** then overwrote any file below it)."""
    records = [rec("/data/**", "read"), rec("/data/x/*", "create"), rec("/data/a?b", "read"),
               rec("/data/a.txt", "read"), rec("/tmp/hostw/**", "create"),
               rec("/tmp/hostw/ok", "create"), rec("/data/f", "read", exe="/opt/b*n/tool")]
    learned = learn(records, mount="/data", tree=Tree.unknown(), command="job", env={})
    policy = Policy.from_text(learned.text, env={})
    assert _allowed(policy, rec("/data/a.txt", "read"))
    for other in (rec("/data/secret/key", "read"), rec("/data/x/y", "create"),
                  rec("/data/axb", "read"), rec("/tmp/hostw/victim", "create"),
                  rec("/data/f", "read", exe="/opt/bin/tool")):
        assert not _allowed(policy, other), other
    said = [w for w in learned.warnings if "policy globs have no escape" in w]
    assert said and any(w.startswith("/opt/b*n/tool: ") for w in said), learned.warnings


def test_a_name_that_is_not_utf8_is_reported_not_learned() -> None:
    raw = "/data/raw-\udcff"  # os.fsdecode of b"raw-\xff": no TOML text says it
    learned = learn([rec(raw, "read"), rec("/data/a.txt", "read")], mount="/data",
                    tree=Tree.unknown(), command="job", env={})
    policy = Policy.from_text(learned.text, env={})
    assert _allowed(policy, rec("/data/a.txt", "read"))
    assert [w for w in learned.warnings if "still denied" in w and "/data/raw-" in w]


BASE = """\
version = 1
name = "base"
default = "deny"

[[mount]]
path = "/data"

[[app]]
name = "tar"
match.exe = ["/usr/bin/tar"]
allow = [{ paths = ["/data/in/**"], ops = ["read"] }]
deny = [{ paths = ["/data/secret"], ops = ["read"] }]

[host]
write = ["/dev/null"]
network = "deny"
"""


def test_from_extends_an_existing_policy() -> None:
    records = [
        rec("/data/in/x", "read", "/usr/bin/tar"),  # allowed already: nothing new
        rec("/data/out/x", "create", "/usr/bin/tar"),
        rec("/data/secret", "read", "/usr/bin/tar"),  # the base denies it: stays denied
        rec("/data/a.txt", "read", "/usr/bin/cat"),
        rec("/tmp/keep", "write", "/usr/bin/cat"),
    ]
    learned = learn(records, mount="/data", tree=TREE, command="job", env={}, base=BASE,
                    base_name="base.toml")
    policy = Policy.from_text(learned.text, env={})
    assert [a.name for a in policy.apps] == ["tar", "cat"]
    for a in (records[0], records[1], records[3], records[4]):
        assert _allowed(policy, a), a
    assert not _allowed(policy, records[2])
    assert any("/data/secret" in w for w in learned.warnings)
    assert "/data/in/x" not in learned.text  # covered by the base's own rule
    assert '"/dev/null",' in learned.text and policy.network.value == "deny"
    assert "extending base.toml" in learned.text


def test_from_without_host_leaves_the_host_alone() -> None:
    base = BASE.split("[host]")[0]
    learned = learn([rec("/tmp/x", "write")], mount="/data", tree=TREE, command="job",
                    env={}, base=base)
    assert not Policy.from_text(learned.text, env={}).has_host_rules


def test_output_is_stable() -> None:
    records = [rec(f"/data/d/{i}", "read") for i in range(1, 4)]
    assert run_learn(records)[0] == run_learn(records)[0]
