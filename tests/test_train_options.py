"""``ecomarine train`` reaches every TrainConfig field, and the config checks its numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest

from ecomarine import ConfigError, DataError
from ecomarine.cli import main
from ecomarine.cli._options import leaves
from ecomarine.training.config import AugmentConfig, TrainConfig


def _all_fields(cls: type[Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every field, nested dataclasses recursed into (independently of the CLI code)."""
    out: set[tuple[str, ...]] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _all_fields(hints[f.name], (*prefix, f.name))
        else:
            out.add((*prefix, f.name))
    return out


def test_every_field_has_an_option_and_help() -> None:
    reachable = {leaf.path for leaf in leaves(TrainConfig)}
    # `command` records the command line itself; `columns` is set by the catalogue column
    # options shared with gallery build/add and evaluate (test_columns_reach_the_config).
    assert _all_fields(TrainConfig) - reachable == {("command",), ("columns",)}
    assert all(leaf.spec.help for leaf in leaves(TrainConfig))


def test_every_option_sets_its_field(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One non-default value for every field, given on the command line, comes back."""
    csv = examples_dir / "belugas" / "gallery.csv"
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"")
    wanted: dict[tuple[str, ...], tuple[list[str], Any]] = {
        ("csv",): (["--csv", str(csv)], str(csv)),
        ("images",): (["--images", str(tmp_path)], str(tmp_path)),
        ("out",): (["--out", "model"], "model"),
        ("backbone",): (["--backbone", "resnet18"], "resnet18"),
        ("pretrained",): (["--no-pretrained"], False),
        ("input_size",): (["--input-size", "128x48"], [128, 48]),
        ("embedding_size",): (["--embedding-size", "64"], 64),
        ("pooling",): (["--pooling", "gem2"], "gem2"),
        ("head",): (["--head", "subcenter"], "subcenter"),
        ("subcenter_k",): (["--subcenter-k", "5"], 5),
        ("dynamic_margin",): (["--dynamic-margin"], True),
        ("head_min_encounters",): (["--head-min-encounters", "2"], 2),
        ("s",): (["--s", "20"], 20.0),
        ("m",): (["--m", "0.3"], 0.3),
        ("epochs",): (["--epochs", "3"], 3),
        ("batch_size",): (["--batch-size", "16"], 16),
        ("lr",): (["--lr", "0.01"], 0.01),
        ("backbone_lr",): (["--backbone-lr", "0.002"], 0.002),
        ("weight_decay",): (["--weight-decay", "0.05"], 0.05),
        ("warmup_epochs",): (["--warmup-epochs", "2.5"], 2.5),
        ("grad_clip",): (["--grad-clip", "1.5"], 1.5),
        ("sampler",): (["--sampler", "identity"], "identity"),
        ("images_per_id",): (["--images-per-id", "4"], 4),
        ("augment", "pad"): (["--pad", "0.1"], 0.1),
        ("augment", "brightness"): (["--brightness", "0.3"], 0.3),
        ("augment", "contrast"): (["--contrast", "0.1"], 0.1),
        ("augment", "hflip"): (["--hflip"], True),
        ("augment", "vflip"): (["--vflip"], True),
        ("augment", "rotate"): (["--rotate", "10"], 10.0),
        ("augment", "zoom"): (["--zoom", "0.15"], 0.15),
        ("augment", "erase"): (["--erase", "0.5"], 0.5),
        ("teacher",): (["--teacher", "t1", "--teacher", "t2"], ["t1", "t2"]),
        ("distill_weight",): (["--distill-weight", "2"], 2.0),
        ("distill_temperature",): (["--distill-temperature", "3"], 3.0),
        ("distill_similarity",): (["--distill-similarity", "10"], 10.0),
        ("val_csv",): (["--val-csv", str(csv)], str(csv)),
        ("val_every",): (["--val-every", "2"], 2),
        ("calibration_csv",): (["--calibration-csv", str(csv)], str(csv)),
        ("calibration_fraction",): (["--calibration-fraction", "0.2"], 0.2),
        ("calibration_new_fraction",): (["--calibration-new-fraction", "0.4"], 0.4),
        ("resume",): (["--resume", str(ckpt)], str(ckpt)),
        ("seed",): (["--seed", "7"], 7),
        ("device",): (["--device", "cpu"], "cpu"),
        ("workers",): (["--workers", "3"], 3),
        ("name",): (["--name", "mine"], "mine"),
    }
    assert set(wanted) == {leaf.path for leaf in leaves(TrainConfig)}  # a new field needs a row
    defaults = TrainConfig(csv="c", images="i", out="o").to_dict()
    args = [a for flags, _ in wanted.values() for a in flags]
    assert main(["train", *args, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for path, (_, value) in wanted.items():
        got, default = printed, defaults
        for key in path:
            got, default = got[key], default[key]
        assert got == value, path
        if path not in {("csv",), ("images",), ("out",)}:
            assert got != default, f"{path}: the test value must differ from the default"


def test_columns_reach_the_config(examples_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = str(examples_dir / "belugas" / "gallery.csv")
    base = ["train", "--csv", csv, "--images", ".", "--out", "m", "--print-config"]
    assert main([*base, "--id-column", "whale_id", "--column", "species=taxon"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["columns"] == {"species": "taxon", "individual_id": "whale_id"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "not a finite number"),
        (["--s", "inf"], "'--s'"),
        (["--input-size", "99999x99999"], "input_size must be <= 2048"),
        (["--input-size", "big"], "HxW"),
        (["--epochs", "0"], "epochs"),
    ],
)
def test_bad_numbers_are_one_line_exit_2(
    tmp_path: Path,
    examples_dir: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    csv = str(examples_dir / "belugas" / "gallery.csv")
    base = ["train", "--csv", csv, "--images", str(tmp_path), "--out", str(tmp_path / "m")]
    assert main([*base, *args, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert message in err


def test_python_configs_check_the_same_ranges() -> None:
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig(csv="c", images="i", out="o", weight_decay=math.nan)
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        TrainConfig(csv="c", images="i", out="o", workers=0)
    with pytest.raises(DataError, match="brightness must be <= 1"):
        AugmentConfig(brightness=2.0)
