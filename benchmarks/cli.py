"""``synthfs bench``: run the workload suite under native, synthfs and the peers.

The subcommand shell: options in, :func:`benchmarks.harness.run_bench`, then
the JSON, the markdown table and the PNG chart out. ``--quick`` is the CI
smoke run (tiny sizes, one timed run, pinned pass only; under 2 minutes);
``--micro`` runs the supervisor micro-benchmark instead (benchmarks/micro.py);
``--startup`` the start-up benchmark (benchmarks/startup.py).

Trusts: its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["HELP", "configure", "main"]

HELP = "benchmark synthfs against native and peer tools"

DEFAULT_TOOLS = (
    "native,synthfs,synthfs-data,proot,strace,strace-bpf,runsc,bwrap,fuse,seccomp"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from synthfs.benchmarks.tools import ALL_TOOLS

    parser.add_argument(
        "--quick", action="store_true",
        help="CI smoke run: tiny sizes, 1 timed run, no warm-up, pinned pass only (< 2 min)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, help="timed runs per cell (default 5; --quick: 1)")
    parser.add_argument(
        "--tools", default=DEFAULT_TOOLS,
        help=f"comma-separated, from: {', '.join(ALL_TOOLS)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--workloads", default="", help="comma-separated ids (default: all)")
    parser.add_argument(
        "--passes", default="",
        help="pinned,unpinned (default: both; --quick: pinned)",
    )  # fmt: skip
    parser.add_argument(
        "--size", action="append", default=[], metavar="NAME=N",
        help="override one size (e.g. big_mib=64, tree_files=2000); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, help="seconds per run (default 600; --quick: 60)"
    )
    parser.add_argument(
        "--cell-budget", type=float, default=0.0, metavar="S",
        help="fewer timed runs (at least 1) for cells whose runs x warm-up exceed S seconds",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("synthfs-bench"),
        help="directory for data, JSON, markdown and chart (default ./synthfs-bench: "
        "never inside the installed package)",
    )  # fmt: skip
    parser.add_argument(
        "--tmpfs", type=Path,
        help="tmpfs directory for W4t (default: as root a private tmpfs mounted at "
        "OUT/tmpfs for the run, visible to runsc; else /dev/shm/synthfs-bench)",
    )  # fmt: skip
    parser.add_argument(
        "--results-md", type=Path,
        help="markdown output (default: OUT/RESULTS.md, or OUT/RESULTS-quick.md with "
        "--quick; the project's own figures: --results-md benchmarks/RESULTS.md)",
    )  # fmt: skip
    parser.add_argument(
        "--no-warmup", action="store_true",
        help="no warm-up run: the first timed run is the reference (implied by --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--report-from", action="append", type=Path, default=[], metavar="JSON",
        help="no run: write the markdown and chart from saved results (repeat to merge "
        "runs: tools missing from the first are added, each with its own run's native)",
    )  # fmt: skip
    parser.add_argument("--no-install", action="store_true", help="never apt-get missing tools")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--micro", action="store_true",
        help="run the supervisor micro-benchmark (time per trapped syscall) instead",
    )  # fmt: skip
    parser.add_argument(
        "--micro-iterations", type=int, default=20_000, help="loop length for --micro (20000)"
    )
    parser.add_argument(
        "--startup", action="store_true",
        help="time `true` natively, under strace -f, synthfs run --agent and synthfs run "
        "--data instead (wall and CPU, best and median)",
    )  # fmt: skip
    parser.add_argument(
        "--startup-runs", type=int, default=20, help="timed runs of each for --startup (20)"
    )
    parser.add_argument(
        "--micro-c", action="store_true",
        help="--micro with the loops in C (needs cc): no interpreter between the calls",
    )  # fmt: skip
    parser.add_argument(
        "--micro-unpinned", action="store_true", help="--micro without taskset -c 0"
    )


def _sizes(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from synthfs.benchmarks.workloads import Sizes

    sizes = Sizes.quick() if args.quick else Sizes.full()
    changes = {}
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in sizes.to_dict() or not value.isdigit():
            names = ", ".join(sizes.to_dict())
            raise SystemExit(f"synthfs bench: bad --size {item!r} (names: {names})")
        changes[name] = int(value)
    return sizes.scaled(**changes)


def main(args: argparse.Namespace) -> int:
    if args.micro:
        from synthfs.benchmarks import micro

        return micro.main(args)
    if args.startup:
        from synthfs.benchmarks import startup

        return startup.main(args)

    from synthfs.benchmarks import report
    from synthfs.benchmarks.harness import Options, Pass, run_bench

    if args.report_from:
        import json

        runs = []
        for p in args.report_from:
            try:
                runs.append(json.loads(p.read_text()))
            except (OSError, ValueError) as exc:  # missing, unreadable, not JSON
                why = exc.strerror if isinstance(exc, OSError) else f"not JSON ({exc})"
                print(f"synthfs bench: --report-from {p}: {why}", file=sys.stderr)
                return 2
        try:
            data = report.merge(*runs)
        except (KeyError, TypeError, AttributeError) as exc:
            print(f"synthfs bench: --report-from: not the results.json of a synthfs bench run "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        md_path = args.results_md or args.out.resolve() / "RESULTS.md"
        md_path.write_text(report.markdown(data))
        chart = report.plot(data, args.out.resolve() / "results.png")
        print(f"markdown: {md_path}\nchart: {chart}")
        return 0

    passes_arg = args.passes or ("pinned" if args.quick else "pinned,unpinned")
    try:
        passes = tuple(Pass(p.strip()) for p in passes_arg.split(",") if p.strip())
    except ValueError:
        print(f"synthfs bench: bad --passes {passes_arg!r} (pinned, unpinned)", file=sys.stderr)
        return 2
    opts = Options(
        sizes=_sizes(args),
        runs=args.runs or (1 if args.quick else 5),
        passes=passes,
        tools=tuple(t.strip() for t in args.tools.split(",") if t.strip()),
        only_workloads=tuple(w.strip() for w in args.workloads.split(",") if w.strip()),
        timeout=args.timeout or (60.0 if args.quick else 600.0),
        cell_budget=args.cell_budget,
        out_dir=args.out,
        tmpfs_dir=args.tmpfs,
        install=not args.no_install,
        quick=args.quick,
        warmup=not (args.quick or args.no_warmup),
        progress=not args.no_progress,
        partial_json=args.out.resolve() / ("partial-quick.json" if args.quick else "partial.json"),
    )
    import signal

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the harness: mounts, stacks, tools cleaned up

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background (SIG_IGN)
    try:
        results = run_bench(opts)
    except ValueError as exc:
        print(f"synthfs bench: {exc}", file=sys.stderr)
        return 2
    data = results.to_dict()
    out = args.out.resolve()
    stem = "results-quick" if args.quick else "results"
    stamp = results.meta["started"][:19].replace(":", "").replace("-", "")
    report.write_json(data, out / f"{stem}-{stamp}.json")
    report.write_json(data, out / f"{stem}.json")
    default_md = out / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    md_path = args.results_md or default_md
    md_path.write_text(report.markdown(data))
    chart = report.plot(data, out / f"{stem}.png")
    print(f"JSON: {out / f'{stem}.json'}")
    print(f"markdown: {md_path}")
    print(f"chart: {chart or 'not drawn (matplotlib missing: pip install synthfs[bench])'}")
    bad = [c for c in results.cells if c.tool == "native" and not c.ok]
    if bad:
        which = ", ".join(c.workload for c in bad)
        print(f"synthfs bench: native failed on {which}", file=sys.stderr)
        return 1
    return 0
