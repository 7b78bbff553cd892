"""Speed benchmarks on this machine's CPU (issue: performance). Not part of the test suite.

1. Pipeline throughput on real photos from the gate set plus large JPEGs (upscaled to
   4000x3000 and 8000x6000): ``Pipeline.predict_many`` against (a) a straightforward
   one-photo-at-a-time loop with the same networks and (b) the networks alone on
   pre-decoded, pre-resized batches (the ceiling). The gate threshold is set to 0 for
   this measurement so that every photo goes through both networks in all three.
2. Time to first prediction in a fresh process (import + load + one photo).
3. Gallery search latency, memory and recall@10 at 10k / 100k / 1M x 512.
4. Peak RSS of ``predict_many`` over 2,000 photos.

Medians of several runs. Writes ``benchmarks/results/speed.json`` and ``speed.md``.

Usage: python benchmarks/speed.py --data ../shared/data [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecomarine import Pipeline
from ecomarine.index import VectorIndex, faiss_available
from ecomarine.transforms import preprocess

CACHE = Path("benchmarks/cache")


def photo_set(data: Path, n_real: int) -> list[Path]:
    gate = data / "gate"
    real = sorted(p for p in gate.rglob("*.jpg"))[
        :: max(1, len(list(gate.rglob("*.jpg"))) // n_real)
    ][:n_real]
    CACHE.mkdir(parents=True, exist_ok=True)
    large = []
    for i, (w, h) in enumerate([(4000, 3000)] * 4 + [(8000, 6000)] * 2):
        out = CACHE / f"large_{w}x{h}_{i}.jpg"
        if not out.exists():
            Image.open(real[i]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(
                out, quality=90
            )
        large.append(out)
    return real + large


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def throughput(
    pipe: Pipeline, photos: list[Path], batch: int, workers: int, repeats: int
) -> dict[str, Any]:
    assert pipe.gate is not None
    gate, ident = pipe.gate, pipe.identifier
    gpp, ipp = gate.config.preprocess, ident.config.preprocess

    def reference() -> None:
        for p in photos:
            img = Image.open(p).convert("RGB")  # full decode, no draft mode
            g = torch.from_numpy(preprocess(img, gpp))[None]
            i = torch.from_numpy(preprocess(img, ipp))[None]
            gate.score_tensor(g)
            ident.embed_tensor(i)

    decoded = [Image.open(p).convert("RGB") for p in photos]
    g_all = torch.from_numpy(np.stack([preprocess(im, gpp) for im in decoded]))
    i_all = torch.from_numpy(np.stack([preprocess(im, ipp) for im in decoded]))
    del decoded

    def networks() -> None:
        for s in range(0, len(photos), batch):
            gate.score_tensor(g_all[s : s + batch])
            ident.embed_tensor(i_all[s : s + batch])

    def pipeline() -> None:
        n = sum(1 for _ in pipe.predict_many(photos, batch_size=batch, num_workers=workers))
        assert n == len(photos)

    pipeline()  # warm-up (thread pools, allocator)
    runs = {
        name: timed(fn, repeats)
        for name, fn in (("reference", reference), ("networks", networks), ("pipeline", pipeline))
    }
    rate = {k: len(photos) / statistics.median(v) for k, v in runs.items()}
    return {
        "photos": len(photos),
        "batch_size": batch,
        "decode_workers": workers,
        "images_per_s_median": {k: round(v, 2) for k, v in rate.items()},
        "pipeline_vs_reference": round(rate["pipeline"] / rate["reference"], 2),
        "pipeline_vs_networks_only": round(rate["pipeline"] / rate["networks"], 2),
        "runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh, offline Python process; return its stdout."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout


def gate_throughput(pipe: Pipeline, photos: list[Path], batch: int, repeats: int) -> dict[str, Any]:
    """The embedded gate alone: decode + score (``Gate.score``) and the network on batches."""
    assert pipe.gate is not None
    gate = pipe.gate
    real = [p for p in photos if "large_" not in p.name]
    pre = torch.from_numpy(
        np.stack([preprocess(Image.open(p).convert("RGB"), gate.config.preprocess) for p in real])
    )
    score = timed(lambda: gate.score(real, batch_size=batch, num_workers=2), repeats)
    net = timed(
        lambda: [gate.score_tensor(pre[s : s + batch]) for s in range(0, len(real), batch)], repeats
    )
    return {
        "photos": len(real),
        "batch_size": batch,
        "gate_score_images_per_s": round(len(real) / statistics.median(score), 2),
        "gate_network_images_per_s": round(len(real) / statistics.median(net), 2),
    }


def first_prediction(photo: Path, repeats: int) -> dict[str, Any]:
    code = (
        "import time; t=time.perf_counter(); from ecomarine import Pipeline; "
        f"p=Pipeline.from_pretrained('embedded'); p.predict(r'{photo}'); print(time.perf_counter()-t)"
    )
    times = []
    for _ in range(repeats):
        times.append(float(_run_python(code).strip().splitlines()[-1]))
    return {
        "seconds_median": round(statistics.median(times), 2),
        "runs_s": [round(t, 2) for t in times],
    }


def clustered(
    n: int, dim: int, rng: np.random.Generator, per_id: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery-like vectors: individuals' photos cluster around a centre."""
    centres = rng.standard_normal((max(1, n // per_id), dim)).astype(np.float32)
    idx = np.arange(n) % len(centres)
    x = centres[idx] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, len(centres), 200)] + 0.6 * rng.standard_normal((200, dim)).astype(
        np.float32
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def search_bench(sizes: list[int], dim: int = 512) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        db, queries = clustered(n, dim, rng)
        row: dict[str, Any] = {"n": n, "dim": dim, "vectors_mb": round(db.nbytes / 2**20, 1)}
        exact = VectorIndex(db, kind="flat")
        lat = []
        truth = []
        for q in queries:
            t0 = time.perf_counter()
            _, i = exact.search(q[None], 10)
            lat.append(time.perf_counter() - t0)
            truth.append(set(i[0].tolist()))
        row["exact_backend"] = exact.backend
        row["exact_ms_median"] = round(1000 * statistics.median(lat), 3)
        if faiss_available():
            t0 = time.perf_counter()
            approx = VectorIndex(db, kind="hnsw", hnsw_m=16, ef_search=64)
            row["hnsw_build_s"] = round(time.perf_counter() - t0, 1)
            lat, hits = [], []
            for q, t in zip(queries, truth, strict=True):
                t0 = time.perf_counter()
                _, i = approx.search(q[None], 10)
                lat.append(time.perf_counter() - t0)
                hits.append(len(set(i[0].tolist()) & t) / 10)
            row["hnsw_ms_median"] = round(1000 * statistics.median(lat), 3)
            row["hnsw_recall_at_10"] = round(float(np.mean(hits)), 4)
            del approx
        out.append(row)
        del db, exact
    return out


def peak_memory(photos: list[Path], n: int) -> dict[str, Any]:
    code = f"""
import itertools, resource
from ecomarine import Pipeline
photos = {[str(p) for p in photos]!r}
pipe = Pipeline.from_pretrained('embedded')
rss = []
for k, _ in enumerate(pipe.predict_many(itertools.islice(itertools.cycle(photos), {n}), batch_size=16)):
    if k % 250 == 0:
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(rss[1] if len(rss) > 1 else rss[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = _run_python(code)
    early, peak = (int(x) for x in out.split())
    return {
        "photos": n,
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_after_250_photos_mb": round(early / 1024, 1),
    }


def markdown(res: dict[str, Any]) -> str:
    t = res["throughput"]
    r = t["images_per_s_median"]
    lines = [
        f"Measured by `{res['command']}` on {res['machine']}.",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| one-at-a-time reference loop | {r['reference']} img/s |",
        f"| networks only (pre-decoded batches of {t['batch_size']}) | {r['networks']} img/s |",
        f"| `Pipeline.predict_many` ({t['decode_workers']} decode threads) | {r['pipeline']} img/s |",
        f"| pipeline / reference | {t['pipeline_vs_reference']}x |",
        f"| pipeline / networks only | {t['pipeline_vs_networks_only']}x |",
        f"| embedded gate alone: `Gate.score` on {res['gate']['photos']} real photos | {res['gate']['gate_score_images_per_s']} img/s |",
        f"| embedded gate alone: network on pre-decoded batches | {res['gate']['gate_network_images_per_s']} img/s |",
        f"| time to first prediction (fresh process) | {res['first_prediction']['seconds_median']} s |",
        f"| peak RSS, `predict_many` over {res['memory']['photos']} photos | {res['memory']['peak_rss_mb']} MB |",
    ]
    for row in res["search"]:
        line = f"| search {row['n']:,} x {row['dim']}: exact ({row['exact_backend']}) | {row['exact_ms_median']} ms/query |"
        lines.append(line)
        if "hnsw_ms_median" in row:
            lines.append(
                f"| search {row['n']:,} x {row['dim']}: HNSW | {row['hnsw_ms_median']} ms/query, "
                f"recall@10 {row['hnsw_recall_at_10']}, build {row['hnsw_build_s']} s |"
            )
    lines += [
        "",
        f"Throughput set: {t['photos']} photos (real gate-set photos plus 4 at 4000x3000 and 2 at 8000x6000); medians of {len(t['runs_s']['pipeline'])} runs. Search vectors are clustered like a gallery (5 photos per individual).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    photos = photo_set(args.data, 16 if args.quick else 40)
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    assert pipe.gate is not None
    pipe.gate.config = type(pipe.gate.config)(**{**pipe.gate.config.__dict__, "threshold": 0.0})
    res: dict[str, Any] = {
        "command": "python benchmarks/speed.py --data ../shared/data"
        + (" --quick" if args.quick else ""),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    res["throughput"] = throughput(
        pipe, photos, batch=16, workers=2, repeats=2 if args.quick else 3
    )
    print(json.dumps(res["throughput"], indent=1), flush=True)
    res["gate"] = gate_throughput(pipe, photos, batch=16, repeats=2 if args.quick else 3)
    print(res["gate"], flush=True)
    res["first_prediction"] = first_prediction(photos[0], 3)
    print(res["first_prediction"], flush=True)
    res["memory"] = peak_memory(photos, 200 if args.quick else 2000)
    print(res["memory"], flush=True)
    res["search"] = search_bench([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    print(res["search"], flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "speed.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / "speed.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
