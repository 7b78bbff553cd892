"""Nearest-neighbour search over unit vectors: exact (NumPy or FAISS) or approximate.

All indexes answer the same question: the ``k`` rows of a matrix with the largest inner
product with each query (cosine similarity, since rows are unit-norm). The NumPy and
FAISS exact indexes return identical neighbours; the approximate ones trade a little
recall for speed on large catalogues.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from .errors import ConfigError

__all__ = ["IndexKind", "VectorIndex", "faiss_available"]

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
_CHUNK_BYTES = 64 * 1024 * 1024  # similarity block size: keeps memory bounded


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
        kind: ``"flat"`` (exact) or ``"hnsw"`` (approximate; needs FAISS).
        use_faiss: ``None`` uses FAISS when installed; False forces NumPy.
        hnsw_m: HNSW graph degree. ef_search: HNSW search breadth.
    """

    def __init__(
        self,
        vectors: np.ndarray[Any, np.dtype[np.float32]],
        *,
        kind: IndexKind = "flat",
        use_faiss: bool | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.kind = kind
        if kind not in ("flat", "hnsw"):
            raise ConfigError(f"index kind must be 'flat' or 'hnsw', got {kind!r}")
        want_faiss = faiss_available() if use_faiss is None else use_faiss
        if kind == "hnsw" and not want_faiss:
            raise ConfigError("the approximate 'hnsw' index needs FAISS: pip install faiss-cpu")
        self._faiss: Any = None
        if want_faiss and len(self.vectors):
            import faiss  # noqa: PLC0415 - optional dependency

            dim = self.vectors.shape[1]
            index: Any
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = max(40, 2 * hnsw_m)
                index.hnsw.efSearch = ef_search
            else:
                index = faiss.IndexFlatIP(dim)
            index.add(self.vectors)
            self._faiss = index

    @property
    def backend(self) -> str:
        """``"faiss"`` or ``"numpy"``."""
        return "numpy" if self._faiss is None else "faiss"

    def search(
        self, queries: np.ndarray[Any, Any], k: int
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
        """Return ``(scores, indices)``, each ``(Q, k')`` with ``k' = min(k, N)``, best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(self.vectors)
        k = min(k, n)
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self._faiss is not None:
            scores, idx = self._faiss.search(q, k)
            return scores.astype(np.float32), idx.astype(np.int64)
        return _numpy_topk(q, self.vectors, k)


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
