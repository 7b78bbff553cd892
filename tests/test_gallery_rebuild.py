"""Re-embedding a gallery with another model: same records, new vectors, nothing lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ecomarine import Gallery, GalleryError, Identifier
from ecomarine.cli import main
from ecomarine.gallery_rebuild import rebuild_gallery

from .test_identifier import tiny_identifier


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[Path, Path]:
    """The same tiny network without and with the test-time flip (other vectors)."""
    old = tiny_identifier().save_pretrained(tmp_path / "old")
    new = tiny_identifier(test_time_flip=True).save_pretrained(tmp_path / "new")
    return old, new


@pytest.fixture
def catalogue(tmp_path: Path, examples_dir: Path) -> Path:
    """A copy of the example catalogue (photos and CSV), free to change."""
    folder = tmp_path / "belugas"
    shutil.copytree(examples_dir / "belugas", folder)
    return folder


def _build(catalogue: Path, model: Path, out: Path) -> None:
    args = ["gallery", "build", "--csv", str(catalogue / "gallery.csv"), "--images"]
    assert main([*args, str(catalogue), "--model", str(model), "--out", str(out)]) == 0


@pytest.fixture
def rebuild_args(tmp_path: Path, catalogue: Path, two_models: tuple[Path, Path]) -> list[str]:
    """A gallery ``tmp_path/g`` built with the old model; the command rebuilding it."""
    _build(catalogue, two_models[0], tmp_path / "g")
    return ["gallery", "rebuild", str(tmp_path / "g"), "--model", str(two_models[1])]


def test_rebuild_re_embeds_every_photo_and_keeps_the_records(
    tmp_path: Path,
    catalogue: Path,
    two_models: tuple[Path, Path],
    rebuild_args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    new_model, args = two_models[1], rebuild_args
    old = Gallery.load(tmp_path / "g")
    assert main([*args, "--images", str(catalogue), "--out", str(tmp_path / "g2")]) == 0
    assert "re-embedded" in capsys.readouterr().out
    ident = Identifier.from_pretrained(new_model, device="cpu")
    new = Gallery.load(tmp_path / "g2", expected_fingerprint=ident.fingerprint())
    assert new.records() == old.records()  # ids, individuals, species, metadata
    paths = [catalogue / r["metadata"]["source"] for r in old.records()]
    np.testing.assert_allclose(new.embeddings, ident.embed(paths), atol=1e-6)
    assert not np.allclose(new.embeddings, old.embeddings, atol=1e-4)
    # The old gallery is untouched and still refused by the new model.
    with pytest.raises(GalleryError, match="fingerprint"):
        Gallery.load(tmp_path / "g", expected_fingerprint=ident.fingerprint())


def test_rebuild_refuses_missing_or_changed_photos_and_writes_nothing(
    tmp_path: Path, catalogue: Path, rebuild_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = rebuild_args
    photos = sorted((catalogue / "gallery").glob("*.jpg"))
    photos[0].unlink()
    photos[1].write_bytes(photos[2].read_bytes())  # another photo under its name
    assert main([*args, "--images", str(catalogue), "--out", str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot re-embed 2 of 36 photos"), err
    assert "not the photo that was added" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "g2").exists()
    # Relative paths need their folder.
    assert main([*args, "--out", str(tmp_path / "g3")]) == 2
    assert "cannot re-embed 36 of 36" in capsys.readouterr().err


def test_rebuild_drops_a_threshold_override_and_needs_files(
    tmp_path: Path, two_models: tuple[Path, Path], examples_dir: Path
) -> None:
    ident = Identifier.from_pretrained(two_models[1], device="cpu")
    g = Gallery(new_individual_threshold=0.5)
    photo = sorted((examples_dir / "belugas" / "gallery").glob("*.jpg"))[0]
    g.add(ident.embed([photo]), ["w1"], metadata=[{"source": str(photo)}])
    rebuilt = rebuild_gallery(g, ident)
    assert rebuilt.new_individual_threshold is None
    assert rebuilt.fingerprint == ident.fingerprint()
    with pytest.raises(GalleryError, match="empty"):
        rebuild_gallery(Gallery(), ident)
    unnamed = Gallery()
    unnamed.add(ident.embed([photo]), ["w1"])
    with pytest.raises(GalleryError, match="no file recorded"):
        rebuild_gallery(unnamed, ident)
