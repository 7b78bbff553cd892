"""Calibrated probabilities and conformal candidate sets (issue #21)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from ecomarine import Pipeline
from ecomarine.cli import main
from ecomarine.config import IdentifierConfig
from ecomarine.errors import ConfigError, DataError
from ecomarine.metrics import NEW_INDIVIDUAL
from ecomarine.results import read_results
from ecomarine.types import Match
from ecomarine.uncertainty import (
    OTHER_KNOWN,
    UncertaintyCalibration,
    evaluate_uncertainty,
    expected_calibration_error,
    fit_uncertainty,
)

RELEASE = Path(__file__).resolve().parent / "data" / "release-0.1.0.dev0"


def synthetic(
    n: int, new_share: float, rng: np.random.Generator
) -> tuple[list[list[Match]], list[str]]:
    """Queries of an exchangeable world: a known animal's best match scores higher, and
    its true id is listed at a random rank (or not at all)."""
    cands, truths = [], []
    for q in range(n):
        is_new = rng.random() < new_share
        best = rng.normal(0.45 if is_new else 0.62, 0.08)
        scores = np.sort(best - np.abs(rng.normal(0, 0.06, 10)).cumsum())[::-1]
        ids = [f"q{q}-c{j}" for j in range(10)]
        truth = NEW_INDIVIDUAL
        if not is_new:
            truth = f"q{q}-true"
            rank = int(rng.geometric(0.45)) - 1
            if rank < 10:
                ids[rank] = truth
        cands.append([Match(i, float(s)) for i, s in zip(ids, [best, *scores[1:]], strict=True)])
        truths.append(truth)
    return cands, truths


def coverage(cal: UncertaintyCalibration, cands, truths, alpha, new_share=None) -> float:  # type: ignore[no-untyped-def]
    hits = []
    for c, t in zip(cands, truths, strict=True):
        listed = [m.individual_id for m in c]
        label = t if t == NEW_INDIVIDUAL or t in listed else OTHER_KNOWN
        hits.append(label in cal.assess(c, alpha=alpha, new_share=new_share).candidate_set)
    return float(np.mean(hits))


def test_probabilities_sum_to_one_and_are_monotone_in_the_score() -> None:
    rng = np.random.default_rng(0)
    cal = fit_uncertainty(*synthetic(400, 0.5, rng))
    assert cal.slope > 0
    cands, _ = synthetic(50, 0.5, rng)
    for c in cands:
        a = cal.assess(c)
        assert sum(a.probabilities) <= a.p_known + 1e-9
        assert (1 - a.p_known) + sum(a.probabilities) + a.p_other == pytest.approx(1.0)
        assert all(p >= 0 for p in a.probabilities)
    # p_known grows with the best score; a candidate's probability with its own score.
    p = cal.p_known(np.linspace(-1, 1, 50))
    assert np.all(np.diff(p) > 0)
    base = [Match("a", 0.5), Match("b", 0.4), Match("c", 0.3)]
    for bump in (0.35, 0.38, 0.39):
        higher = [base[0], Match("b", bump + 0.01), base[2]]
        lower = [base[0], Match("b", bump), base[2]]
        q_hi, _ = cal.identity([m.score for m in higher])
        q_lo, _ = cal.identity([m.score for m in lower])
        assert q_hi[1] > q_lo[1]
    # More new animals expected: a lower p_known for the same score.
    assert cal.p_known(np.array([0.6]), 0.8)[0] < cal.p_known(np.array([0.6]), 0.2)[0]


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_sets_cover_exchangeable_data(alpha: float) -> None:
    rng = np.random.default_rng(7)
    n_cal, n_test = 600, 3000
    cal = fit_uncertainty(*synthetic(n_cal, 0.5, rng))
    cands, truths = synthetic(n_test, 0.5, rng)
    got = coverage(cal, cands, truths, alpha)
    # Binomial spread of the test share plus that of the calibration quantile, 3 sigma.
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) * (1 / n_test + 1 / n_cal))
    assert abs(got - (1 - alpha)) <= tolerance, got
    # Another share of new animals, told to the calibration: the guarantee holds still.
    cands, truths = synthetic(n_test, 0.2, rng)
    shifted = coverage(cal, cands, truths, alpha, new_share=0.2)
    assert shifted >= 1 - alpha - tolerance, shifted


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_mondrian_sets_cover_each_class(alpha: float) -> None:
    rng = np.random.default_rng(11)
    n_cal, n_test = 800, 3000
    cal_c, cal_t = synthetic(n_cal, 0.5, rng)
    cal = fit_uncertainty(cal_c, cal_t, method="mondrian")
    assert cal.method == "mondrian"
    per_class = n_cal // 2
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) * (2 / n_test + 1 / per_class))
    # The share of new animals of the test photos is 0.2, and the calibration is not told:
    # each class is still covered at 1 - alpha (the marginal sets are not, by class).
    cands, truths = synthetic(n_test, 0.2, rng)
    for is_new in (True, False):
        rows = [i for i, t in enumerate(truths) if (t == NEW_INDIVIDUAL) == is_new]
        got = coverage(cal, [cands[i] for i in rows], [truths[i] for i in rows], alpha)
        assert abs(got - (1 - alpha)) <= tolerance, (is_new, got)
    # It travels in the config; the marginal default is written as before (no key).
    again = UncertaintyCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again.method == "mondrian"
    assert again.to_dict() == cal.to_dict()
    marginal = fit_uncertainty(cal_c, cal_t)
    assert "method" not in marginal.to_dict()
    with pytest.raises(ConfigError, match="method"):
        UncertaintyCalibration.from_dict({**cal.to_dict(), "method": "magic"})


def test_set_membership_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    cal = fit_uncertainty(*synthetic(300, 0.5, rng))
    tied = [Match("b", 0.5), Match("a", 0.5), Match("c", 0.2)]
    first = cal.assess(tied, alpha=0.3)
    assert all(cal.assess(tied, alpha=0.3) == first for _ in range(5))
    listed = [x for x in first.candidate_set if x in ("a", "b")]
    assert listed in ([], ["a", "b"])  # equal scores: both or neither, in label order


def test_calibration_travels_in_the_config_and_refuses_nonsense() -> None:
    rng = np.random.default_rng(1)
    cal = fit_uncertainty(*synthetic(100, 0.5, rng), new_share=0.4)
    cfg = IdentifierConfig(uncertainty=cal)
    again = IdentifierConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.uncertainty is not None
    assert again.uncertainty.new_share == 0.4
    c = [Match("x", 0.6), Match("y", 0.5)]
    assert again.uncertainty.assess(c).candidate_set == cal.assess(c).candidate_set
    bad = cfg.to_dict()
    bad["uncertainty"]["temperature"] = -1
    with pytest.raises(ConfigError, match="temperature"):
        IdentifierConfig.from_dict(bad)
    bad = cfg.to_dict()
    bad["uncertainty"]["best_scores"] = [float("nan")] * 100
    with pytest.raises(ConfigError):
        IdentifierConfig.from_dict(bad)
    with pytest.raises(DataError, match="new and known"):
        fit_uncertainty([[Match("a", 0.5)]] * 20, ["a"] * 20)
    with pytest.raises(ConfigError, match="alpha"):
        cal.quantile(1.5)


def test_ece_of_a_known_reliability_table() -> None:
    ece, rows = expected_calibration_error([0.15, 0.15, 0.85, 0.85], [False, True, True, True])
    assert ece == pytest.approx(0.5 * abs(0.15 - 0.5) + 0.5 * abs(0.85 - 1.0))
    assert [r["n"] for r in rows] == [2, 2]


def test_old_models_without_calibration_fall_back_and_say_so(
    examples_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = Pipeline.from_pretrained(RELEASE / "pipeline", gate=False)
    assert pipe.identifier.config.uncertainty is None
    photo = next((examples_dir / "belugas" / "queries").glob("*.jpg"))
    with caplog.at_level(logging.INFO, logger="ecomarine"):
        pred = pipe.predict(photo)
    assert pred.p_known is None
    assert pred.candidate_set is None
    assert pred.candidates  # still identified by the threshold
    assert "no calibration data" in caplog.text


def test_the_shipped_model_gives_probabilities_and_sets(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    gal = tmp_path / "g"
    assert main(["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b),
                 "--out", str(gal)]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["identify", str(b / "queries"), "--gallery", str(gal), "--gate", "none"]
    assert main([*args, "--output", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "p_known" in out
    assert "candidate set" in out
    assert "candidate sets hold the answer with probability >= 0.90" in out
    preds = read_results(tmp_path / "r.csv")
    assert all(p.p_known is not None and 0 < p.p_known < 1 for p in preds)
    assert all(p.candidate_set for p in preds)
    assert all(p.alpha == 0.1 for p in preds)
    assert all(m.probability is not None for p in preds for m in p.candidates)
    # A looser alpha never gives larger sets; more new animals expected lowers p_known.
    assert main([*args, "--alpha", "0.4", "--new-share", "0.9", "--output",
                 str(tmp_path / "r2.jsonl")]) == 0  # fmt: skip
    loose = read_results(tmp_path / "r2.jsonl")
    for a, b2 in zip(preds, loose, strict=True):
        assert len(b2.candidate_set or ()) <= len(a.candidate_set or ())
        assert (b2.p_known or 0) < (a.p_known or 0)


def test_evaluate_reports_calibration(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    report = tmp_path / "e.json"
    code = main(["evaluate", "--gallery-csv", str(b / "gallery.csv"), "--query-csv",
                 str(b / "queries.csv"), "--images", str(b), "--json", str(report),
                 "--alpha", "0.1"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    # Every query is known here (no new animal): no reliability can be measured.
    assert "Calibration" not in out
    data = json.loads(report.read_text())
    assert data["calibration"] is None
    # With new animals among the queries (a few whales removed from the gallery):
    rows = (b / "gallery.csv").read_text().splitlines()
    (tmp_path / "g.csv").write_text("\n".join(rows[:25]) + "\n")
    code = main(["evaluate", "--gallery-csv", str(tmp_path / "g.csv"), "--query-csv",
                 str(b / "queries.csv"), "--images", str(b), "--json", str(report),
                 "--overwrite"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "expected calibration error of p_known" in out
    data = json.loads(report.read_text())
    assert set(data["calibration"]["sets"]) == {"0.1", "0.2"}


def test_evaluate_uncertainty_matches_a_direct_count() -> None:
    rng = np.random.default_rng(5)
    cal = fit_uncertainty(*synthetic(300, 0.5, rng))
    cands, truths = synthetic(200, 0.5, rng)
    got = evaluate_uncertainty(cal, cands, truths, alphas=(0.2,))
    assert got["sets"]["0.2"]["coverage"] == pytest.approx(coverage(cal, cands, truths, 0.2))


def test_probability_decision_policy(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    gal = tmp_path / "g"
    assert main(["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b),
                 "--out", str(gal)]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "r.jsonl"
    args = ["identify", str(b / "queries"), "--gallery", str(gal), "--gate", "none"]
    assert main([*args, "--decision", "probability", "--alpha", "0.45", "--output", str(out)]) == 0
    assert "known when p_known >= 0.50 and the candidate set names one individual" in (
        capsys.readouterr().out
    )
    for p in read_results(out):
        named = [x for x in p.candidate_set or () if x not in (NEW_INDIVIDUAL, OTHER_KNOWN)]
        sure = (p.p_known or 0) >= 0.5 and len(named) == 1
        assert p.is_new_individual == (not sure)
        assert p.individual_id == (named[0] if sure else None)
    old = ["identify", str(b / "queries"), "--model", str(RELEASE / "pipeline"), "--gate", "none"]
    assert main([*old, "--decision", "probability"]) == 2  # no calibration data: refused
    assert "no calibration data" in capsys.readouterr().err
