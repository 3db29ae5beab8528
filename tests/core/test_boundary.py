"""bodyage_core must stay Qt-free and VTK-free (DESIGN.md): checked two ways."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import bodyage_core

FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "vtk", "vtkmodules",
             "bodyage_gui")
CORE = Path(bodyage_core.__file__).parent
# The launchers may start the viewer, importing it lazily inside the command function only.
LAUNCHERS = {"cli/cmd_gui.py", "cli/cmd_demo.py"}


def test_no_forbidden_import_statement_in_core():
    """No import of Qt/VTK/the GUI anywhere in core; launchers only inside functions."""
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        launcher = str(path.relative_to(CORE)) in LAUNCHERS
        nodes = tree.body if launcher else ast.walk(tree)
        for node in nodes:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno} {n}")
    assert offenders == []


def test_importing_every_core_module_loads_no_qt_or_vtk():
    modules = [m.name for m in pkgutil.walk_packages([str(CORE)], prefix="bodyage_core.")]
    assert len(modules) > 10
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
