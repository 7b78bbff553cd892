"""Every example script runs, offline, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES

SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_examples_exist() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    target = tmp_path / (
        "out.zip" if "gbif" in script.name else "out.jsonl" if "identify" in script.name else "out"
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert target.exists()
