"""Helpers shared by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path


def populate_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay out ``folder``'s files as a Hugging Face cache snapshot of ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
