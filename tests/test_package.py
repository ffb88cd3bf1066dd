"""The wheel: one import name, shipped policies, and a working CLI outside the checkout.

Builds the wheel from this checkout, installs it (without its dependencies,
which the test borrows from the running interpreter's site-packages) into a
fresh venv, and runs it from a directory that is not the checkout, so nothing
can come from the source tree.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import helpers
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools leaves build/ and *.egg-info beside the sources
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "synthfs-bench", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (wheel,) = (tmp / "dist").glob("synthfs-*.whl")
    purelib = next((venv / "lib").glob("python3.*/site-packages"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(purelib)  # what pip does for a pure wheel, minus its console script
    # the dependencies (attrs, pyzmq...) from this interpreter, but not the checkout:
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "zz-deps.pth").write_text("\n".join(deps) + "\n")
    (venv / "bin" / "synthfs").write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom synthfs.cli import main\nsys.exit(main())\n")
    (venv / "bin" / "synthfs").chmod(0o755)
    return venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SYNTHFS_TEST_SOURCE")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_wheel_installs_one_import_name(installed: Path) -> None:
    purelib = next((installed / "lib").glob("python3.*/site-packages"))
    ours = sorted(p.name for p in purelib.iterdir()
                  if p.name not in ("zz-deps.pth", "__pycache__")
                  and not p.name.endswith(".dist-info"))
    assert ours == ["synthfs"]
    pkg = purelib / "synthfs"
    for part in ("interposer", "agent", "server", "protocol", "policy", "testing"):
        assert (pkg / part / "__init__.py").is_file(), part
    assert sorted(p.name for p in (pkg / "policies").glob("*.toml")) == sorted(
        p.name for p in (REPO / "policies").glob("*.toml"))
    assert not any(p.is_symlink() for p in pkg.rglob("*"))


def test_a_user_module_named_like_a_part_does_not_break_synthfs(
        installed: Path, tmp_path: Path) -> None:
    (tmp_path / "protocol.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "interposer.py").write_text("raise SystemExit('the user module was imported')\n")
    py = str(installed / "bin" / "python")
    r = _run(installed, py, "-c", "import synthfs.protocol.codec, synthfs.interposer.run; "
             "print(synthfs.protocol.codec.__file__)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(installed) in r.stdout


def test_version_help_and_a_run_from_elsewhere(installed: Path, tmp_path: Path) -> None:
    synthfs = str(installed / "bin" / "synthfs")
    r = _run(installed, synthfs, "--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("synthfs "), r.stderr
    r = _run(installed, str(installed / "bin" / "python"), "-m", "synthfs", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "run" in r.stdout and "policy" in r.stdout, r.stderr
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(reason)
    data = tmp_path / "d"
    data.mkdir()
    (data / "hello.txt").write_text("hi\n")
    r = _run(installed, synthfs, "run", "--policy", "readonly", "--data", str(data), "--",
             "sh", "-c", "ls /data && cat /data/hello.txt && touch /data/new", cwd=tmp_path)
    assert r.stdout == "hello.txt\nhi\n", r.stderr
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    assert sorted(os.listdir(data)) == ["hello.txt"]
