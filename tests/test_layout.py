"""The library's shape: imports flow one way, with no cycle, and result readers stay light.

The scan reads every module's imports, those inside functions (lazy ones) included, so a cycle
cannot hide behind an import deferred to call time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "medxgan"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """The medxgan modules a file imports anywhere in it: `from a.b import c` means a.b.c where
    that is a module, a.b otherwise."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package upwards
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, set(known)) - {name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str:
    """A module's sub-package (medxgan.nets, ...), or the module itself at the top level."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_scan_sees_lazy_and_relative_imports(tmp_path):
    """The scan itself: an import inside a function counts, a relative one resolves."""
    source = tmp_path / "medxgan" / "a"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "x.py").write_text("def f():\n    from . import y\n    import medxgan.b\n")
    known = {"medxgan.a", "medxgan.a.x", "medxgan.a.y", "medxgan.b"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "medxgan"
    try:
        assert imported(source / "x.py", known) == {"medxgan.a.y", "medxgan.b"}
    finally:
        PACKAGE = saved
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_sub_packages():
    """Sub-packages form layers: data and nets below train, inversion and explainers, evaluate
    above them, report and pipeline on top; nothing imports upwards."""
    graph = {}
    for module, targets in import_graph().items():
        graph.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    graph.pop("medxgan", None)  # the package's own __init__ exports the API: it sits above everything
    assert cycles(graph) == []


def test_library_is_split_into_sub_packages():
    sub_packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert len(sub_packages) >= 4, sub_packages


@pytest.mark.parametrize("module", ["medxgan.report.tables", "medxgan.report.ablation", "medxgan.report.runtimes",
                                    "medxgan.names", "medxgan.pipeline.cli"])
def test_result_readers_do_not_load_the_compute_stack(module):
    """Reading results (and `medxgan --help`) loads neither torch nor the explanation libraries."""
    heavy = ("torch", "captum", "pytorch_grad_cam", "medxgan.explainers", "medxgan.evaluate.scoring")
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


@pytest.mark.parametrize("module", ["medxgan.explainers", "medxgan.inversion", "medxgan.train.gan",
                                    "medxgan.train.encoder", "medxgan.artifacts"])
def test_a_job_loads_the_slow_libraries_only_where_it_uses_them(module):
    """torchmetrics, torchvision, captum, pytorch-grad-cam and scipy take 4-5 s to load together: a
    job pays that once per process, so the modules every job imports leave them to the functions
    that use them (an explain job for the difference map needs none of them)."""
    slow = ("torchmetrics", "torchvision", "captum", "pytorch_grad_cam", "scipy")
    code = f"import sys, {module}; print(' '.join(m for m in {slow!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
