"""Smoke tests of ``synthfs bench``: the harness runs, outputs agree, reports appear.

Timings are never asserted (CI machines are noisy); what is asserted is that
every workload runs natively, that a peer's output is checked against
native's (and a wrong one is marked, not timed), and that JSON, markdown and
the chart are written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from synthfs.benchmarks import cli, report
from synthfs.benchmarks.harness import Options, Pass, Status, run_bench
from synthfs.benchmarks.tools import ALL_TOOLS, Tool
from synthfs.benchmarks.workloads import Root, Sizes, Workload, generate, workloads

TINY = Sizes.quick().scaled(
    big_mib=1, tree_files=40, tree_dirs=4, w4_files=10, w7_getpid=1000, w7_dd_blocks=1000,
    sqlite_rows=100, git_files=20, c_modules=1,
)  # fmt: skip

NEEDED = ["sh", "find", "du", "tar", "dd", "sqlite3", "git", "make", "gcc", "taskset"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="count", default=0)
    cli.configure(parser)
    return parser.parse_args(argv)


@pytest.fixture
def programs() -> None:
    missing = [p for p in NEEDED if shutil.which(p) is None]
    if missing:
        pytest.fail(f"the benchmark workloads need {', '.join(missing)} (install them in CI)")


def test_quick_cli_native_and_seccomp_floor(tmp_path: Path, programs: None) -> None:
    """`synthfs bench --quick` with native + the bare seccomp filter (always available)."""
    md = tmp_path / "RESULTS.md"
    args = _parse(
        [
            "--quick", "--tools", "native,seccomp", "--out", str(tmp_path / "out"),
            "--tmpfs", str(tmp_path / "tmpfs"), "--results-md", str(md), "--no-progress",
            "--no-install",
            *[f"--size={k}={v}" for k, v in TINY.to_dict().items()],
        ]
    )  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((tmp_path / "out" / "results-quick.json").read_text())
    assert data["meta"]["passes"] == ["pinned"]
    ids = {w.id for w in workloads(TINY)}
    native = {c["workload"]: c for c in data["cells"] if c["tool"] == "native"}
    assert set(native) == ids
    for wl, cell in native.items():
        assert cell["status"] == "ok", (wl, cell["error"])
        assert cell["n"] == 1
    floor = [c for c in data["cells"] if c["tool"] == "seccomp"]
    assert {c["workload"] for c in floor} == {"S0", "W5", "W7a", "W7b"}
    for cell in floor:
        assert cell["status"] == "ok", (cell["workload"], cell["error"])
        assert cell["ratio"] > 0
    text = md.read_text()
    assert "| W3 read" in text and "bare seccomp filter" in text
    assert "Parrot" in text  # named as not measured, with the reason
    assert (tmp_path / "out" / "results-quick.png").exists()


class _Liar(Tool):
    """A 'peer' whose output is wrong on the data workloads."""

    name = "liar"
    label = "liar"

    def argv(self, script: str, root: Root) -> list[str]:
        return ["sh", "-c", script + "; echo extra" if root is not Root.NONE else script]


class _Broken(Tool):
    name = "broken"
    label = "broken"

    def argv(self, script: str, root: Root) -> list[str]:
        return ["sh", "-c", "echo boom >&2; exit 3"]


def test_wrong_output_and_failure_are_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, programs: None
) -> None:
    monkeypatch.setitem(ALL_TOOLS, "liar", _Liar)
    monkeypatch.setitem(ALL_TOOLS, "broken", _Broken)
    opts = Options(
        sizes=TINY,
        runs=2,
        passes=(Pass.UNPINNED,),
        tools=("native", "liar", "broken"),
        only_workloads=("S0", "W2", "W3"),
        out_dir=tmp_path / "out",
        tmpfs_dir=tmp_path / "tmpfs",
        install=False,
        quick=True,
        progress=False,
    )
    res = run_bench(opts)
    by = {(c.workload, c.tool): c for c in res.cells}
    assert by["S0", "liar"].status is Status.OK and len(by["S0", "liar"].times) == 2
    wrong = by["W3", "liar"]
    assert wrong.status is Status.WRONG and wrong.times == [] and "differs" in wrong.error
    broken = by["W2", "broken"]
    assert broken.status is Status.FAILED and "boom" in broken.error and "exit 3" in broken.error
    data = res.to_dict()
    md = report.markdown(data)
    assert "WRONG" in md and "FAIL" in md
    cells = {(c["workload"], c["tool"]): c for c in data["cells"]}
    assert "ratio" not in cells["W3", "liar"]
    assert cells["S0", "liar"]["n"] == 2


def test_setup_failure_is_reported_not_dropped(tmp_path: Path, programs: None) -> None:
    class _Missing(Tool):
        name = "missing"
        label = "missing"

        def setup(self) -> None:
            from synthfs.benchmarks.tools import ToolError

            raise ToolError("not installed here")

    ALL_TOOLS["missing"] = _Missing
    try:
        opts = Options(
            sizes=TINY, runs=1, passes=(Pass.PINNED,), tools=("native", "missing"),
            only_workloads=("S0",), out_dir=tmp_path / "out", tmpfs_dir=tmp_path / "t",
            install=False, quick=True, warmup=False, progress=False,
        )  # fmt: skip
        res = run_bench(opts)
    finally:
        del ALL_TOOLS["missing"]
    cell = res.cell(Pass.PINNED, "S0", "missing")
    assert cell is not None and cell.status is Status.SETUP and "not installed" in cell.error
    assert res.tools["missing"]["setup_error"] == "not installed here"


def test_generation_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, tmp_path / "ta", TINY)
    generate(b, tmp_path / "tb", TINY)

    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert tree(a) == tree(b)
    assert len(list((a / "tree").rglob("*.bin"))) == TINY.tree_files
    assert (a / "big.bin").stat().st_size == TINY.big_mib << 20
    stamp = (a / ".bench-stamp").stat().st_mtime_ns
    generate(a, tmp_path / "ta", TINY)  # unchanged sizes: kept
    assert (a / ".bench-stamp").stat().st_mtime_ns == stamp


def test_normalise_masks_only_what_it_names() -> None:
    wl = Workload("X", "x", Root.DISK, "true", mask=(r"^\d+(?=\t)",))
    assert wl.normalise("12\t/real/dir/tree\n", "/real/dir") == "<MASKED>\t<DATA>/tree"
    assert wl.normalise("300\n", "/real/dir") == "300"
    assert wl.render("cat {data}/f {}", "/a b") == "cat '/a b'/f {}"


def test_micro_boundary() -> None:
    from synthfs.benchmarks import micro

    try:
        b = micro.measure_supervisor("getpid", iterations=10)
    except NotImplementedError:
        return  # the stub: filled in with the interposer's per-phase timers
    assert isinstance(b, micro.Breakdown) and b.total_us > 0


def test_micro_guest_loop_runs_natively(tmp_path: Path) -> None:
    from synthfs.benchmarks import micro
    from synthfs.benchmarks.workloads import PYTHON

    (tmp_path / "x").write_text("x")
    for scenario in micro.GUEST_LOOPS:
        secs, err = micro._loop_seconds([PYTHON, "-c", micro._guest(scenario, str(tmp_path), 10)])
        assert err == "" and secs > 0


def test_micro_c_loop_runs_natively(tmp_path: Path) -> None:
    from synthfs.benchmarks import micro

    loop = micro._c_loop(str(tmp_path))
    if loop is None:
        pytest.skip("no C compiler")
    (tmp_path / "x").write_text("x")
    assert set(micro.C_LOOPS) == set(micro.GUEST_LOOPS)
    for op, path in micro.C_LOOPS.values():
        secs, err = micro._loop_seconds([loop, op, path.replace("{D}", str(tmp_path)), "10"])
        assert err == "" and secs > 0
    secs, err = micro._loop_seconds([loop, "stat", str(tmp_path / "missing"), "10"])
    assert secs == 0 and "exit 1" in err  # a loop whose call fails says so, never times it


def test_tools_are_described() -> None:
    for name, cls in ALL_TOOLS.items():
        assert cls.name == name and cls.label


@pytest.mark.ptrace
def test_quick_cli_synthfs_agrees_with_native_on_every_workload(
    tmp_path: Path, programs: None
) -> None:
    """`synthfs bench --quick --tools native,synthfs`: every workload (cat, find, du,
    tar, python, dd, sqlite3, git, make+gcc) gives native's output under synthfs."""
    args = _parse(
        [
            "--quick", "--tools", "native,synthfs", "--out", str(tmp_path / "out"),
            "--tmpfs", str(tmp_path / "tmpfs"), "--results-md", str(tmp_path / "R.md"),
            "--no-progress", "--no-install",
            *[f"--size={k}={v}" for k, v in TINY.to_dict().items()],
        ]
    )  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((tmp_path / "out" / "results-quick.json").read_text())
    cells = [c for c in data["cells"] if c["tool"] == "synthfs"]
    assert {c["workload"] for c in cells} == {w.id for w in workloads(TINY)}
    for cell in cells:
        assert cell["status"] == "ok", (cell["workload"], cell["error"])


def test_startup_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """`synthfs bench --startup`: every way of starting `true` runs and gets a row (no
    timing asserted)."""
    from synthfs.benchmarks import startup

    assert cli.main(_parse(["--startup", "--startup-runs", "1"])) == 0
    out = capsys.readouterr().out
    names = ["native", "synthfs --warm", "synthfs --agent", "synthfs --data"]
    if shutil.which("strace"):
        names.append("strace -f")
    for name in names:
        assert f"| {name} |" in out
    rows = startup.measure_startup(runs=2)
    assert sorted(r.tool for r in rows) == sorted(names)
    for r in rows:
        assert not r.error and len(r.wall) == len(r.cpu) == 2 and min(r.wall) > 0, r
