from __future__ import annotations

import json

import pytest

from ecomarine import DataError, GateResult, Match, Prediction


def _prediction() -> Prediction:
    return Prediction(
        source="a/whale.jpg",
        is_cetacean=True,
        gate_score=0.93,
        species="beluga",
        species_score=0.8,
        individual_id="whale007",
        candidates=[Match("whale007", 0.71, "beluga", "img1"), Match("whale002", 0.55)],
        new_individual_threshold=0.4,
        sha256="ab" * 32,
        model_id="embedded",
    )


def test_prediction_json_round_trip() -> None:
    pred = _prediction()
    text = json.dumps(pred.to_dict())
    back = Prediction.from_dict(json.loads(text))
    assert back == pred
    assert isinstance(back.candidates, tuple)
    assert back.accepted


def test_gate_result_and_match_round_trip() -> None:
    g = GateResult(score=0.2, is_cetacean=False, threshold=0.5, backend="embedded")
    assert GateResult.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    m = Match("w1", 0.5, None, None)
    assert Match.from_dict(m.to_dict()) == m


def test_frozen() -> None:
    pred = _prediction()
    with pytest.raises(AttributeError):
        pred.species = "orca"  # type: ignore[misc]


def test_non_finite_scores_become_null() -> None:
    pred = Prediction(source=None, is_cetacean=False, gate_score=float("nan"))
    assert pred.to_dict()["gate_score"] is None
    json.dumps(pred.to_dict(), allow_nan=False)


def test_rejection_reason_is_validated() -> None:
    rejected = Prediction(None, False, 0.1, rejection_reason="not_cetacean")
    assert not rejected.accepted
    with pytest.raises(DataError, match="rejection_reason"):
        Prediction(None, False, 0.1, rejection_reason="because")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": None, "is_cetacean": True, "gate_score": 1.0, "extra": 1}, "unknown"),
        ({"source": None, "gate_score": 1.0}, "missing"),
        ({"source": None, "is_cetacean": True, "gate_score": "x"}, "malformed"),
        ({"source": None, "is_cetacean": True, "gate_score": 1, "candidates": 3}, "list"),
        ([1, 2], "mapping"),
    ],
)
def test_from_dict_errors(data: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Prediction.from_dict(data)  # type: ignore[arg-type]
