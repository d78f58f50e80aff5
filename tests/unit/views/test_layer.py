"""The view-models stay pure: no ipywidgets, torch, distributed or training runtime."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from importlib import import_module

import scalekit.views

FORBIDDEN = ("ipywidgets", "IPython", "torch", "distributed", "scalekit.training",
             "scalekit.backends", "scalekit.widgets", "scalekit.labext", "scalekit.session")


def _view_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(scalekit.views.__path__, "scalekit.views.")]


def _imported_names(module: object) -> set[str]:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    return {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {
        node.module for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }


def test_render_does_not_import_ipywidgets() -> None:
    modules = _view_modules()
    assert "scalekit.views.cluster_render" in modules and len(modules) >= 10
    for name in modules:
        names = _imported_names(import_module(name))
        assert not any(n.startswith("ipywidgets") for n in names), name
        assert not any(n.startswith(FORBIDDEN) for n in names), (name, sorted(names))


def test_importing_every_view_module_stays_light() -> None:
    code = textwrap.dedent(f"""
        import pkgutil, sys
        from importlib import import_module
        import scalekit.views
        for m in pkgutil.iter_modules(scalekit.views.__path__, "scalekit.views."):
            import_module(m.name)
        print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
