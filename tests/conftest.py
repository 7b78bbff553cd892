"""Shared fixtures: paths to the real data beside the repository, small real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ECOMARINE_SHARED_DATA", REPO.parent / "shared" / "data"))
BELUGA = SHARED_DATA / "beluga"
GATE = SHARED_DATA / "gate"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set ECOMARINE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def beluga_dir() -> Path:
    return _require(BELUGA)


@pytest.fixture(scope="session")
def gate_dir() -> Path:
    return _require(GATE)


@pytest.fixture(scope="session")
def whale_jpeg(gate_dir: Path) -> Path:
    """A real Happywhale photo (evaluation only; read in place, never copied)."""
    return sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))[0]


EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def embedded_pipeline():  # type: ignore[no-untyped-def]
    """One embedded pipeline per session (loading costs a few seconds)."""
    from ecomarine import Pipeline

    return Pipeline.from_pretrained("embedded", device="cpu")
