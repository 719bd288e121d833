"""The package layout: no import cycle between modules (function-level imports included), the loss
core imports nothing from the bundle, and the public API is what ``__all__`` says."""

from __future__ import annotations

import ast
import pathlib

import monai_gdl

PACKAGE = pathlib.Path(monai_gdl.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import submodule`` depends on the submodule; ``from pkg import name`` on pkg
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_anywhere():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_loss_core_does_not_import_the_bundle_or_the_integrations():
    graph = _import_graph()
    core = [m for m in graph if m.startswith(("monai_gdl.losses", "monai_gdl.kernels"))]
    assert core
    for module in core:
        assert not {m for m in graph[module] if m.startswith(("monai_gdl.bundle", "monai_gdl.integrations"))}, module


def test_nnunet_is_imported_only_by_its_integration():
    """nnU-Net is an optional extra: one module imports it (and gives the install hint when it is missing)."""
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "nnunetv2" or n.startswith("nnunetv2.") for n in names):
                importers.add(_module_name(path))
    assert importers == {"monai_gdl.integrations.nnunet"}


def test_public_api_is_curated():
    for name in monai_gdl.__all__:
        assert hasattr(monai_gdl, name), name
    assert "generalized_dice_weights" in monai_gdl.__all__
    assert not [n for n in monai_gdl.__all__ if n.startswith("_")]


def test_the_kernels_have_one_face():
    """Outside ``monai_gdl.kernels`` nothing imports its modules directly: the losses (and the tools) use what
    ``monai_gdl/kernels/__init__.py`` exports, so a backend can move without touching them."""
    graph = _import_graph()
    for module, targets in graph.items():
        if module.startswith("monai_gdl.kernels"):
            continue
        inner = {t for t in targets if t.startswith("monai_gdl.kernels.")}
        assert not inner, f"{module} imports {sorted(inner)}; import from monai_gdl.kernels instead"
