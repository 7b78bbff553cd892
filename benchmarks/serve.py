"""Load on the HTTP service, side by side with the library's own ceiling, in one run.

The service (``ecomarine serve``, embedded model and gate) runs in its own process on
127.0.0.1; ``--clients`` threads here post ``--photos`` real photos of the gate set to
``/v1/predict``, one photo per request, as independent clients would. Reported: the
service's throughput and p50/p95/p99 request latency, and the in-process ceiling --
``Pipeline.predict_many`` over the same photos (as bytes) in this process at its best
batch size (8, 16 or 32), measured before and after the load (median). The service's batching is what lets it approach the
ceiling: one photo per request, many requests per forward pass.

Writes ``benchmarks/results/serve.json`` and ``serve.md``.

Usage: python benchmarks/serve.py --data ../shared/data [--clients 8] [--photos 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ecomarine import Pipeline
from ecomarine.serve import free_port

CEILING_BATCHES = (8, 16, 32)


def photo_bytes(data: Path, n: int) -> list[bytes]:
    files = sorted((data / "gate").rglob("*.jpg"))
    picked = [files[i % len(files)] for i in range(n)]
    return [p.read_bytes() for p in picked]


def ceiling(photos: list[bytes], model: str) -> dict[int, float]:
    """``predict_many`` photos/s at each batch size (the best one is the ceiling)."""
    pipe = Pipeline.from_pretrained(model, device="cpu")
    out = {}
    for batch in CEILING_BATCHES:
        list(pipe.predict_many(photos[: 4 * batch], batch_size=batch))  # warm-up: fused graphs
        start = time.perf_counter()
        n = sum(1 for _ in pipe.predict_many(photos, batch_size=batch))
        out[batch] = round(n / (time.perf_counter() - start), 2)
    return out


def start_server(port: int, batch: int, wait_ms: float, model: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "ecomarine", "serve", "--port", str(port),
        "--max-batch", str(batch), "--max-wait-ms", str(wait_ms), "--model", model,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


def load(url: str, photos: list[bytes], clients: int) -> dict[str, Any]:
    latencies: list[float] = []

    def client(share: list[bytes]) -> list[float]:
        out = []
        with httpx.Client(timeout=120) as http:
            for data in share:
                t0 = time.perf_counter()
                r = http.post(
                    f"{url}/v1/predict", content=data, headers={"content-type": "image/jpeg"}
                )
                out.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
        return out

    shares = [photos[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for part in pool.map(client, shares):
            latencies += part
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "images_per_s": round(len(photos) / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p95": round(float(np.percentile(ms, 95)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model", default="embedded", help="served and measured in process")
    parser.add_argument("--name", default="serve", help="results file name")
    args = parser.parse_args()
    photos = photo_bytes(args.data, args.photos)
    port = free_port()
    before = ceiling(photos, args.model)
    proc = start_server(port, args.max_batch, args.max_wait_ms, args.model)
    try:
        url = f"http://127.0.0.1:{port}"
        load(url, photos[:48], args.clients)  # warm-up: the server's fused graphs
        served = load(url, photos, args.clients)
        stats = httpx.get(f"{url}/v1/model").json()["served"]
    finally:
        proc.terminate()
        proc.wait(60)
    after = ceiling(photos, args.model)
    best = max(CEILING_BATCHES, key=lambda b: before[b] + after[b])
    ceiling_rate = statistics.median([before[best], after[best]])
    result = {
        "command": f"python benchmarks/serve.py --data ../shared/data --clients {args.clients} "
        f"--photos {args.photos}"
        + (f" --model {args.model}" if args.model != "embedded" else "")
        + (f" --name {args.name}" if args.name != "serve" else ""),
        "machine": f"{os.cpu_count()} CPU cores",
        "clients": args.clients,
        "photos": args.photos,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "service": served,
        "service_photos_per_forward_pass": round(stats["photos"] / max(stats["batches"], 1), 1),
        "ceiling_predict_many_images_per_s": {
            "by_batch_size_before": before,
            "by_batch_size_after": after,
            "best_batch_size": best,
            "median_at_best": round(ceiling_rate, 2),
        },
        "service_vs_ceiling": round(served["images_per_s"] / ceiling_rate, 2),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lat = served["latency_ms"]
    md = [
        f"From `{result['command']}` on {result['machine']}: the service in its own process on "
        f"127.0.0.1, {args.clients} client threads posting one photo per request to "
        "`/v1/predict`; the ceiling is `Pipeline.predict_many` over the same photos in "
        f"process at its best batch size ({best}; 8, 16 and 32 tried), before and after "
        "the load (median).",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| service throughput | {served['images_per_s']} photos/s |",
        f"| request latency p50 / p95 / p99 | {lat['p50']} / {lat['p95']} / {lat['p99']} ms |",
        f"| photos per forward pass in the service | {result['service_photos_per_forward_pass']} |",
        f"| in-process `predict_many` ceiling | {ceiling_rate:.2f} photos/s |",
        f"| service / ceiling | {result['service_vs_ceiling']}x |",
    ]
    (args.results / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
