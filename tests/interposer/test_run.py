"""``synthfs run`` end to end: a real server, a real agent, real guests under ptrace."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers
import pytest

from synthfs.agent.embedded import embedded

pytestmark = pytest.mark.ptrace

SYNTHFS = helpers.synthfs_command()


def run(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNTHFS, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "d").mkdir(parents=True)
    (root / "x.txt").write_text("the x file\n")
    (root / "secret.txt").write_text("top secret\n")
    (root / "d" / "y.txt").write_text("why\n")
    return root


def test_reads_writes_and_exit_status(repo: Path) -> None:
    r = run(
        "run",
        "--data",
        str(repo),
        "--",
        "sh",
        "-c",
        "cat /data/x.txt; echo made > /data/d/new.txt; cd /data/d && pwd; exit 3",
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout == "the x file\n/data/d\n"
    assert (repo / "d" / "new.txt").read_text() == "made\n"


def test_the_guest_environment_and_cwd_are_untouched(repo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SYNTHFS_PROBE": "kept"}
    r = run(
        "run",
        "--data",
        str(repo),
        "--",
        "sh",
        "-c",
        'echo "$SYNTHFS_PROBE $(pwd)"',
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"kept {tmp_path}\n"


def test_death_by_signal_is_128_plus_n(repo: Path) -> None:
    r = run("run", "--data", str(repo), "--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 128 + 9


def test_clear_errors(repo: Path, tmp_path: Path) -> None:
    r = run("run", "--data", str(repo), "--", "no-such-command-xyz")
    assert r.returncode == 127 and "no-such-command-xyz: command not found" in r.stderr
    r = run("run", "--data", str(tmp_path / "missing"), "--", "true")
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = run("run", "--agent", f"ipc://{tmp_path}/nobody.sock", "--", "true", timeout=60)
    assert r.returncode == 125 and "cannot reach the agent" in r.stderr
    r = run("run", "--data", str(repo))
    assert r.returncode == 2 and "no command" in r.stderr
    r = run("run", "--bogus-flag", "--", "true")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    # The data directory's host path is a trusted path: a guest started inside it could
    # not use its own cwd, so the run is refused up front, in one line.
    r = run("run", "--data", str(repo), "--", "true", cwd=repo / "d")
    assert r.returncode == 2 and "inside --data" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("run", "--agent", f"ipc://{tmp_path}/a.sock", "--state", str(tmp_path), "--", "true")
    assert r.returncode == 2 and "goes with --data" in r.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/setup installs it)")
def test_a_traced_synthfs_says_so(repo: Path) -> None:
    """Under another tracer (strace -f) the guest cannot be traced: a clear error, no traceback."""
    r = subprocess.run(
        ["strace", "-f", "-o", "/dev/null", *SYNTHFS, "run", "--data", str(repo), "--", "true"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 125, r.stderr
    assert "PTRACE_SEIZE was refused" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_read_only(repo: Path) -> None:
    r = run(
        "run",
        "--read-only",
        "--data",
        str(repo),
        "--",
        "sh",
        "-c",
        "cat /data/x.txt && echo no > /data/x.txt",
    )
    assert r.returncode != 0
    assert r.stdout == "the x file\n"
    assert "Read-only file system" in r.stderr
    assert (repo / "x.txt").read_text() == "the x file\n"


POLICY = textwrap.dedent("""\
    version = 1
    name = "two-apps"
    description = "cat may read /data; head gets nothing"
    default = "deny"

    [[mount]]
    path = "/data"

    [[app]]
    name = "reader"
    match.exe = ["/usr/bin/cat"]
    allow = [{ paths = ["/data/**"], ops = ["read", "stat"] }]

    [[app]]
    name = "nosy"
    match.exe = ["/usr/bin/head"]
    deny = [{ paths = ["/data/**"], ops = ["*"] }]
    """)


def test_per_app_policy_denial_never_reaches_the_agent(repo: Path, tmp_path: Path) -> None:
    policy = tmp_path / "two-apps.toml"
    policy.write_text(POLICY)
    audit = tmp_path / "audit.jsonl"
    with embedded(repo, cache_dir=tmp_path / "cache", verbose=2) as stack:
        r = run(
            "run",
            "--agent",
            stack.agent_endpoint,
            "--policy",
            str(policy),
            "--audit",
            str(audit),
            "--",
            "sh",
            "-c",
            "cat /data/x.txt; head -n1 /data/secret.txt; echo head=$?",
        )
        agent_log = Path(stack.workdir, "agent.log").read_text(errors="replace")
    assert r.stdout == "the x file\nhead=1\n", r.stderr
    assert "'/data/secret.txt' for reading: Permission denied" in r.stderr
    # The allowed read went through the agent; the denied one never left the supervisor.
    assert "/x.txt" in agent_log
    assert "secret" not in agent_log
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    denied = [rec for rec in records if rec["decision"] == "deny"]
    assert denied and all(rec["path"] == "/data/secret.txt" for rec in denied)
    assert denied[0]["app"] == "nosy" and denied[0]["errno"] == errno.EACCES
    assert denied[0]["errname"] == "EACCES" and denied[0]["rule"].startswith("two-apps.toml:")
    assert denied[0]["latency_us"] >= 0 and denied[0]["time"].endswith("Z")


def test_threads_and_forks_write_through(repo: Path) -> None:
    script = textwrap.dedent("""\
        import os, threading
        def w(i):
            with open(f"/data/t{i}.txt", "w") as f:
                f.write(str(i) * 1000)
        ts = [threading.Thread(target=w, args=(i,)) for i in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        pids = []
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                with open(f"/data/f{i}.txt", "w") as f:
                    f.write(f"child {i}")
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        print(sorted(os.listdir("/data")))
        """)
    r = run("run", "--data", str(repo), "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    for i in range(4):
        assert (repo / f"t{i}.txt").read_text() == str(i) * 1000
    for i in range(3):
        assert (repo / f"f{i}.txt").read_text() == f"child {i}"
    assert "'t3.txt'" in r.stdout and "'f2.txt'" in r.stdout


def test_no_guest_survives_the_run(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    r = run("run", "--data", str(repo), "--", "sh", "-c", f"sleep 300 & echo $! > {marker}; exit 0")
    assert r.returncode == 0, r.stderr
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            import time

            time.sleep(0.1)


def test_dev_std_links_and_host_symlinks_into_the_mount(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "l").symlink_to("/data/x.txt")
    (tmp_path / "dl").symlink_to("/data/d")
    (tmp_path / "self").symlink_to("/proc/self/fd/1")
    r = run(
        "run",
        "--data",
        str(repo),
        "--",
        "sh",
        "-c",
        f"echo out > /dev/stdout; echo err > /dev/stderr; echo in | cat /dev/stdin; "
        f"cat {tmp_path}/l {tmp_path}/dl/y.txt; echo x > {tmp_path}/self; echo rc=$?",
    )
    assert r.stdout == "out\nin\nthe x file\nwhy\nrc=2\n", r.stderr
    assert r.stderr.startswith("err\n")
    # Through a symlink of its own, /proc/self/fd/1 leads to a pipe: refused.
    assert "Permission denied" in r.stderr


def test_a_host_symlink_to_proc_self_means_the_guest(repo: Path, tmp_path: Path) -> None:
    """/tmp/l -> /proc/self/fd/1 is the guest's stdout, not the supervisor's."""
    (tmp_path / "self").symlink_to("/proc/self/fd/1")
    (tmp_path / "status").symlink_to("/proc/self/status")
    out = tmp_path / "out.txt"
    script = f"exec 1>{out}; echo via-link > {tmp_path}/self; grep '^PPid:' {tmp_path}/status >&2"
    r = run("run", "--data", str(repo), "--", "sh", "-c", script + "; echo $$ >&2")
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "via-link\n"
    assert r.stdout == ""
    ppid, sh = r.stderr.split()[-2:]
    assert ppid == sh  # grep's parent is the guest's sh (the supervisor's would be pytest)


def test_start_up_imports_stay_light() -> None:
    """What start-up time rests on (benchmarks/RESULTS.md): importing ``synthfs run``
    loads neither attrs nor the protocol (``--agent`` loads them when it needs them,
    ``--data`` to fork its pair from: agent.embedded.PRELOAD); no synthfs process
    imports asyncio (pyzmq's zmq.utils.monitor does); the launcher takes a kept filter
    without pyseccomp (its import runs ldconfig twice), and the agent and the server do
    not load http.client (the agent's direct fetches from S3 do, when they happen)."""
    probe = (
        "import sys, synthfs.cli, synthfs.interposer.run, synthfs.agent.embedded\n"
        "early = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('attr', 'attrs', 'msgpack', 'zmq', 'sqlite3') or m.startswith('synthfs.protocol') "
        "or m == 'synthfs.agent.cache')\n"
        "import synthfs.interposer.runenv, synthfs.interposer.supervisor, "
        "synthfs.interposer.filter, synthfs.agent.main, synthfs.server.main, "
        "synthfs.server.service, synthfs.server.auth, synthfs.server.backends.local\n"
        "late = sorted(m for m in sys.modules if m in ('pyseccomp', 'http.client'))\n"
        "print(early, late, 'asyncio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out == "[] [] False\n"


def _requests(repo: Path, tmp_path: Path, script: str) -> int:
    """Agent requests of one run of ``sh -c script`` (``--stats``), after checking it worked."""
    stats = tmp_path / "stats.json"
    r = run("run", "--data", str(repo), "--stats", str(stats), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return int(json.loads(stats.read_text())["agent_requests"])


@pytest.mark.parametrize(
    ("child", "most"),
    [("/bin/true", 0), ("cat /data/d/w.txt > /dev/null", 1)],
    ids=["exit", "read-and-exit"],
)
def test_children_of_a_writer_cost_no_commit_or_sync(
    repo: Path, tmp_path: Path, child: str, most: int
) -> None:
    """A process that wrote passes that on to its children: their exits and their
    closes of read-only fds must not each cost a Sync/Commit round trip (at most
    ``most`` requests per extra child: a cat's Open); the write still lands."""

    def script(n: int) -> str:
        # The redirect's fd is dup2'ed to stdout and closed before echo writes:
        # the data reaches the server at the first exit's sync, not at a close.
        return f"echo w > /data/d/w.txt; for i in $(seq {n}); do {child}; done"

    few, many = _requests(repo, tmp_path, script(2)), _requests(repo, tmp_path, script(6))
    assert (repo / "d" / "w.txt").read_text() == "w\n"
    assert many - few <= 4 * most, (few, many)


def test_listing_hard_links_costs_requests_linear_in_their_number(
    repo: Path, tmp_path: Path
) -> None:
    """``ls -li`` of a directory of N hard links of one file: the listing says they
    are one object, so no name is asked about each other one (interposer/inodes.py).
    About three requests a name (its statx and two xattr calls), not one a pair:
    N = 100 cost some 5,000 requests (N = 300: 130 s) before."""
    n = 100
    (repo / "e").mkdir()
    (repo / "e" / "f0").write_text("x\n")
    for i in range(1, n):
        os.link(repo / "e" / "f0", repo / "e" / f"l{i}")
    stats = tmp_path / "stats.json"
    script = "ls -li /data/e | awk '{print $1}' | sort -u | wc -l"
    r = run("run", "--data", str(repo), "--stats", str(stats), "--", "sh", "-c", script,
            timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2"], r.stdout  # "total" and the one number of all N
    assert int(json.loads(stats.read_text())["agent_requests"]) <= 3 * n + 30


def test_a_fresh_listing_answers_for_missing_names(repo: Path, tmp_path: Path) -> None:
    """After ``ls``, looking up names the listing lacks costs no agent request; a name
    this sandbox creates afterwards is seen at once."""
    probes = "; ".join(f"test -e /data/d/nope{i} && exit 9" for i in range(5))
    listed = _requests(repo, tmp_path, "ls /data/d > /dev/null")
    probed = _requests(repo, tmp_path, f"ls /data/d > /dev/null; {probes}; true")
    assert probed == listed, (listed, probed)
    script = "ls /data/d >/dev/null; test -e /data/d/n && exit 9; echo n >/data/d/n; cat /data/d/n"
    r = run("run", "--data", str(repo), "--", "sh", "-c", script)
    assert (r.returncode, r.stdout) == (0, "n\n"), r.stderr


def test_a_host_file_unlinked_is_gone_at_once(repo: Path, tmp_path: Path) -> None:
    """unlink, then lstat and stat of the same path: ENOENT, as natively (the supervisor
    once answered the lstat from the fd its check of the unlink had opened)."""
    host = tmp_path / "host"
    host.mkdir()
    code = (
        "import os, sys\n"
        "for p, look in ((sys.argv[1], os.lstat), (sys.argv[2], os.stat)):\n"
        "    open(p, 'w').close(); os.unlink(p)\n"
        "    try:\n"
        "        look(p)\n"
        "    except FileNotFoundError:\n"
        "        print('gone')\n"
        "    else:\n"
        "        print('still there')\n"
    )
    argv = ["--", sys.executable, "-c", code, str(host / "x"), str(host / "y")]
    native = subprocess.run(argv[1:], capture_output=True, text=True, check=False)
    assert native.stdout == "gone\ngone\n", native.stderr
    r = run("run", "--data", str(repo), *argv)
    assert (r.returncode, r.stdout) == (0, "gone\ngone\n"), r.stderr


def test_the_kept_filter_is_no_guests(repo: Path, tmp_path: Path) -> None:
    """The seccomp filter kept from one run to the next (interposer.filter.cached_filter)
    is refused to every guest, by its directory's name: a guest that could rewrite it
    would choose the next run's filter, also one made in another environment (another
    $XDG_RUNTIME_DIR, the /tmp fallback of cron or CI: review round 16, finding 9)."""
    (tmp_path / "rt1").mkdir(mode=0o700)
    (tmp_path / "rt2").mkdir(mode=0o700)
    kept_dir = tmp_path / "rt1" / "synthfs-filters" / "kept"
    first = run("run", "--data", str(repo), "--", "true",
                env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "rt1")})
    assert first.returncode == 0, first.stderr
    (entry,) = kept_dir.iterdir()
    kept = entry.read_bytes()
    script = (f"echo > {entry}; rm -f {entry}; echo > {kept_dir}/x.bpf; "
              f"mv {kept_dir} {kept_dir}2; cat {entry} > /dev/null")
    for rt in ("rt1", "rt2"):  # this environment's, and another's
        p = run("run", "--data", str(repo), "--", "sh", "-c", script,
                env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / rt)})
        assert p.returncode != 0
        assert p.stderr.count("Permission denied") >= 4, p.stderr
        assert [*kept_dir.iterdir()] == [entry] and entry.read_bytes() == kept
