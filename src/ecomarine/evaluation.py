"""Open-set evaluation: a gallery CSV, a query CSV, one identifier -> a metrics report."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .calibration import calibrate_open_set
from .catalog import Sample
from .identifier import Identifier
from .metrics import (
    NEW_INDIVIDUAL,
    insert_new_individual,
    known_top_k_accuracy,
    map_at_k,
    retrieval_map,
    roc_auc,
)
from .search import rank_labelled
from .types import EmbeddingKind
from .uncertainty import LIST_SIZE, evaluate_uncertainty
from .zoo import known_model

__all__ = [
    "EvaluationReport",
    "ModelComparison",
    "compare_models",
    "comparison_markdown",
    "evaluate_open_set",
    "report_markdown",
]


@dataclass(frozen=True)
class EvaluationReport:
    """Figures of one open-set evaluation (the beluga next-season protocol and the like).

    Attributes:
        map5: MAP@5 with ``new_individual`` as a label (Happywhale definition).
        top1: Top-1 accuracy over queries of known individuals.
        top5: Top-5 accuracy over queries of known individuals.
        new_individual_roc_auc: How well ``1 - best score`` separates new from known.
        retrieval_map: mAP of ranking gallery images for known queries.
        map5_always_new: MAP@5 of answering ``new_individual`` first for every query.
        threshold: The open-set threshold used. threshold_source: Where it came from.
        n_queries: Queries. n_known: Of known individuals. n_new: Of new individuals.
        n_gallery: Gallery images. embedding_kind: Which embedding was used. model: Name.
        calibration: When the model carries calibration data: the expected calibration
            error of ``p_known``, its reliability table, and the coverage and mean size of
            the conformal candidate sets per alpha
            (:func:`~ecomarine.uncertainty.evaluate_uncertainty`); else ``None``.
    """

    map5: float
    top1: float
    top5: float
    new_individual_roc_auc: float
    retrieval_map: float
    map5_always_new: float
    threshold: float | None
    threshold_source: str
    n_queries: int
    n_known: int
    n_new: int
    n_gallery: int
    embedding_kind: EmbeddingKind
    model: str
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def evaluate_open_set(
    identifier: Identifier,
    gallery_samples: Sequence[Sample],
    query_samples: Sequence[Sample],
    *,
    kind: EmbeddingKind = "embedding",
    threshold: float | None = None,
    calibration_samples: Sequence[Sample] | None = None,
    calibration_new_fraction: float | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    alphas: Sequence[float] = (0.1, 0.2),
    new_share: float | None = None,
    calibrate_on_gallery: bool = False,
) -> EvaluationReport:
    """Embed both sets, search, and compute every metric.

    The threshold is, in order: ``threshold``; else calibrated on
    ``calibration_samples`` queried against the gallery; else, with
    ``calibrate_on_gallery``, calibrated on the gallery alone by leave-encounter-out (each
    encounter, or photo without one, queried against the rest, as
    :meth:`~ecomarine.gallery.Gallery.calibrate_new_individual` does; no query is seen);
    else the identifier's shipped one; else none (``new_individual`` is then ranked after
    the five candidates).
    ``progress`` is called with the number of photos embedded after each batch. When the
    model carries calibration data, the report also measures its probabilities and
    candidate sets (at each of ``alphas``, assuming ``new_share`` new animals).
    """
    g_emb = identifier.embed(
        [s.path for s in gallery_samples],
        batch_size=batch_size,
        kind=kind,
        num_workers=num_workers,
        progress=progress,
    )
    g_ids = [s.individual_id for s in gallery_samples]
    source = "argument"
    if threshold is None and calibration_samples:
        c_emb = identifier.embed(
            [s.path for s in calibration_samples],
            batch_size=batch_size,
            kind=kind,
            num_workers=num_workers,
            progress=progress,
        )
        # Calibration queries must not find themselves: search a gallery without them.
        own = {s.image for s in calibration_samples}
        keep = [i for i, s in enumerate(gallery_samples) if s.image not in own]
        threshold = calibrate_open_set(
            g_emb[keep],
            [g_ids[i] for i in keep],
            c_emb,
            [s.individual_id for s in calibration_samples],
            new_fraction=calibration_new_fraction,
        ).threshold
        source = "calibration queries"
    elif threshold is None and calibrate_on_gallery:
        groups = [s.encounter or f"__image__{s.image}" for s in gallery_samples]
        threshold = calibrate_open_set(
            g_emb, g_ids, g_emb, g_ids, gallery_groups=groups, query_groups=groups
        ).threshold
        source = "leave-encounter-out on the gallery"
    elif threshold is None:
        threshold = identifier.threshold_for(kind)
        source = "shipped with the model" if threshold is not None else "none"
    q_emb = identifier.embed(
        [s.path for s in query_samples],
        batch_size=batch_size,
        kind=kind,
        num_workers=num_workers,
        progress=progress,
    )
    cands, truths = rank_labelled(g_emb, g_ids, q_emb, [s.individual_id for s in query_samples])
    preds = [insert_new_individual(c, threshold) for c in cands]
    known_idx = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    known_truths = [truths[i] for i in known_idx]
    best = np.array([c[0].score if c else -1.0 for c in cands])
    is_new = np.array([t == NEW_INDIVIDUAL for t in truths])
    sim = q_emb[known_idx] @ g_emb.T if known_idx else np.zeros((0, len(g_emb)))
    calibration = None
    uncertainty = identifier.config.uncertainty if kind == "embedding" else None
    if uncertainty is not None and known_idx and len(known_idx) < len(truths):
        long_lists, _ = rank_labelled(
            g_emb, g_ids, q_emb, [s.individual_id for s in query_samples], top_k=LIST_SIZE
        )
        calibration = evaluate_uncertainty(
            uncertainty, long_lists, truths, alphas=alphas, new_share=new_share
        )
    return EvaluationReport(
        map5=map_at_k(preds, truths),
        top1=known_top_k_accuracy(cands, truths, 1),
        top5=known_top_k_accuracy(cands, truths, 5),
        new_individual_roc_auc=roc_auc(-best, is_new),
        retrieval_map=retrieval_map(sim, known_truths, g_ids),
        map5_always_new=float(is_new.mean()) if len(is_new) else 0.0,
        threshold=threshold,
        threshold_source=source,
        n_queries=len(truths),
        n_known=len(known_idx),
        n_new=int(is_new.sum()),
        n_gallery=len(gallery_samples),
        embedding_kind=kind,
        model=identifier.config.name,
        calibration=calibration,
    )


def report_markdown(report: EvaluationReport, title: str = "Open-set evaluation") -> str:
    """A markdown table of a report."""
    d = report.to_dict()

    def fmt(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [
        ("MAP@5 (with new_individual)", d["map5"]),
        ("top-1 (known individuals)", d["top1"]),
        ("top-5 (known individuals)", d["top5"]),
        ("new-individual ROC-AUC", d["new_individual_roc_auc"]),
        ("retrieval mAP (known individuals)", d["retrieval_map"]),
        ("MAP@5 answering new_individual always", d["map5_always_new"]),
        ("open-set threshold", d["threshold"]),
        ("threshold from", d["threshold_source"]),
        ("queries (known / new)", f"{d['n_queries']} ({d['n_known']} / {d['n_new']})"),
        ("gallery images", d["n_gallery"]),
        ("model / embedding", f"{d['model']} / {d['embedding_kind']}"),
    ]
    lines = [f"## {title}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in rows]
    cal = d.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibration (assuming {cal['new_share']:.2f} of the animals are new): expected "
            f"calibration error of p_known {cal['ece']:.3f} (mean p_known "
            f"{cal['mean_p_known']:.3f}, share known {cal['share_known']:.3f}).",
            "",
            "| p_known bin | photos | mean p_known | share known |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['low']:.1f}-{r['high']:.1f} | {r['n']} | {r['mean_probability']:.3f} | "
            f"{r['observed']:.3f} |"
            for r in cal["reliability"]
        ]
        lines += [
            "",
            "| alpha | target coverage | coverage | mean set size |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {a} | {s['target']:.2f} | {s['coverage']:.3f} | {s['mean_size']:.2f} |"
            for a, s in cal["sets"].items()
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ModelComparison:
    """One model's row of :func:`compare_models`.

    Attributes:
        source: The model as given (bundled name, folder or ``hf-hub:`` id).
        report: Its open-set evaluation.
        photos_per_second: Photos embedded per second over the whole evaluation, on this
            machine (decode, network and search).
        license: Licence of its weights, as the weights or :mod:`ecomarine.zoo` state it.
    """

    source: str
    report: EvaluationReport
    photos_per_second: float
    license: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "source": self.source,
            "photos_per_second": self.photos_per_second,
            "license": self.license,
            "report": self.report.to_dict(),
        }


def compare_models(
    sources: Sequence[str],
    gallery_samples: Sequence[Sample],
    query_samples: Sequence[Sample],
    *,
    calibration_samples: Sequence[Sample] | None = None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    load: Callable[[str], Identifier] | None = None,
) -> list[ModelComparison]:
    """Evaluate several models on the same catalogue, with the same threshold procedure.

    Each model's open-set threshold is calibrated the same way: on
    ``calibration_samples`` when given, else by leave-encounter-out on the gallery (its
    shipped threshold was calibrated on other data, and most published models ship none).

    Args:
        sources: Models to load (anything ``Identifier.from_pretrained`` takes).
        gallery_samples: The catalogue.
        query_samples: Photos to identify (their individuals may be absent: new).
        calibration_samples: Held-out queries for the thresholds.
        batch_size: Photos per network pass.
        progress: Called with photos embedded after each batch, over every model.
        load: How a source becomes an identifier (default ``Identifier.from_pretrained``).
    """
    loader = load or Identifier.from_pretrained
    rows = []
    n_photos = len(gallery_samples) + len(query_samples) + len(calibration_samples or ())
    for source in sources:
        identifier = loader(source)
        start = time.perf_counter()
        report = evaluate_open_set(
            identifier,
            gallery_samples,
            query_samples,
            calibration_samples=calibration_samples,
            calibrate_on_gallery=True,
            batch_size=batch_size,
            progress=progress,
        )
        elapsed = max(time.perf_counter() - start, 1e-9)
        known = known_model(source)
        license_id = identifier.config.license or (known.license if known else None)
        rows.append(ModelComparison(source, report, n_photos / elapsed, license_id))
    return rows


def comparison_markdown(rows: Sequence[ModelComparison]) -> str:
    """A markdown table of :func:`compare_models` (best MAP@5 first)."""

    def num(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [
        "| model | top-1 | top-5 | MAP@5 | threshold | photos/s | licence |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: -r.report.map5):
        r = row.report
        lines.append(
            f"| {row.source} | {num(r.top1)} | {num(r.top5)} | {num(r.map5)} | "
            f"{num(r.threshold)} | {row.photos_per_second:.1f} | {row.license or 'not stated'} |"
        )
    first = rows[0].report if rows else None
    if first is not None:
        lines += [
            "",
            f"{first.n_queries} queries ({first.n_known} of known individuals, {first.n_new} "
            f"new) against {first.n_gallery} catalogue photos; thresholds from "
            f"{first.threshold_source}; top-1/top-5 over known individuals.",
        ]
    return "\n".join(lines) + "\n"
