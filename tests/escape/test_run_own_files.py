"""Escape suite: the run's own files, and what the supervisor itself opens for a guest.

* The policy file a run enforces, its ``--audit`` log and its ``--stats`` file are no
  guest's (review round 12, findings 11 and 12): in the README's CI setup the policy
  file lies in the workspace the job may write, so a job rewrote it (``default =
  "allow"``) and the next step of the same command ran under it; a job also rewrote
  the audit of its own denials. They are refused like the agent's socket: no read,
  no write, no rename of them or of a directory above them.
* An exec of a /data script whose ``#!`` names a FIFO on the host: the supervisor
  opened the FIFO to count nested ``#!`` lines and waited for a writer, serving no
  guest, deaf to SIGINT (finding 10). Natively the exec is EACCES at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

POLICY = """\
version = 1
default = "allow"

[[mount]]
path = "/data"

[[app]]
name = "job"
match.exe = ["/**"]
deny = [{{ paths = ["/data/fixtures/**"], ops = ["write"] }}]

[host]
read = ["/**"]
write = ["{work}/**", "/tmp/**", "/dev/null"]
"""

TAMPER = """
import os, sys
work = sys.argv[1]
for what, f in (
    ("read policy", lambda: open(work + "/policies/ci.toml").read()),
    ("write policy", lambda: open(work + "/policies/ci.toml", "w").write('default = "allow"')),
    ("remove policy", lambda: os.unlink(work + "/policies/ci.toml")),
    ("rename policies", lambda: os.rename(work + "/policies", work + "/p2")),
    ("truncate audit", lambda: open(work + "/audit.jsonl", "w").write("{}")),
    ("write stats", lambda: open(work + "/stats.json", "w").write("{}")),
):
    try:
        f()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
try:
    open("/data/fixtures/f", "w")
except OSError as e:
    print("fixture", e.errno)
"""


def test_a_guest_cannot_touch_its_policy_audit_or_stats(synthfs, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "policies").mkdir(parents=True)
    policy = work / "policies" / "ci.toml"
    policy.write_text(POLICY.format(work=work))
    repo = tmp_path / "repo"
    (repo / "fixtures").mkdir(parents=True)
    (repo / "fixtures" / "f").write_text("fixture\n")
    out = synthfs.run(repo, [sys.executable, "-c", TAMPER, str(work)], cwd=work,
                      extra=("--policy", str(policy), "--audit", str(work / "audit.jsonl"),
                             "--stats", str(work / "stats.json")))
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == [
        "read policy 13", "write policy 13", "remove policy 13", "rename policies 13",
        "truncate audit 13", "write stats 13", "fixture 13"], out.show()
    assert policy.read_text() == POLICY.format(work=work)
    assert '"op": "write"' in (work / "audit.jsonl").read_text().replace('":"', '": "')
    assert (repo / "fixtures" / "f").read_text() == "fixture\n"


def test_a_script_whose_interpreter_is_a_fifo_fails_at_once(synthfs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = (f"printf '#!{fifo}\\n' > /data/s; chmod +x /data/s; /data/s; echo status $?")
    native_script = script.replace("/data/", f"{repo}/")
    native = helpers.run_native(["sh", "-c", native_script], cwd=tmp_path, timeout=30)
    (repo / "s").unlink()
    t = time.monotonic()
    out = synthfs.run(repo, ["sh", "-c", script], cwd=tmp_path)
    took = time.monotonic() - t
    assert native.stdout == "status 126\n", native.show()
    assert out.stdout == native.stdout, out.show()
    assert took < 30, took


def test_a_policy_file_of_two_names_is_refused(synthfs, tmp_path: Path) -> None:
    """The guests are refused the policy file by its name: a hard link made before the
    run was writable (review round 13, finding 4). Such a file is an error at start."""
    work = tmp_path / "work"
    work.mkdir()
    policy = work / "ci.toml"
    policy.write_text(POLICY.format(work=work))
    os.link(policy, work / "other-name.toml")
    repo = tmp_path / "repo"
    repo.mkdir()
    out = synthfs.run(repo, ["true"], cwd=work, extra=("--policy", str(policy)))
    assert out.status == 2, out.show()
    assert "has 2 names (hard links)" in out.stderr and "Traceback" not in out.stderr


SWAP_LINK = """
import os, sys
work = sys.argv[1]
for what, f in (
    ("unlink link", lambda: os.unlink(work + "/ws")),
    ("rename link", lambda: os.rename(work + "/ws", work + "/ws2")),
    ("replace link", lambda: os.symlink(work + "/mine", work + "/ws")),
    ("write beside", lambda: open(work + "/ws/notes", "w").write("ok")),
):
    try:
        f()
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
"""


def test_a_symlink_on_the_policy_path_is_refused_too(synthfs, tmp_path: Path) -> None:
    """``--policy work/ws/ci.toml`` with ``ws -> real``: the file was refused by its real
    path, but the guest replaced the link and the next run read the guest's policy
    (review round 14). Each symlink on a refused path is refused itself; what lies
    behind it stays the policy's."""
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    (work / "ws").symlink_to("real")
    policy = work / "real" / "ci.toml"
    policy.write_text(POLICY.format(work=work))
    repo = tmp_path / "repo"
    repo.mkdir()
    out = synthfs.run(repo, [sys.executable, "-c", SWAP_LINK, str(work)], cwd=work,
                      extra=("--policy", str(work / "ws" / "ci.toml")))
    assert out.status == 0, out.show()
    assert out.stdout.splitlines() == [
        "unlink link 13", "rename link 13", "replace link 13", "write beside ok"], out.show()
    assert os.readlink(work / "ws") == "real"
    assert (work / "real" / "notes").read_text() == "ok"


def test_a_symlink_before_dotdot_on_the_policy_path_is_refused_too(
        synthfs, tmp_path: Path) -> None:
    """``--policy ws/lnk/../ci.toml`` with ``ws/lnk -> ../real/sub``: the kernel goes
    through the link, then up from its target; a lexical normalisation dropped
    ``lnk/..`` and the link was never refused (review round 16, finding 3)."""
    work = tmp_path / "work"
    (work / "real" / "sub").mkdir(parents=True)
    (work / "ws").mkdir()
    (work / "ws" / "lnk").symlink_to("../real/sub")
    policy = work / "real" / "ci.toml"
    policy.write_text(POLICY.format(work=work))
    repo = tmp_path / "repo"
    repo.mkdir()
    swap = SWAP_LINK.replace('"/ws"', '"/ws/lnk"').replace('"/ws2"', '"/ws/lnk2"')
    out = synthfs.run(repo, [sys.executable, "-c", swap, str(work)], cwd=work,
                      extra=("--policy", "ws/lnk/../ci.toml"))
    assert out.status == 0, out.show()
    assert out.stdout.splitlines()[:3] == [
        "unlink link 13", "rename link 13", "replace link 13"], out.show()
    assert os.readlink(work / "ws" / "lnk") == "../real/sub"
