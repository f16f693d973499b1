"""Batch search vs a loop of searches (issue 11), through `brainy.connect`, and what
`import brainy` costs a cold start.

Data: the real MiniLM vectors (/work/shared/data/pypi-minilm.npz: 30,000 base,
the first `--queries` held-out queries), or Gaussian 384-d draws if absent.
Three layouts of one angular collection:

* `segments-5k`: six level-0 segments of 5,000 rows (below `exact_threshold`:
  scanned exactly, so a batch scans each once for all queries);
* `segments-5k@1.0`: the same at `recall_target=1.0` (every segment exact);
* `compacted`: one 30,000-row segment after compaction (calibrated: Annoy or a
  scan per target as measured at build; a batch then loops over its queries).

Per layout: queries/s of `search_batch(queries)` and of `[search(q) for q in
queries]`, the best of `--repeats` warm runs, and whether they answered the same.

Run: `python -m bench.search_batch [--queries 500]`; figures go to
`bench/results/search_batch.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import brainy

RESULTS = Path(__file__).resolve().parent / "results"
PYPI = Path("/work/shared/data/pypi-minilm.npz")
K = 10


def _data(queries: int) -> tuple[str, np.ndarray, np.ndarray]:
    if PYPI.exists():
        data = np.load(PYPI)
        return "pypi-minilm", data["base"].astype(np.float32), data["query"][:queries]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30_000, 384)).astype(np.float32)
    return "gaussian-384", base, rng.standard_normal((queries, 384)).astype(np.float32)


def _best(fn, repeats: int) -> float:
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        took.append(time.perf_counter() - began)
    return min(took)


def _measure(docs: brainy.Collection, queries: np.ndarray, repeats: int, **kw) -> dict:
    batch = docs.search_batch(queries, k=K, **kw)  # warm: segments in the cache
    loop = [docs.search(vector=q, k=K, **kw) for q in queries]
    same = [b.ids for b in batch] == [r.ids for r in loop]
    batch_s = _best(lambda: docs.search_batch(queries, k=K, **kw), repeats)
    loop_s = _best(lambda: [docs.search(vector=q, k=K, **kw) for q in queries], repeats)
    n = len(queries)
    return {
        "queries": n,
        "segments": docs.status()["segments"],
        "batch_qps": round(n / batch_s, 1),
        "loop_qps": round(n / loop_s, 1),
        "speedup": round(loop_s / batch_s, 2),
        "same_answers": same,
    }


def _import_ms(statement: str, runs: int = 15) -> float:
    """What `statement` imports, in ms: the fastest of `runs` fresh interpreters'
    `-X importtime` totals, less an empty program's (the interpreter's own)."""
    return round(_imports_us(statement, runs) - _imports_us("pass", runs)) / 1000


def _imports_us(statement: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        total = 0
        for line in out.splitlines():
            parts = line.split("|")
            # Top-level imports only (no indentation): their cumulative times add up.
            if len(parts) == 3 and not parts[2].startswith("  ") and "cumulative" not in line:
                total += int(parts[1])
        best = min(best, total)
    return best


def run(queries: int, repeats: int, workdir: Path) -> dict:
    name, base, query = _data(queries)
    results: dict = {"data": name, "rows": len(base), "k": K, "layouts": {}}
    ids = [str(i) for i in range(len(base))]
    with brainy.connect(f"file://{workdir / 'bucket'}", cache_dir=str(workdir / "cache")) as db:
        docs = db.create_collection("docs", dimension=base.shape[1], metric="angular")
        docs.upsert(ids, base, batch_size=5000)
        layouts = results["layouts"]
        layouts["segments-5k"] = _measure(docs, query, repeats)
        layouts["segments-5k@1.0"] = _measure(docs, query, repeats, recall_target=1.0)
        docs.compact(force=True)
        layouts["compacted"] = _measure(docs, query, repeats)
        for layout, row in layouts.items():
            print(f"{layout:>16}: {json.dumps(row)}")
    # Importing the package is what every function's cold start pays.
    results["import_ms"] = {
        "import brainy": _import_ms("import brainy"),
        "import brainy; brainy.Client": _import_ms("import brainy; brainy.Client"),
        "import brainy; brainy.connect": _import_ms("import brainy; brainy.connect", runs=3),
    }
    print("import (ms, best of runs):", json.dumps(results["import_ms"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brainy-bench-batch-") as tmp:
        results = run(args.queries, args.repeats, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_batch.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
