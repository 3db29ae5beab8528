"""The benchmarks call the product: every name they import from bodyage_core (lazy imports
inside functions included) must still exist, or a benchmark breaks after an hour of work."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def _product_imports(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bodyage_core"):
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("bodyage_core")]
    return out


def test_there_are_benchmarks_that_import_the_product():
    assert len(SCRIPTS) >= 10
    assert sum(bool(_product_imports(p)) for p in SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_product_name_a_benchmark_imports_exists(script):
    missing = []
    for module, name in _product_imports(script):
        mod = importlib.import_module(module)
        if name and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports names that are gone: {missing}"
