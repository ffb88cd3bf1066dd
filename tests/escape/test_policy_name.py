"""``--policy NAME``: a file a guest wrote into its cwd is never taken for a shipped policy.

A guest under the shipped ``readonly`` policy (which leaves the host alone)
wrote ``./readonly`` with ``default = "allow"``; the user's next ``synthfs run
--policy readonly`` from that directory ran the guest's policy and wrote
``/data`` (review round 9, finding 02). Now such a name is
ambiguous: one line, exit 2, the command not run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import synthfs_command

PLANT = (
    'printf \'version = 1\\nname = "readonly"\\ndefault = "allow"\\n[[mount]]\\npath = "/data"\\n\''
    " > readonly"
)


@pytest.mark.usefixtures("synthfs")  # skips where the kernel cannot ptrace
def test_a_planted_policy_file_does_not_replace_the_shipped_one(tmp_path: Path) -> None:
    repo, cwd = tmp_path / "repo", tmp_path / "cwd"
    repo.mkdir()
    cwd.mkdir()

    def run(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*synthfs_command(), "run", "-q", "--data", str(repo), "--policy",
                               "readonly", "--", "sh", "-c", script],
                              cwd=cwd, capture_output=True, text=True, timeout=120)

    planted = run(PLANT)
    assert planted.returncode == 0, planted.stderr
    assert (cwd / "readonly").is_file()  # the guest could write its cwd: readonly has no [host]
    second = run("echo pwned > /data/x")
    assert not (repo / "x").exists(), "the guest's policy was loaded as 'readonly'"
    assert second.returncode == 2 and "both a file here and a shipped policy" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
