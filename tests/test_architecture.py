"""The module structure holds: no import cycles, and the library never imports training."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "ecomarine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every ecomarine module ``path`` imports, at any depth (function bodies too),
    except under ``if TYPE_CHECKING:``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ecomarine"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ecomarine"):
                # `from . import x` names submodules; `from .m import f` names module m.
                subs = [f"{target}.{a.name}" for a in node.names]
                found.update(s for s in subs if s in MODULES)
                if not any(s in MODULES for s in subs):
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            # A package's __init__ re-exporting its own submodules is not a cycle of logic.
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := dfs(start)):
            return found
    return None


def test_graph_sees_the_imports() -> None:
    # The checker itself must see real edges, or the tests below could never fail.
    assert "ecomarine.identifier" in GRAPH["ecomarine.pipeline"]
    assert "ecomarine.factory" in GRAPH["ecomarine.identifier"]
    assert "ecomarine.training.config" in GRAPH["ecomarine.training.loop"]
    assert "ecomarine.training" in GRAPH["ecomarine.cli._train"]  # a function-level import


def test_no_import_cycles() -> None:
    """Not even through imports inside functions: every dependency points one way."""
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle() or [])}"


def test_library_never_imports_training() -> None:
    offenders = {
        module: sorted(m for m in deps if m.startswith("ecomarine.training"))
        for module, deps in GRAPH.items()
        if not module.startswith(("ecomarine.training", "ecomarine.cli"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# Imports each ecomarine module first and alone, in a child forked from an interpreter
# that has loaded only the third-party packages (torch takes seconds to import; a fresh
# interpreter per module would cost minutes).
_FORK_EACH = """
import importlib, os, sys, traceback
import numpy, PIL.Image, click, safetensors, torch, torchvision, timm, huggingface_hub
assert not [m for m in sys.modules if m.startswith("ecomarine")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED", *failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_alone() -> None:
    modules = [m for m in MODULES if m != "ecomarine.__main__"]  # that one runs the CLI
    result = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, *modules], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-3000:]
    assert result.stdout.strip() == "FAILED"


def test_a_broken_module_is_caught(tmp_path: Path) -> None:
    """The forked check fails on a module that cannot be imported alone."""
    (tmp_path / "circ_a.py").write_text("import circ_b\nX = circ_b.Y\n")
    (tmp_path / "circ_b.py").write_text("import circ_a\nY = circ_a.X\n")
    result = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, "circ_a"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "circ_a" in result.stdout
