"""What `make bench` writes besides bench.json: the recall/latency plot and the
Markdown summary.

`python -m bench.report [bench/results/bench.json]` renders them again from a
bench.json, also one an interrupted run left (`"partial": true`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MARKERS = {
    "brainy": "o",
    "exact-numpy": "*",
    "annoy": "s",
    "lancedb-ivf-pq": "^",
    "lancedb-ivf-hnsw-sq": "v",
}


def plot(results: dict[str, Any], path: Path) -> bool:
    """recall@10 against p50 latency (log), one panel per data set, one line per
    system; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return False
    sets = [
        name
        for name, systems in results["systems"].items()
        if any(run.get("points") for run in systems.values())
    ]
    if not sets:
        return False
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for system, run in results["systems"][name].items():
            points = sorted(run.get("points", []), key=lambda p: p["p50_ms"])
            if points:
                ax.plot(
                    [p["p50_ms"] for p in points],
                    [p["recall_at_10"] for p in points],
                    marker=MARKERS.get(system, "."),
                    label=system,
                )
        info = results["datasets"][name]
        ax.set_title(f"{name}: {info['rows']:,} x {info['dimension']}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("p50 latency per query (ms, log)")
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _setting(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items()) or "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def summary(results: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    lines = [f"# make bench — {results['started']} ({results['git']['commit'][:10]})", ""]
    machine = results["machine"]
    lines += [
        f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gb']} GB; load average "
        f"{machine['load_before']} before, {machine.get('load_after', '-')} after the run"
        + (" (interrupted: partial figures)." if results.get("partial") else "."),
        "",
        "| data | system | setting | recall@10 | p50 ms | p95 ms | queries | build s | on disk |",
        "|" + " --- |" * 9,
    ]
    for name, systems in results["systems"].items():
        for system, run in systems.items():
            if "skipped" in run or "error" in run:
                reason = run.get("skipped") or run.get("error")
                lines.append(f"| {name} | {system} | {reason} |" + " |" * 6)
                continue
            build = run["build"]
            for p in run["points"]:
                lines.append(
                    f"| {name} | {system} | {_setting(p['setting'])} | {p['recall_at_10']:.3f} "
                    f"| {p['p50_ms']:.2f} | {p['p95_ms']:.2f} | {p['queries']} "
                    f"| {build['seconds']:.1f} | {_mb(build['bytes'])} |"
                )
    lines += ["", "## Brainy around the query (default setting)", "", *_around(results)]
    lines += ["", "## Through the functions and the other benches", ""]
    lines += [f"* **{key}**: `{_short(results[key])}`" for key in _OTHER if key in results]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in results["stages"].items()]
    total = results.get("total_s", sum(results["stages"].values()))
    lines.append(f"| **total** | **{total:.1f}** |")
    return "\n".join(lines) + "\n"


_OTHER = ("functions", "http", "ingest", "store_requests")


def _cold(measured: dict[str, Any], store: str) -> str:
    if store not in measured:
        return "-"
    first, total = measured[store]["first_query"], measured[store]["collection"]
    whole = measured[store].get("first_query_whole_segments")
    line = f"{first['seconds']:.2f} s ({_mb(first['bytes'])} of {_mb(total['bytes'])} read"
    line += f", {first.get('loaded_bytes', 0) / 1e6:,.0f} MB loaded)"
    if whole:
        loaded = whole["bytes"] + whole.get("loaded_bytes", 0)
        line += f"; whole segments: {whole['seconds']:.2f} s ({_mb(loaded)})"
    return line


def _around(results: dict[str, Any]) -> list[str]:
    """QPS, warm requests and the cold first query per data set, as one table."""
    lines = [
        "| data | QPS 1 thread | QPS 2 threads (p50 / p99 ms) | store requests per warm query "
        "| cold first query, file | cold first query, moto S3 |",
        "|" + " --- |" * 6,
    ]
    for name in results.get("datasets", {}):
        extras = results.get("qps", {}).get(name, {})
        cold = results.get("coldstart", {}).get(name, {})
        if not extras and not cold:
            continue
        one, two = (extras.get("qps") or [{}, {}])[:2]
        lines.append(
            f"| {name} | {one.get('qps', '-')} | {two.get('qps', '-')} "
            f"({two.get('p50_ms', '-')} / {two.get('p99_ms', '-')}) "
            f"| {extras.get('warm_query_store_requests', '-') or 0} "
            f"| {_cold(cold, 'file')} | {_cold(cold, 's3_moto')} |"
        )
    return lines


def _short(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "bench.json"
    results = json.loads(path.read_text())
    plot(results, path.with_name("recall_latency.png"))
    text = summary(results)
    path.with_name("summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
