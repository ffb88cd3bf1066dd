"""Self-check of the conformance harness, natively only (no synthfs involved).

A comparator that cannot fail is a defect: here every case runs twice
natively on two copies at different paths and must compare equal (so a
synthfs mismatch is never noise from a nondeterministic case), and trees or
outputs that differ on purpose must compare unequal.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import helpers
import pytest
from conformance_cases import (
    CASES,
    Case,
    build_standard,
    compare,
    finish,
    run_case_native,
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_native_twice_is_equal(case: Case, tmp_path: Path) -> None:
    missing = [t for t in case.needs if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    outside, home = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    home.mkdir()
    a = run_case_native(case, tmp_path / "one", outside, home)
    b = run_case_native(case, tmp_path / "a-longer-second-copy" / "x", outside, home)
    assert not compare(case, a, b, label="native again"), "\n".join(compare(case, a, b))
    # A case that never touches its tree proves nothing: every case names {root}
    # (or starts inside it), except those that check the wrapper leaves the guest's
    # world alone: its cwd, env and signal dispositions.
    if case.name not in ("env_untouched", "cwd_untouched", "signal_dispositions",
                         "closed_pipe_kills_quietly"):
        assert case.cwd is not None or any("{root}" in x for x in case.argv), case.name


def test_starting_tree_is_deterministic(tmp_path: Path) -> None:
    build_standard(tmp_path / "a")
    build_standard(tmp_path / "b")
    assert (
        helpers.diff_trees(
            helpers.snapshot(tmp_path / "a", times=True),
            helpers.snapshot(tmp_path / "b", times=True),
        )
        == []
    )


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda r: (r / "a.txt").write_text("hello\nWorld\n"), "~ a.txt"),
        (
            lambda r: (r / "seed.bin").write_bytes((r / "seed.bin").read_bytes()[:-1] + b"\0"),
            "~ seed.bin",
        ),
        (lambda r: os.chmod(r / "a.txt", 0o600), "~ a.txt"),
        (lambda r: os.chmod(r / "d", 0o700), "~ d:"),
        (lambda r: os.chmod(r, 0o700), "~ .:"),
        (lambda r: (os.unlink(r / "link"), os.symlink("lines.txt", r / "link")), "~ link"),
        (lambda r: (os.unlink(r / "link"), (r / "link").write_text("hello\nworld\n")), "~ link"),
        (lambda r: (r / "extra").mkdir(), "+ extra"),
        (lambda r: os.unlink(r / "d" / "sub" / "c.txt"), "- d/sub/c.txt"),
        (lambda r: (r / "d" / "empty").rmdir(), "- d/empty"),
        (lambda r: os.rename(r / "d" / "b.txt", r / "d" / "B.txt"), "- d/b.txt"),
    ],
)
def test_different_trees_compare_unequal(tmp_path: Path, mutate, expect: str) -> None:
    build_standard(tmp_path / "a")
    build_standard(tmp_path / "b")
    mutate(tmp_path / "b")
    diff = helpers.diff_trees(helpers.snapshot(tmp_path / "a"), helpers.snapshot(tmp_path / "b"))
    assert any(line.startswith(expect) for line in diff), diff


def test_times_compared_only_when_asked(tmp_path: Path) -> None:
    build_standard(tmp_path / "a")
    build_standard(tmp_path / "b")
    os.utime(tmp_path / "b" / "a.txt", ns=(1, 1))
    assert (
        helpers.diff_trees(helpers.snapshot(tmp_path / "a"), helpers.snapshot(tmp_path / "b")) == []
    )
    diff = helpers.diff_trees(
        helpers.snapshot(tmp_path / "a", times=True), helpers.snapshot(tmp_path / "b", times=True)
    )
    assert [d[:7] for d in diff] == ["~ a.txt"], diff


def _side(status: int, out: str, err: str, tmp_path: Path) -> object:
    case = Case("x", ("true",))
    tree = tmp_path / f"t{status}{len(out)}{len(err)}"
    tree.mkdir(exist_ok=True)
    return finish(case, helpers.Outcome(status, out, err), "/nowhere", tree)


@pytest.mark.parametrize(
    "other",
    [(1, "a\n", ""), (0, "b\n", ""), (0, "a\n", "warning\n"), (0, "a", ""), (0, "", "")],
)
def test_different_outcomes_compare_unequal(tmp_path: Path, other: tuple[int, str, str]) -> None:
    case = Case("x", ("true",))
    base = _side(0, "a\n", "", tmp_path)
    assert compare(case, base, base) == []
    assert compare(case, base, _side(*other, tmp_path))


def test_normalisation_maps_only_the_native_root(tmp_path: Path) -> None:
    """The native root reads as /data; any other host path (a leak) stays visible."""
    assert helpers.normalise_paths("/tmp/x/tree/a: no", "/tmp/x/tree") == "/data/a: no"
    assert (
        helpers.normalise_paths("/var/cache/synthfs/ab", "/tmp/x/tree") == "/var/cache/synthfs/ab"
    )


def test_normalisers_mask_only_what_they_claim() -> None:
    """Each normaliser hides its documented file-system detail and nothing else."""
    from conformance_cases import dd_stats, du_apparent, ls_long, sort_lines

    none: frozenset[str] = frozenset()
    base = (
        "total 8\n"
        "drwxr-xr-x 3 root root 4096 1600000000 .\n"
        "drwxrwxrwt 9 root root 4096 1700000000 ..\n"
        "-rw-r--r-- 1 root root 12 1600000000 a.txt\n"
        "drwxr-xr-x 2 root root 4096 1600000000 d\n"
    )
    fs_detail = (
        base.replace("total 8", "total 24")
        .replace("9 root root 4096 1700000000", "3 root root 60 1800000000")
        .replace("2 root root 4096 1600000000 d", "1 root root   80 1600000000 d")
    )
    assert ls_long(base, none) == ls_long(fs_detail, none)
    for real in ("12 1600000000 a.txt", "-rw-r--r-- 1", "1600000000 d", "drwxr-xr-x 3"):
        changed = {
            "12 1600000000 a.txt": "13 1600000000 a.txt",
            "-rw-r--r-- 1": "-rw------- 1",
            "1600000000 d": "1600000001 d",
            "drwxr-xr-x 3": "drwx------ 3",
        }[real]
        assert ls_long(base, none) != ls_long(base.replace(real, changed), none), real

    dirs = frozenset({"/data", "/data/d"})
    du = "4096\t/data/d\n12\t/data/a.txt\n8204\t/data\n"
    assert du_apparent(du, dirs) == du_apparent("60\t/data/d\n12\t/data/a.txt\n72\t/data\n", dirs)
    assert du_apparent(du, dirs) != du_apparent(du.replace("12\t", "13\t"), dirs)
    assert du_apparent(du, dirs) != du_apparent(du + "1\t/data/extra\n", dirs)

    assert sort_lines("b\na\n", none) == sort_lines("a\nb\n", none)
    assert sort_lines("b\na\n", none) != sort_lines("a\nb\nb\n", none)

    dd = "3+1 records in\n3+1 records out\n204800 bytes (205 kB, 200 KiB) copied, 0.01 s, 20 MB/s\n"
    assert dd_stats(dd, none) == dd_stats(dd.replace("0.01 s, 20 MB/s", "1.5 s, 136 kB/s"), none)
    assert dd_stats(dd, none) != dd_stats(dd.replace("204800 bytes", "204799 bytes"), none)
