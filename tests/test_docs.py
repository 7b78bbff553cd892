"""The documentation stays in step with the code."""

from __future__ import annotations

import re
import runpy

from .conftest import REPO


def test_cli_reference_is_current() -> None:
    render = runpy.run_path(str(REPO / "docs" / "gen_cli.py"))["render"]
    assert (REPO / "docs" / "cli.md").read_text() == render(), "run: python docs/gen_cli.py"


def test_tutorial_code_is_run_by_the_example_tests() -> None:
    """Tutorials include example scripts (run by test_examples) rather than inline code."""
    for page in sorted((REPO / "docs" / "tutorials").glob("*.md")):
        text = page.read_text()
        python_blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
        for block in python_blocks:
            assert block.strip().startswith('--8<-- "examples/'), (
                f"{page.name}: inline Python block"
            )
            assert (REPO / block.strip().split('"')[1]).is_file()


def test_readme_setup_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install . && .venv/bin/ecomarine demo" in readme
    assert 'pip install -e ".[dev]" && .venv/bin/python -m pytest' in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'
        in ci
    )


def test_models_page_lists_every_known_source() -> None:
    from ecomarine.zoo import KNOWN_MODELS

    page = (REPO / "docs" / "models.md").read_text()
    for model in KNOWN_MODELS:
        if model.repo_id is not None:
            assert f"`{model.source}`" in page, model.source
            row = next(line for line in page.splitlines() if f"`{model.source}`" in line)
            side = model.input_size[0]
            assert f"{side} \N{MULTIPLICATION SIGN} {side}" in row, model.source
