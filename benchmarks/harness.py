"""The benchmark loop: every workload under every tool, interleaved, checked.

For each pass (pinned to CPU 0 with ``taskset -c 0``, then unpinned), for each
workload: one warm-up run per tool (native's output becomes the reference),
then N timed rounds, each round running every tool once in a rotated order so
that machine drift hits all tools alike. Before every run, untimed: the
workload's ``prepare`` (host side) and a wait until the helpers are idle
(:func:`quiesce`); after every run, untimed, its ``reset``
through the same tool, so that every run starts from the pristine tree. A
run counts only when it exits 0 and its normalised output equals native's; a
tool that fails is recorded with its error, never dropped.

In the pinned pass the harness itself and every process it started (a FUSE
daemon, an embedded synthfs agent) are pinned to CPU 0 too, so "everything on
one CPU" holds for helpers as well as the tool.

Trusts: the tools it runs (as the current user); it kills what it started.
"""

from __future__ import annotations

import contextlib
import enum
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from synthfs.benchmarks.tools import (
    SOURCE_ROOT,
    Context,
    Tool,
    ToolError,
    make_tools,
    source_commit,
)
from synthfs.benchmarks.workloads import Root, Sizes, Workload, generate, workloads

__all__ = [
    "Cell",
    "Options",
    "Pass",
    "Results",
    "RunRecord",
    "Status",
    "run_bench",
]

#: The environment every workload runs in, under every tool.
RUN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C",
    "LC_ALL": "C",
    "PYTHONDONTWRITEBYTECODE": "1",
}

OUTPUT_KEEP = 2000  # characters of output/error kept per run in the JSON


class Pass(enum.Enum):
    PINNED = "pinned"
    UNPINNED = "unpinned"


class Status(enum.Enum):
    OK = "ok"
    FAILED = "failed"  # non-zero exit
    WRONG = "wrong-output"  # exit 0, output differs from native's
    TIMEOUT = "timeout"
    SETUP = "setup-failed"  # the tool could not be installed or started
    SKIPPED = "skipped"  # warm-up failed: no timed runs
    NOREF = "no-reference"  # native failed: nothing to compare with


@attrs.define
class RunRecord:
    seconds: float
    status: Status
    exit: int | None = None
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    output: str = ""
    error: str = ""
    settle: float = 0.0  # untimed wait for idle helpers before the run

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["status"] = self.status.value
        return d


@attrs.define
class Cell:
    """One (pass, workload, tool): warm-up, timed runs, verdict."""

    pass_: Pass
    workload: str
    tool: str
    status: Status = Status.OK
    error: str = ""
    warmup: RunRecord | None = None
    runs: list[RunRecord] = attrs.Factory(list)
    planned: int = 0

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs if r.status is Status.OK]

    @property
    def ok(self) -> bool:
        return self.status is Status.OK and bool(self.times)

    def stats(self) -> tuple[float, float, float] | None:
        t = self.times
        if not self.ok:
            return None
        return statistics.median(t), min(t), max(t)

    def to_dict(self, native: Cell | None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pass": self.pass_.value,
            "workload": self.workload,
            "tool": self.tool,
            "status": self.status.value,
            "error": self.error,
            "n": len(self.times),
            "planned": self.planned,
            "warmup": self.warmup.to_dict() if self.warmup else None,
            "runs": [r.to_dict() for r in self.runs],
        }
        st = self.stats()
        if st:
            d.update(median=st[0], min=st[1], max=st[2])
            nst = native.stats() if native else None
            if nst and nst[0] > 0:
                d.update(ratio=st[0] / nst[0], ratio_min=st[1] / nst[0], ratio_max=st[2] / nst[0])
        return d


@attrs.define
class Options:
    sizes: Sizes = attrs.Factory(Sizes.full)
    runs: int = 5
    passes: tuple[Pass, ...] = (Pass.PINNED, Pass.UNPINNED)
    tools: tuple[str, ...] = ()
    only_workloads: tuple[str, ...] = ()  # empty: all
    timeout: float = 600.0
    cell_budget: float = 0.0  # seconds per cell; fewer timed runs when exceeded (0: off)
    out_dir: Path = Path("synthfs-bench")
    tmpfs_dir: Path | None = None  # None: a tmpfs the harness mounts (root) or /dev/shm
    install: bool = True
    quick: bool = False
    warmup: bool = True
    progress: bool = True
    partial_json: Path | None = None  # rewritten after every workload


@attrs.define
class Results:
    meta: dict[str, Any]
    tools: dict[str, dict[str, Any]]
    workloads: list[Workload]
    cells: list[Cell]

    def cell(self, pass_: Pass, wl: str, tool: str) -> Cell | None:
        for c in self.cells:
            if c.pass_ is pass_ and c.workload == wl and c.tool == tool:
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "tools": self.tools,
            "workloads": [_workload_dict(w) for w in self.workloads],
            "cells": [c.to_dict(self.cell(c.pass_, c.workload, "native")) for c in self.cells],
        }


def _workload_dict(w: Workload) -> dict[str, Any]:
    return {
        "id": w.id,
        "title": w.title,
        "root": w.root.value,
        "command": w.command,
        "reset": w.reset,
        "note": w.note,
    }


# ------------------------------------------------------------- affinity


def _descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def set_affinity_tree(cpus: set[int]) -> None:
    """Pin this process, its threads and every descendant's threads to ``cpus``."""
    for pid in _descendants(os.getpid()):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


# --------------------------------------------------------------- running


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def quiesce(max_wait: float = 5.0, step: float = 0.03) -> float:
    """Wait until the helpers (every live descendant: FUSE daemon, synthfs agent
    and server) use no CPU for two polls in a row; return the seconds waited.

    Without it a helper's after-work (rclone uploading or collecting garbage,
    an agent writing its cache index) lands on the next tool's run, and in the
    pinned pass on the same CPU: the tool that follows FUSE in the rotation
    (native, the way the rounds rotate) was measured up to 3x slow.
    """
    me = os.getpid()
    pids = [p for p in _descendants(me) if p != me]
    start = time.monotonic()
    if not pids:
        return 0.0
    last, still = _cpu_ticks(pids), 0
    while time.monotonic() - start < max_wait and still < 2:
        time.sleep(step)
        now = _cpu_ticks(pids)
        still = still + 1 if now == last else 0
        last = now
    return time.monotonic() - start


def _tail(text: str, n: int = OUTPUT_KEEP) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def run_once(argv: list[str], timeout: float) -> RunRecord:
    """Run ``argv`` once, timed (wall clock, perf_counter), output captured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=RUN_ENV,
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        return RunRecord(0.0, Status.FAILED, error=f"cannot start {argv[0]}: {exc}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout, or Ctrl-C: leave nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if not isinstance(exc, subprocess.TimeoutExpired):
            proc.wait()
            raise
        out, err = proc.communicate()
        elapsed = time.perf_counter() - start
        return RunRecord(
            elapsed, Status.TIMEOUT, proc.returncode, error=f"timeout after {timeout:.0f} s"
        )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode(errors="replace")
    etext = err.decode(errors="replace")
    status = Status.OK if proc.returncode == 0 else Status.FAILED
    error = ""
    if status is Status.FAILED:
        error = f"exit {proc.returncode}: " + " | ".join(etext.strip().splitlines()[-3:])
    return RunRecord(
        elapsed,
        status,
        proc.returncode,
        cpu_user=after.ru_utime - before.ru_utime,
        cpu_sys=after.ru_stime - before.ru_stime,
        output=text,
        error=_tail(error, 500) if error else _tail(etext, 300),
    )


class Progress:
    """One status line: pass, workload, tool, run, elapsed, ETA."""

    def __init__(self, total_runs: int, enabled: bool) -> None:
        self.total = total_runs
        self.done = 0
        self.enabled = enabled
        self.start = time.monotonic()
        self.known: dict[tuple[str, str], float] = {}
        self.tty = sys.stderr.isatty()

    def expect(self, remaining: list[tuple[str, str]]) -> float:
        avg = statistics.mean(self.known.values()) if self.known else 1.0
        return sum(self.known.get(k, avg) for k in remaining)

    def show(self, text: str, remaining: list[tuple[str, str]]) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        eta = self.expect(remaining)
        line = f"[{self.done}/{self.total} runs, {_hms(elapsed)}, ETA ~{_hms(eta)}] {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[: shutil.get_terminal_size().columns - 1])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def record(self, key: tuple[str, str], seconds: float) -> None:
        self.done += 1
        self.known[key] = seconds

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.0f}s"


# ------------------------------------------------------------------ main


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    osname = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": osname,
        "python": platform.python_version(),
        "hostname_hash": hash(platform.node()) & 0xFFFF,
    }


def _versions(tools: list[Tool]) -> dict[str, str]:
    cmds = {
        "proot": ["proot", "--version"],
        "strace": ["strace", "-V"],
        "strace-bpf": ["strace", "-V"],
        "runsc": ["runsc", "--version"],
        "bwrap": ["bwrap", "--version"],
        "fuse": ["rclone", "version"],
        "native": ["sh", "-c", "dpkg-query -W coreutils dash | tr '\\t\\n' '  '"],
    }
    out = {}
    for t in tools:
        cmd = cmds.get(t.name)
        if not cmd or not shutil.which(cmd[0]):
            continue
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
        lines = [ln for ln in lines if set(ln) - set(" _|/\\()-'.")]  # skip ASCII art
        lines = [" ".join(w for w in ln.split() if set(w) - set("_|/\\")) for ln in lines]
        out[t.name] = lines[0] if lines else ""
    return out


@contextlib.contextmanager
def _tools_running(tools: list[Tool], progress: Progress) -> Iterator[dict[str, str]]:
    errors: dict[str, str] = {}
    try:
        for t in tools:
            progress.message(f"setting up {t.label} ...")
            try:
                t.setup()
            except ToolError as exc:
                errors[t.name] = str(exc)
                progress.message(f"  {t.label}: {exc}")
            except Exception as exc:
                errors[t.name] = f"setup crashed: {exc!r}"
                progress.message(f"  {t.label}: setup crashed: {exc!r}")
        yield errors
    finally:
        for t in tools:
            t.teardown()


def run_bench(opts: Options) -> Results:
    out_dir = opts.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    disk_root = out_dir / ("data-quick" if opts.quick else "data")
    tmpfs_dir, mounted = _tmpfs_dir(opts, out_dir)
    tmpfs_root = tmpfs_dir / ("data-quick" if opts.quick else "data")
    wanted = set(opts.only_workloads)
    suite = [w for w in workloads(opts.sizes) if not wanted or w.id in wanted]
    ctx = Context(disk_root=disk_root, tmpfs_root=tmpfs_root, out_dir=out_dir, install=opts.install)
    tools = make_tools(list(opts.tools), ctx)

    cells_planned = sum(1 for _ in opts.passes for w in suite for t in tools if t.applies(w))
    total = cells_planned * (opts.runs + int(opts.warmup))
    progress = Progress(total, opts.progress)
    progress.message(f"generating data in {disk_root} and {tmpfs_root} ...")
    generate(disk_root, tmpfs_root, opts.sizes)

    original_affinity = os.sched_getaffinity(0)
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    cells: list[Cell] = []
    versions = _versions(tools)
    commit = source_commit()

    def results(finished: datetime | None, setup_errors: dict[str, str]) -> Results:
        meta = {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "started": started.isoformat(),
            "finished": (finished or datetime.now(UTC)).isoformat(),
            "complete": finished is not None,
            "machine": _machine(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "sizes": opts.sizes.to_dict(),
            "runs": opts.runs,
            "passes": [p.value for p in opts.passes],
            "quick": opts.quick,
            "timeout": opts.timeout,
            "cell_budget": opts.cell_budget,
            "warmup": opts.warmup,
            "disk_root": str(disk_root),
            "tmpfs_root": str(tmpfs_root),
            "argv": sys.argv,
            "synthfs_source": str(SOURCE_ROOT),
            "synthfs_commit": commit,
        }
        tool_info = {
            t.name: {
                "label": t.label,
                "note": t.note,
                "setup_error": setup_errors.get(t.name, ""),
                "version": versions.get(t.name, ""),
            }
            for t in tools
        }
        return Results(meta=meta, tools=tool_info, workloads=suite, cells=list(cells))

    errors: dict[str, str] = {}
    try:
        with _tools_running(tools, progress) as setup_errors:
            errors = setup_errors
            try:
                for pass_ in opts.passes:
                    set_affinity_tree({0} if pass_ is Pass.PINNED else original_affinity)
                    for wl in suite:
                        cells += _run_workload(
                            wl, pass_, tools, setup_errors, opts, progress, suite
                        )
                        if opts.partial_json is not None:  # survive an interrupted run
                            _save_partial(results(None, setup_errors), opts.partial_json)
            finally:
                set_affinity_tree(original_affinity)
    finally:
        if mounted:
            subprocess.run(["umount", str(tmpfs_dir)], capture_output=True, check=False)
    finished = datetime.now(UTC)
    progress.message(f"done in {_hms((finished - started).total_seconds())}")
    return results(finished, errors)


def _save_partial(res: Results, path: Path) -> None:
    import json

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res.to_dict(), indent=1) + "\n")
    tmp.replace(path)


def _tmpfs_dir(opts: Options, out_dir: Path) -> tuple[Path, bool]:
    """The tmpfs directory for W4t, and whether the harness mounted it.

    /dev/shm is invisible inside runsc (its /dev is its own), so as root the
    harness mounts a private tmpfs under the output directory for the run.
    """
    if opts.tmpfs_dir is not None:
        return opts.tmpfs_dir, False
    if os.geteuid() == 0:
        mnt = out_dir / "tmpfs"
        mnt.mkdir(exist_ok=True)
        if os.path.ismount(mnt):
            return mnt, False
        size = f"size={opts.sizes.w4_files * opts.sizes.w4_file_bytes * 4 + (64 << 20)}"
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", size, "synthfs-bench", str(mnt)],
            capture_output=True,
            check=False,
        )
        if p.returncode == 0:
            return mnt, True
    return Path("/dev/shm/synthfs-bench"), False


def _run_workload(
    wl: Workload,
    pass_: Pass,
    tools: list[Tool],
    setup_errors: dict[str, str],
    opts: Options,
    progress: Progress,
    suite: list[Workload],
) -> list[Cell]:
    active = [t for t in tools if t.applies(wl)]
    cells = {t.name: Cell(pass_, wl.id, t.name, planned=opts.runs) for t in active}
    for name, err in setup_errors.items():
        if name in cells:
            cells[name].status, cells[name].error, cells[name].planned = Status.SETUP, err, 0
    running = [t for t in active if cells[t.name].status is Status.OK]
    pin = ["taskset", "-c", "0"] if pass_ is Pass.PINNED else []
    reference: str | None = None

    per_cell = opts.runs + int(opts.warmup)

    def later() -> list[tuple[str, str]]:
        # (workload, tool) keys of every run still to come, for the ETA
        rest: list[tuple[str, str]] = []
        passes = list(opts.passes)
        idx = suite.index(wl)
        for p in passes[passes.index(pass_) :]:
            for w in suite[idx + 1 :] if p is pass_ else suite:
                rest += [(w.id, t.name) for t in tools if t.applies(w)] * per_cell
        for t in running:
            c = cells[t.name]
            pending_warmup = opts.warmup and c.warmup is None
            left = int(pending_warmup) + max(0, c.planned - len(c.runs))
            rest += [(wl.id, t.name)] * left
        return rest

    def one(tool: Tool, label: str) -> RunRecord:
        data = tool.data_path(wl.root) if wl.root is not Root.NONE else ""
        progress.show(f"{pass_.value} {wl.id} {wl.title} | {tool.label} | {label}", later())
        if wl.prepare is not None:
            wl.prepare(tool.ctx.root(wl.root))
        settle = quiesce()
        rec = run_once(pin + tool.argv(wl.render(wl.command, data), wl.root), opts.timeout)
        rec.settle = settle
        progress.record((wl.id, tool.name), rec.seconds)
        if wl.reset:
            # clean up through the same tool (untimed), so the next tool starts
            # from the pristine tree and a FUSE cache sees its own deletions
            r = run_once(pin + tool.argv(wl.render(wl.reset, data), wl.root), opts.timeout)
            if r.status is not Status.OK and rec.status is Status.OK:
                rec.status, rec.error = r.status, "clean-up failed: " + r.error
        if rec.status is Status.OK and reference is not None:
            got = wl.normalise(rec.output, data)
            if got != reference:
                rec.status = Status.WRONG
                rec.error = f"output differs from native's: got {got[:200]!r}"
                rec.error += f", want {reference[:200]!r}"
        rec.output = _tail(rec.output)
        return rec

    if wl.reset:  # leftovers of an interrupted earlier run, natively
        run_once(["sh", "-c", wl.render(wl.reset, str(tools[0].ctx.root(wl.root)))], opts.timeout)

    # warm-up: native first, its output is the reference (without warm-up,
    # e.g. --quick, this first run is also the first timed run)
    for tool in running:
        cell = cells[tool.name]
        rec = one(tool, "warm-up" if opts.warmup else f"run 1/{cell.planned}")
        if opts.warmup:
            cell.warmup = rec
        else:
            cell.runs.append(rec)
        if tool.name == "native" and rec.status is Status.OK:
            data = tool.data_path(wl.root) if wl.root is not Root.NONE else ""
            reference = wl.normalise(rec.output, data)
        if rec.status is not Status.OK:
            cell.status, cell.error, cell.planned = Status.SKIPPED, rec.error, 0
            if tool.name == "native":
                cell.status = rec.status
        elif opts.cell_budget > 0 and rec.seconds * opts.runs > opts.cell_budget:
            cell.planned = max(1, int(opts.cell_budget // max(rec.seconds, 1e-6)))
    if reference is None:
        for cell in cells.values():
            if cell.tool != "native" and cell.status is Status.OK:
                cell.status, cell.error = Status.NOREF, "native run failed: nothing to compare"
    # timed rounds, rotated order
    timed = [t for t in running if cells[t.name].status is Status.OK]
    for rnd in range(opts.runs):
        k = rnd % len(timed) if timed else 0
        for tool in timed[k:] + timed[:k]:
            cell = cells[tool.name]
            if len(cell.runs) >= cell.planned:
                continue
            rec = one(tool, f"run {len(cell.runs) + 1}/{cell.planned}")
            cell.runs.append(rec)
            if rec.status is not Status.OK and cell.status is Status.OK:
                cell.status, cell.error = rec.status, rec.error
    for cell in cells.values():
        first = cell.warmup or (cell.runs[0] if cell.runs else None)
        if cell.status is Status.SKIPPED and first is not None:
            cell.status = first.status  # report what actually happened
    return list(cells.values())
