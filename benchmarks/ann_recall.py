"""Approximate-index recall@10 against exact search on 100k random unit vectors (d=512).

Random vectors have no neighbourhood structure: the hardest case for an approximate
index, and far from a real catalogue (see ``speed.py`` for gallery-like vectors). For
each approximate kind, its search setting is swept from cheap to thorough; reported are
the recall@10 and the median single-query latency of each setting, and the fastest one
reaching recall@10 >= 0.95. Writes ``benchmarks/results/ann_recall.json`` and ``.md``.

Usage: python benchmarks/ann_recall.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from speed import _probe, best_at, sweep

from ecomarine.index import VectorIndex

# Random vectors need far more work per query than real ones: longer sweeps.
RANDOM_SWEEPS = {
    "hnsw": ("ef_search", (64, 256, 1024, 2048)),
    "ivf": ("nprobe", (64, 128, 256, 512)),
    "sq8": ("refine", (1, 2, 4, 8)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    db = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = VectorIndex(db, kind="flat")
    exact_ms, _ = _probe(exact, q, [set() for _ in q])
    truth = [set(i.tolist()) for i in exact.search(q, 10)[1]]
    kinds: dict[str, object] = {}
    for kind in ("sq8", "hnsw", "ivf"):
        t0 = time.perf_counter()
        index = VectorIndex(db, kind=kind)  # type: ignore[arg-type]
        build = round(time.perf_counter() - t0, 1)
        rows = sweep(index, kind, q, truth, RANDOM_SWEEPS[kind])
        kinds[kind] = {"build_s": build, "sweep": rows, "best": best_at(rows)}
        print(kind, kinds[kind], flush=True)
        del index
    result = {
        "command": f"python benchmarks/ann_recall.py --n {args.n}",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "exact_ms_per_query_median": exact_ms,
        "kinds": kinds,
    }
    out = Path("benchmarks/results/ann_recall.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Recall@10 against exact search on {args.n:,} random unit vectors (d={args.dim}), "
        f"{args.queries} random queries, one at a time; exact FAISS search: {exact_ms} ms per "
        f"query. From `{result['command']}`:",
        "",
        "| index | setting | recall@10 | ms per query | build |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, info in kinds.items():
        assert isinstance(info, dict)
        name = RANDOM_SWEEPS[kind][0]
        for row in info["sweep"]:
            mark = " (fastest >= 0.95)" if row == info["best"] else ""
            lines.append(
                f"| {kind} | {name}={row[name]}{mark} | {row['recall_at_10']} | "
                f"{row['ms_per_query_median']} | {info['build_s']} s |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
