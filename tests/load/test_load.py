"""Load: 8 guests across agents and servers; nothing lost, torn or wrong, nothing hangs.

Real servers over one repository (each publishing invalidations, each with
its own state directory), real agents (each with its own cache, given every
server and subscribed to each), and guests spread over the agents, each a
``synthfs run --agent ENDPOINT -- python3 guest.py`` doing N mixed
operations (create, overwrite, append, read back with a checksum, rename,
delete, list) in its own directory, reads of shared files, and exchanges
of self-checking files with the other guests (written under a temporary
name and renamed into place; read by guests of both agents): see
:mod:`guest`. All eight run at once. Then, from the server's directory
itself: every guest's directory holds exactly the files its model says,
with exactly the bytes (no lost, torn, wrong or extra file), every
published file holds the last version its guest renamed into place, no
upload is left staged, and all three trusted processes are still up.
Every wait is bounded (a guest past the budget is a deadlock and fails).

Variants: two threads per guest; a hostile client fuzzing the server
(:mod:`fuzzframes`, no token) during the whole run, which must neither
disturb the guests nor go unanswered; and scale-out: 2 servers x 4 agents x
8 guests (2 per agent), once as is and once with one server killed
(SIGKILL) while the guests run: the guests must see no error, only a delay,
and nothing may be lost.

The repository is a parameter of the stack (:class:`LocalRepo`: one directory
the servers share, each with its own ``--state``): another backend (an S3
bucket) gives the servers' arguments and reads the final tree the same way.

CI: ``SYNTHFS_LOAD_OPS`` operations per guest (100); slow: 1,000.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from agent_stack import SERVER_CMD, Proc
from fuzzframes import SEED, BlastResult, FrameFuzzer, blast, server_seeds
from helpers import synthfs_command

from synthfs.agent.upstream import Upstream
from synthfs.protocol.messages import Message, Stat, StatReply

GUEST = Path(__file__).resolve().with_name("guest.py")
AGENTS = 2
GUESTS_PER_AGENT = 4


class LocalRepo:
    """The repository as a local directory that every server serves (``--root``)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        self.root.mkdir()

    def server_args(self, i: int) -> list[str]:
        return ["--root", str(self.root), "--state", str(self.state(i))]

    def state(self, i: int) -> Path:
        return self.tmp / ("state" if i == 0 else f"state{i}")

    def mkdir(self, rel: str) -> None:
        (self.root / rel).mkdir()

    def put(self, rel: str, data: bytes) -> None:
        (self.root / rel).write_bytes(data)

    def sums(self, rel: str) -> dict[str, str]:
        """sha256 of every file directly in ``rel`` (the repository's truth, not a guest's)."""
        return _tree_sums(self.root / rel)

    def staged(self, i: int) -> list[str]:
        """Uploads server ``i`` left staged."""
        staging = self.state(i)
        return sorted(set(os.listdir(staging)) - {"committed.journal"}) \
            if staging.exists() else []


class S3Repo:
    """The repository as a fresh bucket of a SeaweedFS store (``seaweed`` fixture) that
    every server serves (``--s3 URL --bucket B``, each with its own ``--state``); the
    credentials reach the servers through the environment (``s3_env``). Read back with
    a plain boto3 client, not through synthfs: the bucket's truth."""

    def __init__(self, tmp: Path, store: Any) -> None:
        from synthfs.server.backends.s3 import DIR_OBJECT, S3Backend

        self.tmp = tmp
        self.store = store
        self.bucket = store.new_bucket("load")
        self.client = store.client()
        self._dir_object = DIR_OBJECT
        self._be = S3Backend(store.endpoint, self.bucket, state=tmp / "seed-state")

    def server_args(self, i: int) -> list[str]:
        return ["--s3", self.store.endpoint, "--bucket", self.bucket,
                "--state", str(self.state(i))]

    def state(self, i: int) -> Path:
        return self.tmp / ("state" if i == 0 else f"state{i}")

    def mkdir(self, rel: str) -> None:
        self._be.mkdir("/" + rel)

    def put(self, rel: str, data: bytes) -> None:
        self._be.write_bytes("/" + rel, data)

    def sums(self, rel: str) -> dict[str, str]:
        """sha256 of every object directly under ``rel/`` (no marker, no subdirectory)."""
        prefix = rel.strip("/") + "/"
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if name and name != self._dir_object:
                    body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                    out[name] = hashlib.sha256(body.read()).hexdigest()
        return out

    def staged(self, i: int) -> list[str]:
        """Uploads server ``i`` left staged, and a rename it left journalled."""
        uploads = self.state(i) / "s3-uploads"
        left = sorted(os.listdir(uploads)) if uploads.exists() else []
        journal = self.state(i) / "rename.journal"
        pending: dict[str, str] = {}
        for line in journal.read_text().splitlines() if journal.exists() else []:
            rec = json.loads(line)
            if "rename" in rec:
                pending[rec["rename"]] = line
            else:
                pending.pop(rec.get("done"), None)
        return left + [f"unfinished rename {line}" for line in pending.values()]

    def close(self) -> None:
        self._be.close()


Repo = LocalRepo | S3Repo
CI_OPS = int(os.environ.get("SYNTHFS_LOAD_OPS", "100"))
FULL_OPS = 1000


class Fleet:
    """Servers over one repository, agents given all of them: real processes on
    private ipc:// sockets."""

    def __init__(self, tmp: Path, servers: int = 1, agents: int = AGENTS,
                 repo: Repo | None = None) -> None:
        self.tmp = tmp
        self.repo = repo or LocalRepo(tmp)
        self.nservers = servers
        self.run = tmp / "run"
        self.run.mkdir(mode=0o700)
        self.key = self.run / "bootstrap.key"
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.close(fd)
        self.server_eps = [f"ipc://{self.run}/server{'' if i == 0 else i}.sock"
                           for i in range(servers)]
        self.server_ep = self.server_eps[0]
        self.publish_eps = [f"ipc://{self.run}/publish{'' if i == 0 else i}.sock"
                            for i in range(servers)]
        self.agent_eps = [f"ipc://{self.run}/agent{i}.sock" for i in range(agents)]
        self.procs: list[Proc] = []
        self.servers: list[Proc] = []
        self.killed: list[str] = []

    def start(self) -> None:
        for i in range(self.nservers):
            name = "server" if i == 0 else f"server{i}"
            server = Proc(name, [*SERVER_CMD, *self.repo.server_args(i), "--listen",
                                 self.server_eps[i], "--bootstrap-key", str(self.key),
                                 "--publish", self.publish_eps[i]], self.tmp / f"{name}.log")
            self.procs.append(server)
            self.servers.append(server)
        for p in self.servers:
            p.wait_ready()
        n = self.nservers
        for i, ep in enumerate(self.agent_eps):
            # each agent lists the servers from another one first: they start spread out
            order = [(i + k) % n for k in range(n)]
            self.procs.append(Proc(f"agent{i}", [
                sys.executable, "-m", "synthfs.agent",
                "--server", ",".join(self.server_eps[k] for k in order),
                "--bootstrap-key",
                str(self.key), "--listen", ep, "--cache", str(self.tmp / f"cache{i}"),
                "--subscribe", ",".join(self.publish_eps[k] for k in order)],
                self.tmp / f"agent{i}.log"))
        for p in self.procs[n:]:
            p.wait_ready()

    def kill(self, server: int, frozen: float = 0.5) -> None:
        """SIGKILL server ``server`` after ``frozen`` seconds stopped (SIGSTOP), so that
        the agents have requests in its queue when it dies; no clean-up, its
        connections close."""
        p = self.servers[server]
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(frozen)
        p.popen.kill()
        p.popen.wait()
        self.killed.append(p.name)

    def alive(self) -> list[str]:
        return [p.name for p in self.procs if p.popen.poll() is None]

    def expected_alive(self) -> list[str]:
        return [p.name for p in self.procs if p.name not in self.killed]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _tree_sums(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if not p.is_dir()}


def _progress(tmp: Path) -> int:
    """Operations the guests reported so far (each prints a line per 10 on its stderr)."""
    done = 0
    for err in tmp.glob("g*.err"):
        last = [line for line in err.read_text(errors="replace").splitlines()
                if line.startswith("progress ")]
        done += sum(int(line.rsplit(" ", 1)[1]) for line in
                    {line.split()[1]: line for line in last}.values())
    return done


def _attack(fleet: Fleet, frames: int, out: dict[str, object]) -> None:
    """A hostile client without a token: ``frames`` fuzzed frames at the server, probed."""
    try:
        up = Upstream(fleet.server_ep, fleet.key.read_bytes().strip())
        try:
            token = up.register().token  # for the probes only: the fuzzed frames carry none
        finally:
            up.close()

        def is_root(msg: Message) -> bool:
            return isinstance(msg, StatReply) and msg.attrs.kind == "dir"

        valid, garbage = server_seeds("")
        server = fleet.procs[0]
        out["result"] = blast(fleet.server_ep, FrameFuzzer(valid, garbage, SEED), frames,
                              probe=lambda: Stat(path="/"), probe_ok=is_root,
                              owes_reply=lambda parts: True,
                              alive=lambda: server.popen.poll() is None, in_order=False,
                              probe_token=token)
    except BaseException as exc:
        out["error"] = exc


def _load(tmp: Path, ops: int, budget: float, threads: int = 1, fuzz_frames: int = 0,
          servers: int = 1, agents: int = AGENTS, guests_per_agent: int = GUESTS_PER_AGENT,
          kill_after: float | None = None, repo: Repo | None = None) -> None:
    """The run; with ``kill_after``, server 0 is killed once the guests did that share
    (0 to 1) of their operations."""
    fleet = Fleet(tmp, servers=servers, agents=agents, repo=repo)
    repo = fleet.repo
    repo.mkdir("shared")
    sums = {}
    for i, size in enumerate([0, 10, 4096, 100_000, 1_000_000, 3_000_000]):
        data = os.urandom(size)
        repo.put(f"shared/s{i}", data)
        sums[f"s{i}"] = hashlib.sha256(data).hexdigest()
    manifest = tmp / "shared.json"
    manifest.write_text(json.dumps(sums))
    repo.mkdir("pub")
    fleet.start()
    guests: list[tuple[str, subprocess.Popen[bytes]]] = []
    hostile: dict[str, object] = {}
    attacker = threading.Thread(target=_attack, args=(fleet, fuzz_frames, hostile), daemon=True)
    try:
        started = time.monotonic()
        if fuzz_frames:
            attacker.start()
        for a, ep in enumerate(fleet.agent_eps):
            for g in range(guests_per_agent):
                name = f"g{a}{g}"
                argv = [*synthfs_command(), "run", "--agent", ep, "--", sys.executable,
                        str(GUEST), f"/data/{name}", str(ops), str(1000 * a + g),
                        "/data/shared", str(manifest), "/data/pub", str(threads)]
                with open(tmp / f"{name}.err", "wb") as err:
                    guests.append((name, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                          stderr=err, stdin=subprocess.DEVNULL)))
        killed_at = None
        if kill_after is not None:
            # mid-run: once the guests did that share of their operations
            want = kill_after * ops * agents * guests_per_agent * threads
            while _progress(tmp) < want:
                time.sleep(0.1)
                assert any(p.poll() is None for _, p in guests), "the guests ended before the kill"
                assert time.monotonic() - started < budget, "no progress"
            fleet.kill(0)
            killed_at = time.monotonic() - started
        results: dict[str, dict] = {}
        hung = []
        for name, p in guests:
            try:
                out, _ = p.communicate(timeout=max(1.0, budget - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                hung.append(name)
                p.kill()
                p.communicate()
                continue
            err = (tmp / f"{name}.err").read_text(errors="replace")
            assert p.returncode == 0, f"{name}: exit {p.returncode}\n{err[-3000:]}"
            results[name] = json.loads(out)
        elapsed = time.monotonic() - started
        assert not hung, f"guests {hung} did not finish within {budget:g} s (deadlock?)"
        total = sum(r["ops"] for r in results.values())
        errors = {n: r["first_errors"] for n, r in results.items() if r["errors"]}
        slowest = max((r["slowest_s"], n, r["slowest_op"]) for n, r in results.items())
        busy = max(r["seconds"] for r in results.values())  # the longest guest's op loop
        print(f"\nload: {servers} servers, {agents} agents, {len(results)} guests x {threads} "
              f"threads x {ops} ops = {total} ops; "
              f"wall {elapsed:.1f} s "
              f"({total / elapsed:.0f} ops/s with start-up), op loops {busy:.1f} s "
              f"({total / busy:.0f} ops/s); errors {sum(r['errors'] for r in results.values())}; "
              f"slowest op {slowest[0] * 1000:.0f} ms ({slowest[2]} in {slowest[1]})"
              + (f"; server 0 killed at {killed_at:.1f} s" if killed_at is not None else ""))
        for p in fleet.procs:  # each agent's longest wait of a request moved to another server
            if p.name.startswith("agent"):
                said = [line.split("WARNING: ", 1)[-1] for line in p.output().splitlines()
                        if "moved to another" in line or "closed the connection" in line]
                for line in said[-2:]:
                    print(f"{p.name}: {line[:200]}")
        assert total == ops * agents * guests_per_agent * threads
        assert slowest[0] < 60, "an operation took a minute: something waits unbounded"
        assert errors == {}, errors
        # The server's directory, not what the guests believe: nothing lost, torn, wrong, extra.
        dirs = {d: m for r in results.values() for d, m in r["models"].items()}
        assert len(dirs) == agents * guests_per_agent * threads
        for d, model in dirs.items():
            on_server = repo.sums(d.removeprefix("/data/"))
            lost = sorted(set(model) - set(on_server))
            extra = sorted(set(on_server) - set(model))
            wrong = sorted(k for k, v in model.items() if on_server.get(k, v) != v)
            assert (lost, extra, wrong) == ([], [], []), f"{d}: lost/extra/wrong"
        assert repo.sums("shared") == sums
        published = {k: v for r in results.values() for k, v in r["published"].items()}
        assert published, "no guest published anything"
        on_server = repo.sums("pub")
        assert {k: on_server.get(k) for k in published} == published
        assert sorted(set(on_server) - set(published)) == []  # no temporary file left
        for i in range(servers):
            if fleet.servers[i].name not in fleet.killed:  # a killed one cleans at its restart
                left = repo.staged(i)
                assert left == [], f"uploads left staged by server {i}: {left[:5]}"
        if fuzz_frames:
            attacker.join(timeout=max(1.0, budget - (time.monotonic() - started)))
            assert not attacker.is_alive(), "the fuzzing client did not finish"
            assert "error" not in hostile, hostile.get("error")
            res = hostile["result"]
            assert isinstance(res, BlastResult)
            print(res.summary("server under load"))
            assert res.replies == res.frames == fuzz_frames and res.mismatches == []
        assert fleet.alive() == fleet.expected_alive()
        for p in fleet.procs:
            assert "Traceback" not in p.output(), p.output()[-3000:]
    finally:
        for _, p in guests:
            if p.poll() is None:
                p.kill()
                p.wait()
        fleet.stop()


def test_eight_guests_two_agents(synthfs, tmp_path: Path) -> None:
    """CI: SYNTHFS_LOAD_OPS (100) operations per guest within 5 minutes."""
    _load(tmp_path, CI_OPS, budget=300)


def test_eight_threaded_guests_two_agents(synthfs, tmp_path: Path) -> None:
    """CI: the same with two threads per guest (the supervisor follows both), half the ops."""
    _load(tmp_path, max(1, CI_OPS // 2), budget=300, threads=2)


def test_load_while_a_hostile_client_fuzzes_the_server(synthfs, tmp_path: Path) -> None:
    """CI: half the ops, while 20,000 fuzzed frames (no token) hit the same server."""
    _load(tmp_path, max(1, CI_OPS // 2), budget=300, fuzz_frames=20_000)


#: Scale-out: 2 servers x 4 agents x 8 guests (2 per agent), each agent given both servers.
SCALE = {"servers": 2, "agents": 4, "guests_per_agent": 2}


def test_two_servers_four_agents_eight_guests(synthfs, tmp_path: Path) -> None:
    """CI: SYNTHFS_LOAD_OPS (100) operations per guest over 2 servers."""
    _load(tmp_path, CI_OPS, budget=300, **SCALE)


def test_a_server_killed_mid_run_costs_the_guests_a_delay_only(synthfs, tmp_path: Path) -> None:
    """CI: the same, with server 0 killed (SIGKILL, after 0.5 s stopped so that requests
    wait in its queue) a few seconds in: every guest finishes without an error, nothing
    is lost or torn, and the agents carry on with server 1."""
    _load(tmp_path, CI_OPS, budget=300, kill_after=0.3, **SCALE)


@pytest.mark.slow
def test_eight_guests_two_agents_full(synthfs, tmp_path: Path) -> None:
    _load(tmp_path, FULL_OPS, budget=1800)


@pytest.mark.slow
def test_two_servers_four_agents_sixteen_guests_one_killed_full(synthfs, tmp_path: Path) -> None:
    _load(tmp_path, FULL_OPS, budget=1800, servers=2, agents=4, guests_per_agent=4,
          kill_after=0.3)


def _s3_load(tmp: Path, store: Any, ops: int, budget: float, **kw: Any) -> None:
    repo = S3Repo(tmp, store)
    try:
        _load(tmp, ops, budget=budget, repo=repo, **kw)
    finally:
        repo.close()


#: CI over S3: fewer operations per guest (every one is a round trip to the store).
S3_CI_OPS = int(os.environ.get("SYNTHFS_S3_LOAD_OPS", "40"))


def test_two_servers_four_agents_eight_guests_over_s3(synthfs, s3_env, tmp_path: Path) -> None:
    """CI: the scale-out run over one SeaweedFS bucket (S3_CI_OPS per guest)."""
    _s3_load(tmp_path, s3_env, S3_CI_OPS, budget=300, **SCALE)


def test_a_server_killed_mid_run_over_s3_costs_a_delay_only(synthfs, s3_env,
                                                             tmp_path: Path) -> None:
    """CI: the same with server 0 killed a third of the way in."""
    _s3_load(tmp_path, s3_env, S3_CI_OPS, budget=300, kill_after=0.3, **SCALE)


@pytest.mark.slow
def test_two_servers_four_agents_eight_guests_over_s3_full(synthfs, s3_env,
                                                           tmp_path: Path) -> None:
    _s3_load(tmp_path, s3_env, FULL_OPS // 2, budget=1800, **SCALE)


@pytest.mark.slow
def test_two_servers_four_agents_sixteen_guests_one_killed_over_s3_full(
        synthfs, s3_env, tmp_path: Path) -> None:
    _s3_load(tmp_path, s3_env, FULL_OPS // 2, budget=1800, servers=2, agents=4,
             guests_per_agent=4, kill_after=0.3)
