"""``synthfs policy list|check|explain``: policy/cli.py (and shipped policies by name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from synthfs.cli import main

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(POLICIES / "per-app.toml"))
    assert code == 0 and err == ""
    assert out == f"{POLICIES / 'per-app.toml'}: ok (4 apps, 8 rules)\n"


def test_check_many_with_var(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("WORKSPACE", raising=False)
    files = sorted(str(p) for p in POLICIES.glob("*.toml"))
    code, out, err = run(capsys, "check", "--var", "WORKSPACE=/w", *files)
    assert code == 0, err
    assert len(out.splitlines()) == len(files) and all(": ok (" in ln for ln in out.splitlines())
    code, out, err = run(capsys, "check", *files)  # WORKSPACE unset: a note on ci.toml
    assert code == 0, err
    assert "ci.toml:" in err and "note: $WORKSPACE is not set" in err and len(err.splitlines()) == 1
    assert len(out.splitlines()) == len(files)


def test_check_error_names_line_and_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "ci.toml"
    bad.write_text(
        'version = 1\n[[app]]\nname = "a"\nmatch.exe = ["/**"]\n'
        'alow = [{ paths = ["/data/**"], ops = ["read"] }]\n'
    )
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1 and out == ""
    assert err == f"{bad}:5: unknown key 'alow' in [[app]] (did you mean 'allow'?)\n"


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _out, err = run(capsys, "check", str(tmp_path / "nope.toml"))
    assert code == 1 and "cannot read" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            capsys,
        )[0]
        == 2
    )
    with pytest.raises(SystemExit) as info:
        main(["policy", "check"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["policy", "explain", str(POLICIES / "ci.toml"), "--op", "read", "--path", "/data"])
    assert info.value.code == 2  # --exe missing
    with pytest.raises(SystemExit) as info:
        main(["policy", "explain", "f", "--exe", "/x", "--op", "raed", "--path", "/data"])
    assert info.value.code == 2
    capsys.readouterr()
    code, _out, err = run(capsys, "check", "--var", "NOEQUALS", str(POLICIES / "default.toml"))
    assert code == 2 and "NAME=VALUE" in err


def test_explain_allow(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "explain",
        str(POLICIES / "per-app.toml"),
        "--exe",
        "/usr/bin/python3",
        "--argv",
        "python3 /home/u/train.py --epochs 3",
        "--op",
        "write",
        "--path",
        "/data/models/m.pt",
    )
    assert code == 0, err
    assert "app:      train (per-app.toml:" in out
    assert "argv '*train.py'" in out
    assert "decision: ALLOW by per-app.toml:" in out and "/data/models/**" in out
    assert "errno:    0" in out


def test_explain_enoent_hiding_shows_the_rules_it_beats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(
        capsys,
        "explain",
        str(POLICIES / "per-app.toml"),
        "--exe",
        "/usr/bin/python3",
        "--arg",
        "python3",
        "--arg=-c",
        "--arg",
        "pass",
        "--op",
        "read",
        "--path",
        "/data/public/private/../private/k",
    )
    assert code == 1
    assert "op:       read /data/public/private/k (on a synthetic mount)" in out
    assert "app:      python (per-app.toml:" in out
    assert "deny * on /data/public/private/** (ENOENT)" in out
    assert "errno:    ENOENT (2, No such file or directory)" in out
    assert (
        "also matches, lower precedence:" in out
        and "allow read, stat, list on /data/public/**" in out
    )


def test_explain_unmatched_app_and_host_path(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(
        capsys,
        "explain",
        str(POLICIES / "ci.toml"),
        "--var",
        "WORKSPACE=/w",
        "--exe",
        "/usr/bin/cat",
        "--op",
        "write",
        "--path",
        "/etc/passwd",
    )
    assert code == 1
    assert "app:      ci-job" in out  # ci.toml's one app matches every executable
    assert "(a host path)" in out and "[host] write list" in out and "EACCES" in out
    code, out, _err = run(
        capsys,
        "explain",
        str(POLICIES / "per-app.toml"),
        "--exe",
        "/usr/bin/head",
        "--op",
        "read",
        "--path",
        "/data/public/a",
    )
    assert code == 1 and "app:      (none)" in out and "decision: DENY by default" in out


def test_explain_read_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(
        capsys,
        "explain",
        str(POLICIES / "default.toml"),
        "--read-only",
        "--exe",
        "/usr/bin/touch",
        "--op",
        "create",
        "--path",
        "/data/x",
    )
    assert code == 1
    assert "decision: DENY by --read-only" in out and "EROFS" in out


def test_explain_sha256_pin(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"binary v1")
    digest = hashlib.sha256(b"binary v1").hexdigest()
    pol = tmp_path / "pin.toml"
    pol.write_text(
        'version = 1\n[[app]]\nname = "tool"\n'
        f'match.exe = ["{exe}"]\nmatch.sha256 = "{digest}"\n'
        'allow = [{ paths = ["/data/**"], ops = ["read"] }]\n'
    )
    args = ("explain", str(pol), "--exe", str(exe), "--op", "read", "--path", "/data/x")
    code, out, _err = run(capsys, *args)
    assert code == 0 and "sha256 pin ok" in out
    exe.write_bytes(b"binary v2")
    code, out, _err = run(capsys, *args)
    assert code == 1
    assert "tool (sha256 mismatch)" in out and "differs from the pin" in out
    assert "decision: DENY by pin.toml:5" in out


def test_explain_bad_policy_and_relative_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 3\n")
    code, _out, err = run(
        capsys, "explain", str(bad), "--exe", "/x", "--op", "read", "--path", "/data"
    )
    assert code == 1 and err.startswith(f"{bad}:1: unsupported version 3")
    code, _out, err = run(
        capsys,
        "explain",
        str(POLICIES / "default.toml"),
        "--exe",
        "/x",
        "--op",
        "read",
        "--path",
        "x",
    )
    assert code == 2 and "must be absolute" in err


def test_list_shows_every_shipped_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list")
    assert code == 0 and err == ""
    names = [ln.split()[0] for ln in out.splitlines() if not ln.startswith(" ")]
    assert names == sorted(p.stem for p in POLICIES.glob("*.toml"))
    assert "readonly   every application reads /data; writes fail with EROFS" in out


def test_a_shipped_policy_is_found_by_name_from_anywhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check", "readonly")
    assert code == 0 and out == "readonly: ok (1 apps, 2 rules)\n", err
    code, out, err = run(capsys, "explain", "readonly", "--exe", "/usr/bin/touch", "--op",
                         "create", "--path", "/data/x")
    assert code == 1 and "EROFS" in out
    code, out, err = run(capsys, "check", "nosuch")
    assert code == 1 and "no policy file 'nosuch'" in err and "readonly" in err


def test_a_file_named_like_a_shipped_policy_is_ambiguous(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither is taken silently: the file may be a guest's (review round 9, finding 02),
    the shipped one would shadow the user's own file; ``./readonly`` names the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readonly").write_text("version = 1\nname = 'mine'\nbogus = 1\n")
    code, out, err = run(capsys, "check", "readonly")
    assert code == 1 and "both a file here and a shipped policy" in err and "./readonly" in err
    code, out, err = run(capsys, "check", "./readonly")
    assert code == 1 and "bogus" in err  # the user's own file, by its path


def test_a_directory_does_not_hide_a_shipped_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project's own ``ci/`` directory is no policy file: ``ci`` is the shipped one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ci").mkdir()
    code, out, err = run(capsys, "check", "ci")
    assert code == 0 and out.startswith("ci: ok"), err


def test_check_a_fifo_is_an_error_not_a_wait(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    """A FIFO given as a policy waited for a writer, without a word (review round 12,
    finding 13)."""
    import os

    fifo = tmp_path / "p.toml"
    os.mkfifo(fifo)
    code, _out, err = run(capsys, "check", str(fifo))
    assert code == 1 and err == f"{fifo}: not a regular file\n"
