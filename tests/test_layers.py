"""The package's layers (docs/design.md, "Layout"): imports only point down, no module imports a private name
of another, and there is no import circle. Read from the source with ast (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Rank of each part of cora (cora.<part>...): a module may import its own part or a part of lower rank.
RANKS = {
    "errors": -1,  # below everything: any module may raise UserError
    "": 0, "_C": 0, "fileio": 0, "config": 0, "vocabulary": 0, "preprocess": 0, "openmp": 0,
    "io": 1, "ops": 1, "text_cache": 1,
    "modeling": 2, "data": 2,
    "checkpoint": 3,
    "engine": 4, "export": 4, "runtime": 4,
    "serve": 5,
    "bench": 6,
    "cli": 7,
    "__main__": 8,
}


def part(module: str) -> str:
    """"cora.export.onnx" -> "export"; "cora" -> ""."""
    return module.split(".")[1] if "." in module else ""


def package_imports(root: Path = ROOT / "cora") -> tuple[dict[str, set[str]], list[str]]:
    """({module: cora modules it imports}, ["module imports other._private"]) over every file of the package."""
    edges: dict[str, set[str]] = {}
    private = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        targets = edges.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cora":
                for alias in node.names:
                    # `from cora.x import y` where y is a module counts as importing cora.x.y
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if (root.parent / (sub.replace(".", "/"))).is_dir()
                                or (root.parent / (sub.replace(".", "/") + ".py")).is_file() else node.module)
                    if alias.name.startswith("_") and alias.name != "_C":
                        private.append(f"{module} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "cora")
    return edges, private


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, bs in sorted(edges.items()) for b in sorted(bs)
            if part(a) != part(b) and RANKS[part(b)] >= RANKS[part(a)]]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_part_has_a_rank():
    edges, _ = package_imports()
    assert {part(m) for m in edges} <= set(RANKS)


def test_imports_only_point_down():
    edges, _ = package_imports()
    assert layer_violations(edges) == []


def test_no_import_circle():
    edges, _ = package_imports()
    assert cycles(edges) == []


def test_no_private_name_is_imported_across_modules():
    _, private = package_imports()
    assert private == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """Negative controls: an upward import, a circle and a private import in a throwaway package."""
    pkg = tmp_path / "cora"
    (pkg / "modeling").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "modeling" / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "modeling" / "a.py").write_text("def f():\n    from cora.cli import b\n")
    (pkg / "cli" / "b.py").write_text("from cora.modeling.a import _g\n")
    edges, private = package_imports(pkg)
    assert layer_violations(edges) == ["cora.modeling.a -> cora.cli.b"]
    assert cycles(edges) == [["cora.modeling.a", "cora.cli.b"]] or cycles(edges) == [["cora.cli.b", "cora.modeling.a"]]
    assert private == ["cora.cli.b imports cora.modeling.a._g"]
