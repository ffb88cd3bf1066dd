"""A path hidden by the policy (errno ENOENT) is absent in the middle of a walk too.

``/data/public/private/sec/../../a.csv`` is judged as ``/data/public/a.csv``
(allowed) and then walked through ``private`` and ``sec``: the walk's answer
(success, ENOTDIR, ENOENT) told whether each hidden name existed and whether
it was a directory (review round 9, finding 06), by a path as
written and by a repository symlink's target.
"""

from __future__ import annotations

from pathlib import Path

from helpers import SynthfsLauncher

POLICY = """
version = 1
name = "hide"
default = "deny"
[[mount]]
path = "/data"
[[app]]
name = "all"
match.exe = ["/**"]
allow = [{ paths = ["/data/**"], ops = ["*"] }]
deny = [{ paths = ["/data/public/private/**"], ops = ["*"], errno = "ENOENT" }]
"""

GUEST = """
import os
out = []
probes = ["/data/public/private/../a.csv", "/data/public/private/sec/../../a.csv",
          "/data/public/private/sub/../../a.csv", "/data/public/private/nope/../../a.csv"]
for p in probes:
    try:
        os.stat(p)
        out.append("ok")
    except OSError as e:
        out.append(e.strerror)
for t in ["../public/private/sec/../../public/a.csv", "../public/private/sub/../../public/a.csv"]:
    os.symlink(t, "/data/out/l")
    try:
        os.stat("/data/out/l")
        out.append("ok")
    except OSError as e:
        out.append(e.strerror)
    os.unlink("/data/out/l")
print(out)
"""


def test_a_walk_through_a_hidden_directory_tells_nothing(
    synthfs: SynthfsLauncher, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "public/private/sub").mkdir(parents=True)
    (repo / "out").mkdir()
    (repo / "public/private/sec").write_text("s")
    (repo / "public/a.csv").write_text("a")
    policy = tmp_path / "hide.toml"
    policy.write_text(POLICY)
    out = synthfs.run(repo, ["python3", "-c", GUEST], cwd=tmp_path,
                      extra=["--policy", str(policy), "-q"])
    assert out.status == 0, out.show()
    assert out.stdout.strip() == str(["No such file or directory"] * 6), out.show()
