"""The architecture's promises, checked on the source: no import circle, family names only in family files, ruff."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"dpt_jax": ROOT / "dpt_jax", "dpt_jax.convert": ROOT / "convert"}  # convert/ installs as dpt_jax.convert
FAMILY_NAMES = ("beit", "swinv2", "dinov2")


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every module of ours that `name` imports, at any depth of its code (functions and TYPE_CHECKING included)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & set(modules)
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself (its __init__ for a package)
                found.add(base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # registry imports every convert/ module by looking for families (importlib): count those edges too
    graph["dpt_jax.registry"] |= {m for m in modules if m.startswith("dpt_jax.convert.")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 20 and "dpt_jax.convert.hf" in graph["dpt_jax.checkpoint"]  # the graph is really read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _spellings(path: Path) -> list[str]:
    """Where code (not comments, not docstrings) names an encoder family: identifiers and string constants."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(FAMILY_NAMES) + r")(?![A-Za-z0-9_])", re.IGNORECASE)
    hits = []
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            texts.append(node.name)
        elif isinstance(node, ast.alias):
            texts += [node.name, node.asname or ""]
        for text in texts:
            # identifiers: each snake_case / CamelCase word; strings: whole tokens
            split = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).replace("_", " ") if not isinstance(
                node, ast.Constant) else text
            if words.search(split):
                hits.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return hits


def test_no_code_outside_a_familys_files_names_a_family():
    family_files = {ROOT / d / f"{n}.py" for d in ("dpt_jax", "convert") for n in FAMILY_NAMES}
    files = [p for d in ("dpt_jax", "convert", "benchmarks") for p in sorted((ROOT / d).glob("*.py"))
             if p not in family_files]
    assert len(files) > 30
    hits = [h for p in files for h in _spellings(p)]
    assert hits == []
    # and the check sees a spelling where there is one
    assert _spellings(ROOT / "convert" / "beit.py")


def test_ruff_passes():  # ruff is a test dependency (pyproject.toml)
    command = ["ruff"] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*command, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
