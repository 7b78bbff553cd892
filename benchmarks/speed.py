"""Speed benchmarks on this machine's CPU (issue: performance). Not part of the test suite.

1. Pipeline throughput on real photos from the gate set plus large JPEGs (upscaled to
   4000x3000 and 8000x6000): ``Pipeline.predict_many`` against (a) a straightforward
   one-photo-at-a-time loop with the same networks and (b) the networks alone on
   pre-decoded, pre-resized batches (the ceiling). The gate threshold is set to 0 for
   this measurement so that every photo goes through both networks in all three.
2. Time to first prediction in a fresh process (import + load + one photo).
3. Gallery search latency and recall@10 at 10k / 100k / 1M x 512 on gallery-like vectors
   drawn from real embedding statistics: exact search, and for each approximate index
   kind a sweep of its search setting (the fastest with recall@10 >= 0.95 is reported).
4. Peak RSS of ``predict_many`` over 2,000 photos.

Medians of several runs. Writes ``benchmarks/results/speed.json`` and ``speed.md``.

Usage: python benchmarks/speed.py --data ../shared/data [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecomarine import Gate, Identifier, Pipeline
from ecomarine._fuse import BACKENDS, Traced, export_onnx
from ecomarine._gate_embedded import EmbeddedBackend
from ecomarine.config import PreprocessConfig
from ecomarine.index import VectorIndex, faiss_available

CACHE = Path("benchmarks/cache")
RUNTIMES = [b for b in BACKENDS if b != "torch"]  # the optional runtimes
ALL_PARTS = "throughput,gate,gatecost,first,memory,search,exact,precision"
BASELINE_GATE = Path("benchmarks/baselines/gate-log-probs")


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


def naive_preprocess(img: Image.Image, pp: PreprocessConfig) -> np.ndarray:
    """What a straightforward loop does: Pillow resize, NumPy normalise, CHW float32."""
    assert pp.interpolation == "bilinear"
    if pp.resize == "letterbox":  # keep the aspect, pad with the mean colour
        scale = min(pp.width / img.width, pp.height / img.height)
        inner = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        canvas = Image.new("RGB", (pp.width, pp.height), tuple(round(c * 255) for c in pp.mean))
        canvas.paste(
            img.resize(inner, Image.Resampling.BILINEAR),
            ((pp.width - inner[0]) // 2, (pp.height - inner[1]) // 2),
        )
        img = canvas
    else:
        img = img.resize((pp.width, pp.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, np.float32)
    arr = (arr / 255.0 - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def cpu_model() -> str:
    """The CPU's name and widest vector extensions (figures differ a lot between them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}; {', '.join(isa) or 'no AVX2'}"


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bare_onnxruntime_peer(
    gate_backend: EmbeddedBackend, ident: Identifier, photos: list[Path], batch: int
) -> Any:
    """The loop a user would write with timm and ONNX Runtime, as a peer to compare with.

    The same two networks exported once with ``torch.onnx.export`` and run by default
    ONNX Runtime sessions; photos decoded fully by Pillow, resized and normalised with
    NumPy, in batches.
    """
    import onnxruntime as ort

    def session(fn: Any, shape: tuple[int, ...]) -> Any:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = export_onnx(Traced(fn.__self__, fn), torch.zeros((1, *shape)))
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    gpp, ipp = gate_backend.model.config.preprocess, ident.config.preprocess
    flip = ident.config.test_time_flip
    gate_net = gate_backend.model
    g_sess = session(gate_net._imagenet_tuple, (3, gpp.height, gpp.width))
    i_sess = session(ident._all_kinds, (3, ipp.height, ipp.width))

    def run() -> None:
        for s in range(0, len(photos), batch):
            imgs = [Image.open(p).convert("RGB") for p in photos[s : s + batch]]
            g = np.stack([naive_preprocess(im, gpp) for im in imgs])
            i = np.stack([naive_preprocess(im, ipp) for im in imgs])
            if flip:  # the same work as the library: the mirror images too
                i = np.ascontiguousarray(np.concatenate([i, i[..., ::-1]]))
            g_sess.run(None, {"x": g})
            i_sess.run(None, {"x": i})

    return run


def throughput(
    pipe: Pipeline, photos: list[Path], batch: int, workers: int, repeats: int
) -> dict[str, Any]:
    assert pipe.gate is not None
    gate, ident = pipe.gate, pipe.identifier
    gpp, ipp = gate.config.preprocess, ident.config.preprocess
    backend = gate.backend
    assert isinstance(backend, EmbeddedBackend)

    nets = (backend.model, ident)

    def eager(on: bool) -> None:
        for net in nets:
            net.fused.enabled = not on

    def reference() -> None:
        # What a straightforward loop does: full decode, PIL resize, the same modules
        # called on one NCHW tensor at a time under no_grad (eager: no fused graphs).
        eager(True)
        with torch.no_grad():
            for p in photos:
                img = Image.open(p).convert("RGB")  # full decode, no draft mode
                g = torch.from_numpy(naive_preprocess(img, gpp))[None]
                i = torch.from_numpy(naive_preprocess(img, ipp))[None]
                backend.scores(g)
                if ident.config.test_time_flip:  # the same work: the mirror image too
                    e = torch.nn.functional.normalize(ident(torch.cat([i, i.flip(3)])), dim=1)
                    torch.nn.functional.normalize(e[:1] + e[1:], dim=1)
                else:
                    torch.nn.functional.normalize(ident(i), dim=1)
        eager(False)

    def library_one_at_a_time() -> None:
        # The same loop through the library's network calls (channels-last inputs).
        for p in photos:
            img = Image.open(p).convert("RGB")
            gate.score_tensor(torch.from_numpy(naive_preprocess(img, gpp))[None])
            ident.embed_tensor(torch.from_numpy(naive_preprocess(img, ipp))[None])

    decoded = [Image.open(p).convert("RGB") for p in photos]
    g_all = torch.from_numpy(np.stack([naive_preprocess(im, gpp) for im in decoded]))
    i_all = torch.from_numpy(np.stack([naive_preprocess(im, ipp) for im in decoded]))
    del decoded

    def networks() -> None:
        for s in range(0, len(photos), batch):
            gate.score_tensor(g_all[s : s + batch])
            ident.embed_tensor(i_all[s : s + batch])

    def networks_eager() -> None:
        # The same batches through the eager modules (BatchNorm not folded).
        eager(True)
        networks()
        eager(False)

    def pipeline() -> None:
        n = sum(1 for _ in pipe.predict_many(photos, batch_size=batch, num_workers=workers))
        assert n == len(photos)

    def on_backend(name: str, fn: Any) -> Any:
        # The same calls with ECOMARINE_BACKEND=name (sessions cached beside graphs).
        def run() -> None:
            os.environ["ECOMARINE_BACKEND"] = name
            try:
                fn()
            finally:
                os.environ.pop("ECOMARINE_BACKEND", None)

        return run

    backends = [b for b in RUNTIMES if importlib.util.find_spec(b)]
    on = {}
    for b in backends:
        on[f"networks_{b}"] = on_backend(b, networks)
        on[f"pipeline_{b}"] = on_backend(b, pipeline)
    for _ in range(3):  # build the sessions (a shape is exported once it comes back)
        for fn in on.values():
            fn()
    peer = (
        bare_onnxruntime_peer(backend, ident, photos, batch) if "onnxruntime" in backends else None
    )
    pipeline()  # warm-up (thread pools, allocator, oneDNN kernels)
    networks()
    variants = [
        ("reference", reference),
        ("library_one_at_a_time", library_one_at_a_time),
        ("networks_eager", networks_eager),
        ("networks", networks),
        ("pipeline", pipeline),
        *on.items(),
        *([("peer_timm_onnxruntime", peer)] if peer else []),
    ]
    # Round-robin, so that a slow spell of a shared machine hits every variant alike.
    runs: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            runs[name] += timed(fn, 1)
    rate = {k: len(photos) / statistics.median(v) for k, v in runs.items()}
    return {
        "photos": len(photos),
        "test_time_flip": ident.config.test_time_flip,
        "batch_size": batch,
        "decode_workers": workers,
        "images_per_s_median": {k: round(v, 2) for k, v in rate.items()},
        "pipeline_vs_reference": round(rate["pipeline"] / rate["reference"], 2),
        "pipeline_vs_library_one_at_a_time": round(
            rate["pipeline"] / rate["library_one_at_a_time"], 2
        ),
        "pipeline_vs_networks_only": round(rate["pipeline"] / rate["networks"], 2),
        "fused_vs_eager_networks": round(rate["networks"] / rate["networks_eager"], 2),
        **{
            key: value
            for b in backends
            for key, value in (
                (
                    f"{b}_vs_eager_networks",
                    round(rate[f"networks_{b}"] / rate["networks_eager"], 2),
                ),
                (f"{b}_vs_fused_networks", round(rate[f"networks_{b}"] / rate["networks"], 2)),
                (
                    f"pipeline_{b}_vs_its_networks",
                    round(rate[f"pipeline_{b}"] / rate[f"networks_{b}"], 2),
                ),
                (f"pipeline_{b}_vs_reference", round(rate[f"pipeline_{b}"] / rate["reference"], 2)),
                (
                    f"pipeline_{b}_vs_peer",
                    round(rate[f"pipeline_{b}"] / rate["peer_timm_onnxruntime"], 2)
                    if "peer_timm_onnxruntime" in rate
                    else None,
                ),
            )
        },
        "runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


def precision(pipe: Pipeline, photos: list[Path], batch: int, repeats: int) -> dict[str, Any]:
    """Lower precision on pre-decoded batches, against fp32 (each variant in a block).

    bfloat16: ``torch.autocast`` around the eager networks (gate and identifier; this CPU
    has AVX-512 BF16 and AMX). int8: ONNX Runtime's dynamic quantization (weights int8,
    activations quantized per batch; ``Conv`` and ``MatMul``) of the identifier, against
    the same ONNX model in fp32. Agreement: the identifier's embeddings against fp32
    eager (cosine) and the gate's score (largest difference).
    """
    import io
    import warnings

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert pipe.gate is not None
    gate, ident = pipe.gate, pipe.identifier
    backend = gate.backend
    assert isinstance(backend, EmbeddedBackend)
    decoded = [Image.open(p).convert("RGB") for p in photos]
    g_all = torch.from_numpy(
        np.stack([naive_preprocess(im, gate.config.preprocess) for im in decoded])
    )
    i_all = torch.from_numpy(
        np.stack([naive_preprocess(im, ident.config.preprocess) for im in decoded])
    )
    del decoded
    for net in (backend.model, ident):
        net.fused.enabled = False  # eager, so that autocast reaches every operation

    def networks(bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        embs, scores = [], []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for s in range(0, len(photos), batch):
                scores.append(torch.as_tensor(gate.score_tensor(g_all[s : s + batch])).float())
                embs.append(ident.embed_tensor(i_all[s : s + batch]).float())
        return torch.cat(embs), torch.cat(scores)

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ident = ident  # a submodule: its weights are exported as weights

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.ident(x), dim=1)

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
        torch.onnx.export(
            Embedding().eval(), (i_all[:2],), buf, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    fp32 = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    q_buf = io.BytesIO()
    src, dst = Path("/tmp/ecomarine-fp32.onnx"), Path("/tmp/ecomarine-int8.onnx")
    src.write_bytes(buf.getvalue())
    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=True,
    )
    q_buf.write(dst.read_bytes())
    int8 = ort.InferenceSession(q_buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def ort_embed(session: Any) -> torch.Tensor:
        out = [
            session.run(None, {"x": i_all[s : s + batch].numpy()})[0]
            for s in range(0, len(photos), batch)
        ]
        return torch.from_numpy(np.concatenate(out))

    ref_emb, ref_score = networks(False)
    bf_emb, bf_score = networks(True)
    ort_ref, ort_q = ort_embed(fp32), ort_embed(int8)
    variants = {
        "fp32 eager networks": lambda: networks(False),
        "bf16 autocast networks": lambda: networks(True),
        "identifier on onnxruntime fp32": lambda: ort_embed(fp32),
        "identifier on onnxruntime int8": lambda: ort_embed(int8),
    }
    # In blocks, each after a warm-up call: interleaved, every switch between bf16 and
    # fp32 made oneDNN rebuild its kernels and reorder the weights, which slowed both.
    runs: dict[str, list[float]] = {}
    for name, fn in variants.items():
        fn()
        runs[name] = timed(fn, repeats)
    for net in (backend.model, ident):
        net.fused.enabled = True
    rate = {k: round(len(photos) / statistics.median(v), 2) for k, v in runs.items()}

    def cos(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        c = (a * b).sum(1)
        return {"min": round(float(c.min()), 5), "mean": round(float(c.mean()), 5)}

    return {
        "photos": len(photos),
        "test_time_flip": ident.config.test_time_flip,
        "batch_size": batch,
        "images_per_s_median": rate,
        "bf16_vs_fp32": round(rate["bf16 autocast networks"] / rate["fp32 eager networks"], 2),
        "int8_vs_fp32_onnxruntime": round(
            rate["identifier on onnxruntime int8"] / rate["identifier on onnxruntime fp32"], 2
        ),
        "bf16_embedding_cosine": cos(bf_emb, ref_emb),
        "bf16_gate_score_max_diff": round(float((bf_score - ref_score).abs().max()), 4),
        "int8_embedding_cosine": cos(ort_q, ort_ref),
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
        np.stack(
            [naive_preprocess(Image.open(p).convert("RGB"), gate.config.preprocess) for p in real]
        )
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


def gate_cost(
    pipe: Pipeline, photos: list[Path], batch: int, workers: int, repeats: int
) -> dict[str, Any]:
    """The gate's share of ``predict_many`` time: shipped gate, earlier gate, and no gate.

    Each gate's cost per photo is its ``predict_many`` time minus the time without a gate
    (every photo goes through the identifier in all three: thresholds are 0).
    """
    shipped = pipe.gate
    assert shipped is not None
    baseline = Gate.from_pretrained(BASELINE_GATE, device="cpu")
    baseline.config = dataclasses.replace(baseline.config, threshold=0.0)
    variants: dict[str, Gate | None] = {"shipped": shipped, "baseline": baseline, "none": None}

    def run(gate: Gate | None) -> None:
        pipe.gate = gate
        n = sum(1 for _ in pipe.predict_many(photos, batch_size=batch, num_workers=workers))
        assert n == len(photos)

    for g in variants.values():
        run(g)  # warm-up: fused graphs, thread pools
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, g in variants.items():
            runs[name] += timed(lambda g=g: run(g), 1)  # type: ignore[misc]
    pipe.gate = shipped
    ms = {k: 1000 * statistics.median(v) / len(photos) for k, v in runs.items()}
    cost = {k: ms[k] - ms["none"] for k in ("shipped", "baseline")}
    return {
        "photos": len(photos),
        "ms_per_photo_median": {k: round(v, 2) for k, v in ms.items()},
        "gate_ms_per_photo": {k: round(v, 2) for k, v in cost.items()},
        "shipped_vs_baseline_gate_cost": round(cost["shipped"] / cost["baseline"], 2),
        "baseline": str(BASELINE_GATE),
        "runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
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


def embedding_statistics(data: Path, n_images: int = 1500) -> dict[str, np.ndarray]:
    """Between- and within-individual covariance of real embeddings (embedded model).

    Beluga gallery photos of individuals with at least three photos are embedded once
    (cached in ``benchmarks/cache``): synthetic catalogues drawn from these statistics
    have the neighbourhood structure of a real one, which random vectors do not.
    """
    cache = CACHE / "embedding_stats.npz"
    if cache.exists():
        return dict(np.load(cache))
    import csv

    from ecomarine import Identifier

    with (data / "beluga" / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["date"][:4] in ("2017", "2018")]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["whale_id"]] = counts.get(r["whale_id"], 0) + 1
    rows = [r for r in rows if counts[r["whale_id"]] >= 3][:n_images]
    emb = Identifier.from_pretrained("embedded", device="cpu").embed(
        [data / "beluga" / r["path"] for r in rows], batch_size=32, num_workers=2
    )
    labels = np.array([r["whale_id"] for r in rows])
    ids = sorted(set(labels.tolist()))
    means = np.stack([emb[labels == i].mean(0) for i in ids])
    residual = emb - means[np.searchsorted(ids, labels)]
    stats = {
        "mean": means.mean(0),
        "between": np.cov(means, rowvar=False),
        "within": np.cov(residual, rowvar=False),
        "n_images": np.array(len(rows)),
        "n_individuals": np.array(len(ids)),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **stats)
    return stats


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))).T.astype(np.float32)


def gallery_like(
    n: int, stats: dict[str, np.ndarray], rng: np.random.Generator, per_id: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` catalogue vectors (``per_id`` photos per individual) and 200 new photos of
    catalogued individuals, drawn from the real between/within covariances."""
    dim = len(stats["mean"])
    between, within = _sqrt_psd(stats["between"]), _sqrt_psd(stats["within"])
    centres = (
        stats["mean"].astype(np.float32)
        + rng.standard_normal((max(1, n // per_id), dim), dtype=np.float32) @ between
    )
    db = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32) @ within
        db[s:e] = centres[np.arange(s, e) % len(centres)] + noise
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    who = rng.integers(0, len(centres), 200)
    q = centres[who] + rng.standard_normal((200, dim), dtype=np.float32) @ within
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, q


def _probe(index: VectorIndex, queries: np.ndarray, truth: list[set[int]]) -> tuple[float, float]:
    """Median ms per single query and recall@10 against ``truth``."""
    lat, hits = [], []
    for q, t in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        _, i = index.search(q[None], 10)
        lat.append(time.perf_counter() - t0)
        hits.append(len(set(i[0].tolist()) & t) / 10)
    return round(1000 * statistics.median(lat), 3), round(float(np.mean(hits)), 4)


# Per approximate kind: the search setting swept (cheapest first) and its values.
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "hnsw": ("ef_search", (32, 64, 128, 256, 320, 384, 512)),
    "ivf": ("nprobe", (16, 64, 128, 256)),
    "sq8": ("refine", (1, 2, 4, 8)),
}


def sweep(
    index: VectorIndex,
    kind: str,
    queries: np.ndarray,
    truth: list[set[int]],
    plan: tuple[str, tuple[int, ...]] | None = None,
) -> list[dict[str, Any]]:
    """Every setting of the sweep (``plan`` or ``SWEEPS[kind]``) until recall@10 >= 0.99."""
    name, values = plan or SWEEPS[kind]
    out = []
    for v in values:
        index.set_search(**{name: v})
        ms, recall = _probe(index, queries, truth)
        out.append({name: v, "ms_per_query_median": ms, "recall_at_10": recall})
        if recall >= 0.99:
            break
    return out


def best_at(rows: list[dict[str, Any]], target: float = 0.95) -> dict[str, Any] | None:
    """The fastest setting with recall@10 >= ``target``."""
    ok = [r for r in rows if r["recall_at_10"] >= target]
    return min(ok, key=lambda r: r["ms_per_query_median"]) if ok else None


def search_bench(
    sizes: list[int], stats: dict[str, np.ndarray], kinds_by_size: dict[int, tuple[str, ...]]
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        db, queries = gallery_like(n, stats, rng)
        row: dict[str, Any] = {
            "n": n,
            "dim": db.shape[1],
            "vectors_mb": round(db.nbytes / 2**20, 1),
        }
        exact = VectorIndex(db, kind="flat")
        ms, _ = _probe(exact, queries, [set() for _ in queries])
        truth = [set(i.tolist()) for i in exact.search(queries, 10)[1]]
        row["exact_backend"] = exact.backend
        row["exact_ms_median"] = ms
        del exact
        row["approximate"] = {}
        if faiss_available():
            for kind in kinds_by_size.get(n, ()):
                t0 = time.perf_counter()
                index = VectorIndex(db, kind=kind)  # type: ignore[arg-type]
                build = round(time.perf_counter() - t0, 1)
                rows = sweep(index, kind, queries, truth)
                row["approximate"][kind] = {"build_s": build, "sweep": rows, "best": best_at(rows)}
                print(n, kind, row["approximate"][kind], flush=True)
                del index
        out.append(row)
        del db
    return out


def exact_search(n: int, dim: int, n_queries: int, repeats: int) -> dict[str, Any]:
    """Exact search, batched and single, against the bare arithmetic, interleaved runs."""
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    library = VectorIndex(db, kind="flat")  # the default: BLAS through PyTorch
    candidates: dict[str, Any] = {"library": library}
    if faiss_available():
        candidates["faiss IndexFlatIP"] = VectorIndex(db, kind="flat", use_faiss=True)
    candidates["numpy (argpartition)"] = VectorIndex(db, kind="flat", use_faiss=False)
    db_t, q_t = torch.from_numpy(db), torch.from_numpy(q)
    batched: dict[str, list[float]] = {name: [] for name in [*candidates, "bare product + topk"]}
    single: dict[str, list[float]] = {name: [] for name in [*candidates, "numpy matrix-vector"]}
    for _ in range(repeats):  # interleaved: every contender once per round
        for name, index in candidates.items():
            batched[name] += timed(lambda index=index: index.search(q, 50), 1)
        batched["bare product + topk"] += timed(lambda: torch.topk(q_t @ db_t.T, 50), 1)
    # Single queries in their own interleaved rounds (a few queries each), so that every
    # contender follows the same work: right after a 200-query batch, the batch's threads
    # and caches would weigh on whichever single query happened to come next.
    for _ in range(repeats):
        for name, index in candidates.items():
            for i in range(3):
                single[name] += timed(lambda index=index, i=i: index.search(q[i : i + 1], 50), 1)
        for i in range(3):
            single["numpy matrix-vector"] += timed(lambda i=i: db @ q[i], 1)
    batch_ms = {k: round(1000 * float(np.median(v)) / n_queries, 3) for k, v in batched.items()}
    single_ms = {k: round(1000 * float(np.median(v)), 2) for k, v in single.items()}
    return {
        "n": n,
        "dim": dim,
        "queries": n_queries,
        "repeats": repeats,
        "batched_ms_per_query": batch_ms,
        "single_ms": single_ms,
        "batched_vs_bare": round(batch_ms["library"] / batch_ms["bare product + topk"], 2),
        "single_vs_matvec": round(single_ms["library"] / single_ms["numpy matrix-vector"], 2),
    }


def peak_memory(photos: list[Path], n: int) -> dict[str, Any]:
    # VmHWM is the high-water mark of this process's own memory map. (ru_maxrss is not:
    # a child started by vfork + exec inherits the parent's peak as its starting value.)
    code = f"""
import itertools
from ecomarine import Gate, Pipeline
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])
photos = {[str(p) for p in photos]!r}
pipe = Pipeline.from_pretrained('embedded')
loaded = status('VmRSS:')
hwm = []
for k, _ in enumerate(pipe.predict_many(itertools.islice(itertools.cycle(photos), {n}), batch_size=16)):
    if k % 250 == 0:
        hwm.append(status('VmHWM:'))
print(loaded, hwm[1] if len(hwm) > 1 else hwm[0], status('VmHWM:'), status('VmRSS:'))
"""
    out = _run_python(code)
    loaded, early, peak, end = (int(x) for x in out.split())
    return {
        "photos": n,
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_rss_after_250_photos_mb": round(early / 1024, 1),
        "rss_after_loading_mb": round(loaded / 1024, 1),
        "rss_at_end_mb": round(end / 1024, 1),
    }


def backend_rows(t: dict[str, Any]) -> list[str]:
    """The optional runtimes' rows of the throughput table (those measured)."""
    r = t["images_per_s_median"]
    rows = []
    for b in RUNTIMES:
        if f"networks_{b}" not in r:
            continue
        rows += [
            f"| networks only, `ECOMARINE_BACKEND={b}` | {r[f'networks_{b}']} img/s |",
            f"| {b} / eager networks (/ fused) | {t[f'{b}_vs_eager_networks']}x "
            f"({t.get(f'{b}_vs_fused_networks', '-')}x) |",
            f"| `predict_many` on {b} | {r[f'pipeline_{b}']} img/s "
            f"({t[f'pipeline_{b}_vs_its_networks']}x its networks, "
            f"{t[f'pipeline_{b}_vs_reference']}x the reference"
            + (
                f", {t[f'pipeline_{b}_vs_peer']}x the timm + ONNX Runtime peer"
                if t.get(f"pipeline_{b}_vs_peer")
                else ""
            )
            + ") |",
        ]
    if "peer_timm_onnxruntime" in r:
        rows.append(
            "| peer: the same networks exported to ONNX, default ONNX Runtime sessions, "
            f"Pillow decode, batches | {r['peer_timm_onnxruntime']} img/s |"
        )
    return rows


def markdown(res: dict[str, Any]) -> str:
    t = res["throughput"]
    r = t["images_per_s_median"]
    lines = [
        f"Measured by `{res['command']}` on {res['machine']}"
        + "".join(f"; then `{r}`" for r in res.get("reruns", []))
        + ". "
        + (
            f"The throughput rows (down to the peer) come from the last throughput run, on "
            f"{t['machine']}: compare ratios, not rates, with other parts."
            if "machine" in t
            else ""
        ),
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| identifier's flip test-time augmentation (every loop below does its work) | "
        f"{'on' if t.get('test_time_flip') else 'off'} |",
        f"| one-at-a-time reference loop (full decode, NCHW, no_grad) | {r['reference']} img/s |",
        f"| one at a time through the library's network calls | {r['library_one_at_a_time']} img/s |",
        f"| networks only, eager (BatchNorm not folded) | {r.get('networks_eager', '-')} img/s |",
        f"| networks only (pre-decoded batches of {t['batch_size']}; fused graphs) | {r['networks']} img/s |",
        f"| fused / eager networks | {t.get('fused_vs_eager_networks', '-')}x |",
        f"| `Pipeline.predict_many` ({t['decode_workers']} decode threads) | {r['pipeline']} img/s |",
        f"| pipeline / reference | {t['pipeline_vs_reference']}x |",
        f"| pipeline / library one at a time | {t['pipeline_vs_library_one_at_a_time']}x |",
        f"| pipeline / networks only | {t['pipeline_vs_networks_only']}x |",
        *backend_rows(t),
        f"| embedded gate alone: `Gate.score` on {res['gate']['photos']} real photos | {res['gate']['gate_score_images_per_s']} img/s |",
        f"| embedded gate alone: network on pre-decoded batches | {res['gate']['gate_network_images_per_s']} img/s |",
        *(
            [
                f"| gate's cost in `predict_many`: shipped gate / earlier gate "
                f"({res['gate_cost']['gate_ms_per_photo']['shipped']} / "
                f"{res['gate_cost']['gate_ms_per_photo']['baseline']} ms per photo) | "
                f"{res['gate_cost']['shipped_vs_baseline_gate_cost']}x |"
            ]
            if "gate_cost" in res
            else []
        ),
        f"| time to first prediction (fresh process) | {res['first_prediction']['seconds_median']} s |",
        f"| peak RSS, `predict_many` over {res['memory']['photos']} photos | {res['memory']['peak_rss_mb']} MB "
        f"(after loading {res['memory']['rss_after_loading_mb']} MB, peak by photo 250 "
        f"{res['memory']['peak_rss_after_250_photos_mb']} MB) |",
        "",
        "Gallery search, one query at a time (median ms), recall@10 against exact search;",
        "for each approximate index the fastest setting with recall@10 >= 0.95:",
        "",
        "| catalogue | exact | approximate (best setting) | recall@10 | build |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in res["search"]:
        size = f"{row['n']:,} x {row['dim']} ({row['vectors_mb']} MB)"
        exact = f"{row['exact_ms_median']} ms ({row['exact_backend']})"
        if not row["approximate"]:
            lines.append(f"| {size} | {exact} | - | - | - |")
        for kind, a in row["approximate"].items():
            best = a["best"]
            if best is None:
                top = max(a["sweep"], key=lambda x: x["recall_at_10"])
                lines.append(
                    f"| {size} | {exact} | {kind}: none reached 0.95 | {top['recall_at_10']} | {a['build_s']} s |"
                )
                continue
            setting = ", ".join(
                f"{k}={v}"
                for k, v in best.items()
                if k not in ("ms_per_query_median", "recall_at_10")
            )
            lines.append(
                f"| {size} | {exact} | {kind} ({setting}): {best['ms_per_query_median']} ms | {best['recall_at_10']} | {a['build_s']} s |"
            )
    st = res["search_vectors"]
    lines += [
        "",
        f"Throughput set: {t['photos']} photos (real gate-set photos plus 4 at 4000x3000 and 2 at "
        f"8000x6000); medians of {len(t['runs_s']['pipeline'])} interleaved runs. The reference loop "
        "decodes fully, resizes with Pillow, normalises with NumPy and calls the same modules "
        "as the pipeline on one NCHW tensor at a time; the library's own calls use "
        "channels-last inputs (one more row, for comparison). The networks-only ceiling gets "
        "tensors prepared the same way, in batches.",
        f"Search vectors: gallery-like, {st['per_id']} photos per individual, drawn from the "
        f"between- and within-individual covariance of {st['n_images']} real beluga embeddings "
        f"({st['n_individuals']} whales, embedded model); 200 queries are new photos of catalogued "
        "individuals. Random vectors, the worst case, are in `ann_recall.md`.",
    ]
    pr = res.get("precision")
    if pr:
        rp = pr["images_per_s_median"]
        lines += [
            "",
            f"Lower precision, {pr['photos']} pre-decoded photos in batches of "
            f"{pr['batch_size']}, medians of runs in blocks (`--parts precision`); neither is "
            "enabled by default:",
            "",
            "| variant | img/s | agreement with fp32 |",
            "| --- | --- | --- |",
            f"| fp32 eager networks (gate + identifier) | {rp['fp32 eager networks']} | - |",
            f"| bf16 autocast networks | {rp['bf16 autocast networks']} | embedding cosine min "
            f"{pr['bf16_embedding_cosine']['min']}, mean {pr['bf16_embedding_cosine']['mean']}; "
            f"gate score max diff {pr['bf16_gate_score_max_diff']} |",
            f"| identifier on ONNX Runtime, fp32 | {rp['identifier on onnxruntime fp32']} | - |",
            f"| identifier on ONNX Runtime, dynamic int8 | {rp['identifier on onnxruntime int8']} "
            f"| embedding cosine min {pr['int8_embedding_cosine']['min']}, mean "
            f"{pr['int8_embedding_cosine']['mean']} |",
            "",
            f"bf16 / fp32: {pr['bf16_vs_fp32']}x; int8 / fp32 on ONNX Runtime: "
            f"{pr['int8_vs_fp32_onnxruntime']}x.",
        ]
    ex = res.get("exact_search")
    if ex:
        lines += [
            "",
            f"Exact search, {ex['n']:,} x {ex['dim']} unit vectors (random), medians of "
            f"{ex['repeats']} interleaved rounds: {ex['queries']} queries at once (ms per query), "
            "and one query at a time (ms; in rounds of their own, three queries per contender "
            "per round):",
            "",
            "| exact search | batched, ms/query | single, ms |",
            "| --- | --- | --- |",
        ]
        for name in ex["batched_ms_per_query"]:
            lines.append(
                f"| {name} | {ex['batched_ms_per_query'].get(name, '-')} | "
                f"{ex['single_ms'].get(name, '-')} |"
            )
        lines.append(f"| numpy matrix-vector | - | {ex['single_ms']['numpy matrix-vector']} |")
        lines += [
            "",
            f"The library's exact search: {ex['batched_vs_bare']}x the bare matrix product + "
            f"top-k when batched, {ex['single_vs_matvec']}x the NumPy matrix-vector product for "
            "one query.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--parts",
        default=ALL_PARTS,
        help="comma-separated subset of throughput,gate,gatecost,first,memory,search,exact,"
        "precision to rerun "
        "(the others are kept from the existing speed.json)",
    )
    parser.add_argument(
        "--no-test-time-flip",
        action="store_true",
        help="the identifier without its flip test-time augmentation (half the work)",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    photos = photo_set(args.data, 16 if args.quick else 40)
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    if args.no_test_time_flip:
        pipe.identifier.config = pipe.identifier.config.replace(test_time_flip=False)
    assert pipe.gate is not None
    pipe.gate.config = type(pipe.gate.config)(**{**pipe.gate.config.__dict__, "threshold": 0.0})
    previous = args.results / "speed.json"
    res: dict[str, Any] = json.loads(previous.read_text()) if args.parts != ALL_PARTS else {}
    command = (
        "python benchmarks/speed.py --data ../shared/data"
        + (" --quick" if args.quick else "")
        + (" --no-test-time-flip" if args.no_test_time_flip else "")
    )
    if args.parts == ALL_PARTS:
        res.update(command=command, reruns=[])
    else:
        res.setdefault("reruns", []).append(f"{command} --parts {args.parts}")
    res["machine"] = f"{os.cpu_count()} CPU cores ({cpu_model()}), torch {torch.__version__}"
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        res["throughput"] = throughput(
            pipe, photos, batch=16, workers=2, repeats=2 if args.quick else 7
        )
        res["throughput"]["machine"] = res["machine"]  # parts may come from other machines
        print(json.dumps(res["throughput"], indent=1), flush=True)
    if "gate" in parts:
        res["gate"] = gate_throughput(pipe, photos, batch=16, repeats=2 if args.quick else 3)
        print(res["gate"], flush=True)
    if "gatecost" in parts:
        res["gate_cost"] = gate_cost(
            pipe, photos, batch=16, workers=2, repeats=2 if args.quick else 5
        )
        print(json.dumps(res["gate_cost"], indent=1), flush=True)
    if "first" in parts:
        res["first_prediction"] = first_prediction(photos[0], 3)
        print(res["first_prediction"], flush=True)
    if "memory" in parts:
        res["memory"] = peak_memory(photos, 200 if args.quick else 2000)
        print(res["memory"], flush=True)
    if "precision" in parts:
        res["precision"] = precision(pipe, photos, batch=16, repeats=2 if args.quick else 5)
        print(json.dumps(res["precision"], indent=1), flush=True)
    if "exact" in parts:
        res["exact_search"] = exact_search(
            20_000 if args.quick else 100_000, 512, 200, 3 if args.quick else 7
        )
        print(json.dumps(res["exact_search"], indent=1), flush=True)
    if "search" in parts:
        stats = embedding_statistics(args.data)
        res["search_vectors"] = {
            "kind": "gallery-like (real beluga embedding covariances)",
            "per_id": 5,
            "n_images": int(stats["n_images"]),
            "n_individuals": int(stats["n_individuals"]),
        }
        sizes = [10_000] if args.quick else [10_000, 100_000, 1_000_000]
        # At 1M only HNSW: IVF already needs a fifth of its cells for 0.95 at 100k.
        kinds = {
            10_000: ("hnsw", "ivf", "sq8"),
            100_000: ("hnsw", "ivf", "sq8"),
            1_000_000: ("hnsw",),
        }
        res["search"] = search_bench(sizes, stats, kinds)
        print(res["search"], flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "speed.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / "speed.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
