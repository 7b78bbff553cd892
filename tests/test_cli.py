from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecomarine import __version__
from ecomarine.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Identify individual whales" in capsys.readouterr().out


def test_unknown_option_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_console_script_runs_in_a_fresh_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ecomarine", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert __version__ in out.stdout


# --- commands end to end ---------------------------------------------------------------


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["demo"], capsys)
    assert code == 0, err
    assert "gallery: 36 photos of 12 belugas" in out
    assert "rejected: not_cetacean" in out
    assert re.search(r"Best match right for (\d+) of 12 belugas", out)
    assert "rejected by the gate" in out


def test_identify_gallery_and_exports(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    belugas = examples_dir / "belugas"
    code, out, err = run(
        [
            "gallery",
            "build",
            "--csv",
            str(belugas / "gallery.csv"),
            "--images",
            str(belugas),
            "--out",
            str(tmp_path / "g"),
            "--calibrate",
            "--index",
            "sq8",
        ],
        capsys,
    )
    assert code == 0, err
    assert "36 photos of 12 individuals" in out
    assert "calibrated new-individual threshold" in out
    code, out, err = run(["gallery", "info", str(tmp_path / "g")], capsys)
    assert code == 0, err
    assert re.search(r"individuals +12\n", out)
    assert re.search(r"index +sq8\n", out)
    queries = belugas / "queries"
    shark = examples_dir / "not_cetacean"
    code, out, err = run(
        [
            "identify",
            str(queries),
            str(shark),
            "--gallery",
            str(tmp_path / "g"),
            "--output",
            str(tmp_path / "r.jsonl"),
            "--dwca",
            str(tmp_path / "r.zip"),
            "--license",
            "CC-BY-4.0",
        ],
        capsys,
    )
    assert code == 0, err
    assert "13 photos:" in out
    assert "1 rejected" in out
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 13
    assert json.loads(lines[0])["candidates"]
    code, out, err = run(
        ["identify", str(queries / "*.jpg"), "--output", str(tmp_path / "r.csv")], capsys
    )
    assert code == 0, err
    with (tmp_path / "r.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 12
    code, out, err = run(
        [
            "export-dwc",
            str(tmp_path / "r.jsonl"),
            "--out",
            str(tmp_path / "x.zip"),
            "--dataset-title",
            "T",
            "--publisher",
            "P",
            "--license",
            "CC0-1.0",
        ],
        capsys,
    )
    assert code == 0, err
    assert "12 occurrences" in out
    first = json.loads(lines[0])["candidates"][0]["individual_id"]
    code, out, err = run(["gallery", "remove", str(tmp_path / "g"), "--individual", first], capsys)
    assert code == 0, err
    assert "removed 3 photos; 33 remain" in out
    more = tmp_path / "more.csv"
    more.write_text(
        "image,individual_id\nqueries/" + next(queries.glob("*.jpg")).name + ",newbie\n"
    )
    code, out, err = run(
        ["gallery", "add", str(tmp_path / "g"), "--csv", str(more), "--images", str(belugas)],
        capsys,
    )
    assert code == 0, err
    assert "gallery now 34 photos" in out


def test_gate_commands(tmp_path: Path, gate_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (gate_dir / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    picked = [
        r
        for g in ("happywhale:beluga", "dolphin", "shark", "scene:sea")
        for r in rows
        if r["group"] == g
    ][:0]
    for g in ("happywhale:beluga", "dolphin", "shark", "scene:sea"):
        picked += [r for r in rows if r["group"] == g][:3]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["relpath", "label", "group"])
        w.writeheader()
        for r in picked:
            w.writerow(
                {"relpath": str(gate_dir / r["relpath"]), "label": r["label"], "group": r["group"]}
            )
    code, out, err = run(
        ["gate", "evaluate", "--manifest", str(manifest), "--json", str(tmp_path / "e.json")],
        capsys,
    )
    assert code == 0, err
    data = json.loads((tmp_path / "e.json").read_text())
    for key in ("roc_auc", "tpr", "tnr", "threshold", "n_positive", "n_negative", "per_group"):
        assert key in data
    assert data["n_positive"] == 6
    assert data["n_negative"] == 6
    # Per group: accuracy, and for each negative group its ROC-AUC against every cetacean,
    # checked here against the naive pairwise definition on the gate's own scores.
    from ecomarine import Gate

    scores = [
        r.score
        for r in Gate.from_pretrained("embedded").score([gate_dir / r["relpath"] for r in picked])
    ]
    pos = [s for s, r in zip(scores, picked, strict=True) if r["label"] == "cetacean"]
    for group in ("shark", "scene:sea"):
        neg = [s for s, r in zip(scores, picked, strict=True) if r["group"] == group]
        pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
        entry = data["per_group"][group]
        assert entry["roc_auc_vs_cetaceans"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
        assert 0.0 <= entry["accuracy"] <= 1.0
    assert "roc_auc_vs_cetaceans" not in data["per_group"]["dolphin"]
    code, out, err = run(
        ["gate", "calibrate", "--manifest", str(manifest), "--out", str(tmp_path / "gate")], capsys
    )
    assert code == 0, err
    assert (tmp_path / "gate" / "gate.json").is_file()
    code, out, err = run(
        ["gate", "score", str(gate_dir / picked[0]["relpath"]), "--gate", str(tmp_path / "gate")],
        capsys,
    )
    assert code == 0, err
    assert "threshold" in out


@pytest.mark.parametrize(
    "args",
    [
        ["identify", "--gallery", "/no/such/gallery", "x.jpg"],
        ["gallery", "info", "/no/such/dir"],
        ["gallery", "build", "--csv", "/no/such.csv", "--out", "/tmp/x"],
        ["identify", "a.jpg", "--model", "./no/such/model"],
        ["identify", "a.jpg", "--batch-size", "0"],
        ["train", "--csv"],
        ["gate", "evaluate", "--manifest", __file__],
        ["export-dwc", __file__, "--out", "/tmp/x.zip"],
    ],
)
def test_user_errors_are_one_line_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(args, capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_offline_hub_model_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"")  # the inputs are checked before the model
    code, _out, err = run(
        ["identify", str(tmp_path / "a.jpg"), "--model", "acme/not-cached"], capsys
    )
    assert code == 2
    assert "offline" in err
    assert err.count("\n") == 1


def test_bad_catalog_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,whale\na.jpg,w1\n")
    code, _out, err = run(
        ["gallery", "build", "--csv", str(bad), "--out", str(tmp_path / "g")], capsys
    )
    assert code == 2
    assert "missing column" in err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,individual_id\nbaleine_\xe9.jpg,w1\n".encode("latin-1"))
    code, _out, err = run(
        ["gallery", "build", "--csv", str(latin), "--out", str(tmp_path / "g")], capsys
    )
    assert code == 2
    assert "UTF-8" in err
