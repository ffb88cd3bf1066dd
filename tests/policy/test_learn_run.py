"""``synthfs learn`` on real programs: learn, then enforce, then one access too many.

For each program of the conformance suite (tar, git, sqlite3, make+gcc,
python, coreutils), on the conformance suite's starting tree:

1. ``synthfs learn --data REPO -o learned.toml -- CMD``;
2. ``synthfs policy check learned.toml`` accepts it;
3. on a fresh copy of the tree, ``synthfs run --policy learned.toml
   --audit-all`` of the same CMD succeeds with the same status, stdout,
   stderr and resulting tree as the learning run, nothing is denied, and
   ``synthfs policy explain`` names, for accesses of each app, the learned rule
   the supervisor audited;
4. on a fresh copy, CMD followed by one access of the same program that the
   run never made (a read of a file it never read, or a write in a directory
   it only read) fails with EACCES, and the audit log has that denial.

Real server, agent and guests throughout (``--data``); no mocks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from conformance_cases import CASES, PY, build_standard, env_for

BY_NAME = {c.name: c for c in CASES}

MAKEFILE = """\
CC = cc
build/prog: build/main.o build/util.o
\t$(CC) -o $@ build/main.o build/util.o
build/%.o: src/%.c src/util.h
\tmkdir -p build
\t$(CC) -c -o $@ $<
"""


def build_project(root: Path) -> None:
    """The standard tree plus ``proj/``: a Makefile, src/ (read only), build/ (made)."""
    build_standard(root)
    (root / "proj" / "src").mkdir(parents=True)
    (root / "proj" / "Makefile").write_text(MAKEFILE)
    (root / "proj" / "README").write_text("a tiny C project\n")
    src = root / "proj" / "src"
    (src / "util.h").write_text("int twice(int);\n")
    (src / "util.c").write_text('#include "util.h"\nint twice(int x) { return 2 * x; }\n')
    (src / "main.c").write_text('#include <stdio.h>\n#include "util.h"\n'
                                'int main(void) { printf("%d\\n", twice(21)); return 0; }\n')


PY_SCRIPT = """
import json, os
rows = [line.split(':')[0] for line in open('/data/lines.txt')]
os.makedirs('/data/out', exist_ok=True)
with open('/data/out/rows.json', 'w') as f:
    json.dump(rows[:3], f)
print(sorted(os.listdir('/data/out')), open('/data/a.txt').read().split())
"""


@dataclass(frozen=True)
class LearnCase:
    name: str
    script: str  # a shell script run as `sh -c SCRIPT`
    extra: str  # one more access by one of the programs the script runs
    denied: str  # the path that extra access names (audited as a denial)
    tree: Callable[[Path], None] = build_standard
    said: str = "Permission denied"  # how the program reports the EACCES
    ignore: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


def _script(name: str) -> str:
    argv = BY_NAME[name].render(helpers.MOUNT)
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3
    return argv[2]


LEARN_CASES = [
    LearnCase(
        "coreutils",
        "cp /data/a.txt /data/d/copy && wc -l /data/lines.txt && ls /data/d && "
        "sort -r /data/lines.txt > /data/sorted && head -n 2 /data/sorted",
        extra="cat /data/private.txt",  # cat: never read it (head read sorted)
        denied="/data/private.txt",
    ),
    LearnCase(
        "tar", _script("tar_extract"),
        extra="tar -tf /data/lines.txt",  # tar read in.tar only
        denied="/data/lines.txt",
    ),
    LearnCase(
        "git", _script("git"),
        extra="git archive -o /data/d/x.tar HEAD",  # git read d/, never wrote there
        denied="/data/d/x.tar",
        ignore=BY_NAME["git"].ignore, needs=("git",),
    ),
    LearnCase(
        "sqlite3", _script("sqlite3"),
        extra="sqlite3 /data/d/other.db 'create table u(a)'",  # a database it never made
        denied="/data/d/other.db", said="unable to open database",
        needs=("sqlite3",),
    ),
    LearnCase(
        "make_gcc", "make -s -C /data/proj && /data/proj/build/prog",
        extra="cc -c -o /data/proj/src/extra.o /data/proj/src/main.c",  # src/ was only read
        denied="/data/proj/src/extra.o",
        tree=build_project, needs=("make", "cc"),
    ),
    LearnCase(
        "python", f"{PY} -I -c \"{PY_SCRIPT}\"",
        extra=f"{PY} -I -c \"print(open('/data/private.txt').read())\"",
        denied="/data/private.txt",
    ),
]


def synthfs_cmd(*argv: str, cwd: Path, env: dict[str, str]) -> helpers.Outcome:
    return helpers.run_native([*helpers.synthfs_command(), *argv], cwd=cwd, env=env)


def fresh(case: LearnCase, repo: Path) -> Path:
    shutil.rmtree(repo, ignore_errors=True)
    case.tree(repo)
    return repo


def tree_of(case: LearnCase, repo: Path) -> dict[str, helpers.Entry]:
    tree = helpers.snapshot(repo)
    for rel in case.ignore:
        if rel in tree:
            tree[rel] = helpers.Entry(tree[rel].kind, mode=tree[rel].mode)
    return tree


def records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.ptrace
@pytest.mark.parametrize("case", LEARN_CASES, ids=[c.name for c in LEARN_CASES])
def test_learn_then_enforce(
    case: LearnCase, tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    missing = [t for t in case.needs if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    work = tmp_path / "work"
    (tmp_path / "home").mkdir()
    work.mkdir()
    env = env_for(tmp_path / "home")
    repo = tmp_path / "repo"
    policy = tmp_path / "learned.toml"

    # 1. learn
    fresh(case, repo)
    learned = synthfs_cmd("learn", "--data", str(repo), "-o", str(policy), "--",
                          "sh", "-c", case.script, cwd=work, env=env)
    assert learned.status == 0, learned.show()
    assert policy.exists(), learned.show()
    text = policy.read_text()
    learned_tree = tree_of(case, repo)
    said = [ln for ln in learned.stderr.splitlines() if ln.startswith("synthfs learn:")]
    assert said and said[-1].startswith(f"synthfs learn: wrote {policy}"), learned.show()
    assert not [ln for ln in said if "still denied" in ln], learned.show()
    guest_stderr = "".join(ln + "\n" for ln in learned.stderr.splitlines()
                           if not ln.startswith("synthfs learn:"))

    # 2. policy check
    check = synthfs_cmd("policy", "check", str(policy), cwd=work, env=env)
    assert check.status == 0 and ": ok (" in check.stdout, check.show() + text

    # 3. enforce: the same run, the same results, nothing denied
    audit = tmp_path / "enforce.jsonl"
    fresh(case, repo)
    run = synthfs_cmd("run", "--data", str(repo), "--policy", str(policy), "--audit", str(audit),
                      "--audit-all", "--", "sh", "-c", case.script, cwd=work, env=env)
    assert (run.status, run.stdout, run.stderr) == (0, learned.stdout, guest_stderr), (
        run.show() + "\n" + text)
    assert tree_of(case, repo) == learned_tree
    decisions = records(audit)
    denied = [r for r in decisions if r["decision"] != "allow"]
    assert not denied, (denied[:5], text)
    # explain names the rule the supervisor used, for the first access of each app
    lines = text.splitlines()
    firsts: dict[object, dict[str, object]] = {}
    for r in decisions:
        if str(r["path"]).startswith("/data") and " -> " not in str(r["path"]):
            firsts.setdefault(r["app"], r)
            rule = str(r["rule"])
            assert rule.startswith("learned.toml:"), r
            assert "paths = " in lines[int(rule.rpartition(":")[2]) - 1], (r, text)
    assert firsts, decisions[:5]
    for r in firsts.values():
        shown = synthfs_cmd("policy", "explain", str(policy), "--exe", str(r["exe"]),
                            "--op", str(r["op"]), "--path", str(r["path"]), cwd=work, env=env)
        assert shown.status == 0, shown.show()
        assert f"decision: ALLOW by {r['rule']}:" in shown.stdout, shown.show()

    # 4. one access more: EACCES, audited
    audit = tmp_path / "extra.jsonl"
    fresh(case, repo)
    extra = synthfs_cmd("run", "--data", str(repo), "--policy", str(policy), "--audit", str(audit),
                        "--", "sh", "-c", f"{case.script}; {case.extra}", cwd=work, env=env)
    assert extra.status != 0, extra.show()
    assert extra.stdout == learned.stdout, extra.show()
    assert case.said in extra.stderr, extra.show()
    hits = [r for r in records(audit) if r["path"] == case.denied]
    assert hits and all(r["decision"] == "deny" and r["errname"] == "EACCES" for r in hits), (
        records(audit), text)


# -- the other ways in and out ------------------------------------------------------------


def _one_line(r: helpers.Outcome, status: int, *needles: str) -> None:
    assert "Traceback" not in r.stderr, r.show()
    assert r.status == status and len(r.stderr.splitlines()) == 1, r.show()
    assert all(n in r.stderr for n in needles), r.show()


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 2\n")
    env = {"PATH": "/usr/bin:/bin"}

    def learn(*argv: str) -> helpers.Outcome:
        return synthfs_cmd("learn", *argv, cwd=tmp_path, env=env)

    _one_line(learn("--bogus", "-o", "p.toml", "--", "true"), 2, "--bogus", "synthfs learn -h")
    _one_line(learn("--data", str(repo), "--agent", "ipc:///x", "-o", "p.toml", "--", "true"),
              2, "--agent", "--data")
    _one_line(learn("--data", str(repo), "--", "true"), 2, "-o FILE")
    _one_line(learn("--data", str(repo), "-o", "p.toml"), 2, "no command")
    _one_line(learn("-o", "p.toml", "--", "true"), 2, "--data DIR", "--agent")
    _one_line(learn("--data", str(tmp_path / "nope"), "-o", "p.toml", "--", "true"), 2,
              "not a directory")
    _one_line(learn("--data", str(repo), "-o", "/etc/hostname/p.toml", "--", "true"), 2,
              "-o /etc/hostname/p.toml", "cannot write there")
    _one_line(learn("--data", str(repo), "-o", str(tmp_path), "--", "true"), 2, "is a directory")
    _one_line(learn("--data", str(repo), "--from", str(bad), "-o", "p.toml", "--", "true"), 2,
              "--from", "bad.toml:1", "version")
    assert not (tmp_path / "p.toml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".synthfs")] == []


@pytest.mark.ptrace
def test_a_failing_command_still_gets_its_policy(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    """What it did until it failed is what the same run needs: written, with a note, and
    learn exits with the command's status. A command that never ran writes nothing."""
    repo = tmp_path / "repo"
    build_standard(repo)
    policy = tmp_path / "p.toml"
    env = env_for(tmp_path)
    script = "cat /data/a.txt && exit 3"
    r = synthfs_cmd("learn", "--data", str(repo), "--pin-sha256", "-o", str(policy), "--",
                    "sh", "-c", script, cwd=tmp_path, env=env)
    assert r.status == 3 and r.stdout == "hello\nworld\n", r.show()
    assert "exited with status 3" in r.stderr and policy.exists(), r.show()
    cat = Path(shutil.which("cat") or "/usr/bin/cat").resolve()
    pin = hashlib.sha256(cat.read_bytes()).hexdigest()
    assert f'match.sha256 = "{pin}"' in policy.read_text()  # --pin-sha256
    again = synthfs_cmd("run", "--data", str(repo), "--policy", str(policy), "--", "sh", "-c",
                        script, cwd=tmp_path, env=env)
    assert (again.status, again.stdout, again.stderr) == (3, r.stdout, ""), again.show()
    gone = tmp_path / "gone.toml"
    r = synthfs_cmd("learn", "--data", str(repo), "-o", str(gone), "--", "/nonexistent/cmd",
                    cwd=tmp_path, env=env)
    assert r.status == 127 and "did not run" in r.stderr and not gone.exists(), r.show()


@pytest.mark.ptrace
def test_from_extends_and_agent_lists_the_tree(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    """--agent: the tree comes from the agent (d/* is collapsed: most of d/ was read);
    --from: the base's rules stay, the new program gets its own app."""
    repo = tmp_path / "repo"
    build_standard(repo)
    base = tmp_path / "base.toml"
    base.write_text(
        'version = 1\nname = "base"\ndefault = "deny"\n[[mount]]\npath = "/data"\n'
        '[[app]]\nname = "cat"\nmatch.exe = ["/usr/bin/cat"]\n'
        'allow = [{ paths = ["/data/a.txt"], ops = ["read", "stat"] }]\n'
    )
    policy = tmp_path / "p.toml"
    env = env_for(tmp_path)
    script = "cat /data/a.txt && head -qn1 /data/d/b.txt /data/d/sub/c.txt && ls /data/d"
    with helpers.SynthfsLauncher(mode="agent").stack(repo) as stack:
        endpoint = str(stack.agent_endpoint)  # type: ignore[attr-defined]
        r = synthfs_cmd("learn", "--agent", endpoint, "--from", str(base), "-o", str(policy),
                        "--", "sh", "-c", script, cwd=tmp_path, env=env)
        assert r.status == 0, r.show()
        text = policy.read_text()
        assert 'allow = [{ paths = ["/data/a.txt"]' not in text  # re-written, kept
        assert '{ paths = ["/data/a.txt"], ops = ["read", "stat"] },' in text, text
        assert 'name = "head"' in text and 'name = "ls"' in text, text
        assert '"/data/d/*"' in text, text  # ls stat'ed most of d/: the agent's listing
        again = synthfs_cmd("run", "--agent", endpoint, "--policy", str(policy), "--", "sh",
                            "-c", script, cwd=tmp_path, env=env)
    assert (again.status, again.stdout) == (0, r.stdout), again.show() + text


@pytest.mark.ptrace
def test_a_borrowed_identity_is_learned_into_the_catch_all(
    tmp_path: Path, synthfs: helpers.SynthfsLauncher
) -> None:
    """cat run with a loader variable is no app naming /usr/bin/cat: its read goes to
    the last app, every program's (so plain cat has it too), and the same run is
    allowed; what the run did not read stays denied."""
    repo = tmp_path / "repo"
    build_standard(repo)
    policy = tmp_path / "p.toml"
    env = env_for(tmp_path)
    script = "LD_LIBRARY_PATH=/nonexistent cat /data/a.txt"
    r = synthfs_cmd("learn", "--data", str(repo), "-o", str(policy), "--", "sh", "-c", script,
                    cwd=tmp_path, env=env)
    assert r.status == 0, r.show()
    text = policy.read_text()
    assert 'name = "any-program"\nmatch.exe = ["/**"]' in text, text
    again = synthfs_cmd("run", "--data", str(repo), "--policy", str(policy), "--", "sh", "-c",
                        script, cwd=tmp_path, env=env)
    assert (again.status, again.stdout) == (0, "hello\nworld\n"), again.show() + text
    plain = synthfs_cmd("run", "--data", str(repo), "--policy", str(policy), "-q", "--",
                        "sh", "-c", "cat /data/a.txt /data/lines.txt", cwd=tmp_path, env=env)
    assert plain.status == 1 and plain.stdout == "hello\nworld\n", plain.show() + text
    assert plain.stderr == "cat: /data/lines.txt: Permission denied\n", plain.show()
