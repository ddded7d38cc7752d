"""The folder layout is the architecture: each layer imports only the layers below it, the
framework-free ones import no framework, and the package's imports form no circle.

Imports are read from the source (``ast``), lazy ones inside functions included, so a layer
cannot reach around another by importing late.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ncstudy"

# Layer of each module (first matching prefix), lowest first; a module may import its own layer
# and the ones listed for it.
LAYERS = {
    "base": ("ncstudy.errors", "ncstudy.records", "ncstudy.deprecation", "ncstudy.text"),
    "format": ("ncstudy.config", "ncstudy.logs", "ncstudy.runs", "ncstudy.onset"),
    "data": ("ncstudy.data", "ncstudy.models", "ncstudy.metrics"),
    "train": ("ncstudy.train",),
    "forecast": ("ncstudy.forecast",),
    "present": ("ncstudy.figure", "ncstudy.plots"),  # the one figure stack; the study's pictures
    "adapters": ("ncstudy.adapters",),
    "analyze": ("ncstudy.analyze", "ncstudy.analysis"),  # ncstudy.analysis: the deprecated alias
    "study": ("ncstudy.study",),
    "cli": ("ncstudy.cli",),
}
MAY_IMPORT = {
    "base": set(),
    "format": {"base"},
    "data": {"base", "format"},
    "train": {"base", "format", "data"},
    "forecast": {"base", "format"},
    "present": {"base", "format", "forecast"},
    "adapters": {"base", "format", "forecast", "present"},
    "analyze": {"base", "format", "forecast", "present", "adapters"},
    "study": {"base", "format", "data", "train", "forecast", "present", "adapters"},
    "cli": set(LAYERS),
}
# Third-party frameworks the pure layers must not import, even lazily.
FRAMEWORKS = ("ray", "optuna", "mlflow")
PURE = {"base", "format", "data", "train", "forecast", "present"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # `from pkg import module`
                if f"{mod}.{a.name}" in MODULES:
                    found.add(f"{mod}.{a.name}")
    return found


def _layer(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return None


GRAPH = {m: {i for i in _imports(m, p) if i in MODULES} for m, p in MODULES.items()}
EXTERNAL = {m: {i.split(".")[0] for i in _imports(m, p)} for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "ncstudy" and _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "ncstudy"))
def test_imports_respect_the_layers(module):
    layer = _layer(module)
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = sorted(i for i in GRAPH[module] if i != "ncstudy" and _layer(i) not in allowed)
    assert not wrong, f"{module} ({layer}) imports {wrong}"
    if layer in PURE:
        assert not EXTERNAL[module] & set(FRAMEWORKS), f"{module} imports {EXTERNAL[module] & set(FRAMEWORKS)}"


def test_no_import_cycles():
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(GRAPH[m]):
            # a package importing its own submodule (re-exports in __init__) is not a circle
            if not n.startswith(m + "."):
                visit(n)
        stack.pop()

    for m in sorted(GRAPH):
        visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_mlflow_reader_and_layout_need_no_ray():
    """``ncstudy analyze``/``replay`` read studies without importing Ray."""
    code = ("import sys, ncstudy.adapters.mlflow.reader, ncstudy.adapters.mlflow.layout, ncstudy.forecast; "
            "bad = [m for m in ('ray', 'optuna') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
