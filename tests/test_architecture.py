"""The house's import rules (docs/architecture.md), read statically from the source with ``ast``.

Every ``import`` counts, at module level or inside a function: no circles between modules of ``phasestem``;
``learn`` imports nothing of ``recon`` except in :mod:`phasestem.learn.hybrid`; the physics core imports neither;
:mod:`phasestem.physics.fourier` imports nothing of phasestem's; no source file is longer than 500 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

HYBRID = "phasestem.learn.hybrid"  # the one learn module that may import recon
MAX_LINES = 500


def modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package's ``__init__``)."""
    out = {}
    for path in (src / "phasestem").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the phasestem modules it imports anywhere in its file (``from a import b`` counts as a.b when
    that is a module, else as a)."""
    mods = modules(src)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                found.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names)
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_circle_finder_finds_function_level_circles(tmp_path):
    pkg = tmp_path / "phasestem"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import phasestem.a\n")
    (pkg / "d.py").write_text("from phasestem.sub.b import f\n")
    graph = import_graph(tmp_path)
    assert graph["phasestem.sub.b"] == {"phasestem.c"} and graph["phasestem.a"] == {"phasestem.sub.b"}
    assert circles(graph) == [["phasestem.a", "phasestem.c", "phasestem.sub.b"]]


def test_no_import_circles():
    found = circles(import_graph())
    assert found == [], f"import circles: {found}"


def test_learn_never_imports_recon_but_through_its_hybrid_module():
    graph = import_graph()
    wrong = {m: sorted(t for t in targets if t.startswith("phasestem.recon"))
             for m, targets in graph.items() if m.startswith("phasestem.learn") and m != HYBRID}
    assert {m: t for m, t in wrong.items() if t} == {}
    assert any(t.startswith("phasestem.recon") for t in graph[HYBRID])


def test_the_physics_core_stands_below_recon_learn_and_simulate():
    graph = import_graph()
    upward = ("phasestem.recon", "phasestem.learn", "phasestem.simulate", "phasestem.calibrate", "phasestem.cli")
    for m, targets in graph.items():
        if m.startswith("phasestem.physics") or m in ("phasestem.optics", "phasestem.detector"):
            assert not [t for t in targets if t.startswith(upward)], (m, targets)
    assert graph["phasestem.physics.fourier"] == set()


def test_no_source_file_is_longer_than_500_lines():
    long = {str(p.relative_to(SRC)): n for p, _ in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, long
    assert len((SRC / "phasestem" / "recon" / "model.py").read_text(encoding="utf-8").splitlines()) <= 450
