"""Helpers shared by several test modules."""

from __future__ import annotations

import argparse
import shutil
import threading
import time
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


class LiveServer:
    """An ASGI app served by a real uvicorn on 127.0.0.1 in a thread, for HTTP tests.

    Args:
        app: The ASGI application.
        ready_path: Polled until it answers 200 (the server is up and the app ready).
    """

    def __init__(self, app: Any, ready_path: str = "/ready") -> None:
        import uvicorn

        from ecomarine.serve import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def example_catalogue(examples_dir: Path, folder: Path) -> Path:
    """A real gallery of the examples' 36 beluga photos (12 whales), saved in ``folder``."""
    import csv

    from ecomarine import Pipeline

    belugas = examples_dir / "belugas"
    with (belugas / "gallery.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    pipe.enroll([belugas / r["image"] for r in rows], [r["individual_id"] for r in rows], "beluga")
    assert pipe.gallery is not None
    return pipe.gallery.save(folder)
