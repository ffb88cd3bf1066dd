"""Load: 8 guests across 2 agents and 1 server; nothing lost, torn or wrong, nothing hangs.

One real server (publishing invalidations), two real agents (each with its
own cache, both subscribed), and four guests per agent, each a
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

Variants: two threads per guest; and a hostile client fuzzing the server
(:mod:`fuzzframes`, no token) during the whole run, which must neither
disturb the guests nor go unanswered.

CI: ``SYNTHFS_LOAD_OPS`` operations per guest (100); slow: 1,000.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

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
CI_OPS = int(os.environ.get("SYNTHFS_LOAD_OPS", "100"))
FULL_OPS = 1000


class Fleet:
    """One server, two agents: real processes on private ipc:// sockets."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        self.root.mkdir()
        self.run = tmp / "run"
        self.run.mkdir(mode=0o700)
        self.key = self.run / "bootstrap.key"
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.close(fd)
        self.server_ep = f"ipc://{self.run}/server.sock"
        self.publish_ep = f"ipc://{self.run}/publish.sock"
        self.agent_eps = [f"ipc://{self.run}/agent{i}.sock" for i in range(AGENTS)]
        self.procs: list[Proc] = []

    def start(self) -> None:
        server = Proc("server", [*SERVER_CMD, "--root", str(self.root), "--state",
                                 str(self.root.parent / "state"), "--listen",
                                 self.server_ep, "--bootstrap-key", str(self.key),
                                 "--publish", self.publish_ep], self.tmp / "server.log")
        self.procs.append(server)
        for i, ep in enumerate(self.agent_eps):
            self.procs.append(Proc(f"agent{i}", [
                sys.executable, "-m", "synthfs.agent", "--server", self.server_ep,
                "--bootstrap-key",
                str(self.key), "--listen", ep, "--cache", str(self.tmp / f"cache{i}"),
                "--subscribe", self.publish_ep], self.tmp / f"agent{i}.log"))
        for p in self.procs:
            p.wait_ready()

    def alive(self) -> list[str]:
        return [p.name for p in self.procs if p.popen.poll() is None]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _tree_sums(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if not p.is_dir()}


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


def _load(tmp: Path, ops: int, budget: float, threads: int = 1, fuzz_frames: int = 0) -> None:
    fleet = Fleet(tmp)
    shared = fleet.root / "shared"
    shared.mkdir()
    sums = {}
    for i, size in enumerate([0, 10, 4096, 100_000, 1_000_000, 3_000_000]):
        data = os.urandom(size)
        (shared / f"s{i}").write_bytes(data)
        sums[f"s{i}"] = hashlib.sha256(data).hexdigest()
    manifest = tmp / "shared.json"
    manifest.write_text(json.dumps(sums))
    (fleet.root / "pub").mkdir()
    fleet.start()
    guests: list[tuple[str, subprocess.Popen[bytes]]] = []
    hostile: dict[str, object] = {}
    attacker = threading.Thread(target=_attack, args=(fleet, fuzz_frames, hostile), daemon=True)
    try:
        started = time.monotonic()
        if fuzz_frames:
            attacker.start()
        for a, ep in enumerate(fleet.agent_eps):
            for g in range(GUESTS_PER_AGENT):
                name = f"g{a}{g}"
                argv = [*synthfs_command(), "run", "--agent", ep, "--", sys.executable,
                        str(GUEST), f"/data/{name}", str(ops), str(1000 * a + g),
                        "/data/shared", str(manifest), "/data/pub", str(threads)]
                with open(tmp / f"{name}.err", "wb") as err:
                    guests.append((name, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                          stderr=err, stdin=subprocess.DEVNULL)))
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
        print(f"\nload: {len(results)} guests x {threads} threads x {ops} ops = {total} ops; "
              f"wall {elapsed:.1f} s "
              f"({total / elapsed:.0f} ops/s with start-up), op loops {busy:.1f} s "
              f"({total / busy:.0f} ops/s); errors {sum(r['errors'] for r in results.values())}; "
              f"slowest op {slowest[0] * 1000:.0f} ms ({slowest[2]} in {slowest[1]})")
        assert total == ops * AGENTS * GUESTS_PER_AGENT * threads
        assert slowest[0] < 60, "an operation took a minute: something waits unbounded"
        assert errors == {}, errors
        # The server's directory, not what the guests believe: nothing lost, torn, wrong, extra.
        dirs = {d: m for r in results.values() for d, m in r["models"].items()}
        assert len(dirs) == AGENTS * GUESTS_PER_AGENT * threads
        for d, model in dirs.items():
            on_server = _tree_sums(fleet.root / d.removeprefix("/data/"))
            lost = sorted(set(model) - set(on_server))
            extra = sorted(set(on_server) - set(model))
            wrong = sorted(k for k, v in model.items() if on_server.get(k, v) != v)
            assert (lost, extra, wrong) == ([], [], []), f"{d}: lost/extra/wrong"
        assert _tree_sums(shared) == sums
        published = {k: v for r in results.values() for k, v in r["published"].items()}
        assert published, "no guest published anything"
        on_server = _tree_sums(fleet.root / "pub")
        assert {k: on_server.get(k) for k in published} == published
        assert sorted(set(on_server) - set(published)) == []  # no temporary file left
        staging = fleet.root.parent / "state"
        left = sorted(set(os.listdir(staging)) - {"committed.journal"}) if staging.exists() else []
        assert left == [], f"uploads left staged: {left[:5]}"
        if fuzz_frames:
            attacker.join(timeout=max(1.0, budget - (time.monotonic() - started)))
            assert not attacker.is_alive(), "the fuzzing client did not finish"
            assert "error" not in hostile, hostile.get("error")
            res = hostile["result"]
            assert isinstance(res, BlastResult)
            print(res.summary("server under load"))
            assert res.replies == res.frames == fuzz_frames and res.mismatches == []
        assert fleet.alive() == [p.name for p in fleet.procs]
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


@pytest.mark.slow
def test_eight_guests_two_agents_full(synthfs, tmp_path: Path) -> None:
    _load(tmp_path, FULL_OPS, budget=1800)
