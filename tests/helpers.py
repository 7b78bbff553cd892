"""Helpers shared by several test modules."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pytest


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


def fake_hub_api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace ``huggingface_hub.HfApi`` with a recorder; return what it records."""
    calls: dict[str, Any] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id: str, folder_path: Path, **kwargs: Any) -> Any:
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["repo"] = repo_id
            calls["message"] = kwargs.get("commit_message")
            return argparse.Namespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls
