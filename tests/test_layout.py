"""Package layout, read from the source with `ast` (nothing is imported): file sizes, import cycles and
the one-way layer rules of docs/architecture.md.

Every import counts, at module level or inside a function, so a lazy import cannot hide a cycle or a
layer crossing. So does a string constant that spells a dotted module of the package (the name tables,
such as `cli.COMMANDS`, that feed `importlib.import_module`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "transferkit"
MAX_LINES = 300
LIGHTNING = frozenset({"pytorch_lightning", "lightning", "lightning_fabric"})
ABOVE_TASKS = frozenset({"commands", "builders", "planning", "cli"})


@dataclass(frozen=True)
class Import:
    """One imported name: `module` is absolute and, inside the package, the module it loads."""

    module: str
    line: int


@dataclass
class Module:
    name: str
    where: str  # the path relative to the folder above the package: transferkit/data/decode.py
    source: str
    imports: list[Import]


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def raw_imports(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """`(absolute base module, names imported from it, line)` for every import statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            yield base, [a.name for a in node.names if a.name != "*"], node.lineno


def resolve(base: str, names: list[str], known: set[str]) -> list[str]:
    """The modules an import loads: `from pkg import mod` loads `pkg.mod`, anything else `base`."""
    return [f"{base}.{n}" for n in names if f"{base}.{n}" in known] or [base]


def read_package(package_dir: Path) -> dict[str, Module]:
    paths = sorted(package_dir.rglob("*.py"))
    known = {module_name(p, package_dir) for p in paths}
    modules = {}
    for path in paths:
        name, source = module_name(path, package_dir), path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        imports = [Import(target, line)
                   for base, names, line in raw_imports(tree, name, path.name == "__init__.py")
                   for target in resolve(base, names, known)]
        imports += [Import(node.value, node.lineno) for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and node.value in known and "." in node.value]
        modules[name] = Module(name, path.relative_to(package_dir.parent).as_posix(), source, imports)
    return modules


def internal(target: str, root: str) -> bool:
    return target == root or target.startswith(root + ".")


def layer(module: str) -> str:
    """`transferkit.data.decode` -> `data`; the package root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# -- rules ------------------------------------------------------------------------------------
def size_violations(modules: dict[str, Module], max_lines: int = MAX_LINES) -> list[str]:
    return [f"{m.where}: {n} lines (keep a module under about {max_lines}; split it by concept)"
            for m in modules.values() if (n := len(m.source.splitlines())) > max_lines]


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {name: {i.module for i in m.imports if i.module in modules and i.module != name}
            for name, m in modules.items()}


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module: each holds a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=min)


def example_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def cycle_violations(modules: dict[str, Module]) -> list[str]:
    graph, found = import_graph(modules), []
    for component in components(graph):
        cycle = example_cycle(graph, component)
        others = sorted(component - set(cycle))
        found.append("import cycle: " + " -> ".join(cycle)
                     + (f" (also in the cycle: {', '.join(others)})" if others else ""))
    return found


def layer_violation(importer: str, target: str, root: str = "transferkit") -> str | None:
    """Why `importer` must not import `target`, or None."""
    source, top = layer(importer), target.split(".")[0]
    inside = internal(target, root)
    if source == "data" and inside and layer(target) not in ("data", "errors"):
        return "data imports no other transferkit package except transferkit.errors"
    if source == "models" and top in LIGHTNING:
        return "models never import Lightning"
    if source == "models" and inside and layer(target) in ABOVE_TASKS | {"tasks"}:
        return "models import nothing from tasks/commands/builders/planning/cli"
    if source == "tasks" and inside and layer(target) in ABOVE_TASKS:
        return "tasks import nothing from commands/builders/planning/cli"
    if top == "hydra" and importer != f"{root}.cli":
        return "only transferkit/cli/app.py imports hydra"
    return None


def layer_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    for m in modules.values():
        for imp in m.imports:
            why = layer_violation(m.name, imp.module)
            if why:
                found.append(f"{m.where}:{imp.line}: imports {imp.module} ({why})")
    return sorted(set(found))


# -- tests ------------------------------------------------------------------------------------
def test_package_layout() -> None:
    modules = read_package(PACKAGE_DIR)
    assert "transferkit.cli.app" in modules and "transferkit.data.transforms" in modules
    problems = size_violations(modules) + cycle_violations(modules) + layer_violations(modules)
    assert not problems, f"{len(problems)} layout violation(s):\n" + "\n".join(problems)


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / "transferkit" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "transferkit"


def test_checker_resolves_relative_and_lazy_imports_and_finds_cycles(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "def f():\n    from transferkit.data.c import g\n",
        "data/c.py": "from .a import x\nimport numpy\n",
        "tasks/__init__.py": "",
        "tasks/t.py": "from ..data import a\n",
        "cli.py": "import importlib\nTABLE = {'c': 'transferkit.commands.c'}\nlog_name = 'transferkit'\n",
        "commands/__init__.py": "",
        "commands/c.py": "def run():\n    from transferkit import cli\n",
    })
    modules = read_package(package)
    assert {i.module for i in modules["transferkit.data.c"].imports} == {"transferkit.data.a", "numpy"}
    assert {i.module for i in modules["transferkit.tasks.t"].imports} == {"transferkit.data.a"}
    assert {i.module for i in modules["transferkit.cli.app"].imports} == {"importlib", "transferkit.commands.c"}
    assert cycle_violations(modules) == [
        "import cycle: transferkit.cli.app -> transferkit.commands.c -> transferkit.cli.app",
        "import cycle: transferkit.data.a -> transferkit.data.b -> transferkit.data.c -> transferkit.data.a"]
    assert layer_violations(modules) == []


def test_checker_reports_layer_crossings_and_long_files(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "cli.py": "import hydra\n",
        "data/__init__.py": "",
        "errors.py": "",
        "data/d.py": "from transferkit.errors import lookup\nfrom transferkit.models import fcn\n",
        "models/__init__.py": "",
        "models/fcn.py": "import pytorch_lightning as pl\n" + "x = 1\n" * 301,
        "tasks/__init__.py": "",
        "tasks/t.py": "def f():\n    from transferkit.training.builders import build_task\n    import hydra.utils\n",
    })
    modules = read_package(package)
    assert layer_violations(modules) == [
        "transferkit/data/d.py:2: imports transferkit.models.fcn (data imports no other transferkit package except "
        "transferkit.errors)",
        "transferkit/models/fcn.py:1: imports pytorch_lightning (models never import Lightning)",
        "transferkit/tasks/t.py:2: imports transferkit.training.builders (tasks import nothing from commands/builders/planning/cli)",
        "transferkit/tasks/t.py:3: imports hydra.utils (only transferkit/cli/app.py imports hydra)",
    ]
    assert size_violations(modules) == [
        "transferkit/models/fcn.py: 302 lines (keep a module under about 300; split it by concept)"]
