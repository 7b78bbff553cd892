"""Distillation (losses against naive references, training with a teacher) and recalibration."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ecomarine import ConfigError, Identifier
from ecomarine.training import (
    TrainConfig,
    calibrate_identifier,
    class_distillation_loss,
    read_catalog_csv,
    similarity_distillation_loss,
    train,
    write_calibration,
)

from .test_training import _cfg, _open_set_split

# --- the losses, against loops written from the definitions -------------------------------


def _naive_kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(p || q) for two rows of logits."""
    zp = math.log(sum(math.exp(v) for v in p_logits))
    zq = math.log(sum(math.exp(v) for v in q_logits))
    return sum(
        math.exp(p - zp) * ((p - zp) - (q - zq)) for p, q in zip(p_logits, q_logits, strict=True)
    )


def test_class_distillation_matches_the_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=gen) * 3, torch.randn(5, 7, generator=gen) * 3
    for t in (1.0, 4.0):
        expected = sum(
            _naive_kl((teacher[i] / t).tolist(), (student[i] / t).tolist()) for i in range(5)
        )
        got = class_distillation_loss(student, teacher, t)
        assert float(got) == pytest.approx(t * t * expected / 5, rel=1e-5)
    assert float(class_distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError):
        class_distillation_loss(student, teacher, 0.0)


def test_similarity_distillation_matches_the_definition() -> None:
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 4, generator=gen), torch.randn(6, 9, generator=gen)
    s = torch.nn.functional.normalize(student, dim=1)
    t = torch.nn.functional.normalize(teacher, dim=1)
    expected = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        expected += _naive_kl(
            [float(t[i] @ t[j]) / 0.1 for j in others], [float(s[i] @ s[j]) / 0.1 for j in others]
        )
    got = similarity_distillation_loss(student, teacher)
    assert float(got) == pytest.approx(expected / 6, rel=1e-5)
    # Only directions count: a rescaled (or same-direction) teacher is matched exactly.
    assert float(similarity_distillation_loss(student, student * 3)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ConfigError):
        similarity_distillation_loss(student[:1], teacher[:1])


# --- training with a teacher ---------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "model"
    train(_cfg(examples_dir, out, epochs=3, calibration_csv=None))
    return out


def test_distilled_training_runs_and_records_its_teacher(
    tmp_path: Path, examples_dir: Path, teacher_dir: Path
) -> None:
    plain = train(_cfg(examples_dir, tmp_path / "plain", epochs=3, calibration_csv=None, seed=1))
    student = train(
        _cfg(
            examples_dir,
            tmp_path / "student",
            epochs=3,
            calibration_csv=None,
            seed=1,
            teacher=(str(teacher_dir),),
            distill_weight=1.0,
            distill_similarity=5.0,
        )
    )
    assert np.isfinite(student.losses).all()
    assert student.losses[-1] < student.losses[0]
    # Same seed, same batches: the first epoch's loss adds the (positive) distillation terms.
    assert student.losses[0] > plain.losses[0]
    record = json.loads((tmp_path / "student" / "training.json").read_text())
    assert record["config"]["teacher"] == [str(teacher_dir)]
    assert "distilled from" in (tmp_path / "student" / "README.md").read_text()
    Identifier.from_pretrained(tmp_path / "student", device="cpu")


def test_teacher_ensemble_and_another_input_size(
    tmp_path: Path, examples_dir: Path, teacher_dir: Path
) -> None:
    second = tmp_path / "second"
    train(_cfg(examples_dir, second, epochs=1, calibration_csv=None, seed=2))
    result = train(
        _cfg(
            examples_dir,
            tmp_path / "student",
            epochs=1,
            calibration_csv=None,
            input_size=(48, 24),
            teacher=(str(teacher_dir), str(second)),
        )
    )
    assert np.isfinite(result.losses).all()


def test_teacher_that_lacks_individuals(
    tmp_path: Path, examples_dir: Path, teacher_dir: Path
) -> None:
    # The teacher never saw the two whales held out of this narrower training set, so a
    # student over every whale cannot take class targets from it ...
    narrow_csv, _ = _open_set_split(examples_dir, tmp_path / "csv")
    narrow = tmp_path / "narrow"
    train(_cfg(examples_dir, narrow, csv=str(narrow_csv), epochs=1, calibration_csv=None))
    with pytest.raises(ConfigError, match="not trained on 2 of the student's individuals"):
        train(_cfg(examples_dir, tmp_path / "s1", calibration_csv=None, teacher=(str(narrow),)))
    # ... but similarities need no shared classes.
    result = train(
        _cfg(
            examples_dir,
            tmp_path / "s2",
            epochs=1,
            calibration_csv=None,
            teacher=(str(narrow),),
            distill_weight=0.0,
            distill_similarity=1.0,
        )
    )
    assert np.isfinite(result.losses).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"distill_weight": -1.0}, "distillation weights"),
        ({"distill_temperature": 0.0}, "distill_temperature"),
        ({"teacher": ("x",), "distill_weight": 0.0}, "needs distill_weight"),
    ],
)
def test_distillation_options_are_checked(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(csv="a.csv", images=".", out=str(tmp_path), **changes)  # type: ignore[arg-type]


# --- ecomarine calibrate -------------------------------------------------------------------


def _calibrate_run(
    examples_dir: Path, teacher_dir: Path, tmp_path: Path, *, flip: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """The ``ecomarine calibrate`` arguments on an open-set split of the examples, and
    what :func:`calibrate_identifier` chooses on the same data (with ``flip``)."""
    belugas = examples_dir / "belugas"
    train_csv, calib_csv = _open_set_split(examples_dir, tmp_path / "csv")
    args = ["calibrate", str(teacher_dir), "--csv", str(train_csv)]
    args += ["--calibration-csv", str(calib_csv), "--images", str(belugas)]
    ident = Identifier.from_pretrained(teacher_dir, device="cpu")
    ident.config = ident.config.replace(test_time_flip=flip)
    expected = calibrate_identifier(
        ident, read_catalog_csv(train_csv, belugas), read_catalog_csv(calib_csv, belugas)
    )
    return args, expected


def test_cli_calibrate_in_place_and_to_a_copy(
    tmp_path: Path,
    examples_dir: Path,
    teacher_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecomarine.cli import main

    args, expected = _calibrate_run(examples_dir, teacher_dir, tmp_path)
    before = (teacher_dir / "config.json").read_text()
    assert main([*args, "--out", str(tmp_path / "copy")]) == 0, capsys.readouterr().err
    assert "open-set thresholds: embedding" in capsys.readouterr().out
    assert (teacher_dir / "config.json").read_text() == before  # the source is untouched
    copy = Identifier.from_pretrained(tmp_path / "copy", device="cpu")
    assert not (tmp_path / "copy" / "checkpoints").exists()

    # The thresholds are calibrate_identifier's own on the same data.
    assert copy.new_individual_threshold == pytest.approx(expected["embedding"]["threshold"])
    assert copy.threshold_for("features") == pytest.approx(expected["features"]["threshold"])
    record = json.loads((tmp_path / "copy" / "calibration.json").read_text())
    assert record["command"].startswith("ecomarine calibrate ")
    assert record["n_queries"] == 18
    assert "## Recalibration" in (tmp_path / "copy" / "README.md").read_text()

    # In place: config.json changes, the weights do not.
    weights = (teacher_dir / "model.safetensors").read_bytes()
    assert main(args) == 0
    capsys.readouterr()
    again = Identifier.from_pretrained(teacher_dir, device="cpu")
    assert again.new_individual_threshold == copy.new_individual_threshold
    assert (teacher_dir / "model.safetensors").read_bytes() == weights


def test_cli_calibrate_switches_the_test_time_flip(
    tmp_path: Path,
    examples_dir: Path,
    teacher_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecomarine.cli import main

    args, expected = _calibrate_run(examples_dir, teacher_dir, tmp_path, flip=True)
    assert main([*args, "--test-time-flip", "--out", str(tmp_path / "tta")]) == 0
    assert "sighting and uncertainty calibrations dropped" in capsys.readouterr().out
    tta = Identifier.from_pretrained(tmp_path / "tta", device="cpu")
    assert tta.config.test_time_flip is True
    assert tta.config.uncertainty is None
    assert not tta.config.sighting_thresholds
    # The thresholds were chosen on the flipped-and-averaged vectors.
    assert tta.new_individual_threshold == pytest.approx(expected["embedding"]["threshold"])
    record = json.loads((tmp_path / "tta" / "calibration.json").read_text())
    assert record["command"].endswith(" --test-time-flip")
    # And back off.
    back = ["calibrate", str(tmp_path / "tta"), *args[2:], "--no-test-time-flip"]
    assert main(back) == 0, capsys.readouterr().err
    assert Identifier.from_pretrained(tmp_path / "tta").config.test_time_flip is False


def test_cli_calibrate_errors_are_one_line(
    tmp_path: Path, examples_dir: Path, teacher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecomarine.cli import main

    belugas = examples_dir / "belugas"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,who\na.jpg,x\n")
    good = str(belugas / "queries.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--images", str(belugas)]
    for args in (
        ["calibrate", str(teacher_dir), "--csv", str(bad_csv), "--calibration-csv", good],
        ["calibrate", str(empty), "--csv", good, "--calibration-csv", good],
        ["calibrate", str(tmp_path / "missing"), "--csv", good, "--calibration-csv", good],
    ):
        assert main([*args, *common]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        assert err.count("\n") == 1, err


def test_write_calibration_refuses_a_folder_without_config(
    tmp_path: Path, teacher_dir: Path
) -> None:
    config = Identifier.from_pretrained(teacher_dir, device="cpu").config
    with pytest.raises(ConfigError, match="not an identifier folder"):
        write_calibration(tmp_path, config, {}, "cmd")
    assert list(tmp_path.iterdir()) == []
