"""Reports from :class:`benchmarks.harness.Results`: JSON, markdown, PNG chart.

Pure formatting, except the chart (matplotlib, imported only when drawn, with
the Agg backend: no display needed). Timings are printed as measured; a cell
that did not pass its output check shows its status, never a number.

Trusts: the results it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["markdown", "merge", "plot", "write_json"]

TIMES = "\u00d7"  # multiplication sign
DASH = "\u2013"  # en dash, for ranges

#: Tools that are not in the workload table proper, and why, for RESULTS.md.
NOT_MEASURED = {
    "Parrot (cctools `parrot_run`)": (
        "not installable here: Debian 12's `coop-computing-tools` (9.9-2+b4) ships "
        "`parrot_run`'s man page but not the program (checked with `dpkg -c`); building "
        "cctools from source was not attempted"
    ),
}


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def merge(first: dict[str, Any], *others: dict[str, Any]) -> dict[str, Any]:
    """One report from several runs: ``first`` as is, then the tools of each
    other run that ``first`` lacks, with that run's own native as an extra
    column (``native#2``...). Ratios stay those of each cell's own run; the
    tool notes say which run a column comes from. Passes and workloads are
    the first run's (a cell of another run outside them is left out)."""
    out = json.loads(json.dumps(first))
    out["meta"]["merged"] = []
    for k, other in enumerate(others, start=2):
        om = other["meta"]
        when = f"run #{k}, {om['date']}, load {om['load_before'][0]:.2f}/{om['load_after'][0]:.2f}"
        out["meta"]["merged"].append(
            {"run": k, "date": om["date"], "sizes": om["sizes"], "runs": om["runs"],
             "load_before": om["load_before"], "load_after": om["load_after"],
             "passes": om["passes"]}
        )  # fmt: skip
        if om["sizes"] != first["meta"]["sizes"]:
            when += ", OTHER SIZES: " + ", ".join(
                f"{n}={v}" for n, v in om["sizes"].items() if first["meta"]["sizes"].get(n) != v
            )
        rename = {"native": f"native#{k}"}
        for name, info in other["tools"].items():
            if name in out["tools"] and name != "native":
                continue
            new = rename.get(name, name)
            info = dict(info)
            info["note"] = (info["note"] or "the command as is") + f" [{when}]"
            if name == "native":
                info["label"] = f"native (run #{k})"
            rename[name] = new
            out["tools"][new] = info
        for c in other["cells"]:
            if c["tool"] in rename and c["pass"] in first["meta"]["passes"]:
                out["cells"].append({**c, "tool": rename[c["tool"]]})
        for pass_ in om["passes"]:  # a pass the first run lacks: taken whole, own native
            if pass_ in first["meta"]["passes"]:
                continue
            out["meta"]["passes"].append(pass_)
            out["meta"].setdefault("pass_from", {})[pass_] = when
            out["cells"] += [c for c in other["cells"] if c["pass"] == pass_]
    return out


def _secs(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.0f} ms" if x >= 0.01 else f"{x * 1000:.1f} ms"


def _ratio(x: float) -> str:
    fmt = ".0f" if x >= 100 else ".1f" if x >= 10 else ".2f"
    return f"{x:{fmt}}{TIMES}"


def _cells(data: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(c["pass"], c["workload"], c["tool"]): c for c in data["cells"]}


def _short_status(c: dict[str, Any]) -> str:
    return {
        "failed": "FAIL",
        "wrong-output": "WRONG",
        "timeout": "TIMEOUT",
        "setup-failed": "n/a (setup)",
        "no-reference": "no ref",
        "skipped": "skipped",
    }.get(c["status"], c["status"])


def markdown(data: dict[str, Any], title: str = "synthfs benchmark results") -> str:
    meta = data["meta"]
    tools = data["tools"]
    cells = _cells(data)
    wls = data["workloads"]
    names = list(tools)
    m = meta["machine"]
    out = [f"# {title}", ""]
    if meta.get("complete") is False:
        out += ["**Partial results: the run was interrupted; cells not reached are absent.**", ""]
    out += [
        f"Date: {meta['date']} (run {meta['started'][11:16]}{DASH}{meta['finished'][11:16]} UTC). "
        f"Machine: {m['cpus']} vCPU {m['cpu']}, {m['memory']} RAM, {m['os']}, "
        f"Linux {m['kernel']}. Load average before/after the run: "
        f"{meta['load_before'][0]:.2f} / {meta['load_after'][0]:.2f} (1 min).",
        "",
        ("Method: one warm-up then " if meta.get("warmup", True) else "Method: no warm-up, ")
        + f"up to {meta['runs']} timed runs per cell, interleaved across "
        "tools (each round runs every tool once, in a rotated order); wall-clock time of the "
        f"whole command including the tool's own start-up; median, min{DASH}max, and the ratio of "
        "medians to native's from the same pass. A run counts only if it exits 0 and its "
        "output (data path replaced by `<DATA>`) equals native's."
        + (
            f" Cells whose warm-up exceeded {meta['cell_budget']:.0f} s / {meta['runs']} got "
            "fewer timed runs (`n` in the detail table)."
            if meta.get("cell_budget")
            else ""
        ),
        "",
        f"synthfs measured at commit `{meta.get('synthfs_commit', '?')}`.",
        "",
        "Sizes: " + ", ".join(f"{k}={v}" for k, v in meta["sizes"].items()) + "."
        + (
            " **Quick run (CI smoke): tiny sizes, start-up dominates, the ratios say "
            "nothing about throughput.**"
            if meta.get("quick")
            else ""
        ),
        "",
        "Tools:",
        "",
    ]
    for t in tools.values():
        line = f"- **{t['label']}** — {t['note'] or 'the command as is, on the real directory'}"
        if t.get("version"):
            line += f" (`{t['version']}`)"
        if t.get("setup_error"):
            line += f". **Not measured: {t['setup_error']}**"
        out.append(line)
    for name, why in NOT_MEASURED.items():
        out.append(f"- **{name}** — not measured: {why}.")
    out.append("")

    for pass_ in meta["passes"]:
        heading = (
            "pinned (`taskset -c 0`: tool, helpers and harness on one CPU)"
            if pass_ == "pinned"
            else "unpinned (2 vCPUs)"
        )
        out += [f"## Ratio to native, {heading}", ""]
        if pass_ in meta.get("pass_from", {}):
            out += [f"This pass comes from another run: {meta['pass_from'][pass_]}.", ""]
        if meta.get("merged"):
            out += [
                "Columns from another run (see the tool notes) are ratios to *that* run's "
                "native, shown in its own column.",
                "",
            ]
        present = [n for n in names if any((pass_, w["id"], n) in cells for w in wls)]
        labels = " | ".join(tools[n]["label"] for n in present[1:])
        out.append(f"| workload | native | {labels} |")
        out.append("|---" * (len(present) + 1) + "|")
        for w in wls:
            row = [f"{w['id']} {w['title']}".replace("|", "\\|")]
            for n in present:
                c = cells.get((pass_, w["id"], n))
                if c is None:
                    row.append("—")
                elif "median" not in c:
                    row.append(_short_status(c))
                elif n.startswith("native"):
                    row.append(_secs(c["median"]))
                elif "ratio" in c:
                    row.append(_ratio(c["ratio"]))
                else:
                    row.append(_secs(c["median"]))
            out.append("| " + " | ".join(row) + " |")
        out += ["", "— : not applicable (see the workload notes).", ""]

    out += _targets(data)
    out += ["## Detail", ""]
    rng_head = f"min{DASH}max"
    head = f"| pass | workload | tool | median | {rng_head} | ratio ({rng_head}) | n | status |"
    out.append(head)
    out.append("|---|---|---|---|---|---|---|---|")
    for pass_ in meta["passes"]:
        for w in wls:
            for n in names:
                c = cells.get((pass_, w["id"], n))
                if c is None:
                    continue
                if "median" in c:
                    rng = f"{_secs(c['min'])}{DASH}{_secs(c['max'])}"
                    ratio = ""
                    if "ratio" in c:
                        lo, hi = _ratio(c["ratio_min"]), _ratio(c["ratio_max"])
                        ratio = f"{_ratio(c['ratio'])} ({lo}{DASH}{hi})"
                    med = _secs(c["median"])
                else:
                    rng = ratio = med = ""
                status = c["status"]
                if c["error"]:
                    status += ": " + c["error"].replace("|", "/").replace("\n", " ")[:160]
                row = [pass_, w["id"], tools[n]["label"], med, rng, ratio, str(c["n"]), status]
                out.append("| " + " | ".join(row) + " |")
    out += ["", "## Workloads", ""]
    for w in wls:
        line = f"- **{w['id']}** {w['title']}: `{w['command']}`"
        if w["reset"]:
            line += f" (reset before each run: `{w['reset']}`)"
        if w["note"]:
            line += f". {w['note']}"
        out.append(line.replace("\n", "⏎"))
    out.append("")
    return "\n".join(out)


#: issue #6's targets: workload -> maximum ratio to native for synthfs
RATIO_TARGETS = {
    "W1": 1.1, "W1c": 3.0, "W2": 10.0, "W3": 10.0, "W4d": 10.0, "W4t": 10.0, "W5": 2.5,
    "W6": 10.0, "W7a": 1.25, "W7b": 1.25, "W8a": 3.0, "W8b": 3.0, "W8c": 3.0,
}  # fmt: skip
#: start-up targets in seconds (median of `synthfs run -- true`)
STARTUP_TARGETS = {"synthfs": 0.15, "synthfs-data": 0.4}
#: the interposing peers synthfs must beat on every workload
INTERPOSERS = ("proot", "strace", "strace-bpf", "runsc")


def _targets(data: dict[str, Any]) -> list[str]:
    """Issue #6's targets against the synthfs cells, per pass (none: no lines)."""
    cells = _cells(data)
    if not any(c["tool"] == "synthfs" and "median" in c for c in data["cells"]):
        return []
    out = ["## synthfs against the targets of issue #6", ""]
    for pass_ in data["meta"]["passes"]:
        out += [f"### {pass_}", "", "| workload | target | synthfs | met | slower than |"]
        out.append("|---|---|---|---|---|")
        for w in data["workloads"]:
            c = cells.get((pass_, w["id"], "synthfs"))
            if c is None:
                continue
            peers = [
                data["tools"][p]["label"]
                for p in INTERPOSERS
                if "median" in cells.get((pass_, w["id"], p), {})
                and ("median" not in c or cells[pass_, w["id"], p]["median"] < c["median"])
            ]
            if w["id"] == "S0":
                for name, limit in STARTUP_TARGETS.items():
                    sc = cells.get((pass_, "S0", name))
                    if sc is None:
                        continue
                    got = _secs(sc["median"]) if "median" in sc else _short_status(sc)
                    met = "median" in sc and sc["median"] <= limit
                    label = data["tools"][name]["label"]
                    slower = ", ".join(peers) if name == "synthfs" else ""
                    out.append(
                        f"| S0 {label} start-up | ≤ {_secs(limit)} | {got} | "
                        f"{'yes' if met else 'NO'} | {slower} |"
                    )
                continue
            limit = RATIO_TARGETS.get(w["id"])
            if "ratio" not in c:
                got, met = _short_status(c), "NO"
            else:
                got = _ratio(c["ratio"])
                met = "yes" if limit is None or c["ratio"] <= limit else (
                    f"NO ({c['ratio'] / limit:.1f}{TIMES} over)"
                )
            extra = ""
            if w["id"] in ("W7a", "W7b"):
                floor = cells.get((pass_, w["id"], "seccomp"), {})
                if "median" in floor and "median" in c:
                    rel = c["median"] / floor["median"]
                    extra = f"; {_ratio(rel)} the bare filter (target ≤ 1.05{TIMES})"
            target = f"≤ {_ratio(limit)}" if limit else "—"
            out.append(f"| {w['id']} | {target} | {got}{extra} | {met} | {', '.join(peers)} |")
        out.append("")
    return out


def plot(data: dict[str, Any], path: Path) -> Path | None:
    """Grouped bar chart of ratios to native (log scale), one panel per pass."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cells = _cells(data)
    wls = [w["id"] for w in data["workloads"]]
    tools = [n for n in data["tools"] if not n.startswith("native")]
    passes = data["meta"]["passes"]
    fig, axes = plt.subplots(
        len(passes), 1, figsize=(max(8, len(wls) * 1.1), 4.2 * len(passes)), squeeze=False
    )
    width = 0.8 / max(1, len(tools))
    for ax, pass_ in zip(axes[:, 0], passes, strict=True):
        for i, name in enumerate(tools):
            xs, ys = [], []
            for j, w in enumerate(wls):
                c = cells.get((pass_, w, name))
                if c and "ratio" in c:
                    xs.append(j + (i - (len(tools) - 1) / 2) * width)
                    ys.append(c["ratio"])
            bars = ax.bar(xs, ys, width, label=data["tools"][name]["label"]) if xs else None
            for j, w in enumerate(wls):  # failures are marked, not left as gaps
                c = cells.get((pass_, w, name))
                if c and "ratio" not in c and c["status"] != "setup-failed":
                    x = j + (i - (len(tools) - 1) / 2) * width
                    color = bars.patches[0].get_facecolor() if bars else "black"
                    ax.plot([x], [1.0], marker="x", color=color, markersize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(wls)), wls)
        ax.set_ylabel("time / native (log)")
        ax.set_title(f"ratio to native, {pass_} (x on the 1.0 line: failed or wrong output)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize="small", ncol=3, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
