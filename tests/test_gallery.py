from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ecomarine import ConfigError, Gallery, GalleryError
from ecomarine.index import VectorIndex, faiss_available


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(g: Gallery, q: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
    """Naive reference: every image, max per individual, sort."""
    out = []
    ids = [r["individual_id"] for r in g.records()]
    for row in q:
        best: dict[str, float] = {}
        for emb, ind in zip(g.embeddings, ids, strict=True):
            s = float(emb @ row)
            best[ind] = max(best.get(ind, -2.0), s)
        out.append(sorted(best.items(), key=lambda kv: -kv[1])[:top_k])
    return out


@pytest.mark.parametrize("use_faiss", [False, True])
def test_search_equals_brute_force_random(use_faiss: bool) -> None:
    if use_faiss and not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(0)
    g = Gallery(use_faiss=use_faiss)
    emb = unit(rng, 600, 32)
    ids = [f"w{i % 70}" for i in range(600)]
    g.add(emb, ids, species=["beluga" if i % 2 else "orca" for i in range(600)])
    q = unit(rng, 25, 32)
    got = g.search(q, top_k=5)
    want = brute_force(g, q, 5)
    for matches, ref in zip(got, want, strict=True):
        assert [m.individual_id for m in matches] == [r[0] for r in ref]
        np.testing.assert_allclose([m.score for m in matches], [r[1] for r in ref], rtol=1e-5)
    assert g._get_index().backend == ("faiss" if use_faiss else "numpy")


def test_faiss_and_numpy_identical_on_real_embeddings(gate_dir: Path) -> None:
    if not faiss_available():
        pytest.skip("faiss not installed")
    from ecomarine import Identifier

    files = sorted((gate_dir / "positives" / "beluga_lateral").glob("*.jpg"))[:24]
    emb = Identifier.from_pretrained("embedded").embed(files)
    ids = [f"b{i // 3}" for i in range(len(files))]
    a, b = Gallery(use_faiss=False), Gallery(use_faiss=True)
    a.add(emb[4:], ids[4:])
    b.add(emb[4:], ids[4:])
    ra, rb = a.search(emb[:4], 5), b.search(emb[:4], 5)
    assert [[m.individual_id for m in r] for r in ra] == [[m.individual_id for m in r] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_allclose([m.score for m in x], [m.score for m in y], rtol=1e-5)
    assert brute_force(a, emb[:4], 5)[0][0][0] == ra[0][0].individual_id


def clustered(rng: np.random.Generator, n: int, d: int, per_id: int = 10) -> np.ndarray:
    """Gallery-like rows: photos of an individual scattered around its centre."""
    centres = unit(rng, n // per_id, d)
    x = centres[np.arange(n) % len(centres)] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_10(index: VectorIndex, db: np.ndarray, q: np.ndarray) -> float:
    exact = VectorIndex(db, use_faiss=False).search(q, 10)[1]
    got_s, approx = index.search(q, 10)
    # Scores are exact inner products of the rows returned, best first.
    np.testing.assert_allclose(got_s, np.einsum("qd,qkd->qk", q, db[approx]), rtol=1e-4, atol=1e-5)
    assert (np.diff(got_s, axis=1) <= 1e-6).all()
    return float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))


@pytest.mark.parametrize("kind", ["hnsw", "sq8"])
def test_approximate_recall_on_random_vectors(kind: str) -> None:
    """Recall@10 on random unit vectors, the hardest case (100k x 512 in benchmarks/)."""
    if not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(1)
    db, q = unit(rng, 20_000, 64), unit(rng, 200, 64)
    assert recall_at_10(VectorIndex(db, kind=kind), db, q) >= 0.95  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "sq8"])
def test_approximate_recall_on_gallery_like_vectors(kind: str) -> None:
    if not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(4)
    both = clustered(rng, 20_200, 64)
    db, q = both[:20_000], both[20_000:]
    index = VectorIndex(db, kind=kind)  # type: ignore[arg-type]
    if kind == "ivf":
        index.set_search(nprobe=64)
    assert recall_at_10(index, db, q) >= 0.95


def test_ivf_probe_that_finds_too_few_rows_falls_back_to_exact() -> None:
    if not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(2)
    db, q = unit(rng, 400, 16), unit(rng, 5, 16)
    index = VectorIndex(db, kind="ivf", nlist=10, nprobe=1)
    scores, idx = index.search(q, 100)  # more than one cell holds
    exact_s, _ = VectorIndex(db, use_faiss=False).search(q, 100)
    assert (idx >= 0).all()
    np.testing.assert_allclose(scores, exact_s, rtol=1e-5, atol=1e-6)


def test_index_settings_are_checked() -> None:
    db = unit(np.random.default_rng(3), 50, 8)
    with pytest.raises(ConfigError, match="index kind"):
        VectorIndex(db, kind="annoy")  # type: ignore[arg-type]
    if not faiss_available():
        with pytest.raises(ConfigError, match="needs FAISS"):
            VectorIndex(db, kind="sq8")
        return
    with pytest.raises(ConfigError, match="applies to the 'hnsw'"):
        VectorIndex(db, kind="sq8").set_search(ef_search=10)
    with pytest.raises(ConfigError, match=">= 1"):
        VectorIndex(db, kind="hnsw").set_search(ef_search=0)
    with pytest.raises(ConfigError, match="needs FAISS"):
        VectorIndex(db, kind="ivf", use_faiss=False)


def test_mean_aggregation_and_identify() -> None:
    g = Gallery()
    e = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    g.add(e, ["a", "a", "b", "c"], species=["orca", "orca", "beluga", None])
    q = np.array([[0.8, 0.6, 0]], np.float32)
    mx = g.search(q, top_k=3)[0]
    assert [m.individual_id for m in mx] == ["a", "b", "c"]
    assert mx[0].score == pytest.approx(0.96)  # best image of "a"
    assert mx[0].image_id == "img-000001"
    mean = g.search(q, top_k=3, aggregation="mean")[0]
    assert mean[0].score == pytest.approx((0.8 + 0.96) / 2)
    assert mean[0].image_id == "img-000001"
    g.new_individual_threshold = 0.97
    ident = g.identify(q)[0]
    assert ident.is_new_individual
    assert ident.individual_id is None
    assert ident.species == "orca"
    known = g.identify(q, threshold=0.5)[0]
    assert known.individual_id == "a"
    assert known.species_score is not None
    assert known.species_score > 0.5


def test_remove_rename_merge() -> None:
    g = Gallery()
    rng = np.random.default_rng(2)
    ids = g.add(unit(rng, 5, 4), ["a", "a", "b", "c", "c"])
    assert len(g) == 5
    assert g.individuals() == ["a", "b", "c"]
    assert g.remove(image_ids=[ids[0]]) == 1
    assert g.rename("b", "bee") == 1
    with pytest.raises(GalleryError, match="merge"):
        g.rename("a", "c")
    assert g.merge(["a", "bee"], into="c") == 2
    assert g.individuals() == ["c"]
    assert g.remove(individual_id="c") == 4
    assert len(g) == 0
    with pytest.raises(GalleryError):
        g.remove(individual_id="zzz")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.ones((2, 3)), ["a"]), "does not match"),
        ((np.full((1, 3), np.nan), ["a"]), "NaN"),
        ((np.zeros((1, 3)), ["a"]), "all-zero"),
        ((np.ones((1, 3)), ["new_individual"]), "new_individual"),
    ],
)
def test_add_validation(args: tuple[np.ndarray, list[str]], message: str) -> None:
    with pytest.raises(GalleryError, match=message):
        Gallery().add(*args)


def test_add_refuses_other_dim_and_duplicates() -> None:
    g = Gallery()
    g.add(np.ones((1, 3)), ["a"], image_ids=["x"])
    with pytest.raises(GalleryError, match="dimension"):
        g.add(np.ones((1, 4)), ["a"])
    with pytest.raises(GalleryError, match="duplicate"):
        g.add(np.ones((1, 3)), ["a"], image_ids=["x"])
    with pytest.raises(GalleryError, match="JSON"):
        g.add(np.ones((1, 3)), ["a"], metadata=[{"bad": object()}])


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    g = Gallery(fingerprint="abc123", new_individual_threshold=0.4)
    g.add(
        unit(rng, 50, 16),
        [f"w{i % 7}" for i in range(50)],
        species="beluga",
        metadata=[{"encounter": f"e{i % 11}", "lat": 60.5} for i in range(50)],
    )
    q = unit(rng, 5, 16)
    before = g.search(q, 3)
    g.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g", expected_fingerprint="abc123")
    assert loaded.search(q, 3) == before
    assert loaded.new_individual_threshold == 0.4
    assert loaded.records() == g.records()
    with pytest.raises(GalleryError, match="different model"):
        Gallery.load(tmp_path / "g", expected_fingerprint="zzz")
    # Saving again replaces the data files and leaves no stale ones.
    loaded.add(unit(rng, 1, 16), ["new-whale"])
    loaded.save(tmp_path / "g")
    assert len(list((tmp_path / "g").glob("embeddings-*"))) == 1
    assert len(Gallery.load(tmp_path / "g")) == 51


def test_corrupt_gallery_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    g = Gallery()
    g.add(unit(rng, 4, 8), ["a", "b", "c", "d"])
    folder = g.save(tmp_path / "g")
    emb_file = next(folder.glob("embeddings-*"))
    data = emb_file.read_bytes()
    emb_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(GalleryError, match="checksum"):
        Gallery.load(folder)
    emb_file.unlink()
    with pytest.raises(GalleryError, match="missing"):
        Gallery.load(folder)
    (folder / "gallery.json").write_text("{not json")
    with pytest.raises(GalleryError, match="unreadable manifest"):
        Gallery.load(folder)
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.load(tmp_path / "nothing")


def test_calibrate_new_individual_leave_encounter_out() -> None:
    rng = np.random.default_rng(5)
    centres = unit(rng, 30, 32)
    emb, ids, meta = [], [], []
    for i, c in enumerate(centres):
        encounters = 2 if i < 20 else 1  # ten individuals seen once: they play "new"
        for e in range(encounters):
            for _ in range(2):
                v = c + 0.25 * unit(rng, 1, 32)[0]
                emb.append(v / np.linalg.norm(v))
                ids.append(f"w{i}")
                meta.append({"encounter": f"w{i}-e{e}"})
    g = Gallery()
    g.add(np.array(emb), ids, metadata=meta)
    res = g.calibrate_new_individual()
    assert res.n_new == 20  # two images for each of the ten single-encounter whales
    assert res.roc_auc > 0.95
    assert res.map5 > res.map5_always_new
    assert g.new_individual_threshold == res.threshold


def test_interrupted_save_keeps_previous_gallery(tmp_path: Path) -> None:
    """Kill a saving process at random moments; the old gallery must always load."""
    folder = tmp_path / "g"
    rng = np.random.default_rng(6)
    g = Gallery()
    g.add(unit(rng, 10, 8), [f"w{i}" for i in range(10)])
    g.save(folder)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from ecomarine import Gallery
        g = Gallery.load({str(folder)!r})
        rng = np.random.default_rng(0)
        while True:
            x = rng.standard_normal((20000, 8)).astype(np.float32)
            g.add(x, ["x"] * len(x))
            g.save({str(folder)!r})
        """
    )
    for delay in (0.9, 1.3, 1.7, 2.2):
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        loaded = Gallery.load(folder)  # never raises: the manifest is swapped atomically
        assert len(loaded) >= 10
        manifest = json.loads((folder / "gallery.json").read_text())
        assert manifest["count"] == len(loaded)
