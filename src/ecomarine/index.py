"""Nearest-neighbour search over unit vectors: exact (NumPy or FAISS) or approximate.

All indexes answer the same question: the ``k`` rows of a matrix with the largest inner
product with each query (cosine similarity, since rows are unit-norm). The NumPy and
FAISS exact indexes return identical neighbours; the approximate ones (FAISS only) trade
a little recall for speed on large catalogues:

* ``"hnsw"``: a navigable small-world graph; fastest on real (clustered) embeddings.
* ``"ivf"``: k-means cells, ``nprobe`` of them scanned per query; cheap to build, so it
  suits catalogues of a million images.
* ``"sq8"``: every vector scanned at 8 bits per value, then the best ``refine * k``
  re-ranked exactly; it needs no neighbourhood structure, so it keeps its recall even on
  unstructured vectors, at a few times the speed of the exact scan.

Scores returned by every kind are exact inner products of the returned rows.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

import numpy as np

from .errors import ConfigError

__all__ = ["INDEX_KINDS", "IndexKind", "VectorIndex", "faiss_available"]

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf", "sq8"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
_CHUNK_BYTES = 64 * 1024 * 1024  # similarity block size: keeps memory bounded
_FEW_QUERIES = 4  # up to this many queries at once, NumPy; more, PyTorch


def faiss_available() -> bool:
    """True when the optional ``faiss`` package imports."""
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class VectorIndex:
    """Top-k inner-product search over a fixed matrix.

    Args:
        vectors: ``(N, D)`` float32 unit-norm rows.
        kind: ``"flat"`` (exact), or ``"hnsw"``, ``"ivf"``, ``"sq8"`` (approximate; they
            need FAISS). See the module docstring for when to use which.
        use_faiss: ``None``: exact (``"flat"``) search runs as a batched BLAS matrix
            product in PyTorch (measured fastest here, ``benchmarks/speed.py``) and the
            approximate kinds use FAISS; True forces FAISS, False forces NumPy.
        hnsw_m: HNSW graph degree. ef_search: HNSW search breadth (higher: better
            recall, slower).
        nlist: IVF cells (default about ``4 * sqrt(N)``). nprobe: IVF cells scanned per
            query (default ``nlist / 16``, at least 32).
        refine: ``sq8`` re-ranks ``refine * k`` candidates exactly.
    """

    def __init__(
        self,
        vectors: np.ndarray[Any, np.dtype[np.float32]],
        *,
        kind: IndexKind = "flat",
        use_faiss: bool | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int | None = None,
        refine: int = 4,
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.kind = kind
        if kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
        if hnsw_m < 2 or ef_search < 1 or refine < 1:
            raise ConfigError("hnsw_m must be >= 2, ef_search and refine >= 1")
        # Exact search needs no FAISS by default: a BLAS matrix product is faster here.
        want_faiss = (kind != "flat" and faiss_available()) if use_faiss is None else use_faiss
        if kind != "flat" and not want_faiss:
            raise ConfigError(f"the approximate {kind!r} index needs FAISS: pip install faiss-cpu")
        self._faiss: Any = None
        self._torch = use_faiss is None and kind == "flat"
        if want_faiss and len(self.vectors):
            self._faiss = _build_faiss(self.vectors, kind, hnsw_m, ef_search, nlist, nprobe, refine)

    @property
    def backend(self) -> str:
        """``"faiss"``, ``"torch"`` (BLAS matrix product) or ``"numpy"``."""
        if self._faiss is not None:
            return "faiss"
        return "torch" if self._torch else "numpy"

    def search(
        self, queries: np.ndarray[Any, Any], k: int
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
        """Return ``(scores, indices)``, each ``(Q, k')`` with ``k' = min(k, N)``, best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(self.vectors)
        k = min(k, n)
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self._faiss is None:
            # A few queries are a matrix-vector product bound by memory speed, where
            # NumPy's argpartition wins; batches are BLAS-bound, where torch.topk wins
            # (both measured by benchmarks/speed.py --parts exact).
            if self._torch and len(q) > _FEW_QUERIES:
                return _torch_topk(q, self.vectors, k)
            return _numpy_topk(q, self.vectors, k)
        scores, idx = self._faiss.search(q, k)
        scores, idx = scores.astype(np.float32), idx.astype(np.int64)
        short = np.flatnonzero((idx < 0).any(axis=1))
        if len(short):  # an IVF probe found fewer than k rows: answer those exactly
            scores[short], idx[short] = _numpy_topk(q[short], self.vectors, k)
        return scores, idx

    def set_search(
        self, *, ef_search: int | None = None, nprobe: int | None = None, refine: int | None = None
    ) -> None:
        """Change the speed/recall trade-off of an approximate index without rebuilding it.

        Raises:
            ConfigError: For a setting the index kind does not have, or one below 1.
        """
        settings = {"ef_search": ef_search, "nprobe": nprobe, "refine": refine}
        owner = {"ef_search": "hnsw", "nprobe": "ivf", "refine": "sq8"}
        for name, value in settings.items():
            if value is None:
                continue
            if owner[name] != self.kind:
                raise ConfigError(f"{name} applies to the {owner[name]!r} index, not {self.kind!r}")
            if value < 1:
                raise ConfigError(f"{name} must be >= 1")
            if self._faiss is None:
                continue
            if name == "ef_search":
                self._faiss.hnsw.efSearch = value
            elif name == "nprobe":
                self._faiss.nprobe = min(value, self._faiss.nlist)
            else:
                self._faiss.k_factor = float(value)


def _build_faiss(
    db: np.ndarray[Any, np.dtype[np.float32]],
    kind: str,
    hnsw_m: int,
    ef_search: int,
    nlist: int | None,
    nprobe: int | None,
    refine: int,
) -> Any:
    import faiss  # noqa: PLC0415 - optional dependency

    n, dim = db.shape
    ip = faiss.METRIC_INNER_PRODUCT
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, ip)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        index.hnsw.efSearch = ef_search
        index.add(db)
        return index
    if kind == "ivf":
        # k-means wants >= 39 points per cell; small catalogues get fewer cells.
        cells = nlist or round(4 * np.sqrt(n))
        cells = max(1, min(cells, n // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, ip)
        sample = db
        if n > 64 * cells:  # k-means on a fixed subsample: same index, built fast
            pick = np.random.default_rng(0).choice(n, 64 * cells, replace=False)
            sample = db[np.sort(pick)]
        index.train(sample)
        index.add(db)
        index.nprobe = min(cells, nprobe or max(32, cells // 16))
        return index
    if kind == "sq8":
        coarse = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip)
        coarse.train(db)
        index = faiss.IndexRefineFlat(coarse)
        index.k_factor = float(refine)
        index.add(db)
        return index
    index = faiss.IndexFlatIP(dim)
    index.add(db)
    return index


def _numpy_topk(
    q: np.ndarray[Any, np.dtype[np.float32]], db: np.ndarray[Any, np.dtype[np.float32]], k: int
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
    rows = max(1, _CHUNK_BYTES // (4 * max(1, len(db))))
    out_s = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    for start in range(0, len(q), rows):
        sim = q[start : start + rows] @ db.T
        if k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sim.shape[1]), (len(sim), 1))
        part_s = np.take_along_axis(sim, part, axis=1)
        # Stable order: by score descending, then by row index (matches FAISS on ties).
        order = np.lexsort((part, -part_s), axis=1)
        out_i[start : start + rows] = np.take_along_axis(part, order, axis=1)
        out_s[start : start + rows] = np.take_along_axis(part_s, order, axis=1)
    return out_s, out_i


def _torch_topk(
    q: np.ndarray[Any, np.dtype[np.float32]], db: np.ndarray[Any, np.dtype[np.float32]], k: int
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
    """Exact top-k as a blocked matrix product and ``torch.topk`` (shares ``db``'s memory)."""
    import torch  # noqa: PLC0415 - a core dependency, imported where used

    base = torch.from_numpy(db)
    rows = max(1, _CHUNK_BYTES // (4 * max(1, len(db))))
    out_s = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    with torch.inference_mode():
        for start in range(0, len(q), rows):
            block = torch.from_numpy(q[start : start + rows])
            scores, idx = torch.topk(block @ base.T, k, dim=1)
            s, i = scores.numpy(), idx.numpy()
            # Equal scores in row order, as the NumPy and FAISS paths give them.
            order = np.lexsort((i, -s), axis=1)
            out_s[start : start + rows] = np.take_along_axis(s, order, axis=1)
            out_i[start : start + rows] = np.take_along_axis(i, order, axis=1)
    return out_s, out_i
