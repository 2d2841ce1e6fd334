"""The package's modules form layers: no import cycle, counting imports made inside functions too (an import moved
into a function to dodge a loop still ties the two modules)."""
from __future__ import annotations

import ast
from pathlib import Path

from elasticmem_core.core.experiment import resolve


def module_imports(root: Path) -> dict[str, dict[str, list[int]]]:
    """{module: {imported module of the same package: [line, ...]}} for every .py under root (a package folder),
    from every import statement anywhere in the file. `from . import x` ties to submodule x when there is one."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    edges: dict[str, dict[str, list[int]]] = {name: {} for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges[name].setdefault(target, []).append(node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    edges = module_imports(resolve("elasticmem_core"))
    assert len(edges) > 30
    found = cycles(edges)
    detail = ["; ".join(f"{a} -> {b} (line {edges[a][b][0]})" for a in c for b in c if b in edges[a]) for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import low\n")
    (pkg / "low.py").write_text("import math\n")
    (pkg / "high.py").write_text("from .low import x\n")
    edges = module_imports(pkg)
    assert edges["pkg.sub"] == {"pkg.sub.leaf": [1]} and edges["pkg.sub.leaf"] == {"pkg.low": [1]}
    assert cycles(edges) == []
    (pkg / "low.py").write_text("def f():\n    from .high import y\n")
    assert cycles(module_imports(pkg)) == [["pkg.high", "pkg.low"]]


def test_every_module_is_under_600_lines():
    # one job per module: a module that grows past this has taken a second job; split it where the job ends
    root = resolve("elasticmem_core")
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 600}
    assert not long, f"modules of 600 lines or more: {long}"


# The package's folders, lowest layer first: a module imports only from its own folder or a folder above it here.
LAYERS = ["core", "memorysuite", "method", "training", "baselines", "alfworld", "harness", "studies"]


def upward_imports(edges: dict[str, dict[str, list[int]]], package: str, layers: list[str]) -> list[str]:
    """'a -> b (line n)' for every import from a lower folder into a higher one (or a module outside the folders)."""
    def layer(module: str) -> int:
        parts = module.split(".")
        return layers.index(parts[1]) if len(parts) > 1 and parts[1] in layers else -1

    out = []
    for a, targets in edges.items():
        if a == package:
            continue
        if layer(a) < 0:
            out.append(f"{a} is in no layer folder")
            continue
        out += [f"{a} -> {b} (line {lines[0]})" for b, lines in targets.items() if layer(b) > layer(a)]
    return out


def test_folders_are_layers_and_imports_only_point_down():
    root = resolve("elasticmem_core")
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)
    bad = upward_imports(module_imports(root), "elasticmem_core", LAYERS)
    assert not bad, "imports from a lower layer into a higher one:\n" + "\n".join(bad)


def test_an_upward_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "high" / "b.py").write_text("from ..low import a\n")
    (pkg / "low" / "a.py").write_text("import math\n")
    assert upward_imports(module_imports(pkg), "pkg", ["low", "high"]) == []
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    assert upward_imports(module_imports(pkg), "pkg", ["low", "high"]) == ["pkg.low.a -> pkg.high.b (line 2)"]
