"""Architecture rules, read from the source with `ast`: the modules under test are parsed, not
imported (only the plugin registry is asked for the names of the conditions).

- Imports point one way: the modules of `vqtoolkit/` import each other without a cycle.
- The core never names a modality: no string literal in `vqtoolkit/` is a registered condition's name.
- One concern per file: no `.py` file in `vqtoolkit/` or `plugins/` is longer than 400 lines.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "vqtoolkit"
PLUGINS = ROOT / "plugins"
MAX_LINES = 400


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------------------------
# the import graph


@dataclass(frozen=True)
class Module:
    name: str  # dotted: "vqtoolkit", "vqtoolkit.api", "vqtoolkit.train.loop"
    path: Path
    is_package: bool  # an __init__.py: its name is the package's

    @property
    def package(self) -> str:
        """The package that `from . import` means inside this module."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _modules(package_dir: Path) -> dict[str, Module]:
    modules = {}
    for path in _python_files(package_dir):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, methods, `try`, `if`), except the body of
    `if TYPE_CHECKING:` (its `else:` branch still counts)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: Module, node: ast.Import | ast.ImportFrom, modules: dict[str, Module]) -> set[str]:
    """The modules of `vqtoolkit` that one import statement runs, named as in `modules`.

    `from .a import b` imports `pkg.a.b` when that is a module, else `pkg.a` (b is a name in it);
    `from . import x` and `from .. import x` likewise. Importing `a.b.c` also runs the `__init__`
    of every package on the way, except the importer's own ancestors: those are imported before
    the importer itself runs. An explicit import of an ancestor (`from . import __version__`,
    `import vqtoolkit`) is an edge like any other.
    """
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        named = []
        for alias in node.names:
            sub = f"{base_name}.{alias.name}"
            named.append(sub if sub in modules else base_name)
    ancestors = {module.name.rsplit(".", k)[0] for k in range(1, module.name.count(".") + 1)}
    if module.is_package:
        ancestors.add(module.name)
    targets = set()
    for name in named:
        if name not in modules:
            continue  # outside vqtoolkit (torch, click, vqtoolkit_plugins, ...)
        targets.add(name)
        parts = name.split(".")
        targets |= {".".join(parts[:k]) for k in range(1, len(parts))} - ancestors
    targets.discard(module.name)
    return targets


def import_graph(package_dir: Path = CORE) -> dict[str, dict[str, str]]:
    """module -> {imported module -> "file:line" of the first import that makes the edge}."""
    modules = _modules(package_dir)
    graph: dict[str, dict[str, str]] = {}
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        edges: dict[str, str] = {}
        for node in sorted(_import_nodes(tree), key=lambda n: n.lineno):
            for target in sorted(_targets(module, node, modules)):
                where = module.path.relative_to(package_dir.parent).as_posix()
                edges.setdefault(target, f"{where}:{node.lineno}")
        graph[module.name] = edges
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Every elementary cycle, each as [a, b, ..., a] starting at its smallest module name."""
    found = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], {})):
            if nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in path:
                walk(start, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def _describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    where = ", ".join(graph[a][b] for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}  ({where})"


def test_import_graph_rules_on_a_toy_package(tmp_path):
    """The graph's rules on a package made for them: lazy imports count, TYPE_CHECKING ones do
    not, a package `__init__` importing its children is fine, and a child importing the `__init__`
    that imports it, or a package whose `__init__` runs on the way back, closes a cycle."""
    files = {
        "__init__.py": "from . import a\n"
                       "def __getattr__(name):\n    from .h import H\n    return H\n",
        "a.py": "from .sub.b import x\n",  # runs sub/__init__.py first
        "sub/__init__.py": "from .. import a\n",
        "sub/b.py": "x = 1\n",
        "c.py": "def f():\n    from . import d\n",
        "d.py": "from .c import f\n",
        "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .f import Y\n"
                "else:\n    from .sub import b\n",
        "f.py": "import pkg.e\n",
        "h.py": "from . import VERSION\nimport json\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg"] == {"pkg.a": "pkg/__init__.py:1", "pkg.h": "pkg/__init__.py:3"}
    assert graph["pkg.a"] == {"pkg.sub": "pkg/a.py:1", "pkg.sub.b": "pkg/a.py:1"}
    assert graph["pkg.sub"] == {"pkg.a": "pkg/sub/__init__.py:1"}
    assert graph["pkg.e"] == {"pkg.sub": "pkg/e.py:5", "pkg.sub.b": "pkg/e.py:5"}  # not pkg.f
    assert graph["pkg.f"] == {"pkg.e": "pkg/f.py:1"}
    assert graph["pkg.h"] == {"pkg": "pkg/h.py:1"}  # VERSION is a name in pkg/__init__.py
    assert cycles(graph) == [["pkg", "pkg.h", "pkg"], ["pkg.a", "pkg.sub", "pkg.a"], ["pkg.c", "pkg.d", "pkg.c"]]
    assert _describe(cycles(graph)[2], graph) == "pkg.c -> pkg.d -> pkg.c  (pkg/c.py:2, pkg/d.py:1)"


def test_import_graph_sees_the_real_imports():
    """Guards the rule below against passing because it reads nothing."""
    graph = import_graph()
    assert len(graph) > 20 and sum(map(len, graph.values())) > 2 * len(graph)
    assert all(target in graph for edges in graph.values() for target in edges)


def test_no_import_cycles():
    """No module of `vqtoolkit/` reaches itself through its imports.

    Counted: every `import` and `from ... import` of a `vqtoolkit` module, absolute or relative,
    wherever it stands (a lazy import inside a function is a cycle put off until call time, not
    removed), plus the package `__init__`s such an import runs on the way. Not counted: imports
    under `if TYPE_CHECKING:`, which never run; a type annotation may point up a layer. A package
    `__init__` importing its own children is no cycle; a child that imports its parent `__init__`
    which imports the child is one. Imports by string (`importlib.import_module`) are not seen.
    """
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(c, graph) for c in found)


# --------------------------------------------------------------------------------------------
# modality names


def registered_condition_names() -> set[str]:
    """The names in the plugin registry: `vqtoolkit.plugins.registered()` (the redesign's home),
    else `vqtoolkit.conditions.registered()` (today's)."""
    for module_name in ("vqtoolkit.plugins", "vqtoolkit.conditions"):
        registered = getattr(importlib.import_module(module_name), "registered", None)
        if registered is not None:
            return set(registered())
    raise AssertionError("neither vqtoolkit.plugins nor vqtoolkit.conditions has registered()")


def _pad_modes(tree: ast.AST) -> set[int]:
    """ids of the constants passed as `mode=` to a function called `pad` (`np.pad`, `F.pad`):
    numpy's and torch's padding mode "edge" is a word of their API, not the edge modality."""
    return {id(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")) == "pad"
            for kw in node.keywords if kw.arg == "mode" and isinstance(kw.value, ast.Constant)}


def test_core_names_no_condition():
    """No string literal in `vqtoolkit/**/*.py` equals the name of a registered condition.

    Every `ast.Constant` str counts (docstrings and f-string pieces too: they are never exactly a
    bare name, so they cannot trip it), except a padding mode (`np.pad(..., mode="edge")`). The
    core talks about conditions through the `Condition` contract only; a modality's name belongs
    to its plugin."""
    names = registered_condition_names()
    assert {"segmentation", "depth", "class"} <= names  # the built-ins loaded: the check is not empty
    hits = []
    for path in _python_files(CORE):
        tree = ast.parse(path.read_text(), str(path))
        padding = _pad_modes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                if id(node) not in padding:
                    hits.append(f"{_rel(path)}:{node.lineno} {node.value!r}")
    assert not hits, "the core names conditions:\n" + "\n".join(hits)


# --------------------------------------------------------------------------------------------
# file size


def test_files_at_most_400_lines():
    """Every `.py` in `vqtoolkit/` and `plugins/` has at most 400 lines: past that a file mixes
    concerns (see REDESIGN b5)."""
    files = _python_files(CORE) + _python_files(PLUGINS)
    assert len(files) > 10
    long = [(len(p.read_text().splitlines()), _rel(p)) for p in files]
    offenders = [f"{path}: {n} lines" for n, path in sorted(long, reverse=True) if n > MAX_LINES]
    assert not offenders, f"files over {MAX_LINES} lines:\n" + "\n".join(offenders)
