"""Approximate-index recall@10 against exact search on 100k random unit vectors (d=512).

Random vectors have no cluster structure, the hardest case for an approximate index.
Writes ``benchmarks/results/ann_recall.json``.

Usage: python benchmarks/ann_recall.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ecomarine.index import VectorIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    db = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = VectorIndex(db, kind="flat").search(q, 10)[1]
    t0 = time.perf_counter()
    index = VectorIndex(db, kind="hnsw", hnsw_m=32, ef_search=64)
    build = time.perf_counter() - t0
    rows = []
    for ef in (64, 256, 512, 1024):
        index._faiss.hnsw.efSearch = ef
        lat, hits = [], []
        for row, t in zip(q, truth, strict=True):
            s = time.perf_counter()
            got = index.search(row[None], 10)[1][0]
            lat.append(time.perf_counter() - s)
            hits.append(len(set(got.tolist()) & set(t.tolist())) / 10)
        rows.append(
            {
                "ef_search": ef,
                "recall_at_10": round(float(np.mean(hits)), 4),
                "ms_per_query_median": round(1000 * statistics.median(lat), 3),
            }
        )
        print(rows[-1], flush=True)
    result = {
        "command": f"python benchmarks/ann_recall.py --n {args.n}",
        "n": args.n,
        "dim": args.dim,
        "index": "faiss HNSW, M=32",
        "build_s": round(build, 1),
        "by_ef_search": rows,
    }
    out = Path("benchmarks/results/ann_recall.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
