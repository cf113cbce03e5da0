"""How tests/test_layout.py reads the package: with `ast`, nothing imported.

Every import statement counts, at module level or inside a function (marked `in_function`: it runs
when called), under `if TYPE_CHECKING:` too (marked `type_only`: it never runs). So does a string
constant that spells a dotted module of the package (`statement=False`): the name tables that feed
`importlib.import_module`.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = "transferkit"


@dataclass(frozen=True)
class Import:
    """One imported name: `module` is absolute and, inside the package, the module it loads."""

    module: str
    line: int
    end_line: int = 0
    in_function: bool = False  # inside a function body: runs when called, not at import
    type_only: bool = False  # under `if TYPE_CHECKING:`: never runs
    statement: bool = True  # False: a string constant naming a module (for importlib)


@dataclass
class Module:
    name: str
    where: str  # the path relative to the folder above the package: transferkit/data/decode.py
    source: str
    imports: list[Import]
    tree: ast.Module

    @property
    def lines(self) -> int:
        return len(self.source.splitlines())


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def raw_imports(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[str, list[str], ast.stmt, bool, bool]]:
    """`(absolute base module, names imported from it, statement, in a function, type-only)` for every import."""

    def walk(node: ast.AST, in_function: bool, type_only: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, [], child, in_function, type_only
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                yield base, [a.name for a in child.names if a.name != "*"], child, in_function, type_only
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
            else:
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from walk(child, inner, type_only)

    yield from walk(tree, False, False)


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
        imports = [Import(target, stmt.lineno, stmt.end_lineno or stmt.lineno, in_function, type_only)
                   for base, names, stmt, in_function, type_only in raw_imports(tree, name, path.name == "__init__.py")
                   for target in resolve(base, names, known)]
        imports += [Import(node.value, node.lineno, node.lineno, statement=False) for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and node.value in known and "." in node.value]
        modules[name] = Module(name, path.relative_to(package_dir.parent).as_posix(), source, imports, tree)
    return modules


def internal(target: str, root: str = ROOT) -> bool:
    return target == root or target.startswith(root + ".")


def parents(module: str) -> list[str]:
    """The packages Python imports before `module`: `a.b.c` -> `a`, `a.b`."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


PRAGMA = re.compile(r"^(noqa(:\s*[A-Z0-9, ]+)?|type:\s*ignore(\[[^]]*\])?|pragma:[^-]*|pylint:\S+)\s*[-:]?\s*")


def comments(source: str) -> dict[int, str]:
    """Line -> the text of the comment on it (pragmas such as `noqa: F401` removed: they give no reason)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = PRAGMA.sub("", token.string.lstrip("#").strip()).strip()
    return found


# -- the import graph's cycles ----------------------------------------------------------------
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
