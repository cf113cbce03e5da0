"""The package's layout, checked from its source (read by `layout_reader`, nothing imported): the map of
docs/architecture.md.

`LAYERS` below is the architecture in one table. The rules, one test each (tests/test_layout_checker.py
shows each one fire on a fake package):

  a. at most `MAX_TOP_MODULES` modules at the top of transferkit/;
  b. no file over `MAX_LINES` lines; c. each commands/*.py at most `MAX_COMMAND_LINES` lines;
  d. imports go one way, down `LAYERS` (with the exceptions named beside it, each with its reason);
  e. no function below the config layers takes the composed config (`DictConfig`, or a `cfg` parameter);
  f. function-level imports of transferkit modules: at most `MAX_LAZY_IMPORTS`, each with its reason;
  g. no import cycles.

Every import counts for d and g, at module level or inside a function, so a lazy import cannot hide a
cycle or a layer crossing; so does a string naming a module (for `importlib`). `python tests/test_layout.py`
prints every rule's current violations.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from layout_reader import (ROOT, Import, Module, comments, components, example_cycle, import_graph, internal, parents,
                           read_package)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / ROOT

# -- the map ----------------------------------------------------------------------------------
# The packages of transferkit/, top to bottom. A module may import its own package and any package on
# a LOWER line; never one on its own line (peers stay independent of each other) nor one above. A lower
# layer reaches an upper one only through a callable handed down (cli gives search's tune its compose
# function, training gets callbacks from its caller): that is a parameter, not an import, so it needs no
# exception. Nested packages (training/race, evaluation/reports, data/embedded) belong to their parent.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "__main__"),  # the package's face: lazy public names; `python -m transferkit`
    ("api",),  # transferkit.fit/test/predict/...: argv for the CLI layer, a Run back
    ("runs",),  # Run / load: reopen a run directory or checkpoint from its files
    ("cli",),  # argv -> composed config; the only Hydra user; sweep expansion
    ("commands",),  # one entry per command: read cfg, call planning, call the package doing the work
    ("planning",),  # config -> RunSpec, frozen and typed: the DictConfig stops here
    ("search",),  # sweeps and their launchers, tune (Optuna), the LR finder
    ("training",),  # the fit session: trainer, run directory, results, resume, the race's legs
    ("evaluation",),  # measure, transferability, weight arithmetic, run reports and figures
    ("exporting",),  # ONNX/TorchScript with parity (checked by running the exported file through inference)
    ("serving",),  # serve: the one predictor behind an HTTP server (LitServe), each request checked first
    ("inference",),  # predict without the training stack: one predictor, one dataset, one set of writers
    ("tasks",),  # LightningModules, fine-tuning strategies, optimizers, schedules, head solver
    ("models",),  # backbones (the one timm.create_model caller), weights, heads, FCN, input format
    ("runtime",),  # what keeps a run alive: checkpoint IO, RNG state, guards, rendezvous, the torch-file reader
    ("data", "config"),  # the folder pipeline; conf/ and recipes/ files and their value checks
    ("errors", "assets"),  # ConfigError/lookup; the house weights (files, no code)
)
# Modules every layer may import, whatever its rank. Each is a leaf: from transferkit it imports only
# other shared leaves, so importing it drags no layer along.
SHARED_LEAVES = {
    f"{ROOT}.errors": "ConfigError, lookup, did_you_mean: every layer names a bad key the same way",
    f"{ROOT}.planning.spec": "the typed RunSpec (plain frozen dataclasses) whose parts every layer receives",
    f"{ROOT}.planning.choices": "the spec's typed choices (finetune group, race plan, weights source)",
    f"{ROOT}.models.input_format": "InputFormat, the value type of an input format (plain dataclass, no imports)",
    f"{ROOT}.runtime.format": "the run/checkpoint format version and its one migration (plain dicts)",
}
# Packages held to a stricter rule than their rank.
STANDALONE = {
    # The folder pipeline stays usable and testable on its own: its constructors take primitives, which
    # training's builders unpack from `spec.data`. This rule is stricter than SHARED_LEAVES: no spec here.
    "data": frozenset({f"{ROOT}.errors"}),
}
LIGHTNING = frozenset({"pytorch_lightning", "lightning", "lightning_fabric"})
# (package, third-party tops it never imports, anywhere, and why)
NEVER_IMPORTS = (
    ("models", LIGHTNING, "models never import Lightning: a backbone is a plain nn.Module, also for inference"),
)
# (package, third-party tops that importing any of its modules must not load, and why). Followed through
# module-level imports only (a function-level import runs when called); tests/test_export.py checks the
# same at run time: predicting from an exported file in a fresh interpreter loads neither.
MODULE_LEVEL_FREE = (
    ("inference", LIGHTNING | {"timm"}, "inference imports neither Lightning nor timm at module level: "
                                        "predicting from an exported model needs neither"),
)
# Hydra composes the config in the CLI layer and nowhere else.
HYDRA_OWNER = "cli"
# Only these see the composed DictConfig; below them functions receive the spec part they need.
CONFIG_LAYERS = frozenset({"cli", "config", "planning", "commands"})

MAX_TOP_MODULES = 6
MAX_LINES = 400
MAX_COMMAND_LINES = 80
MAX_LAZY_IMPORTS = 40


def layer(module: str) -> str:
    """`transferkit.data.decode` -> `data`; `transferkit.api` -> `api`; the package root -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(name: str) -> int | None:
    """The line of `LAYERS` that holds package `name` (0 = top), or None."""
    return next((i for i, names in enumerate(LAYERS) if name in names), None)


# -- a. b. c. sizes ---------------------------------------------------------------------------
def top_module_violations(modules: dict[str, Module], max_modules: int = MAX_TOP_MODULES) -> list[str]:
    top = sorted(m.where.split("/")[1] for m in modules.values() if m.where.count("/") == 1)
    if len(top) <= max_modules:
        return []
    return [f"transferkit/ holds {len(top)} top-level modules ({', '.join(top)}); keep at most {max_modules}: "
            "a concept gets a package"]


def size_violations(modules: dict[str, Module], max_lines: int = MAX_LINES) -> list[str]:
    return [f"{m.where}: {m.lines} lines (over {max_lines}: it holds more than one concept; split it by concept)"
            for m in sorted(modules.values(), key=lambda m: -m.lines) if m.lines > max_lines]


def command_size_violations(modules: dict[str, Module], max_lines: int = MAX_COMMAND_LINES) -> list[str]:
    return [f"{m.where}: {m.lines} lines (a command is its entry only, at most {max_lines}: read cfg, call "
            "planning, call the package that does the work)"
            for m in sorted(modules.values(), key=lambda m: -m.lines)
            if m.where.startswith(f"{ROOT}/commands/") and m.where.count("/") == 2 and m.lines > max_lines]


# -- d. layers --------------------------------------------------------------------------------
def layer_violation(importer: str, target: str, root: str = ROOT) -> str | None:
    """Why `importer` must not import `target` (an import at any level), or None."""
    source, top = layer(importer), target.split(".")[0]
    if not internal(target, root):
        for package, tops, why in NEVER_IMPORTS:
            if source == package and top in tops:
                return why
        if top == "hydra" and source != HYDRA_OWNER:
            return f"only transferkit/{HYDRA_OWNER}/ imports hydra"
        return None
    dest = layer(target)
    if importer in SHARED_LEAVES and target not in SHARED_LEAVES:
        return "a shared leaf imports from transferkit only other shared leaves (see SHARED_LEAVES)"
    if source in STANDALONE:
        allowed = STANDALONE[source]
        if dest == source or target in allowed:
            return None
        return f"{source} imports nothing from transferkit but {', '.join(sorted(allowed))}"
    if dest == source or target in SHARED_LEAVES:
        return None
    for name in (source, dest):
        if rank(name) is None:
            return f"{name} is on no line of LAYERS: place it there"
    if rank(dest) == rank(source):
        return f"{source} and {dest} are peers on one line of LAYERS: neither imports the other"
    if rank(dest) < rank(source):
        return f"{dest} sits above {source} in LAYERS: pass a callable down instead"
    return None


def module_level_closure(modules: dict[str, Module], start: str) -> dict[str, list[str]]:
    """Every module importing `start` loads (module-level, run-time imports), with the chain that loads it."""
    chains: dict[str, list[str]] = {}
    frontier = [(p, [p]) for p in parents(start) if p in modules] + [(start, [start])]
    while frontier:
        name, chain = frontier.pop(0)
        if name in chains:
            continue
        chains[name] = chain
        if name not in modules:
            continue
        for imp in modules[name].imports:
            if imp.in_function or imp.type_only or not imp.statement:
                continue
            for target in [*(p for p in parents(imp.module) if p in modules), imp.module]:
                if target not in chains:
                    frontier.append((target, [*chain, target]))
    return chains


def layer_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    for m in modules.values():
        if rank(layer(m.name)) is None:
            found.append(f"{m.where}: package {layer(m.name)} is on no line of LAYERS: place it there")
        for imp in m.imports:
            why = layer_violation(m.name, imp.module)
            if why:
                found.append(f"{m.where}:{imp.line}: imports {imp.module} ({why})")
        for package, tops, why in MODULE_LEVEL_FREE:
            if layer(m.name) != package:
                continue
            for name, chain in module_level_closure(modules, m.name).items():
                if name.split(".")[0] in tops:
                    found.append(f"{m.where}: loads {name} via {' -> '.join(chain)} ({why})")
                    break
    return sorted(set(found), key=lambda text: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)])


# -- e. the composed config stops at planning -------------------------------------------------
def mentions_dictconfig(annotation: ast.expr | None) -> bool:
    for node in ast.walk(annotation) if annotation is not None else ():
        if (isinstance(node, ast.Name) and node.id == "DictConfig") or (
                isinstance(node, ast.Attribute) and node.attr == "DictConfig") or (
                isinstance(node, ast.Constant) and isinstance(node.value, str)
                and re.search(r"\bDictConfig\b", node.value)):
            return True
    return False


def config_parameter_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    for m in modules.values():
        if layer(m.name) in CONFIG_LAYERS:
            continue
        for node in ast.walk(m.tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]:
                if arg.arg == "cfg" or mentions_dictconfig(arg.annotation):
                    function = getattr(node, "name", "lambda")
                    shown = arg.arg + (f": {ast.unparse(arg.annotation)}" if arg.annotation else "")
                    found.append(f"{m.where}:{node.lineno}: {function}({shown}) takes the composed config; "
                                 "only cli/, config/, planning/ and commands/ see it: pass the spec part it needs")
    return found


# -- f. function-level imports: few, each with its reason -------------------------------------
def function_level_imports(modules: dict[str, Module]) -> list[tuple[Module, Import, bool]]:
    """`(module, import statement, has a reason)` for every function-level import of a transferkit module.

    The reason is a comment on one of the statement's lines or on the line above; a statement right
    below another one shares that one's reason (one comment may head a block of imports)."""
    found = []
    for m in modules.values():
        notes = comments(m.source)
        ends: dict[int, int] = {}  # each function-level import statement: first line -> last line
        first: dict[int, Import] = {}  # -> the first transferkit module it imports
        for imp in m.imports:
            if imp.statement and imp.in_function:
                ends[imp.line] = imp.end_line
                if internal(imp.module):
                    first.setdefault(imp.line, imp)
        reasoned: dict[int | None, bool] = {}
        for line in sorted(ends):
            own = any(re.search(r"[A-Za-z]{3}", notes.get(n, "")) for n in range(line - 1, ends[line] + 1))
            above = next((start for start, end in ends.items() if end == line - 1), None)
            reasoned[line] = own or reasoned.get(above, False)
        found += [(m, imp, reasoned[line]) for line, imp in sorted(first.items())]
    return found


def lazy_import_violations(modules: dict[str, Module], budget: int = MAX_LAZY_IMPORTS) -> list[str]:
    lazy = function_level_imports(modules)
    found = [f"{m.where}:{imp.line}: function-level import of {imp.module} without a reason: add "
             "`# lazy: <why>` on its line or the line above, or move it to the top of the module"
             for m, imp, reasoned in lazy if not reasoned]
    if len(lazy) > budget:
        lines: dict[str, list[int]] = {}
        for m, imp, _ in lazy:
            lines.setdefault(m.where, []).append(imp.line)
        per_file = sorted(lines.items(), key=lambda item: (-len(item[1]), item[0]))
        found.append(f"{len(lazy)} function-level imports of transferkit modules (budget {budget}): move them to "
                     "the top of their modules; keep lazy only what keeps `import transferkit`, --help and config "
                     "errors light. They are: " + "; ".join(f"{where} ({len(numbers)}): {', '.join(map(str, numbers))}"
                                                            for where, numbers in per_file))
    return found


# -- g. cycles --------------------------------------------------------------------------------
def cycle_violations(modules: dict[str, Module]) -> list[str]:
    graph, found = import_graph(modules), []
    for component in components(graph):
        cycle = example_cycle(graph, component)
        others = sorted(component - set(cycle))
        found.append("import cycle: " + " -> ".join(cycle)
                     + (f" (also in the cycle: {', '.join(others)})" if others else ""))
    return found


RULES = {
    "a. top-level modules": top_module_violations,
    "b. file sizes": size_violations,
    "c. command sizes": command_size_violations,
    "d. layers": layer_violations,
    "e. DictConfig below planning": config_parameter_violations,
    "f. function-level imports": lazy_import_violations,
    "g. import cycles": cycle_violations,
}


# -- tests on the package ---------------------------------------------------------------------
def check(rule: str) -> None:
    modules = read_package(PACKAGE_DIR)
    assert "transferkit.cli.app" in modules and "transferkit.data.transforms" in modules
    problems = RULES[rule](modules)
    assert not problems, f"{rule}: {len(problems)} violation(s):\n" + "\n".join(problems)


def test_top_level_modules() -> None:
    check("a. top-level modules")


def test_file_sizes() -> None:
    check("b. file sizes")


def test_command_sizes() -> None:
    check("c. command sizes")


def test_layers() -> None:
    check("d. layers")


def test_no_dictconfig_below_planning() -> None:
    check("e. DictConfig below planning")


def test_function_level_imports() -> None:
    check("f. function-level imports")


def test_no_import_cycles() -> None:
    check("g. import cycles")


if __name__ == "__main__":  # python tests/test_layout.py: every rule's current violations
    found = read_package(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
    for rule, find in RULES.items():
        problems = find(found)
        print(f"== {rule}: {len(problems)} violation(s)")
        print("\n".join(problems) + ("\n" if problems else ""))
