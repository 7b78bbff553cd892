from __future__ import annotations

import math

import numpy as np
import pytest

from ecomarine.calibration import calibrate_binary, choose_new_individual_threshold
from ecomarine.metrics import (
    NEW_INDIVIDUAL,
    average_precision_at_k,
    insert_new_individual,
    map_at_k,
    retrieval_map,
    roc_auc,
    top_k_accuracy,
)
from ecomarine.types import Match


def test_average_precision_at_k_by_hand() -> None:
    assert average_precision_at_k(["a", "b", "c"], "a") == 1.0
    assert average_precision_at_k(["a", "b", "c"], "c") == pytest.approx(1 / 3)
    assert average_precision_at_k(["a", "b", "c", "d", "e", "f"], "f") == 0.0
    assert average_precision_at_k(["a", "a", "b"], "b") == 0.5  # repeats do not take a rank
    assert average_precision_at_k([], "a") == 0.0


def test_map_at_5_by_hand() -> None:
    preds = [["x", "new_individual"], ["new_individual", "y"], ["p", "q", "r", "s", "t"]]
    truths = ["new_individual", "new_individual", "t"]
    # 1/2 + 1/1 + 1/5 over 3 queries
    assert map_at_k(preds, truths) == pytest.approx((0.5 + 1.0 + 0.2) / 3)
    assert map_at_k([], []) == 0.0


def test_top_k_accuracy_by_hand() -> None:
    preds = [["a", "b"], ["c", "d"], ["e", "f"]]
    assert top_k_accuracy(preds, ["a", "d", "z"], 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(preds, ["a", "d", "z"], 5) == pytest.approx(2 / 3)


def test_known_top_k_accuracy_by_hand() -> None:
    from ecomarine.metrics import known_top_k_accuracy

    cands = [[Match("a", 0.9), Match("b", 0.5)], [Match("c", 0.8)], [Match("a", 0.2)]]
    truths = ["b", NEW_INDIVIDUAL, "a"]  # the new query does not count
    assert known_top_k_accuracy(cands, truths, 1) == 0.5
    assert known_top_k_accuracy(cands, truths, 2) == 1.0
    assert known_top_k_accuracy(cands[1:2], truths[1:2], 1) == 0.0


def test_insert_new_individual() -> None:
    cands = [Match("a", 0.9), Match("b", 0.6), Match("c", 0.4)]
    assert insert_new_individual(cands, 0.95) == [NEW_INDIVIDUAL, "a", "b", "c"]
    assert insert_new_individual(cands, 0.5) == ["a", "b", NEW_INDIVIDUAL, "c"]
    assert insert_new_individual(cands, 0.1) == ["a", "b", "c", NEW_INDIVIDUAL]
    assert insert_new_individual(cands, None) == ["a", "b", "c"]
    many = [Match(str(i), 0.9 - i / 100) for i in range(6)]
    assert insert_new_individual(many, 0.0) == ["0", "1", "2", "3", "4"]


def test_roc_auc_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs won: (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3/4
    assert roc_auc([0.9, 0.4, 0.5, 0.1], [True, True, False, False]) == 0.75
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    assert math.isnan(roc_auc([0.5], [True]))


def test_retrieval_map_by_hand() -> None:
    sim = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    # query 0 (label a): ranking a(0.9), b(0.8), a(0.1) -> AP = (1/1 + 2/3) / 2
    # query 1 (label b): ranking a(0.3), b(0.2), a(0.1) -> AP = 1/2
    got = retrieval_map(sim, ["a", "b"], ["a", "b", "a"])
    assert got == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert math.isnan(retrieval_map(sim[:1], ["z"], ["a", "b", "a"]))


def test_calibrate_binary() -> None:
    pos = [0.9, 0.8, 0.7, 0.6, 0.2]
    neg = [0.1, 0.2, 0.3, 0.65]
    report = calibrate_binary(pos, neg, min_tpr=0.8, min_tnr=0.75)
    assert report.met_targets
    assert report.threshold == 0.6  # smallest threshold with TPR 4/5 and TNR 3/4
    assert (report.tp, report.fn, report.tn, report.fp) == (4, 1, 3, 1)
    strict = calibrate_binary(pos, neg, min_tpr=1.0, min_tnr=1.0)
    assert not strict.met_targets
    assert "balanced" in strict.note


def test_choose_new_individual_threshold() -> None:
    # Known queries score high, new ones low: any threshold between separates them.
    cands = [
        [Match("a", 0.9), Match("b", 0.3)],
        [Match("b", 0.8)],
        [Match("a", 0.4)],
        [Match("b", 0.35)],
    ]
    truths = ["a", "b", NEW_INDIVIDUAL, NEW_INDIVIDUAL]
    res = choose_new_individual_threshold(cands, truths)
    assert 0.4 < res.threshold <= 0.8
    assert res.map5 == 1.0
    assert res.map5_always_new == 0.5
    assert res.roc_auc == 1.0
    weighted = choose_new_individual_threshold(cands, truths, new_fraction=0.25)
    assert weighted.map5_always_new == pytest.approx(0.25)
